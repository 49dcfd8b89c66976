"""Paired evidence between training arms: bootstrap intervals and the tied-with-best set.

numpy only (no torch), so saved per-query results can be judged anywhere.

The data of one arm is a (seeds, queries) matrix of a per-query metric (reciprocal rank at 10,
nDCG@10) on one evaluation split, one row per training seed, the columns in the same query order
for every arm (`per_query_matrix` aligns them by query id). Arms are compared *paired*: arm A and
arm B were trained with the same seeds (same batches, same dropout masks) and evaluated on the
same queries, so the per-query difference d[s, q] = A[s, q] - B[s, q] removes the query's own
difficulty, which dominates the variance of each arm's mean.

The estimate is the mean of d over seeds and queries. Its interval is a percentile bootstrap:

- ``method="queries"`` (the default): queries are resampled with replacement, the *same*
  resampled queries for every seed, and the differences are averaged over seeds. The query is
  the unit that is sampled from a population (held-out questions); each seed is a repeat of the
  whole experiment on the same queries, and averaging over seeds keeps seed noise out of the
  point estimate. With 3 seeds, resampling the seeds themselves has only 10 distinct outcomes
  and mostly reflects which seed happens to be drawn twice, so it is not the default; the
  per-seed differences are reported alongside (`PairedDifference.per_seed`) so seed-to-seed
  spread stays visible.
- ``method="hierarchical"``: seeds are resampled with replacement, then queries (jointly across
  the drawn seeds). Wider; a check of how much the conclusion leans on the seeds.

"Tied with the best" (`tied_with_best`): the best arm has the highest mean; an arm is tied with
it when the interval of best - arm contains 0 (its lower end is <= 0). No fixed margin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from headscope.errors import InputError

METHODS = ("queries", "hierarchical")
N_BOOT = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """mean(A - B) over seeds and queries, with its bootstrap interval."""

    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]  # mean difference over queries, one per seed
    n_seeds: int
    n_queries: int
    confidence: float
    method: str
    n_boot: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class TiedSet:
    """The best arm by mean metric, and the arms whose deficit to it is not resolved."""

    best: str
    means: dict[str, float]  # arm -> mean over seeds and queries
    tied: tuple[str, ...]  # arms (best included) whose best - arm interval contains 0
    differences: dict[str, PairedDifference]  # arm -> best - arm (absent for the best)


def _matrix(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(
            f"{name} must be a (seeds, queries) matrix of per-query metrics with at least one "
            f"seed and one query, got shape {array.shape}."
        )
    if not np.isfinite(array).all():
        raise InputError(f"{name} holds a non-finite per-query metric; check the runs.")
    return array


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def paired_bootstrap(
    a,
    b,
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    method: str = "queries",
    seed: int | np.random.Generator = 0,
) -> PairedDifference:
    """Percentile bootstrap interval of mean(a - b); a, b: (seeds, queries), paired cell by
    cell (1-D input is one seed). See the module docstring for the two methods."""
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape != b.shape:
        raise InputError(
            f"Paired arms need the same seeds and queries: shapes {a.shape} and {b.shape} differ."
        )
    if method not in METHODS:
        raise InputError(f"Unknown bootstrap method {method!r}; choose one of {METHODS}.")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie strictly between 0 and 1, got {confidence}.")
    if n_boot < 1:
        raise InputError(f"n_boot must be at least 1, got {n_boot}.")
    rng = _rng(seed)
    d = a - b  # (S, N)
    n_seeds, n_queries = d.shape
    if method == "queries":
        per_query = d.mean(axis=0)  # (N,) averaged over seeds
        idx = rng.integers(0, n_queries, size=(n_boot, n_queries))  # (B, N)
        boots = per_query[idx].mean(axis=1)  # (B,)
    else:
        seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # (B, S)
        query_idx = rng.integers(0, n_queries, size=(n_boot, n_queries))  # (B, N)
        boots = d[seed_idx[:, :, None], query_idx[:, None, :]].mean(axis=(1, 2))  # (B,)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boots, [tail, 1 - tail])
    return PairedDifference(
        mean=float(d.mean()), low=float(low), high=float(high),
        per_seed=tuple(float(x) for x in d.mean(axis=1)), n_seeds=n_seeds,
        n_queries=n_queries, confidence=confidence, method=method, n_boot=n_boot,
    )


def tied_with_best(
    arms: Mapping[str, object],
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    method: str = "queries",
    seed: int = 0,
) -> TiedSet:
    """The best arm (highest mean) and every arm whose interval of best - arm contains 0.

    `arms`: name -> (seeds, queries) matrix, all paired (same seeds, same queries, same order).
    Each comparison uses a generator seeded with `seed`, so the result does not depend on the
    order of the arms. Ties in the mean go to the arm named first."""
    if not arms:
        raise InputError("tied_with_best needs at least one arm.")
    matrices = {name: _matrix(m, f"arm {name!r}") for name, m in arms.items()}
    means = {name: float(m.mean()) for name, m in matrices.items()}
    best = max(means, key=lambda name: means[name])  # first of equal maxima
    differences = {
        name: paired_bootstrap(matrices[best], m, n_boot=n_boot, confidence=confidence,
                               method=method, seed=seed)
        for name, m in matrices.items()
        if name != best
    }
    tied = tuple(name for name in matrices if name == best or differences[name].low <= 0)
    return TiedSet(best=best, means=means, tied=tied, differences=differences)


def per_query_matrix(runs: Sequence[Mapping[str, float]],
                     order: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Stack per-seed {query id: metric} maps into a (seeds, queries) matrix. Every seed must
    hold the same query ids; columns follow `order` (default: sorted query ids), so matrices of
    different arms built with the same order are paired."""
    if not runs:
        raise InputError("per_query_matrix needs at least one seed's per-query metrics.")
    ids = set(runs[0])
    for i, run in enumerate(runs[1:], start=1):
        if set(run) != ids:
            missing = sorted(ids ^ set(run))[:3]
            raise InputError(
                f"Seed {i} was evaluated on other queries than seed 0 (e.g. {missing}); pair "
                "only runs on the same evaluation split."
            )
    columns = tuple(order) if order is not None else tuple(sorted(ids))
    if set(columns) != ids:
        raise InputError("The query order must name exactly the evaluated query ids.")
    return np.array([[run[q] for q in columns] for run in runs], dtype=np.float64), columns
