#!/usr/bin/env python3
"""Golden fixtures for values that were published, not computed here: fixtures/golden/ddim-docs.json.

Each entry cites where its number was published. Published values come without bits, so the
entries carry no sha256 and their class is `any`; the suite checks them within tolerances. The
file is written as a schema-1 golden into a temporary directory and merged by
`reprodiff golden merge`, which owns the golden format. Regenerate with:

    ci/oracle/run.sh --published        (or: python3 ci/oracle/published.py)

Numbers (all for the real google/ddpm-cifar10-32 weights):
- diffusers docs, "Reproducible pipelines" (using-diffusers/reusing_seeds / reproducibility):
  DDIMPipeline, torch.Generator(device="cpu").manual_seed(0), num_inference_steps=2,
  output_type="np": print(np.abs(image).sum()) -> 1491.1711.
- diffusers tests/pipelines/ddim/test_ddim.py, DDIMPipelineIntegrationTests.test_inference_cifar10:
  DDIMScheduler(), torch.manual_seed(0), eta=0.0, 50 steps, output_type="np":
  image[0, -3:, -3:, -1] == [0.1723, 0.1617, 0.1600, 0.1626, 0.1497, 0.1513, 0.1505, 0.1442, 0.1453]
  (max abs difference < 1e-2).
- The same document: re-seeding the same generator gives "L_inf dist = 0" between two runs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from common import reprodiff

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "fixtures" / "golden"
SUITE = "ddim-docs"
DOCS = "diffusers docs, Reproducible pipelines (the seed document): DDIMPipeline on google/ddpm-cifar10-32"
SLOW_TEST = "diffusers tests/pipelines/ddim/test_ddim.py::DDIMPipelineIntegrationTests::test_inference_cifar10"
COMMAND = "ci/oracle/run.sh --published"

SLICE = [0.1723, 0.1617, 0.1600, 0.1626, 0.1497, 0.1513, 0.1505, 0.1442, 0.1453]


def provenance(tool: str) -> dict:
    return {"producer": "published", "tool": tool, "command": COMMAND, "environment": None}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        reprodiff(["golden", "merge", "--from", tmp, "--golden-dir", str(GOLDEN)])
    print(f"merged 3 published values into {GOLDEN / (SUITE + '.json')}")


def write(out: Path) -> None:
    """The published values as a schema-1 golden directory in `out`."""
    (out / SUITE).mkdir()
    slice_array = np.array(SLICE, dtype=np.float32).reshape(3, 3)
    array_rel = f"{SUITE}/global-seed0__50-steps__slice.published.npy"
    np.save(out / array_rel, slice_array)
    golden = {
        "schema": 1,
        "suite": SUITE,
        "generated": "Do not edit by hand. Regenerate with the command in each scenario's provenance.",
        "environments": {},
        "scenarios": {
            "cpu-generator-seed0/2-steps/sum-abs": {
                "shape": [1, 32, 32, 3], "dtype": "f32", "sha256": None,
                "metrics": {"sum_abs": 1491.1711}, "array": None,
                "provenance": provenance(DOCS),
            },
            "global-seed0/50-steps/slice": {
                "shape": [3, 3], "dtype": "f32", "sha256": None,
                "metrics": {}, "array": array_rel,
                "provenance": provenance(SLOW_TEST),
            },
            "cpu-generator-seed0/2-steps/rerun-difference": {
                "shape": [1, 32, 32, 3], "dtype": "f32", "sha256": None,
                "metrics": {"max_abs": 0.0}, "array": None,
                "provenance": provenance(DOCS + ' ("L_inf dist = tensor(0.)")'),
            },
        },
    }
    (out / f"{SUITE}.json").write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
