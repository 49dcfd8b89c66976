"""`inspect --weights-only org/name` against a Hub: bytes read vs the size of the files.

A model-zoo scan over the Hub should cost megabytes per model, not the whole weights. This serves
models from a local Hub-compatible server (tests/hub_server.py, 127.0.0.1 only, stopping by
itself) and runs the CLI on each as a fresh process pointed at it with HF_ENDPOINT and an empty
HF cache, then prints, per model, what the server sent (weights: the 8-byte length, the header
and the head's byte ranges; small files: config and tokenizer) against the repository's size.

Models: the real BERT-tiny SPLADE, the checkpoints trained here under models/, and the random
BERT-base and ModernBERT-base shapes of benchmarks/checkpoints.py (built once into /tmp with
torch; `--no-base` skips them).

    python benchmarks/bench_hub_weights_only.py [--no-base]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-base", action="store_true",
                        help="skip the BERT-base and ModernBERT-base shapes (no torch build)")
    args = parser.parse_args()

    from hub_server import HubServer

    from headscope import assets

    models = {"org/bert-tiny-splade": assets.fetch("bert-tiny-splade")}
    for folder in sorted((ROOT / "models").iterdir()):
        if (folder / "model.safetensors").is_file():
            models[f"org/{folder.name}"] = folder
    if not args.no_base:
        import checkpoints

        models["org/bert-base-shape"] = checkpoints.bert_base()
        models["org/modernbert-base-shape"] = checkpoints.modernbert_base()

    print(f"{'model':<28} {'weights':>11} {'weights read':>13} {'share':>7} "
          f"{'repo total':>11} {'all read':>10} {'requests':>8} {'wall':>6}")
    with HubServer(lifetime=1800) as hub, tempfile.TemporaryDirectory() as tmp:
        for repo_id, folder in models.items():
            hub.add_folder(repo_id, folder)
            env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(Path(tmp) / repo_id),
                       HF_HUB_DISABLE_TELEMETRY="1")
            env.pop("HF_HUB_OFFLINE", None)
            before = len(hub.requests)
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "headscope", "inspect",
                                     "--weights-only", repo_id, "--json", "-"], env=env,
                                    capture_output=True, text=True)
            wall = time.perf_counter() - start
            if result.returncode != 0:
                print(f"{repo_id}: exit {result.returncode}: {result.stderr.strip()}")
                return 1
            files = hub.repos[repo_id].files
            weight_names = [n for n in files if n.endswith(".safetensors")]
            weights = sum(len(files[n]) for n in weight_names)
            weights_read = sum(hub.served[f"{repo_id}/{n}"] for n in weight_names)
            total = sum(len(v) for v in files.values())
            read = hub.bytes_served(repo_id)
            print(f"{repo_id:<28} {_mb(weights):>11} {_mb(weights_read):>13} "
                  f"{weights_read / weights:>7.1%} {_mb(total):>11} {_mb(read):>10} "
                  f"{len(hub.requests) - before:>8} {wall:>5.1f}s")
    print("weights read: the safetensors length and header plus the head's tensors (a tied "
          "decoder is the input embeddings); all read: that plus config and tokenizer files.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
