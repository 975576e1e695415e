"""reprodiff-record on the repository's tiny fixture models (fixtures/models): recording changes
no bit, what it writes is a valid run record by reprodiff's own schema, the same call recorded
twice gives the same record, and any scheduler is recorded, not only the ones reprodiff ports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)

import reprodiff_record
from reprodiff_record import record

REPO = Path(__file__).resolve().parents[3]
MODELS = REPO / "fixtures" / "models"


def reprodiff(*args: str) -> str:
    """`reprodiff ARGS`: REPRODIFF_BIN, else the debug build of this checkout (.ci/run builds
    it before pytest runs); a missing binary fails the test, it is not skipped."""
    binary = Path(os.environ.get("REPRODIFF_BIN", REPO / "target" / "debug" / "reprodiff"))
    assert binary.is_file(), f"{binary}: build reprodiff first (ci/cargo build)"
    return subprocess.run([str(binary), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(autouse=True)
def two_threads() -> None:
    torch.set_num_threads(2)


def ddim() -> DDIMPipeline:
    pipe = DDIMPipeline.from_pretrained(MODELS / "tiny-ddim-a")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ddpm() -> DDPMPipeline:
    """tiny-ddim-a as a DDPMPipeline: DDPM's step draws fresh noise at every step but the last."""
    pipe = DDPMPipeline.from_pretrained(MODELS / "tiny-ddim-a")
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd(scheduler: type, **config) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        MODELS / "tiny-sd-a",
        use_safetensors=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_b() -> StableDiffusionPipeline:
    """tiny-sd-b with its own scheduler (PNDM, as SD 1.5 ships it)."""
    pipe = StableDiffusionPipeline.from_pretrained(
        MODELS / "tiny-sd-b",
        use_safetensors=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ddim_call() -> dict:
    return dict(num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0))


