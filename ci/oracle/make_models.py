#!/usr/bin/env python3
"""The tiny diffusers models of the fixtures: fixtures/models/<name>/, made by diffusers.

This script is their provenance. Each model is a diffusers-format pipeline folder written by
diffusers' own ``save_pretrained`` (safetensors) from models initialised by diffusers and
transformers under fixed ``torch.manual_seed`` calls. The ddim-tiny suite's models are
unconditional (model_index.json, unet/config.json, unet/diffusion_pytorch_model.safetensors,
scheduler/scheduler_config.json), from a UNet2DModel:

- ``tiny-ddim-a``: exactly the UNet of diffusers' DDIM fast test (tests/pipelines/ddim), saved as
  google/ddpm-cifar10-32 is: a DDPMPipeline folder with a DDPMScheduler (linear 1e-4..0.02,
  clip_sample true, variance_type fixed_large), which DDIMPipeline.from_pretrained converts with
  DDIMScheduler.from_config. Its weights are diffusers' random initialisation, untouched, so
  its 2-step image (CPU generator seed 0) reproduces the slice that diffusers' test pins
  (checked below, within the test's 1e-3). Being an untrained UNet, its 2-step images are
  about one third exactly 0 or 1 (x0 clipped at t=500); 5 and more steps are 80-95% interior.
- ``tiny-ddim-b``: three levels, attention_head_dim 4 (4 heads), norm_eps 1e-6, padding 0,
  freq_shift 1, no flip: a cifar-like UNet, saved as a DDIMPipeline folder with DDIMScheduler().
  Random initialisation as diffusers does it, then one deterministic edit so the images are
  not mostly clipped: a pass-through that makes the UNet a crude noise predictor
  (eps ~ x / rms(x)), the random network still adding to every output element at a 5% scale.
  For each input channel c, conv_in writes +x_c and -x_c into channels 2c and 2c+1; the last
  resnet's 1x1 conv_shortcut carries that skip to the same channels; GroupNorm (2 channels a
  group) normalises each pair together; and conv_out takes channel 2c minus channel 2c+1, since
  silu(a) - silu(-a) = a exactly. The weights on those paths are otherwise the random ones
  times PASS_THROUGH_RANDOM_SCALE. Without it the 2-step image was 82% clipped or within 0.01
  of 0 or 1.

The Stable Diffusion models are StableDiffusionPipeline folders (text_encoder/, tokenizer/,
unet/, vae/, scheduler/, model_index.json; safety_checker and feature_extractor None,
requires_safety_checker false). Their text encoders have a vocabulary of 1000: their tokenizer
is fixtures/tokenizers/tiny-clip-1000 (CLIP's BPE cut to its first 486 merges; made by
ci/oracle/make_tokenizers.py, which documents it):

- ``tiny-sd-a``: exactly the components of diffusers' own Stable Diffusion fast test
  (tests/pipelines/stable_diffusion/test_stable_diffusion.py, get_dummy_components, with its
  three torch.manual_seed(0) calls): UNet2DConditionModel with block_out_channels (4, 8),
  layers_per_block 1, ("DownBlock2D", "CrossAttnDownBlock2D") / ("CrossAttnUpBlock2D",
  "UpBlock2D"), cross_attention_dim 8, norm_num_groups 2, sample_size 32; DDIMScheduler
  (scaled_linear 0.00085..0.012, clip_sample false, set_alpha_to_one false, steps_offset 0);
  AutoencoderKL with block_out_channels [4, 8], norm_num_groups 2 (scaling_factor 0.18215);
  CLIPTextModel with hidden 8, intermediate 16, 2 heads, 2 layers, vocab 1000. The test file is
  not in diffusers 0.42.1's wheel or sdist; it was read from the diffusers repository (main at
  58eb52c, 2026-08; these components are unchanged since v0.39.0). The one difference is the
  tokenizer: the test loads hf-internal-testing/tiny-random-clip from the Hub, this folder has
  tiny-clip-1000, loaded with CLIPTokenizer.from_pretrained and saved by transformers 5
  (tokenizer/tokenizer.json + tokenizer_config.json). Weights untouched; its 2-step image for
  the test's inputs (prompt "A painting of a squirrel eating a burger", guidance 6.0, CPU
  generator seed 0) still reproduces the test's pinned slice within the test's 1e-2 (checked
  below). Its 64x64 images are about 99% interior (in (0, 1)).
- ``tiny-sd-b``: what SD 1.x/2.x use that tiny-sd-a does not, under torch.manual_seed(1) before
  each model. UNet2DConditionModel: 3 levels, block_out_channels (8, 16, 16), layers_per_block
  2, ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D") / ("UpBlock2D",
  "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), UNetMidBlock2DCrossAttn, attention_head_dim
  [2, 4, 4] (diffusers reads it as the number of heads: head dim 4 everywhere),
  use_linear_projection true (as SD 2), norm_num_groups 4, cross_attention_dim 16, sample_size
  16. AutoencoderKL: 3 levels [8, 16, 16] (vae_scale_factor 4, so 64x64 images by default),
  layers_per_block 1, norm_num_groups 4, sample_size 64, scaling_factor 0.13025. CLIPTextModel:
  3 layers, hidden 16, 4 heads, intermediate 32, quick_gelu, vocab 1000, 77 positions, and SD
  1.5's text_encoder ids (bos 0, eos 2, pad 1). SD 1.5's scheduler: PNDMScheduler
  (scaled_linear 0.00085..0.012, skip_prk_steps, steps_offset 1, set_alpha_to_one false; SD
  1.5's scheduler_config.json also carries clip_sample false, an option PNDMScheduler does not
  have). Its tokenizer/ is in the SD 1.5 layout only (vocab.json, merges.txt,
  tokenizer_config.json, special_tokens_map.json, no tokenizer.json: written by
  make_tokenizers.write_folder in place of what save_pretrained wrote) with pad_token "!"
  (id 0) as SD 2's tokenizer has, so prompts are padded with "!" rather than <|endoftext|>.
  No weight edit: diffusers' initialisation already gives 2-step images about 99.7% interior.

Usage (ci/oracle/run.sh runs it in the oracle's venv)::

    ci/oracle/run.sh --make-models [--force] [--check] [NAME]...

Without NAME, every model. An existing folder is left alone unless --force; --check rebuilds
each model in a temporary folder and fails unless every file is byte-identical to the committed
one (the weights depend on torch's initialisation, and the SD folders' text_encoder/ and
tokenizer/ files on transformers, so check after an upgrade: goldens made from the committed
files stay valid either way, but regenerating the files would change them). The SD models read
fixtures/tokenizers/tiny-clip-1000, so make that first (ci/oracle/run.sh --make-tokenizers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fixture_builder import build_all

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "fixtures" / "models"
TINY_TOKENIZER = REPO / "fixtures" / "tokenizers" / "tiny-clip-1000"

# Scale of the random weights left on tiny-ddim-b's pass-through paths.
PASS_THROUGH_RANDOM_SCALE = 0.05

# diffusers' DDIM fast test (test_inference): image[0, -3:, -3:, -1] for a CPU generator
# seed 0, 2 steps, output_type "np", within atol 1e-3.
DIFFUSERS_FAST_TEST_SLICE = [0.0, 9.979e-01, 0.0, 9.999e-01, 9.986e-01, 9.991e-01, 7.106e-04, 0.0,
                             0.0]

# diffusers' SD fast test (test_stable_diffusion_ddim): image[0, -1, -3:, -3:] of the "pt"
# output (image[0, -3:, -3:, -1] of "np"), CPU generator seed 0, 2 steps, within atol 1e-2.
SD_FAST_TEST_PROMPT = "A painting of a squirrel eating a burger"
SD_FAST_TEST_SLICE = [0.1641, 0.4640, 0.4864, 0.2683, 0.3652, 0.4507, 0.5290, 0.3307, 0.3977]

# The prompt of the sanity runs (the seed document's).
SD_PROMPT = "A bear is playing a guitar on Times Square"


def tiny_ddim_a():
    """diffusers' DDIM fast-test UNet with google/ddpm-cifar10-32's scheduler, as a DDPM folder."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=8,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
        clip_sample=True, variance_type="fixed_large",
    )
    return DDPMPipeline(unet=unet, scheduler=scheduler)


