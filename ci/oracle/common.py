"""What every part of the oracle shares: the repository's place, the reprodiff binary and the
oracle's three ways of not producing a result.

reprodiff owns the suites (their expansion), the environment fingerprint's CPU part and the
golden format; the oracle asks the binary for all three instead of re-implementing them, so the
binary is found here once (REPRODIFF_BIN, default target/debug/reprodiff) and always run from
the repository root with the oracle's own environment.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_SH = "ci/oracle/run.sh"
TOOL = "ci/oracle/goldens.py"
MODELS_DIR = REPO / "fixtures" / "models"


class SuiteError(Exception):
    """Input the oracle refuses: a suite, filter or scenario it cannot read (exit 2)."""


class Skip(Exception):
    """A scenario that cannot give a result on this host (no CUDA, no model, unseeded)."""


class OracleError(Exception):
    """The oracle's own environment failed (no reprodiff binary, a run that does not repeat)."""


def shown(path: Path) -> str:
    """`path` relative to the repository root where it lies inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def reprodiff_bin() -> Path:
    """REPRODIFF_BIN, or target/debug/reprodiff; a relative path is taken from the root."""
    binary = Path(os.environ.get("REPRODIFF_BIN", "target/debug/reprodiff"))
    return binary if binary.is_absolute() else REPO / binary


def reprodiff(args: list[str], capture: bool = False) -> str:
    """Runs `reprodiff ARGS` from the repository root; returns its stdout when `capture`.

    reprodiff's exit code 2 means bad input (a suite or filter it refuses): SuiteError. Any
    other failure is the oracle's environment: OracleError.
    """
    binary = reprodiff_bin()
    command = [str(binary), *args]
    if not binary.is_file():
        raise OracleError(f"`{shlex.join(command)}` needs the reprodiff binary, and {binary} "
                          "does not exist: build it (ci/cargo build) or set REPRODIFF_BIN")
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE if capture else None,
                          text=True)
    if done.returncode == 2:
        raise SuiteError(f"`{shlex.join(command)}` refused its input (exit 2)")
    if done.returncode != 0:
        raise OracleError(f"`{shlex.join(command)}` exited with {done.returncode}")
    return done.stdout if capture else ""
