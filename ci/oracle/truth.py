"""The float64 truth of a DDIM scenario, and how sensitive its output is to the initial noise.

Across environment classes (another CPU vendor, ISA or thread count) bits cannot match, and
reprodiff compares such runs with a reference no class owns: the truth, the same pipeline
computed in float64 (src/harness/check.rs, cross-class rule "truth"). The UNet's weights (the
aligned float32 values every class loads) are cast to float64, and every random number is the
one the float32 run draws: the same generator objects in the same call order, drawn in float32
and then cast. The scheduler's constants stay the float32 values diffusers computes, as the
weights do: they define the pipeline. So the truth differs from a float32 output only by that
output's rounding, not by its inputs.

The sensitivity says whether a comparison with the truth can mean anything: the rmse by which
the float32 output moves when every element of the initial noise moves one ulp up (later draws
unchanged). Where a trajectory amplifies rounding (many steps, eta noise, clipping), another
class's rounding gives another result, and reprodiff reports "not comparable" instead of
passing it with a wide tolerance.

Both replace diffusers' `randn_tensor` where the DDIM path looks it up (workloads.py): in the
pipeline's module (the initial latent, the oracle's latent loop included) and in the
scheduler's (the eta noise).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from common import OracleError
from scenarios import DdimRun, GeneratorSpec
from workloads import ddim_images

Draw = Callable[..., torch.Tensor]


def truth_images(run: DdimRun, device: str) -> list[torch.Tensor]:
    """ddim_images of `run` with the UNet in float64 and every draw made in float32."""
    with float32_draws():
        return ddim_images(replace(run, dtype="f64"), device)


def nudged_image(run: DdimRun, device: str) -> torch.Tensor:
    """The first image of `run` with its initial noise one ulp up in every element."""
    with initial_noise_nudged():
        return ddim_images(replace(run, twice=False), device)[0]


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """sqrt(mean((a - b)^2)), computed in float64."""
    d = a.detach().cpu().to(torch.float64) - b.detach().cpu().to(torch.float64)
    return math.sqrt(torch.mean(d * d).item())


@contextlib.contextmanager
def float32_draws() -> Iterator[list[torch.dtype]]:
    """Every DDIM draw made in float32 and cast to the dtype asked for; yields the list of
    dtypes asked for, one per draw, so that a caller can see every draw went through here."""
    asked: list[torch.dtype] = []

    def in_float32(original: Draw) -> Draw:
        def draw(*args: Any, dtype: torch.dtype, **kwargs: Any) -> torch.Tensor:
            asked.append(dtype)
            return original(*args, dtype=torch.float32, **kwargs).to(dtype)
        return draw

    pipeline, scheduler = draw_modules()
    with replaced(pipeline, in_float32), replaced(scheduler, in_float32):
        yield asked


@contextlib.contextmanager
def initial_noise_nudged() -> Iterator[None]:
    """The initial latent drawn as usual, then every element one ulp towards +inf."""

    def one_ulp_up(original: Draw) -> Draw:
        def draw(*args: Any, **kwargs: Any) -> torch.Tensor:
            x = original(*args, **kwargs)
            return torch.nextafter(x, torch.full_like(x, math.inf))
        return draw

    pipeline, _ = draw_modules()
    with replaced(pipeline, one_ulp_up):
        yield


def draw_modules() -> tuple[Any, Any]:
    """The modules whose `randn_tensor` the DDIM pipeline and scheduler draw through."""
    from diffusers.pipelines.ddim import pipeline_ddim
    from diffusers.schedulers import scheduling_ddim

    return pipeline_ddim, scheduling_ddim


@contextlib.contextmanager
def replaced(module: Any, wrap: Callable[[Draw], Draw]) -> Iterator[None]:
    """`module.randn_tensor` replaced by `wrap(module.randn_tensor)` for the block."""
    original = module.randn_tensor
    module.randn_tensor = wrap(original)
    try:
        yield
    finally:
        module.randn_tensor = original


def self_check_float32_draws(model: str) -> str:
    """With the float32-draw wrapper in place and the UNet left in float32, a run must give
    exactly the float32 bits (the wrapper draws the same numbers), with every draw of the run
    passing through it (1 initial latent + 1 eta noise per step), on both output paths."""
    run = DdimRun(model=model, steps=3, eta=1.0, batch=2,
                  generator=GeneratorSpec("per-sample", (0, 1), 2, "cpu"), output_type="np",
                  dtype="f32", use_clipped_model_output=None)
    for output_type in ("np", "latent"):
        r = replace(run, output_type=output_type)
        want = ddim_images(r, "cpu")[0]
        with float32_draws() as asked:
            got = ddim_images(r, "cpu")[0]
        if len(asked) != 1 + r.steps:
            raise OracleError(f"self-check: {len(asked)} draws went through the float32 wrapper "
                              f"on {model} ({output_type}), expected {1 + r.steps}")
        same = got.dtype == want.dtype and torch.equal(got.view(torch.uint8),
                                                       want.view(torch.uint8))
        if not same:
            raise OracleError(f"self-check: the float32 wrapper changed the output of {model} "
                              f"({output_type}, eta {r.eta}, {r.steps} steps)")
    return (f"{model}: float32 draws through the wrapper == plain run, bit for bit "
            f"(np and latent, per-sample generators, eta {run.eta}, {1 + run.steps} draws)")