def tiny_ddim_b():
    """Three levels, attention_head_dim 4, cifar-like options; a pass-through (module doc)."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    torch.manual_seed(1)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        norm_num_groups=4,
        norm_eps=1e-6,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        act_fn="silu",
        time_embedding_type="positional",
    )
    add_pass_through(unet, PASS_THROUGH_RANDOM_SCALE)
    return DDIMPipeline(unet=unet, scheduler=DDIMScheduler())


@torch.no_grad()
def add_pass_through(unet, eps: float) -> None:
    """eps ~ x / rms(x) plus `eps` times the random network (see the module doc)."""
    c_in = unet.config.in_channels
    width = unet.config.block_out_channels[0]
    groups = unet.config.norm_num_groups
    if unet.config.out_channels != c_in or width != 2 * groups or 2 * c_in > width:
        raise ValueError("the pass-through needs out = in channels, 2 channels per GroupNorm "
                         "group at the first level and 2 * in_channels <= that width")
    pairs = 2 * c_in  # channels 2c (+x_c) and 2c + 1 (-x_c)

    conv_in = unet.conv_in
    conv_in.weight[:pairs] *= eps
    conv_in.bias[:pairs] *= eps
    last = unet.up_blocks[-1].resnets[-1]  # its input is cat([h, conv_in(x)])
    skip_at = last.conv_shortcut.in_channels - width
    last.conv_shortcut.weight[:pairs] *= eps
    last.conv_shortcut.bias[:pairs] *= eps
    last.conv2.weight[:pairs] *= eps
    last.conv2.bias[:pairs] *= eps
    unet.conv_out.weight.mul_(eps)
    unet.conv_out.bias.mul_(eps)
    k = conv_in.kernel_size[0] // 2  # centre tap of the 3x3 kernels
    for c in range(c_in):
        conv_in.weight[2 * c, c, k, k] += 1.0
        conv_in.weight[2 * c + 1, c, k, k] -= 1.0
        for o in (2 * c, 2 * c + 1):
            last.conv_shortcut.weight[o, skip_at + o, 0, 0] += 1.0
        unet.conv_out.weight[c, 2 * c, k, k] += 1.0
        unet.conv_out.weight[c, 2 * c + 1, k, k] -= 1.0


def tiny_clip_tokenizer():
    """fixtures/tokenizers/tiny-clip-1000 as transformers' CLIPTokenizer loads it."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TINY_TOKENIZER, local_files_only=True)


