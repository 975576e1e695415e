"""The environment fingerprint of a recorded run, gathered in Python without reprodiff.

The fields and their meaning are reprodiff's (`reprodiff env --json`, `Fingerprint` in
src/env/mod.rs); reprodiff computes the environment class from them when it reads a record, so
the class rule stays in one place. A test holds what this module gathers equal to what
`reprodiff env --json` says on the same host. It adds what reprodiff's fingerprint lacks: the
transformers version and each GPU's compute capability.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch

#: The fingerprint schema reprodiff reads (src/env/mod.rs, SCHEMA).
FINGERPRINT_SCHEMA = 2

#: The CPU flags reprodiff records, in its order (src/env/mod.rs, X86_ISA and ARM_ISA).
X86_ISA = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
    "avx512vl", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16",
    "amx_int8", "amx_fp16",
)  # fmt: skip
ARM_ISA = ("asimd", "sve", "sve2", "bf16", "i8mm")

#: The variables that choose CPU kernels (src/env/mod.rs, KERNEL_ENV).
KERNEL_ENV = (
    "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE",
)  # fmt: skip

CPU_CAPABILITIES = ("default", "avx2", "avx512")


def fingerprint() -> dict[str, Any]:
    """This process's environment, as reprodiff's fingerprint spells it."""
    model, vendor, isa = _cpu()
    capability = torch.backends.cpu.get_cpu_capability().lower()
    libc_name, libc_version = platform.libc_ver()
    return {
        "schema": FINGERPRINT_SCHEMA,
        "producer": "reprodiff-record",
        "versions": {
            "reprodiff": None,
            "tch": None,
            "libtorch": torch.__version__.split("+")[0],
            "torch_build": torch.__version__,
            "python": platform.python_version(),
            "diffusers": _version("diffusers"),
            "transformers": _version("transformers"),
        },
        "os": {
            "name": platform.system().lower(),
            "arch": platform.machine(),
            "libc": f"{libc_name} {libc_version}" if libc_name == "glibc" else None,
        },
        "cpu": {
            "model": model,
            "vendor": vendor,
            "isa": isa,
            "capability": capability,
            "threads": torch.get_num_threads(),
            "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
        },
        "cuda": _cuda(),
        "determinism": {
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
        },
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _vendor(vendor_id: str) -> str:
    """reprodiff's vendor name (src/env/class.rs, vendor_name)."""
    known = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}
    vendor_id = vendor_id.strip()
    if vendor_id in known:
        return known[vendor_id]
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in vendor_id)


def _cpu() -> tuple[str, str | None, list[str]]:
    """Model name, vendor and the recorded ISA flags, from /proc/cpuinfo's first CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        text = ""

    def field(key: str) -> str | None:
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key:
                return value.strip()
        return None

    model = field("model name") or field("Model") or "unknown"
    vendor_id = field("vendor_id")
    flags = (field("flags") or field("Features") or "").split()
    known = ARM_ISA if platform.machine() == "aarch64" else X86_ISA
    return model, _vendor(vendor_id) if vendor_id else None, [k for k in known if k in flags]


def _cuda() -> dict[str, Any]:
    available = torch.cuda.is_available()
    if not available:
        return {"available": False, "runtime": None, "cudnn": None, "devices": []}
    count = torch.cuda.device_count()
    return {
        "available": True,
        "runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "devices": [torch.cuda.get_device_name(i) for i in range(count)],
        "compute_capability": [
            "{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(count)
        ],
    }
