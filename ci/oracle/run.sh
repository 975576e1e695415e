#!/usr/bin/env bash
# Regenerates golden fixtures (fixtures/golden/) with real PyTorch: the Python oracle.
#
#   ci/oracle/run.sh [--suite NAME]... [--filter REGEX] [--out DIR] [--no-merge] [--golden-dir DIR]
#   ci/oracle/run.sh --self-check
#   ci/oracle/run.sh --torch VERSION --out DIR [--suite NAME]... [--filter REGEX]
#   ci/oracle/run.sh --torch VERSION --self-check
#   ci/oracle/run.sh --diffusers VERSION --out DIR [--suite NAME]... [--filter REGEX]
#   ci/oracle/run.sh --diffusers VERSION [--torch VERSION] --self-check
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
# --torch VERSION (anywhere among the options) runs the same oracle scripts, unchanged, on another
# torch release from PyPI, to see how results drift across versions: in a venv of its own,
# $REPRODIFF_CACHE/oracle-torch-VERSION, created on first use (python3 -m venv; torch's CUDA
# wheels make it several GB) and given ci/oracle/requirements.txt with its torch pin replaced by
# torch==VERSION, every other pin kept (again only when that list changes). The goldens stay the
# pinned torch's (ci/install-libtorch.sh, requirements.txt): --torch implies --no-merge, needs
# --out and refuses --golden-dir and the fixture-writing modes (--make-models, --published,
# --make-tokenizers, --tokenizer-ids). `reprodiff` itself still runs on the pinned libtorch.
# No other pin needed relaxing for 2.11.0 or 2.12.1 (`pip check` clean; fixtures/records/
# diffusers-torch-*/README.md); a pin some VERSION cannot take is to be relaxed where the venv's
# requirements are derived below, for that VERSION only, and named here.
#
# --diffusers VERSION does the same for diffusers' releases (drift across diffusers releases, the
# most common cause of "my seed changed"): requirements.txt with its diffusers pin replaced by
# diffusers==VERSION, every other pin kept (torch 2.13.0 included), in
# $REPRODIFF_CACHE/oracle-diffusers-VERSION; with --torch as well, oracle-torch-T-diffusers-D.
# Its rules are --torch's (implies --no-merge, needs --out). The oracle scripts are unchanged: a
# release that lacks something they call fails loudly, never silently. Every pin held for 0.35.2;
# 0.36.0 to 0.41.x take huggingface-hub 1.33.0 instead of 2.4.0 (below), every other pin kept
# (`pip check` clean; fixtures/records/diffusers-*/README.md).
#
#   REPRODIFF_CACHE   cache root shared with ci/install-libtorch.sh
#                     (default: ${XDG_CACHE_HOME:-$HOME/.cache}/reprodiff); derived models
#                     (run.model = "derived:ARCH") are kept under its derived/
#   REPRODIFF_BIN     the reprodiff binary (default target/debug/reprodiff): it expands the
#                     suites (list --json), gives the fingerprint (env --json), resolves the
#                     model folders (resolve-model, deriving weights) and merges the results
#                     (golden merge)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

usage_error() {
  echo "oracle: $*" >&2
  exit 2
}

