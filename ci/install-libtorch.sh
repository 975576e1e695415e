#!/usr/bin/env bash
# Installs libtorch 2.13.0 from the pinned PyPI wheel torch==2.13.0 into a cache OUTSIDE the
# clone, so that every clone on this machine shares one 4.7 GB install.
#
#   REPRODIFF_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/reprodiff)
#
# Prints nothing but progress on stderr; the last line on stdout is the libtorch directory
# (site-packages/torch), which the build reads through .cargo/config.toml's LIBTORCH.
set -euo pipefail

TORCH_VERSION=2.13.0
cache="${REPRODIFF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reprodiff}"
venv="$cache/torch-$TORCH_VERSION"
stamp="$venv/.reprodiff-complete"

# pip keeps no cache in the user's home (the wheel is 900 MB; the install is what is kept).
export PIP_NO_CACHE_DIR=1

# Two first runs at once (two clones, one cache) take turns: the second waits on the lock and
# then finds the stamp; no run removes a venv another is installing.
mkdir -p "$cache"
exec 9>"$cache/torch-$TORCH_VERSION.lock"
flock 9

if [ ! -f "$stamp" ]; then
  echo "reprodiff: installing torch==$TORCH_VERSION into $venv (about 4.7 GB, once per machine)" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >&2; then
    # Debian/Ubuntu's python3 ships venv separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "reprodiff: python3 -m venv failed; installing python3-venv" >&2
      apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
      rm -rf "$venv"
      python3 -m venv "$venv" >&2
    else
      echo "reprodiff: 'python3 -m venv' failed: install your distribution's python3-venv" >&2
      exit 1
    fi
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==$TORCH_VERSION" "numpy<3" >&2
  touch "$stamp"
fi

"$venv/bin/python" - <<'PY'
import os, torch
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
print(os.path.dirname(torch.__file__))
PY
