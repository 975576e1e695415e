#!/usr/bin/env python3
"""One pipeline call on both sides, op by op: where reprodiff and diffusers spend their time.

    ~/.cache/reprodiff/torch-2.13.0/bin/python ci/profile_ops.py [--pipeline sd|ddim]
        [--model M] [--size 64] [--steps 2] [--threads 2] [--top 25]
    ~/.cache/reprodiff/torch-2.13.0/bin/python ci/profile_ops.py --traces OURS.json THEIRS.json

Runs `REPRODIFF_PROFILE=... reprodiff bench` (libtorch's profiler, src/torch/mod.rs `Profile`)
and `ci/bench_diffusers.py --profile` (torch.profiler, CPU) on the same weights and settings as
ci/bench.py, each profiling one call after a warm-up and one timed call (`--rounds` processes a
side, alternating which side goes first, their times summed), then compares the ATen
ops of the two traces: per op name the number of calls and the self time (an op's time less
that of the ops it called) on each side, and the totals. Both profilers see the same ATen ops,
so equal counts mean both sides ran the same work; the self times say where a gap lies. One
profiled call is noisy: compare the shape of the table, and time with ci/bench.py.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ci"))
from bench import reprodiff_bin  # noqa: E402


def ops(trace: Path) -> dict[str, tuple[int, float]]:
    """ATen ops of a Chrome trace: name -> (calls, self microseconds)."""
    data = json.loads(trace.read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    # torch.profiler marks ATen ops `cpu_op`; libtorch's legacy profiler writes only ops.
    events = [e for e in events if e.get("ph") == "X" and e.get("cat", "cpu_op") == "cpu_op"]
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e.get("tid")].append(e)
    result: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for evs in by_thread.values():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack: list[list] = []  # [end, event, children's time]
        def close(entry):
            _, e, child = entry
            r = result[e["name"]]
            r[0] += 1
            r[1] += float(e["dur"]) - child
            if stack:
                stack[-1][2] += float(e["dur"])
        for e in evs:
            start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
            while stack and stack[-1][0] <= start:
                close(stack.pop())
            stack.append([end, e, 0.0])
        while stack:
            close(stack.pop())
    return {k: (v[0], v[1]) for k, v in result.items()}


def compare(ours: dict, theirs: dict, top: int) -> str:
    names = sorted(set(ours) | set(theirs),
                   key=lambda n: -max(ours.get(n, (0, 0))[1], theirs.get(n, (0, 0))[1]))
    lines = [f"{'op':<40} {'calls r':>8} {'calls d':>8} {'self ms r':>10} {'self ms d':>10} {'d - r ms':>9}"]
    for n in names[:top]:
        (cr, tr), (cd, td) = ours.get(n, (0, 0.0)), theirs.get(n, (0, 0.0))
        lines.append(f"{n[:40]:<40} {cr:>8} {cd:>8} {tr / 1e3:>10.1f} {td / 1e3:>10.1f} {(td - tr) / 1e3:>9.1f}")
    tot = lambda d: (sum(c for c, _ in d.values()), sum(t for _, t in d.values()))
    (cr, tr), (cd, td) = tot(ours), tot(theirs)
    lines.append(f"{'all ATen ops':<40} {cr:>8} {cd:>8} {tr / 1e3:>10.1f} {td / 1e3:>10.1f} {(td - tr) / 1e3:>9.1f}")
    differ = [n for n in set(ours) | set(theirs) if ours.get(n, (0,))[0] != theirs.get(n, (0,))[0]]
    lines.append(f"ops whose call counts differ: {len(differ)}"
                 + (f" ({', '.join(sorted(differ)[:12])}{', ...' if len(differ) > 12 else ''})"
                    if differ else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", choices=["ddim", "sd"], default="sd")
    ap.add_argument("--model", help="a pipeline folder (default: the derived architecture)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=2,
                    help="profiled processes per side, alternating which goes first (times summed)")
    ap.add_argument("--traces", nargs=2, type=Path, metavar=("OURS", "THEIRS"))
    a = ap.parse_args()
    if a.traces:
        print(compare(ops(a.traces[0]), ops(a.traces[1]), a.top))
        return
    exe = reprodiff_bin()
    arch = "ddpm-cifar10-32" if a.pipeline == "ddim" else "stable-diffusion-v1-5"
    model = Path(a.model) if a.model else REPO / "target" / "bench" / arch
    if not a.model and not (model / "DERIVED").exists():
        subprocess.run([str(exe), "derive-weights", "--arch", arch, "--out", str(model)], check=True)
    size = ["--size", str(a.size)] if a.pipeline == "sd" else []
    common = ["--model", str(model), "--steps", str(a.steps), "--runs", "1",
              "--threads", str(a.threads), *size]
    tmp = Path(tempfile.mkdtemp(prefix="profile-ops-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def ours(path: Path) -> None:
        subprocess.run([str(exe), "bench", a.pipeline, *common], check=True, cwd=REPO,
                       env={**env, "REPRODIFF_PROFILE": str(path)}, stdout=subprocess.DEVNULL)

    def theirs(path: Path) -> None:
        subprocess.run([sys.executable, str(REPO / "ci" / "bench_diffusers.py"), "--pipeline",
                        a.pipeline, *common, "--profile", str(path)], check=True, cwd=REPO,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    totals = {"r": collections.defaultdict(lambda: [0, 0.0]),
              "d": collections.defaultdict(lambda: [0, 0.0])}
    for r in range(a.rounds):
        # The second process of a pair runs on a warmer, busier machine: alternate who is first.
        order = [("r", ours), ("d", theirs)] if r % 2 == 0 else [("d", theirs), ("r", ours)]
        for side, run in order:
            path = tmp / f"{side}{r}.json"
            run(path)
            for name, (calls, us) in ops(path).items():
                totals[side][name][0] += calls
                totals[side][name][1] += us
    print(f"{a.pipeline}, {a.steps} steps{f', {a.size}x{a.size}' if size else ''}, "
          f"{a.threads} threads, {a.rounds} profiled call(s) per side, first side alternating; "
          f"traces in {tmp} (r: reprodiff, d: diffusers)")
    print(compare({k: tuple(v) for k, v in totals["r"].items()},
                  {k: tuple(v) for k, v in totals["d"].items()}, a.top))


if __name__ == "__main__":
    main()
