"""Calibrates the cross-class tolerance of a pipeline suite from measurements.

    ~/.cache/reprodiff/torch-2.13.0/bin/python ci/calibrate.py --suite ddim-tiny [--k 2]

For every scenario with a float64 truth in fixtures/golden/<suite>.json it measures
rmse(truth, output) for
- every recorded class's expectation (the genuine hosts: their arrays are in the golden), and
- every CPU class this host can produce by kernel settings (EMULATED below): reprodiff runs the
  suite in that class, which has no expectation, and reports rmse(truth, got) in its
  cross-class row,
then prints, per scenario and for the suite, the spread of those figures, the sensitivity S, and
the smallest `noise_ulps` for which

    rmse(truth, a) <= k * rmse(truth, b) + noise_ulps * S

holds for every class a (recorded or emulated) and every recorded class b != a: the rule then
passes whichever recorded class is the nearest. One setting is held out of the floor
(HELD_OUT: ATen `default` with oneDNN held to SSE4.1, a class nobody recorded) and reported as
the check of the calibration. Scenarios whose sensitivity makes the comparison powerless
(src/harness/check.rs, POWERLESS_SENSITIVITY) are listed apart and not used.

The numbers go to README.md ("Cross-class tolerances, calibrated") and the floor into the
suite's `cross_class`. Needs target/debug/reprodiff (REPRODIFF_BIN).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = os.environ.get("REPRODIFF_BIN", str(REPO / "target/debug/reprodiff"))
POWERLESS_SENSITIVITY = 1e-3
EMULATED = {
    "intel/avx2 (ATen, oneDNN, MKL at AVX2)": {
        "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "intel/aten avx2, oneDNN AVX": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX"},
    "intel/oneDNN avx512_core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "intel/MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
}
HELD_OUT = ("intel/default+SSE41 (held out)",
            {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"})


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    d = a.astype(np.float64).ravel() - b.astype(np.float64).ravel()
    return math.sqrt(math.fsum(d * d) / d.size) if d.size else 0.0


def recorded(golden_dir: Path, suite: str) -> tuple[dict, dict[str, dict[str, float]]]:
    """(scenario -> {sensitivity, scale}, class -> scenario -> rmse(truth, expectation))."""
    golden = json.loads((golden_dir / f"{suite}.json").read_text())
    info, by_class = {}, {}
    for name, s in golden["scenarios"].items():
        truth = s.get("truth")
        if not truth:
            continue
        t = np.load(golden_dir / truth["array"])
        scale = math.sqrt(math.fsum((t.astype(np.float64).ravel()) ** 2) / t.size)
        info[name] = {"sensitivity": truth["sensitivity"], "scale": scale}
        for e in s["expectations"]:
            if e.get("array"):
                by_class.setdefault(e["class"], {})[name] = rmse(t, np.load(golden_dir / e["array"]))
    return info, by_class


def emulated(suite: str, env: dict[str, str]) -> dict[str, float]:
    """scenario -> rmse(truth, got) for a run of `suite` under `env` (a class with no
    expectation, so `check` compares across classes and reports the figure)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [BIN, "check", "--suite", suite, "--json", "--out", tmp],
            env={**os.environ, **env, "CI": ""}, capture_output=True, text=True, check=False)
    if out.returncode not in (0, 1):
        sys.exit(f"reprodiff check under {env} failed ({out.returncode}): {out.stderr}")
    got = {}
    for r in json.loads(out.stdout):
        for c in r["checks"]:
            if c["metric"] == "rmse_truth":
                got[r["scenario"]] = float(c["got"])
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", required=True)
    ap.add_argument("--k", type=float, default=2.0)
    ap.add_argument("--golden-dir", type=Path, default=REPO / "fixtures/golden")
    args = ap.parse_args()
    info, genuine = recorded(args.golden_dir, args.suite)
    powerless = {n for n, i in info.items()
                 if i["scale"] > 0 and i["sensitivity"] > POWERLESS_SENSITIVITY * i["scale"]}
    usable = sorted(set(info) - powerless)
    runs = {label: emulated(args.suite, env) for label, env in EMULATED.items()}
    held_label, held_env = HELD_OUT
    held = emulated(args.suite, held_env)

    def needed(figures: dict[str, dict[str, float]]) -> tuple[float, str]:
        worst, where = 0.0, "-"
        for name in usable:
            for a, ra in figures.items():
                for b, rb in genuine.items():
                    sens = info[name]["sensitivity"]
                    if a != b and name in ra and name in rb and sens > 0:
                        gap = (ra[name] - args.k * rb[name]) / sens
                        if gap > worst:
                            worst, where = gap, f"{name}: {a} vs {b}"
        return worst, where

    floor, where = needed({**genuine, **runs})
    print(f"# {args.suite}: k = {args.k}, {len(info)} scenarios with a truth, "
          f"{len(powerless)} not comparable")
    print("| scenario | sensitivity S | rmse(truth, class) over recorded classes | over emulated classes |")
    print("|---|---|---|---|")
    for name in sorted(info):
        rec = [genuine[c][name] for c in genuine if name in genuine[c]]
        emu = [runs[c][name] for c in runs if name in runs[c]]
        span = lambda xs: f"{min(xs):.2e} .. {max(xs):.2e}" if xs else "-"  # noqa: E731
        mark = " (not comparable)" if name in powerless else ""
        print(f"| {name}{mark} | {info[name]['sensitivity']:.2e} | {span(rec)} | {span(emu)} |")
    print(f"\nsmallest noise_ulps for every pair: {floor:.3f} (set by {where})")
    ok = [n for n in usable if n in held and all(
        held[n] <= args.k * genuine[b][n] + floor * info[n]["sensitivity"]
        for b in genuine if n in genuine[b])]
    print(f"held-out {held_label}: {len(ok)} of {len([n for n in usable if n in held])} "
          f"scenarios pass against every recorded class with that noise_ulps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
