"""Random-weight checkpoints at real model shapes, for the benchmarks (code-path stand-ins, not
trained models): built once from a transformers config and cached under /tmp.

    python benchmarks/checkpoints.py            # builds both
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("HEADSCOPE_BENCH_DIR", "/tmp/headscope-bench"))


def _build(name: str, make) -> Path:
    path = ROOT / name
    if (path / "config.json").is_file():
        return path
    import torch

    torch.manual_seed(0)
    model = make()
    tmp = path.with_name(name + ".partial")
    model.save_pretrained(tmp)  # one safetensors file below transformers' 5 GB shard size
    tmp.rename(path)
    return path


def bert_base() -> Path:
    """BertForMaskedLM from BertConfig() defaults (L12 H768, vocab 30,522; ~440 MB, tied)."""
    from transformers import BertConfig, BertForMaskedLM

    return _build("bert-base-random", lambda: BertForMaskedLM(BertConfig()))


def modernbert_base() -> Path:
    """ModernBertForMaskedLM from ModernBertConfig() defaults (22 layers, H768, vocab 50,368;
    ~600 MB), with BERT-tiny's tokenizer files beside it so that `headscope inspect` can run it
    (its ids, < 30,522, fit the vocabulary; ModernBERT's own tokenizer is not available here)."""
    import shutil

    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from headscope import assets

    path = _build("modernbert-base-random", lambda: ModernBertForMaskedLM(ModernBertConfig()))
    tiny = assets.fetch("bert-tiny-splade")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (path / name).is_file():
            shutil.copyfile(tiny / name, path / name)
    return path


if __name__ == "__main__":
    for build in (bert_base, modernbert_base):
        print(build())
