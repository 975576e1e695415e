#!/usr/bin/env python3
"""Speed and memory of reprodiff against diffusers on the same machine, interleaved.

    Run with the oracle's venv (its diffusers: `ci/oracle/run.sh --self-check` installs the
    oracle's pinned requirements into it once, as .ci/run does):
    ~/.cache/reprodiff/torch-2.13.0/bin/python ci/bench.py [--pipeline ddim|sd] [--model M]
        [--size S] [--steps 2,50] [--rounds 5] [--runs 3] [--threads 2] [--repeat 3] [--markdown]

Both sides run the same weights, f32 on the CPU, the same thread count, a CPU generator seeded 0:
`--pipeline ddim` (default) the full-size google/ddpm-cifar10-32 architecture with derived
weights (`reprodiff derive-weights`); `--pipeline sd` StableDiffusionPipeline with the seed
document's prompt and guidance 7.5 on `--model` (a folder; default the derived SD 1.5
architecture, `reprodiff derive-weights --arch stable-diffusion-v1-5`) at `--size` pixels.
Each round starts one fresh process per implementation, alternating which goes first; a process
loads the pipeline, warms up once and times `--runs` calls. Reported: the median seconds per
pipeline call of each implementation over all timed calls with their min and max, the ratio
diffusers / reprodiff
(> 1: reprodiff is faster), the median peak resident memory per process, and whether both
produced the same bits; first the build timed and the host's class. Quote ratios from one run of
this script: these machines are noisy. ci/profile_ops.py compares one call op by op.

`--repeat N` measures everything N times over (N runs of the script in one) and adds, per step
count, the median of the N ratios: the figure #16's goal is stated in. `--markdown` prints the
table for docs/performance.md on stdout (the lines above go to stderr), with the host, build and date it was measured on.

`--diffusers-malloc keep-freed` gives diffusers the malloc setting reprodiff makes for itself
(src/torch/memory.rs, as GLIBC_TUNABLES): most of reprodiff's lead on the full architectures is
that setting, and this shows what remains. `REPRODIFF_MALLOC=default` takes it from reprodiff.

`--portable` adds reprodiff on its portable kernels (`bench --kernels portable`, issue #14) as a
third process per round, interleaved with the other two: its median, its min and max, and its
time over native reprodiff's (#28's goal: at most 1.25). Its bits are its own class's, not diffusers'.

REPRODIFF_BIN selects the binary (default: target/release/reprodiff, else target/debug/reprodiff).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def reprodiff_bin() -> Path:
    if os.environ.get("REPRODIFF_BIN"):
        return Path(os.environ["REPRODIFF_BIN"])
    for profile in ("release", "debug"):
        p = REPO / "target" / profile / "reprodiff"
        if p.exists():
            return p
    sys.exit("bench: no reprodiff binary; build it with `ci/cargo build --release` or set REPRODIFF_BIN")


# What reprodiff's src/torch/memory.rs sets with mallopt, as glibc tunables for diffusers.
KEEP_FREED = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"


def run(cmd: list[str], extra_env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", **(extra_env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def require_diffusers() -> None:
    """Stops at once, naming the fix, when this python cannot import diffusers (the diffusers
    side runs under the same interpreter)."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        sys.exit(
            f"ci/bench.py: {sys.executable} cannot import diffusers; run this script with the "
            "oracle's venv: ~/.cache/reprodiff/torch-2.13.0/bin/python ci/bench.py ... "
            "(ci/oracle/run.sh --self-check installs it)"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="2,50")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--pipeline", choices=["ddim", "sd"], default="ddim")
    ap.add_argument("--model", help="a pipeline folder (default: the derived architecture)")
    ap.add_argument("--size", type=int, help="sd: height and width in pixels")
    ap.add_argument("--portable", action="store_true",
                    help="also time reprodiff's portable kernels (bench --kernels portable)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure N times over and report the median of the N ratios")
    ap.add_argument("--markdown", action="store_true",
                    help="print a Markdown table for docs/performance.md")
    ap.add_argument("--diffusers-malloc", choices=["default", "keep-freed"], default="default",
                    help="keep-freed: give diffusers reprodiff's malloc setting (GLIBC_TUNABLES)")
    a = ap.parse_args()
    require_diffusers()
    exe = reprodiff_bin()
    arch = "ddpm-cifar10-32" if a.pipeline == "ddim" else "stable-diffusion-v1-5"
    model = Path(a.model) if a.model else REPO / "target" / "bench" / arch
    if not a.model and not (model / "DERIVED").exists():
        subprocess.run([str(exe), "derive-weights", "--arch", arch, "--out", str(model)], check=True)
    extra = ["--size", str(a.size)] if a.size else []
    env = json.loads(subprocess.run([str(exe), "env", "--json"], check=True, capture_output=True,
                                    text=True, cwd=REPO).stdout)
    build = ("release profile" if exe.parent.name == "release" else
             "dev profile: reprodiff at opt-level 1, its kernels and every dependency at 3")
    when = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    # With --markdown the table is stdout and the progress lines go to stderr.
    def say(line: str) -> None:
        print(line, file=sys.stderr if a.markdown else sys.stdout, flush=True)
    say(f"reprodiff: {exe} ({build}); {a.pipeline} on {model}; threads {a.threads}; "
        f"{a.rounds} rounds x {a.runs} timed runs, interleaved, {a.repeat} time(s) over")
    say(f"host: {env['cpu']['model']}, class {env['class']}; {when}")
    say(f"{'run':>3}  {'steps':>5}  {'reprodiff s (min-max)':>24}  {'diffusers s (min-max)':>24}  "
        f"{'ratio':>6}  {'reprodiff MiB':>13}  {'diffusers MiB':>13}  same bits"
        + (f"  {'portable s (min-max)':>22}  {'portable/native':>15}" if a.portable else ""))
    step_counts = [int(s) for s in a.steps.split(",")]
    rows: dict[int, list[dict]] = {steps: [] for steps in step_counts}
    for rep in range(1, a.repeat + 1):
        for steps in step_counts:
            row = measure(a, exe, model, extra, steps)
            rows[steps].append(row)
            line = (f"{rep:>3}  {steps:>5}  {row['spread']['reprodiff']:>24}  "
                    f"{row['spread']['diffusers']:>24}  {row['ratio']:>6.2f}  "
                    f"{row['mem']['reprodiff']:>13.0f}  {row['mem']['diffusers']:>13.0f}  "
                    f"{'yes' if row['same'] else 'NO':>9}")
            if a.portable:
                line += f"  {row['spread']['portable']:>22}  {row['portable_ratio']:>15.2f}"
            say(line)
    if a.repeat > 1:
        for steps in step_counts:
            ratios = [r["ratio"] for r in rows[steps]]
            say(f"steps {steps}: diffusers / reprodiff median of {a.repeat} runs "
                f"{statistics.median(ratios):.2f} (runs: {', '.join(f'{x:.2f}' for x in ratios)})")
    malloc = rows[step_counts[0]][0]["malloc"]
    say(f"malloc: reprodiff {malloc} (REPRODIFF_MALLOC), diffusers {a.diffusers_malloc}")
    if a.markdown:
        print_markdown(a, env, build, when, rows, malloc)


