"""Running an ``sd`` workload: diffusers' StableDiffusionPipeline (0.42.1) on a pipeline folder.

The pipeline is loaded as a user loads it (`from_pretrained(folder, use_safetensors=True,
safety_checker=None, requires_safety_checker=False)`), then:

- every parameter and buffer of the text encoder, UNet and VAE is copied out of the
  memory-mapped safetensors (unaligned CPU weights move results by ~1e-6, see workloads.py);
- `run.scheduler_class` swaps the scheduler (`pipe.scheduler = DDIMScheduler.from_config(
  pipe.scheduler.config, **run.scheduler)`, PNDMScheduler likewise); without it the folder's
  own scheduler is kept, re-made by its own class's from_config only when `run.scheduler`
  overrides something;
- `pipe.to(dtype)` casts every component, as `torch_dtype=` does.

The output is the pipeline's own: output_type "np" (NHWC float32 images) or "latent" (the NCHW
latents, before the VAE). ``run.twice``: run 1 minus run 2 from freshly made generators.

Every random draw goes through a module attribute named ``randn_tensor``, looked up when the
draw happens: the pipeline module's for the initial latents, DDIM's scheduler module's for the
eta noise (PNDM draws nothing, the VAE's decode ignores its generator, the text encoder has
no dropout in eval mode), so that truth.py can replace them; its self-check holds the
generators to those draws alone.

clip_skip: diffusers 0.42.1 reads `text_encoder.text_model.final_layer_norm`, transformers 4's
layout; transformers 5's CLIPTextModel holds its modules at the top and has no `text_model`,
so the call fails with AttributeError. For a run with clip_skip the text encoder gets a
`text_model` that names its own final_layer_norm (the same module), which is what diffusers'
code means and computes on transformers 4: the hidden state `clip_skip` layers before the
last, through the final layer norm. Provenance says so (results.tool_of).
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any

import numpy as np
import torch

from common import OracleError
from scenarios import SdRun, VaeEncodeRun
from workloads import (DTYPES, diffusers_modules, make_generators, model_of, pipeline_generators,
                       require_device)

# The scheduler classes run.scheduler_class names (src/schedulers: SchedulerClass).
SCHEDULER_CLASSES = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler"}
CLIP_SKIP_SHIM = ("clip_skip: text_encoder.text_model.final_layer_norm provided as the text "
                  "encoder's own final_layer_norm (transformers 5's CLIPTextModel has no "
                  "text_model; diffusers 0.42.1 reads it)")


@functools.cache
def quiet_transformers() -> None:
    """transformers' warnings and weight-loading progress bars off (once)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def load_sd_pipeline(run: SdRun, device: str) -> Any:
    """StableDiffusionPipeline.from_pretrained(folder) as a user loads it, with aligned weights,
    the scenario's scheduler, dtype and device."""
    quiet_transformers()
    diffusers = diffusers_modules()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        model_of(run).folder, use_safetensors=True, safety_checker=None,
        requires_safety_checker=False)
    for module in (pipe.text_encoder, pipe.unet, pipe.vae):
        for p in module.parameters():
            p.data = p.data.clone()
        for b in module.buffers():
            b.data = b.data.clone()
    if run.scheduler_class is not None or run.scheduler:
        cls = (getattr(diffusers, SCHEDULER_CLASSES[run.scheduler_class])
               if run.scheduler_class is not None else type(pipe.scheduler))
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **run.scheduler)
        # from_config drops keys it does not know, silently with logging off.
        ignored = sorted(k for k, v in run.scheduler.items() if pipe.scheduler.config.get(k) != v)
        if ignored:
            raise OracleError(f"{cls.__name__} ignored the overrides {ignored}")
    if run.clip_skip is not None and not hasattr(pipe.text_encoder, "text_model"):
        # See the module's docstring: a plain attribute, not a registered submodule.
        pipe.text_encoder.text_model = types.SimpleNamespace(
            final_layer_norm=pipe.text_encoder.final_layer_norm)
    pipe.to(DTYPES[run.dtype])
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_encoder_output_module(pipe: Any) -> torch.nn.Module:
    """The module whose output is the prompt embeddings the UNet receives: the text encoder's
    final layer norm (it makes last_hidden_state, and clip_skip applies it to an earlier
    hidden state)."""
    te = pipe.text_encoder
    return getattr(te, "text_model", te).final_layer_norm


def sd_image(pipe: Any, run: SdRun) -> torch.Tensor:
    """One pipeline call from freshly made generators: "np" images (NHWC) or the latents.

    A float64 run (the truth) asks for "pt": diffusers' "np" post-processing is "pt"'s followed
    by pt_to_numpy, `.cpu().permute(0, 2, 3, 1).float().numpy()`, whose `.float()` would round
    the truth to float32; it is applied here without it."""
    exact = run.output_type == "np" and run.dtype == "f64"
    kwargs: dict[str, Any] = {}
    if run.negative_prompt is not None:
        kwargs["negative_prompt"] = as_argument(run.negative_prompt)
    for name in ("height", "width", "clip_skip"):
        if getattr(run, name) is not None:
            kwargs[name] = getattr(run, name)
    images = pipe(
        prompt=as_argument(run.prompt),
        guidance_scale=run.guidance_scale,
        num_inference_steps=run.steps,
        eta=run.eta,
        num_images_per_prompt=run.num_images_per_prompt,
        generator=pipeline_generators(run.generator),
        output_type="pt" if exact else run.output_type,
        **kwargs,
    ).images
    if exact:
        return images.cpu().permute(0, 2, 3, 1)
    if run.output_type == "np":
        return torch.from_numpy(np.ascontiguousarray(images))
    return images


def as_argument(prompts: str | tuple[str, ...]) -> str | list[str]:
    """A prompt as diffusers takes it: a string or a list."""
    return prompts if isinstance(prompts, str) else list(prompts)


def sd_images(run: SdRun, device: str) -> list[torch.Tensor]:
    """The image of each pipeline call the scenario makes (two for `twice`), one fresh load."""
    require_device(device)
    pipe = load_sd_pipeline(run, device)
    return [sd_image(pipe, run) for _ in range(2 if run.twice else 1)]


@torch.no_grad()
def vae_moments(run: VaeEncodeRun, device: str, in_dtype: str | None = None,
                nudge: bool = False) -> torch.Tensor:
    """`vae.encode(x).latent_dist.parameters` of the folder's VAE (aligned weights) for
    `x = randn_tensor(run.shape, generator)` drawn in the run's dtype; `in_dtype` runs the VAE
    (and casts x) in another dtype (the float64 truth), `nudge` moves every element of x one
    ulp up (the sensitivity)."""
    from diffusers.utils.torch_utils import randn_tensor

    require_device(device)
    diffusers = diffusers_modules()
    vae = diffusers.AutoencoderKL.from_pretrained(model_of(run).folder, subfolder="vae",
                                                  use_safetensors=True)
    for t in list(vae.parameters()) + list(vae.buffers()):
        t.data = t.data.clone()
    compute = DTYPES[in_dtype or run.dtype]
    vae.to(compute).to(device).eval()
    gens = make_generators(run.generator)
    x = randn_tensor(run.shape, generator=gens, device=torch.device(device),
                     dtype=DTYPES[run.dtype])
    if nudge:
        x = torch.nextafter(x, torch.full_like(x, math.inf))
    return vae.encode(x.to(compute)).latent_dist.parameters
