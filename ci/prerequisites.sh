#!/usr/bin/env bash
# Checks what building and testing reprodiff needs, before any work starts, and names what is
# missing and how to get it. ci/cargo runs it first, every time (it takes well under a second
# once libtorch is installed), so a machine that lacks something fails in its first seconds,
# even where target/ is already built.
#
#   ci/prerequisites.sh [CARGO SUBCOMMAND]
#
# Needs, all of them: Linux with glibc; a C compiler (the oniguruma regex library of the
# tokenizer) and a C++20 compiler (the torch extension, build.rs), found as $CC / $CXX or cc /
# c++; for the first install of libtorch, python3 with venv (Debian's python3-venv) and about
# 10 GB free in the cache (4.7 GB of torch, 4 GB of derived Stable Diffusion weights); at least
# 6 GiB of memory (deriving the full SD 1.5 weights peaks at 5.3 GB); rustfmt and clippy for
# `ci/cargo fmt` / `clippy` (what .ci/run calls).
set -euo pipefail

missing=()
need() { missing+=("$1"); }

# ldd's output is read whole first: `ldd | grep -q` under pipefail fails whenever grep exits
# before ldd has written everything (SIGPIPE), which a busy machine makes happen.
libc_says="$(ldd --version 2>&1 || true)"
if [ "$(uname -s)" != Linux ] || ! grep -qiE 'glibc|gnu libc' <<<"$libc_says"; then
  need "Linux with glibc: libtorch's PyPI wheel is built for it (found $(uname -s); \`ldd --version\` says: ${libc_says%%$'\n'*})"
fi

# The compilers cc-rs uses: $CC / $CXX where set, else cc / c++.
cc_bin="${CC:-cc}"
cxx_bin="${CXX:-c++}"
if ! command -v "$cc_bin" >/dev/null 2>&1; then
  need "a C compiler: '$cc_bin' (\$CC or cc) is not on PATH; install gcc (apt-get install gcc)"
fi
if ! command -v "$cxx_bin" >/dev/null 2>&1; then
  need "a C++20 compiler: '$cxx_bin' (\$CXX or c++) is not on PATH; install g++ >= 10 (apt-get install g++)"
elif ! echo 'int main() { return 0; }' | "$cxx_bin" -std=c++20 -x c++ -fsyntax-only - >/dev/null 2>&1; then
  need "a C++20 compiler: '$cxx_bin' does not accept -std=c++20; install g++ >= 10"
fi

cache="${REPRODIFF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/reprodiff}"
if [ ! -f "$cache/torch-2.13.0/.reprodiff-complete" ]; then
  if ! command -v python3 >/dev/null 2>&1; then
    need "python3 (>= 3.10): libtorch is installed from the PyPI wheel torch==2.13.0"
  elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "reprodiff: python3 has no venv/ensurepip; installing python3-venv" >&2
      apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
    else
      need "python3's venv module with ensurepip (Debian/Ubuntu: apt-get install python3-venv)"
    fi
  fi
  mkdir -p "$cache"
  free_kb=$(df -Pk "$cache" | awk 'NR == 2 { print $4 }')
  if [ "${free_kb:-0}" -lt $((10 * 1024 * 1024)) ]; then
    need "about 10 GB free in $cache for libtorch (4.7 GB) and the derived weights (4 GB); $((free_kb / 1024 / 1024)) GB free (REPRODIFF_CACHE moves it)"
  fi
fi

mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo 2>/dev/null || echo 0)
if [ "${mem_kb:-0}" -lt $((6 * 1024 * 1024 - 512 * 1024)) ]; then
  need "6 GiB of memory: deriving and running the full Stable Diffusion 1.5 architecture peaks at 5.3 GB; this machine has $((mem_kb / 1024 / 1024)) GiB"
fi

case "${1:-}" in
  fmt)
    cargo fmt --version >/dev/null 2>&1 || need "rustfmt: rustup component add rustfmt" ;;
  clippy)
    cargo clippy --version >/dev/null 2>&1 || need "clippy: rustup component add clippy" ;;
  nextest)
    # The HTML drift report is tested in a real headless browser: Debian's chromium.
    if ! command -v chromium >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "reprodiff: installing chromium for the HTML report test" >&2
        apt-get update -qq >&2 && apt-get install -y -qq chromium >&2
      else
        need "chromium (the HTML report's test renders it headless): apt-get install chromium"
      fi
    fi ;;
esac

if [ ${#missing[@]} -gt 0 ]; then
  echo "reprodiff: this machine lacks what the build needs:" >&2
  for m in "${missing[@]}"; do
    echo "  - $m" >&2
  done
  exit 1
fi
