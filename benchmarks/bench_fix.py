"""Benchmark `save.save_fixed` (the work behind `headscope fix`) against plain file copies.

Targets: fix wall time, verification included, <= 3x copying the same weight files at BERT-base
scale and above, and peak memory <= 2x the model's weight bytes. Models:

- the real BERT-tiny SPLADE (17 MB, one safetensors file);
- BertForMaskedLM from BertConfig() defaults (BERT-base: 12 layers, hidden 768, ~440 MB, one
  file; random weights, a code-path stand-in built once by benchmarks/checkpoints.py, with
  BERT-tiny's tokenizer beside it);
- the same shape re-saved in 100 MB shards;
- with --large, BERT-large's shape (24 layers, hidden 1,024, ~1.34 GB, one file).

Each measurement runs in a fresh child process. Two baselines: a copy of the weight files
(shutil.copyfile, page cache warm) and a durable copy (the same, then an fsync of each file, as
fix must flush its files before it renames the folder into place); each starts after os.sync().
Time and memory are reported for the whole `save_fixed` call and for its two phases: "write"
(plan, stream the shards) and "verify" (byte checks, reload with AutoModelForMaskedLM, forward
passes, provenance, rename), with the CPU time of all the process's threads. Memory: the peak
resident set size above the level after loading the model (Linux VmHWM, reset between phases
through /proc/self/clear_refs); the whole process's peak during `save_fixed` over the weight
bytes, also above the interpreter (torch and transformers imported, nothing loaded); and the
peak private memory (RssAnon, sampled every 5 ms on a thread). Loading the model is not part of
`fix`'s cost here and is reported separately.

Torch runs on --threads threads (default 1): on a shared machine two OpenMP threads contending
with other processes made one BERT-base forward pass 5x slower than one thread did.

    python benchmarks/bench_fix.py [--strategy untie] [--skip-large] [--large] [--threads 1]
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
from checkpoints import ROOT, bert_base, bert_large, with_tokenizer  # noqa: E402

TEXTS = ["What is a sparse retriever?", "The head projects hidden states onto the vocabulary."]


def _status_kib(*fields: str) -> dict[str, int]:
    found = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            name = line.split(":", 1)[0]
            if name in fields:
                found[name] = int(line.split()[1])
    return found


def _rss_kib(field: str) -> int:
    return _status_kib(field)[field]


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


class _AnonPeak:
    """The peak of RssAnon (private memory: what an out-of-memory killer counts; RssFile, the
    memory-mapped weight files, is page cache the kernel can drop and re-read), sampled every
    5 ms on a thread: a lower bound of the true peak."""

    def __init__(self) -> None:
        import threading

        self.peak = _rss_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_kib("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_kib("RssAnon"))


def _copy(files: list[Path], dst: Path, durable: bool) -> float:
    """Seconds to copy `files` into `dst` (and, when `durable`, to flush them to disk as fix
    must before it renames its folder into place)."""
    dst.mkdir()
    os.sync()  # start from a clean page cache: no earlier write still going to the disk
    t0 = time.perf_counter()
    for p in files:
        shutil.copyfile(p, dst / p.name)
    if durable:
        for p in files:
            fd = os.open(dst / p.name, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    return time.perf_counter() - t0


def child(source: str, strategy: str, threads: int) -> dict:
    """Run in a fresh process: load, then time and measure save_fixed."""
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoModelForMaskedLM  # noqa: F401  (the interpreter's own memory)

    from headscope import checkpoint
    from headscope.rescale import RescaleSpec
    from headscope.save import save_fixed

    interpreter = _status_kib("VmRSS", "RssAnon")
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
        # Plain and durable copies of the same weight files; the first warms the page cache.
        timings = {}
        for name, durable in (("warm", False), ("copy", False), ("durable", True)):
            timings[name] = _copy(ckpt.weight_files, work / name, durable)
            shutil.rmtree(work / name)
        copy_s, durable_s = timings["copy"], timings["durable"]

        marks: dict[str, float] = {}
        peaks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "verify" and done == 0:
                marks["verify"] = time.perf_counter()
                peaks["write"] = _rss_kib("VmHWM") - base
                _reset_peak()

        import gc

        gc.collect()
        os.sync()
        _reset_peak()
        base = _rss_kib("VmRSS")
        anon = _AnonPeak()
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = save_fixed(loaded, RescaleSpec(16, strategy), work / "fixed",
                            verify_texts=TEXTS, progress=progress)
        total_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        anon_peak = anon.stop()
        hwm = _rss_kib("VmHWM")
        peaks["verify"] = hwm - base
        peaks["process"] = max(hwm, base + peaks["write"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    largest = max(shard_bytes)
    mb = 1024 / 1e6  # KiB -> MB
    return {
        "source": source,
        "strategy": strategy,
        "shards": len(shard_bytes),
        "largest_shard_mb": largest / 1e6,
        "weights_mb": sum(shard_bytes) / 1e6,
        "written_mb": result.weight_bytes / 1e6,
        "load_s": load_s,
        "copy_s": copy_s,
        "durable_copy_s": durable_s,
        "fix_s": total_s,
        "fix_cpu_s": cpu_s,
        "write_s": marks["verify"] - t0,
        "verify_s": t0 + total_s - marks["verify"],
        "peak_write_mb": peaks["write"] * mb,
        "peak_verify_mb": peaks["verify"] * mb,
        "peak_process_mb": peaks["process"] * mb,
        "base_mb": base * mb,
        "interpreter_mb": interpreter["VmRSS"] * mb,
        "interpreter_anon_mb": interpreter["RssAnon"] * mb,
        "peak_anon_mb": anon_peak * mb,
    }


def build_sharded(path: Path) -> Path:
    """The BERT-base checkpoint of benchmarks/checkpoints.py re-saved in 100 MB shards."""
    from transformers import BertForMaskedLM

    if not (path / "model.safetensors.index.json").is_file():
        BertForMaskedLM.from_pretrained(str(bert_base())).save_pretrained(
            str(path), max_shard_size="100MB")
    return with_tokenizer(path)


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
    weights = row["weights_mb"]
    print(f"\n{name} ({row['strategy']}): {row['shards']} shard(s), weights "
          f"{weights:.1f} MB, largest shard {row['largest_shard_mb']:.1f} MB, "
          f"written {row['written_mb']:.1f} MB; load {row['load_s']:.2f} s (not counted)")
    print(f"  time   copy {row['copy_s']:.3f} s, durable copy (+ fsync) "
          f"{row['durable_copy_s']:.3f} s | fix {row['fix_s']:.3f} s "
          f"(write {row['write_s']:.3f} s + verify {row['verify_s']:.3f} s)")
    print(f"         CPU time of fix, all threads: {row['fix_cpu_s']:.3f} s "
          f"({row['fix_cpu_s'] / row['fix_s']:.2f} cores busy on average)")
    print(f"         fix/copy {row['fix_s'] / row['copy_s']:.1f}x, fix/durable copy "
          f"{row['fix_s'] / row['durable_copy_s']:.1f}x (target <= 3x); write/copy "
          f"{row['write_s'] / row['copy_s']:.1f}x")
    interp = row["interpreter_mb"]
    print(f"  memory peak above the loaded model: write {row['peak_write_mb']:.1f} MB, verify "
          f"{row['peak_verify_mb']:.1f} MB")
    print(f"         whole process {row['peak_process_mb']:.1f} MB = "
          f"{row['peak_process_mb'] / weights:.2f}x the weight bytes; above the interpreter "
          f"({interp:.0f} MB with torch and transformers imported) "
          f"{(row['peak_process_mb'] - interp) / weights:.2f}x; target <= 2x")
    print(f"         private (anonymous) memory above the interpreter's "
          f"({row['interpreter_anon_mb']:.0f} MB): peak "
          f"{row['peak_anon_mb'] - row['interpreter_anon_mb']:.1f} MB = "
          f"{(row['peak_anon_mb'] - row['interpreter_anon_mb']) / weights:.2f}x the weight bytes "
          "(sampled every 5 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="untie", choices=("untie", "tied", "fold"))
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--large", action="store_true",
                        help="also BERT-large's shape (1.34 GB, built once)")
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
        if args.large:
            rows.append(run_child(bert_large(), args.strategy, args.threads))
    for row in rows:
        show(row)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
