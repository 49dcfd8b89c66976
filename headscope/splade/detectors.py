"""Collapse detectors over a training run's StepRecords and its held-out metrics, and the one
rule that judges arms trained side by side against each other.

Each detector is one function returning `Evidence` (which detector fired, at which step, the value
and the threshold it crossed) or None. `verdict` runs them all and rates the arm:

- "collapsed": the run produced no usable retriever: non-finite loss or gradients, dense collapse
  (most of the vocabulary active at the end and not falling), dead collapse (no active terms), or
  evaluation near zero.
- "degraded": it trained, but badly: a persistent or recurring loss spike, exploding scores, or
  no learning.
- "stable": no detector fired. Evidence of severity "note" (a single recovered loss spike; a head
  still dense but sparsifying under FLOPS) is reported without changing the status, so that
  the reader sees it and why it did not count.
- "too short": `run_verdict` (what confirm and sweep use) on a run of fewer than
  `Thresholds.min_steps` steps: only the detectors that mean the same at any length (non-finite
  values, exploding scores) are run; the others need longer windows than the run has.

`judge_arms` compares arms trained on the same batches through their per-query metric: an arm
whose paired difference to the best arm lies below zero over its whole interval (a 95% paired
bootstrap over queries, `headscope.evidence`, the same rule as the calibration runner) is worse
than the best, and `judged_status` turns that into the arm's status and a sentence saying why.
`confirm` and `sweep` both use it, so they cannot disagree about the same arm.

Thresholds are named fields of `Thresholds`; their values and reasons are documented there.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from headscope import evidence
from headscope.errors import InputError
from headscope.recommend import SCORE_LIMIT
from headscope.splade.telemetry import StepRecord

if TYPE_CHECKING:  # evaluate imports torch; the detectors read telemetry files without it
    from headscope.splade.evaluate import RetrievalMetrics

STABLE, DEGRADED, COLLAPSED = "stable", "degraded", "collapsed"
TOO_SHORT = "too short"  # a run shorter than Thresholds.min_steps: not judged (run_verdict)
NOTE = "note"  # evidence worth reading that does not change the status
_RANK = {STABLE: 0, DEGRADED: 1, COLLAPSED: 2}


@dataclass(frozen=True)
class Thresholds:
    # Loss spike: a step's loss exceeds `spike_factor` times the median of the previous
    # `spike_window` losses, and by at least `spike_min_excess` in absolute terms (small losses
    # of a few hard batches are noise, not spikes). Needs `spike_min_history` earlier steps.
    spike_factor: float = 4.0
    spike_window: int = 20
    spike_min_history: int = 5
    spike_min_excess: float = 1.0
    # A spike degrades the run only when it persists or recurs: the loss stays above the limit
    # for `spike_persist` consecutive steps, or `spike_recur` separate spikes occur. A single
    # spike that recovers within fewer steps is a note (seen: the scale-only simulation's k = 1
    # arm spiked once at step 10 and ended as well as the others).
    spike_persist: int = 3
    spike_recur: int = 3
    # Dense / dead collapse are judged on the median over the last `tail` steps, so a dense
    # start that training repairs does not count. Dense: active passage terms above
    # `dense_share` of the vocabulary (trained SPLADE: 150-250 of 30k, under 1%; the untrained
    # collapse seen in sentence-transformers issue 3431: 100%). Dead: mean active terms per
    # query or passage below `dead_active` (SPLADE cannot match anything with no terms).
    tail: int = 5
    dense_share: float = 0.5
    dead_active: float = 1.0
    # Dense but sparsifying is not collapsed: over the second half of the run, the least-squares
    # line through active passage terms falls by at least `sparsify_drop` of its starting value
    # and the final `tail` median is below the second half's first `tail` median. FLOPS needs
    # hundreds of steps to sparsify a head that starts dense (a published ModernBERT-base run at
    # k = 8 still had 14,588 of 50,368 terms active per document after 500 steps); in a
    # 100-step run with the FLOPS warm-up over its first third, 10% over the second half is
    # what a steady fall looks like.
    sparsify_drop: float = 0.1
    # Score explosion: |mean positive score| above `score_limit` at any step. Trained SPLADE
    # dot products are in the tens; ModernBERT at k = 1 starts with a loss of 2e4.
    score_limit: float = SCORE_LIMIT
    # No learning: mean ranking loss of the last `edge_share` of steps is not below
    # (1 - `min_drop`) times that of the first `edge_share` of steps, and still above
    # `settled_loss` (an already trained SPLADE starts and ends low; chance level with 16
    # candidates is ln 16 = 2.77; Ettin at k = 1 stalls near 0.8).
    edge_share: float = 0.1
    min_drop: float = 0.05
    settled_loss: float = 0.5
    # Evaluation near zero: held-out MRR@10 below `eval_floor` (a random ranking of 1,000
    # passages scores about 0.003).
    eval_floor: float = 0.05
    # The shortest run `run_verdict` judges. Measured on the 104 committed calibration runs
    # (benchmarks/verdict_steps.py: each run's first n steps judged against the whole run):
    # below 20 steps `no_learning` alone rates 15-40 of them worse than their whole run (its
    # first and last 10% are one step each), at 20 steps 2; and below 20 steps the second half
    # holds fewer than 2 x `tail` steps, so a dense head cannot be told sparsifying from
    # collapsed. (A head that starts dense still needs its FLOPS ramp: see dense_collapse.)
    min_steps: int = 20


@dataclass(frozen=True)
class Evidence:
    detector: str
    severity: str  # "degraded" | "collapsed" | "note" (reported, does not change the status)
    step: int | None  # the step where it fired; None for whole-run or evaluation detectors
    value: float
    threshold: float
    message: str


@dataclass(frozen=True)
class Verdict:
    status: str  # "stable" | "degraded" | "collapsed"
    evidence: tuple[Evidence, ...]


def non_finite(records: Sequence[StepRecord], th: Thresholds) -> Evidence | None:
    for r in records:
        if not (r.loss_finite and r.grad_finite):
            what = "loss" if not r.loss_finite else "gradient norm"
            value = r.loss if not r.loss_finite else r.grad_norm
            return Evidence(
                "non_finite",
                COLLAPSED,
                r.step,
                value,
                math.inf,
                f"{what} is not finite at step {r.step}",
            )
    return None


def _spikes(records: Sequence[StepRecord], th: Thresholds) -> list[tuple[int, int, float, float]]:
    """Every spike as (index of its first step, its length in steps, peak loss, limit).

    A spike starts where the loss exceeds max(spike_factor x median, median + spike_min_excess)
    of the previous spike_window finite losses, and lasts while the loss stays above that limit.
    """
    found = []
    i = th.spike_min_history
    while i < len(records):
        history = [
            r.loss for r in records[max(0, i - th.spike_window) : i] if math.isfinite(r.loss)
        ]
        loss = records[i].loss
        if len(history) < th.spike_min_history or not math.isfinite(loss):
            i += 1
            continue
        median = statistics.median(history)
        limit = max(th.spike_factor * median, median + th.spike_min_excess)
        if loss <= limit:
            i += 1
            continue
        j = i
        while j < len(records) and math.isfinite(records[j].loss) and records[j].loss > limit:
            j += 1
        found.append((i, j - i, max(r.loss for r in records[i:j]), limit))
        i = j
    return found


def loss_spike(records: Sequence[StepRecord], th: Thresholds) -> Evidence | None:
    """Degraded by a persistent spike (>= spike_persist steps above the limit) or recurring
    spikes (>= spike_recur of them); a lone, short spike is a note."""
    spikes = _spikes(records, th)
    if not spikes:
        return None
    persistent = [s for s in spikes if s[1] >= th.spike_persist]
    if persistent:
        i, length, peak, limit = persistent[0]
        step = records[i].step
        return Evidence(
            "loss_spike", DEGRADED, step, peak, limit,
            f"loss stayed above {limit:.4g} ({th.spike_factor:g}x its running median) for "
            f"{length} steps from step {step} (peak {peak:.4g})",
        )
    steps = [records[i].step for i, _, _, _ in spikes]
    i, _, peak, limit = max(spikes, key=lambda s: s[2])
    if len(spikes) >= th.spike_recur:
        return Evidence(
            "loss_spike", DEGRADED, records[spikes[0][0]].step, peak, limit,
            f"{len(spikes)} separate loss spikes (steps {', '.join(map(str, steps))}; peak "
            f"{peak:.4g}): the loss keeps jumping above {th.spike_factor:g}x its running median",
        )
    last_i, last_len = spikes[-1][0], spikes[-1][1]
    running = (", the last still above its limit when training ended"
               if last_i + last_len == len(records) else "")
    what = "a loss spike" if len(spikes) == 1 else f"{len(spikes)} loss spikes"
    return Evidence(
        "loss_spike", NOTE, records[i].step, peak, limit,
        f"{what} at step{'s' if len(spikes) > 1 else ''} {', '.join(map(str, steps))} (peak "
        f"{peak:.4g}, limit {limit:.4g}) lasted fewer than {th.spike_persist} steps{running}: "
        f"not counted (a spike degrades a run when it lasts {th.spike_persist} steps or recurs "
        f"{th.spike_recur} times)",
    )


def _tail_median(records: Sequence[StepRecord], th: Thresholds, attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in records[-th.tail :])


def dense_collapse(
    records: Sequence[StepRecord], th: Thresholds, vocab_size: int
) -> Evidence | None:
    if not records or vocab_size <= 0:
        return None
    active = _tail_median(records, th, "active_passage")
    limit = th.dense_share * vocab_size
    if active <= limit:
        return None
    dense = (f"passages keep {active:.0f} of {vocab_size} terms active at the end (more than "
             f"{th.dense_share:.0%} of the vocabulary)")
    trend = sparsifying(records, th)
    if trend is not None:
        start, end = trend
        return Evidence(
            "dense_collapse", NOTE, records[-1].step, active, limit,
            f"{dense}, but the count is falling steadily (fitted {start:.0f} -> {end:.0f} over "
            "the second half of the run): FLOPS is sparsifying it; dense, not collapsed; train "
            "longer to see where it settles",
        )
    return Evidence("dense_collapse", COLLAPSED, records[-1].step, active, limit,
                    f"{dense}, and not falling")


def sparsifying(records: Sequence[StepRecord], th: Thresholds) -> tuple[float, float] | None:
    """(fitted start, fitted end) of active passage terms over the run's second half when they
    fall steadily (see Thresholds.sparsify_drop), else None."""
    half = records[len(records) // 2 :]
    if len(half) < 2 * th.tail:
        return None
    x = np.array([r.step for r in half], dtype=float)  # (n,)
    y = np.array([r.active_passage for r in half], dtype=float)  # (n,)
    if not (np.isfinite(y).all() and np.ptp(x) > 0):
        return None
    slope, intercept = np.polyfit(x, y, 1)
    start, end = intercept + slope * x[0], intercept + slope * x[-1]
    head_median = float(np.median(y[: th.tail]))
    tail_median = float(np.median(y[-th.tail :]))
    if slope < 0 and start > 0 and (start - end) >= th.sparsify_drop * start \
            and tail_median < head_median:
        return float(start), float(end)
    return None


def dead_collapse(records: Sequence[StepRecord], th: Thresholds) -> Evidence | None:
    if not records:
        return None
    for attr, who in (("active_query", "queries"), ("active_passage", "passages")):
        active = _tail_median(records, th, attr)
        if active < th.dead_active:
            return Evidence(
                "dead_collapse",
                COLLAPSED,
                records[-1].step,
                active,
                th.dead_active,
                f"{who} keep {active:.2f} active terms at the end: the representation died",
            )
    return None


def score_explosion(records: Sequence[StepRecord], th: Thresholds) -> Evidence | None:
    for r in records:
        if math.isfinite(r.score_pos) and abs(r.score_pos) > th.score_limit:
            return Evidence(
                "score_explosion",
                DEGRADED,
                r.step,
                r.score_pos,
                th.score_limit,
                f"mean positive score {r.score_pos:.4g} at step {r.step} exceeds "
                f"{th.score_limit:g}",
            )
    return None


def no_learning(records: Sequence[StepRecord], th: Thresholds) -> Evidence | None:
    n = max(1, round(len(records) * th.edge_share))
    if len(records) < 2 * n:
        return None
    first = [r.ranking_loss for r in records[:n]]
    last = [r.ranking_loss for r in records[-n:]]
    start, end = sum(first) / n, sum(last) / n
    limit = (1 - th.min_drop) * start
    if not (end < limit or end <= th.settled_loss):  # also true when either is NaN
        return Evidence(
            "no_learning",
            DEGRADED,
            None,
            end,
            limit,
            f"ranking loss ends at {end:.4g}, not below {limit:.4g} "
            f"({1 - th.min_drop:.0%} of its start {start:.4g})",
        )
    return None


def eval_near_zero(metrics: RetrievalMetrics | None, th: Thresholds) -> Evidence | None:
    if metrics is not None and not metrics.mrr_at_10 >= th.eval_floor:
        return Evidence(
            "eval_near_zero",
            COLLAPSED,
            None,
            metrics.mrr_at_10,
            th.eval_floor,
            f"held-out MRR@10 is {metrics.mrr_at_10:.4f}, below {th.eval_floor:g}",
        )
    return None


def verdict(
    records: Sequence[StepRecord],
    vocab_size: int,
    metrics: RetrievalMetrics | None = None,
    thresholds: Thresholds = Thresholds(),
) -> Verdict:
    """Run every detector; the status is the worst severity among those that fired."""
    th = thresholds
    checks: tuple[Callable[[], Evidence | None], ...] = (
        lambda: non_finite(records, th),
        lambda: loss_spike(records, th),
        lambda: dense_collapse(records, th, vocab_size),
        lambda: dead_collapse(records, th),
        lambda: score_explosion(records, th),
        lambda: no_learning(records, th),
        lambda: eval_near_zero(metrics, th),
    )
    evidence = tuple(e for e in (check() for check in checks) if e is not None)
    status = max((e.severity for e in evidence if e.severity != NOTE), key=_RANK.__getitem__,
                 default=STABLE)
    return Verdict(status, evidence)


def run_verdict(
    records: Sequence[StepRecord],
    vocab_size: int,
    metrics: RetrievalMetrics | None = None,
    thresholds: Thresholds = Thresholds(),
) -> Verdict:
    """`verdict` for a whole training run (confirm, sweep). A run of fewer than
    `thresholds.min_steps` steps is "too short": only non-finite values (collapsed) and
    exploding scores (degraded), which mean the same at any length, can rate it."""
    th = thresholds
    if len(records) >= th.min_steps:
        return verdict(records, vocab_size, metrics, th)
    fired = tuple(e for e in (non_finite(records, th), score_explosion(records, th))
                  if e is not None)
    short = Evidence(
        "too_short", NOTE, None, float(len(records)), float(th.min_steps),
        f"{len(records)} steps are too short to judge: loss spikes, density, dead terms and "
        f"learning are judged over at least {th.min_steps} steps (measured: "
        f"benchmarks/verdict_steps.py); train with --steps {th.min_steps} or more for a verdict")
    status = max((e.severity for e in fired), key=_RANK.__getitem__, default=TOO_SHORT)
    return Verdict(status, (*fired, short))


# --------------------------------------------------------------------------------------------
# Arms judged against each other


def bootstrap_interval(diff: np.ndarray, confidence: float = evidence.CONFIDENCE
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired per-query differences (queries
    resampled with replacement, `evidence.N_BOOT` resamples, generator seeded with 0 so the
    same results give the same interval): `judge_arms`' default."""
    d = evidence.paired_bootstrap(diff, np.zeros_like(diff), confidence=confidence, seed=0)
    return d.low, d.high


