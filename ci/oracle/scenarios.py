"""The scenarios to compute, as reprodiff expands them.

Suites (fixtures/suites/*.toml: defaults, matrices, `$key` substitution) are read and expanded
by reprodiff alone: `reprodiff list --json` prints one JSON line per expanded scenario, the Rust
`Scenario` serialised with serde. The oracle thereby computes exactly the scenarios that
`reprodiff check` runs, under the same names, and a suite that reprodiff refuses never reaches
PyTorch. This module only types the parts that drive PyTorch and diffusers; reprodiff has
validated them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import determinism
from common import MODELS_DIR, REPO, SuiteError, reprodiff

Table = dict[str, Any]
RUN_KINDS = ("random", "ddim", "sd", "vae-encode")
Prompts = str | tuple[str, ...]  # one prompt, or a list (diffusers' `prompt=`)


@dataclass(frozen=True)
class GeneratorSpec:
    type: str  # single | per-sample | repeated | global | unseeded
    seeds: tuple[int, ...]  # one seed, except per-sample (and none for unseeded)
    count: int  # how many generators the run lists (`repeated`: [g] * count)
    device: str


@dataclass(frozen=True)
class RandomRun:
    op: str  # randn | rand | normal
    shape: tuple[int, ...]
    dtype: str
    generator: GeneratorSpec
    skip: tuple[int, ...] | None  # a draw made first and discarded
    state_roundtrip: bool
    mean: float
    std: float


@dataclass(frozen=True)
class DdimRun:
    """diffusers' DDIMPipeline: `pipe(batch_size, generator, eta, num_inference_steps, ...)`."""

    model: str  # a folder name under models_dir, a path, "derived:ARCH", "hub:ORG/NAME"
    steps: int
    eta: float
    batch: int
    generator: GeneratorSpec
    output_type: str  # np | latent
    dtype: str  # the UNet's (and so the noise's and the output's) dtype
    use_clipped_model_output: bool | None  # None: not passed, as the pipeline's default
    scheduler: Table = field(default_factory=dict)  # DDIMScheduler.from_config overrides
    twice: bool = False  # output run 1 minus run 2, generators re-made between
    models_dir: Path = MODELS_DIR  # where bare model names are (the suite's fixtures/models)


@dataclass(frozen=True)
class SdRun:
    """diffusers' StableDiffusionPipeline: `pipe(prompt, negative_prompt, guidance_scale, ...)`
    without the safety checker; None fields are not passed (the pipeline's defaults)."""

    model: str  # as DdimRun.model: a pipeline folder with text_encoder/, unet/, vae/
    prompt: Prompts
    negative_prompt: Prompts | None
    guidance_scale: float
    steps: int
    eta: float
    num_images_per_prompt: int
    height: int | None
    width: int | None
    clip_skip: int | None
    generator: GeneratorSpec
    output_type: str  # np | latent
    dtype: str  # every component's (`pipe.to(dtype)`, as torch_dtype), so the output's
    scheduler_class: str | None  # ddim | pndm: swapped in by from_config; None: the folder's
    scheduler: Table = field(default_factory=dict)  # from_config overrides
    twice: bool = False  # output run 1 minus run 2, generators re-made between
    models_dir: Path = MODELS_DIR  # as DdimRun.models_dir


@dataclass(frozen=True)
class VaeEncodeRun:
    """A Stable Diffusion folder's VAE encoder: `vae.encode(x).latent_dist.parameters` (the
    moments, mean and log-variance) for `x = randn_tensor(shape, generator)`."""

    model: str
    shape: tuple[int, ...]
    generator: GeneratorSpec
    dtype: str
    models_dir: Path = MODELS_DIR


PipelineRun = DdimRun | SdRun


@dataclass(frozen=True)
class Scenario:
    suite: str
    name: str
    run: RandomRun | DdimRun | SdRun
    device: str
    determinism: determinism.Determinism
    slice: tuple[int | slice, ...] | None  # numpy-style: "0, -3:, -3:, -1"
    source: Table  # the `list --json` line, as handed to a child process


def listed(suites: list[str], pattern: str | None) -> list[Table]:
    """`reprodiff list --json` for the suites (all without names) and the filter."""
    args = ["list", "--json"]
    for suite in suites:
        args += ["--suite", suite]
    if pattern is not None:
        args += ["--filter", pattern]
    return [json.loads(line) for line in reprodiff(args, capture=True).splitlines() if line]


def is_supported(line: Table) -> bool:
    """Whether the oracle computes this kind of run."""
    return line["scenario"]["run"]["kind"] in RUN_KINDS


