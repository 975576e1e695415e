"""The one way reprodiff records a diffusers scheduler's steps, for the recorder (one pipeline's
scheduler instance) and for reprodiff's oracle (ci/oracle/truth.py: every instance of a
scheduler class, since its workloads build their pipelines inside).

The wrapper keeps the step's signature (functools.wraps): diffusers' pipelines pass `eta` and
`generator` only to a step whose signature (inspect.signature, which follows __wrapped__) names
them, so a wrapper without it would change what the pipeline computes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: Called after every step with the step's input sample, its timestep and its `prev_sample`.
OnStep = Callable[[torch.Tensor, Any, torch.Tensor], None]


def prev_sample(result: Any) -> torch.Tensor:
    """The latent a scheduler step returned (a tuple's first element, or `.prev_sample`)."""
    return result[0] if isinstance(result, tuple) else result.prev_sample


@contextlib.contextmanager
def step_hook(owner: Any, on_step: OnStep) -> Iterator[None]:
    """Wraps `owner.step` for the block: `owner` is a scheduler instance (that instance only,
    whatever its class) or a scheduler class (every instance of it). The step's results are
    returned untouched; `on_step` sees them after each call."""
    original = owner.step  # a bound method of an instance; the function of a class

    if isinstance(owner, type):

        @functools.wraps(original)
        def step(self: Any, model_output: Any, timestep: Any, sample: Any, *a: Any, **k: Any):
            result = original(self, model_output, timestep, sample, *a, **k)
            on_step(sample, timestep, prev_sample(result))
            return result

    else:

        @functools.wraps(original)
        def step(model_output: Any, timestep: Any, sample: Any, *a: Any, **k: Any):
            result = original(model_output, timestep, sample, *a, **k)
            on_step(sample, timestep, prev_sample(result))
            return result

    own = "step" in vars(owner)
    owner.step = step
    try:
        yield
    finally:
        if own:
            owner.step = original
        else:
            del owner.step  # the class's own (or inherited) method again


@contextlib.contextmanager
def latents_recorded(*owners: Any) -> Iterator[list[torch.Tensor]]:
    """Every step's `prev_sample` of the given scheduler instances or classes, copied to the CPU
    in call order, for the block."""
    latents: list[torch.Tensor] = []

    def on_step(sample: torch.Tensor, timestep: Any, prev: torch.Tensor) -> None:
        latents.append(prev.detach().to("cpu", copy=True))

    with contextlib.ExitStack() as stack:
        for owner in owners:
            stack.enter_context(step_hook(owner, on_step))
        yield latents