def measure(a, exe: Path, model: Path, extra: list[str], steps: int) -> dict:
    """One interleaved measurement at one step count: `--rounds` rounds of fresh processes."""
    ours = [str(exe), "bench", a.pipeline, "--model", str(model), "--steps", str(steps),
            "--runs", str(a.runs), "--threads", str(a.threads), *extra]
    theirs = [sys.executable, str(REPO / "ci" / "bench_diffusers.py"), "--model", str(model),
              "--pipeline", a.pipeline, "--steps", str(steps), "--runs", str(a.runs),
              "--threads", str(a.threads), *extra]
    order = [("reprodiff", ours), ("diffusers", theirs)]
    if a.portable:
        order.append(("portable", [*ours, "--kernels", "portable"]))
    envs = {"diffusers": {"GLIBC_TUNABLES": KEEP_FREED}} if a.diffusers_malloc == "keep-freed" else {}
    results: dict[str, list[dict]] = {name: [] for name, _ in order}
    for r in range(a.rounds):
        # Rotate who goes first, so that no implementation always runs on a cold machine.
        shift = r % len(order)
        for name, cmd in order[shift:] + order[:shift]:
            results[name].append(run(cmd, envs.get(name)))
    times = {k: [t for res in v for t in res["seconds"]] for k, v in results.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "median": med,
        "spread": {k: f"{med[k]:.3f} ({min(v):.3f}-{max(v):.3f})" for k, v in times.items()},
        "ratio": med["diffusers"] / med["reprodiff"],
        "mem": {k: statistics.median(res["peak_rss_kb"] for res in v) / 1024
                for k, v in results.items()},
        "malloc": results["reprodiff"][0].get("malloc", "default"),
        "same": len({res["sha256"] for k in ("reprodiff", "diffusers") for res in results[k]}) == 1,
    }
    if a.portable:
        row["portable_ratio"] = med["portable"] / med["reprodiff"]
    return row


def regenerate(a) -> str:
    """The flags this run was given, with its thread count always said (the default is the
    host's core count, so a bare command measures another setup on a bigger host)."""
    given = sys.argv[1:]
    return " ".join(given if "--threads" in given else [*given, "--threads", str(a.threads)])


def print_markdown(a, env: dict, build: str, when: str, rows: dict[int, list[dict]],
                   malloc: str) -> None:
    print(f"{a.pipeline}, {a.threads} threads, {a.rounds} rounds x {a.runs} timed calls, "
          f"{a.repeat} run(s) of the script; {env['cpu']['model']} (class `{env['class']}`), "
          f"{build}, {when}; malloc: reprodiff {malloc}, "
          f"diffusers {a.diffusers_malloc}; regenerate: `ci/bench.py {regenerate(a)}`")
    print()
    # With --portable, the portable call's seconds and its ratio to native, as the text table.
    extra = " portable s (min-max) | portable / native |" if a.portable else ""
    print("| steps | run | reprodiff s (min-max) | diffusers s (min-max) | diffusers / reprodiff "
          "| peak RSS reprodiff | peak RSS diffusers | same bits |" + extra)
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if a.portable else ""))
    for steps, runs in rows.items():
        for i, r in enumerate(runs, 1):
            cells = (f" {r['spread']['portable']} | {r['portable_ratio']:.2f} |"
                     if a.portable else "")
            print(f"| {steps} | {i} | {r['spread']['reprodiff']} | {r['spread']['diffusers']} | "
                  f"{r['ratio']:.2f} | {r['mem']['reprodiff']:.0f} MiB | "
                  f"{r['mem']['diffusers']:.0f} MiB | {'yes' if r['same'] else 'NO'} |" + cells)
        if len(runs) > 1:
            med = statistics.median(r["ratio"] for r in runs)
            tail = (f" | **{statistics.median(r['portable_ratio'] for r in runs):.2f}** |"
                    if a.portable else "")
            print(f"| {steps} | median of {len(runs)} | | | **{med:.2f}** | | | |" + tail)

if __name__ == "__main__":
    main()
