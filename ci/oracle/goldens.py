#!/usr/bin/env python3
"""The Python oracle: golden fixtures for reprodiff's suites, computed with real PyTorch.

reprodiff (Rust, on libtorch) checks what it computes against golden files in fixtures/golden/.
This script is the source of those goldens for every scenario it writes. It reads the suites in
fixtures/suites/*.toml (same format and matrix expansion as src/harness/suite.rs), runs each
scenario it supports with PyTorch, and records per scenario in fixtures/golden/<suite>.json:

- ``sha256``: of the output's raw bytes in its own dtype (the ``bits`` metric);
- ``metrics``: sum_abs, max_abs and mean_abs in float64 with an exactly rounded sum
  (``math.fsum``), so that reprodiff gets the same float64 bits in any summation order;
- ``array``: the output as .npy under fixtures/golden/<suite>/ (bfloat16 upcast to float32,
  which is exact), for the metrics that compare element by element;
- ``provenance``: the command that regenerates the entry and the environment fingerprint (the
  same schema as ``reprodiff env --json``) of the process that computed it.

Supported scenarios:

- ``run.kind = "random"``: torch.randn / torch.rand / Tensor.normal_ drawn from torch.Generator
  objects, torch.manual_seed's global generator or diffusers' randn_tensor batching.
- ``run.kind = "ddim"``: diffusers' DDIMPipeline (0.42.1) on a diffusers-format model folder,
  output_type "np" (the pipeline's NHWC float array) or "latent" (the raw NCHW sample of a loop
  that mirrors DDIMPipeline.__call__ line for line, checked once per model and process against
  the pipeline's own "np" output). The weights are copied out of the memory-mapped safetensors
  before the run (unaligned CPU weights move results by ~1e-6), every output is computed twice
  and must be bit-identical. Models (``run.model``): a folder of fixtures/models/ (written by
  ci/oracle/make_models.py), ``"derived:ARCH"`` (weights that ``reprodiff derive-weights --arch
  ARCH`` writes; see derived_model) or ``"hub:ORG/NAME"`` (the local Hugging Face cache only;
  the scenario is skipped with a warning when the model is not there). ``run.twice``: the
  output is run 1 minus run 2 with the generators re-seeded (the seed document's "L_inf 0").

A scenario's ``slice`` ("0, -3:, -3:, -1") keeps that part of the output, as reprodiff does.
Entries whose producer is "published" (ci/oracle/published.py) are never replaced.

A scenario whose determinism asks for a CPU capability runs in a child process of this script
with ATEN_CPU_CAPABILITY set, since ATen fixes the capability when torch loads. Threads are
torch's default (what reprodiff's libtorch also starts with) unless the scenario's determinism
sets them; the fingerprint records the count either way. It matters: CPU convolutions give
other bits on 1 thread than on 2 or more for a batch of two or more, and the full-size cifar
UNet differs at 1 and 3 threads even for one image (the DDIM suites pin 2 threads).

Usage (ci/oracle/run.sh prepares the venv, then calls this from the repository root)::

    ci/oracle/run.sh [--suite NAME]... [--filter REGEX] [--golden-dir DIR]
    ci/oracle/run.sh --self-check        # the latent loop against DDIMPipeline, tiny models
    ci/oracle/run.sh --make-models ...   # ci/oracle/make_models.py (fixtures/models/)

Without --suite, every suite that has a scenario this script can run. --filter selects scenarios
by ``re.search`` on their expanded names; the other entries of an existing golden file are kept
as they are. Without --filter, entries of scenarios that left the suite are dropped.

Environment: REPRODIFF_BIN (the reprodiff binary for derived models, default
target/debug/reprodiff), REPRODIFF_CACHE (where derived models are kept, as run.sh),
REPRODIFF_DERIVED_DIR (take derived:ARCH from DIR/ARCH as it is, without running reprodiff:
for testing; goldens made so name it in their provenance), HF_HUB_CACHE / HF_HOME (hub models).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
SUITES_DIR = REPO / "fixtures" / "suites"
GOLDEN_DIR = REPO / "fixtures" / "golden"
RUN_SH = "ci/oracle/run.sh"
TOOL = "ci/oracle/goldens.py"
SCHEMA = 1
GENERATED = "Do not edit by hand. Regenerate with the command in each scenario's provenance."

Table = dict[str, Any]
Generators = torch.Generator | list[torch.Generator] | None

# The keys src/harness/suite.rs accepts (serde's deny_unknown_fields there, an error here too).
SUITE_KEYS = {"schema", "name", "description", "defaults", "scenario"}
SCENARIO_KEYS = {
    "name", "description", "run", "device", "determinism", "metrics", "tolerance", "store_array",
    "slice",
}
RANDOM_KEYS = {
    "kind", "op", "shape", "dtype", "generator", "skip", "state_roundtrip", "mean", "std",
}
GENERATOR_KEYS = {
    "single": {"type", "seed", "device"},
    "per-sample": {"type", "seeds", "device"},
    "repeated": {"type", "seed", "count", "device"},
    "global": {"type", "seed"},
    "unseeded": {"type"},
}
DDIM_KEYS = {
    "kind", "model", "steps", "eta", "batch", "generator", "output_type", "dtype",
    "use_clipped_model_output", "twice", "scheduler",
}
RUN_KINDS = ("random", "ddim")
RANDOM_OPS = ("randn", "rand", "normal")
OUTPUT_TYPES = ("np", "latent")
MODELS_DIR = REPO / "fixtures" / "models"
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
DERIVED_STAMP = ".reprodiff-oracle-stamp.json"
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64}
CPU_CAPABILITIES = ("default", "avx2", "avx512")
DEVICE_RE = re.compile(r"cpu|cuda(:\d+)?")

# ISA flags that decide which ATen kernels can run, in a fixed order (src/env.rs).
X86_ISA = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
    "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8",
)
ARM_ISA = ("asimd", "sve", "sve2", "bf16", "i8mm")
# sys.platform → Rust's std::env::consts::OS, which reprodiff's own fingerprint uses.
RUST_OS_NAMES = {"darwin": "macos", "win32": "windows"}


def shown(path: Path) -> str:
    """`path` relative to the repository root where it lies inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


class SuiteError(Exception):
    """A suite file that does not follow the format."""


class Skip(Exception):
    """A scenario that cannot give a golden here (unseeded, no such device or capability)."""


class OracleError(Exception):
    """The oracle's own environment failed (no reprodiff binary, a run that does not repeat)."""


# --------------------------------------------------------------------------------------------
# Suites: loading, defaults and matrix expansion (mirrors src/harness/suite.rs)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    scenarios: list[Table]  # expanded scenario tables, in file order


