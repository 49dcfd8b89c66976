"""Whether the probe fits the model's vocabulary: the unknown-token share and HS209."""

from __future__ import annotations

import pytest
import tiny_models

from headscope import checkpoint, probe
from headscope.findings import UNKNOWN_TOKEN_SHARE, probe_fit_findings
from headscope.probe import ProbeConfig, ProbePair, ProbeSet, content_sha256


def _set(pairs) -> ProbeSet:
    pairs = tuple(ProbePair(q, p) for q, p in pairs)
    return ProbeSet("test", "test-v1", pairs, content_sha256(pairs))


def test_unknown_token_share_counts_unknown_tokens_without_the_special_ones(tmp_path):
    folder = tiny_models.save_tiny("bert", tmp_path / "m")
    tokenizer = checkpoint.load_tokenizer(checkpoint.resolve(str(folder)))
    known = tiny_models.vocab_tokens()[-4:]  # real words of the 100-token vocabulary
    assert all(w in tokenizer.get_vocab() for w in known)
    pset = _set([(f"{known[0]} zzzq", f"{known[1]} {known[2]} {known[3]} qqqz")])
    tokens = tokenizer.tokenize("zzzq") + tokenizer.tokenize("qqqz")
    assert tokens == ["[UNK]", "[UNK]"]  # no word piece of these in the vocabulary
    # 6 tokens ([CLS]/[SEP] not counted), 2 of them unknown
    share = probe.unknown_token_share(tokenizer, pset, ProbeConfig(n_pairs=1))
    assert share == pytest.approx(2 / 6)
    # passages cut at max_passage_length, as the probe runs them: 2 tokens, none unknown
    cut = ProbeConfig(n_pairs=1, max_query_length=1, max_passage_length=2)
    assert probe.unknown_token_share(tokenizer, pset, cut) == 0.0


def test_a_tokenizer_without_an_unknown_token_has_no_share():
    class ByteLevel:
        unk_token_id = None

    assert probe.unknown_token_share(ByteLevel(), _set([("a b", "c d")]), ProbeConfig()) is None


def test_hs209_fires_above_five_percent_and_points_to_probe():
    assert UNKNOWN_TOKEN_SHARE == 0.05
    assert probe_fit_findings(None) == ()
    assert probe_fit_findings(0.05) == ()
    (f,) = probe_fit_findings(0.8824)
    assert (f.code, f.name, f.severity, f.value, f.threshold) == (
        "HS209", "probe-vocabulary-mismatch", "warning", 0.8824, 0.05)
    assert f.message == (
        "88.2% of the probe's tokens are unknown to the model's tokenizer (above 5%): the probe "
        "is not in the model's language, so the probe statistics, the bands and the recommended "
        "k describe the unknown token, not the model's text; inspect again with --probe FILE "
        "holding texts of the model's domain (one per line, or JSONL with text or "
        "query/passage).")
