"""Recording one diffusers pipeline call: its environment, call, initial latents, every
scheduler step's latent and its output, into a run record folder reprodiff reads.

The recorder wraps the pipeline's scheduler instance's `step` (whatever its class: DDIM, DDPM,
PNDM, Euler, DPM-Solver++, ...) for the duration of the call and copies what it returns; it
changes no value the pipeline computes, so the output is bit-identical to an unrecorded call
(a test holds it so).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import environment
from . import truth as replay
from .steps import step_hook

#: The run record's schema name and version, as `reprodiff schema run-record` defines them.
SCHEMA = "reprodiff-run-record"
VERSION = 1

_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}


class Recording:
    """What one call recorded; `write` puts it in a folder."""

    def __init__(self, pipe: Any, name: str | None, call_kwargs: dict[str, Any]):
        self.pipe = pipe
        self.name = name
        # Before the call: a generator is recorded as the call found it, not as it left it.
        self.call = _call(call_kwargs)
        self.initial: torch.Tensor | None = None
        #: What the call returned; `recording` users set it before their block ends.
        self.output: Any = None
        self.steps: list[tuple[int, Any, torch.Tensor]] = []
        #: The float64 replay's steps and output (`record(..., truth=True)`), else None.
        self.truth: tuple[list[tuple[int, Any, torch.Tensor]], Any] | None = None
        self.environment = environment.fingerprint()

    def on_step(self, sample: torch.Tensor, timestep: Any, prev: torch.Tensor) -> None:
        if self.initial is None:
            self.initial = sample.detach().to("cpu", copy=True)
        _append_step(self.steps, timestep, prev)

    def write(self, out: Path, output: Any) -> Path:
        """Writes `run.json` and the arrays into `out` (created; an existing record there is
        replaced whole: the JSON is written last, by one rename)."""
        out.mkdir(parents=True, exist_ok=True)
        arrays = out / "arrays"
        arrays.mkdir(exist_ok=True)
        record: dict[str, Any] = {
            "schema": SCHEMA,
            "version": VERSION,
            "name": self.name,
            "environment": self.environment,
            "pipeline": _pipeline(self.pipe),
            "model": _model(self.pipe),
            "call": self.call,
            "initial_latents": (
                _array(arrays, "initial_latents", self.initial)
                if self.initial is not None
                else None
            ),
            "steps": _steps(arrays, self.steps, "step"),
            "output": _output(arrays, output),
        }
        if self.truth is not None:
            steps, truth_output = self.truth
            record["truth"] = {
                "steps": _steps(arrays, steps, "truth-step"),
                "output": _output(arrays, truth_output, "truth-output"),
            }
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=out)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out / "run.json")
        return out / "run.json"


@contextlib.contextmanager
def recording(
    pipe: Any, out: str | os.PathLike[str], name: str | None = None, **call_kwargs: Any
) -> Iterator[Recording]:
    """For code that calls the pipeline itself: every scheduler step inside the block is
    recorded; set `rec.output` to what the call returned before the block ends. The record is
    written when the block ends without an error."""
    rec = Recording(pipe, name, call_kwargs)
    with step_hook(pipe.scheduler, rec.on_step):
        yield rec
    rec.write(Path(out), rec.output)


def record(
    pipe: Any,
    out: str | os.PathLike[str],
    name: str | None = None,
    truth: bool = False,
    **call_kwargs: Any,
) -> Any:
    """Calls `pipe(**call_kwargs)`, writes its run record into the folder `out`, and returns the
    pipeline's output unchanged.

    With `truth=True` the record also holds the float64 replay of the call on the CPU, from the
    same initial latents and step noise (truth.py; DDIM, DDPM and PNDM, others refused with a
    ValueError before anything runs): `reprodiff diff` then gives each run's distance to its
    own truth."""
    if truth:
        replay.refuse_unless_replayable(pipe)
        found = copy.deepcopy(pipe.scheduler)  # the state the call finds it in
    with recording(pipe, out, name, **call_kwargs) as rec:
        with replay.draws_captured() if truth else contextlib.nullcontext([]) as draws:
            result = pipe(**call_kwargs)
        rec.output = result
        if truth:
            steps, output = _truth(pipe, found, draws, call_kwargs)
            rec.truth = (steps, replay.as_recorded(output, getattr(result, "images", result)))
    return result


def _is_pil(output: Any) -> bool:
    images = getattr(output, "images", output)
    return isinstance(images, (list, tuple)) and bool(images) and hasattr(images[0], "size")


def _truth(pipe: Any, scheduler: Any, draws: list[torch.Tensor], call_kwargs: dict[str, Any]):
    """The float64 replay's steps and output."""
    pipe64 = replay.float64_pipeline(pipe, scheduler)
    steps: list[tuple[int, Any, torch.Tensor]] = []

    def on_step(sample: torch.Tensor, timestep: Any, prev: torch.Tensor) -> None:
        _append_step(steps, timestep, prev)

    with step_hook(pipe64.scheduler, on_step), replay.draws_replayed(draws):
        output = pipe64(**replay.truth_call(call_kwargs))
    return steps, output