def load_suite(path: Path) -> Suite:
    """Parses a suite file into its expanded scenario tables."""
    with path.open("rb") as f:
        root = tomllib.load(f)
    where = shown(path)
    unknown = set(root) - SUITE_KEYS
    if unknown:
        raise SuiteError(f"{where}: unknown top-level keys {sorted(unknown)}")
    if root.get("schema") != SCHEMA:
        raise SuiteError(f"{where}: `schema` must be {SCHEMA}, found {root.get('schema')!r}")
    name = root.get("name")
    if not isinstance(name, str) or not name:
        raise SuiteError(f"{where}: `name` must be a non-empty string")
    defaults = root.get("defaults", {})
    raw = root.get("scenario")
    if not isinstance(defaults, dict) or not isinstance(raw, list) or not raw:
        raise SuiteError(f"{where}: needs a [defaults] table and [[scenario]] entries")

    scenarios: list[Table] = []
    for i, own in enumerate(raw):
        merged = {**defaults, **own}
        label_ = f"scenario '{merged.get('name', f'#{i + 1}')}'"
        try:
            scenarios.extend(expand(merged))
        except SuiteError as e:
            raise SuiteError(f"{where}: {label_}: {e}") from None
    seen: set[str] = set()
    for s in scenarios:
        if not isinstance(s.get("name"), str):
            raise SuiteError(f"{where}: a scenario has no string `name`")
        if s["name"] in seen:
            raise SuiteError(f"{where}: scenario name '{s['name']}' appears twice")
        seen.add(s["name"])
        unknown = set(s) - SCENARIO_KEYS
        if unknown:
            raise SuiteError(f"{where}: scenario '{s['name']}': unknown keys {sorted(unknown)}")
    return Suite(name=name, path=path, scenarios=scenarios)


def expand(table: Table) -> list[Table]:
    """One table per combination of `matrix` values, the last key varying fastest."""
    if "matrix" not in table:
        return [table]
    table = dict(table)
    matrix = table.pop("matrix")
    if not isinstance(matrix, dict):
        raise SuiteError("`matrix` must be a table of lists")
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise SuiteError(f"matrix.{key} must be a non-empty list")
    keys = list(matrix)
    expanded = []
    for combo in itertools.product(*(matrix[k] for k in keys)):
        t = table
        for key, value in zip(keys, combo):
            t = substitute(t, key, value)
            if isinstance(t.get("name"), str):
                t["name"] = t["name"].replace("{" + key + "}", label(value))
        expanded.append(t)
    return expanded


def substitute(value: Any, key: str, replacement: Any) -> Any:
    """A deep copy of `value` with every string exactly "$key" replaced by `replacement`."""
    if isinstance(value, str):
        return copy.deepcopy(replacement) if value == "$" + key else value
    if isinstance(value, list):
        return [substitute(v, key, replacement) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, key, replacement) for k, v in value.items()}
    return value


