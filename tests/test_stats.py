"""headscope.stats against naive loops and hand-computed cases, plus hypothesis properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from headscope.errors import InputError
from headscope.stats import (
    KStats,
    ProbeAccumulator,
    positive_threshold,
    row_norms,
    splade_weights,
    summarize,
    transform_logits,
    weight_stats,
)

# --------------------------------------------------------------------------------------------
# Naive references (plain Python on lists)


def naive_percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def naive_summary(values: list[float]) -> tuple:
    n = len(values)
    return (
        sum(values) / n,
        naive_percentile(values, 50),
        naive_percentile(values, 99),
        max(values),
        min(values),
        n,
    )


def naive_transform(x: float, k: float, b: float | None, scale_bias: bool) -> float:
    if b is None or scale_bias:
        return x / k
    return (x - b) / k + b


def test_summarize_matches_naive():
    rng = np.random.default_rng(1)
    values = rng.normal(size=137) * 3
    s = summarize(values)
    mean, median, p99, mx, mn, n = naive_summary(values.tolist())
    assert s.mean == pytest.approx(mean, rel=1e-12)
    assert s.median == pytest.approx(median, rel=1e-12)
    assert s.p99 == pytest.approx(p99, rel=1e-12)
    assert (s.max, s.min, s.count) == (mx, mn, n)


def test_summarize_hand_case_and_empty():
    s = summarize(np.array([1.0, 2.0, 3.0, 4.0]))
    assert (s.mean, s.median, s.max, s.min, s.count) == (2.5, 2.5, 4.0, 1.0, 4)
    assert s.p99 == pytest.approx(3.97)  # 3 + 0.97 * (4 - 3)
    empty = summarize(np.array([]))
    assert empty.count == 0 and math.isnan(empty.mean) and math.isnan(empty.p99)


def test_row_norms_and_weight_stats_match_naive():
    rng = np.random.default_rng(2)
    v, e, h = 9000, 5, 7  # more rows than one float64 chunk (4096)
    w = rng.normal(size=(v, e)).astype(np.float32)
    real = rng.random(v) < 0.8
    bias = rng.normal(size=v)
    nw, nb = rng.normal(size=e), rng.normal(size=e)
    dense = rng.normal(size=(e, h))
    norms = [math.sqrt(sum(float(c) * float(c) for c in row)) for row in w.tolist()]
    assert np.allclose(row_norms(w), norms, rtol=1e-12)

    ws = weight_stats(w, real, bias, nw, nb, dense)
    exp_all = naive_summary(norms)
    exp_real = naive_summary([n for n, r in zip(norms, real.tolist(), strict=True) if r])
    for got, exp in ((ws.row_norm_all, exp_all), (ws.row_norm_real, exp_real)):
        assert (got.mean, got.median, got.p99, got.max, got.min) == pytest.approx(
            exp[:5], rel=1e-10
        )
        assert got.count == exp[5]
    assert (ws.n_rows, ws.n_real_rows, ws.hidden_size) == (v, int(real.sum()), e)
    mean_b = sum(bias.tolist()) / v
    std_b = math.sqrt(sum((x - mean_b) ** 2 for x in bias.tolist()) / v)
    assert ws.bias_mean == pytest.approx(mean_b, rel=1e-10)
    assert ws.bias_std == pytest.approx(std_b, rel=1e-10)
    assert ws.norm_weight_l2 == pytest.approx(math.sqrt(sum(x * x for x in nw.tolist())))
    assert ws.norm_bias_l2 == pytest.approx(math.sqrt(sum(x * x for x in nb.tolist())))
    # Spectral norm through a different route: the largest eigenvalue of D^T D.
    assert ws.dense_spectral_norm == pytest.approx(
        math.sqrt(np.linalg.eigvalsh(dense.T @ dense).max()), rel=1e-9
    )


def test_weight_stats_optional_parts_and_errors():
    w = np.ones((4, 3))
    ws = weight_stats(w, np.array([True, True, False, False]))
    assert ws.row_norm_all.mean == pytest.approx(math.sqrt(3))
    assert ws.bias_mean is None and ws.norm_bias_l2 is None and ws.dense_spectral_norm is None
    with pytest.raises(InputError) as err:
        weight_stats(w, np.array([1, 1, 0, 0]))
    assert str(err.value) == (
        "real_rows must be a bool array of shape (4,), got int64 (4,); build it with "
        "vocabulary.vocab_info for this decoder."
    )
    with pytest.raises(InputError) as err:
        weight_stats(w, np.ones(4, dtype=bool), bias=np.zeros(5))
    assert str(err.value) == (
        "bias has shape (5,), expected (4,); pass the tensor of the same head."
    )


# --------------------------------------------------------------------------------------------
# Transforms


def test_transform_logits_hand_cases():
    x = np.array([[3.0, -1.0]])
    b = np.array([1.0, 1.0])
    assert transform_logits(x, 2, b, scale_bias=False).tolist() == [[2.0, 0.0]]
    assert transform_logits(x, 2, b, scale_bias=True).tolist() == [[1.5, -0.5]]
    assert transform_logits(x, 4, None, scale_bias=False).tolist() == [[0.75, -0.25]]
    with pytest.raises(InputError) as err:
        transform_logits(x, 0, b, False)
    assert str(err.value) == "k = 0 is not a positive finite number; pass k > 0 (e.g. 8)."


def test_positive_threshold_hand_cases():
    b = np.array([-2.0, 0.0, 3.0])
    assert positive_threshold(4, b, False, 3).tolist() == [6.0, 0.0, -9.0]  # b * (1 - k)
    assert positive_threshold(4, b, True, 3).tolist() == [0.0, 0.0, 0.0]
    assert positive_threshold(4, None, False, 3).tolist() == [0.0, 0.0, 0.0]


def test_splade_weights_hand_cases():
    got = splade_weights(np.array([-3.0, 0.0, math.e - 1]))
    assert got.tolist() == pytest.approx([0.0, 0.0, 1.0])


finite = st.floats(-50, 50, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    x=arrays(np.float64, 20, elements=finite),
    b=arrays(np.float64, 20, elements=st.floats(-5, 5)),
    k=st.sampled_from([0.5, 1.0, 2.0, 3.0, 8.0, 32.0]),
    scale_bias=st.booleans(),
)
def test_threshold_agrees_with_transform(x, b, k, scale_bias):
    t = positive_threshold(k, b, scale_bias, 20)
    clear = np.abs(x - t) > 1e-9  # away from the boundary, where rounding could decide
    pos = transform_logits(x, k, b, scale_bias) > 0
    assert np.array_equal(pos[clear], (x > t)[clear])


# --------------------------------------------------------------------------------------------
# ProbeAccumulator against a naive per-k loop that transforms token logits first and pools after


def make_batches(rng, sizes, vocab, t_q=3, t_d=5, spread=3.0, shift=-1.0):
    """Token logits with attention masks: list of (q (B,Tq,V), mq (B,Tq), d, md)."""
    out = []
    for b in sizes:
        q = rng.normal(size=(b, t_q, vocab)) * spread + shift
        d = rng.normal(size=(b, t_d, vocab)) * spread + shift
        mq = np.ones((b, t_q), dtype=bool)
        md = np.ones((b, t_d), dtype=bool)
        for i in range(b):  # random lengths >= 1, padding at the end
            mq[i, rng.integers(1, t_q + 1) :] = False
            md[i, rng.integers(1, t_d + 1) :] = False
        out.append((q, mq, d, md))
    return out


def naive_pool(tok, mask, k, bias, scale_bias):
    """Transform every token logit, SPLADE weight, then max over valid tokens (lists)."""
    b_sz, t_sz, v_sz = tok.shape
    pooled = []
    for i in range(b_sz):
        row = []
        for j in range(v_sz):
            bj = None if bias is None else float(bias[j])
            best = 0.0
            for t in range(t_sz):
                if mask[i, t]:
                    x = naive_transform(float(tok[i, t, j]), k, bj, scale_bias)
                    best = max(best, math.log1p(max(x, 0.0)))
            row.append(best)
        pooled.append(row)
    return pooled


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def naive_kstats(batches, k, bias, scale_bias, vocab):
    token_pos = token_total = 0
    samples = []
    n_q = act_q = act_d = 0
    active_weights = []
    pos_scores, neg_scores, cosines, losses = [], [], [], []
    for q, mq, d, md in batches:
        for tok, mask in ((q, mq), (d, md)):
            for i in range(tok.shape[0]):
                for t in range(tok.shape[1]):
                    if not mask[i, t]:
                        continue
                    for j in range(vocab):
                        bj = None if bias is None else float(bias[j])
                        x = naive_transform(float(tok[i, t, j]), k, bj, scale_bias)
                        token_total += 1
                        token_pos += x > 0
                        samples.append(x)
        wq = naive_pool(q, mq, k, bias, scale_bias)
        wd = naive_pool(d, md, k, bias, scale_bias)
        b_sz = len(wq)
        n_q += b_sz
        act_q += sum(w > 0 for row in wq for w in row)
        act_d += sum(w > 0 for row in wd for w in row)
        active_weights += [w for row in wd for w in row if w > 0]
        pos_scores += [dot(wq[i], wd[i]) for i in range(b_sz)]
        if b_sz < 2:
            continue
        norms = [math.sqrt(dot(r, r)) for r in wd]
        batch_loss = []
        for i in range(b_sz):
            scores = [dot(wq[i], wd[j]) for j in range(b_sz)]
            m = max(scores)
            batch_loss.append(m + math.log(sum(math.exp(s - m) for s in scores)) - scores[i])
            for j in range(b_sz):
                if i != j:
                    neg_scores.append(scores[j])
                    den = norms[i] * norms[j]
                    cosines.append(dot(wd[i], wd[j]) / den if den > 0 else 0.0)
        losses.append(sum(batch_loss) / b_sz)
    nan = float("nan")
    return KStats(
        k=float(k),
        logit_p01=naive_percentile(samples, 1),
        logit_p50=naive_percentile(samples, 50),
        logit_p99=naive_percentile(samples, 99),
        frac_positive=token_pos / token_total,
        term_weight_mean=sum(active_weights) / len(active_weights) if active_weights else 0.0,
        term_weight_max=max(active_weights, default=0.0),
        share_above_5=(
            sum(w > 5 for w in active_weights) / len(active_weights) if active_weights else 0.0
        ),
        active_query=act_q / n_q,
        active_passage=act_d / n_q,
        active_query_share=act_q / n_q / vocab,
        active_passage_share=act_d / n_q / vocab,
        cosine_unrelated=sum(cosines) / len(cosines) if cosines else nan,
        score_pos=sum(pos_scores) / len(pos_scores),
        score_neg=sum(neg_scores) / len(neg_scores) if neg_scores else nan,
        start_loss=sum(losses) / len(losses) if losses else nan,
    )


def feed(acc, batches, ks, bias, scale_bias):
    """What run_probe does: pool RAW logits, count positives via thresholds, sample all tokens."""
    vocab = batches[0][0].shape[-1]
    thresholds = np.stack([positive_threshold(k, bias, scale_bias, vocab) for k in ks])  # (K, V)
    for q, mq, d, md in batches:
        pooled = []
        for tok, mask in ((q, mq), (d, md)):
            valid = tok[mask]  # (N, V) rows under the mask
            acc.add_token_counts((valid[None] > thresholds[:, None]).sum(axis=(1, 2)), valid.size)
            ids = np.broadcast_to(np.arange(vocab), valid.shape)  # (N, V)
            acc.add_token_sample(valid.ravel(), ids.ravel())
            pooled.append(np.where(mask[..., None], tok, -np.inf).max(axis=1))  # (B, V)
        acc.add_batch(pooled[0], pooled[1])


def assert_kstats_close(got: KStats, exp: KStats, rel=1e-9):
    for name in KStats.__dataclass_fields__:
        g, e = getattr(got, name), getattr(exp, name)
        if isinstance(e, float) and math.isnan(e):
            assert math.isnan(g), name
        else:
            assert g == pytest.approx(e, rel=rel, abs=1e-12), name


@pytest.mark.parametrize(
    "bias_kind, scale_bias",
    [("random", False), ("random", True), ("none", False)],
)
def test_accumulator_matches_naive_transform_then_pool(bias_kind, scale_bias):
    rng = np.random.default_rng(3)
    vocab = 7
    ks = (1.0, 2.0, 0.5, 16.0)
    bias = rng.normal(size=vocab) * 2 if bias_kind == "random" else None
    # A batch of one pair sits between two larger ones; spread 60 puts some weights above 5.
    batches = make_batches(rng, [3, 1, 4], vocab, spread=60.0)
    acc = ProbeAccumulator(ks, bias, scale_bias, vocab, sample_size=10_000, seed=0)
    feed(acc, batches, ks, bias, scale_bias)
    result = acc.result()
    assert [r.k for r in result] == list(ks)
    for got, k in zip(result, ks, strict=True):
        assert_kstats_close(got, naive_kstats(batches, k, bias, scale_bias, vocab))
    # The data exercise every branch: some weights above 5 at k = 0.5, none at k = 16.
    assert result[2].share_above_5 > 0
    assert result[3].share_above_5 == 0


def test_accumulator_only_single_pair_batches():
    rng = np.random.default_rng(4)
    batches = make_batches(rng, [1, 1], 5)
    acc = ProbeAccumulator((1.0, 4.0), None, False, 5)
    feed(acc, batches, (1.0, 4.0), None, False)
    for s in acc.result():
        assert math.isnan(s.cosine_unrelated) and math.isnan(s.score_neg)
        assert math.isnan(s.start_loss)
        assert s.score_pos == pytest.approx(naive_kstats(batches, s.k, None, False, 5).score_pos)


def test_all_zero_passages_have_cosine_zero():
    acc = ProbeAccumulator((1.0,), None, False, 4)
    q = np.array([[1.0, -1, -1, -1], [-1.0, 2, -1, -1]])
    d = np.full((2, 4), -3.0)  # no active term: all-zero SPLADE vectors
    acc.add_batch(q, d)
    (s,) = acc.result()
    assert s.cosine_unrelated == 0.0
    assert s.active_passage == 0.0 and s.term_weight_mean == 0.0 and s.share_above_5 == 0.0
    assert s.start_loss == pytest.approx(math.log(2))  # all scores 0: uniform over 2 passages
    assert math.isnan(s.frac_positive) and math.isnan(s.logit_p50)  # nothing counted or sampled


def test_start_loss_hand_case():
    # One active term each: w = log(1 + x). Scores: q0.d0 = a*a, q0.d1 = 0, q1.d0 = 0, q1.d1 = a*a.
    x = math.e - 1  # log1p(x) = 1
    q = np.array([[x, -1.0], [-1.0, x]])
    acc = ProbeAccumulator((1.0,), None, False, 2)
    acc.add_batch(q, q.copy())
    (s,) = acc.result()
    assert s.score_pos == pytest.approx(1.0) and s.score_neg == pytest.approx(0.0)
    assert s.start_loss == pytest.approx(math.log(1 + math.exp(-1)))
    assert s.cosine_unrelated == pytest.approx(0.0)


def test_reservoir_is_bounded_uniform_and_deterministic():
    values = np.arange(10_000, dtype=float)
    ids = np.zeros(10_000, dtype=int)

    def run(seed):
        acc = ProbeAccumulator((1.0,), None, False, 1, sample_size=2_000, seed=seed)
        for lo, hi in ((0, 100), (100, 5_100), (5_100, 10_000)):  # unequal chunks
            acc.add_token_sample(values[lo:hi], ids[lo:hi])
        acc.add_batch(np.zeros((2, 1)), np.zeros((2, 1)))
        return acc

    acc = run(0)
    assert acc._sample_values.size == 2_000
    assert len(set(acc._sample_values.tolist())) == 2_000  # without replacement
    (s,) = acc.result()
    # A uniform sample of 0..9999: median 5000 +- 4.6 standard errors (about 65 each).
    assert abs(s.logit_p50 - 4999.5) < 300
    assert abs(s.logit_p01 - 99.0) < 60 and abs(s.logit_p99 - 9899.0) < 60
    assert repr(run(0).result()) == repr(run(0).result())  # repr: NaN != NaN
    assert not np.array_equal(run(0)._sample_values, run(1)._sample_values)


def test_accumulator_errors():
    acc = ProbeAccumulator((1.0, 2.0), None, False, 3)
    with pytest.raises(InputError) as err:
        acc.result()
    assert str(err.value) == (
        "ProbeAccumulator.result() called before any add_batch(); feed at least one batch of "
        "pooled query and passage logits."
    )
    with pytest.raises(InputError) as err:
        acc.add_batch(np.zeros((2, 3)), np.zeros((3, 3)))
    assert str(err.value) == (
        "pooled logits have shapes (2, 3) (queries) and (3, 3) (passages), expected two equal "
        "(B, 3) arrays; pool the raw logits of B query-passage pairs over tokens first."
    )
    with pytest.raises(InputError) as err:
        acc.add_token_counts(np.array([1]), 10)
    assert str(err.value) == "positive counts have shape (1,), expected (2,): one per k."
    with pytest.raises(InputError) as err:
        acc.add_token_counts(np.array([1, 11]), 10)
    assert str(err.value) == (
        "positive counts [1, 11] are not within [0, total = 10]; count logits over the same "
        "tokens as total."
    )
    with pytest.raises(InputError) as err:
        acc.add_token_sample(np.zeros(2), np.array([0, 3]))
    assert str(err.value) == "token sample vocab ids must lie in [0, 3); got [0, 3]."
    with pytest.raises(InputError) as err:
        ProbeAccumulator((), None, False, 3)
    assert str(err.value) == ("ProbeAccumulator got no candidate k; pass at least one, e.g. (1,).")


# --------------------------------------------------------------------------------------------
# Properties

# Subnormal logits are excluded: x / k can underflow to 0 there, which makes a term inactive at
# one k and active at another in floating point although not in real arithmetic.
logit = st.floats(-1e4, 1e4, allow_subnormal=False)
pooled_pair = st.integers(2, 5).flatmap(
    lambda b: st.tuples(
        arrays(np.float64, (b, 6), elements=logit),
        arrays(np.float64, (b, 6), elements=logit),
    )
)
ks_grid = st.lists(
    st.sampled_from([0.25, 1.0, 2.0, 4.0, 16.0, 1000.0]), min_size=1, max_size=4, unique=True
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=pooled_pair,
    ks=ks_grid,
    bias=arrays(np.float64, 6, elements=st.floats(-3, 3)),
    mode=st.sampled_from(["scale_bias", "zero", "none"]),
)
def test_active_counts_do_not_depend_on_k_without_an_undivided_bias(pair, ks, bias, mode):
    q, d = pair
    b = {"scale_bias": bias, "zero": np.zeros(6), "none": None}[mode]
    acc = ProbeAccumulator(ks, b, mode == "scale_bias", 6)
    acc.add_batch(q, d)
    res = acc.result()
    assert len({(r.active_query, r.active_passage) for r in res}) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=pooled_pair,
    ks=ks_grid,
    bias=arrays(np.float64, 6, elements=st.floats(-3, 3)),
    scale_bias=st.booleans(),
)
def test_start_loss_finite_and_cosine_in_unit_interval(pair, ks, bias, scale_bias):
    q, d = pair
    acc = ProbeAccumulator(ks, bias, scale_bias, 6)
    acc.add_batch(q, d)
    acc.add_batch(d, q)
    for r in acc.result():
        assert math.isfinite(r.start_loss) and r.start_loss >= -1e-9
        assert -1e-12 <= r.cosine_unrelated <= 1 + 1e-12
        assert r.score_neg >= 0 and r.score_pos >= 0  # non-negative weights


@pytest.mark.parametrize("shape", [(5, 5), (7, 3), (3, 7), (1, 1), (2, 9), (300, 2), (128, 128),
                                   (256, 128), (768, 768)])
def test_spectral_norm_matches_svd(shape):
    from headscope.stats import spectral_norm

    m = np.random.default_rng(1).standard_normal(shape)
    assert spectral_norm(m) == pytest.approx(np.linalg.svd(m, compute_uv=False)[0], rel=1e-10)


def test_spectral_norm_of_special_matrices():
    from headscope.stats import spectral_norm

    a, b = np.arange(1.0, 40.0), np.arange(1.0, 30.0)
    # rank one: the Krylov space is exhausted after one step; the answer is |a| |b|
    assert spectral_norm(np.outer(a, b)) == pytest.approx(
        np.linalg.norm(a) * np.linalg.norm(b), rel=1e-12)
    assert spectral_norm(np.eye(50)) == pytest.approx(1.0, rel=1e-12)  # all values equal
    assert spectral_norm(np.zeros((4, 6))) == 0.0
    assert spectral_norm(np.diag([3.0, -7.0, 2.0])) == pytest.approx(7.0, rel=1e-12)


def test_spectral_norm_of_real_heads_agrees_with_arpack(bert_tiny_dir, albert_dir):
    """The Lanczos value against scipy's ARPACK (the previous implementation) and the SVD."""
    from scipy.sparse.linalg import svds

    from headscope import checkpoint, heads
    from headscope.stats import spectral_norm

    for folder in (bert_tiny_dir, albert_dir):
        dense = heads.read_head(checkpoint.resolve(str(folder))).arrays["dense_weight"]
        d = np.asarray(dense, dtype=np.float64)
        arpack = svds(d, k=1, v0=np.ones(min(d.shape)), tol=0, return_singular_vectors=False)[0]
        assert spectral_norm(dense) == pytest.approx(arpack, rel=1e-12)
        assert spectral_norm(dense) == pytest.approx(
            np.linalg.svd(d, compute_uv=False)[0], rel=1e-12)


