"""The write-or-check loop every fixture maker shares (make_models.py, make_tokenizers.py).

A maker owns what its folders hold (build), how a fresh one is judged (sanity) and its command
line; this module owns what is done with them. Each folder is built into a temporary directory
beside the final one (so the last step is a rename on the same file system), then either
compared with the committed folder byte for byte (--check: every file's sha256, nothing
written), or, unless the folder exists and --force is not given, checked by the maker's sanity
and put in place atomically with os.replace.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import REPO


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file in `folder`."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def build_all(names: list[str], root: Path, build: Callable[[str, Path], None],
              sanity: Callable[[str, Path], list[str]], force: bool, check: bool,
              prog: str) -> int:
    """Builds each of `names` as root/NAME, or with `check` compares it; the exit code.

    build(name, out) writes the new folder `out`; sanity(name, folder) returns its problems,
    any of which stops the run (exit 1) before that folder is replaced. `prog` prefixes the
    error messages ("make_models"). With `check`, every folder is compared and the run fails
    (exit 1) if any is missing or differs.
    """
    failed = False
    for name in names:
        final = root / name
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.") as tmp:
            fresh = Path(tmp) / name
            build(name, fresh)
            if check:
                if not final.is_dir():
                    print(f"  {name}: not committed ({final.relative_to(REPO)} is missing)")
                    failed = True
                    continue
                want, got = files_of(final), files_of(fresh)
                if want == got:
                    print(f"  {name}: rebuilt byte for byte ({len(got)} files)")
                else:
                    changed = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
                    print(f"  {name}: DIFFERS from the committed folder: {changed}")
                    failed = True
                continue
            if final.exists() and not force:
                print(f"  {name}: {final.relative_to(REPO)} exists; left as it is (--force)")
                continue
            problems = sanity(name, fresh)
            if problems:
                print(f"{prog}: error: {name}: " + "; ".join(problems), file=sys.stderr)
                return 1
            if final.exists():
                shutil.rmtree(final)
            os.replace(fresh, final)
            print(f"  {name}: wrote {final.relative_to(REPO)}: " + json.dumps(
                {k: v[:12] for k, v in files_of(final).items()}))
    return 1 if failed else 0