def sd_call(**extra) -> dict:
    call = dict(
        prompt="a cat",
        num_inference_steps=3,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    call.update(extra)
    return call


def read(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


@pytest.mark.parametrize(
    "make, call",
    [
        (ddim, ddim_call),
        (lambda: sd(DDIMScheduler), sd_call),
        (lambda: sd(DDIMScheduler), lambda: sd_call(eta=1.0)),
        (lambda: sd(PNDMScheduler, skip_prk_steps=True), sd_call),
        (lambda: sd(EulerDiscreteScheduler), sd_call),
    ],
    ids=["ddim", "sd-ddim", "sd-ddim-eta1", "sd-pndm", "sd-euler"],
)
def test_recording_changes_no_bit_and_records_every_step(make, call, tmp_path: Path) -> None:
    pipe = make()
    plain = pipe(**call()).images
    recorded = record(pipe, tmp_path / "run", **call()).images
    assert np.array_equal(plain, recorded) and plain.tobytes() == recorded.tobytes()
    r = read(tmp_path / "run")
    assert len(r["steps"]) == len(pipe.scheduler.timesteps)
    assert [s["step"] for s in r["steps"]] == list(range(1, len(r["steps"]) + 1))
    assert r["pipeline"]["scheduler"]["class"] == type(pipe.scheduler).__name__
    output = np.load(tmp_path / "run" / r["output"]["file"])
    assert output.tobytes() == plain.tobytes()
    # The scheduler is the class's own again.
    assert "step" not in vars(pipe.scheduler)


def test_the_class_hook_the_oracle_uses_records_every_instance_and_changes_no_bit() -> None:
    """reprodiff's oracle records its pipelines' steps through the package's hook on the
    scheduler classes (ci/oracle/truth.py): every instance's steps, the signature kept (an SD
    call's eta reaches DDIM's step), the class's own step again afterwards."""
    from reprodiff_record.steps import latents_recorded

    pipe = sd(DDIMScheduler)
    plain = pipe(**sd_call(eta=1.0)).images
    original = DDIMScheduler.step
    with latents_recorded(DDIMScheduler) as latents:
        hooked = pipe(**sd_call(eta=1.0)).images
    assert plain.tobytes() == hooked.tobytes()
    assert len(latents) == len(pipe.scheduler.timesteps) == 3
    assert DDIMScheduler.step is original


def test_a_record_is_valid_by_reprodiffs_schema(tmp_path: Path) -> None:
    schema = json.loads(reprodiff("schema", "run-record"))
    record(sd(PNDMScheduler, skip_prk_steps=True), tmp_path / "run", name="mine", **sd_call())
    jsonschema.validate(read(tmp_path / "run"), schema)
    assert schema["properties"]["schema"]["type"] == "string"
    broken = read(tmp_path / "run")
    del broken["steps"][0]["sha256"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_the_same_call_recorded_twice_gives_the_same_arrays(tmp_path: Path) -> None:
    pipe = ddim()
    record(pipe, tmp_path / "a", **ddim_call())
    record(pipe, tmp_path / "b", **ddim_call())
    a, b = read(tmp_path / "a"), read(tmp_path / "b")
    for key in ("initial_latents", "output"):
        assert a[key]["sha256"] == b[key]["sha256"]
    assert [s["sha256"] for s in a["steps"]] == [s["sha256"] for s in b["steps"]]
    assert a["call"]["generator"]["seed"] == 0


def test_a_changed_guidance_scale_is_in_the_call_and_moves_the_first_step(tmp_path: Path) -> None:
    pipe = sd(DDIMScheduler)
    record(pipe, tmp_path / "a", **sd_call(guidance_scale=7.5))
    record(pipe, tmp_path / "b", **sd_call(guidance_scale=7.0))
    a, b = read(tmp_path / "a"), read(tmp_path / "b")
    assert (a["call"]["guidance_scale"], b["call"]["guidance_scale"]) == (7.5, 7.0)
    assert a["initial_latents"]["sha256"] == b["initial_latents"]["sha256"]
    assert a["steps"][0]["sha256"] != b["steps"][0]["sha256"]


def test_the_environment_is_reprodiffs_fingerprint_of_this_host() -> None:
    """Python's facts equal `reprodiff env --json` where both state them (the class reprodiff
    computes from a record is the one it computes for itself)."""
    mine = reprodiff_record.fingerprint()
    theirs = json.loads(reprodiff("env", "--json"))
    for key in ("model", "vendor", "isa", "capability", "threads", "kernel_env"):
        assert mine["cpu"][key] == theirs["cpu"][key], key
    assert mine["os"] == theirs["os"]
    assert mine["cuda"]["available"] == theirs["cuda"]["available"]
    assert mine["versions"]["libtorch"] == theirs["versions"]["libtorch"]
    for key, value in theirs["determinism"].items():
        assert mine["determinism"][key] == value, key


def relative_rmse(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


@pytest.mark.parametrize(
    "make, call",
    [
        (ddim, lambda: {**ddim_call(), "eta": 1.0}),
        (ddpm, ddim_call),
        (lambda: sd(DDIMScheduler), lambda: sd_call(eta=1.0)),
        (lambda: sd(PNDMScheduler, skip_prk_steps=True), sd_call),
    ],
    ids=["ddim-eta1", "ddpm", "sd-ddim-eta1", "sd-pndm"],
)
def test_truth_replays_the_call_in_float64_from_its_own_draws(make, call, tmp_path: Path) -> None:
    """The truth is the same call in float64 from the same initial latents and eta noise: every
    step within float32 rounding of the run's (a replay that drew other noise would be a whole
    noise's rmse away), in float64, and the recorded output is still the unrecorded one."""
    pipe = make()
    plain = pipe(**call()).images
    recorded = record(pipe, tmp_path / "run", truth=True, **call()).images
    assert plain.tobytes() == recorded.tobytes()
    r = read(tmp_path / "run")
    jsonschema.validate(r, json.loads(reprodiff("schema", "run-record")))
    assert len(r["truth"]["steps"]) == len(r["steps"]) > 0
    for mine, true in zip(r["steps"], r["truth"]["steps"]):
        assert true["dtype"] == "f64" and true["timestep"] == mine["timestep"]
        a = np.load(tmp_path / "run" / mine["file"])
        t = np.load(tmp_path / "run" / true["file"])
        assert 0 < relative_rmse(a, t) < 1e-4, (mine["step"], relative_rmse(a, t))
    t = np.load(tmp_path / "run" / r["truth"]["output"]["file"])
    assert t.dtype == np.float64 and 0 < relative_rmse(plain, t) < 1e-4


def test_a_pil_output_is_its_pixels_and_its_truth_the_pixels_before_rounding(
    tmp_path: Path,
) -> None:
    call = {**ddim_call(), "output_type": "pil"}
    images = record(ddim(), tmp_path / "run", truth=True, **call).images
    r = read(tmp_path / "run")
    got = np.load(tmp_path / "run" / r["output"]["file"])
    assert got.dtype == np.float32 and np.array_equal(
        got, np.stack([np.asarray(i) for i in images])
    )
    true = np.load(tmp_path / "run" / r["truth"]["output"]["file"])
    assert true.shape == got.shape and np.abs(true - got).max() <= 0.5 + 1e-3


def test_truth_is_refused_by_name_for_a_scheduler_without_a_float64_step(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="EulerDiscreteScheduler has no float64 replay"):
        record(sd(EulerDiscreteScheduler), tmp_path / "run", truth=True, **sd_call())
    assert not (tmp_path / "run").exists()


def record_in_child(folder: Path, env: dict[str, str] | None = None, truth: bool = False) -> None:
    """The DDIM call recorded in a fresh process (ATen reads ATEN_CPU_CAPABILITY once, at
    start)."""
    script = (
        "import sys, torch\n"
        "from diffusers import DDIMPipeline, DDIMScheduler\n"
        "from reprodiff_record import record\n"
        "torch.set_num_threads(2)\n"
        f"pipe = DDIMPipeline.from_pretrained({str(MODELS / 'tiny-ddim-a')!r})\n"
        "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "record(pipe, sys.argv[1], num_inference_steps=3, output_type='np',\n"
        f"       generator=torch.Generator().manual_seed(0), truth={truth})\n"
    )
    run_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    subprocess.run([sys.executable, "-c", script, str(folder)], check=True, env=run_env)


def diff(a: Path, b: Path) -> subprocess.CompletedProcess:
    binary = Path(os.environ.get("REPRODIFF_BIN", REPO / "target" / "debug" / "reprodiff"))
    return subprocess.run([str(binary), "diff", str(a), str(b)], capture_output=True, text=True)


def test_diff_of_two_runs_in_one_environment_is_identical(tmp_path: Path) -> None:
    record_in_child(tmp_path / "a")
    record_in_child(tmp_path / "b")
    done = diff(tmp_path / "a", tmp_path / "b")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "environment and call: the same" in done.stdout


def test_diff_names_the_aten_capability_and_the_noise_at_step_0(tmp_path: Path) -> None:
    record_in_child(tmp_path / "here", truth=True)
    record_in_child(tmp_path / "default", {"ATEN_CPU_CAPABILITY": "default"}, truth=True)
    done = diff(tmp_path / "here", tmp_path / "default")
    assert done.returncode == 1, done.stdout + done.stderr
    here = reprodiff_record.fingerprint()["cpu"]["capability"]
    assert f"ATen {here} -> default" in done.stdout
    assert "initial latents: differ" in done.stdout
    assert "the runs part at step 1" in done.stdout
    assert "known cause: ATen's CPU capability differs" in done.stdout
    # Other noise, other truths: each run's distance to its own, and no verdict between them.
    assert "float64 truth: final latent rmse" in done.stdout, done.stdout
    assert "no nearer side: the initial latents differ" in done.stdout, done.stdout


def test_diff_names_a_changed_argument_and_the_first_unet_step(tmp_path: Path) -> None:
    pipe = sd(DDIMScheduler)
    record(pipe, tmp_path / "a", **sd_call(guidance_scale=7.5))
    record(pipe, tmp_path / "b", **sd_call(guidance_scale=7.0))
    done = diff(tmp_path / "a", tmp_path / "b")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "guidance_scale 7.5 -> 7.0" in done.stdout
    assert "initial latents: identical" in done.stdout
    assert "the runs part at step 1" in done.stdout


def test_diff_says_which_run_is_nearer_its_truth_when_both_start_alike(tmp_path: Path) -> None:
    pipe = sd(DDIMScheduler)
    record(pipe, tmp_path / "a", truth=True, **sd_call(guidance_scale=7.5))
    record(pipe, tmp_path / "b", truth=True, **sd_call(guidance_scale=7.0))
    done = diff(tmp_path / "a", tmp_path / "b")
    assert done.returncode == 1, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("float64 truth:"))
    a, b = (
        float(v)
        for v in re.findall(r"final latent rmse ([0-9.e+-]+) and ([0-9.e+-]+)[,;]", line)[0]
    )
    assert 0 < a < 1e-4 and 0 < b < 1e-4, line
    nearer = f"{tmp_path / ('a' if a < b else 'b')} is nearer its own"
    assert nearer in line, line


# One SD call both ways: diffusers' keyword arguments and `reprodiff run sd`'s flags.
SD_OWN_CALL = dict(prompt="a cat", guidance_scale=7.5, num_images_per_prompt=1, height=32, width=32)
SD_OWN_ARGS = ["--prompt", "a cat", "--height", "32", "--width", "32"]

OWN_TRACE = {
    "ddim": (
        ddim,
        dict(batch_size=1, eta=0.0, use_clipped_model_output=False),
        ["ddim", "--model", str(MODELS / "tiny-ddim-a")],
    ),
    "sd-ddim-eta1": (
        lambda: sd(DDIMScheduler),
        dict(SD_OWN_CALL, eta=1.0),
        ["sd", "--model", str(MODELS / "tiny-sd-a"), "--scheduler", "ddim", "--eta", "1"]
        + SD_OWN_ARGS,
    ),
    "sd-pndm": (
        sd_b,
        dict(SD_OWN_CALL, eta=0.0),
        ["sd", "--model", str(MODELS / "tiny-sd-b")] + SD_OWN_ARGS,
    ),
}


@pytest.mark.parametrize("case", list(OWN_TRACE))
def test_the_recorders_steps_are_reprodiffs_own_trace_bit_for_bit(
    case: str, tmp_path: Path
) -> None:
    """Two implementations, one format: diffusers' pipeline recorded here and reprodiff's port
    run with `run ... --trace` make the same initial latent, every step's latent and the output
    bit for bit on one host, with the same weights, scheduler config and call."""
    make, kwargs, own_args = OWN_TRACE[case]
    call = dict(
        num_inference_steps=5,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    record(make(), tmp_path / "diffusers", **call)
    own = str(tmp_path / "reprodiff")
    reprodiff("run", *own_args, "--seed", "0", "--steps", "5", "--threads", "2", "--trace", own)
    done = diff(tmp_path / "diffusers", Path(own))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every common step identical" in done.stdout, done.stdout
    assert "weights differ" not in done.stdout, done.stdout
    assert "scheduler" not in done.stdout, done.stdout
    changes = done.stdout.splitlines()[0]
    for key in call:
        assert f"{key} " not in changes, changes


@pytest.mark.parametrize("damage", ["truncated-array", "unknown-schema", "missing-step"])
def test_a_bad_record_is_exit_2_naming_the_file(damage: str, tmp_path: Path) -> None:
    record(ddim(), tmp_path / "good", **ddim_call())
    record(ddim(), tmp_path / "bad", **ddim_call())
    run = read(tmp_path / "bad")
    if damage == "truncated-array":
        target = tmp_path / "bad" / run["steps"][1]["file"]
        target.write_bytes(target.read_bytes()[:-7])
        named = run["steps"][1]["file"]
    elif damage == "unknown-schema":
        run["version"] = 99
        (tmp_path / "bad" / "run.json").write_text(json.dumps(run))
        named = "run.json"
    else:
        del run["steps"][1]
        (tmp_path / "bad" / "run.json").write_text(json.dumps(run))
        named = "run.json"
    done = diff(tmp_path / "good", tmp_path / "bad")
    assert done.returncode == 2, done.stdout + done.stderr
    assert named in done.stderr, done.stderr
