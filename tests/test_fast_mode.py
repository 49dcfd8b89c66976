"""`inspect --fast` (probe.fast_config: 64 pairs, passages cut at 64 tokens) recommends what the
default probe (256 pairs, 128 tokens) recommends, on every model of the test suite: the tiny
models of each family here, and the real BERT-tiny with its three labelled simulations (slow:
the default probe of a simulation takes about a minute on 2 shared cores)."""

from __future__ import annotations

import pytest
import tiny_models

from headscope import api, checkpoint, probe, simulate
from headscope.probe import ProbeConfig, fast_config

# Three families with different heads run by default (a bias, a factorised embedding, no
# bias); the rest, deberta-v2 without a decoder included, are slow.
QUICK = ("bert", "albert", "modernbert")
FAMILIES = [pytest.param(f, marks=() if f in QUICK else pytest.mark.slow)
            for f in tiny_models.FAMILIES]


def _recommendations(loaded):
    """The bands rule's recommendation from the default and the fast probe (the bands by name:
    the shipped default may be a constant, the same with any probe)."""
    bands = api.InspectOptions(rule="bands")
    default = api.inspect_loaded(loaded, probe_config=ProbeConfig(), options=bands)
    fast = api.inspect_loaded(loaded, probe_config=fast_config(), options=bands)
    assert default.probe.n_pairs == 256 and fast.probe.n_pairs == 64
    assert fast.probe.max_passage_length == 64
    return default.recommendation, fast.recommendation


def _same(default, fast):
    assert (fast.k, fast.scale_bias, fast.rule) == (default.k, default.scale_bias, default.rule)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_mode_recommends_as_the_default_on_tiny_models(tiny_checkpoint, family):
    loaded = checkpoint.load(checkpoint.resolve(str(tiny_checkpoint(family))))
    _same(*_recommendations(loaded))


@pytest.mark.slow
@pytest.mark.parametrize("where", [None, "bias", "projection", "scale-only"])
def test_fast_mode_recommends_as_the_default_on_bert_tiny_and_its_simulations(bert_tiny_dir,
                                                                             where):
    loaded = checkpoint.load(checkpoint.resolve(str(bert_tiny_dir)))
    if where is not None:
        texts = [p.passage for p in probe.builtin_probe(32).pairs]
        simulate.make_dense_variant(loaded.model, loaded.tokenizer, texts, where=where)
    default, fast = _recommendations(loaded)
    _same(default, fast)
    # the recommendations of the calibrated bands (docs/calibration.md; tests/test_recommend_real)
    assert (default.k, default.scale_bias) == {None: (4.0, False), "bias": (16.0, True),
                                               "projection": (8.0, False),
                                               "scale-only": (32.0, False)}[where]
