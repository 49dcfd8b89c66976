"""Weights-only inspect vs a full `from_pretrained` of the same checkpoint (target: >= 20x).

The weights-only mode reads just the head tensors from the safetensors files; the full path
instantiates the model. Both are timed side by side, alternating, in one process, on the real
BERT-tiny and on a BERT-base-sized model built from a config (random weights, saved sharded).

    python benchmarks/bench_inspect.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    from headscope import api, assets

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "bert-base-from-config"
        torch.manual_seed(0)
        BertForMaskedLM(BertConfig()).save_pretrained(base, max_shard_size="200MB")
        # The real BERT-tiny's tokenizer makes the folder inspectable like a real checkpoint.
        tiny = assets.fetch("bert-tiny-splade")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (base / name).write_bytes((tiny / name).read_bytes())
        cases = [("real BERT-tiny (17.7 MB)", tiny), ("BERT-base from config (~440 MB, sharded)",
                                                       base)]
        print(f"{'checkpoint':<42} {'weights-only':>13} {'from_pretrained':>16} {'ratio':>8}")
        for label, path in cases:
            def weights_only(path=path):
                api.inspect(str(path), options=api.InspectOptions(weights_only=True))

            def full(path=path):
                AutoModelForMaskedLM.from_pretrained(str(path))

            weights_only(), full()  # warm the page cache and imports
            w = _time(weights_only, args.repeats)
            f = _time(full, args.repeats)
            print(f"{label:<42} {w:>12.3f}s {f:>15.3f}s {f / w:>7.1f}x")


if __name__ == "__main__":
    main()
