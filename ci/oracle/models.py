"""Where a DDIM or SD scenario's model is, offline, and how it reads in provenance.

`run.model` is resolved by reprodiff itself (`reprodiff resolve-model SPEC --models DIR`, the
rule of src/loading.rs), so that both sides load the same files: "derived:ARCH" (the folder
reprodiff keeps in its cache, derived once per derivation version), "hub:ORG/NAME" or a plain
"ORG/NAME" (the local Hugging Face cache only: neither side ever downloads), a folder path, or a
bare name under the suite's fixtures/models/ (written by ci/oracle/make_models.py). Provenance
names the weights by their SHA-256 (the UNet's; for a Stable Diffusion folder also the text
encoder's and the VAE's).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from common import REPO, OracleError, Skip, reprodiff, shown

UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
# A Stable Diffusion folder's other weights, named in its description beside the UNet's.
SD_WEIGHTS = {"text_encoder": Path("text_encoder") / "model.safetensors",
              "vae": Path("vae") / "diffusion_pytorch_model.safetensors"}


@dataclass(frozen=True)
class Model:
    """A resolved run.model: the pipeline folder and how it reads in provenance."""

    folder: Path
    description: str


@functools.cache
def resolve_model(spec: str, models_dir: Path) -> Model:
    """The pipeline folder of run.model, as reprodiff resolves it. Skip for a model this host
    does not have (a hub model not in the local cache); SuiteError for a spec reprodiff refuses
    (no such folder, a folder without safetensors)."""
    line = json.loads(reprodiff(["resolve-model", spec, "--models", str(models_dir)],
                                capture=True))
    if "unavailable" in line:
        raise Skip(f"model {spec}: {line['unavailable']}; the oracle never downloads")
    folder = Path(line["folder"])
    folder = folder if folder.is_absolute() else REPO / folder
    weights = folder / UNET_WEIGHTS
    if not weights.is_file():
        raise OracleError(f"model {spec}: {weights} does not exist")
    source = {
        "derived": f"{spec} (reprodiff derive-weights, cached as {folder.name})",
        "hub": f"hub:{spec.removeprefix('hub:')} revision {folder.name}",
    }.get(line["kind"], shown(folder))
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
