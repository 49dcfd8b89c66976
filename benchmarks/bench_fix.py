"""Benchmark `save.save_fixed` (the work behind `headscope fix`) against plain file copies.

Targets: fix wall time, verification included, <= 3x copying the same weight files at BERT-base
scale and above, and peak memory <= 2x the model's weight bytes. Three models:

- the real BERT-tiny SPLADE (17 MB, one safetensors file);
- BertForMaskedLM from BertConfig() defaults (BERT-base: 12 layers, hidden 768, ~440 MB, one
  file; random weights, a code-path stand-in built once by benchmarks/checkpoints.py);
- the same shape re-saved in 100 MB shards.

Each measurement runs in a fresh child process. Time and memory are reported for the whole
`save_fixed` call and for its two phases: "write" (plan, stream the shards) and "verify" (reload
with AutoModelForMaskedLM, forward passes, comparisons, provenance, rename). Memory is the peak
resident set size above the level after loading the model (Linux VmHWM, reset between phases
through /proc/self/clear_refs), and the whole process's peak during `save_fixed` (loaded model
included) over the weight bytes. Loading the model is not part of `fix`'s cost here and is
reported separately.

Torch runs on --threads threads (default 1): on a shared machine two OpenMP threads contending
with other processes made one BERT-base forward pass 5x slower than one thread did.

    python benchmarks/bench_fix.py [--strategy untie] [--skip-large] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoints import ROOT, bert_base  # noqa: E402

TEXTS = ["What is a sparse retriever?", "The head projects hidden states onto the vocabulary."]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


def child(source: str, strategy: str, threads: int) -> dict:
    """Run in a fresh process: load, then time and measure save_fixed."""
    import torch

    torch.set_num_threads(threads)
    from headscope import checkpoint
    from headscope.rescale import RescaleSpec
    from headscope.save import save_fixed

    t0 = time.perf_counter()
    loaded = checkpoint.load(checkpoint.resolve(source))
    load_s = time.perf_counter() - t0
    # transformers may map the weight files lazily: touch every tensor once so that the baseline
    # holds the whole loaded model, and what is measured below is save_fixed's own memory.
    for tensor in loaded.model.state_dict().values():
        float(tensor.float().sum())
    ckpt = loaded.checkpoint
    shard_bytes = [p.stat().st_size for p in ckpt.weight_files]

    work = Path(tempfile.mkdtemp(prefix="bench-fix-"))
    try:
        # Copy of the same weight files, twice (the first warms the page cache).
        for attempt in range(2):
            dst = work / f"copy{attempt}"
            dst.mkdir()
            t0 = time.perf_counter()
            for p in ckpt.weight_files:
                shutil.copyfile(p, dst / p.name)
            copy_s = time.perf_counter() - t0

        marks: dict[str, float] = {}
        peaks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "verify" and done == 0:
                marks["verify"] = time.perf_counter()
                peaks["write"] = _rss_kib("VmHWM") - base
                _reset_peak()

        import gc

        gc.collect()
        _reset_peak()
        base = _rss_kib("VmRSS")
        t0 = time.perf_counter()
        result = save_fixed(loaded, RescaleSpec(16, strategy), work / "fixed",
                            verify_texts=TEXTS, progress=progress)
        total_s = time.perf_counter() - t0
        hwm = _rss_kib("VmHWM")
        peaks["verify"] = hwm - base
        peaks["process"] = max(hwm, base + peaks["write"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    largest = max(shard_bytes)
    return {
        "source": source,
        "strategy": strategy,
        "shards": len(shard_bytes),
        "largest_shard_mb": largest / 1e6,
        "weights_mb": sum(shard_bytes) / 1e6,
        "written_mb": result.weight_bytes / 1e6,
        "load_s": load_s,
        "copy_s": copy_s,
        "fix_s": total_s,
        "write_s": marks["verify"] - t0,
        "verify_s": t0 + total_s - marks["verify"],
        "peak_write_mb": peaks["write"] * 1024 / 1e6,
        "peak_verify_mb": peaks["verify"] * 1024 / 1e6,
        "peak_process_mb": peaks["process"] * 1024 / 1e6,
        "base_mb": base * 1024 / 1e6,
    }


def build_sharded(path: Path) -> Path:
    """The BERT-base checkpoint of benchmarks/checkpoints.py re-saved in 100 MB shards."""
    from transformers import BertForMaskedLM

    if not (path / "model.safetensors.index.json").is_file():
        BertForMaskedLM.from_pretrained(str(bert_base())).save_pretrained(
            str(path), max_shard_size="100MB")
    return path


def run_child(source: Path, strategy: str, threads: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(source), "--strategy", strategy,
         "--threads", str(threads)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed for {source}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def show(row: dict) -> None:
    name = Path(row["source"]).name
    print(f"\n{name} ({row['strategy']}): {row['shards']} shard(s), weights "
          f"{row['weights_mb']:.1f} MB, largest shard {row['largest_shard_mb']:.1f} MB, "
          f"written {row['written_mb']:.1f} MB; load {row['load_s']:.2f} s (not counted)")
    print(f"  time   copy {row['copy_s']:.3f} s | fix {row['fix_s']:.3f} s "
          f"(write {row['write_s']:.3f} s + verify {row['verify_s']:.3f} s)")
    print(f"         fix/copy {row['fix_s'] / row['copy_s']:.1f}x (target <= 3x); "
          f"write/copy {row['write_s'] / row['copy_s']:.1f}x")
    weights = row["weights_mb"]
    print(f"  memory peak above loaded model: write {row['peak_write_mb']:.1f} MB, verify "
          f"{row['peak_verify_mb']:.1f} MB; whole process during fix "
          f"{row['peak_process_mb']:.1f} MB = {row['peak_process_mb'] / weights:.2f}x the weight "
          f"bytes (RSS before fix {row['base_mb']:.1f} MB); target <= 2x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="untie", choices=("untie", "tied", "fold"))
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.strategy, args.threads)))
        return
    from headscope import assets

    rows = [run_child(assets.fetch("bert-tiny-splade"), args.strategy, args.threads)]
    if not args.skip_large:
        rows.append(run_child(bert_base(), args.strategy, args.threads))
        rows.append(run_child(build_sharded(ROOT / "bert-base-random-sharded"), args.strategy,
                              args.threads))
    for row in rows:
        show(row)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
