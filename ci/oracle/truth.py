"""The float64 truth of a DDIM or Stable Diffusion scenario, and how sensitive its output is to
the initial noise and (SD) to each component's rounding.

Across environment classes (another CPU vendor, ISA or thread count) bits cannot match, and
reprodiff compares such runs with a reference no class owns: the truth, the same pipeline
computed in float64 (src/harness/compare/judge.rs, cross-class rule "truth"). The models' weights (the
aligned float32 values every class loads: DDIM's UNet; SD's text encoder, UNet and VAE) are
cast to float64, and every random number is the one the float32 run draws: the same generator
objects in the same call order, drawn in float32 and then cast. The scheduler's constants
stay the float32 values diffusers computes (alphas_cumprod is a float32 tensor; its 0-dim
elements and what the schedulers compute from them in float32 meet the float64 sample and
model output only in float64 arithmetic), as the weights do: they define the pipeline. So the
truth differs from a float32 output only by that output's rounding, not by its inputs.

The sensitivity says whether a comparison with the truth can mean anything: the rmse by which
the float32 output moves when every element of the initial noise moves one ulp up (later draws
unchanged). Where a trajectory amplifies rounding (many steps, eta noise, clipping), another
class's rounding gives another result, and reprodiff reports "not comparable" instead of
passing it with a wide tolerance. An SD scenario also gets it per component (the truth's
"components"): the rmse by which the float32 output moves when one component's output is
multiplied by 1 + 2^-24 in every call of it (component_images), i.e. where rounding of that
size enters the pipeline, and how much of it reaches the output.

A reduced-precision run (bf16, f16) gets the same three figures in its own precision: the truth
is made from the draws that run consumes (drawn in its dtype, then cast to float64), its
initial noise is nudged one ulp of its dtype, and a component's output is multiplied by
1 + eps/2 of its dtype (2^-8 for bf16, 2^-11 for f16; 2^-24 for float32).

Per step (steps_recorded): the latent after every scheduler step of the float32 run, of the
truth and of the nudged run, so that reprodiff can hold a run to the truth step by step, as far
as the trajectory stays comparable ("within tolerance through step 31 of 50"), and measure each
step's noise response (the nudged run's distance from the float32 run at that step). Which
elements and what is stored are reprodiff's rule (`reprodiff golden merge`), not this file's.

Both replace diffusers' `randn_tensor` where the pipelines look it up (workloads.py,
workloads_sd.py): in the pipeline's module (the initial latent, the oracle's DDIM latent loop
included) and in DDIM's scheduler module (the eta noise).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from common import OracleError
from scenarios import DdimRun, GeneratorSpec, PipelineRun, SdRun
from workloads import ddim_images, make_generators
from workloads_sd import load_sd_pipeline, sd_image, sd_images, text_encoder_output_module

Draw = Callable[..., torch.Tensor]


def component_nudge(dtype: torch.dtype) -> float:
    """One ulp of `dtype`, relative: x * (1 + eps/2), rounded to `dtype`, is x one ulp further
    from zero for every x whose significand is not exactly a power of two (1 + 2^-24 for
    float32)."""
    return 1 + torch.finfo(dtype).eps / 2


def draw_dtype(run: PipelineRun) -> torch.dtype:
    """The dtype `run`'s draws are made in: float32, or the reduced precision the run is in."""
    return {"bf16": torch.bfloat16, "f16": torch.float16}.get(run.dtype, torch.float32)


@dataclass(frozen=True)
class DrawCall:
    """One randn_tensor call a run made: its shape, generator argument and asked dtype, and
    the value it returned (drawn in the run's dtype, cast to the asked one)."""

    shape: tuple[int, ...]
    generator: Any
    dtype: torch.dtype
    value: torch.Tensor


def images_of(run: PipelineRun, device: str) -> list[torch.Tensor]:
    """The images of a DDIM or SD run (two for `twice`)."""
    return sd_images(run, device) if isinstance(run, SdRun) else ddim_images(run, device)