def test_row_norm_histogram_counts_every_row_once():
    from headscope.stats import row_norm_histogram, row_norms, weight_stats

    rng = np.random.default_rng(3)
    w = rng.standard_normal((50, 4))
    real = np.arange(50) < 45
    h = weight_stats(w, real).row_norm_histogram
    assert h == row_norm_histogram(row_norms(w), real)
    assert sum(h.real) == 45 and sum(h.other) == 5 and len(h.edges) == len(h.real) + 1
    # against numpy's own histogram of each group over all rows' bins
    norms = np.linalg.norm(w, axis=1)
    edges = np.histogram_bin_edges(norms, bins=40)
    np.testing.assert_allclose(h.edges, edges, rtol=1e-12)
    assert h.other == tuple(np.histogram(norms[~real], bins=np.asarray(h.edges))[0])


def test_frac_positive_estimated_from_a_counted_k():
    """Counted at k = 1 only: with every token logit passed as the sample, the difference
    estimator is the exact share at every k; with a small sample it stays within 4 standard
    errors, and is flagged as estimated."""
    rng = np.random.default_rng(3)
    vocab, ks = 50, (1.0, 2.0, 8.0)
    bias = rng.normal(0, 2, vocab)
    tokens = rng.normal(-1, 3, (400, vocab))  # (N, V) raw token logits
    pooled = tokens.reshape(40, 10, vocab).max(axis=1)  # (B=40, V)
    exact = [float((transform_logits(tokens, k, bias, False) > 0).mean()) for k in ks]
    ids = np.broadcast_to(np.arange(vocab), tokens.shape)
    counts = np.array([(transform_logits(tokens, 1.0, bias, False) > 0).sum(), 0, 0])
    for sample_size, rel in ((tokens.size, 1e-12), (2000, None)):
        acc = ProbeAccumulator(ks, bias, False, vocab, sample_size=sample_size, seed=1)
        acc.add_token_counts(counts, tokens.size, counted=(True, False, False))
        acc.add_token_sample(tokens.ravel(), ids.ravel())
        acc.add_batch(pooled[:20], pooled[20:])
        got = acc.result()
        assert got[0].frac_positive == exact[0] and got[0].frac_positive_exact
        assert got[0].frac_positive_se == 0.0
        for s, want in zip(got[1:], exact[1:], strict=True):
            assert not s.frac_positive_exact and s.frac_positive_se > 0
            if rel is not None:
                assert s.frac_positive == pytest.approx(want, rel=rel)
            else:
                assert abs(s.frac_positive - want) < 4 * s.frac_positive_se
    with pytest.raises(InputError, match="different counted k than before"):
        acc.add_token_counts(counts, tokens.size)


