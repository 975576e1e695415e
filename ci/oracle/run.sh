#!/usr/bin/env bash
# Regenerates golden fixtures (fixtures/golden/) with real PyTorch: the Python oracle.
#
#   ci/oracle/run.sh [--suite NAME]... [--filter REGEX] [--out DIR] [--no-merge] [--golden-dir DIR]
#   ci/oracle/run.sh --self-check
#   ci/oracle/run.sh --make-models [--force] [--check] [NAME]...
#   ci/oracle/run.sh --published     # ci/oracle/published.py: fixtures/golden/ddim-docs.json
#   ci/oracle/run.sh --make-tokenizers [--force] [--check] [NAME]...
#                                    # ci/oracle/make_tokenizers.py: fixtures/tokenizers/NAME/
#   ci/oracle/run.sh --tokenizer-ids # ci/oracle/tokenizer_ids.py: fixtures/golden/tokenizer-ids.json
#
# Installs (once) libtorch's torch venv through ci/install-libtorch.sh, adds the oracle's pinned
# requirements to it (again only when ci/oracle/requirements.txt changes), then runs
# ci/oracle/goldens.py from the repository root with the Hugging Face Hub offline, or with
# --make-models ci/oracle/make_models.py (the tiny models under fixtures/models/). goldens.py
# writes a results directory (--out, default a fresh temporary one) and, unless --no-merge,
# runs `reprodiff golden merge --from DIR [--golden-dir DIR]`, which writes the goldens.
#
#   REPRODIFF_CACHE   cache root shared with ci/install-libtorch.sh
#                     (default: ${XDG_CACHE_HOME:-$HOME/.cache}/reprodiff); derived models
#                     (run.model = "derived:ARCH") are kept under its derived/
#   REPRODIFF_BIN     the reprodiff binary (default target/debug/reprodiff): it expands the
#                     suites (list --json), gives the fingerprint (env --json), merges the
#                     results (golden merge) and derives weights
#   REPRODIFF_DERIVED_DIR  take derived:ARCH from DIR/ARCH as it is (testing only)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

# Same location as ci/install-libtorch.sh; its last stdout line is torch's directory.
cache="${REPRODIFF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reprodiff}"
venv="$cache/torch-2.13.0"
torch_dir="$(bash ci/install-libtorch.sh | tail -n 1)"
python="$venv/bin/python"
if [ ! -x "$python" ] || [ ! -d "$torch_dir" ]; then
  echo "oracle: no Python at $python (torch reported at '$torch_dir')" >&2
  exit 1
fi

requirements=ci/oracle/requirements.txt
stamp="$venv/.reprodiff-oracle-requirements"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "oracle: installing $requirements into $venv" >&2
  "$python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
  echo "$want" > "$stamp"
fi

export HF_HUB_OFFLINE=1
export PYTHONDONTWRITEBYTECODE=1
if [ "${1:-}" = "--make-models" ]; then
  shift
  exec "$python" ci/oracle/make_models.py "$@"
fi
if [ "${1:-}" = "--published" ]; then
  shift
  exec "$python" ci/oracle/published.py "$@"
fi
if [ "${1:-}" = "--make-tokenizers" ]; then
  shift
  exec "$python" ci/oracle/make_tokenizers.py "$@"
fi
if [ "${1:-}" = "--tokenizer-ids" ]; then
  shift
  exec "$python" ci/oracle/tokenizer_ids.py "$@"
fi
exec "$python" ci/oracle/goldens.py "$@"
