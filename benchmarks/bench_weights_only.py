"""The CLI's weights-only inspect vs a minimal safetensors + numpy script (target: <= 1.5x).

Both run as fresh processes on a ModernBERT-base-shaped checkpoint (random weights from
`ModernBertConfig()` defaults: 50,368 x 768 decoder, 22 layers, one 599 MB safetensors file),
with a synthetic 50,280-token BPE tokenizer beside it so that the CLI does its real-token work.
The checkpoint is built once (with torch) into the temp folder, never into the repository:

  1. `python -m headscope inspect CKPT --weights-only --json -` (end to end: imports, header,
     head tensors, tokenizer, every statistic, findings, JSON);
  2. MINIMAL below: open the file with safetensors' numpy API, read the decoder tensor, print
     its mean row norm.

One warm-up run of each fills the page cache and the bytecode cache; then the pairs run
interleaved, so that load from other processes hits both alike. Prints each pair's wall time and
CPU time (user + system: less sensitive to a shared machine), the medians and their ratios.

Bytecode: an installed package has its modules compiled once (pip compiles them at install; a
source checkout caches them on first import). Where PYTHONDONTWRITEBYTECODE is set (as on the
machine these figures come from), every run would compile headscope's modules again (~0.04 s
CPU) while numpy and safetensors load their installed bytecode, so both commands run with a
private cache (PYTHONPYCACHEPREFIX under the checkpoint's folder) unless `--no-bytecode-cache`.

    python benchmarks/bench_weights_only.py [--pairs 5] [--model DIR] [--no-bytecode-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODEL = Path(tempfile.gettempdir()) / "headscope-bench" / "modernbert-base-shape"
N_TOKENS = 50_280  # ModernBERT's tokenizer; its 50,368 decoder rows are padded past it

MINIMAL = """\
import sys
import numpy as np
from safetensors import safe_open

with safe_open(sys.argv[1] + "/model.safetensors", framework="np") as fh:
    names = set(fh.keys())
    name = "decoder.weight" if "decoder.weight" in names else \\
        "model.embeddings.tok_embeddings.weight"  # tied: the decoder is the embeddings
    weight = fh.get_tensor(name)  # (V, E)
print(float(np.linalg.norm(weight, axis=1).mean()))
"""


def build(path: Path) -> None:
    """A ModernBERT-base-shaped masked LM with random weights and a synthetic tokenizer (each
    written only when absent)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    path.mkdir(parents=True, exist_ok=True)
    if not (path / "model.safetensors").is_file():
        import torch
        from transformers import ModernBertConfig, ModernBertForMaskedLM

        print(f"building {path} (once)", file=sys.stderr)
        torch.manual_seed(0)
        ModernBertForMaskedLM(ModernBertConfig()).save_pretrained(str(path))
    if (path / "tokenizer.json").is_file():
        return
    # Byte-level BPE like ModernBERT's: 256 byte symbols, then merges of an earlier token with
    # a byte (tokens of 2-5 symbols, a 3-4 MB tokenizer.json like the real one), then the
    # specials at the end (ids 50,275..50,279).
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tokens = [chr(c) for c in range(33, 127)] + [chr(0x100 + c) for c in range(256 - 94)]
    seen, merges, i = set(tokens), [], 0
    while len(tokens) < N_TOKENS - len(specials):
        a, b = tokens[i // 12], tokens[(7 * i + 3) % 256]
        i += 1
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
            merges.append((a, b))
    tok = Tokenizer(BPE({t: n for n, t in enumerate(tokens)}, merges, unk_token="[UNK]"))
    tok.add_special_tokens(specials)
    tok.save(str(path / "tokenizer.json"))
    names = ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token")
    (path / "tokenizer_config.json").write_text(
        "{" + ", ".join(f'"{n}": "{t}"' for n, t in zip(names, specials, strict=True)) + "}\n")


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, the child alone) and stdout of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="checkpoint folder; built there when absent")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="run both commands with this environment's bytecode setting")
    args = parser.parse_args()
    env = None
    if not args.no_bytecode_cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(args.model.parent / "pycache")
    bytecode = "cached" if env is not None or not sys.dont_write_bytecode else "compiled each run"
    build(args.model)
    size = (args.model / "model.safetensors").stat().st_size
    cli = [sys.executable, "-m", "headscope", "inspect", str(args.model), "--weights-only",
           "--json", "-"]
    minimal = [sys.executable, "-c", MINIMAL, str(args.model)]
    load_before = os.getloadavg()[0]
    _, _, out_cli = run(cli, env)  # warm-up: page cache, bytecode
    _, _, out_min = run(minimal, env)
    mean_cli = json.loads(out_cli)["weights"]["row_norm_all"]["mean"]
    print(f"{args.model} ({size / 1e6:.0f} MB); mean row norm: CLI {mean_cli:.6f}, "
          f"minimal {float(out_min):.6f}; bytecode {bytecode}")
    print(f"{'pair':>6} {'CLI wall':>9} {'minimal':>8} {'ratio':>6}   {'CLI cpu':>8} "
          f"{'minimal':>8} {'ratio':>6}")
    runs: list[tuple[float, float, float, float]] = []
    for n in range(args.pairs):
        a, ca, _ = run(cli, env)
        b, cb, _ = run(minimal, env)
        runs.append((a, b, ca, cb))
        print(f"{n + 1:>6} {a:>8.2f}s {b:>7.2f}s {a / b:>5.2f}x   {ca:>7.2f}s {cb:>7.2f}s "
              f"{ca / cb:>5.2f}x")
    a, b, ca, cb = (statistics.median(r[i] for r in runs) for i in range(4))
    print(f"{'median':>6} {a:>8.2f}s {b:>7.2f}s {a / b:>5.2f}x   {ca:>7.2f}s {cb:>7.2f}s "
          f"{ca / cb:>5.2f}x   (target <= 1.5x wall)")
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
