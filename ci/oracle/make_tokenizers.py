#!/usr/bin/env python3
"""CLIP's BPE tokenizer as fixtures/tokenizers/<name>/, made offline from open_clip's merge file.

This script is their provenance. Stable Diffusion 1.x's tokenizer (the tokenizer/ folder of
runwayml/stable-diffusion-v1-5, a copy of openai/clip-vit-large-patch14's) is OpenAI CLIP's
byte-level BPE. Its one input is CLIP's merge list, bpe_simple_vocab_16e6.txt.gz, which the MIT
licensed PyPI package open_clip_torch ships as open_clip/bpe_simple_vocab_16e6.txt.gz:

- open_clip_torch==3.3.0, wheel open_clip_torch-3.3.0-py3-none-any.whl,
  sha256 c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce;
- the file in it, sha256 924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a
  (OpenAI CLIP's merge list, also shipped by openai/CLIP as clip/bpe_simple_vocab_16e6.txt.gz;
  262145 lines once decompressed, the first the header "bpe_simple_vocab_16e6.txt#version: 0.2").

The wheel is fetched with ``pip download open_clip_torch==3.3.0 --no-deps --only-binary :all:``
(open_clip is not installed), both hashes are checked, and the extracted file is kept under
$REPRODIFF_CACHE/open_clip_torch-3.3.0/ (or given with --bpe FILE). The vocabulary is derived
exactly as CLIP's SimpleTokenizer (and transformers' CLIPTokenizer) derive it:

    merges = lines[1 : 49152 - 256 - 2 + 1]              (48894 merges)
    vocab  = the 256 byte-level characters, in bytes_to_unicode() order
           + the same 256 with "</w>" appended
           + each merge pair joined ("i" "n" -> "in")
           + ["<|startoftext|>", "<|endoftext|>"]           (ids 49406, 49407; 49408 in all)

The folders are in the SD 1.5 tokenizer/ layout: vocab.json as the hub's (one line, keys
sorted, not ASCII-escaped, no final newline), merges.txt with the "#version: 0.2" header line,
tokenizer_config.json and special_tokens_map.json with SD 1.5's options (CLIPTokenizer,
model_max_length 77, do_lower_case, errors "replace", bos <|startoftext|>, eos/unk/pad
<|endoftext|>). The full vocab.json was compared with a copy of SD 1.5's tokenizer/vocab.json:
the same length (951508 characters) and the same text at every offset compared. Folders:

- ``clip-vit-large-patch14``: the full tokenizer (49408 ids). Checked with transformers:
  CLIPTokenizer.from_pretrained encodes "a photo of a cat" as
  [49406, 320, 1125, 539, 320, 2368, 49407].
- ``tiny-clip-1000``: the same construction with only the first 486 merges, a vocabulary of
  1000 = 512 + 486 + 2 (<|startoftext|> 998, <|endoftext|> 999), for the tiny text encoders
  (vocab_size 1000) of the tiny SD models, which ci/oracle/make_models.py builds from it.

Usage (ci/oracle/run.sh runs it in the oracle's venv)::

    ci/oracle/run.sh --make-tokenizers [--force] [--check] [--bpe FILE] [NAME]...

Without NAME, every folder. An existing folder is left alone unless --force; --check rebuilds
each folder in a temporary directory and fails unless every file is byte-identical to the
committed one. The output depends on nothing but the pinned file, so reruns are byte-identical.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fixture_builder import build_all, sha256

REPO = Path(__file__).resolve().parents[2]
TOKENIZERS_DIR = REPO / "fixtures" / "tokenizers"

OPEN_CLIP_VERSION = "3.3.0"
WHEEL = f"open_clip_torch-{OPEN_CLIP_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
FULL_MERGES = 49152 - 256 - 2  # CLIP's SimpleTokenizer: merges[1 : 49152 - 256 - 2 + 1]
MODEL_MAX_LENGTH = 77

# name -> number of merges kept (vocabulary size = 512 + merges + 2).
TOKENIZERS: dict[str, int] = {"clip-vit-large-patch14": FULL_MERGES, "tiny-clip-1000": 486}

# transformers' CLIPTokenizer on the full vocabulary (the SD 1.5 / CLIP model card example).
CAT = ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407])


def cache_dir() -> Path:
    """The same cache root as ci/install-libtorch.sh and ci/oracle/run.sh."""
    root = os.environ.get("REPRODIFF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "reprodiff")
    return Path(root) / f"open_clip_torch-{OPEN_CLIP_VERSION}"


def bpe_file(given: Path | None) -> Path:
    """The pinned bpe_simple_vocab_16e6.txt.gz: `given`, the cached copy or a fresh download."""
    if given is not None:
        if sha256(given) != BPE_SHA256:
            raise SystemExit(f"make_tokenizers: error: {given} is not sha256 {BPE_SHA256}")
        return given
    cached = cache_dir() / Path(BPE_MEMBER).name
    if cached.is_file() and sha256(cached) == BPE_SHA256:
        return cached
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q",
                        "--disable-pip-version-check", f"open_clip_torch=={OPEN_CLIP_VERSION}",
                        "--no-deps", "--only-binary", ":all:", "-d", tmp],
                       check=True, stdout=sys.stderr)
        wheel = Path(tmp) / WHEEL
        if sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"make_tokenizers: error: {WHEEL} is not sha256 {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(BPE_MEMBER)
    if hashlib.sha256(data).hexdigest() != BPE_SHA256:
        raise SystemExit(f"make_tokenizers: error: {BPE_MEMBER} is not sha256 {BPE_SHA256}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    part = cached.with_suffix(".part")
    part.write_bytes(data)
    os.replace(part, cached)
    return cached


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) byte -> printable character table, in its construction order."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def read_merges(bpe: Path) -> list[tuple[str, str]]:
    """All of CLIP's merges (the header line dropped), as SimpleTokenizer reads them."""
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : FULL_MERGES + 1]]
    if len(merges) != FULL_MERGES or any(len(m) != 2 for m in merges):
        raise SystemExit(f"make_tokenizers: error: {bpe} does not hold {FULL_MERGES} merge pairs")
    return merges


def vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id for the given (leading) merges, as CLIP derives it."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("make_tokenizers: error: duplicate tokens in the derived vocabulary")
    return vocab


def added_token(content: str) -> dict:
    """A special token as SD 1.5's tokenizer_config.json spells it."""
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": True, "__type": "AddedToken"}


def write_folder(out: Path, merges: list[tuple[str, str]], pad_token: str = EOS,
                 name_or_path: str = "openai/clip-vit-large-patch14") -> None:
    """Writes a CLIPTokenizer folder in the SD 1.5 tokenizer/ layout to the new folder `out`.

    pad_token "!" gives SD 2's configuration (stabilityai/stable-diffusion-2's tokenizer/).
    """
    out.mkdir(parents=True)
    vocab = vocabulary(merges)
    (out / "vocab.json").write_text(json.dumps(vocab, sort_keys=True, ensure_ascii=False),
                                    encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    config = {
        "errors": "replace",
        "unk_token": added_token(EOS),
        "bos_token": added_token(BOS),
        "eos_token": added_token(EOS),
        "pad_token": pad_token,
        "add_prefix_space": False,
        "do_lower_case": True,
        "model_max_length": MODEL_MAX_LENGTH,
        "name_or_path": name_or_path,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
    }
    special = {k: {k2: v2 for k2, v2 in added_token(c).items() if k2 != "__type"}
               for k, c in (("bos_token", BOS), ("eos_token", EOS), ("unk_token", EOS))}
    special["pad_token"] = pad_token
    special = {k: special[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (out / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    out.chmod(0o755)
    for p in out.rglob("*"):
        p.chmod(0o644)


def read_folder_merges(folder: Path) -> list[tuple[str, str]]:
    """The merges of a folder written by write_folder (for ci/oracle/make_models.py)."""
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    if lines[0] != "#version: 0.2" or lines[-1] != "":
        raise ValueError(f"{folder / 'merges.txt'} is not a merges file written by this script")
    return [tuple(line.split(" ")) for line in lines[1:-1]]


def build(name: str, out: Path, bpe: Path) -> None:
    """Writes tokenizer `name` to the new folder `out`."""
    write_folder(out, read_merges(bpe)[: TOKENIZERS[name]],
                 name_or_path=f"fixtures/tokenizers/{name}")


def sanity(name: str, folder: Path) -> list[str]:
    """Loads the folder with transformers' CLIPTokenizer; returns problems."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder)
    problems = []
    size = 512 + TOKENIZERS[name] + 2
    if len(tok) != size:
        problems.append(f"{len(tok)} ids, not {size}")
    got = tok(CAT[0]).input_ids
    want = CAT[1] if name == "clip-vit-large-patch14" else None
    if want is not None and got != want:
        problems.append(f"{CAT[0]!r} -> {got}, not {want}")
    if (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) != (size - 2, size - 1, size - 1):
        problems.append(f"bos/eos/pad ids {tok.bos_token_id}/{tok.eos_token_id}/{tok.pad_token_id}")
    if tok.model_max_length != MODEL_MAX_LENGTH:
        problems.append(f"model_max_length {tok.model_max_length}")
    print(f"  {name}: {len(tok)} ids; {CAT[0]!r} -> {got}")
    return problems


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ci/oracle/run.sh --make-tokenizers",
                                description="Writes the tokenizers under fixtures/tokenizers/.")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {list(TOKENIZERS)}")
    p.add_argument("--force", action="store_true", help="overwrite existing folders")
    p.add_argument("--check", action="store_true",
                   help="rebuild in a temporary folder and compare with the committed files")
    p.add_argument("--bpe", type=Path, help=f"a local copy of {BPE_MEMBER} (sha256 checked)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in TOKENIZERS]
    if unknown:
        print(f"make_tokenizers: error: unknown tokenizer(s) {unknown}; known: {list(TOKENIZERS)}",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bpe = bpe_file(args.bpe)
    return build_all(args.names or list(TOKENIZERS), TOKENIZERS_DIR,
                     lambda name, out: build(name, out, bpe), sanity, force=args.force,
                     check=args.check, prog="make_tokenizers")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
