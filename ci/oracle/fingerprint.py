"""The environment fingerprint of an oracle result: reprodiff's, with the oracle's own parts.

Goldens are keyed by environment class (src/env/class.rs), which reprodiff derives from the
fingerprint's CPU part: vendor, ISA flags, the kernel-selection environment variables. Were
that part computed here too, the two sides could drift and put the oracle's results in a class
no reprodiff run ever has. So the oracle runs `reprodiff env --json` once per process (with
this process's environment, ATEN_CPU_CAPABILITY included in a capability child) and replaces
only what Python knows better: the producer, the versions of what computed, the capability
and thread count torch actually used, and the determinism switches in force.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
import platform
from typing import Any

import torch

import determinism
from common import reprodiff

# The fingerprint's schema (src/env/mod.rs Fingerprint); `env --json` also prints the class,
# which reprodiff recomputes when it merges, and may print more.
FINGERPRINT_KEYS = ("schema", "producer", "versions", "os", "cpu", "cuda", "determinism")


@functools.cache
def reprodiff_environment() -> dict[str, Any]:
    """`reprodiff env --json`, restricted to the fingerprint's keys."""
    printed = json.loads(reprodiff(["env", "--json"], capture=True))
    return {k: v for k, v in printed.items() if k in FINGERPRINT_KEYS}


def environment_fingerprint() -> dict[str, Any]:
    """The fingerprint of a result computed now, in this process."""
    fp = copy.deepcopy(reprodiff_environment())
    fp["producer"] = "oracle"
    fp["versions"].update(
        reprodiff=None,
        tch=None,
        libtorch=torch.__version__.split("+")[0],
        torch_build=torch.__version__,
        python=platform.python_version(),
        diffusers=package_version("diffusers"),
    )
    fp["cpu"].update(capability=determinism.cpu_capability(), threads=torch.get_num_threads())
    fp["determinism"] = determinism.in_force()
    return fp


def package_version(name: str) -> str | None:
    """The installed version of a distribution (without importing it), or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