def _append_step(steps: list[tuple[int, Any, torch.Tensor]], t: Any, prev: torch.Tensor) -> None:
    steps.append((len(steps) + 1, t, prev.detach().to("cpu", copy=True)))


def _steps(folder: Path, steps: list[tuple[int, Any, torch.Tensor]], stem: str) -> list[Any]:
    return [
        {"step": i, "timestep": _timestep(t), **_array(folder, f"{stem}-{i:04d}", latent)}
        for i, t, latent in steps
    ]


def _array(folder: Path, stem: str, t: torch.Tensor) -> dict[str, Any]:
    """Saves `t` (bf16 stored as f32, exactly) and describes it: file, dtype, shape, and the
    sha256 of its raw bytes in its own dtype (what reprodiff's `bits` compares)."""
    t = t.detach().to("cpu").contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    sha = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
    stored = t.float() if t.dtype == torch.bfloat16 else t
    path = folder / f"{stem}.npy"
    np.save(path, stored.numpy())
    return {
        "file": f"{folder.name}/{path.name}",
        "dtype": _DTYPES.get(t.dtype, str(t.dtype)),
        "shape": list(t.shape),
        "sha256": sha,
    }


def _output(folder: Path, output: Any, stem: str = "output") -> dict[str, Any] | None:
    """The pipeline's output: its images (numpy, torch or PIL) or latents, as one array. PIL
    images (the default `output_type`) are their 0-255 pixels, stored exactly as float32: the
    record's arrays are floating point."""
    images = getattr(output, "images", output)
    if _is_pil(output):
        images = np.stack([np.asarray(im) for im in images]).astype(np.float32)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        return None
    return _array(folder, stem, images)


def _timestep(t: Any) -> int | float:
    value = t.item() if isinstance(t, torch.Tensor) else t
    return int(value) if float(value).is_integer() else float(value)


def _pipeline(pipe: Any) -> dict[str, Any]:
    scheduler = pipe.scheduler
    return {
        "class": type(pipe).__name__,
        "device": str(pipe.device),
        "dtype": _DTYPES.get(pipe.dtype, str(pipe.dtype)),
        "scheduler": {
            "class": type(scheduler).__name__,
            "config": _jsonable(dict(scheduler.config)),
        },
    }


def _model(pipe: Any) -> dict[str, Any]:
    """Where the pipeline was loaded from, and a hash of its weights in memory, per component:
    in name order, each name's bytes then the tensor's raw bytes (reprodiff's `run --trace`
    hashes the weights it loads the same way)."""
    config = getattr(pipe, "config", {}) or {}
    source = config.get("_name_or_path") if hasattr(config, "get") else None
    weights = {}
    for name, component in getattr(pipe, "components", {}).items():
        if isinstance(component, torch.nn.Module):
            h = hashlib.sha256()
            for key, value in sorted(component.state_dict().items()):
                v = value.detach().to("cpu").contiguous()
                raw = v.view(torch.int16) if v.dtype == torch.bfloat16 else v
                h.update(key.encode())
                h.update(raw.numpy().tobytes())
            weights[name] = h.hexdigest()
    return {"source": None if source is None else str(source), "weights_sha256": weights}


def _call(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments, generators as their device and seed."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "generator":
            gens = value if isinstance(value, (list, tuple)) else [value]
            out[key] = [None if g is None else _generator(g) for g in gens]
            if not isinstance(value, (list, tuple)):
                out[key] = out[key][0]
        else:
            out[key] = _jsonable(value)
    return out


def _generator(g: torch.Generator) -> dict[str, Any]:
    """A generator as the call found it: device, seed, and a hash of its state (a generator
    already drawn from has its seed but another state)."""
    state = g.get_state()
    return {
        "device": str(g.device),
        "seed": g.initial_seed(),
        "state_sha256": hashlib.sha256(state.numpy().tobytes()).hexdigest(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return repr(value)
