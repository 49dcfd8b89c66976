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


def with_tokenizer(path: Path) -> Path:
    """BERT-tiny's tokenizer files beside the weights, as a real checkpoint has them (its
    uncased WordPiece vocabulary of 30,522 is BERT-base's; its ids fit every vocabulary here)."""
    import shutil

    from headscope import assets

    tiny = assets.fetch("bert-tiny-splade")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (path / name).is_file():
            shutil.copyfile(tiny / name, path / name)
    return path


def bert_base() -> Path:
    """BertForMaskedLM from BertConfig() defaults (L12 H768, vocab 30,522; ~440 MB, tied)."""
    from transformers import BertConfig, BertForMaskedLM

    return with_tokenizer(_build("bert-base-random", lambda: BertForMaskedLM(BertConfig())))


def bert_large() -> Path:
    """BertForMaskedLM at BERT-large's shape (L24 H1024, 16 heads, FFN 4,096, vocab 30,522;
    ~1.34 GB, tied)."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096)
    return with_tokenizer(_build("bert-large-random", lambda: BertForMaskedLM(config)))


def modernbert_base() -> Path:
    """ModernBertForMaskedLM from ModernBertConfig() defaults (22 layers, H768, vocab 50,368;
    ~600 MB), with BERT-tiny's tokenizer files beside it so that `headscope inspect` can run it
    (ModernBERT's own tokenizer is not available here)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    return with_tokenizer(_build("modernbert-base-random",
                                  lambda: ModernBertForMaskedLM(ModernBertConfig())))


if __name__ == "__main__":
    for build in (bert_base, bert_large, modernbert_base):
        print(build())
