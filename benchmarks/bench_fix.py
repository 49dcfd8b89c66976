"""Benchmark `save.save_fixed` (the work behind `headscope fix`) against plain file copies.

Targets: fix wall time, verification included, <= 3x copying the same weight files at BERT-base
scale and above, and peak memory <= 2x the model's weight bytes. Models:

- the real BERT-tiny SPLADE (17 MB, one safetensors file);
- BertForMaskedLM from BertConfig() defaults (BERT-base: 12 layers, hidden 768, ~440 MB, one
  file; random weights, a code-path stand-in built once by benchmarks/checkpoints.py, with
  BERT-tiny's tokenizer beside it);
- the same shape re-saved in 100 MB shards;
- with --large, BERT-large's shape (24 layers, hidden 1,024, ~1.34 GB, one file).

Each model is measured twice, each time in a fresh child process with an empty headscope cache:
once as a first fix of its files (fix reads them to record their sha256), once with their sha256
remembered (hashed by the child before the timing, as an `inspect` of the same files or an
earlier fix leaves it). Two baselines, each after os.sync() with the page cache warm: a copy of
the weight files (shutil.copyfile) and a durable copy (the same, then an fsync of each file, as
fix must flush its files before it renames the folder into place).
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
    python benchmarks/bench_fix.py --side-by-side 8   # remembered vs read sha256, one process
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


def child(source: str, strategy: str, threads: int, remembered: bool) -> dict:
    """Run in a fresh process: load, then time and measure save_fixed. `remembered`: the
    source files' sha256 is in headscope's cache already (as after an `inspect` of them, or an
    earlier fix); else the cache is empty and fix reads them to hash them."""
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
    if remembered:
        from headscope.digests import file_hashes

        file_hashes(loaded.checkpoint.weight_files)
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
        # The part of fix that cannot start before the last byte is written, alone: the reload
        # of the output and its forward pass (in a fix it shares the cores with the byte checks).
        from headscope.save.verify import encode_texts, forward_pass, reload

        inputs = encode_texts(loaded, TEXTS)
        t1 = time.perf_counter()
        forward_pass(reload(work / "fixed", loaded), inputs)
        reload_s = time.perf_counter() - t1
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
        "remembered": remembered,
        "fix_s": total_s,
        "fix_cpu_s": cpu_s,
        "write_s": marks["verify"] - t0,
        "verify_s": t0 + total_s - marks["verify"],
        "reload_forward_s": reload_s,
        "peak_write_mb": peaks["write"] * mb,
        "peak_verify_mb": peaks["verify"] * mb,
        "peak_process_mb": peaks["process"] * mb,
        "base_mb": base * mb,
        "interpreter_mb": interpreter["VmRSS"] * mb,
        "interpreter_anon_mb": interpreter["RssAnon"] * mb,
        "peak_anon_mb": anon_peak * mb,
    }


def side_by_side(source: str, strategy: str, pairs: int, threads: int) -> dict:
    """In one process: `pairs` fixes with the source's sha256 remembered and `pairs` reading it,
    alternating (which comes first alternates too), after one fix that is not counted; medians
    of the wall and CPU times."""
    import statistics

    import torch

    torch.set_num_threads(threads)
    from headscope import checkpoint
    from headscope.digests import file_hashes
    from headscope.rescale import RescaleSpec
    from headscope.save import save_fixed

    loaded = checkpoint.load(checkpoint.resolve(source))
    work = Path(tempfile.mkdtemp(prefix="bench-fix-"))
    remembered_cache = str(work / "cache")
    os.environ["HEADSCOPE_CACHE"] = remembered_cache
    file_hashes(loaded.checkpoint.weight_files)
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    try:
        for i in range(pairs + 1):
            for remembered in ((True, False) if i % 2 else (False, True)):
                os.environ["HEADSCOPE_CACHE"] = (remembered_cache if remembered
                                                 else tempfile.mkdtemp(dir=work))
                os.sync()
                t0, cpu0 = time.perf_counter(), time.process_time()
                save_fixed(loaded, RescaleSpec(16, strategy), work / "fixed", verify_texts=TEXTS)
                if i:  # the first pair warms the process up
                    times[remembered].append((time.perf_counter() - t0,
                                              time.process_time() - cpu0))
                shutil.rmtree(work / "fixed")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {("remembered" if k else "read"): {
        "wall_s": statistics.median(t for t, _ in v), "cpu_s": statistics.median(c for _, c in v),
        "all_wall_s": [round(t, 3) for t, _ in v]} for k, v in times.items()}


def build_sharded(path: Path) -> Path:
    """The BERT-base checkpoint of benchmarks/checkpoints.py re-saved in 100 MB shards."""
    from transformers import BertForMaskedLM

    if not (path / "model.safetensors.index.json").is_file():
        BertForMaskedLM.from_pretrained(str(bert_base())).save_pretrained(
            str(path), max_shard_size="100MB")
    return with_tokenizer(path)


def run_child(source: Path, strategy: str, threads: int, remembered: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-fix-cache-") as cache:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(source), "--strategy", strategy,
             "--threads", str(threads), *(["--remembered"] if remembered else [])],
            capture_output=True, text=True, check=False,
            env={**os.environ, "HEADSCOPE_CACHE": cache},  # no digest remembered from before
        )
    if proc.returncode != 0:
        raise SystemExit(f"child failed for {source}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def show(row: dict) -> None:
    name = Path(row["source"]).name
    weights = row["weights_mb"]
    sha = "remembered" if row["remembered"] else "read (not remembered)"
    print(f"\n{name} ({row['strategy']}), source sha256 {sha}: {row['shards']} shard(s), "
          f"weights {weights:.1f} MB, largest shard {row['largest_shard_mb']:.1f} MB, "
          f"written {row['written_mb']:.1f} MB; load {row['load_s']:.2f} s (not counted)")
    print(f"  time   copy {row['copy_s']:.3f} s, durable copy (+ fsync) "
          f"{row['durable_copy_s']:.3f} s | fix {row['fix_s']:.3f} s "
          f"(write {row['write_s']:.3f} s + verify {row['verify_s']:.3f} s)")
    print(f"         CPU time of fix, all threads: {row['fix_cpu_s']:.3f} s "
          f"({row['fix_cpu_s'] / row['fix_s']:.2f} cores busy on average)")
    print(f"         reload + forward pass of the output alone, after fix: "
          f"{row['reload_forward_s']:.3f} s = {row['reload_forward_s'] / row['copy_s']:.1f}x "
          "the copy (cannot start before the last byte is written)")
    print(f"         fix/copy {row['fix_s'] / row['copy_s']:.1f}x (target <= 3x), fix/durable "
          f"copy {row['fix_s'] / row['durable_copy_s']:.1f}x; write/copy "
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
    parser.add_argument("--remembered", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side-by-side", type=int, metavar="PAIRS",
                        help="only this: BERT-base fixed PAIRS times with the sha256 remembered "
                             "and PAIRS times reading it, alternating in one process")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.strategy, args.threads, args.remembered)))
        return
    if args.side_by_side:
        result = side_by_side(str(bert_base()), args.strategy, args.side_by_side, args.threads)
        for name, r in result.items():
            print(f"sha256 {name}: median {r['wall_s']:.3f} s wall, {r['cpu_s']:.3f} s CPU "
                  f"({', '.join(map(str, r['all_wall_s']))})")
        return
    from headscope import assets

    sources = [assets.fetch("bert-tiny-splade")]
    if not args.skip_large:
        sources += [bert_base(), build_sharded(ROOT / "bert-base-random-sharded")]
        if args.large:
            sources.append(bert_large())
    # Each source twice, in fresh processes: its files' sha256 read by fix (a first fix of
    # them), then remembered (after an inspect of the same files, or an earlier fix).
    rows = [run_child(source, args.strategy, args.threads, remembered)
            for source in sources for remembered in (False, True)]
    for row in rows:
        show(row)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
