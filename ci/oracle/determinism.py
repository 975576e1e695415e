"""PyTorch's determinism switches: putting a scenario's in force, and reading them back.

A scenario's determinism decides the bits of a run as much as its seed does, so the oracle
applies it as reprodiff's Determinism::apply does and records what was in force in every
fingerprint. Which switches a scenario means is reprodiff's to say: `reprodiff list --json`
gives every switch with its preset already resolved (`oracle_determinism`), so the presets
(torch's defaults, diffusers' enable_full_determinism()) live only in src/torch/determinism.rs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from common import Skip

CPU_CAPABILITIES = ("default", "avx2", "avx512")
ENV_SWITCHES = ("CUBLAS_WORKSPACE_CONFIG", "CUDA_LAUNCH_BLOCKING")


@dataclass(frozen=True)
class Determinism:
    """Every switch, as `reprodiff list --json` resolves it. threads None: torch's default count."""

    deterministic_algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    allow_tf32_cublas: bool
    allow_tf32_cudnn: bool
    cublas_workspace_config: str | None
    cuda_launch_blocking: bool
    threads: int | None
    cpu_capability: str | None


def cpu_capability() -> str:
    """The capability ATen dispatches to in this process, lower-cased ("avx512", "default")."""
    return torch.backends.cpu.get_cpu_capability().lower()


def in_force() -> dict[str, Any]:
    """The switches in force now, read back (the fingerprint's `determinism`)."""
    capability = cpu_capability()
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "allow_tf32_cublas": torch.backends.cuda.matmul.allow_tf32,
        "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cuda_launch_blocking": os.environ.get("CUDA_LAUNCH_BLOCKING") == "1",
        "threads": torch.get_num_threads(),
        "cpu_capability": capability if capability in CPU_CAPABILITIES else None,
    }


@contextlib.contextmanager
def determinism_in_force(d: Determinism) -> Iterator[None]:
    """Puts `d` in force (as reprodiff's Determinism::apply) and restores the previous state.

    Skip when `d` asks for a CPU capability this process does not dispatch to: ATen fixes it
    when torch loads, so such scenarios run in a child process (see compute.run_in_child).
    """
    if d.cpu_capability is not None and d.cpu_capability != cpu_capability():
        raise Skip(f"CPU capability '{d.cpu_capability}' requested but this process dispatches "
                   f"to '{cpu_capability()}' (this CPU may not support it)")
    saved_env = {k: os.environ.get(k) for k in ENV_SWITCHES}
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    saved_threads = torch.get_num_threads()
    try:
        if d.cublas_workspace_config is not None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = d.cublas_workspace_config
        if d.cuda_launch_blocking:
            os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
        if d.threads is not None:
            torch.set_num_threads(d.threads)
        set_switches(d.deterministic_algorithms, d.warn_only, d.cudnn_deterministic,
                     d.cudnn_benchmark, d.allow_tf32_cublas, d.allow_tf32_cudnn)
        yield
    finally:
        set_switches(*saved)
        torch.set_num_threads(saved_threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def set_switches(algorithms: bool, warn_only: bool, cudnn_det: bool, benchmark: bool,
                 tf32_cublas: bool, tf32_cudnn: bool) -> None:
    """torch's determinism switches, in the order of rd_set_determinism (src/torch/ffi.rs)."""
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_det
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32_cublas
    torch.backends.cudnn.allow_tf32 = tf32_cudnn
