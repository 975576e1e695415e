"""diffusers' local error: every denoising step and the output computed from the float64
truth's own input to it (#26 A).

A chaotic trajectory cannot be compared across classes past its first steps: another CPU's
rounding makes another trajectory. A single step is not chaotic. Step t, computed by the run
under test from the truth's latent after step t-1 (rounded to the run's dtype), differs from the
truth's latent after step t only by that one step's rounding, wherever in the trajectory it is.
reprodiff does the same in Rust (the local pass, src/harness/run/local.rs) and holds its local
error to the one measured here, in diffusers, on each recorded class.

The pass ("teacher forcing"): the pipeline runs as usual, but
- its initial latent is the truth's (its first draw, which the truth made in the run's dtype and
  cast: truth.float32_draws), rounded to the run's dtype;
- every scheduler step's `prev_sample` is recorded and then replaced by the truth's latent after
  that step, rounded to the run's dtype, so the next UNet call sees the truth's input;
- DDIM with eta > 0 gets the truth's own noise of that step (`variance_noise`), never a draw:
  CPU randn differs by ATen capability;
- a multistep scheduler (PNDM) keeps its own history: its model outputs on the truth's inputs.
The pipeline's output is then its decode and post-processing of the truth's final latent: the
output stage's local error.

The local response is the same pass with every forced input (initial latent and each step's
latent) one ulp of the run's dtype up: how far one step moves when its input moves one ulp, the
scale the local rule's floor is measured in.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from common import OracleError
from scenarios import PipelineRun
from truth import (draw_dtype, draw_modules, float32_draws, images_of, replaced, same_bits,
                   step_latents, steps_recorded)


def forced_input(x: torch.Tensor, like: torch.Tensor, nudge: bool) -> torch.Tensor:
    """`x` (float64) as the run's input: rounded to `like`'s dtype on its device, one ulp up
    when `nudge`."""
    y = x.to(device=like.device, dtype=like.dtype)
    return torch.nextafter(y, torch.full_like(y, math.inf)) if nudge else y


@contextlib.contextmanager
def steps_forced(run: PipelineRun, forced: torch.Tensor, initial: torch.Tensor,
                 noise: torch.Tensor | None, nudge: bool) -> Iterator[list[torch.Tensor]]:
    """For the block, the pipeline of `run` is teacher-forced (module docs): `forced` is the
    truth's [steps, *latent] after every step, `initial` its initial latent, `noise` its eta
    noise per step (None without). Yields the list of every step's own `prev_sample` (in the
    run's dtype, on the CPU), in call order."""
    from diffusers import DDIMScheduler, PNDMScheduler

    outputs: list[torch.Tensor] = []
    originals = {cls: cls.step for cls in (DDIMScheduler, PNDMScheduler)}

    def forced_step(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def step(self: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
                 *args: Any, **kwargs: Any) -> Any:
            k = len(outputs)
            if k >= forced.shape[0]:
                raise OracleError(f"teacher forcing: step {k + 1} of a run the truth has "
                                  f"{forced.shape[0]} steps for")
            if noise is not None:
                kwargs.pop("generator", None)
                kwargs["variance_noise"] = noise[k].to(device=sample.device, dtype=sample.dtype)
            out = original(self, model_output, timestep, sample, *args, **kwargs)
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            outputs.append(prev.detach().cpu().clone())
            nxt = forced_input(forced[k], prev, nudge)
            if isinstance(out, tuple):
                return (nxt, *out[1:])
            out.prev_sample = nxt
            return out
        return step

    def initial_draw(_original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def draw(shape: Any, *args: Any, dtype: torch.dtype, **kwargs: Any) -> torch.Tensor:
            if tuple(shape) != tuple(initial.shape):
                raise OracleError(f"teacher forcing: the run draws {tuple(shape)}, the truth's "
                                  f"initial latent is {tuple(initial.shape)}")
            device = kwargs.get("device") or torch.device("cpu")
            return forced_input(initial, torch.empty(0, dtype=dtype, device=device), nudge)
        return draw

    pipeline, _ = draw_modules(run)
    for cls, original in originals.items():
        cls.step = forced_step(original)
    try:
        with replaced(pipeline, initial_draw):
            yield outputs
    finally:
        for cls, original in originals.items():
            cls.step = original


def local_pass(run: PipelineRun, device: str, forced: torch.Tensor, draws: list[torch.Tensor],
               cut: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher-forced run of `run` and its nudged twin (module docs): per step, the latent
    each made ([steps, *latent]), and the output each made (`cut` to the scenario's slice).
    `draws` are the truth's draws in call order: the initial latent, then one eta noise per step
    where the run has eta > 0."""
    if not draws:
        raise OracleError("teacher forcing: the truth made no draws")
    initial = draws[0]
    noise = torch.stack(draws[1:]) if len(draws) > 1 else None
    if noise is not None and noise.shape[0] != forced.shape[0]:
        raise OracleError(f"teacher forcing: {noise.shape[0]} eta noises for "
                          f"{forced.shape[0]} steps")
    found: dict[str, torch.Tensor] = {}
    for name, nudge in (("local", False), ("local_nudged", True)):
        with steps_forced(run, forced, initial, noise, nudge) as outputs:
            image = images_of(replace(run, twice=False), device)[0]
        found[name] = step_latents(outputs, 1)
        found[f"{name}_output"] = cut(image)
    found["initial"] = initial
    if noise is not None:
        found["noise"] = noise
    return found


def self_check_forcing(run: PipelineRun) -> str:
    """Forced with its own trajectory and its own draws, a run must give its own latent at every
    step and its own output, bit for bit: the forcing changes nothing but the inputs. And the
    forcing acts: with every forced input one ulp up, every step's latent moves."""
    with steps_recorded() as latents, float32_draws(run, draw_dtype(run)) as asked:
        own = images_of(run, "cpu")[0]
    trajectory = step_latents(latents, 1).to(torch.float64)
    draws = [call.value.detach().cpu().to(torch.float64) for call in asked]
    found = local_pass(run, "cpu", trajectory, draws, lambda t: t.detach().cpu())
    what = (f"{run.model} ({type(run).__name__}, {run.dtype}, eta {run.eta}, {run.steps} steps, "
            f"{run.output_type}, {len(draws)} draws)")
    # The forcing acts: one ulp up on every input (the initial latent included) moves every step.
    nudged = found["local_nudged"].to(torch.float64)
    if any(torch.equal(nudged[k], trajectory[k]) for k in range(trajectory.shape[0])):
        raise OracleError(f"self-check: a step of {what} did not move with its forced input")
    if not torch.equal(found["local"].to(torch.float64), trajectory):
        raise OracleError(f"self-check: forced with its own trajectory, {what} made other steps")
    if not same_bits(found["local_output"], own.detach().cpu()):
        raise OracleError(f"self-check: forced with its own trajectory, {what} made another "
                          "output")
    return f"{what}: forced with its own trajectory and draws == plain run, bit for bit"
