"""headscope.probe: probe sets, probe files, and run_probe against a naive re-implementation that
materialises every logit of the probe set."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headscope.errors import InputError
from headscope.probe import (
    PROBE_SET_VERSION,
    ProbeConfig,
    ProbePair,
    ProbeSet,
    builtin_candidates,
    builtin_probe,
    content_sha256,
    counted_ks,
    load_probe_file,
    run_probe,
)
from tests.tiny_models import build_tiny, write_tokenizer

# --------------------------------------------------------------------------------------------
# Built-in probe set


def test_builtin_probe_is_deterministic_and_sized():
    a = builtin_probe(40)
    b = builtin_probe(40)
    assert a == b
    assert len(a.pairs) == 40
    assert (a.name, a.version) == ("builtin", PROBE_SET_VERSION)
    assert builtin_probe(256).pairs[:40] == a.pairs  # a prefix of the larger set
    assert len(builtin_probe().pairs) == 256
    # The recorded hash is the sha256 of the set written as JSONL (sorted keys).
    lines = "".join(
        json.dumps({"passage": p.passage, "query": p.query}, ensure_ascii=False) + "\n"
        for p in a.pairs
    )
    assert a.sha256 == hashlib.sha256(lines.encode("utf-8")).hexdigest()


# sha256 of builtin_probe(256) per Python version (pydoc_data.topics changes between versions);
# recommendations and documented numbers depend on these pairs staying as they are.
BUILTIN_PROBE_SHA256 = {
    (3, 11): "016218157a896e9a923dc1e1db1040bd6ca1e579720f56eca71cd2fcd1bf952b",
}


@pytest.mark.skipif(sys.version_info[:2] not in BUILTIN_PROBE_SHA256,
                    reason="the built-in probe's content is pinned for other Python versions")
def test_builtin_probe_content_is_pinned():
    assert builtin_probe(256).sha256 == BUILTIN_PROBE_SHA256[sys.version_info[:2]]


def test_builtin_pairs_are_inverse_cloze_prose():
    pairs = builtin_candidates()
    assert len(pairs) >= 256
    assert len({p.passage for p in pairs}) == len(pairs)
    for p in pairs:
        assert 4 <= len(p.query.split()) <= 16
        assert 40 <= len(p.passage.split()) <= 150
        assert p.query not in p.passage  # the query sentence was taken out
        assert ">>>" not in p.passage and "::=" not in p.passage


def test_builtin_probe_errors():
    n = len(builtin_candidates())
    with pytest.raises(InputError) as err:
        builtin_probe(n + 1)
    assert str(err.value) == (
        f"The built-in probe set has {n} pairs on this Python, fewer than the {n + 1} requested; "
        f"ask for at most {n} or pass a probe file."
    )
    with pytest.raises(InputError) as err:
        builtin_probe(0)
    assert str(err.value) == "n_pairs = 0 must be at least 1; pass e.g. 256."


# --------------------------------------------------------------------------------------------
# Probe files


def test_load_text_file_derives_inverse_cloze_pairs(tmp_path: Path):
    path = tmp_path / "probe.txt"
    path.write_text(
        "Sparse models need calibration. The head scale matters a lot. It is large.\n"
        "\n"
        "One two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen. Second sentence here!\n",
        encoding="utf-8",
    )
    probe = load_probe_file(path)
    assert probe.pairs == (
        ProbePair("Sparse models need calibration.", "The head scale matters a lot. It is large."),
        ProbePair(
            "One two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen",
            "Second sentence here!",
        ),
    )
    assert (probe.name, probe.version) == (str(path), "file-v1")
    assert probe.sha256 == content_sha256(probe.pairs)


def test_load_jsonl_both_forms_and_round_trip(tmp_path: Path):
    path = tmp_path / "probe.jsonl"
    path.write_text(
        json.dumps({"text": "First one. Then the rest."})
        + "\n"
        + json.dumps({"query": "what is k", "passage": "k divides  the head."})
        + "\n",
        encoding="utf-8",
    )
    probe = load_probe_file(path)
    assert probe.pairs == (
        ProbePair("First one.", "Then the rest."),
        ProbePair("what is k", "k divides the head."),
    )
    # Writing the built-in set as JSONL and reading it back keeps its hash.
    builtin = builtin_probe(12)
    out = tmp_path / "builtin.jsonl"
    out.write_text(
        "".join(json.dumps({"query": p.query, "passage": p.passage}) + "\n" for p in builtin.pairs),
        encoding="utf-8",
    )
    assert load_probe_file(out).sha256 == builtin.sha256


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "empty.txt",
            "",
            "Probe file {p} is empty; put one text per line, or JSONL with "
            '"text" or "query" and "passage".',
        ),
        (
            "blank.txt",
            "\n  \n",
            "Probe file {p} is empty; put one text per line, or JSONL with "
            '"text" or "query" and "passage".',
        ),
        (
            "single.txt",
            "Two sentences here. Yes.\nonly one sentence\n",
            "Probe file {p}, line 2: the text has a single sentence, so no query can be cut from "
            "it; give at least two sentences per text, or use JSONL with "
            '{{"query": ..., "passage": ...}}.',
        ),
        (
            "bad.jsonl",
            '{"text": "A b. C d."}\n{"text": \n',
            "Probe file {p}, line 2: not valid JSON (Expecting value).",
        ),
        (
            "list.jsonl",
            '["a", "b"]\n',
            'Probe file {p}, line 1: expected a JSON object with "text" or "query" and "passage".',
        ),
        (
            "half.jsonl",
            '\n{"query": "q", "passage": ""}\n',
            'Probe file {p}, line 2: "query" and "passage" must both be non-empty strings.',
        ),
        (
            "other.jsonl",
            '{"body": "x"}\n',
            'Probe file {p}, line 1: expected a non-empty string under "text", or "query" and '
            '"passage".',
        ),
    ],
)
def test_load_probe_file_errors(tmp_path: Path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_probe_file(path)
    assert str(err.value) == message.format(p=path)


def test_load_probe_file_missing_and_not_utf8(tmp_path: Path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(InputError) as err:
        load_probe_file(missing)
    assert str(err.value) == f"Probe file {missing} does not exist; pass an existing file."
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"Fine line. Yes.\nCaf\xe9 au lait. Bon.\n")
    with pytest.raises(InputError) as err:
        load_probe_file(latin)
    assert str(err.value) == f"Probe file {latin}, line 2: not valid UTF-8; save the file as UTF-8."


# --------------------------------------------------------------------------------------------
# run_probe against a naive re-implementation


def naive_probe(model, tokenizer, bias, pairs, config):
    """Materialise all logits, transform each token logit for each k, pool, loop over pairs."""
    accepted = ("input_ids", "attention_mask", "token_type_ids")
    batches = []
    with torch.no_grad():
        for s in range(0, len(pairs), config.batch_size):
            chunk = pairs[s : s + config.batch_size]
            enc_logits = []
            for texts, max_len in (
                ([p.query for p in chunk], config.max_query_length),
                ([p.passage for p in chunk], config.max_passage_length),
            ):
                enc = tokenizer(
                    texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
                )
                params = inspect.signature(model.forward).parameters
                inputs = {k: v for k, v in enc.items() if k in accepted and k in params}
                logits = model(**inputs).logits.double().numpy()  # (B, T, V)
                enc_logits.append((logits, enc["attention_mask"].numpy().astype(bool)))
            batches.append(enc_logits)
    b = None if bias is None else bias.detach().double().numpy()
    out = []
    for k in config.ks:

        def tr(x, k=k):
            if b is None or config.scale_bias:
                return x / k
            return (x - b) / k + b

        pos = total = 0
        values = []
        n = aq = ad = 0
        act_w, s_pos, s_neg, cos, losses = [], [], [], [], []
        for (ql, qm), (dl, dm) in batches:
            reps = []
            for logits, mask in ((ql, qm), (dl, dm)):
                x = tr(logits)  # (B, T, V) transformed token logits
                valid = x[mask]  # (N, V)
                pos += int((valid > 0).sum())
                total += valid.size
                values.append(valid.ravel())
                w = np.log1p(np.maximum(x, 0))
                reps.append(np.stack([w[i][mask[i]].max(axis=0) for i in range(len(w))]))
            wq, wd = reps
            bsz = len(wq)
            n += bsz
            aq += int((wq > 0).sum())
            ad += int((wd > 0).sum())
            act_w.append(wd[wd > 0])
            s_pos += [float(wq[i] @ wd[i]) for i in range(bsz)]
            if bsz < 2:
                continue
            row_loss = []
            for i in range(bsz):
                scores = [float(wq[i] @ wd[j]) for j in range(bsz)]
                m = max(scores)
                row_loss.append(m + math.log(sum(math.exp(v - m) for v in scores)) - scores[i])
                for j in range(bsz):
                    if i != j:
                        s_neg.append(scores[j])
                        den = np.linalg.norm(wd[i]) * np.linalg.norm(wd[j])
                        cos.append(float(wd[i] @ wd[j]) / den if den > 0 else 0.0)
            losses.append(sum(row_loss) / bsz)
        aw = np.concatenate(act_w)
        allv = np.concatenate(values)
        out.append(
            dict(
                k=float(k),
                frac_positive=pos / total,
                logit_p01=np.percentile(allv, 1),
                logit_p50=np.percentile(allv, 50),
                logit_p99=np.percentile(allv, 99),
                term_weight_mean=float(aw.mean()) if aw.size else 0.0,
                term_weight_max=float(aw.max()) if aw.size else 0.0,
                share_above_5=float((aw > 5).mean()) if aw.size else 0.0,
                active_query=aq / n,
                active_passage=ad / n,
                active_query_share=aq / n / ql.shape[-1],
                active_passage_share=ad / n / ql.shape[-1],
                cosine_unrelated=float(np.mean(cos)),
                score_pos=float(np.mean(s_pos)),
                score_neg=float(np.mean(s_neg)),
                start_loss=float(np.mean(losses)),
            )
        )
    return out


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    write_tokenizer(path)
    return AutoTokenizer.from_pretrained(str(path))


SHORT = (
    ProbePair("the head", "a rank of the model."),
    ProbePair("scale", "the sparse term weight of a query."),
    ProbePair("loss of the model and its norm", "bias."),
)


def small_probe(n: int) -> ProbeSet:
    """Built-in pairs (truncated by the max lengths) interleaved with short ones, so that every
    batch has padding."""
    long = builtin_probe(n).pairs
    pairs = tuple(p for i, pair in enumerate(long) for p in (pair, SHORT[i % 3]))[:n]
    return ProbeSet("small", "test", pairs, content_sha256(pairs))


@pytest.mark.parametrize(
    "family, scale_bias, count_every_k",
    [("bert", False, True), ("bert", False, False), ("bert", True, False),
     ("modernbert", False, True)],
)
def test_run_probe_matches_naive(tiny_tokenizer, family, scale_bias, count_every_k):
    model = build_tiny(family)
    bias = model.get_output_embeddings().bias
    with torch.no_grad():  # a bias large enough that an undivided one moves the active set
        bias.add_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(5)) * 3)
    probe = small_probe(11)
    config = ProbeConfig(
        ks=(1, 2, 8, 1.5),  # unsorted, and a k between two others (headscope only divides)
        n_pairs=9,
        batch_size=4,
        max_query_length=12,
        max_passage_length=24,
        scale_bias=scale_bias,
        sample_size=50_000,
        count_every_k=count_every_k,
    )
    calls = []
    model.train()  # run_probe must evaluate in eval mode and restore the mode
    result = run_probe(
        model,
        tiny_tokenizer,
        bias,
        probe,
        config,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert model.training
    model.eval()
    assert calls == [(0, 9), (4, 9), (8, 9), (9, 9)]  # start, then batches of 4, 4 and 1
    assert result.n_pairs == 9 and result.config == config
    assert result.probe_sha256 == content_sha256(probe.pairs[:9])
    expected = naive_probe(model, tiny_tokenizer, bias, probe.pairs[:9], config)
    # With the bias kept, only k = 1 is counted unless every k is asked for; the others are
    # estimated (exact count at k = 1 plus the sampled share crossing zero) within their error.
    counted = count_every_k or scale_bias
    exact = [f for f in expected[0] if not f.startswith("logit_p")]
    for got, exp in zip(result.per_k, expected, strict=True):
        is_exact = counted or got.k == 1
        assert got.frac_positive_exact is is_exact
        for name in exact:
            if name == "frac_positive" and not is_exact:
                assert 0 < got.frac_positive_se < 0.01
                assert abs(got.frac_positive - exp[name]) < 4 * got.frac_positive_se
                continue
            assert getattr(got, name) == pytest.approx(exp[name], rel=1e-9, abs=1e-12), name
        if is_exact:
            assert got.frac_positive_se == 0.0
        # Percentiles come from a sample: within 5% of the logit range.
        width = exp["logit_p99"] - exp["logit_p01"]
        for name in ("logit_p01", "logit_p50", "logit_p99"):
            assert abs(getattr(got, name) - exp[name]) < 0.05 * width, name
    if scale_bias:
        assert len({s.frac_positive for s in result.per_k}) == 1
        assert len({s.active_passage for s in result.per_k}) == 1
    else:
        assert len({s.active_passage for s in result.per_k}) > 1
    # Deterministic for a seed.
    again = run_probe(model, tiny_tokenizer, bias, probe, config)
    assert again.per_k == result.per_k


def test_run_probe_without_bias_uses_plain_division(tiny_tokenizer):
    model = build_tiny("bert")
    probe = small_probe(6)
    config = ProbeConfig(
        ks=(1, 4), n_pairs=6, batch_size=3, max_query_length=10, max_passage_length=16
    )
    result = run_probe(model, tiny_tokenizer, None, probe, config)
    exp = naive_probe(model, tiny_tokenizer, None, probe.pairs, config)
    for got, e in zip(result.per_k, exp, strict=True):
        assert got.score_pos == pytest.approx(e["score_pos"], rel=1e-9)
        assert got.frac_positive == pytest.approx(e["frac_positive"], rel=1e-12)
    assert result.probe_sha256 == probe.sha256


def test_run_probe_errors(tiny_tokenizer):
    model = build_tiny("bert")
    probe = small_probe(2)
    with pytest.raises(InputError) as err:
        run_probe(model, tiny_tokenizer, torch.zeros(7), probe, ProbeConfig())
    assert str(err.value) == (
        "The output bias has shape (7,) but the model has 100 vocabulary rows; pass the bias "
        "of this model's MLM head."
    )
    with pytest.raises(InputError) as err:
        run_probe(model, tiny_tokenizer, None, probe, ProbeConfig(batch_size=0))
    assert str(err.value) == "ProbeConfig.batch_size = 0 must be >= 1."
    with pytest.raises(InputError) as err:
        run_probe(model, tiny_tokenizer, None, ProbeSet("e", "v", (), ""), ProbeConfig())
    assert str(err.value) == "Probe set 'e' has no pairs; pass a non-empty probe set."


# --------------------------------------------------------------------------------------------
# The real BERT-tiny SPLADE checkpoint


def test_real_bert_tiny_probe_is_plausible(bert_tiny_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(bert_tiny_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(bert_tiny_dir)
    config = ProbeConfig(ks=(1, 4, 16), n_pairs=32, batch_size=16)
    result = run_probe(model, tokenizer, model.cls.predictions.bias, builtin_probe(32), config)
    k1, k4, k16 = result.per_k
    for s in result.per_k:
        assert all(math.isfinite(v) for v in vars(s).values())
    # Measured: at k = 1 the logits are mostly negative (mean about -7), so SPLADE stays sparse.
    assert -10 < k1.logit_p50 < -4
    assert k1.logit_p99 < 0 and k1.frac_positive < 0.001
    assert 5 < k1.active_query < 300 and 20 < k1.active_passage < 1000
    assert k1.active_query_share == pytest.approx(k1.active_query / 30522)
    # A trained SPLADE model ranks the matching passage first on average.
    assert k1.score_pos > 2 * k1.score_neg
    assert k1.start_loss < math.log(16)
    # Dividing by k shrinks weights and scores: the start loss moves towards log(B).
    assert k16.term_weight_mean < k4.term_weight_mean < k1.term_weight_mean
    assert abs(k16.logit_p50) < abs(k1.logit_p50)


def test_counted_ks():
    """Only an undivided, non-zero bias makes the thresholds differ across k: then k = 1 (or the
    first k) is counted exactly and the others are estimated, unless every k is asked for."""
    bias = np.array([0.5, -1.0, 0.0])
    assert counted_ks((1, 2, 4), bias, False, False) == (True, False, False)
    assert counted_ks((2, 1, 4), bias, False, False) == (False, True, False)
    assert counted_ks((2, 4), bias, False, False) == (True, False)
    assert counted_ks((1, 2, 4), bias, False, True) == (True, True, True)
    for b, scale in ((None, False), (bias, True), (np.zeros(3), False)):
        assert counted_ks((1, 2, 4), b, scale, False) == (True, True, True)


@pytest.mark.parametrize("active_share", [0.01, 0.2, 0.6])
def test_token_counts_and_pooling_match_a_naive_loop(active_share):
    """The CPU reduction against a plain loop over the tokens under the mask: max-pooled logits
    and, per threshold, the tokens x columns above it. A head where few columns ever exceed
    their threshold (compared on those columns alone) and one where most do (the full pass)
    give the naive counts exactly, with right, left and inner padding."""
    from headscope.probe import _Reducer

    rng = np.random.default_rng(int(active_share * 100))
    n_b, n_t, vocab = 4, 9, 400
    logits = rng.normal(size=(n_b, n_t, vocab)).astype(np.float32) - 6.0  # all below 0
    hot = rng.random(vocab) < active_share  # columns with some logit above the thresholds
    logits[:, :, hot] += rng.normal(6.0, 3.0, size=(n_b, n_t, int(hot.sum())))
    mask = np.ones((n_b, n_t), dtype=np.int64)
    mask[0, 6:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    mask[2, [2, 5]] = 0  # holes: rows gathered, not viewed
    mask[3, :] = 0  # nothing under the mask
    thresholds = np.stack([np.zeros(vocab), rng.normal(0.5, 1.0, vocab)]).astype(np.float32)
    reduce = _Reducer(thresholds, np.array([0, 1, -1]), 1, torch.Generator().manual_seed(0))
    red = reduce(torch.from_numpy(logits.copy()), torch.from_numpy(mask))
    counts = [0, 0]
    for b in range(n_b):
        rows = [logits[b, t] for t in range(n_t) if mask[b, t]]
        want = np.max(rows, axis=0) if rows else np.full(vocab, -np.inf, dtype=np.float32)
        assert np.array_equal(red.pooled[b], want), b
        for u in range(2):
            counts[u] += sum(int(v > thresholds[u, c]) for row in rows
                             for c, v in enumerate(row))
    assert red.positive.tolist() == [*counts, 0]
    assert red.total == int(mask.sum()) * vocab
    assert counts[0] > 0
