"""Benchmark run_probe against a bare forward pass (not a test; prints tables).

1. Time: probe statistics for the whole k grid, output bias kept, vs a bare forward pass over the
   same batches (tokenise + forward, logits discarded), on the real BERT-tiny SPLADE and on a
   ModernBERT-base-shaped checkpoint (ModernBertConfig() defaults, random weights, built once by
   benchmarks/checkpoints.py; tokenised with BERT-tiny's tokenizer, whose ids fit its vocabulary).
   Runs alternate so that load from other processes hits both alike; the table shows the median
   and the minimum of each and their ratios. Target: <= 1.1x.
2. Memory: a fresh subprocess loads the model and probes 64 or 1,024 pairs (128 or 2,048
   texts), next to the same for a bare forward pass. Loading peaks higher than probing, so the
   kernel's peak-RSS mark is reset after loading (/proc/self/clear_refs, Linux) and the run's own
   peak read from VmHWM; elsewhere resource.getrusage maxrss is shown. Target: flat. The built-in
   set has fewer pairs than 1,024 on most Pythons; larger sets repeat its pairs, which changes
   nothing about memory.

Torch runs on --threads threads (default 1; on a shared machine two contending OpenMP threads
made forward passes several times slower and the ratios meaningless).

    python benchmarks/bench_probe.py [--repeats 5] [--pairs 64] [--memory 64 1024]
        [--modernbert-pairs 16] [--modernbert-repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoints import modernbert_base  # noqa: E402

from headscope import assets  # noqa: E402
from headscope.probe import (  # noqa: E402
    ProbeConfig,
    ProbeSet,
    builtin_candidates,
    content_sha256,
    run_probe,
)


def load(which: str = "bert-tiny"):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tiny = assets.fetch("bert-tiny-splade")
    path = tiny if which == "bert-tiny" else modernbert_base()
    model = AutoModelForMaskedLM.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(tiny)


def probe_of(n_pairs: int) -> ProbeSet:
    base = builtin_candidates()
    pairs = tuple(base[i % len(base)] for i in range(n_pairs))
    return ProbeSet(f"builtin x{n_pairs}", "bench", pairs, content_sha256(pairs))


def bare_forward(model, tokenizer, probe: ProbeSet, config: ProbeConfig) -> None:
    """What any probe must at least do: tokenise and run the model on every batch."""
    with torch.inference_mode():
        for start in range(0, len(probe.pairs), config.batch_size):
            batch = probe.pairs[start : start + config.batch_size]
            for texts, max_len in (
                ([p.query for p in batch], config.max_query_length),
                ([p.passage for p in batch], config.max_passage_length),
            ):
                enc = tokenizer(
                    texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
                )
                accepted = inspect.signature(model.forward).parameters
                _ = model(**{k: v for k, v in enc.items() if k in accepted}).logits  # dropped


def time_side_by_side(which: str, n_pairs: int, repeats: int) -> list[tuple[str, float, float]]:
    model, tokenizer = load(which)
    probe = probe_of(n_pairs)
    bias = model.get_output_embeddings().bias
    variants = {
        "bare forward": lambda: bare_forward(model, tokenizer, probe, ProbeConfig()),
        "probe, bias kept (default)": lambda: run_probe(
            model, tokenizer, bias, probe, ProbeConfig(n_pairs=n_pairs)
        ),
        "probe, bias kept, every k counted": lambda: run_probe(
            model, tokenizer, bias, probe, ProbeConfig(n_pairs=n_pairs, count_every_k=True)
        ),
        "probe, bias divided": lambda: run_probe(
            model, tokenizer, bias, probe, ProbeConfig(n_pairs=n_pairs, scale_bias=True)
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up: allocator, thread pools, tokenizer caches
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return [(name, statistics.median(ts), min(ts)) for name, ts in times.items()]


def _status_kib(field: str) -> int | None:
    """A VmRSS / VmHWM line of /proc/self/status in KiB (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0), so that the peak of
    the run is not hidden under the higher peak of loading the model."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back first (glibc)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(mode: str, n_pairs: int, threads: int) -> None:
    """Runs in a fresh process: prints the RSS after loading and the peak RSS of the run (KiB)."""
    torch.set_num_threads(threads)
    model, tokenizer = load()
    probe = probe_of(n_pairs)
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak()
    base = _status_kib("VmRSS") if reset else load_peak
    t0 = time.perf_counter()
    if mode == "probe":
        bias = model.cls.predictions.bias
        run_probe(model, tokenizer, bias, probe, ProbeConfig(n_pairs=n_pairs))
    else:
        bare_forward(model, tokenizer, probe, ProbeConfig())
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "load_peak_kib": load_peak,
                "base_kib": base,
                "peak_kib": peak,
                "reset": reset,
                "seconds": seconds,
            }
        )
    )


def memory(mode: str, n_pairs: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(n_pairs), "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=64, help="pairs in the timing runs")
    parser.add_argument("--memory", type=int, nargs="*", default=[64, 1024])
    parser.add_argument("--modernbert-pairs", type=int, default=16)
    parser.add_argument("--modernbert-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        child(args.child[0], int(args.child[1]), args.threads)
        return

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, k grid "
        f"{ProbeConfig().ks}, batch {ProbeConfig().batch_size}"
    )
    for which, n_pairs, repeats in (("bert-tiny", args.pairs, args.repeats),
                                    ("modernbert-base shape", args.modernbert_pairs,
                                     args.modernbert_repeats)):
        if n_pairs <= 0:
            continue
        rows = time_side_by_side(which, n_pairs, repeats)
        base_med, base_min = rows[0][1], rows[0][2]
        print(f"\n{which}: time, {n_pairs} pairs, {repeats} alternating repeats "
              "(target <= 1.1x with the bias kept)")
        print(f"{'variant':<36}{'median s':>10}{'min s':>10}{'ratio med':>11}{'ratio min':>11}")
        for name, med, mn in rows:
            print(f"{name:<36}{med:>10.3f}{mn:>10.3f}{med / base_med:>10.2f}x"
                  f"{mn / base_min:>10.2f}x", flush=True)

    print("\nPeak memory, fresh process per run (target: flat). RSS after loading, then the peak")
    print("RSS during the run (peak mark reset after loading); the bare forward pass shows what")
    print("torch and the tokenizer take on their own.")
    print(
        f"{'run':<14}{'pairs':>7}{'texts':>7}{'load peak MiB':>15}{'RSS base MiB':>14}"
        f"{'run peak MiB':>14}{'peak-base':>11}{'run s':>8}"
    )
    for mode in ("bare forward", "probe"):
        for n in args.memory:
            m = memory("probe" if mode == "probe" else "bare", n, args.threads)
            load_peak, base, peak = (m[k] / 1024 for k in ("load_peak_kib", "base_kib", "peak_kib"))
            note = "" if m["reset"] else "  (no peak reset: maxrss)"
            print(
                f"{mode:<14}{n:>7}{2 * n:>7}{load_peak:>15.1f}{base:>14.1f}{peak:>14.1f}"
                f"{peak - base:>11.1f}{m['seconds']:>8.1f}{note}"
            )


if __name__ == "__main__":
    main()