def truth_images(run: PipelineRun, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The images of `run` with the models in float64 and every draw made as `run` makes it
    (float32, or its reduced precision); and those draws, float64 on the CPU, in call order (the
    initial latent, then any eta noise per step): the local pass's inputs (local.py)."""
    with float32_draws(run, draw_dtype(run)) as asked:
        images = images_of(replace(run, dtype="f64"), device)
    return images, [call.value.detach().cpu().to(torch.float64) for call in asked]


def nudged_image(run: PipelineRun, device: str) -> torch.Tensor:
    """The first image of `run` with its initial noise one ulp up in every element."""
    with initial_noise_nudged(run):
        return images_of(replace(run, twice=False), device)[0]


def component_images(run: SdRun, device: str) -> dict[str, torch.Tensor]:
    """Per component, the first image of `run` with that component's output multiplied by
    1 + 2^-24 in every call: the text encoder (the prompt embeddings, made by its final layer
    norm), the UNet (its sample) and, unless the output is the latent, the VAE (its decoder's
    sample, what decode returns)."""
    first = replace(run, twice=False)
    names = ("text_encoder", "unet") + (() if run.output_type == "latent" else ("vae",))
    images = {}
    for name in names:
        pipe = load_sd_pipeline(first, device)
        module = {"text_encoder": text_encoder_output_module(pipe), "unet": pipe.unet,
                  "vae": pipe.vae.decoder}[name]
        with outputs_nudged(module, component_nudge(draw_dtype(run))) as calls:
            images[name] = sd_image(pipe, first)
        if not calls:
            raise OracleError(f"the {name} hook on {run.model} was never called")
    return images


@contextlib.contextmanager
def steps_recorded() -> Iterator[list[torch.Tensor]]:
    """Every DDIM and PNDM scheduler step's `prev_sample` (the latent after the step), copied
    to the CPU in call order, for the block: python/reprodiff-record's step hook (the one way
    reprodiff records steps, users' runs included) on the schedulers' classes, so the
    pipelines' loops and the oracle's own latent loop are recorded alike."""
    from diffusers import DDIMScheduler, PNDMScheduler
    from reprodiff_record.steps import latents_recorded

    with latents_recorded(DDIMScheduler, PNDMScheduler) as latents:
        yield latents


def step_latents(latents: list[torch.Tensor], runs: int) -> torch.Tensor:
    """The first of `runs` equally long runs' per-step latents, stacked: [steps, *latent]."""
    if not latents or len(latents) % runs:
        raise OracleError(f"{len(latents)} scheduler steps recorded over {runs} run(s)")
    return torch.stack(latents[: len(latents) // runs])


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """sqrt(mean((a - b)^2)), computed in float64."""
    d = a.detach().cpu().to(torch.float64) - b.detach().cpu().to(torch.float64)
    return math.sqrt(torch.mean(d * d).item())


@contextlib.contextmanager
def outputs_nudged(module: torch.nn.Module, factor: float) -> Iterator[list[int]]:
    """`module`'s output (a tensor, or a tuple's first element as the UNet returns with
    return_dict=False) multiplied by `factor` (component_nudge) in every call, in float64 and
    rounded back (a Python scalar would be rounded to the output's float32 first, 1 + 2^-24 to
    1.0);
    yields the list of calls (their ordinals)."""
    calls: list[int] = []

    def nudge(x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float64) * factor).to(x.dtype)

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        calls.append(len(calls))
        if isinstance(output, torch.Tensor):
            return nudge(output)
        if isinstance(output, tuple) and isinstance(output[0], torch.Tensor):
            return (nudge(output[0]), *output[1:])
        raise OracleError(f"cannot nudge a {type(module).__name__} output of type "
                          f"{type(output).__name__}")

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def float32_draws(run: PipelineRun,
                  made_in: torch.dtype = torch.float32) -> Iterator[list[DrawCall]]:
    """Every draw of `run`'s pipeline made in `made_in` (float32 unless the run is in reduced
    precision) and cast to the dtype asked for; yields the list of calls, one per draw, so that
    a caller can see every draw went through here."""
    asked: list[DrawCall] = []

    def in_float32(original: Draw) -> Draw:
        def draw(shape: Any, *args: Any, dtype: torch.dtype, **kwargs: Any) -> torch.Tensor:
            value = original(shape, *args, dtype=made_in, **kwargs).to(dtype)
            asked.append(DrawCall(tuple(shape), kwargs.get("generator"), dtype, value))
            return value
        return draw

    pipeline, scheduler = draw_modules(run)
    with replaced(pipeline, in_float32), replaced(scheduler, in_float32):
        yield asked


@contextlib.contextmanager
def initial_noise_nudged(run: PipelineRun) -> Iterator[None]:
    """The initial latent drawn as usual, then every element one ulp towards +inf."""

    def one_ulp_up(original: Draw) -> Draw:
        def draw(*args: Any, **kwargs: Any) -> torch.Tensor:
            x = original(*args, **kwargs)
            return torch.nextafter(x, torch.full_like(x, math.inf))
        return draw

    pipeline, _ = draw_modules(run)
    with replaced(pipeline, one_ulp_up):
        yield


def draw_modules(run: PipelineRun) -> tuple[Any, Any]:
    """The modules whose `randn_tensor` the run's pipeline and DDIM's scheduler draw through
    (PNDM draws nothing)."""
    from diffusers.schedulers import scheduling_ddim

    if isinstance(run, SdRun):
        from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion

        return pipeline_stable_diffusion, scheduling_ddim
    from diffusers.pipelines.ddim import pipeline_ddim

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


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


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
        with float32_draws(r) as asked:
            got = ddim_images(r, "cpu")[0]
        if len(asked) != 1 + r.steps:
            raise OracleError(f"self-check: {len(asked)} draws went through the float32 wrapper "
                              f"on {model} ({output_type}), expected {1 + r.steps}")
        if not same_bits(got, want):
            raise OracleError(f"self-check: the float32 wrapper changed the output of {model} "
                              f"({output_type}, eta {r.eta}, {r.steps} steps)")
    return (f"{model}: float32 draws through the wrapper == plain run, bit for bit "
            f"(np and latent, per-sample generators, eta {run.eta}, {1 + run.steps} draws)")


def self_check_sd_draws(model: str) -> str:
    """An SD run (DDIM, eta 1, latent, float32) with the float32-draw wrapper in place must give
    exactly the plain run's bits, and its draws must be all the run made: 1 initial latent + 1
    eta noise per step through the wrapper, the generators left exactly where replaying those
    draws alone leaves fresh ones, torch's global generator untouched."""
    run = SdRun(model=model, prompt="A bear is playing a guitar on Times Square",
                negative_prompt=None, guidance_scale=7.5, steps=2, eta=1.0,
                num_images_per_prompt=2, height=None, width=None, clip_skip=None,
                generator=GeneratorSpec("per-sample", (0, 1), 2, "cpu"), output_type="latent",
                dtype="f32", scheduler_class="ddim")
    want = sd_images(run, "cpu")[0]
    global_state = torch.get_rng_state()
    with float32_draws(run) as asked:
        got = sd_images(run, "cpu")[0]
    what = f"{model} (latent, eta {run.eta}, {run.steps} steps)"
    if len(asked) != 1 + run.steps:
        raise OracleError(f"self-check: {len(asked)} draws went through the float32 wrapper on "
                          f"{what}, expected {1 + run.steps}")
    if not same_bits(got, want):
        raise OracleError(f"self-check: the float32 wrapper changed the output of {what}")
    if not torch.equal(torch.get_rng_state(), global_state):
        raise OracleError(f"self-check: {what} drew from torch's global generator")
    used = asked[0].generator
    if any(call.generator is not used for call in asked):
        raise OracleError(f"self-check: the draws of {what} did not all use one generator list")
    from diffusers.utils.torch_utils import randn_tensor

    fresh = make_generators(run.generator)
    for call in asked:
        randn_tensor(call.shape, generator=fresh, device=torch.device("cpu"),
                     dtype=torch.float32)
    if not all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(used, fresh)):
        raise OracleError(f"self-check: the generators of {what} made draws that did not go "
                          "through randn_tensor")
    return (f"{model}: SD float32 draws through the wrapper == plain run, bit for bit, and are "
            f"every draw (latent, per-sample generators, eta {run.eta}, {len(asked)} draws)")
