"""The float64 replay of a recorded call (`record(..., truth=True)`), as reprodiff's oracle makes
its truths (ci/oracle/truth.py): the same pipeline with every model in float64 on the CPU, and
every random number the one the recorded call drew (in the run's dtype, then cast to float64),
in the same call order. The scheduler starts from the state the recorded call found it in; its
constants stay the float32 values diffusers computes, as the weights do: they define the
pipeline. So the truth differs from the recorded run only by that run's rounding.

A float64 step means something only where the scheduler computes in the sample's dtype and
draws its noise through diffusers' `randn_tensor`: DDIM, DDPM and PNDM. Euler's step casts the
sample to float32 inside; DPM-Solver's SDE variants draw through torchsde; the rest are refused
by name until each is shown to replay.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

#: The scheduler classes whose float64 replay is meaningful (see the module's docstring).
REPLAYABLE = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler")


def refuse_unless_replayable(pipe: Any) -> None:
    """Raises ValueError naming the scheduler when its float64 replay means nothing."""
    name = type(pipe.scheduler).__name__
    if name not in REPLAYABLE:
        raise ValueError(
            f"truth=True: {name} has no float64 replay (its step computes in float32 or draws "
            f"outside diffusers' randn_tensor); truth is made for {', '.join(REPLAYABLE)}. "
            "Record without truth=True: `reprodiff diff` still compares the runs"
        )


def _randn_users() -> tuple[Any, list[Any]]:
    """diffusers' `randn_tensor` and every loaded diffusers module that calls it by that name
    (the pipelines' and the schedulers' modules import it into their own namespace)."""
    from diffusers.utils import torch_utils

    original = torch_utils.randn_tensor
    modules = [
        m
        for name, m in list(sys.modules.items())
        if name.startswith("diffusers") and getattr(m, "randn_tensor", None) is original
    ]
    return original, modules


@contextlib.contextmanager
def _randn_replaced(replacement: Any) -> Iterator[None]:
    original, modules = _randn_users()
    for m in modules:
        m.randn_tensor = replacement
    try:
        yield
    finally:
        for m in modules:
            m.randn_tensor = original


@contextlib.contextmanager
def draws_captured() -> Iterator[list[torch.Tensor]]:
    """Every value diffusers' `randn_tensor` returns in the block, copied to the CPU in call
    order. The values themselves are untouched: the call computes what it would unrecorded."""
    original, _ = _randn_users()
    draws: list[torch.Tensor] = []

    def captured(*args: Any, **kwargs: Any) -> torch.Tensor:
        value = original(*args, **kwargs)
        draws.append(value.detach().to("cpu", copy=True))
        return value

    with _randn_replaced(captured):
        yield draws


@contextlib.contextmanager
def draws_replayed(draws: list[torch.Tensor]) -> Iterator[None]:
    """Serves `draws` in order, cast to float64, in place of every `randn_tensor` call in the
    block; a call of another shape, or a draw left over, is an error (the replay did not follow
    the recorded call)."""
    served = iter(enumerate(draws))

    def replayed(shape: Any, generator: Any = None, device: Any = None, **_: Any) -> torch.Tensor:
        try:
            i, value = next(served)
        except StopIteration:
            raise RuntimeError(
                f"truth=True: the float64 replay drew more than the {len(draws)} draws the "
                "recorded call made"
            ) from None
        if tuple(value.shape) != tuple(shape):
            raise RuntimeError(
                f"truth=True: the replay's draw {i + 1} has shape {tuple(shape)}, the recorded "
                f"call's {tuple(value.shape)}"
            )
        return value.to(torch.float64)

    with _randn_replaced(replayed):
        yield
    left = sum(1 for _ in served)
    if left:
        raise RuntimeError(f"truth=True: the float64 replay left {left} recorded draws unused")


def float64_pipeline(pipe: Any, scheduler: Any) -> Any:
    """A float64 CPU copy of `pipe` with `scheduler` (the state the recorded call found)."""
    pipe64 = copy.deepcopy(pipe)
    pipe64.scheduler = scheduler
    return pipe64.to(device="cpu", dtype=torch.float64)


def truth_call(call_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The recorded call's arguments for the replay: tensors (given latents, embeddings) in
    float64 on the CPU, and images as tensors ("pil" and "np" become "pt": diffusers' image
    processor rounds "np" images to float32, and "pil" to 8 bits)."""
    out = {}
    for key, value in call_kwargs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.to("cpu", torch.float64)
        out[key] = value
    if out.get("output_type", "pil") in ("pil", "np"):
        out["output_type"] = "pt"
    return out


def as_recorded(truth_output: Any, images: Any) -> Any:
    """The truth's images laid out and scaled as the recorded call's `images`: NHWC where those
    are numpy or PIL (a "pt" image processor's are NCHW), and 0-255 where they are PIL (the
    pixels before rounding)."""
    true = getattr(truth_output, "images", truth_output)
    pil = isinstance(images, (list, tuple)) and bool(images) and hasattr(images[0], "size")
    if (
        isinstance(true, torch.Tensor)
        and true.dim() == 4
        and (pil or isinstance(images, np.ndarray))
    ):
        true = true.permute(0, 2, 3, 1)
    true = torch.as_tensor(np.asarray(true)) if not isinstance(true, torch.Tensor) else true
    return true * 255.0 if pil else true
