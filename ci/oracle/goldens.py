#!/usr/bin/env python3
"""The Python oracle: reference results for reprodiff's suites, computed with real PyTorch.

reprodiff (Rust, on libtorch) checks what it computes against golden files in fixtures/golden/.
The oracle is where those goldens come from for every scenario PyTorch and diffusers can run:
it asks reprodiff for the expanded scenarios (`reprodiff list --json`), computes each with
PyTorch (random draws) or diffusers' DDIMPipeline or StableDiffusionPipeline, and writes a
results directory: results.jsonl and the arrays (results.py). `reprodiff golden merge --from
DIR` then turns it into golden files, which reprodiff alone writes. Per scenario it records the
output's bits and array and the environment fingerprint it ran in; for a DDIM or SD scenario
also the float64 truth and the output's sensitivity to a one-ulp change (of the run's dtype) of
the initial noise (for SD also to each component's rounding; truth.py), by which reprodiff
compares runs from other hardware.

Usage (ci/oracle/run.sh prepares the venv, then calls this from the repository root)::

    ci/oracle/run.sh [--suite NAME]... [--filter REGEX] [--out DIR] [--no-merge]
                     [--golden-dir DIR]
    ci/oracle/run.sh --self-check        # the DDIM and SD draw paths, tiny models

Without --suite, every suite; --filter is reprodiff's (a regular expression on `scenario` and
`suite/scenario`). Without --out the results go to a fresh temporary directory, kept and
printed. Scenarios the host cannot run (no CUDA, a hub model not in the cache, unseeded) are
skipped with a warning; the goldens keep what they had for them.

Environment: REPRODIFF_BIN (the reprodiff binary: scenarios, fingerprint, model folders, merge;
default target/debug/reprodiff), REPRODIFF_CACHE (where reprodiff keeps derived models, as
run.sh), HF_HUB_CACHE / HF_HOME (hub models).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import scenarios
from common import MODELS_DIR, RUN_SH, OracleError, Skip, SuiteError, shown
from compute import child_main, compute, run_in_child
from models import SD_WEIGHTS, UNET_WEIGHTS
from results import merge, record, records, write_results
from local import self_check_forcing
from scenarios import DdimRun, GeneratorSpec, RandomRun, Scenario, SdRun
from truth import rmse, self_check_float32_draws, self_check_sd_draws
from workloads import model_of, self_check_latent_loop

Line = dict[str, Any]  # a results.jsonl line


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child_job is not None:
        return child_main(args.child_job)
    try:
        return self_check_main() if args.self_check else oracle_main(args)
    except SuiteError as e:
        print(f"oracle: error: {e}", file=sys.stderr)
        return 2
    except OracleError as e:
        print(f"oracle: error: {e}", file=sys.stderr)
        return 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options (--child-job is internal: the capability child's entry point)."""
    p = argparse.ArgumentParser(
        prog=RUN_SH, description="Computes reference results with real PyTorch (the oracle) "
                                 "and merges them into the goldens with reprodiff.")
    p.add_argument("--suite", action="append", default=[], metavar="NAME",
                   help="suite to compute (repeatable; default: every suite)")
    p.add_argument("--filter", metavar="REGEX",
                   help="only scenarios whose name or suite/name matches (reprodiff's --filter)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="the results directory (default: a fresh temporary directory)")
    p.add_argument("--no-merge", action="store_true",
                   help="only write the results directory; do not run reprodiff golden merge")
    p.add_argument("--golden-dir", type=Path, metavar="DIR",
                   help="the golden directory to merge into (default: reprodiff's, "
                        "fixtures/golden)")
    p.add_argument("--self-check", action="store_true",
                   help="check the DDIM latent loop and the float32-draw wrapper (DDIM, SD) "
                        f"on the models of {shown(MODELS_DIR)}/ and exit")
    p.add_argument("--child-job", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.no_merge and args.golden_dir is not None:
        p.error("--golden-dir names where to merge; it does nothing with --no-merge")
    return args


def self_check_main() -> int:
    """--self-check: the DDIM paths the oracle adds to DDIMPipeline, on every tiny DDIM model,
    and the SD draw path on every tiny Stable Diffusion model."""
    models = sorted(p for p in MODELS_DIR.iterdir() if (p / UNET_WEIGHTS).is_file())
    sd = [p.name for p in models if (p / SD_WEIGHTS["text_encoder"]).is_file()]
    ddim = [p.name for p in models if p.name not in sd]
    if not ddim or not sd:
        raise OracleError(f"no DDIM or no Stable Diffusion models under {shown(MODELS_DIR)}")
    for name in ddim:
        self_check_latent_loop(name, MODELS_DIR, "cpu")
        print(f"  {name}: latent loop == DDIMPipeline output, bit for bit", flush=True)
        print(f"  {self_check_float32_draws(name)}", flush=True)
        for run in forcing_runs_ddim(name):
            print(f"  {self_check_forcing(run)}", flush=True)
    for name in sd:
        print(f"  {self_check_sd_draws(name)}", flush=True)
        for run in forcing_runs_sd(name):
            print(f"  {self_check_forcing(run)}", flush=True)
    return 0


def forcing_runs_ddim(model: str) -> list[DdimRun]:
    """The DDIM runs the teacher-forcing self-check forces: eta 0 and 1, latent and np."""
    spec = GeneratorSpec("per-sample", (0, 1), 2, "cpu")
    return [DdimRun(model=model, steps=3, eta=eta, batch=2, generator=spec, output_type=out,
                    dtype="f32", use_clipped_model_output=None)
            for eta, out in ((0.0, "np"), (1.0, "latent"))]


def forcing_runs_sd(model: str) -> list[SdRun]:
    """The SD runs the teacher-forcing self-check forces: DDIM with eta 1, and PNDM (its
    history), in float32 and (PNDM) float16."""
    spec = GeneratorSpec("per-sample", (0,), 1, "cpu")
    base = SdRun(model=model, prompt="A bear is playing a guitar on Times Square",
                 negative_prompt=None, guidance_scale=7.5, steps=3, eta=1.0,
                 num_images_per_prompt=1, height=None, width=None, clip_skip=None,
                 generator=spec, output_type="np", dtype="f32", scheduler_class="ddim")
    pndm = replace(base, eta=0.0, steps=5, scheduler_class="pndm")
    return [base, pndm, replace(pndm, dtype="f16", output_type="latent")]


def oracle_main(args: argparse.Namespace) -> int:
    """Computes the selected scenarios into a results directory and merges it."""
    start = time.monotonic()
    listed = scenarios.listed(args.suite, args.filter)
    chosen = [scenarios.parse(line) for line in listed if scenarios.is_supported(line)]
    other = len(listed) - len(chosen)
    print(f"oracle: {len(chosen)} scenario(s) to compute"
          + (f", {other} of kinds the oracle does not run" if other else ""), flush=True)
    if not chosen:
        raise OracleError("nothing selected")
    out_dir = args.out.resolve() if args.out is not None else Path(
        tempfile.mkdtemp(prefix="reprodiff-oracle-results-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    resolve_models(chosen)
    lines, skipped = compute_all(chosen, out_dir)
    for name, why in skipped:
        print(f"  warning: skipped {name}: {why}", file=sys.stderr)
    path = write_results(out_dir, lines)
    print(f"oracle: {len(lines)} result(s) in {path}, {len(skipped)} skipped, "
          f"{time.monotonic() - start:.1f}s", flush=True)
    if not lines:
        print("oracle: nothing to merge")
    elif args.no_merge:
        folder = records(out_dir)
        print(f"oracle: not merged (reprodiff golden merge --from {out_dir} merges it); "
              f"check records in {folder} (reprodiff report {folder})")
    else:
        merge(out_dir, args.golden_dir)
    return 0


def resolve_models(chosen: list[Scenario]) -> None:
    """Every DDIM and SD model located first (a derived one made), so that a missing folder or
    binary fails before anything is computed; a model that is not here skips later."""
    for s in chosen:
        if not isinstance(s.run, RandomRun):  # every other kind loads a model
            with contextlib.suppress(Skip):
                model_of(s.run)


def compute_all(chosen: list[Scenario], out_dir: Path) -> tuple[list[Line], list[tuple[str, str]]]:
    """Results lines in the listing's order, and (name, why) of the skipped scenarios.

    Scenarios asking for another CPU capability run in one child process per capability."""
    lines: list[Line] = []
    skipped: list[tuple[str, str]] = []
    by_capability: dict[str, list[Scenario]] = {}
    for s in chosen:
        if s.determinism.cpu_capability is not None:
            by_capability.setdefault(s.determinism.cpu_capability, []).append(s)
            continue
        try:
            started = time.monotonic()
            lines.append(record(compute(s), out_dir))
            report(lines[-1], out_dir, f"{time.monotonic() - started:.1f}s")
        except Skip as e:
            skipped.append((f"{s.suite}/{s.name}", str(e)))
    for capability, group in by_capability.items():
        child_lines, child_skipped = run_in_child(capability, group, out_dir)
        for line in child_lines:
            report(line, out_dir, f"[child, ATEN_CPU_CAPABILITY={capability}]")
        lines += child_lines
        skipped += child_skipped
    order = {(s.suite, s.name): i for i, s in enumerate(chosen)}
    lines.sort(key=lambda line: order[(line["suite"], line["scenario"])])
    return lines, skipped


def report(line: Line, out_dir: Path, note: str) -> None:
    """One line per result: name, sha256[:12], and for a truth its rmse to the output, the
    sensitivity and any component sensitivities."""
    text = f"  {line['suite']}/{line['scenario']:<56} {line['sha256'][:12]}"
    truth = line["truth"]
    if truth is not None:
        output = torch.from_numpy(np.load(out_dir / line["array"]))
        exact = torch.from_numpy(np.load(out_dir / truth["array"]))
        text += f"  rmse(truth)={rmse(exact, output):.3e} sensitivity={truth['sensitivity']:.3e}"
        for name, value in truth.get("components", {}).items():
            text += f" {name}={value:.3e}"
    print(f"{text}  {note}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
