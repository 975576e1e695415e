"""Running a scenario's workload with real PyTorch and diffusers: random draws and DDIM (Stable
Diffusion: workloads_sd.py).

- ``random``: torch.randn / torch.rand / Tensor.normal_ drawn from torch.Generator objects,
  torch.manual_seed's global generator or diffusers' randn_tensor batching.
- ``ddim``: diffusers' DDIMPipeline (0.42.1) on a diffusers-format model folder, output_type
  "np" (the pipeline's NHWC float array) or "latent" (the raw NCHW sample of a loop that mirrors
  DDIMPipeline.__call__ line for line; self_check_latent_loop holds it to the pipeline's own
  "np" output, bit for bit). The weights are copied out of the memory-mapped safetensors before
  the run: unaligned CPU weights move results by ~1e-6. ``run.twice``: the output is run 1
  minus run 2 with the generators re-seeded (the seed document's "L_inf dist = 0").

Every draw of the DDIM path goes through a module attribute named ``randn_tensor`` (the
pipeline's module for the initial latent, this loop included; the scheduler's module for the
eta noise), looked up when the draw happens, so that truth.py can replace it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import OracleError, Skip
from models import Model, resolve_model
from scenarios import DdimRun, GeneratorSpec, PipelineRun, RandomRun

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64}

Generators = torch.Generator | list[torch.Generator] | None


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


def pipeline_generators(spec: GeneratorSpec) -> Generators:
    """The `generator=` argument: as make_generators, but `global` passes the generator
    object torch.manual_seed returns (the CPU default generator), as diffusers' docs do."""
    if spec.type == "global":
        return torch.manual_seed(spec.seeds[0])
    return make_generators(spec)


# --------------------------------------------------------------------------------------------
# Random draws
# --------------------------------------------------------------------------------------------


def batched_draw(fn: Callable[..., torch.Tensor], shape: tuple[int, ...], generators: Generators,
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
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


def draw(run: RandomRun, shape: tuple[int, ...], gens: Generators,
         device: torch.device) -> torch.Tensor:
    """One draw of `shape` as the scenario's op, from `gens`."""
    dtype = DTYPES[run.dtype]
    if run.op == "randn":  # the real thing: diffusers' randn_tensor
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(shape, generator=gens, device=device, dtype=dtype)
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
# DDIM (diffusers)
# --------------------------------------------------------------------------------------------


@functools.cache
def diffusers_modules() -> Any:
    """diffusers, imported on first use (seconds), with its progress bars and info logs off."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    return diffusers


def model_of(run: PipelineRun) -> Model:
    return resolve_model(run.model, run.models_dir)


def load_ddim_pipeline(run: DdimRun, device: str) -> Any:
    """DDIMPipeline.from_pretrained(folder) as a user loads it, with aligned weights, the
    scenario's scheduler overrides, dtype and device."""
    diffusers = diffusers_modules()
    pipe = diffusers.DDIMPipeline.from_pretrained(model_of(run).folder, use_safetensors=True)
    # The safetensors are memory-mapped at offsets that are not 64-byte aligned, and CPU kernels
    # then take other paths (results move by ~1e-6): results come from aligned copies.
    for p in pipe.unet.parameters():
        p.data = p.data.clone()
    for b in pipe.unet.buffers():
        b.data = b.data.clone()
    if run.scheduler:
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, **run.scheduler)
        # from_config drops keys it does not know, silently with logging off.
        ignored = sorted(k for k, v in run.scheduler.items() if pipe.scheduler.config.get(k) != v)
        if ignored:
            raise OracleError(f"DDIMScheduler ignored the overrides {ignored}")
    pipe.unet.to(DTYPES[run.dtype])
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def initial_noise(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The pipeline module's randn_tensor, looked up now (truth.py may have replaced it)."""
    from diffusers.pipelines.ddim import pipeline_ddim

    return pipeline_ddim.randn_tensor(*args, **kwargs)


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
    image = initial_noise(shape, generator=generator, device=pipe._execution_device,
                          dtype=unet.dtype)
    scheduler.set_timesteps(run.steps)
    for t in scheduler.timesteps:
        model_output = unet(image, t).sample
        image = scheduler.step(
            model_output, t, image, eta=run.eta,
            use_clipped_model_output=run.use_clipped_model_output, generator=generator,
        ).prev_sample
    return image


def ddim_image(pipe: Any, run: DdimRun) -> torch.Tensor:
    """One pipeline call from freshly made generators: "np" images (NHWC) or the latent."""
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


def ddim_images(run: DdimRun, device: str) -> list[torch.Tensor]:
    """The image of each pipeline call the scenario makes (two for `twice`), one fresh load."""
    require_device(device)
    pipe = load_ddim_pipeline(run, device)
    return [ddim_image(pipe, run) for _ in range(2 if run.twice else 1)]


def pipeline_output(run: PipelineRun, images: list[torch.Tensor]) -> torch.Tensor:
    """A DDIM or SD scenario's output from its images: the image, or run 1 minus run 2 for
    `twice`."""
    return images[0] - images[1] if run.twice else images[0]


# The configurations self_check_latent_loop runs: generator, batch, eta, steps, clipped output.
SELF_CHECK_RUNS = (
    (GeneratorSpec("single", (0,), 1, "cpu"), 1, 0.0, 2, None),
    (GeneratorSpec("per-sample", (0, 1), 2, "cpu"), 2, 1.0, 3, True),
    (GeneratorSpec("repeated", (5,), 2, "cpu"), 2, 0.5, 2, False),
    (GeneratorSpec("global", (3,), 1, "cpu"), 1, 0.5, 2, None),
)


@functools.cache
def self_check_latent_loop(model: str, models_dir: Path, device: str) -> None:
    """Once per model and process: ddim_latent, post-processed as DDIMPipeline does, must be
    bit-identical to the pipeline's own "np" output (else the latent results would not be
    diffusers')."""
    for spec, batch, eta, steps, clipped in SELF_CHECK_RUNS:
        run = DdimRun(model=model, steps=steps, eta=eta, batch=batch, generator=spec,
                      output_type="np", dtype="f32", use_clipped_model_output=clipped,
                      models_dir=models_dir)
        want = ddim_image(load_ddim_pipeline(run, device), run).numpy()
        latent = ddim_image(load_ddim_pipeline(run, device), replace(run, output_type="latent"))
        got = (latent / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
        if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
            raise OracleError(
                f"self-check: the latent loop on {model} ({spec.type} generator, batch "
                f"{batch}, eta {eta}, {steps} steps) is not DDIMPipeline's output bit for bit")
