"""Full `headscope inspect` (load, probe, recommendation) end to end, default vs --fast, side by
side in one run (not a test; prints a table and the progress lines stderr got).

Each run is a fresh `python -m headscope inspect CKPT [--fast] --json -` subprocess with stderr
captured (so not a terminal: the plain progress lines are shown as they came). Models: the real
BERT-tiny SPLADE, and the ModernBERT-base shape of benchmarks/checkpoints.py (random weights,
BERT-tiny's tokenizer). Threads: OMP_NUM_THREADS / torch threads = --threads (default 1, see
bench_probe.py).

    python benchmarks/bench_inspect_full.py [--models bert-tiny modernbert] [--skip-default]
        [--threads 1] [--device cpu] [--repeat N]

With --repeat N the default and --fast runs alternate N times (so a change of load hits both)
and the medians are printed side by side: end to end (wall) and the probe alone (its "probe:
done in S s" progress line), with the ratio default / fast of each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import modernbert_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(path: Path, fast: bool, threads: int, device: str) -> tuple[float, dict, list[str]]:
    cmd = [sys.executable, "-m", "headscope", "inspect", str(path), "--json", "-",
           "--device", device]
    if fast:
        cmd.append("--fast")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout), proc.stderr.splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["bert-tiny", "modernbert"])
    parser.add_argument("--skip-default", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=0)
    args = parser.parse_args()
    from headscope import assets

    paths = {"bert-tiny": assets.fetch("bert-tiny-splade"), "modernbert": modernbert_base()}
    if args.repeat:
        for name in args.models:
            repeated(name, paths[name], args)
        return
    for name in args.models:
        for fast in (True,) if args.skip_default else (False, True):
            seconds, report, lines = run(paths[name], fast, args.threads, args.device)
            rec = report["recommendation"]
            probe = report["probe"]
            print(f"\n{name} {'--fast' if fast else 'default'}: {seconds:.1f} s wall, "
                  f"{probe['n_pairs']} pairs, passages <= {probe['max_passage_length']} tokens; "
                  f"recommended k = {rec['k']:g} (scale_bias {rec['scale_bias']})", flush=True)
            for line in lines:
                print(f"    stderr | {line}")


def repeated(name: str, path: Path, args) -> None:
    """Default and --fast alternately, `args.repeat` times; medians and ratios."""
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for i in range(args.repeat):
        for fast in (False, True):
            seconds, _report, lines = run(path, fast, args.threads, args.device)
            done = [float(m.group(1)) for line in lines
                    if (m := re.match(r"probe: done in ([0-9.]+) s", line))]
            probe = done[-1] if done else float("nan")
            times[fast].append((seconds, probe))
            print(f"{name} run {i + 1} {'--fast ' if fast else 'default'}: {seconds:.1f} s wall, "
                  f"probe {probe:g} s", flush=True)
    wall = {f: statistics.median(t[0] for t in times[f]) for f in times}
    probe = {f: statistics.median(t[1] for t in times[f]) for f in times}
    print(f"{name}, median of {args.repeat}: end to end {wall[False]:.1f} s default vs "
          f"{wall[True]:.1f} s --fast ({wall[False] / wall[True]:.1f}x); probe {probe[False]:g} s "
          f"vs {probe[True]:g} s ({probe[False] / probe[True]:.1f}x)")


if __name__ == "__main__":
    main()
