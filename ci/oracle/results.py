"""The oracle's results directory, and handing it to `reprodiff golden merge`.

The golden files (format, environment classes, metrics, atomic writes) belong to reprodiff
(src/harness/store.rs, src/harness/golden/merge.rs), so the oracle writes only what it computed: DIR/results.jsonl,
one JSON line per scenario, and the arrays under DIR/arrays/. `reprodiff golden merge --from
DIR` checks every array against its SHA-256, recomputes the metrics from it and makes it the
expectation of the class its fingerprint gives. A line:

    {"suite", "scenario", "shape", "dtype" (f32, f16, bf16, f64), "sha256" (of the output's raw
     bytes in its dtype), "array" (arrays/<slug>.<sha12>.npy; bf16 stored upcast to f32, which
     is exact), "environment" (the fingerprint), "provenance" {"producer", "tool", "command"},
     "truth": null or {"array" (float64 .npy), "sha256", "sensitivity", "components" (SD
     only: {"text_encoder", "unet", "vae"?: sensitivity to that component's rounding}),
     "tool", "steps": absent or {"run", "truth", "nudged": {"array", "sha256"}: float64
     .npy of the latent after every scheduler step, [steps, *latent], of the run (in its
     dtype, cast), the truth and the nudged run; "local", "local_nudged": the same of the
     teacher-forced run from the truth's inputs and of its nudged twin (local.py);
     "local_output", "local_nudged_output": their outputs; "initial": the truth's initial
     latent; "noise" (only with eta noise): its eta noise per step, [steps, *latent]}}}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import RUN_SH, TOOL, reprodiff
from scenarios import RandomRun, Scenario, SdRun, VaeEncodeRun
from workloads import DTYPES, diffusers_modules, model_of
from workloads_sd import CLIP_SKIP_SHIM

Table = dict[str, Any]
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass
class Outcome:
    """A computed scenario: its output (sliced), and for DDIM and SD its truth and sensitivity
    (SD: also per component)."""

    scenario: Scenario
    output: torch.Tensor
    fingerprint: Table
    truth: torch.Tensor | None = None
    sensitivity: float | None = None
    components: dict[str, float] | None = None
    steps: dict[str, torch.Tensor] | None = None


def record(outcome: Outcome, out_dir: Path) -> Table:
    """Writes the outcome's arrays under out_dir/arrays/ and returns its results.jsonl line."""
    s = outcome.scenario
    output = outcome.output.detach().cpu().contiguous()
    sha = raw_sha256(output)
    stored = output.to(torch.float32) if output.dtype == torch.bfloat16 else output
    line: Table = {
        "suite": s.suite,
        "scenario": s.name,
        "shape": list(output.shape),
        "dtype": DTYPE_NAMES[output.dtype],
        "sha256": sha,
        "array": save_array(out_dir, f"{s.source['slug']}.{sha[:12]}.npy", stored),
        "environment": outcome.fingerprint,
        "provenance": {
            "producer": "oracle",
            "tool": tool_of(s),
            "command": regenerate_command(s.suite, s.name),
        },
        "truth": None,
    }
    if outcome.truth is not None:
        truth = outcome.truth.detach().cpu().contiguous()
        assert truth.dtype == torch.float64 and truth.shape == output.shape
        truth_sha = raw_sha256(truth)
        line["truth"] = {
            "array": save_array(out_dir, f"{s.source['slug']}.truth.{truth_sha[:12]}.npy", truth),
            "sha256": truth_sha,
            "sensitivity": outcome.sensitivity,
            "tool": f"{tool_of(s)}; {truth_note(s)}",
        }
        if outcome.components is not None:
            line["truth"]["components"] = outcome.components
        if outcome.steps is not None:
            line["truth"]["steps"] = {}
            for kind, latents in outcome.steps.items():
                t = latents.to(torch.float64).contiguous()
                line["truth"]["steps"][kind] = {
                    "array": save_array(out_dir,
                                        f"{s.source['slug']}.steps-{kind}.{truth_sha[:12]}.npy", t),
                    "sha256": raw_sha256(t)}
    return line


def raw_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a contiguous CPU tensor's raw bytes in its own dtype (the `bits` metric)."""
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def save_array(out_dir: Path, name: str, t: torch.Tensor) -> str:
    """Saves `t` as out_dir/arrays/NAME (.npy) and returns the path relative to out_dir."""
    rel = f"arrays/{name}"
    (out_dir / "arrays").mkdir(parents=True, exist_ok=True)
    np.save(out_dir / rel, t.numpy())
    return rel


def tool_of(scenario: Scenario) -> str:
    """The provenance `tool`: this script and the versions (and model) that computed it."""
    if isinstance(scenario.run, RandomRun):
        return f"{TOOL} on torch {torch.__version__}"
    tool = (f"{TOOL} on torch {torch.__version__}, diffusers "
            f"{diffusers_modules().__version__}")
    if isinstance(scenario.run, SdRun):
        import transformers

        tool += f", transformers {transformers.__version__}"
    tool += f"; model {model_of(scenario.run).description}"
    if isinstance(scenario.run, SdRun) and scenario.run.clip_skip is not None:
        tool += f"; {CLIP_SKIP_SHIM}"
    return tool


def truth_note(scenario: Scenario) -> str:
    """How the truth (and an SD scenario's component sensitivities) was made."""
    if isinstance(scenario.run, VaeEncodeRun):
        return ("float64 truth: the VAE in float64 on the same input image, cast; sensitivity: "
                "the input one ulp up (ci/oracle/compute.py)")
    if not isinstance(scenario.run, SdRun):
        return ("float64 truth: the UNet in float64, every draw made in float32 and cast "
                "(ci/oracle/truth.py)")
    if scenario.run.dtype in ("bf16", "f16"):
        dtype = scenario.run.dtype
        return (f"float64 truth: the text encoder, UNet and VAE in float64, every draw made in "
                f"{dtype} (as the run draws) and cast; sensitivity: one {dtype} ulp of "
                f"initial noise; components: that component's output multiplied by 1 + eps/2 "
                f"of {dtype} in every call (ci/oracle/truth.py)")
    return ("float64 truth: the text encoder, UNet and VAE in float64, every draw made in "
            "float32 and cast; components: the rmse of the float32 output when that "
            "component's output is multiplied by 1 + 2^-24 in every call (ci/oracle/truth.py)")


def regenerate_command(suite: str, name: str) -> str:
    """The shell command that regenerates exactly this one scenario."""
    return (f"{RUN_SH} --suite {shlex.quote(suite)} "
            f"--filter {shlex.quote('^' + re.escape(name) + '$')}")


def write_results(out_dir: Path, lines: list[Table]) -> Path:
    """out_dir/results.jsonl, written through a temporary file and renamed into place."""
    path = out_dir / "results.jsonl"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".results.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            for line in lines:
                f.write(json.dumps(line, sort_keys=True, allow_nan=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def records(out_dir: Path) -> Path:
    """`reprodiff golden compare --from out_dir --out out_dir/records`: the results judged
    against the goldens as `check` judges a run, written as check records (schema and format are
    reprodiff's; the oracle does not write records itself). Returns the records folder."""
    folder = out_dir / "records"
    reprodiff(["golden", "compare", "--from", str(out_dir), "--out", str(folder)])
    return folder


def merge(out_dir: Path, golden_dir: Path | None) -> None:
    """`reprodiff golden merge --from out_dir [--golden-dir golden_dir]`."""
    args = ["golden", "merge", "--from", str(out_dir)]
    if golden_dir is not None:
        args += ["--golden-dir", str(golden_dir)]
    reprodiff(args)