def parse(line: Table) -> Scenario:
    """The typed scenario of one `list --json` line whose run kind is supported."""
    s = line["scenario"]
    run = s["run"]
    # Bare model names live in the models/ folder beside the suite's suites/ folder.
    models_dir = REPO / Path(line["suite_file"]).parent.parent / "models"
    return Scenario(
        suite=line["suite"],
        name=s["name"],
        run=parse_run(run, models_dir),
        device=s["device"],
        # reprodiff's rule, not this file's: the scenario's determinism, and for portable
        # kernels the noise contract's ATen capability (Scenario::oracle_determinism).
        determinism=determinism.Determinism(**line["oracle_determinism"]),
        slice=parse_slice(s["slice"]) if "slice" in s else None,
        source=line,
    )


def parse_run(run: Table, models_dir: Path) -> RandomRun | DdimRun | SdRun | VaeEncodeRun:
    if run["kind"] == "random":
        return parse_random(run)
    if run["kind"] == "vae-encode":
        return VaeEncodeRun(model=run["model"], shape=tuple(run["shape"]),
                            generator=parse_generator(run["generator"]), dtype=run["dtype"],
                            models_dir=models_dir)
    if run["kind"] == "ddim":
        return parse_ddim(run, models_dir)
    return parse_sd(run, models_dir)


def parse_random(run: Table) -> RandomRun:
    return RandomRun(
        op=run["op"],
        shape=tuple(run["shape"]),
        dtype=run["dtype"],
        generator=parse_generator(run["generator"]),
        skip=tuple(run["skip"]) if "skip" in run else None,
        state_roundtrip=run.get("state_roundtrip", False),
        mean=run.get("mean", 0.0),
        std=run.get("std", 1.0),
    )


def parse_ddim(run: Table, models_dir: Path) -> DdimRun:
    return DdimRun(
        model=run["model"],
        steps=run["steps"],
        eta=run["eta"],
        batch=run["batch"],
        generator=parse_generator(run["generator"]),
        output_type=run["output_type"],
        dtype=run["dtype"],
        use_clipped_model_output=run.get("use_clipped_model_output"),
        scheduler=run.get("scheduler", {}),
        twice=run.get("twice", False),
        models_dir=models_dir,
    )


def parse_sd(run: Table, models_dir: Path) -> SdRun:
    """An sd run as serde writes it: optional fields absent, defaults filled in by reprodiff."""
    return SdRun(
        model=run["model"],
        prompt=parse_prompts(run["prompt"]),
        negative_prompt=parse_prompts(run["negative_prompt"]) if "negative_prompt" in run else None,
        guidance_scale=run["guidance_scale"],
        steps=run["steps"],
        eta=run["eta"],
        num_images_per_prompt=run["num_images_per_prompt"],
        height=run.get("height"),
        width=run.get("width"),
        clip_skip=run.get("clip_skip"),
        generator=parse_generator(run["generator"]),
        output_type=run["output_type"],
        dtype=run["dtype"],
        scheduler_class=run.get("scheduler_class"),
        scheduler=run.get("scheduler", {}),
        twice=run.get("twice", False),
        models_dir=models_dir,
    )


def parse_prompts(p: str | list[str]) -> Prompts:
    """A prompt string, or a list as a tuple (the run is frozen)."""
    return p if isinstance(p, str) else tuple(p)


def parse_generator(gen: Table) -> GeneratorSpec:
    """GeneratorSpec as serde writes it: {"type", "seed" | "seeds", "count"?, "device"?}."""
    kind = gen["type"]
    if kind == "per-sample":
        seeds = tuple(gen["seeds"])
    elif kind == "unseeded":
        seeds = ()
    else:
        seeds = (gen["seed"],)
    return GeneratorSpec(kind, seeds, gen.get("count", len(seeds)), gen.get("device", "cpu"))


def parse_slice(text: str) -> tuple[int | slice, ...]:
    """A numpy-style slice of indices and start:stop ranges ("0, -3:, -3:, -1"), as
    src/harness/suite/slice.rs reads it (no steps)."""

    def integer(part: str) -> int | None:
        part = part.strip()
        try:
            return int(part) if part else None
        except ValueError:
            raise SuiteError(f"slice {text!r}: '{part}' is not an integer") from None

    axes: list[int | slice] = []
    for part in text.split(","):
        start, colon, stop = part.partition(":")
        axes.append(slice(integer(start), integer(stop)) if colon else integer(part))
    return tuple(axes)
