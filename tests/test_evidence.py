"""Paired bootstrap intervals and the tied-with-best set (headscope.evidence, numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from headscope import evidence
from headscope.errors import InputError


def _naive(a, b, n_boot, confidence, seed):
    """Loop-by-loop percentile bootstrap over queries (seeds averaged), same random draws."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    n_seeds, n_queries = a.shape
    idx = np.random.default_rng(seed).integers(0, n_queries, size=(n_boot, n_queries))
    boots = []
    for row in idx:
        total = 0.0
        for q in row:
            total += sum(a[s, q] - b[s, q] for s in range(n_seeds)) / n_seeds
        boots.append(total / n_queries)
    boots.sort()
    tail = (1 - confidence) / 2

    def quantile(p):  # numpy's default (linear) interpolation, by hand
        pos = p * (len(boots) - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, len(boots) - 1)
        return boots[lo] + (boots[hi] - boots[lo]) * (pos - lo)

    return quantile(tail), quantile(1 - tail)


def test_matches_a_naive_loop():
    rng = np.random.default_rng(3)
    a = rng.random((3, 40))
    b = a - 0.05 + 0.1 * rng.random((3, 40))
    got = evidence.paired_bootstrap(a, b, n_boot=300, seed=11)
    low, high = _naive(a, b, 300, 0.95, 11)
    assert got.low == pytest.approx(low, abs=1e-12)
    assert got.high == pytest.approx(high, abs=1e-12)
    assert got.mean == pytest.approx((a - b).mean())
    assert got.per_seed == pytest.approx(tuple((a - b).mean(axis=1)))
    assert (got.n_seeds, got.n_queries, got.method) == (3, 40, "queries")


def test_hand_computed_cases():
    # A constant difference: every resample has the same mean, the interval is a point.
    const = evidence.paired_bootstrap([[0.5, 0.25, 1.0]], [[0.3, 0.05, 0.8]], n_boot=50)
    assert (const.mean, const.low, const.high) == pytest.approx((0.2, 0.2, 0.2))
    assert const.excludes_zero
    # Two queries with differences 0 and 1: resampled means are 0, 1/2, 1 with probabilities
    # 1/4, 1/2, 1/4, so a 95% interval spans [0, 1] and contains 0.
    two = evidence.paired_bootstrap([1.0, 1.0], [1.0, 0.0], n_boot=4000, seed=0)
    assert (two.mean, two.low, two.high) == (0.5, 0.0, 1.0)
    assert not two.excludes_zero
    # A 50% interval of the same: the 25th and 75th percentiles of {0, .5, .5, 1} are 0.5 and
    # 0.5 (up to the sampling of 4000 draws).
    mid = evidence.paired_bootstrap([1.0, 1.0], [1.0, 0.0], n_boot=4000, confidence=0.5)
    assert (mid.low, mid.high) == (0.5, 0.5)


def test_seeds_are_averaged_and_hierarchical_is_wider():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    # Seed 2 disagrees strongly: per-seed differences +0.1, +0.1, -0.1.
    a = np.stack([base + 0.1, base + 0.1, base - 0.1])
    b = np.stack([base, base, base])
    q = evidence.paired_bootstrap(a, b, seed=1)
    h = evidence.paired_bootstrap(a, b, seed=1, method="hierarchical")
    assert q.per_seed == pytest.approx((0.1, 0.1, -0.1))
    assert q.mean == pytest.approx(0.1 / 3)
    # Queries alone: the difference is the same for every query, so the interval is a point.
    assert q.low == pytest.approx(q.high)
    # Resampling seeds too lets the interval reach the all-negative draw and the all-positive one.
    assert h.low == pytest.approx(-0.1) and h.high == pytest.approx(0.1)


def test_tied_with_best_uses_the_interval_not_a_margin():
    rng = np.random.default_rng(5)
    base = rng.random((3, 300))
    noise = 0.3 * rng.standard_normal((3, 300))
    noise -= noise.mean()  # exactly zero-mean: "close" is exactly 0.004 below "best"
    arms = {
        "best": base + 0.02,
        "close": base + 0.02 - 0.004 + noise,  # 0.004 below, very noisy: tied
        "worse": base,  # 0.02 below on every query: separated although < a 0.03 margin
    }
    tied = evidence.tied_with_best(arms)
    assert tied.best == "best"
    assert tied.tied == ("best", "close")
    assert tied.differences["worse"].low == pytest.approx(0.02)
    assert tied.differences["close"].low < 0 < tied.differences["close"].high
    assert "best" not in tied.differences
    assert tied.means["worse"] == pytest.approx(base.mean())
    # The order of the arms does not change the result.
    again = evidence.tied_with_best(dict(reversed(list(arms.items()))))
    assert again.tied == ("close", "best")
    assert again.differences["close"] == tied.differences["close"]


def test_per_query_matrix_aligns_by_query_id():
    seeds = [{"q2": 0.5, "q1": 1.0}, {"q1": 0.0, "q2": 0.25}]
    matrix, order = evidence.per_query_matrix(seeds)
    assert order == ("q1", "q2")
    np.testing.assert_array_equal(matrix, [[1.0, 0.5], [0.0, 0.25]])
    other, _ = evidence.per_query_matrix([{"q1": 0.2, "q2": 0.1}], order=order)
    np.testing.assert_array_equal(other, [[0.2, 0.1]])
    with pytest.raises(InputError, match=r"^Seed 1 was evaluated on other queries than seed 0 "
                       r"\(e\.g\. \['q3'\]\); pair only runs on the same evaluation split\.$"):
        evidence.per_query_matrix([{"q1": 1.0}, {"q1": 1.0, "q3": 0.0}])


@pytest.mark.parametrize(
    ("a", "b", "options", "message"),
    [
        ([[1.0, 0.0]], [[1.0]], {}, "Paired arms need the same seeds and queries: shapes "
         "(1, 2) and (1, 1) differ."),
        ([[1.0]], [[1.0]], {"method": "seeds"}, "Unknown bootstrap method 'seeds'; choose one "
         "of ('queries', 'hierarchical')."),
        ([[1.0]], [[np.nan]], {}, "b holds a non-finite per-query metric; check the runs."),
        ([[1.0]], [[1.0]], {"confidence": 1.0}, "confidence must lie strictly between 0 and 1, "
         "got 1.0."),
    ],
)
def test_bad_input_is_refused(a, b, options, message):
    with pytest.raises(InputError) as err:
        evidence.paired_bootstrap(a, b, **options)
    assert str(err.value) == message
