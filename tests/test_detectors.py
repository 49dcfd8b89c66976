"""The detectors' persistence and trend rules, and the cross-arm judgement shared by confirm and
sweep. Synthetic step records and per-query arrays with hand-computed answers."""

from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np
import pytest
from test_splade_train import _healthy, _metrics, _record, _replace

from headscope.api.training import ArmSummary, judge_summaries
from headscope.errors import InputError
from headscope.splade import detectors
from headscope.splade.detectors import (
    COLLAPSED,
    DEGRADED,
    NOTE,
    STABLE,
    TOO_SHORT,
    Thresholds,
    bootstrap_interval,
    judge_arms,
    judged_status,
    normal_interval,
    run_verdict,
    verdict,
)
from headscope.splade.evaluate import RetrievalMetrics

V = 30522


# ---------------------------------------------------------------- loss spikes


def test_a_single_recovered_spike_is_a_note_not_degraded():
    records = _replace(_healthy(), 20, loss=50.0)
    v = verdict(records, V, _metrics(0.8))
    assert v.status == STABLE
    (e,) = v.evidence
    limit = 4.0 * statistics.median(2.0 * 0.94**s for s in range(0, 20))
    assert (e.detector, e.severity, e.step, e.value) == ("loss_spike", NOTE, 20, 50.0)
    assert e.threshold == pytest.approx(limit)
    assert e.message == (
        f"a loss spike at step 20 (peak 50, limit {limit:.4g}) lasted fewer than 3 steps: not "
        "counted (a spike degrades a run when it lasts 3 steps or recurs 3 times)")


def test_a_persistent_spike_degrades():
    records = _replace(_replace(_replace(_healthy(), 20, loss=50.0), 21, loss=60.0), 22, loss=9.0)
    e = detectors.loss_spike(records, Thresholds())
    assert (e.severity, e.step, e.value) == (DEGRADED, 20, 60.0)
    assert e.message.startswith(f"loss stayed above {e.threshold:.4g} (4x its running median) "
                                "for 3 steps from step 20 (peak 60)")
    # two steps above the limit are not enough
    two = _replace(_replace(_healthy(), 20, loss=50.0), 21, loss=60.0)
    assert detectors.loss_spike(two, Thresholds()).severity == NOTE


def test_recurring_spikes_degrade():
    records = _healthy(60)
    for step in (15, 30, 45):
        records = _replace(records, step, loss=50.0)
    e = detectors.loss_spike(records, Thresholds())
    assert (e.severity, e.step) == (DEGRADED, 15)
    assert e.message.startswith("3 separate loss spikes (steps 15, 30, 45; peak 50)")
    two = _replace(_replace(_healthy(60), 15, loss=50.0), 30, loss=50.0)
    assert detectors.loss_spike(two, Thresholds()).severity == NOTE


def test_a_spike_still_running_at_the_end_is_said_to_be_running():
    records = _replace(_healthy(), 39, loss=50.0)
    e = detectors.loss_spike(records, Thresholds())
    assert e.severity == NOTE and "the last still above its limit when training ended" in e.message


# ---------------------------------------------------------------- dense but sparsifying


def _dense(counts) -> list:
    return [_record(s, loss=2.0 * 0.94**s, ranking_loss=2.0 * 0.94**s, active_passage=c)
            for s, c in enumerate(counts)]


def test_a_dense_head_that_flops_is_sparsifying_is_not_collapsed():
    # dense through the FLOPS warm-up, then falling steadily: 28,000 -> 22,300 over steps 20-39
    counts = [30000.0] * 20 + [28000.0 - 300.0 * i for i in range(20)]
    v = verdict(_dense(counts), V, _metrics(0.8))
    assert v.status == STABLE
    (e,) = v.evidence
    assert (e.detector, e.severity) == ("dense_collapse", NOTE)
    # the fitted line over steps 20..39 is the line itself
    assert e.message == (
        f"passages keep {statistics.median(counts[-5:]):.0f} of {V} terms active at the end (more "
        "than 50% of the vocabulary), but the count is falling steadily (fitted 28000 -> 22300 "
        "over the second half of the run): FLOPS is sparsifying it; dense, not collapsed; train "
        "longer to see where it settles")
    assert detectors.sparsifying(_dense(counts), Thresholds()) == pytest.approx((28000, 22300))