def tiny_sd_a():
    """diffusers' Stable Diffusion fast-test components, with tiny-clip-1000 (module doc)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    cross_attention_dim = 8
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        time_cond_proj_dim=None,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    torch.manual_seed(0)
    text_encoder_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=cross_attention_dim,
        intermediate_size=16,
        layer_norm_eps=1e-05,
        num_attention_heads=2,
        num_hidden_layers=2,
        pad_token_id=1,
        vocab_size=1000,
    )
    text_encoder = CLIPTextModel(text_encoder_config)
    return StableDiffusionPipeline(
        unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sd_b():
    """Three levels, linear projections, per-block heads, PNDM, pad "!" (module doc)."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    text_hidden = 16
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=[2, 4, 4],
        use_linear_projection=True,
        norm_num_groups=4,
        cross_attention_dim=text_hidden,
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=[8, 16, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.13025,
    )
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=1000,
        hidden_size=text_hidden,
        intermediate_size=32,
        num_attention_heads=4,
        num_hidden_layers=3,
        hidden_act="quick_gelu",
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    ))
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        steps_offset=1, set_alpha_to_one=False,
    )
    return StableDiffusionPipeline(
        unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def sd_layout_tokenizer(out: Path) -> None:
    """Replaces out/tokenizer/ with tiny-clip-1000 in the SD 1.5 layout, padded with "!"."""
    from make_tokenizers import read_folder_merges, write_folder

    shutil.rmtree(out / "tokenizer")
    write_folder(out / "tokenizer", read_folder_merges(TINY_TOKENIZER), pad_token="!",
                 name_or_path=f"fixtures/models/{out.name}/tokenizer")


MODELS: dict[str, Callable] = {
    "tiny-ddim-a": tiny_ddim_a,
    "tiny-ddim-b": tiny_ddim_b,
    "tiny-sd-a": tiny_sd_a,
    "tiny-sd-b": tiny_sd_b,
}
# Run on the saved folder after save_pretrained.
FINISH: dict[str, Callable[[Path], None]] = {"tiny-sd-b": sd_layout_tokenizer}


def build(name: str, out: Path) -> None:
    """Writes model `name` to the new folder `out` with diffusers' save_pretrained."""
    pipe = MODELS[name]()
    pipe.save_pretrained(out, safe_serialization=True)
    if name in FINISH:
        FINISH[name](out)
    for p in out.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # safetensors writes its file 0600


def sanity(name: str, folder: Path) -> list[str]:
    """Loads the folder as the oracle does and returns problems with its 2-step images."""
    pipeline = json.loads((folder / "model_index.json").read_text())["_class_name"]
    if pipeline == "StableDiffusionPipeline":
        return sanity_sd(name, folder)
    return sanity_ddim(name, folder)


def interior(img: np.ndarray) -> tuple[float, float, str]:
    """(fraction exactly 0 or 1, fraction within 0.01 of them, a line saying so)."""
    edge = float(((img == 0) | (img == 1)).mean())
    near = float(((img < 0.01) | (img > 0.99)).mean())
    return edge, near, (f"{100 * (1 - edge):.1f}% in (0, 1), {100 * (1 - near):.1f}% in "
                        f"[0.01, 0.99], std {img.std():.3f}")


def sanity_sd(name: str, folder: Path) -> list[str]:
    """StableDiffusionPipeline on the folder: tokenizer, images, and tiny-sd-a's test slice."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        for p in model.parameters():
            p.data = p.data.clone()  # aligned, as the oracle runs it
    pipe.set_progress_bar_config(disable=True)
    problems = []
    lines = []
    tok = pipe.tokenizer
    files = sorted(p.name for p in (folder / "tokenizer").iterdir())
    ids = tok(SD_PROMPT, padding="max_length", max_length=tok.model_max_length,
              truncation=True).input_ids
    lines.append(f"tokenizer/: {files}; {type(tok).__name__}, {len(tok)} ids, pad "
                 f"{tok.pad_token!r} = {tok.pad_token_id}; prompt -> {len(ids)} ids, "
                 f"{ids[:12]}...")
    if len(ids) != 77 or len(tok) != pipe.text_encoder.config.vocab_size:
        problems.append(f"tokenizer: {len(ids)} ids a prompt, {len(tok)} in the vocabulary")
    if name == "tiny-sd-b" and ("tokenizer.json" in files or tok.pad_token != "!"
                                or tok.pad_token_id != 0 or ids[-1] != 0):
        problems.append("tokenizer/ is not vocab + merges only, padded with '!' (id 0)")
    for steps in (1, 2, 5, 10):
        img = pipe(SD_PROMPT, generator=torch.Generator("cpu").manual_seed(0),
                   num_inference_steps=steps, output_type="np").images
        edge, _, line = interior(img)
        lines.append(f"steps {steps}: {img.shape[1]}x{img.shape[2]}, {line}")
        if not np.isfinite(img).all():
            problems.append(f"{steps} steps: non-finite values")
        if img.std() == 0:
            problems.append(f"{steps} steps: a constant image")
        if steps == 2 and edge > 0.5:
            problems.append(f"2 steps: {100 * edge:.0f}% of the pixels are exactly 0 or 1")
    if name == "tiny-sd-a":
        img = pipe(SD_FAST_TEST_PROMPT, generator=torch.Generator("cpu").manual_seed(0),
                   num_inference_steps=2, guidance_scale=6.0, output_type="np").images
        got = img[0, -3:, -3:, -1].flatten()
        diff = float(np.abs(got - SD_FAST_TEST_SLICE).max())
        lines.append(f"diffusers fast-test slice: {[round(float(x), 4) for x in got]}, max |diff| "
                     f"{diff:.2e} (test tolerance 1e-2)")
        if diff > 1e-2:
            problems.append(f"does not reproduce diffusers' fast-test slice (max diff {diff})")
    print(f"  {name}:")
    for part in ("unet", "vae", "text_encoder"):
        params = sum(p.numel() for p in getattr(pipe, part).parameters())
        size = sum(p.stat().st_size for p in (folder / part).glob("*.safetensors"))
        print(f"    {part}: {params} parameters, {size} bytes of safetensors")
    for line in lines:
        print(f"    {line}")
    return problems


def sanity_ddim(name: str, folder: Path) -> list[str]:
    """DDIMPipeline on the folder: its images, and tiny-ddim-a's test slice."""
    from diffusers import DDIMPipeline

    pipe = DDIMPipeline.from_pretrained(folder, use_safetensors=True)
    for p in pipe.unet.parameters():
        p.data = p.data.clone()  # aligned, as the oracle runs it
    pipe.set_progress_bar_config(disable=True)
    problems = []
    lines = []
    for steps in (1, 2, 5, 10):
        img = pipe(generator=torch.Generator("cpu").manual_seed(0), num_inference_steps=steps,
                   output_type="np").images
        edge = float(((img == 0) | (img == 1)).mean())
        near = float(((img < 0.01) | (img > 0.99)).mean())
        lines.append(f"steps {steps}: {100 * (1 - edge):.0f}% in (0, 1), "
                     f"{100 * (1 - near):.0f}% in [0.01, 0.99], std {img.std():.3f}")
        if not np.isfinite(img).all():
            problems.append(f"{steps} steps: non-finite values")
        if img.std() == 0:
            problems.append(f"{steps} steps: a constant image")
        if steps == 2 and edge > 0.5:
            problems.append(f"2 steps: {100 * edge:.0f}% of the pixels are exactly 0 or 1")
    if name == "tiny-ddim-a":
        img = pipe(generator=torch.Generator("cpu").manual_seed(0), num_inference_steps=2,
                   output_type="np").images
        diff = float(np.abs(img[0, -3:, -3:, -1].flatten() - DIFFUSERS_FAST_TEST_SLICE).max())
        lines.append(f"diffusers fast-test slice: max |diff| {diff:.2e} (test tolerance 1e-3)")
        if diff > 1e-3:
            problems.append(f"does not reproduce diffusers' fast-test slice (max diff {diff})")
    params = sum(p.numel() for p in pipe.unet.parameters())
    size = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    print(f"  {name}: {params} parameters, {size} bytes of safetensors")
    for line in lines:
        print(f"    {line}")
    return problems


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ci/oracle/run.sh --make-models",
                                description="Writes the tiny models under fixtures/models/.")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {list(MODELS)}")
    p.add_argument("--force", action="store_true", help="overwrite existing folders")
    p.add_argument("--check", action="store_true",
                   help="rebuild in a temporary folder and compare with the committed files")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        print(f"make_models: error: unknown model(s) {unknown}; known: {list(MODELS)}",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return build_all(args.names or list(MODELS), MODELS_DIR, build, sanity, force=args.force,
                     check=args.check, prog="make_models")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
