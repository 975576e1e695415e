#!/usr/bin/env python3
"""The tiny diffusers models of the ddim-tiny suite: fixtures/models/<name>/, made by diffusers.

This script is their provenance. Each model is a diffusers-format pipeline folder
(model_index.json, unet/config.json, unet/diffusion_pytorch_model.safetensors,
scheduler/scheduler_config.json) written by diffusers' own ``save_pretrained`` from a
UNet2DModel initialised by diffusers under a fixed ``torch.manual_seed``:

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

Usage (ci/oracle/run.sh runs it in the oracle's venv)::

    ci/oracle/run.sh --make-models [--force] [--check] [NAME]...

Without NAME, every model. An existing folder is left alone unless --force; --check rebuilds
each model in a temporary folder and fails unless every file is byte-identical to the committed
one (the weights depend on torch's initialisation, so check after a torch upgrade: goldens made
from the committed files stay valid either way, but regenerating the files would change them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "fixtures" / "models"

# Scale of the random weights left on tiny-ddim-b's pass-through paths.
PASS_THROUGH_RANDOM_SCALE = 0.05

# diffusers' DDIM fast test (test_inference): image[0, -3:, -3:, -1] for a CPU generator
# seed 0, 2 steps, output_type "np", within atol 1e-3.
DIFFUSERS_FAST_TEST_SLICE = [0.0, 9.979e-01, 0.0, 9.999e-01, 9.986e-01, 9.991e-01, 7.106e-04, 0.0,
                             0.0]


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


MODELS: dict[str, Callable] = {"tiny-ddim-a": tiny_ddim_a, "tiny-ddim-b": tiny_ddim_b}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file in `folder`."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def build(name: str, out: Path) -> None:
    """Writes model `name` to the new folder `out` with diffusers' save_pretrained."""
    pipe = MODELS[name]()
    pipe.save_pretrained(out, safe_serialization=True)
    for p in out.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # safetensors writes its file 0600


def sanity(name: str, folder: Path) -> list[str]:
    """Loads the folder as the oracle does and returns problems with its 2-step images."""
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
    failed = False
    for name in args.names or list(MODELS):
        final = MODELS_DIR / name
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=MODELS_DIR, prefix=f".{name}.") as tmp:
            fresh = Path(tmp) / name
            build(name, fresh)
            if args.check:
                if not final.is_dir():
                    print(f"  {name}: not committed ({final.relative_to(REPO)} is missing)")
                    failed = True
                    continue
                want, got = files_of(final), files_of(fresh)
                if want == got:
                    print(f"  {name}: rebuilt byte for byte ({len(got)} files)")
                else:
                    changed = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
                    print(f"  {name}: DIFFERS from the committed folder: {changed}")
                    failed = True
                continue
            if final.exists() and not args.force:
                print(f"  {name}: {final.relative_to(REPO)} exists; left as it is (--force)")
                continue
            problems = sanity(name, fresh)
            if problems:
                print(f"make_models: error: {name}: " + "; ".join(problems), file=sys.stderr)
                return 1
            if final.exists():
                shutil.rmtree(final)
            os.replace(fresh, final)
            print(f"  {name}: wrote {final.relative_to(REPO)}: " + json.dumps(
                {k: v[:12] for k, v in files_of(final).items()}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
