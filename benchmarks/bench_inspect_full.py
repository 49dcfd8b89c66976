"""Full `headscope inspect` (load, probe, recommendation) end to end, default vs --fast, side by
side in one run (not a test; prints a table and the progress lines stderr got).

Each run is a fresh `python -m headscope inspect CKPT [--fast] --json -` subprocess with stderr
captured (so not a terminal: the plain progress lines are shown as they came). Models: the real
BERT-tiny SPLADE, and the ModernBERT-base shape of benchmarks/checkpoints.py (random weights,
BERT-tiny's tokenizer). Threads: OMP_NUM_THREADS / torch threads = --threads (default 1, see
bench_probe.py).

    python benchmarks/bench_inspect_full.py [--models bert-tiny modernbert] [--skip-default]
        [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
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
    args = parser.parse_args()
    from headscope import assets

    paths = {"bert-tiny": assets.fetch("bert-tiny-splade"), "modernbert": modernbert_base()}
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


if __name__ == "__main__":
    main()
