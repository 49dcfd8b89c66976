"""Benchmark run_probe on the real BERT-tiny SPLADE checkpoint (not a test; prints a table).

1. Time: probe statistics for the whole k grid vs a bare forward pass over the same batches
   (tokenise + forward, logits discarded). Runs alternate so that load from other processes hits
   both alike; the table shows the median and the minimum of each and their ratios.
   Target: <= 1.15x.
2. Memory: a fresh subprocess loads the model and probes 64 or 1,024 pairs (128 or 2,048
   texts), next to the same for a bare forward pass. Loading peaks higher than probing, so the
   kernel's peak-RSS mark is reset after loading (/proc/self/clear_refs, Linux) and the run's own
   peak read from VmHWM; elsewhere resource.getrusage maxrss is shown. Target: flat. The built-in
   set has fewer pairs than 1,024 on most Pythons; larger sets repeat its pairs, which changes
   nothing about memory.

    python benchmarks/bench_probe.py [--repeats 5] [--pairs 64] [--memory 64 1024]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from headscope import assets
from headscope.probe import ProbeConfig, ProbeSet, builtin_candidates, content_sha256, run_probe


def load():
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = assets.fetch("bert-tiny-splade")
    model = AutoModelForMaskedLM.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path)


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
                _ = model(**enc).logits  # (B, T, V), dropped


def time_side_by_side(n_pairs: int, repeats: int) -> list[tuple[str, float, float]]:
    model, tokenizer = load()
    probe = probe_of(n_pairs)
    bias = model.cls.predictions.bias
    variants = {
        "bare forward": lambda: bare_forward(model, tokenizer, probe, ProbeConfig()),
        "probe, bias kept (6 thresholds)": lambda: run_probe(
            model, tokenizer, bias, probe, ProbeConfig(n_pairs=n_pairs)
        ),
        "probe, bias scaled (1 threshold)": lambda: run_probe(
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


def child(mode: str, n_pairs: int) -> None:
    """Runs in a fresh process: prints the RSS after loading and the peak RSS of the run (KiB)."""
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


def memory(mode: str, n_pairs: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(n_pairs)],
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
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child[0], int(args.child[1]))
        return

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, real BERT-tiny "
        f"(V = 30,522), k grid {ProbeConfig().ks}, batch {ProbeConfig().batch_size}"
    )
    rows = time_side_by_side(args.pairs, args.repeats)
    base_med, base_min = rows[0][1], rows[0][2]
    print(f"\nTime, {args.pairs} pairs, {args.repeats} alternating repeats (target <= 1.15x)")
    print(f"{'variant':<36}{'median s':>10}{'min s':>10}{'ratio med':>11}{'ratio min':>11}")
    for name, med, mn in rows:
        print(f"{name:<36}{med:>10.3f}{mn:>10.3f}{med / base_med:>10.2f}x{mn / base_min:>10.2f}x")

    print("\nPeak memory, fresh process per run (target: flat). RSS after loading, then the peak")
    print("RSS during the run (peak mark reset after loading); the bare forward pass shows what")
    print("torch and the tokenizer take on their own.")
    print(
        f"{'run':<14}{'pairs':>7}{'texts':>7}{'load peak MiB':>15}{'RSS base MiB':>14}"
        f"{'run peak MiB':>14}{'peak-base':>11}{'run s':>8}"
    )
    for mode in ("bare forward", "probe"):
        for n in args.memory:
            m = memory("probe" if mode == "probe" else "bare", n)
            load_peak, base, peak = (m[k] / 1024 for k in ("load_peak_kib", "base_kib", "peak_kib"))
            note = "" if m["reset"] else "  (no peak reset: maxrss)"
            print(
                f"{mode:<14}{n:>7}{2 * n:>7}{load_peak:>15.1f}{base:>14.1f}{peak:>14.1f}"
                f"{peak - base:>11.1f}{m['seconds']:>8.1f}{note}"
            )


if __name__ == "__main__":
    main()