# --------------------------------------------------------------------------------------------
# The metric registry and the one number format


def test_number_is_one_format_for_sentences_tables_and_figures():
    from headscope.stats import k_text, number, percent

    assert [number(x) for x in (12000.0, 12345.6, 1000.0, 999.96, 2.553, 0.682, 0.0)] == [
        "12,000", "12,346", "1,000", "1000", "2.553", "0.682", "0"]
    assert [number(x, 3) for x in (-12000.0, 279.4, 0.000123456)] == ["-12,000", "279",
                                                                      "1.23e-04"]
    assert [number(x) for x in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]
    assert [percent(x) for x in (0.123456, 0.005, 1.0)] == ["12.3%", "0.5%", "100%"]
    assert [k_text(k) for k in (1.0, 16.0, 0.5)] == ["1", "16", "0.5"]


def test_a_finding_and_the_tables_print_a_big_number_alike():
    """The defect the one format fixes: a finding printed 1.2e+04 beside a table's 12,000."""
    from headscope.findings import engine_findings
    from headscope.render import num

    (found,) = engine_findings(12000.0, 4.0)
    assert "passages have 12,000 non-zero terms" in found.message
    assert num(12000.0) == "12,000"


def test_the_metric_registry_covers_every_per_k_statistic():
    from dataclasses import fields

    from headscope.stats import METRIC_REGISTRY

    per_k = {f.name for f in fields(KStats)} - {"k", "frac_positive_exact", "frac_positive_se"}
    assert per_k <= set(METRIC_REGISTRY)
    assert set(METRIC_REGISTRY) - per_k == {"row_norm_mean"}
    for name, metric in METRIC_REGISTRY.items():
        assert metric.name == name and metric.unit in ("", "terms", "share")
    assert METRIC_REGISTRY["share_above_5"].format(0.0123) == "1.23%"
    assert METRIC_REGISTRY["active_passage"].format(37999.0) == "37,999"
    assert METRIC_REGISTRY["start_loss"].format(None) == "-"