def normal_interval(diff: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of the mean of paired per-query differences: mean +- z * sd / sqrt(n).

    A closed-form alternative to `bootstrap_interval`; any function with this signature
    (differences -> (low, high)) can be passed to `judge_arms`.
    """
    n = diff.shape[0]
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * float(np.std(diff, ddof=1)) / math.sqrt(n)
    mean = float(np.mean(diff))
    return mean - half, mean + half


@dataclass(frozen=True)
class ArmJudgement:
    arm: str
    mean: float  # the arm's mean per-query metric
    best: str  # the arm with the highest mean
    diff: float  # mean paired difference, this arm minus the best (0 for the best)
    low: float  # interval of `diff`
    high: float
    worse: bool  # the whole interval is below zero: worse than the best beyond its interval
    message: str  # one sentence with the numbers


def judge_arms(
    per_query: Mapping[str, np.ndarray],
    *,
    metric: str = "MRR@10",
    interval: Callable[[np.ndarray], tuple[float, float]] = bootstrap_interval,
) -> dict[str, ArmJudgement]:
    """Compare arms evaluated on the same queries (same order) with the best of them.

    An arm is worse when the interval of its paired per-query difference to the best arm lies
    entirely below zero. Arms tied with the best (interval reaching zero) are not flagged
    however far their means are apart: with few queries, the interval says what the data can
    tell. The best arm is judged tied with itself.
    """
    arrays = {name: np.asarray(v, dtype=float) for name, v in per_query.items()}
    if not arrays:
        raise InputError("judge_arms needs at least one arm's per-query results.")
    lengths = {a.shape for a in arrays.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise InputError(
            f"Per-query results must be 1-D arrays over the same queries; got shapes "
            f"{sorted(map(tuple, lengths))}."
        )
    if next(iter(arrays.values())).shape[0] < 2:
        raise InputError("Judging arms needs at least 2 evaluated queries.")
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise InputError("Per-query results must be finite numbers.")
    means = {name: float(a.mean()) for name, a in arrays.items()}
    best = max(means, key=lambda name: means[name])  # first of equals: the order given
    out = {}
    for name, values in arrays.items():
        if name == best:
            out[name] = ArmJudgement(name, means[name], best, 0.0, 0.0, 0.0, False,
                                     f"{metric} {means[name]:.3f} is the best of the arms")
            continue
        diff = values - arrays[best]  # (n_queries,)
        low, high = interval(diff)
        worse = high < 0
        span = f"paired 95% bootstrap interval of the difference [{low:+.3f}, {high:+.3f}]"
        if worse:
            message = (f"{metric} {means[name]:.3f} is worse than the best arm ({best}, "
                       f"{means[best]:.3f}) beyond its interval: {span} over {diff.shape[0]} "
                       "queries")
        else:
            message = (f"{metric} {means[name]:.3f} is tied with the best arm ({best}, "
                       f"{means[best]:.3f}): {span} reaches 0")
        out[name] = ArmJudgement(name, means[name], best, float(diff.mean()), low, high, worse,
                                 message)
    return out


def judged_status(status: str, judgement: ArmJudgement) -> tuple[str, str | None]:
    """An arm's status after the cross-arm judgement, and the sentence to add to its evidence.

    Worse than the best arm: a stable arm becomes degraded (a collapsed one stays collapsed; a
    run too short to judge stays so, with the sentence).
    An arm the detectors rated degraded or collapsed that retrieves as well as the best keeps
    its status, and the sentence says the two disagree; a stable arm tied with the best gets
    the sentence with its interval. The reader never meets a verdict next to metrics that seem
    to contradict it without being told why.
    """
    if status == TOO_SHORT:  # the retrieval comparison is still a measurement: said, not judged
        return status, None if judgement.arm == judgement.best else judgement.message
    if judgement.worse:
        return (DEGRADED if status == STABLE else status), judgement.message
    if status != STABLE:
        return status, (f"{judgement.message}; the '{status}' verdict rests on the training "
                        "signals above, not on retrieval")
    if judgement.arm != judgement.best:
        # A stable arm whose mean is lower than the best's but tied within the interval: say
        # so, or its "stable" next to a lower number would go unexplained.
        return status, judgement.message
    return status, None
