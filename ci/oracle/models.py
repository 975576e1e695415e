"""Where a DDIM or SD scenario's model is, offline, and how it reads in provenance.

`run.model` resolves as src/loading.rs resolves it, so that both sides load the same files:
"derived:ARCH" (weights `reprodiff derive-weights --arch ARCH` writes; see derived_model),
"hub:ORG/NAME" (the local Hugging Face cache only: the oracle never downloads), a folder path,
a bare name under the suite's fixtures/models/ (written by ci/oracle/make_models.py), or a
plain "ORG/NAME" hub id. Provenance names the weights by their SHA-256 (the UNet's; for a
Stable Diffusion folder also the text encoder's and the VAE's).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import REPO, TOOL, OracleError, Skip, reprodiff_bin, shown

UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
# A Stable Diffusion folder's other weights, named in its description beside the UNet's.
SD_WEIGHTS = {"text_encoder": Path("text_encoder") / "model.safetensors",
              "vae": Path("vae") / "diffusion_pytorch_model.safetensors"}
DERIVED_STAMP = ".reprodiff-oracle-stamp.json"


@dataclass(frozen=True)
class Model:
    """A resolved run.model: the pipeline folder and how it reads in provenance."""

    folder: Path
    description: str


@functools.cache
def resolve_model(spec: str, models_dir: Path) -> Model:
    """The pipeline folder of run.model. Skip for a hub model not in the cache; OracleError
    when a derived model cannot be made or a local folder has no safetensors."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "derived":
        folder, source = derived_model(rest)
    elif sep and kind == "hub":
        folder, source = hub_model(rest)
    elif (REPO / spec).is_dir():
        folder, source = REPO / spec, shown(REPO / spec)
    elif (models_dir / spec).is_dir():
        folder, source = models_dir / spec, shown(models_dir / spec)
    elif spec.count("/") == 1 and not spec.startswith((".", "/")):
        folder, source = hub_model(spec)
    else:
        raise OracleError(f"model {spec}: no such folder (nor {shown(models_dir / spec)}); "
                          "ci/oracle/run.sh --make-models writes the tiny ones")
    weights = folder / UNET_WEIGHTS
    if not weights.is_file():
        raise OracleError(f"model {spec}: {weights} does not exist")
    hashes = f"unet safetensors sha256 {sha256_file(weights)[:12]}"
    for name, path in SD_WEIGHTS.items():
        if (folder / path).is_file():
            hashes += f", {name} {sha256_file(folder / path)[:12]}"
    return Model(folder, f"{source} ({hashes})")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hub_model(repo_id: str) -> tuple[Path, str]:
    """The snapshot folder of a hub model in the local cache, never downloading."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        raise Skip(f"model hub:{repo_id} not found in the local Hugging Face cache "
                   f"({constants.HF_HUB_CACHE}); the oracle never downloads") from None
    if not (folder / UNET_WEIGHTS).is_file():
        raise Skip(f"model hub:{repo_id}: the cached snapshot {folder} has no {UNET_WEIGHTS} "
                   "(only safetensors are read)")
    return folder, f"hub:{repo_id} revision {folder.name}"


def reprodiff_cache() -> Path:
    """The cache root ci/oracle/run.sh and ci/install-libtorch.sh use."""
    if os.environ.get("REPRODIFF_CACHE"):
        return Path(os.environ["REPRODIFF_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "reprodiff"


def derived_model(arch: str) -> tuple[Path, str]:
    """`reprodiff derive-weights --arch ARCH`'s pipeline folder, made once and kept.

    Kept in <cache>/derived/ARCH with a stamp naming the binary's sha256; the binary is run
    again when it changed (a rebuild), and the folder replaced atomically. With the binary
    missing, a stamped folder is used as it is. REPRODIFF_DERIVED_DIR=DIR takes DIR/ARCH as
    it is instead, for testing (provenance then says so).
    """
    override = os.environ.get("REPRODIFF_DERIVED_DIR")
    if override:
        folder = Path(override) / arch
        if not folder.is_dir():
            raise OracleError(f"derived:{arch}: REPRODIFF_DERIVED_DIR is set but {folder} "
                              "does not exist")
        return folder, f"derived:{arch} from REPRODIFF_DERIVED_DIR {folder}, not reprodiff"

    binary = reprodiff_bin()
    folder = reprodiff_cache() / "derived" / arch
    stamp_path = folder / DERIVED_STAMP
    stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
    made_by = f"{shown(binary)} derive-weights --arch {arch}"
    if not binary.is_file():
        if stamp is None:
            raise OracleError(
                f"derived:{arch} needs `{made_by}`, and {binary} does not exist: build it "
                "(ci/cargo build) or point REPRODIFF_BIN at a reprodiff binary")
        print(f"  warning: {binary} is missing; using derived:{arch} as made earlier by "
              f"{stamp.get('reprodiff_bin')} (sha256 {stamp.get('reprodiff_sha256', '?')[:12]})",
              file=sys.stderr)
        return folder, f"derived:{arch} ({made_by}, a binary no longer there)"
    binary_sha = sha256_file(binary)
    if stamp is None or stamp.get("reprodiff_sha256") != binary_sha:
        derive(arch, binary, binary_sha, stamp)
    return folder, f"derived:{arch} ({made_by})"


def derive(arch: str, binary: Path, binary_sha: str, old_stamp: dict | None) -> None:
    """Runs derive-weights into a temporary folder, stamps it and renames it into place."""
    root = reprodiff_cache() / "derived"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{arch}."))
    try:
        out = tmp / arch
        command = [str(binary), "derive-weights", "--arch", arch, "--out", str(out)]
        print(f"  deriving weights: {shlex.join(command)}", flush=True)
        done = subprocess.run(command)
        if done.returncode != 0:
            raise OracleError(f"derived:{arch}: `{shlex.join(command)}` exited with "
                              f"{done.returncode}")
        weights = out / UNET_WEIGHTS
        if not weights.is_file():
            raise OracleError(f"derived:{arch}: `{shlex.join(command)}` wrote no {UNET_WEIGHTS}")
        unet_sha = sha256_file(weights)
        if old_stamp is not None and old_stamp.get("unet_sha256") != unet_sha:
            print(f"  warning: derived:{arch} changed with the new {binary.name} (unet sha256 "
                  f"{old_stamp.get('unet_sha256', '?')[:12]} -> {unet_sha[:12]}): results "
                  "made from the old weights are stale", file=sys.stderr)
        (out / DERIVED_STAMP).write_text(json.dumps({
            "arch": arch,
            "command": shlex.join(command),
            "reprodiff_bin": str(binary),
            "reprodiff_sha256": binary_sha,
            "unet_sha256": unet_sha,
            "written_by": TOOL,
        }, indent=1) + "\n")
        folder = root / arch
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(out, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