def label(value: Any) -> str:
    """How a matrix value reads in a scenario name: lists join with "x", floats as repr."""
    if isinstance(value, list):
        return "x".join(label(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"  # TOML's spelling, as the Rust side prints it
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --------------------------------------------------------------------------------------------
# Scenarios: typed views of the tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Determinism:
    """PyTorch's determinism switches; the defaults are torch's own (src/torch/determinism.rs)."""

    deterministic_algorithms: bool = False
    warn_only: bool = False
    cudnn_deterministic: bool = False
    cudnn_benchmark: bool = False
    allow_tf32_cublas: bool = False
    allow_tf32_cudnn: bool = True
    cublas_workspace_config: str | None = None
    cuda_launch_blocking: bool = False
    threads: int | None = None
    cpu_capability: str | None = None


# diffusers' enable_full_determinism() (utils/torch_utils.py).
FULL_DETERMINISM = Determinism(
    deterministic_algorithms=True,
    cudnn_deterministic=True,
    cudnn_benchmark=False,
    allow_tf32_cublas=False,
    cublas_workspace_config=":16:8",
    cuda_launch_blocking=True,
)


@dataclass(frozen=True)
class GeneratorSpec:
    type: str  # single | per-sample | repeated | global | unseeded
    seeds: tuple[int, ...]  # one seed, except per-sample
    count: int  # how many times `repeated` lists its one generator
    device: str


@dataclass(frozen=True)
class RandomRun:
    op: str
    shape: tuple[int, ...]
    dtype: str
    generator: GeneratorSpec
    skip: tuple[int, ...] | None
    state_roundtrip: bool
    mean: float
    std: float


@dataclass(frozen=True)
class DdimRun:
    """diffusers' DDIMPipeline: `pipe(batch_size, generator, eta, num_inference_steps, ...)`."""

    model: str  # a fixtures/models/ folder name, "derived:ARCH" or "hub:ORG/NAME"
    steps: int
    eta: float
    batch: int
    generator: GeneratorSpec
    output_type: str  # np | latent
    dtype: str  # the UNet's (and so the noise's and the output's) dtype
    use_clipped_model_output: bool | None  # None: not passed, as the pipeline's default
    scheduler: Table  # DDIMScheduler.from_config overrides, checked
    twice: bool = False  # output run 1 minus run 2, generators re-made from the spec between


@dataclass(frozen=True)
class Scenario:
    name: str
    run: RandomRun | DdimRun
    device: str
    determinism: Determinism
    store_array: bool
    slice: tuple[int | slice, ...] | None = None  # numpy-style: "0, -3:, -3:, -1"


def is_supported(table: Table) -> bool:
    """Whether the oracle computes this scenario's kind of run."""
    run = table.get("run")
    return isinstance(run, dict) and run.get("kind") in RUN_KINDS


def parse_scenario(table: Table) -> Scenario:
    """The typed scenario of an expanded table whose run.kind is "random"."""
    name = table["name"]
    try:
        device = table.get("device", "cpu")
        if not isinstance(device, str) or not DEVICE_RE.fullmatch(device):
            raise SuiteError(f"device must be cpu, cuda or cuda:N, found {device!r}")
        store_array = table.get("store_array", True)
        if not isinstance(store_array, bool):
            raise SuiteError("store_array must be a boolean")
        run = table.get("run")
        if not isinstance(run, dict) or run.get("kind") not in RUN_KINDS:
            raise SuiteError(f"run.kind must be one of {RUN_KINDS}")
        parsed = parse_random_run(run) if run["kind"] == "random" else parse_ddim_run(run)
        if isinstance(parsed, DdimRun):
            gen_device = parsed.generator.device
            if gen_device.startswith("cuda") and not device.startswith("cuda"):
                raise SuiteError(f"a {gen_device} generator cannot make {device} noise "
                                 "(diffusers' randn_tensor raises ValueError)")
        return Scenario(
            name=name,
            run=parsed,
            device=device,
            determinism=parse_determinism(table.get("determinism")),
            store_array=store_array,
            slice=None if "slice" not in table else parse_slice(table["slice"]),
        )
    except SuiteError as e:
        raise SuiteError(f"scenario '{name}': {e}") from None


def parse_random_run(run: Table) -> RandomRun:
    """The `run` table of a random scenario, checked."""
    unknown = set(run) - RANDOM_KEYS
    if unknown:
        raise SuiteError(f"run: unknown keys {sorted(unknown)}")
    op = run.get("op")
    if op not in RANDOM_OPS:
        raise SuiteError(f"run.op must be one of {RANDOM_OPS}, found {op!r}")
    dtype = run.get("dtype", "f32")
    if dtype not in DTYPES:
        raise SuiteError(f"run.dtype must be one of {tuple(DTYPES)}, found {dtype!r}")
    skip = run.get("skip")
    state_roundtrip = run.get("state_roundtrip", False)
    if not isinstance(state_roundtrip, bool):
        raise SuiteError("run.state_roundtrip must be a boolean")
    parsed = RandomRun(
        op=op,
        shape=parse_shape(run.get("shape"), "run.shape"),
        dtype=dtype,
        generator=parse_generator(run.get("generator")),
        skip=None if skip is None else parse_shape(skip, "run.skip"),
        state_roundtrip=state_roundtrip,
        mean=parse_float(run.get("mean", 0.0), "run.mean"),
        std=parse_float(run.get("std", 1.0), "run.std"),
    )
    if op != "normal" and ("mean" in run or "std" in run):
        raise SuiteError("run.mean and run.std only apply to op = \"normal\"")
    if state_roundtrip and parsed.generator.type != "single":
        raise SuiteError("run.state_roundtrip needs a generator of type \"single\"")
    if op == "normal" and parsed.generator.type in ("per-sample", "repeated"):
        raise SuiteError("op \"normal\" takes one generator (single or global)")
    if parsed.std < 0.0:
        raise SuiteError("run.std must be >= 0")
    if parsed.generator.type in ("per-sample", "repeated"):
        n = parsed.generator.count
        for s in (parsed.shape, parsed.skip):
            if s is not None and (not s or s[0] != n):
                raise SuiteError(f"run.generator lists {n} generators but shape {list(s)} "
                                 f"does not have batch {n}")
    return parsed


def parse_ddim_run(run: Table) -> DdimRun:
    """The `run` table of a ddim scenario, checked (defaults: diffusers' own)."""
    unknown = set(run) - DDIM_KEYS
    if unknown:
        raise SuiteError(f"run: unknown keys {sorted(unknown)}")
    for key in ("model", "steps", "generator"):
        if key not in run:
            raise SuiteError(f"run.{key} is required for kind \"ddim\"")
    model = parse_model(run["model"])
    steps = parse_int(run["steps"], "run.steps")
    if steps < 1:
        raise SuiteError("run.steps must be >= 1")
    eta = parse_float(run.get("eta", 0.0), "run.eta")
    if not math.isfinite(eta) or eta < 0.0:
        raise SuiteError(f"run.eta must be a finite number >= 0, found {eta!r}")
    batch = parse_int(run.get("batch", 1), "run.batch")
    if batch < 1:
        raise SuiteError("run.batch must be >= 1")
    generator = parse_generator(run["generator"])
    if generator.type in ("per-sample", "repeated") and generator.count != batch:
        raise SuiteError(f"run.generator lists {generator.count} generators but run.batch is "
                         f"{batch} (DDIMPipeline raises ValueError)")
    output_type = run.get("output_type", "np")
    if output_type not in OUTPUT_TYPES:
        raise SuiteError(f"run.output_type must be one of {OUTPUT_TYPES}, found {output_type!r}")
    dtype = run.get("dtype", "f32")
    if dtype not in ("f32", "f16", "bf16"):
        raise SuiteError(f"run.dtype must be one of ('f32', 'f16', 'bf16'), found {dtype!r}")
    if dtype == "bf16" and output_type == "np":
        raise SuiteError("run.dtype \"bf16\" with output_type \"np\": DDIMPipeline cannot "
                         "return bfloat16 as numpy (use output_type \"latent\")")
    clipped = run.get("use_clipped_model_output")
    if clipped is not None and not isinstance(clipped, bool):
        raise SuiteError("run.use_clipped_model_output must be a boolean")
    twice = run.get("twice", False)
    if not isinstance(twice, bool):
        raise SuiteError("run.twice must be a boolean")
    return DdimRun(
        model=model,
        steps=steps,
        eta=eta,
        batch=batch,
        generator=generator,
        output_type=output_type,
        dtype=dtype,
        use_clipped_model_output=clipped,
        scheduler=parse_scheduler_overrides(run.get("scheduler", {})),
        twice=twice,
    )


def parse_model(value: Any) -> str:
    """run.model: a fixtures/models/ folder that exists, "derived:ARCH" or "hub:ORG/NAME"."""
    if not isinstance(value, str):
        raise SuiteError(f"run.model must be a string, found {value!r}")
    kind, sep, rest = value.partition(":")
    if sep and kind == "derived":
        if not MODEL_NAME_RE.fullmatch(rest):
            raise SuiteError(f"run.model: bad architecture name in {value!r}")
    elif sep and kind == "hub":
        if not HUB_ID_RE.fullmatch(rest):
            raise SuiteError(f"run.model: {value!r} is not hub:ORG/NAME")
    elif sep or not MODEL_NAME_RE.fullmatch(value):
        raise SuiteError(f"run.model must be a folder name under {shown(MODELS_DIR)}/, "
                         f"\"derived:ARCH\" or \"hub:ORG/NAME\", found {value!r}")
    elif not (MODELS_DIR / value).is_dir():
        raise SuiteError(f"run.model: no model folder {shown(MODELS_DIR / value)} "
                         "(ci/oracle/run.sh --make-models writes the tiny ones)")
    return value


def _choice(*allowed: str) -> Callable[[Any, str], Any]:
    def check(value: Any, what: str) -> Any:
        if value not in allowed:
            raise SuiteError(f"{what} must be one of {allowed}, found {value!r}")
        return value
    return check


def _boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SuiteError(f"{what} must be a boolean, found {value!r}")
    return value


def _positive_int(value: Any, what: str) -> int:
    if parse_int(value, what) < 1:
        raise SuiteError(f"{what} must be >= 1")
    return value


def _finite(value: Any, what: str) -> float:
    x = parse_float(value, what)
    if not math.isfinite(x):
        raise SuiteError(f"{what} must be finite, found {value!r}")
    return x


def _positive(value: Any, what: str) -> float:
    x = _finite(value, what)
    if x <= 0.0:
        raise SuiteError(f"{what} must be > 0, found {value!r}")
    return x


def _ratio(value: Any, what: str) -> float:
    x = _finite(value, what)
    if not 0.0 <= x <= 1.0:
        raise SuiteError(f"{what} must be in [0, 1], found {value!r}")
    return x


def _betas(value: Any, what: str) -> list[float]:
    if not isinstance(value, list) or not value:
        raise SuiteError(f"{what} must be a non-empty list of numbers")
    betas = [_finite(b, f"{what}[]") for b in value]
    if not all(0.0 < b < 1.0 for b in betas):
        raise SuiteError(f"{what}: every beta must be in (0, 1)")
    return betas


# DDIMScheduler.__init__'s parameters (diffusers 0.42.1) and how each is checked; numbers are
# passed as Python floats, so an integer in TOML means the same as the float.
SCHEDULER_OVERRIDES: dict[str, Callable[[Any, str], Any]] = {
    "num_train_timesteps": _positive_int,
    "beta_start": _finite,
    "beta_end": _finite,
    "beta_schedule": _choice("linear", "scaled_linear", "squaredcos_cap_v2"),
    "trained_betas": _betas,
    "clip_sample": _boolean,
    "set_alpha_to_one": _boolean,
    "steps_offset": lambda value, what: parse_int(value, what),
    "prediction_type": _choice("epsilon", "sample", "v_prediction"),
    "thresholding": _boolean,
    "dynamic_thresholding_ratio": _ratio,
    "clip_sample_range": _positive,
    "sample_max_value": _positive,
    "timestep_spacing": _choice("leading", "trailing", "linspace"),
    "rescale_betas_zero_snr": _boolean,
}


def parse_scheduler_overrides(table: Any) -> Table:
    """run.scheduler: DDIMScheduler config keys to override, each checked."""
    if not isinstance(table, dict):
        raise SuiteError("run.scheduler must be a table of DDIMScheduler config overrides")
    unknown = set(table) - set(SCHEDULER_OVERRIDES)
    if unknown:
        raise SuiteError(f"run.scheduler: unknown keys {sorted(unknown)} "
                         f"(DDIMScheduler takes {sorted(SCHEDULER_OVERRIDES)})")
    return {k: SCHEDULER_OVERRIDES[k](v, f"run.scheduler.{k}") for k, v in table.items()}


def parse_slice(text: Any) -> tuple[int | slice, ...]:
    """A numpy-style slice of indices and start:stop ranges ("0, -3:, -3:, -1"), as
    src/harness/suite.rs parse_slice reads it (no steps)."""
    if not isinstance(text, str):
        raise SuiteError(f"slice must be a string like \"0, -3:, -3:, -1\", found {text!r}")

    def integer(part: str) -> int | None:
        part = part.strip()
        if not part:
            return None
        try:
            return int(part)
        except ValueError:
            raise SuiteError(f"slice: '{part}' is not an integer") from None

    axes: list[int | slice] = []
    for part in text.split(","):
        start, colon, stop = part.partition(":")
        if colon:
            axes.append(slice(integer(start), integer(stop)))
        else:
            index = integer(part)
            if index is None:
                raise SuiteError("slice: empty index")
            axes.append(index)
    return tuple(axes)


def parse_shape(value: Any, what: str) -> tuple[int, ...]:
    """A list of non-negative ints as a tuple."""
    ok = isinstance(value, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    )
    if not ok:
        raise SuiteError(f"{what} must be a list of non-negative integers, found {value!r}")
    return tuple(value)


def parse_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SuiteError(f"{what} must be a number, found {value!r}")
    return float(value)


def parse_int(value: Any, what: str) -> int:
    """A non-negative integer (seeds are u64 on the Rust side)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SuiteError(f"{what} must be a non-negative integer, found {value!r}")
    return value


def parse_generator(gen: Any) -> GeneratorSpec:
    if not isinstance(gen, dict) or gen.get("type") not in GENERATOR_KEYS:
        raise SuiteError(f"run.generator.type must be one of {tuple(GENERATOR_KEYS)}")
    kind = gen["type"]
    unknown = set(gen) - GENERATOR_KEYS[kind]
    if unknown:
        raise SuiteError(f"run.generator ({kind}): unknown keys {sorted(unknown)}")
    device = gen.get("device", "cpu")
    if not isinstance(device, str) or not DEVICE_RE.fullmatch(device):
        raise SuiteError(f"run.generator.device must be cpu, cuda or cuda:N, found {device!r}")
    if kind == "unseeded":
        return GeneratorSpec(kind, (), 0, "cpu")
    if kind == "per-sample":
        seeds = gen.get("seeds")
        if not isinstance(seeds, list) or not seeds:
            raise SuiteError("run.generator.seeds must be a non-empty list of integers")
        return GeneratorSpec(
            kind, tuple(parse_int(s, "run.generator.seeds[]") for s in seeds), len(seeds), device
        )
    seed = parse_int(gen.get("seed"), "run.generator.seed")
    count = parse_int(gen.get("count"), "run.generator.count") if kind == "repeated" else 1
    if count < 1:
        raise SuiteError("run.generator.count must be >= 1")
    return GeneratorSpec(kind, (seed,), count, device)


def parse_determinism(spec: Any) -> Determinism:
    """A preset name, or a table with an optional preset and per-switch overrides."""
    if spec is None:
        return Determinism()
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise SuiteError("determinism must be a preset name or a table")
    switches = {f.name for f in fields(Determinism)}
    unknown = set(spec) - switches - {"preset"}
    if unknown:
        raise SuiteError(f"determinism: unknown keys {sorted(unknown)}")
    presets = {"default": Determinism(), "full": FULL_DETERMINISM}
    preset = spec.get("preset", "default")
    if preset not in presets:
        raise SuiteError(f"determinism.preset must be default or full, found {preset!r}")
    overrides = {k: v for k, v in spec.items() if k != "preset"}
    if "cpu_capability" in overrides:
        cap = overrides["cpu_capability"]
        if not isinstance(cap, str) or cap.lower() not in CPU_CAPABILITIES:
            raise SuiteError(f"determinism.cpu_capability must be one of {CPU_CAPABILITIES}")
        overrides["cpu_capability"] = cap.lower()
    if "threads" in overrides and parse_int(overrides["threads"], "determinism.threads") < 1:
        raise SuiteError("determinism.threads must be >= 1")
    return replace(presets[preset], **overrides)


# --------------------------------------------------------------------------------------------
# The environment fingerprint (schema of `reprodiff env --json`, src/env.rs)
# --------------------------------------------------------------------------------------------


@functools.cache
def cpu_model_and_isa() -> tuple[str, tuple[str, ...]]:
    """The CPU model and its ATen-relevant ISA flags, read as src/env.rs reads them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""

    def field(key: str) -> str | None:
        for line in text.splitlines():
            k, sep, v = line.partition(":")
            if sep and k.strip() == key:
                return v.strip()
        return None

    model = field("model name") or field("Model") or platform.processor() or "unknown"
    flags = set((field("flags") or field("Features") or "").split())
    known = ARM_ISA if platform.machine() in ("aarch64", "arm64") else X86_ISA
    return model, tuple(k for k in known if k in flags)


def cpu_capability() -> str:
    """The capability ATen dispatches to in this process, lower-cased ("avx512", "default")."""
    return torch.backends.cpu.get_cpu_capability().lower()


def package_version(name: str) -> str | None:
    """The installed version of a distribution (without importing it), or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_fingerprint() -> Table:
    """What produced a number: versions, CPU, CUDA and the determinism switches, right now."""
    model, isa = cpu_model_and_isa()
    capability = cpu_capability()
    cuda = torch.cuda.is_available()
    return {
        "schema": SCHEMA,
        "producer": "oracle",
        "versions": {
            "reprodiff": None,
            "tch": None,
            "libtorch": torch.__version__.split("+")[0],
            "torch_build": torch.__version__,
            "python": platform.python_version(),
            "diffusers": package_version("diffusers"),
        },
        "os": {"name": RUST_OS_NAMES.get(sys.platform, sys.platform), "arch": platform.machine()},
        "cpu": {
            "model": model,
            "isa": list(isa),
            "capability": capability,
            "threads": torch.get_num_threads(),
        },
        "cuda": {
            "available": cuda,
            "runtime": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda
            else [],
        },
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


def environment_id(fingerprint: Table) -> str:
    """"env-" + 12 hex of the SHA-256 of the canonical JSON (serde_json's compact, sorted form)."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "env-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Running a scenario
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def determinism_in_force(d: Determinism) -> Iterator[None]:
    """Puts `d` in force (as reprodiff's Determinism::apply) and restores the previous state."""
    if d.cpu_capability is not None and d.cpu_capability != cpu_capability():
        raise Skip(
            f"CPU capability '{d.cpu_capability}' requested but this process dispatches to "
            f"'{cpu_capability()}' (this CPU may not support it)"
        )
    env_keys = ("CUBLAS_WORKSPACE_CONFIG", "CUDA_LAUNCH_BLOCKING")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_num_threads(),
    )
    try:
        if d.cublas_workspace_config is not None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = d.cublas_workspace_config
        if d.cuda_launch_blocking:
            os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
        if d.threads is not None:
            torch.set_num_threads(d.threads)
        set_switches(
            d.deterministic_algorithms, d.warn_only, d.cudnn_deterministic, d.cudnn_benchmark,
            d.allow_tf32_cublas, d.allow_tf32_cudnn,
        )
        yield
    finally:
        set_switches(*saved[:6])
        torch.set_num_threads(saved[6])
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def set_switches(
    algorithms: bool, warn_only: bool, cudnn_det: bool, benchmark: bool, tf32_cublas: bool,
    tf32_cudnn: bool,
) -> None:
    """torch's determinism switches, in the order of rd_set_determinism (src/torch/ffi.rs)."""
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_det
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32_cublas
    torch.backends.cudnn.allow_tf32 = tf32_cudnn


def require_device(device: str) -> None:
    """Raises Skip unless `device` exists in this process."""
    if device == "cpu":
        return
    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise Skip(f"device {device} is not available here")


def make_generators(spec: GeneratorSpec) -> Generators:
    """The generator object(s) a scenario draws from; None for torch's global generator."""
    if spec.type == "unseeded":
        raise Skip("unseeded generator: not reproducible, no golden")
    if spec.type == "global":
        torch.manual_seed(spec.seeds[0])
        return None
    require_device(spec.device)
    if spec.type == "single":
        return torch.Generator(spec.device).manual_seed(spec.seeds[0])
    if spec.type == "per-sample":
        return [torch.Generator(spec.device).manual_seed(s) for s in spec.seeds]
    # "repeated": ONE generator listed `count` times, i.e. [g] * count.
    return [torch.Generator(spec.device).manual_seed(spec.seeds[0])] * spec.count


@functools.cache
def diffusers_randn_tensor() -> Callable[..., torch.Tensor]:
    """diffusers.utils.torch_utils.randn_tensor, imported on first use (it takes seconds)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor


def batched_draw(
    fn: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    generators: Generators,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """diffusers' randn_tensor (0.42.1, utils/torch_utils.py) with `fn` in place of torch.randn."""
    rand_device = device
    if generators is not None:
        first = generators[0] if isinstance(generators, list) else generators
        if first.device.type != device.type and first.device.type == "cpu":
            rand_device = torch.device("cpu")
        elif first.device.type != device.type and first.device.type == "cuda":
            raise ValueError(f"Cannot generate a {device} tensor from a generator of type cuda.")
    if isinstance(generators, list) and len(generators) == 1:
        generators = generators[0]
    if isinstance(generators, list):
        one = (1,) + shape[1:]
        samples = [fn(one, generator=g, device=rand_device, dtype=dtype) for g in generators]
        return torch.cat(samples, dim=0).to(device)
    return fn(shape, generator=generators, device=rand_device, dtype=dtype).to(device)


def draw(
    run: RandomRun, shape: tuple[int, ...], gens: Generators, device: torch.device
) -> torch.Tensor:
    """One draw of `shape` as the scenario's op, from `gens`."""
    dtype = DTYPES[run.dtype]
    if run.op == "randn":  # the real thing: diffusers' randn_tensor
        return diffusers_randn_tensor()(shape, generator=gens, device=device, dtype=dtype)
    if run.op == "rand":
        return batched_draw(torch.rand, shape, gens, device, dtype)
    # normal: filled on the generator's device (as randn_tensor draws), then moved.
    assert not isinstance(gens, list)
    on = device if gens is None else gens.device
    out = torch.empty(shape, dtype=dtype, device=on)
    return out.normal_(run.mean, run.std, generator=gens).to(device)


def run_random(run: RandomRun, device: str) -> torch.Tensor:
    """The scenario's output: optional discarded draw, optional state round trip, the draw."""
    require_device(device)
    dev = torch.device(device)
    gens = make_generators(run.generator)
    if run.skip is not None:
        draw(run, run.skip, gens, dev)
    if run.state_roundtrip:
        assert isinstance(gens, torch.Generator)
        state = gens.get_state()
        draw(run, run.shape, gens, dev)
        gens.set_state(state)
    return draw(run, run.shape, gens, dev)


# --------------------------------------------------------------------------------------------
# DDIM pipeline scenarios (diffusers)
# --------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Model:
    """A resolved run.model: the pipeline folder and how it reads in provenance."""

    folder: Path
    description: str


@functools.cache
def resolve_model(spec: str) -> Model:
    """The folder of run.model. Skip for a hub model not in the cache; OracleError when a
    derived model cannot be made."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "derived":
        folder, source = derived_model(rest)
    elif sep and kind == "hub":
        folder, source = hub_model(rest)
    else:
        folder, source = MODELS_DIR / spec, shown(MODELS_DIR / spec)
    weights = folder / UNET_WEIGHTS
    if not weights.is_file():
        if kind == "hub":
            raise Skip(f"model {spec}: the cached snapshot {folder} has no {UNET_WEIGHTS} "
                       "(only safetensors are read)")
        raise OracleError(f"model {spec}: {weights} does not exist")
    return Model(folder, f"{source} (unet safetensors sha256 {sha256_file(weights)[:12]})")


def hub_model(repo_id: str) -> tuple[Path, str]:
    """The snapshot folder of a hub model in the local cache, never downloading."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        raise Skip(f"model hub:{repo_id} not found in the local Hugging Face cache "
                   f"({constants.HF_HUB_CACHE}); the oracle never downloads") from None
    return folder, f"hub:{repo_id} revision {folder.name}"


def reprodiff_cache() -> Path:
    """The cache root ci/oracle/run.sh and ci/install-libtorch.sh use."""
    if os.environ.get("REPRODIFF_CACHE"):
        return Path(os.environ["REPRODIFF_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "reprodiff"


def derived_model(arch: str) -> tuple[Path, str]:
    """`reprodiff derive-weights --arch ARCH`'s pipeline folder, made once and kept.

    Kept in <cache>/derived/ARCH with a stamp naming the binary's sha256; the binary is run
    again when it changed (a rebuild), and the folder replaced atomically. With the binary
    missing, a stamped folder is used as it is. REPRODIFF_DERIVED_DIR=DIR takes DIR/ARCH as
    it is instead, for testing (provenance then says so).
    """
    override = os.environ.get("REPRODIFF_DERIVED_DIR")
    if override:
        folder = Path(override) / arch
        if not folder.is_dir():
            raise OracleError(f"derived:{arch}: REPRODIFF_DERIVED_DIR is set but {folder} "
                              "does not exist")
        return folder, f"derived:{arch} from REPRODIFF_DERIVED_DIR {folder}, not reprodiff"

    binary = Path(os.environ.get("REPRODIFF_BIN", "target/debug/reprodiff"))
    if not binary.is_absolute():
        binary = REPO / binary
    root = reprodiff_cache() / "derived"
    folder = root / arch
    stamp_path = folder / DERIVED_STAMP
    stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    made_by = f"{shown(binary)} derive-weights --arch {arch}"
    if not binary.is_file():
        if stamp is None:
            raise OracleError(
                f"derived:{arch} needs `{made_by}`, and {binary} does not exist: build it "
                "(ci/cargo build) or point REPRODIFF_BIN at a reprodiff binary")
        print(f"  warning: {binary} is missing; using derived:{arch} as made earlier by "
              f"{stamp.get('reprodiff_bin')} (sha256 {stamp.get('reprodiff_sha256', '?')[:12]})",
              file=sys.stderr)
        return folder, f"derived:{arch} ({made_by}, a binary no longer there)"
    binary_sha = sha256_file(binary)
    if stamp is not None and stamp.get("reprodiff_sha256") == binary_sha:
        return folder, f"derived:{arch} ({made_by})"

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{arch}."))
    try:
        out = tmp / arch
        command = [str(binary), "derive-weights", "--arch", arch, "--out", str(out)]
        print(f"  deriving weights: {shlex.join(command)}", flush=True)
        done = subprocess.run(command)
        if done.returncode != 0:
            raise OracleError(f"derived:{arch}: `{shlex.join(command)}` exited with "
                              f"{done.returncode}")
        weights = out / UNET_WEIGHTS
        if not weights.is_file():
            raise OracleError(f"derived:{arch}: `{shlex.join(command)}` wrote no {UNET_WEIGHTS}")
        unet_sha = sha256_file(weights)
        if stamp is not None and stamp.get("unet_sha256") != unet_sha:
            print(f"  warning: derived:{arch} changed with the new {binary.name} (unet sha256 "
                  f"{stamp.get('unet_sha256', '?')[:12]} -> {unet_sha[:12]}): goldens made from "
                  "the old weights are stale", file=sys.stderr)
        (out / DERIVED_STAMP).write_text(json.dumps({
            "arch": arch,
            "command": shlex.join(command),
            "reprodiff_bin": str(binary),
            "reprodiff_sha256": binary_sha,
            "unet_sha256": unet_sha,
            "written_by": TOOL,
        }, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(out, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, f"derived:{arch} ({made_by})"


@functools.cache
def diffusers_modules() -> Any:
    """diffusers, imported on first use (seconds), with its progress bars and info logs off."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    return diffusers


def load_ddim_pipeline(model: Model, run: DdimRun, device: str) -> Any:
    """DDIMPipeline.from_pretrained(folder) as a user loads it, with aligned weights, the
    scenario's scheduler overrides, dtype and device."""
    diffusers = diffusers_modules()
    pipe = diffusers.DDIMPipeline.from_pretrained(model.folder, use_safetensors=True)
    # The safetensors are memory-mapped at offsets that are not 64-byte aligned, and CPU kernels
    # then take other paths (results move by ~1e-6): goldens come from aligned copies.
    for p in pipe.unet.parameters():
        p.data = p.data.clone()
    for b in pipe.unet.buffers():
        b.data = b.data.clone()
    if run.scheduler:
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, **run.scheduler)
    pipe.unet.to(DTYPES[run.dtype])
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    check_against_scheduler(run, pipe.scheduler.config)
    return pipe


def check_against_scheduler(run: DdimRun, config: Any) -> None:
    """What can only be checked with the model's scheduler config (overrides applied)."""
    if run.steps > config.num_train_timesteps:
        raise SuiteError(f"run.steps {run.steps} > the scheduler's num_train_timesteps "
                         f"{config.num_train_timesteps} (DDIMScheduler raises ValueError)")
    betas = config.trained_betas
    if betas is not None and len(betas) != config.num_train_timesteps:
        raise SuiteError(f"run.scheduler.trained_betas has {len(betas)} values for "
                         f"num_train_timesteps {config.num_train_timesteps}")


def check_ddim_scenario(scenario: Scenario) -> None:
    """Checks a ddim scenario against its model's scheduler before anything runs (the
    conversion DDIMPipeline makes, then the overrides). Skip: the model is not here."""
    assert isinstance(scenario.run, DdimRun)
    diffusers = diffusers_modules()
    folder = resolve_model(scenario.run.model).folder
    config = diffusers.DDIMScheduler.load_config(folder / "scheduler")
    scheduler = diffusers.DDIMScheduler.from_config(config)
    scheduler = diffusers.DDIMScheduler.from_config(scheduler.config, **scenario.run.scheduler)
    try:
        check_against_scheduler(scenario.run, scheduler.config)
    except SuiteError as e:
        raise SuiteError(f"scenario '{scenario.name}': {e}") from None


def pipeline_generators(spec: GeneratorSpec) -> Generators:
    """The `generator=` argument: as make_generators, but `global` passes the generator
    object torch.manual_seed returns (the CPU default generator), as diffusers' docs do."""
    if spec.type == "global":
        return torch.manual_seed(spec.seeds[0])
    return make_generators(spec)


@torch.no_grad()
def ddim_latent(pipe: Any, run: DdimRun, generator: Generators) -> torch.Tensor:
    """DDIMPipeline.__call__ (diffusers 0.42.1, pipelines/ddim/pipeline_ddim.py) up to, not
    including, its post-processing: the raw NCHW sample."""
    unet, scheduler = pipe.unet, pipe.scheduler
    size = unet.config.sample_size
    if isinstance(size, int):
        shape = (run.batch, unet.config.in_channels, size, size)
    else:
        shape = (run.batch, unet.config.in_channels, *size)
    if isinstance(generator, list) and len(generator) != run.batch:
        raise SuiteError(f"{len(generator)} generators for batch {run.batch}")
    image = diffusers_randn_tensor()(
        shape, generator=generator, device=pipe._execution_device, dtype=unet.dtype
    )
    scheduler.set_timesteps(run.steps)
    for t in scheduler.timesteps:
        model_output = unet(image, t).sample
        image = scheduler.step(
            model_output, t, image, eta=run.eta,
            use_clipped_model_output=run.use_clipped_model_output, generator=generator,
        ).prev_sample
    return image


def run_ddim(run: DdimRun, device: str) -> torch.Tensor:
    """The scenario's output: the pipeline's "np" images (NHWC) or the raw latent (NCHW)."""
    require_device(device)
    model = resolve_model(run.model)
    pipe = load_ddim_pipeline(model, run, device)
    if run.output_type == "latent":
        self_check_latent_loop(run.model, device)

    def once() -> torch.Tensor:
        generator = pipeline_generators(run.generator)
        if run.output_type == "latent":
            return ddim_latent(pipe, run, generator)
        images = pipe(
            batch_size=run.batch,
            generator=generator,
            eta=run.eta,
            num_inference_steps=run.steps,
            use_clipped_model_output=run.use_clipped_model_output,
            output_type="np",
        ).images
        return torch.from_numpy(np.ascontiguousarray(images))

    out = once()
    if run.twice:  # the seed document's "L_inf dist = 0": the same generator(s) re-seeded
        out = out - once()
    return out


# The configurations self_check_latent_loop runs: generator, batch, eta, steps, clipped output.
SELF_CHECK_RUNS = (
    (GeneratorSpec("single", (0,), 1, "cpu"), 1, 0.0, 2, None),
    (GeneratorSpec("per-sample", (0, 1), 2, "cpu"), 2, 1.0, 3, True),
    (GeneratorSpec("repeated", (5,), 2, "cpu"), 2, 0.5, 2, False),
    (GeneratorSpec("global", (3,), 1, "cpu"), 1, 0.5, 2, None),
)


@functools.cache
def self_check_latent_loop(model_spec: str, device: str) -> None:
    """Once per model and process: ddim_latent, post-processed as DDIMPipeline does, must be
    bit-identical to the pipeline's own "np" output (else the latent goldens would not be
    diffusers')."""
    model = resolve_model(model_spec)
    for spec, batch, eta, steps, clipped in SELF_CHECK_RUNS:
        run = DdimRun(model_spec, steps, eta, batch, spec, "np", "f32", clipped, {})
        pipe = load_ddim_pipeline(model, run, device)
        want = pipe(batch_size=batch, generator=pipeline_generators(spec), eta=eta,
                    num_inference_steps=steps, use_clipped_model_output=clipped,
                    output_type="np").images
        pipe = load_ddim_pipeline(model, run, device)
        latent = ddim_latent(pipe, run, pipeline_generators(spec))
        got = (latent / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
        if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
            raise OracleError(
                f"self-check: the latent loop on {model_spec} ({spec.type} generator, batch "
                f"{batch}, eta {eta}, {steps} steps) is not DDIMPipeline's output bit for bit")


def self_check_main() -> int:
    """--self-check: the latent loop against DDIMPipeline on every fixtures/models/ model."""
    names = sorted(p.name for p in MODELS_DIR.iterdir() if (p / UNET_WEIGHTS).is_file())
    if not names:
        print(f"oracle: error: no models under {shown(MODELS_DIR)}", file=sys.stderr)
        return 1
    for name in names:
        self_check_latent_loop(name, "cpu")
        print(f"  {name}: latent loop == DDIMPipeline output, bit for bit "
              f"({len(SELF_CHECK_RUNS)} configurations)")
    return 0


@dataclass
class Result:
    """A computed scenario, ready for the golden file."""

    name: str
    shape: list[int]
    dtype: str
    sha256: str
    metrics: dict[str, float]
    array: np.ndarray | None
    fingerprint: Table
    tool: str


def tool_of(scenario: Scenario) -> str:
    """The provenance `tool`: this script and the versions (and model) that computed it."""
    if isinstance(scenario.run, RandomRun):
        return f"{TOOL} on torch {torch.__version__}"
    model = resolve_model(scenario.run.model)
    return (f"{TOOL} on torch {torch.__version__}, diffusers "
            f"{diffusers_modules().__version__}; model {model.description}")


def summarize(scenario: Scenario, out: torch.Tensor, fingerprint: Table) -> Result:
    """Hash, metrics and storable array of an output tensor."""
    t = out.detach().to("cpu").contiguous()
    digest = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    x = t.to(torch.float64).reshape(-1).numpy()
    a = np.abs(x)
    n = int(a.size)
    sum_abs = math.fsum(a.tolist())
    stored = t.to(torch.float32) if t.dtype == torch.bfloat16 else t  # bf16 → f32 is exact
    return Result(
        name=scenario.name,
        shape=list(t.shape),
        dtype=scenario.run.dtype,
        sha256=digest,
        metrics={
            "sum_abs": sum_abs,
            "max_abs": float(a.max()) if n else 0.0,
            "mean_abs": sum_abs / n if n else 0.0,
        },
        array=np.array(stored.numpy(), copy=True) if scenario.store_array else None,
        fingerprint=fingerprint,
        tool=tool_of(scenario),
    )


def compute(scenario: Scenario) -> Result:
    """Runs a scenario in this process. Raises Skip when it cannot run here.

    A ddim scenario runs twice (from a fresh load) and must give the same bits both times.
    """
    with determinism_in_force(scenario.determinism):
        if isinstance(scenario.run, RandomRun):
            out = run_random(scenario.run, scenario.device)
        else:
            out = run_ddim(scenario.run, scenario.device)
            again = run_ddim(scenario.run, scenario.device)
            if not torch.equal(out.contiguous().view(torch.uint8), again.contiguous().view(torch.uint8)):
                raise OracleError(f"scenario '{scenario.name}': two runs in this process gave "
                                  "different bits; no golden from it")
        fingerprint = environment_fingerprint()
    if scenario.slice is not None:
        if len(scenario.slice) > out.dim():
            raise SuiteError(f"scenario '{scenario.name}': slice has more axes than the "
                             f"output's {list(out.shape)}")
        try:
            out = out[scenario.slice].contiguous()
        except IndexError as e:
            raise SuiteError(f"scenario '{scenario.name}': slice: {e}") from None
    return summarize(scenario, out, fingerprint)


# --------------------------------------------------------------------------------------------
# Child processes for other CPU capabilities
# --------------------------------------------------------------------------------------------


def run_in_child(
    capability: str, tables: list[Table]
) -> tuple[list[Result], list[tuple[str, str]]]:
    """Computes `tables` in a fresh interpreter under ATEN_CPU_CAPABILITY=`capability`."""
    with tempfile.TemporaryDirectory(prefix="reprodiff-oracle-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"scenarios": tables}))
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child-job", str(job)],
            env=env,
            check=True,
        )
        answer = json.loads((Path(tmp) / "results.json").read_text())
        results = [
            Result(
                name=r["name"],
                shape=r["shape"],
                dtype=r["dtype"],
                sha256=r["sha256"],
                metrics=r["metrics"],
                array=None if r["array"] is None else np.load(Path(tmp) / r["array"]),
                fingerprint=r["fingerprint"],
                tool=r["tool"],
            )
            for r in answer["results"]
        ]
        return results, [tuple(s) for s in answer["skipped"]]


def child_main(job: Path) -> int:
    """In the child: computes the job's scenarios and writes results.json + arrays beside it."""
    tables = json.loads(job.read_text())["scenarios"]
    results, skipped = [], []
    for i, table in enumerate(tables):
        scenario = parse_scenario(table)
        try:
            r = compute(scenario)
        except Skip as e:
            skipped.append([scenario.name, str(e)])
            continue
        array = None
        if r.array is not None:
            array = f"{i}.npy"
            np.save(job.parent / array, r.array)
        results.append({
            "name": r.name, "shape": r.shape, "dtype": r.dtype, "sha256": r.sha256,
            "metrics": r.metrics, "array": array, "fingerprint": r.fingerprint, "tool": r.tool,
        })
    (job.parent / "results.json").write_text(json.dumps({"results": results, "skipped": skipped}))
    return 0


# --------------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------------


def slug(name: str) -> str:
    """A file-name-safe form of a scenario name ("a/b c" → "a__b-c")."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", name.replace("/", "__"))


def regenerate_command(suite: str, name: str) -> str:
    """The shell command that regenerates exactly this one scenario."""
    return (
        f"{RUN_SH} --suite {shlex.quote(suite)} "
        f"--filter {shlex.quote('^' + re.escape(name) + '$')}"
    )


def write_atomically(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Writes through a temporary file in the same directory, then renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_golden(path: Path, suite: str) -> Table:
    """The existing golden file of `suite`, or an empty one."""
    if not path.exists():
        return {"scenarios": {}, "environments": {}}
    golden = json.loads(path.read_text())
    if golden.get("schema") != SCHEMA or golden.get("suite") != suite:
        raise SuiteError(f"{path}: not a schema {SCHEMA} golden file of suite '{suite}'")
    return golden


def write_golden(suite: Suite, results: list[Result], prune: bool, golden_dir: Path) -> Path:
    """Merges `results` into fixtures/golden/<suite>.json and stores their arrays.

    `prune`: drop entries of scenarios no longer in the suite (a run without --filter).
    Arrays are written first, the JSON replaced next, unreferenced arrays deleted last.
    """
    path = golden_dir / f"{suite.name}.json"
    old = load_golden(path, suite.name)
    entries: dict[str, Table] = dict(old.get("scenarios", {}))
    environments: dict[str, Table] = dict(old.get("environments", {}))
    if prune:
        names = {s["name"] for s in suite.scenarios}
        entries = {k: v for k, v in entries.items() if k in names}

    for r in results:
        env_id = environment_id(r.fingerprint)
        environments[env_id] = r.fingerprint
        entry: Table = {
            "shape": r.shape,
            "dtype": r.dtype,
            "sha256": r.sha256,
            "metrics": r.metrics,
            "provenance": {
                "producer": "oracle",
                "tool": r.tool,
                "command": regenerate_command(suite.name, r.name),
                "environment": env_id,
            },
        }
        if r.array is not None:
            rel = f"{suite.name}/{slug(r.name)}.{r.sha256[:12]}.npy"
            array = r.array
            write_atomically(golden_dir / rel, lambda f: np.save(f, array))
            entry["array"] = rel
        entries[r.name] = entry

    used_envs = {e["provenance"]["environment"] for e in entries.values()}
    golden = {
        "schema": SCHEMA,
        "suite": suite.name,
        "generated": GENERATED,
        "environments": {k: v for k, v in environments.items() if k in used_envs},
        "scenarios": entries,
    }
    text = json.dumps(golden, sort_keys=True, indent=1, allow_nan=False) + "\n"
    write_atomically(path, lambda f: f.write(text), mode="w")

    referenced = {e["array"] for e in entries.values() if "array" in e}
    array_dir = golden_dir / suite.name
    if array_dir.is_dir():
        for f in array_dir.glob("*.npy"):
            if f"{suite.name}/{f.name}" not in referenced:
                f.unlink()
    return path


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def select_suites(names: list[str]) -> list[Suite]:
    """The named suites (fixtures/suites/NAME.toml), or every suite with a scenario the
    oracle runs."""
    if not names:
        suites = [load_suite(p) for p in sorted(SUITES_DIR.glob("*.toml"))]
        return [s for s in suites if any(is_supported(t) for t in s.scenarios)]
    selected = []
    for name in names:
        path = SUITES_DIR / f"{name}.toml"
        if not path.exists():
            raise SuiteError(f"no suite '{name}' ({shown(path)} does not exist)")
        suite = load_suite(path)
        if suite.name != name:
            raise SuiteError(f"{shown(path)} names itself '{suite.name}', not '{name}'")
        selected.append(suite)
    return selected


def report(result: Result, where: str) -> None:
    """One line per scenario written: name, sha256[:12], sum_abs."""
    sum_abs = result.metrics["sum_abs"]
    print(f"  {result.name:<52} {result.sha256[:12]}  sum_abs={sum_abs!r}{where}", flush=True)


def process_suite(
    suite: Suite, pattern: re.Pattern[str] | None, golden_dir: Path
) -> tuple[int, int]:
    """Computes and writes one suite's goldens; returns (written, skipped)."""
    chosen = [t for t in suite.scenarios if pattern is None or pattern.search(t["name"])]
    runnable = [t for t in chosen if is_supported(t)]
    other = len(chosen) - len(runnable)
    print(f"{suite.name}: {len(runnable)} scenario(s) to compute"
          + (f", {other} of kinds the oracle does not run" if other else ""), flush=True)
    if not runnable:
        return 0, 0

    scenarios = [parse_scenario(t) for t in runnable]  # validates every one before running any
    # Published values (ci/oracle/published.py) are the reference itself: never replaced.
    existing = load_golden(golden_dir / f"{suite.name}.json", suite.name)["scenarios"]
    published = {n for n, e in existing.items()
                 if e.get("provenance", {}).get("producer") == "published"}
    skipped: list[tuple[str, str]] = [
        (s.name, "its golden is a published value (ci/oracle/published.py), which the oracle "
                 "never replaces") for s in scenarios if s.name in published
    ]
    scenarios = [s for s in scenarios if s.name not in published]
    runnable = [t for t in runnable if t["name"] not in published]
    # Models and schedulers next (a derived model runs reprodiff once), so that a missing
    # binary or a step count the scheduler refuses fails before anything is computed.
    for scenario in scenarios:
        if isinstance(scenario.run, DdimRun):
            with contextlib.suppress(Skip):  # reported per scenario below
                check_ddim_scenario(scenario)
    results: list[Result] = []
    by_capability: dict[str, list[Table]] = {}
    for table, scenario in zip(runnable, scenarios):
        cap = scenario.determinism.cpu_capability
        if cap is not None:
            by_capability.setdefault(cap, []).append(table)
            continue
        try:
            started = time.monotonic()
            results.append(compute(scenario))
            report(results[-1], f"  {time.monotonic() - started:.1f}s")
        except Skip as e:
            skipped.append((scenario.name, str(e)))
    for cap, tables in by_capability.items():
        child_results, child_skipped = run_in_child(cap, tables)
        for r in child_results:
            report(r, f"  [child, ATEN_CPU_CAPABILITY={cap}]")
        results.extend(child_results)
        skipped.extend(child_skipped)

    for name, why in skipped:
        print(f"  warning: skipped {name}: {why}", file=sys.stderr)
    if results:
        path = write_golden(suite, results, prune=pattern is None, golden_dir=golden_dir)
        print(f"{suite.name}: wrote {len(results)} scenario(s) to {shown(path)}"
              + (f", skipped {len(skipped)} (existing entries kept)" if skipped else ""))
    return len(results), len(skipped)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options (--child-job is internal: the capability child's entry point)."""
    p = argparse.ArgumentParser(
        prog=RUN_SH, description="Regenerates golden fixtures with real PyTorch (the oracle)."
    )
    p.add_argument("--suite", action="append", default=[], metavar="NAME",
                   help="suite to regenerate (fixtures/suites/NAME.toml); repeatable; "
                        "default: every suite with scenarios the oracle can run")
    p.add_argument("--filter", metavar="REGEX",
                   help="only scenarios whose expanded name matches (re.search); "
                        "other entries of the golden file are kept")
    p.add_argument("--golden-dir", type=Path, default=GOLDEN_DIR, metavar="DIR",
                   help=f"where golden files go (default {shown(GOLDEN_DIR)}); for trying the "
                        "oracle out without touching the committed goldens")
    p.add_argument("--self-check", action="store_true",
                   help="check the latent loop against DDIMPipeline on the models of "
                        f"{shown(MODELS_DIR)}/ and exit")
    p.add_argument("--child-job", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child_job is not None:
        return child_main(args.child_job)
    if args.self_check:
        try:
            return self_check_main()
        except OracleError as e:
            print(f"oracle: error: {e}", file=sys.stderr)
            return 1
    start = time.monotonic()
    try:
        pattern = re.compile(args.filter) if args.filter is not None else None
        suites = select_suites(args.suite)
        written = skipped = 0
        for suite in suites:
            w, s = process_suite(suite, pattern, args.golden_dir.resolve())
            written, skipped = written + w, skipped + s
    except (SuiteError, re.error) as e:
        print(f"oracle: error: {e}", file=sys.stderr)
        return 2
    except OracleError as e:
        print(f"oracle: error: {e}", file=sys.stderr)
        return 1
    print(f"oracle: {written} scenario(s) written, {skipped} skipped, {len(suites)} suite(s), "
          f"torch {torch.__version__}, {time.monotonic() - start:.1f}s")
    if written == 0 and skipped == 0:
        print("oracle: error: nothing selected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
