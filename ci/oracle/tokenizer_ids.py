#!/usr/bin/env python3
"""transformers' CLIP token ids for the tokenizer corpus: fixtures/golden/tokenizer-ids.json.

For each tokenizer (TOKENIZERS: the full CLIP fixture and the tokenizer/ folders of the tiny SD
models) and each prompt of fixtures/tokenizers/corpus.json, this runs transformers'
CLIPTokenizer exactly as diffusers' StableDiffusionPipeline.encode_prompt does:

    tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
        return_tensors="pt").input_ids          -> "ids" (77 ids a prompt)
    tok(prompt, padding="longest", return_tensors="pt").input_ids
                                                -> "untruncated_len" (its length)

The corpus (hand-written, 42 prompts) holds the seed document's prompts, the empty prompt, ASCII,
punctuation, numbers, accents (composed and decomposed), non-Latin scripts, emoji (with ZWJ
sequences), CJK, odd whitespace (tabs, newlines, runs, leading/trailing, no-break and
ideographic spaces), mixed case, contractions, literal special tokens in any case, and three
prompts longer than 77 tokens.

The tokenizers are loaded with CLIPTokenizer.from_pretrained(folder). tiny-sd-a's folder holds a
tokenizer.json (transformers 5's save layout); clip-vit-large-patch14's and tiny-sd-b's hold
only vocab.json + merges.txt (the SD 1.5 layout), from which transformers builds its own
`tokenizers` pipeline (--pipeline prints it). tiny-sd-b pads with "!" (id 0), the others with
<|endoftext|>. The file's provenance names the library versions: ids are only as stable as
transformers' and tokenizers' CLIP pipeline.

Cross-check (always run, fails on a difference): the `tokenizers` library alone,
Tokenizer.from_file(fixtures/models/tiny-sd-a/tokenizer/tokenizer.json).encode(prompt).ids,
gives CLIPTokenizer's untruncated ids for every prompt.

Usage (ci/oracle/run.sh runs it in the oracle's venv)::

    ci/oracle/run.sh --tokenizer-ids [--check] [--pipeline [NAME]]

--check recomputes and fails unless the committed file is byte-identical; --pipeline prints the
tokenizers pipeline (tokenizer.json without its vocabulary and merges) that transformers builds
for NAME (default tiny-sd-b, the vocab + merges folder with pad "!").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = "fixtures/tokenizers/corpus.json"
GOLDEN = "fixtures/golden/tokenizer-ids.json"
COMMAND = "ci/oracle/run.sh --tokenizer-ids"
TOKENIZERS = {
    "clip-vit-large-patch14": "fixtures/tokenizers/clip-vit-large-patch14",
    "tiny-sd-a": "fixtures/models/tiny-sd-a/tokenizer",
    "tiny-sd-b": "fixtures/models/tiny-sd-b/tokenizer",
}
CROSS_CHECK = "fixtures/models/tiny-sd-a/tokenizer/tokenizer.json"
PIPELINE_OF = "tiny-sd-b"


def load(folder: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(REPO / folder, local_files_only=True)


def encode(tok, prompt: str) -> tuple[list[int], list[int]]:
    """(encode_prompt's 77 ids, its untruncated ids) for one prompt."""
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    untruncated = tok(prompt, padding="longest", return_tensors="pt").input_ids
    return ids[0].tolist(), untruncated[0].tolist()


def golden(prompts: list[str]) -> tuple[str, list[str]]:
    """The golden file's text and the cross-check's problems."""
    import tokenizers
    import torch
    import transformers

    problems = []
    entries = {}
    untruncated_a = None
    for name, folder in TOKENIZERS.items():
        tok = load(folder)
        pairs = [encode(tok, p) for p in prompts]
        for p, (ids, _) in zip(prompts, pairs, strict=True):
            if len(ids) != tok.model_max_length:
                problems.append(f"{name}: {len(ids)} ids for {p!r}")
        entries[name] = {"folder": folder, "ids": [ids for ids, _ in pairs],
                         "untruncated_len": [len(u) for _, u in pairs]}
        if name == "tiny-sd-a":
            untruncated_a = [u for _, u in pairs]
    raw = tokenizers.Tokenizer.from_file(str(REPO / CROSS_CHECK))
    for p, want in zip(prompts, untruncated_a, strict=True):
        got = raw.encode(p).ids
        if got != want:
            problems.append(f"tokenizers.Tokenizer.from_file({CROSS_CHECK}) gives {got} for "
                            f"{p!r}, CLIPTokenizer {want}")
    provenance = {
        "producer": "oracle",
        "command": COMMAND,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
        "corpus_sha256": hashlib.sha256((REPO / CORPUS).read_bytes()).hexdigest(),
    }
    lines = ["{", '  "schema": 1,', f'  "provenance": {json.dumps(provenance)},',
             f'  "corpus": {json.dumps(CORPUS)},', '  "tokenizers": {']
    for i, (name, entry) in enumerate(entries.items()):
        lines.append(f"    {json.dumps(name)}: {{")
        lines.append(f'      "folder": {json.dumps(entry["folder"])},')
        lines.append('      "ids": [')
        lines.append(",\n".join(f"        {json.dumps(ids)}" for ids in entry["ids"]))
        lines.append("      ],")
        lines.append(f'      "untruncated_len": {json.dumps(entry["untruncated_len"])}')
        lines.append("    }" + ("," if i + 1 < len(entries) else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n", problems


def pipeline(name: str) -> dict:
    """The tokenizers pipeline transformers builds for `name`, without vocabulary and merges."""
    tok = load(TOKENIZERS[name])
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    model["vocab"] = f"<{len(model['vocab'])} entries of vocab.json>"
    model["merges"] = f"<{len(model['merges'])} pairs of merges.txt>"
    return spec


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=f"Writes {GOLDEN}.")
    p.add_argument("--check", action="store_true",
                   help="recompute and compare with the committed file instead of writing it")
    p.add_argument("--pipeline", nargs="?", const=PIPELINE_OF, choices=list(TOKENIZERS),
                   metavar="NAME", help="print the tokenizers pipeline that transformers builds "
                   f"for NAME (default {PIPELINE_OF}) as JSON")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.pipeline:
        print(json.dumps(pipeline(args.pipeline), indent=2, ensure_ascii=False))
        return 0
    prompts = json.loads((REPO / CORPUS).read_text(encoding="utf-8"))
    text, problems = golden(prompts)
    if problems:
        for problem in problems:
            print(f"tokenizer_ids: error: {problem}", file=sys.stderr)
        return 1
    out = REPO / GOLDEN
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"  {GOLDEN}: " + ("recomputed byte for byte" if same else "DIFFERS"))
        return 0 if same else 1
    out.write_text(text, encoding="utf-8")
    print(f"  {GOLDEN}: {len(prompts)} prompts x {len(TOKENIZERS)} tokenizers; the tokenizers "
          f"library's tokenizer.json agrees with CLIPTokenizer on every prompt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