def test_a_dense_head_that_stays_dense_is_collapsed():
    flat = [25000.0 + (50.0 if s % 2 else -50.0) for s in range(40)]
    v = verdict(_dense(flat), V, _metrics(0.8))
    assert v.status == COLLAPSED
    assert v.evidence[0].message.endswith("of the vocabulary), and not falling")
    # falling, but by less than sparsify_drop (10%) over the second half: still collapsed
    slow = [25000.0 - 20.0 * s for s in range(40)]
    assert verdict(_dense(slow), V).status == COLLAPSED
    # a single late drop is not a steady fall when the tail has bounced back
    bounce = [25000.0] * 30 + [18000.0] * 5 + [25000.0] * 5
    assert detectors.sparsifying(_dense(bounce), Thresholds()) is None


# ---------------------------------------------------------------- arms against each other


def test_normal_interval_matches_a_hand_computation():
    diff = np.array([0.0, -0.5, -1.0, 0.5, -0.25])
    mean, sd = diff.mean(), math.sqrt(sum((d - diff.mean()) ** 2 for d in diff) / 4)
    half = 1.959963984540054 * sd / math.sqrt(5)
    assert normal_interval(diff) == pytest.approx((mean - half, mean + half))


def test_bootstrap_interval_is_the_percentile_interval_of_resampled_means():
    diff = np.array([0.0, -0.5, -1.0, 0.5, -0.25, -0.75, 0.0, -0.1])
    # the naive loop: the same generator draws, one resample at a time
    rng = np.random.default_rng(0)
    idx = rng.integers(0, diff.shape[0], size=(2000, diff.shape[0]))
    means = [sum(diff[i] for i in row) / diff.shape[0] for row in idx]
    assert bootstrap_interval(diff) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    # judge_arms uses it unless told otherwise, and accepts another interval
    a, b = np.zeros(8), -diff
    assert (judge_arms({"a": b, "b": a})["b"].low, judge_arms({"a": b, "b": a})["b"].high) == \
        pytest.approx(bootstrap_interval(diff))
    j = judge_arms({"a": b, "b": a}, interval=normal_interval)["b"]
    assert (j.low, j.high) == pytest.approx(normal_interval(diff))


def _rr(ranks, n=300):
    """Per-query reciprocal ranks cycling through `ranks` (0: not found in the top 10)."""
    return np.array([0.0 if r == 0 else 1.0 / r for r in (ranks * n)[:n]])


def test_an_arm_worse_than_the_best_beyond_its_interval_is_flagged():
    best = _rr([1, 1, 1, 2, 1, 1, 3, 1, 0, 1])
    worse = best.copy()
    worse[::3] = _rr([2, 0, 3])[: worse[::3].shape[0]]  # a third of the queries rank lower
    tied = best.copy()
    tied[0] = 0.5  # one query differs
    judged = judge_arms({"k=1": best, "k=16": tied, "k=32": worse})
    assert judged["k=1"].best == "k=1" and not judged["k=1"].worse
    assert judged["k=1"].message == f"MRR@10 {best.mean():.3f} is the best of the arms"
    j = judged["k=32"]
    low, high = bootstrap_interval(worse - best)
    assert j.worse and (j.low, j.high) == (low, high) and high < 0
    assert j.diff == pytest.approx(worse.mean() - best.mean())
    assert j.message == (
        f"MRR@10 {worse.mean():.3f} is worse than the best arm (k=1, {best.mean():.3f}) beyond "
        f"its interval: paired 95% bootstrap interval of the difference [{low:+.3f}, "
        f"{high:+.3f}] over 300 queries")
    t = judged["k=16"]
    assert not t.worse and t.low < 0 <= t.high
    assert t.message.startswith(f"MRR@10 {tied.mean():.3f} is tied with the best arm (k=1, ")


def test_judged_status_never_softens_and_never_hides_a_disagreement():
    best = _rr([1, 2, 1, 1])
    worse = _rr([3, 0, 2, 1])
    judged = judge_arms({"original": best, "fixed": worse})
    assert judged_status(STABLE, judged["fixed"]) == (DEGRADED, judged["fixed"].message)
    assert judged_status(COLLAPSED, judged["fixed"]) == (COLLAPSED, judged["fixed"].message)
    assert judged_status(STABLE, judged["original"]) == (STABLE, None)
    # a stable arm below the best but tied within its interval says so
    tied = judge_arms({"original": best, "fixed": np.r_[best[:-1], 0.5]})
    assert not tied["fixed"].worse
    assert judged_status(STABLE, tied["fixed"]) == (STABLE, tied["fixed"].message)
    status, note = judged_status(COLLAPSED, judged["original"])
    assert status == COLLAPSED and note == (
        f"MRR@10 {best.mean():.3f} is the best of the arms; the 'collapsed' verdict rests on the "
        "training signals above, not on retrieval")


