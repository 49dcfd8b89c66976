"""Collapse detectors over a training run's StepRecords and its held-out metrics.

Each detector is one function returning `Evidence` (which detector fired, at which step, the value
and the threshold it crossed) or None. `verdict` runs them all and rates the arm:

- "collapsed": the run produced no usable retriever: non-finite loss or gradients, dense collapse
  (most of the vocabulary active), dead collapse (no active terms), or evaluation near zero.
- "degraded": it trained, but badly: loss spikes, exploding scores, or no learning.
- "stable": no detector fired.

Thresholds are named fields of `Thresholds`; their values and reasons are documented there.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headscope.splade.telemetry import StepRecord

if TYPE_CHECKING:  # evaluate imports torch; the detectors read telemetry files without it
    from headscope.splade.evaluate import RetrievalMetrics

STABLE, DEGRADED, COLLAPSED = "stable", "degraded", "collapsed"
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
    # Dense / dead collapse are judged on the median over the last `tail` steps, so a dense
    # start that training repairs does not count. Dense: active passage terms above
    # `dense_share` of the vocabulary (trained SPLADE: 150-250 of 30k, under 1%; the untrained
    # collapse seen in sentence-transformers issue 3431: 100%). Dead: mean active terms per
    # query or passage below `dead_active` (SPLADE cannot match anything with no terms).
    tail: int = 5
    dense_share: float = 0.5
    dead_active: float = 1.0
    # Score explosion: |mean positive score| above `score_limit` at any step. Trained SPLADE
    # dot products are in the tens; ModernBERT at k = 1 starts with a loss of 2e4.
    score_limit: float = 1e3
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


@dataclass(frozen=True)
class Evidence:
    detector: str
    severity: str  # "degraded" | "collapsed"
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


def loss_spike(records: Sequence[StepRecord], th: Thresholds) -> Evidence | None:
    for i in range(th.spike_min_history, len(records)):
        history = [
            r.loss for r in records[max(0, i - th.spike_window) : i] if math.isfinite(r.loss)
        ]
        if len(history) < th.spike_min_history:
            continue
        median = statistics.median(history)
        loss = records[i].loss
        limit = max(th.spike_factor * median, median + th.spike_min_excess)
        if math.isfinite(loss) and loss > limit:
            return Evidence(
                "loss_spike",
                DEGRADED,
                records[i].step,
                loss,
                limit,
                f"loss {loss:.4g} at step {records[i].step} exceeds {th.spike_factor:g}x "
                f"the running median {median:.4g}",
            )
    return None


def _tail_median(records: Sequence[StepRecord], th: Thresholds, attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in records[-th.tail :])


def dense_collapse(
    records: Sequence[StepRecord], th: Thresholds, vocab_size: int
) -> Evidence | None:
    if not records or vocab_size <= 0:
        return None
    active = _tail_median(records, th, "active_passage")
    limit = th.dense_share * vocab_size
    if active > limit:
        return Evidence(
            "dense_collapse",
            COLLAPSED,
            records[-1].step,
            active,
            limit,
            f"passages keep {active:.0f} of {vocab_size} terms active at the end "
            f"(more than {th.dense_share:.0%} of the vocabulary)",
        )
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
    status = max((e.severity for e in evidence), key=_RANK.__getitem__, default=STABLE)
    return Verdict(status, evidence)