# --torch VERSION and --diffusers VERSION are taken out of the options wherever they are (not as
# the value of another option); what is left goes to the script.
torch_version=""
diffusers_version=""
has_out=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --torch)
      [ $# -ge 2 ] || usage_error "--torch needs a VERSION"
      torch_version="$2"
      shift 2
      continue
      ;;
    --torch=*) torch_version="${1#--torch=}"; shift; continue ;;
    --diffusers)
      [ $# -ge 2 ] || usage_error "--diffusers needs a VERSION"
      diffusers_version="$2"
      shift 2
      continue
      ;;
    --diffusers=*) diffusers_version="${1#--diffusers=}"; shift; continue ;;
    --out=*) has_out=1 ;;
    --out) has_out=1; args+=("$1"); shift; [ $# -gt 0 ] || break ;;
    --suite|--filter|--golden-dir) args+=("$1"); shift; [ $# -gt 0 ] || break ;;
  esac
  args+=("$1")
  shift
done
set -- "${args[@]+"${args[@]}"}"

# Same location as ci/install-libtorch.sh; its last stdout line is torch's directory. The
# reprodiff binary runs on that libtorch whatever --torch says, so it is installed either way.
cache="${REPRODIFF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reprodiff}"
torch_dir="$(bash ci/install-libtorch.sh | tail -n 1)"
if [ ! -d "$torch_dir" ]; then
  echo "oracle: ci/install-libtorch.sh reported torch at '$torch_dir', not a directory" >&2
  exit 1
fi

requirements=ci/oracle/requirements.txt
if [ -z "$torch_version$diffusers_version" ]; then
  venv="$cache/torch-2.13.0"
  python="$venv/bin/python"
  if [ ! -x "$python" ]; then
    echo "oracle: no Python at $python (torch reported at '$torch_dir')" >&2
    exit 1
  fi
else
  label="oracle"
  if [ -n "$torch_version" ]; then
    [[ "$torch_version" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]] \
      || usage_error "--torch $torch_version: expected a release such as 2.12.1"
    label="$label-torch-$torch_version"
  fi
  if [ -n "$diffusers_version" ]; then
    [[ "$diffusers_version" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]] \
      || usage_error "--diffusers $diffusers_version: expected a release such as 0.35.2"
    label="$label-diffusers-$diffusers_version"
  fi
  other="--torch/--diffusers"  # named in the messages below
  for a in "$@"; do
    case "$a" in
      --make-models|--published|--make-tokenizers|--tokenizer-ids)
        usage_error "$other runs goldens.py only (not $a): fixtures come from the pinned releases" ;;
      --golden-dir|--golden-dir=*)
        usage_error "$other never merges into goldens, so --golden-dir has no use" ;;
      --self-check) has_out=1 ;;  # writes nothing
    esac
  done
  [ -n "$has_out" ] || usage_error "$other needs --out DIR (it never merges)"
  set -- "$@" --no-merge

  venv="$cache/$label"
  python="$venv/bin/python"
  if [ ! -f "$venv/.reprodiff-complete" ]; then
    echo "oracle: creating $venv" >&2
    mkdir -p "$cache"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
    touch "$venv/.reprodiff-complete"
  fi
  # requirements.txt with its torch and diffusers pins replaced as asked (pins a VERSION cannot
  # take relaxed here), kept in the venv so that what was installed can be read there.
  derived="$venv/reprodiff-oracle-requirements.txt"
  for pin in torch diffusers; do
    grep -qE "^$pin==" "$requirements" || { echo "oracle: no $pin== pin in $requirements" >&2; exit 1; }
  done
  # diffusers 0.36.0 to 0.41.x require huggingface-hub < 2.0 (0.35.2 and 0.42 do not):
  # huggingface-hub 1.33.0 for them, the newest 1.x, which transformers 5.24.0 takes (>= 1.31).
  relax=()
  case "$diffusers_version" in
    0.36.*|0.37.*|0.38.*|0.39.*|0.40.*|0.41.*)
      relax=(-e "s/^huggingface-hub==.*/huggingface-hub==1.33.0/") ;;
  esac
  sed -E ${torch_version:+-e "s/^torch==.*/torch==$torch_version/"} \
    ${diffusers_version:+-e "s/^diffusers==.*/diffusers==$diffusers_version/"} \
    "${relax[@]+"${relax[@]}"}" "$requirements" > "$derived.tmp"
  mv "$derived.tmp" "$derived"
  requirements="$derived"
fi

stamp="$venv/.reprodiff-oracle-requirements"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "oracle: installing $requirements into $venv" >&2
  "$python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
  if [ -n "$torch_version$diffusers_version" ]; then
    "$python" -m pip check >&2
    "$python" - "${torch_version:-2.13.0}" "${diffusers_version:-}" <<'PY'
import sys, torch
assert torch.__version__.split("+")[0] == sys.argv[1], (torch.__version__, sys.argv[1])
if sys.argv[2]:
    import diffusers
    assert diffusers.__version__ == sys.argv[2], (diffusers.__version__, sys.argv[2])
PY
  fi
  echo "$want" > "$stamp"
fi

export HF_HUB_OFFLINE=1
export PYTHONDONTWRITEBYTECODE=1
# The oracle records steps through python/reprodiff-record (reprodiff_record.steps), from this
# checkout: the one way reprodiff records a run, and never a stale installed copy.
export PYTHONPATH="$root/python/reprodiff-record/src${PYTHONPATH:+:$PYTHONPATH}"
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
