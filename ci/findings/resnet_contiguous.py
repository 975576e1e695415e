#!/usr/bin/env python3
"""The diffusers change behind the 0.35.2 -> 0.37.0 drift (docs/findings.md, "Drift across
diffusers releases"), checked in one run of whatever diffusers this Python has.

diffusers 0.37.0 (commit 1eb40c6, PR #12977) stopped calling `.contiguous()` on the input of
ResnetBlock2D's `conv_shortcut` outside training. Attention's 4D output is channels_last in
memory, so from 0.37.0 on that layout reaches the next GroupNorm and convolutions, whose CPU
kernels round differently on it. This prints, per case, the sha256 (first 12 hex digits) of
the output as this diffusers computes it, and with a forward pre-hook that makes every
conv_shortcut input contiguous again (0.35.2's behaviour). On 0.35.2 the two columns agree;
on 0.37.0 and later they differ where a conv_shortcut input is not contiguous, and the hooked
column equals 0.35.2's plain one.

    ~/.cache/reprodiff/oracle-diffusers-0.35.2/bin/python ci/findings/resnet_contiguous.py
    ~/.cache/reprodiff/torch-2.13.0/bin/python ci/findings/resnet_contiguous.py
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DModel  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:12]


def contiguous_shortcuts(module: torch.nn.Module) -> list:
    """Pre-hooks making every conv_shortcut input contiguous (0.35.2's `.contiguous()`)."""
    return [
        m.conv_shortcut.register_forward_pre_hook(lambda _, a: (a[0].contiguous(), *a[1:]))
        for m in module.modules()
        if isinstance(m, ResnetBlock2D) and m.conv_shortcut is not None
    ]


def both(module: torch.nn.Module, call) -> tuple[str, str]:
    with torch.no_grad():
        plain = sha(call())
        hooks = contiguous_shortcuts(module)
        hooked = sha(call())
    for h in hooks:
        h.remove()
    return plain, hooked


def main() -> None:
    torch.set_num_threads(2)
    cases = []
    for name in ("tiny-ddim-a", "tiny-ddim-b"):
        unet = UNet2DModel.from_pretrained(MODELS / name / "unet").eval()
        c, s = unet.config.in_channels, unet.config.sample_size
        for batch in (1, 3):
            x = torch.randn(batch, c, s, s, generator=torch.Generator().manual_seed(0))
            call = lambda u=unet, x=x: u(x, 500).sample  # noqa: E731
            cases.append((f"{name} unet batch {batch}", *both(unet, call)))
    vae = AutoencoderKL.from_pretrained(MODELS / "tiny-sd-a" / "vae").eval()
    for batch in (1, 2):
        z = torch.randn(batch, vae.config.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
        call = lambda z=z: vae.decode(z).sample  # noqa: E731
        cases.append((f"tiny-sd-a vae decode batch {batch}", *both(vae, call)))
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    print(f"{'case':34} {'as is':12} {'contiguous':12}")
    for case, plain, hooked in cases:
        print(f"{case:34} {plain:12} {hooked:12}{'' if plain == hooked else '  differs'}")


if __name__ == "__main__":
    main()