def test_judge_arms_refuses_what_it_cannot_pair():
    with pytest.raises(InputError, match="same queries"):
        judge_arms({"a": np.ones(3), "b": np.ones(4)})
    with pytest.raises(InputError, match="at least 2 evaluated queries"):
        judge_arms({"a": np.ones(1), "b": np.ones(1)})
    with pytest.raises(InputError, match="finite"):
        judge_arms({"a": np.ones(3), "b": np.array([1.0, math.nan, 0.0])})


def _arm(name, status="stable", k=1.0):
    return ArmSummary(name=name, description="", k=k, status=status, evidence=(),
                          start_loss=1.0, end_loss=0.5, max_grad_norm=1.0, active_query_end=10.0,
                          active_passage_end=100.0, ndcg_at_10=None, mrr_at_10=None,
                          recall_at_100=1.0)


def _with(per_query) -> RetrievalMetrics:
    m = _metrics(float(np.mean(per_query)))
    return dataclasses.replace(m, mrr_per_query=tuple(float(x) for x in per_query))


def test_confirm_and_sweep_judge_the_same_arm_the_same_way():
    # The real BERT-tiny's case: k = 16 trains "stably" but retrieves clearly worse than k = 1.
    k1 = _rr([1, 1, 2, 1, 1, 1, 1, 3, 1, 1])
    k16 = k1.copy()
    k16[::4] = 0.25
    confirm = judge_summaries((_arm("original"), _arm("fixed", k=16.0)),
                              {"original": _with(k1), "fixed": _with(k16)})
    sweep = judge_summaries(
        tuple(_arm(f"k={k:g}", k=k) for k in (1.0, 4.0, 16.0)),
        {"k=1": _with(k1), "k=4": _with(k1), "k=16": _with(k16)})
    fixed, k16_arm = confirm[1], sweep[2]
    assert fixed.status == k16_arm.status == DEGRADED
    assert fixed.evidence == (judge_arms({"original": k1, "fixed": k16})["fixed"].message,)
    assert fixed.mrr_vs_best == pytest.approx(k16.mean() - k1.mean())
    assert fixed.mrr_vs_best_interval == k16_arm.mrr_vs_best_interval
    assert [a.status for a in sweep] == [STABLE, STABLE, DEGRADED]
    assert sweep[0].evidence == () and sweep[1].evidence[0].startswith(
        f"MRR@10 {k1.mean():.3f} is tied with the best arm (k=1, ")
    # without per-query results (no evaluation) nothing is judged
    bare = (_arm("original"), _arm("fixed"))
    assert judge_summaries(bare, {"original": None, "fixed": None}) == bare


# ---------------------------------------------------------------- runs too short to judge


def _flat(n):
    """A run whose ranking loss does not move: `no_learning` fires on it at any length."""
    return [_record(s, loss=2.0, ranking_loss=2.0) for s in range(n)]


def test_a_run_shorter_than_min_steps_is_too_short_not_degraded():
    th = Thresholds()
    assert th.min_steps == 20
    assert verdict(_flat(10), V).status == DEGRADED  # what confirm/sweep said before
    short = run_verdict(_flat(10), V, _metrics(0.01))  # even MRR@10 near zero
    assert short.status == TOO_SHORT
    (e,) = short.evidence
    assert (e.detector, e.severity, e.value, e.threshold) == ("too_short", NOTE, 10.0, 20.0)
    assert e.message == (
        "10 steps are too short to judge: loss spikes, density, dead terms and learning are "
        "judged over at least 20 steps (measured: benchmarks/verdict_steps.py); train with "
        "--steps 20 or more for a verdict")
    # from min_steps on, the full verdict
    assert run_verdict(_flat(19), V).status == TOO_SHORT
    assert run_verdict(_flat(20), V) == verdict(_flat(20), V)
    assert run_verdict(_flat(20), V).status == DEGRADED


def test_a_short_run_still_reports_what_any_length_shows():
    blown = _replace(_flat(6), 3, score_pos=5e3)
    v = run_verdict(blown, V)
    assert v.status == DEGRADED
    assert [e.detector for e in v.evidence] == ["score_explosion", "too_short"]
    nan = _replace(_flat(6), 2, loss=float("nan"), loss_finite=False)
    assert run_verdict(nan, V).status == COLLAPSED


def test_a_short_arm_worse_than_the_best_stays_too_short_with_the_sentence():
    k1 = _rr([1, 1, 2, 1, 1, 1, 1, 3, 1, 1])
    k16 = k1.copy()
    k16[::4] = 0.25
    judged = judge_arms({"k=1": k1, "k=16": k16})
    assert judged["k=16"].worse
    assert judged_status(TOO_SHORT, judged["k=16"]) == (TOO_SHORT, judged["k=16"].message)
    assert judged_status(TOO_SHORT, judged["k=1"]) == (TOO_SHORT, None)
