"""Computing scenarios: the output, and for DDIM and SD scenarios the float64 truth and
sensitivity (for SD, with per-component sensitivities).

A scenario runs under its determinism (determinism.py). One that asks for another ATen CPU
capability runs in a child process of goldens.py with ATEN_CPU_CAPABILITY set, since ATen
fixes the capability when torch loads; the child writes its arrays into the same results
directory. Threads are torch's default unless the scenario's determinism sets them; the
fingerprint records the count either way. It matters: CPU convolutions give other bits on 1
thread than on 2 or more for a batch of two or more, and the full-size cifar UNet differs at 1
and 3 threads even for one image (the DDIM suites pin 2 threads).

A DDIM or SD output is computed twice, each from a fresh load, and must be bit-identical: a
result that does not repeat in one process is no reference for anyone. A run in bfloat16 or
float16 gets the same figures in its own precision (draws in its dtype, nudges of one ulp of
it: truth.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import results
import scenarios
from common import OracleError, Skip, SuiteError
from determinism import determinism_in_force
from fingerprint import environment_fingerprint
from local import local_pass
from results import Outcome
from scenarios import DdimRun, Scenario, SdRun, VaeEncodeRun
from truth import (component_images, nudged_image, rmse, step_latents, steps_recorded,
                   truth_images)
from workloads import ddim_images, pipeline_output, run_random, self_check_latent_loop
from workloads_sd import sd_images, vae_moments

GOLDENS_PY = Path(__file__).resolve().parent / "goldens.py"


def compute(scenario: Scenario) -> Outcome:
    """Runs a scenario in this process. Raises Skip when it cannot run here."""
    with determinism_in_force(scenario.determinism):
        fingerprint = environment_fingerprint()
        if isinstance(scenario.run, DdimRun):
            return compute_ddim(scenario, scenario.run, fingerprint)
        if isinstance(scenario.run, SdRun):
            return compute_sd(scenario, scenario.run, fingerprint)
        if isinstance(scenario.run, VaeEncodeRun):
            return compute_vae_encode(scenario, scenario.run, fingerprint)
        output = run_random(scenario.run, scenario.device)
        return Outcome(scenario, cut(scenario, output), fingerprint)


def compute_ddim(scenario: Scenario, run: DdimRun, fingerprint: dict[str, Any]) -> Outcome:
    """The float32 output (twice, bit for bit), the float64 truth and the sensitivity."""
    if run.output_type == "latent":
        self_check_latent_loop(run.model, run.models_dir, scenario.device)
    runs = 2 if run.twice else 1
    with steps_recorded() as run_steps:
        images = ddim_images(run, scenario.device)
    output = repeated_output(scenario, run, images, ddim_images(run, scenario.device))
    with steps_recorded() as truth_steps:
        truth_run, draws = truth_images(run, scenario.device)
        truth = cut(scenario, pipeline_output(run, truth_run))
    # A `twice` output is a difference of zeros: its sensitivity is that of its first image.
    with steps_recorded() as nudged_steps:
        nudged = cut(scenario, nudged_image(run, scenario.device))
    sensitivity = rmse(nudged, cut(scenario, images[0]))
    steps = per_step(run, (run_steps, runs), (truth_steps, runs), (nudged_steps, 1))
    add_local(scenario, run, steps, draws)
    return Outcome(scenario, output, fingerprint, truth, sensitivity, steps=steps)


def compute_sd(scenario: Scenario, run: SdRun, fingerprint: dict[str, Any]) -> Outcome:
    """The output (twice, bit for bit), the float64 truth, the sensitivity and the
    per-component sensitivities (in the run's own precision: truth.py)."""
    runs = 2 if run.twice else 1
    with steps_recorded() as run_steps:
        images = sd_images(run, scenario.device)
    output = repeated_output(scenario, run, images, sd_images(run, scenario.device))
    with steps_recorded() as truth_steps:
        truth_run, draws = truth_images(run, scenario.device)
        truth = cut(scenario, pipeline_output(run, truth_run))
    # As for DDIM, a `twice` output's sensitivities are those of its first image.
    first = cut(scenario, images[0])
    with steps_recorded() as nudged_steps:
        nudged = nudged_image(run, scenario.device)
    sensitivity = rmse(cut(scenario, nudged), first)
    components = {name: rmse(cut(scenario, image), first)
                  for name, image in component_images(run, scenario.device).items()}
    steps = per_step(run, (run_steps, runs), (truth_steps, runs), (nudged_steps, 1))
    add_local(scenario, run, steps, draws)
    return Outcome(scenario, output, fingerprint, truth, sensitivity, components, steps)


def per_step(run: DdimRun | SdRun, *recorded: tuple[list[torch.Tensor], int]
             ) -> dict[str, torch.Tensor] | None:
    """The per-step latents of the run, its truth and its nudged run (truth.steps_recorded),
    each [steps, *latent]; None for a rerun difference, which is compared exactly."""
    if run.twice:
        return None
    stacked = [step_latents(latents, runs) for latents, runs in recorded]
    if len({t.shape for t in stacked}) != 1:
        raise OracleError(f"per-step latents of unequal shapes {[t.shape for t in stacked]}")
    return dict(zip(("run", "truth", "nudged"), stacked))


def add_local(scenario: Scenario, run: DdimRun | SdRun, steps: dict[str, torch.Tensor] | None,
              draws: list[torch.Tensor]) -> None:
    """Adds to `steps` diffusers' teacher-forced pass from the truth's inputs and its nudged
    twin (local.py), and those inputs (the truth's initial latent and eta noise)."""
    if steps is not None:
        steps.update(local_pass(run, scenario.device, steps["truth"], draws,
                                lambda t: cut(scenario, pipeline_output(run, [t]))))


def compute_vae_encode(scenario: Scenario, run: VaeEncodeRun,
                       fingerprint: dict[str, Any]) -> Outcome:
    """The moments (twice, bit for bit), their float64 truth (the VAE in float64 on the same
    input, cast) and the sensitivity (the input one ulp up)."""
    output = cut(scenario, vae_moments(run, scenario.device))
    again = cut(scenario, vae_moments(run, scenario.device))
    if not torch.equal(output.view(torch.uint8), again.view(torch.uint8)):
        raise OracleError(f"scenario '{scenario.name}': two runs in this process gave "
                          "different bits; no result from it")
    truth = cut(scenario, vae_moments(run, scenario.device, in_dtype="f64"))
    sensitivity = rmse(cut(scenario, vae_moments(run, scenario.device, nudge=True)), output)
    return Outcome(scenario, output, fingerprint, truth, sensitivity)


def repeated_output(scenario: Scenario, run: DdimRun | SdRun, images: list[torch.Tensor],
                    again: list[torch.Tensor]) -> torch.Tensor:
    """The scenario's output from `images`, which a second fresh load (`again`) must repeat
    bit for bit."""
    output = cut(scenario, pipeline_output(run, images))
    repeated = cut(scenario, pipeline_output(run, again))
    if not torch.equal(output.view(torch.uint8), repeated.view(torch.uint8)):
        raise OracleError(f"scenario '{scenario.name}': two runs in this process gave "
                          "different bits; no result from it")
    return output


def cut(scenario: Scenario, t: torch.Tensor) -> torch.Tensor:
    """The scenario's slice of an output (all of it without one), contiguous on the CPU."""
    t = t.detach().cpu()
    if scenario.slice is None:
        return t.contiguous()
    if len(scenario.slice) > t.dim():
        raise SuiteError(f"scenario '{scenario.name}': slice has more axes than the "
                         f"output's {list(t.shape)}")
    try:
        return t[scenario.slice].contiguous()
    except IndexError as e:
        raise SuiteError(f"scenario '{scenario.name}': slice: {e}") from None


def run_in_child(capability: str, chosen: list[Scenario],
                 out_dir: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Computes `chosen` in a fresh interpreter under ATEN_CPU_CAPABILITY=`capability`;
    returns their results.jsonl lines (arrays already in out_dir) and the skipped ones
    ("suite/name", why)."""
    with tempfile.TemporaryDirectory(prefix="reprodiff-oracle-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"out_dir": str(out_dir),
                                   "scenarios": [s.source for s in chosen]}))
        env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
        done = subprocess.run([sys.executable, str(GOLDENS_PY), "--child-job", str(job)],
                              env=env)
        if done.returncode != 0:
            raise OracleError(f"the child process for ATEN_CPU_CAPABILITY={capability} exited "
                              f"with {done.returncode}")
        answer = json.loads((Path(tmp) / "answer.json").read_text())
    return answer["lines"], [(name, why) for name, why in answer["skipped"]]


def child_main(job: Path) -> int:
    """In the child: computes the job's scenarios, writes their arrays into the results
    directory and answer.json (lines and skips) beside the job."""
    spec = json.loads(job.read_text())
    out_dir = Path(spec["out_dir"])
    lines, skipped = [], []
    for source in spec["scenarios"]:
        scenario = scenarios.parse(source)
        try:
            lines.append(results.record(compute(scenario), out_dir))
        except Skip as e:
            skipped.append((f"{scenario.suite}/{scenario.name}", str(e)))
    (job.parent / "answer.json").write_text(json.dumps({"lines": lines, "skipped": skipped}))
    return 0
