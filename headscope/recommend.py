"""Findings and the recommended k, computed from statistics alone (no torch, no numpy needed).

Two outputs:

- `diagnose` turns weight and per-k probe statistics into `Finding`s with stable codes
  (documented in docs/findings.md; never renumber a code, only add new ones).
- `recommend` proposes the divisor k for the MLM-head projection under one of three rules:
  "bands" (smallest k whose statistics fall inside every healthy band), "paper" (k = 16 for a
  large head, else 1) and "reference" (the k whose statistics best match a reference
  checkpoint's unscaled statistics on the same probe).

Reminder that shapes the bands (docs/science.md): dividing every logit by k never changes which
terms are active; only an output bias left undivided can. So the active-terms band is a health
check that k usually cannot repair, and the bands that choose k are the magnitude ones: start
loss, score scale, term weights, saturation and the cosine between unrelated texts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from headscope.errors import InputError
from headscope.stats import PYSERINI_CEILING, KStats, WeightStats, k_text, number, percent

SEVERITIES = ("info", "warning", "error")
RULES = ("bands", "paper", "reference")

# Per-k statistics a band may bound: every KStats field except k itself.
METRICS: tuple[str, ...] = tuple(f.name for f in fields(KStats) if f.name != "k")


# --------------------------------------------------------------------------------------------
# Bands


@dataclass(frozen=True)
class Band:
    """A healthy range for one per-k statistic; `None` leaves that side open."""

    metric: str  # a KStats field name
    low: float | None  # lower bound, inclusive; None: open
    high: float | None  # upper bound, inclusive; None: open
    provenance: str  # one line: where the numbers come from, and whether they are provisional

    def margin(self, value: float) -> float:
        """Signed relative distance to the nearest bound: > 0 inside, < 0 outside.

        Relative to the bound's magnitude so that margins of different metrics add up.
        A value that is not finite (NaN: not measurable) is infinitely outside.
        """
        if not math.isfinite(value):
            return -math.inf
        sides = []
        if self.high is not None:
            sides.append((self.high - value) / max(abs(self.high), 1e-12))
        if self.low is not None:
            sides.append((value - self.low) / max(abs(self.low), 1e-12))
        return min(sides) if sides else math.inf

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and value < self.low:
            return False
        return not (self.high is not None and value > self.high)

    def describe(self) -> str:
        """The band in words, e.g. 'at most 44' or 'between 0.05 and 2.5'."""
        if self.low is not None and self.high is not None:
            return f"between {_num(self.low)} and {_num(self.high)}"
        if self.high is not None:
            return f"at most {_num(self.high)}"
        if self.low is not None:
            return f"at least {_num(self.low)}"
        return "unbounded"


# Mean decoder row norm above which the paper's k = 16 applies. Between the largest BERT-style
# head we measured (ALBERT 1.333; BERT-tiny 0.682) and ModernBERT-base (2.553, the paper's
# case). Provisional: only three heads are known.
LARGE_HEAD_ROW_NORM = 1.5
PAPER_K = 16.0

# Calibrated on the measured trainings of docs/demonstration.md (real BERT-tiny and its three
# simulated dense regimes, BoolQ, 100 steps), read on the built-in probe's statistics. Each band
# is about something k controls; activity and the similarity of unrelated texts are reported as
# findings (HS201, HS203, HS205) but do not choose k: a head 85% active at step 0 trained well.
BAND_ACTIVE_PASSAGE_SHARE = Band(
    "active_passage_share",
    None,
    0.10,
    "Trained SPLADE keeps 150-250 terms per document (<1% of a 30k vocabulary, docs/science.md); a "
    "dense head's step 0 has ~75% of V active. Not a default band: k cannot change activity "
    "unless the bias is kept, and the demonstration's 85%-active arm (projection, k = 4) "
    "trained well.",
)
BAND_COSINE_UNRELATED = Band(
    "cosine_unrelated",
    None,
    0.90,
    "sentence-transformers issue 3431: unrelated texts have cosine ~0.8 on healthy bases and "
    "1.0 on a broken (fully dense) one. Not a default band: dense simulations sat at 0.89-0.97 "
    "at every k whether they trained well or not (docs/demonstration.md).",
)
BAND_SHARE_ABOVE_5 = Band(
    "share_above_5",
    None,
    0.01,
    "Term weights above 5 exceed pyserini's quantisation ceiling and sit where log1p "
    "saturates; at most 1% of active passage weights may; provisional.",
)
BAND_START_LOSS = Band(
    "start_loss",
    None,
    150.0,
    "Built-in probe, batch 16 (chance level ln 16 = 2.8). docs/demonstration.md: the "
    "projection simulation trained stably from a probe start loss of 124 (k = 4) and degraded "
    "from 826 (k = 1); the bias simulation trained worse from 171 (k = 4) than from lower "
    "losses. Few arms: low confidence.",
)
BAND_TERM_WEIGHT_MEAN = Band(
    "term_weight_mean",
    0.08,
    0.2757,
    "High bound fitted on docs/calibration.md's grid (six conditions, 3 seeds, paired "
    "bootstrap; moving this one bound put the most recommendations in their tied-with-best "
    "sets, and the middle of the run of equally good values was taken); it was 2.5 (a broken "
    "untrained SPLADE has ~3.7, sentence-transformers issue 3431). Low bound: a mean of 0.043 "
    "(bias simulation, k = 64) trained worse than 0.161 (k = 16) in docs/demonstration.md.",
)
# The mean positive q.d score above which a run explodes: the confirm detectors' limit
# (splade.detectors.Thresholds.score_limit) and the high end of the score band are this number.
SCORE_LIMIT = 1000.0

BAND_SCORE_POS = Band(
    "score_pos",
    None,
    SCORE_LIMIT,
    "The confirm detectors' score-explosion limit (1e3): in docs/demonstration.md every arm "
    "above it at step 0 had a gradient-norm blow-up (2.5e3-1.2e4); arms at 110-480 trained "
    "well.",
)

DEFAULT_BANDS: tuple[Band, ...] = (
    BAND_SHARE_ABOVE_5,
    BAND_START_LOSS,
    BAND_TERM_WEIGHT_MEAN,
    BAND_SCORE_POS,
)


def override_bands(
    overrides: Mapping[str, tuple[float | None, float | None]],
    bands: Sequence[Band] = DEFAULT_BANDS,
) -> tuple[Band, ...]:
    """Replace the (low, high) of bands by metric name; a metric not yet banded is added.

    `override_bands({"start_loss": (None, 20.0)})` keeps every other default band.
    """
    result = list(check_bands(bands))
    for metric, bounds in overrides.items():
        if metric not in METRICS:
            raise InputError(
                f"Cannot override band {metric!r}: it is not a per-k statistic; use one of: "
                f"{', '.join(METRICS)}."
            )
        if not (isinstance(bounds, tuple | list) and len(bounds) == 2):
            raise InputError(
                f"Band override for {metric!r} must be a (low, high) pair, got {bounds!r}; use "
                "None for an open side."
            )
        low, high = bounds
        existing = [i for i, b in enumerate(result) if b.metric == metric]
        if existing:
            old = result[existing[0]]
            provenance = f"Overridden by the user (default {old.describe()}: {old.provenance})"
            result[existing[0]] = Band(metric, low, high, provenance)
        else:
            result.append(Band(metric, low, high, "Added by the user."))
    return check_bands(result)


def check_bands(bands: Sequence[Band]) -> tuple[Band, ...]:
    """Validate bands: known metrics, one band per metric, numeric bounds with low <= high."""
    seen: set[str] = set()
    for band in bands:
        if band.metric not in METRICS:
            raise InputError(
                f"Band metric {band.metric!r} is not a per-k statistic; use one of: "
                f"{', '.join(METRICS)}."
            )
        if band.metric in seen:
            raise InputError(
                f"Two bands bound {band.metric!r}; keep one (override_bands replaces a band)."
            )
        seen.add(band.metric)
        for side in (band.low, band.high):
            if side is not None and (
                isinstance(side, bool)
                or not isinstance(side, int | float)
                or not math.isfinite(side)
            ):
                raise InputError(
                    f"Band {band.metric!r} has bound {side!r}; bounds must be finite numbers or "
                    "None."
                )
        if band.low is not None and band.high is not None and band.low > band.high:
            raise InputError(
                f"Band {band.metric!r} has low {band.low} above high {band.high}; swap them."
            )
    return tuple(bands)


# --------------------------------------------------------------------------------------------
# Recommendation


@dataclass(frozen=True)
class KVerdict:
    """Which bands one candidate k fails (empty: it passes them all)."""

    k: float  # a candidate divisor
    failed: tuple[str, ...]  # band metrics, in band order

    @property
    def passed(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class Recommendation:
    k: float  # the recommended divisor of the projection
    rule: str  # the rule actually applied: "bands" | "paper" | "reference"
    reasons: tuple[str, ...]  # checkable sentences with numbers
    passing: tuple[float, ...]  # candidate ks inside every band, ascending
    verdicts: tuple[KVerdict, ...] = ()  # one per candidate k, ascending; () without a probe
    bands: tuple[Band, ...] = ()  # the bands the verdicts used
    scale_bias: bool = False  # the statistics (and so the fix) divide the output bias by k too


def decision_text(rec: Recommendation, *, has_bias: bool = True, short: bool = False) -> str:
    """The recommendation as the one decision it is: k and what happens to the output bias.

    Every place that shows a recommendation shows this text, so k is never seen without its
    bias setting: 'k = 16, output bias divided by k too (--scale-bias)'. `has_bias`: whether
    the head has an output bias at all; `short`: a few words for table cells and legends.
    """
    k = _k(rec.k)
    if rec.k == 1:
        return "k = 1 (no rescale)" if short else (
            "k = 1: no rescale (projection and output bias as shipped)")
    if not has_bias:
        return f"k = {k} (no output bias)" if short else (
            f"k = {k}: projection divided by {k} (the head has no output bias)")
    if rec.scale_bias:
        return f"k = {k}, bias divided" if short else (
            f"k = {k}: projection and output bias divided by {k} (fix --scale-bias)")
    return f"k = {k}, bias kept" if short else (
        f"k = {k}: projection divided by {k}, output bias kept (fix --no-scale-bias)")


# Statistics compared by the reference rule: the three that scale with the logits and drive
# the first training steps (loss, weight size, score size).
REFERENCE_METRICS = ("start_loss", "term_weight_mean", "score_pos")


def recommend(
    per_k: Sequence[KStats],
    *,
    rule: str = "bands",
    bands: Sequence[Band] = DEFAULT_BANDS,
    weights: WeightStats | None = None,
    reference: Sequence[KStats] | None = None,
) -> Recommendation:
    """Recommend the divisor k for the MLM-head projection.

    Without probe statistics (`per_k` empty) the paper rule is applied whatever `rule` says,
    and the first reason says so; this is how a weights-only report gets its recommendation.
    """
    if rule not in RULES:
        raise InputError(f"Unknown recommendation rule {rule!r}; use one of: {', '.join(RULES)}.")
    bands = check_bands(bands)
    per_k = _sorted_candidates(per_k)
    verdicts = tuple(KVerdict(s.k, _failed(s, bands)) for s in per_k)
    passing = tuple(v.k for v in verdicts if v.passed)

    if not per_k:
        if weights is None:
            raise InputError(
                "Cannot recommend k without statistics: pass probe statistics (per_k) or the "
                "head's weight statistics (weights)."
            )
        k, reasons = _paper(weights)
        if rule != "paper":
            reasons = (
                f"No probe statistics were measured, so the paper rule was applied instead of "
                f"the {rule} rule.",
            ) + reasons
        return Recommendation(k, "paper", reasons, passing, verdicts, bands)

    if rule == "paper":
        if weights is None:
            raise InputError(
                "The paper rule needs the head's weight statistics; pass weights=WeightStats "
                "or use rule='bands'."
            )
        k, reasons = _paper(weights)
        verdict = next((v for v in verdicts if v.k == k), None)
        if verdict is not None:
            reasons += (_verdict_sentence(verdict, per_k, bands),)
        return Recommendation(k, "paper", reasons, passing, verdicts, bands)

    if rule == "reference":
        if not reference:
            raise InputError(
                "The reference rule needs the reference checkpoint's statistics on the same "
                "probe; pass reference=(KStats, ...) including k = 1."
            )
        k, reasons = _reference(per_k, reference)
        return Recommendation(k, "reference", reasons, passing, verdicts, bands)

    k, reasons = _bands(per_k, verdicts, bands)
    return Recommendation(k, "bands", reasons, passing, verdicts, bands)


def _sorted_candidates(per_k: Sequence[KStats]) -> tuple[KStats, ...]:
    ordered = tuple(sorted(per_k, key=lambda s: s.k))
    ks = [s.k for s in ordered]
    for a, b in zip(ks, ks[1:], strict=False):
        if a == b:
            raise InputError(f"k = {_k(a)} appears twice in the per-k statistics; pass each once.")
    return ordered


def _failed(stats: KStats, bands: Sequence[Band]) -> tuple[str, ...]:
    return tuple(b.metric for b in bands if not b.contains(getattr(stats, b.metric)))


ACTIVITY_METRICS = ("active_passage_share", "active_query_share", "active_passage",
                    "active_query", "frac_positive")


def unreachable_bands(verdicts: Sequence[KVerdict], bands: Sequence[Band]) -> tuple[Band, ...]:
    """Bands that no candidate k brings its statistic into: k cannot be chosen by them."""
    if not verdicts:
        return ()
    return tuple(b for b in bands if all(b.metric in v.failed for v in verdicts))


def _unreachable_sentence(band: Band) -> str:
    if band.metric in ACTIVITY_METRICS:
        return (f"{band.metric} is outside its band ({band.describe()}) at every candidate k, "
                "so it does not choose k: dividing the logits by k does not change which terms "
                "are active (only an output bias left undivided can); training's FLOPS "
                "regulariser has to sparsify this head.")
    return (f"{band.metric} is outside its band ({band.describe()}) at every candidate k, so "
            "the candidate closest to the band was taken; k divides this statistic, so other "
            "candidates (--ks) may reach it.")


def _bands(
    per_k: tuple[KStats, ...], verdicts: tuple[KVerdict, ...], bands: tuple[Band, ...]
) -> tuple[float, tuple[str, ...]]:
    """The smallest k inside every band that some candidate k can reach; when k moves a band's
    statistic but no candidate reaches it, the passing k that comes closest.

    A band no candidate reaches is reported and does not veto every k. An activity band (a
    dense head's active-term share, which k cannot change) then plays no part; otherwise such a
    head would always get k = 1. A magnitude band (start loss, term weights, scores: k divides
    them) out of reach at every k means the head is on a larger scale than the candidates
    cover: among the ks inside the other bands, the one closest to it wins (the smallest total
    relative shortfall; on a head k scales, the largest k), and the reasons say so.
    """
    candidates = ", ".join(_k(s.k) for s in per_k)
    by_k = {s.k: s for s in per_k}
    unreachable = unreachable_bands(verdicts, bands)
    skip = {b.metric for b in unreachable}
    chase = tuple(b for b in unreachable if b.metric not in ACTIVITY_METRICS)
    gate = tuple(b for b in bands if b.metric not in skip)
    passing = [v for v in verdicts if not (set(v.failed) - skip)]
    if passing:
        every = "every band" if not unreachable else "every band that some candidate k reaches"
        if chase:
            def chase_shortfall(v: KVerdict) -> float:
                return -sum(b.margin(getattr(by_k[v.k], b.metric)) for b in chase)

            chosen = min(passing, key=lambda v: (chase_shortfall(v), v.k))
            reasons = [
                f"k = {_k(chosen.k)} is, of the candidates inside {every} (candidates: "
                f"{candidates}; passing: {', '.join(_k(v.k) for v in passing)}), the one "
                f"closest to the band{'s' if len(chase) > 1 else ''} of "
                f"{', '.join(b.metric for b in chase)}, which no candidate reaches."
            ]
        else:
            chosen = passing[0]
            reasons = [
                f"k = {_k(chosen.k)} is the smallest candidate whose statistics fall inside "
                f"{every} (candidates: {candidates}; passing: "
                f"{', '.join(_k(v.k) for v in passing)})."
            ]
        reasons.append(_inside_sentence(by_k[chosen.k], gate or bands))
        for v in verdicts:
            if v.k < chosen.k:
                reasons.append(_verdict_sentence(v, per_k, bands))
        reasons.extend(_unreachable_sentence(b) for b in unreachable)
        return chosen.k, tuple(reasons)

    # No k passes the reachable bands jointly: take the one failing fewest; among those, the one
    # closest to passing (smallest total relative shortfall over its failed bands), then the
    # smaller k.
    def shortfall(v: KVerdict) -> float:
        stats = by_k[v.k]
        return -sum(b.margin(getattr(stats, b.metric)) for b in bands if b.metric in v.failed)

    chosen = min(verdicts, key=lambda v: (len(v.failed), shortfall(v), v.k))
    reasons = [
        f"No candidate k falls inside every band (candidates: {candidates}); k = "
        f"{_k(chosen.k)} fails the fewest ({len(chosen.failed)} of {len(bands)}: "
        f"{', '.join(chosen.failed)}), and among those it is closest to passing."
    ]
    reasons.append(_verdict_sentence(chosen, per_k, bands))
    reasons.extend(_unreachable_sentence(b) for b in unreachable)
    return chosen.k, tuple(reasons)


def prefer_divided_bias(kept: Recommendation, divided: Recommendation) -> bool:
    """Whether dividing the output bias too lets k reach strictly more bands.

    With the bias kept, every logit tends to its bias as k grows; a head whose activity lives
    in the bias is then out of reach of any k, and the bias must be divided too.
    """
    def reachable(rec: Recommendation) -> int:
        return len(rec.bands) - len(unreachable_bands(rec.verdicts, rec.bands))

    return reachable(divided) > reachable(kept)


def bias_fallback(kept: Recommendation, divided: Callable[[], Recommendation]
                  ) -> Recommendation | None:
    """The bias fallback of the bands rule, the one place it is decided: once some band is out
    of reach of every k with the output bias kept, the recommendation with the bias divided too
    (`divided()`, measured only then) when k reaches strictly more bands with it
    (`prefer_divided_bias`); None keeps the bias. `api.inspect_loaded` measures `divided` with a
    probe pass; scripts/calibrate.py replays it from recorded statistics."""
    if not unreachable_bands(kept.verdicts, kept.bands):
        return None
    candidate = divided()
    return candidate if prefer_divided_bias(kept, candidate) else None


def _inside_sentence(stats: KStats, bands: Sequence[Band]) -> str:
    parts = [f"{b.metric} {_num(getattr(stats, b.metric))} ({b.describe()})" for b in bands]
    return f"At k = {_k(stats.k)}: " + "; ".join(parts) + "."


def _verdict_sentence(verdict: KVerdict, per_k: Sequence[KStats], bands: Sequence[Band]) -> str:
    stats = next(s for s in per_k if s.k == verdict.k)
    if verdict.passed:
        return f"k = {_k(verdict.k)} falls inside every band."
    by_metric = {b.metric: b for b in bands}
    parts = []
    for metric in verdict.failed:
        band = by_metric[metric]
        parts.append(f"{metric} {_num(getattr(stats, metric))} is not {band.describe()}")
    return f"k = {_k(verdict.k)} fails: " + "; ".join(parts) + "."


def _paper(weights: WeightStats) -> tuple[float, tuple[str, ...]]:
    norm = weights.row_norm_all.mean
    rows = f"{weights.row_norm_all.count:,} rows"
    if norm > LARGE_HEAD_ROW_NORM:
        return PAPER_K, (
            f"Mean decoder row norm over all {rows} is {_num(norm)}, above "
            f"{_num(LARGE_HEAD_ROW_NORM)}, so the paper's setting k = {_k(PAPER_K)} applies "
            f"(arXiv 2606.18811: ModernBERT-base has 2.553 and trains well at k = 16).",
        )
    return 1.0, (
        f"Mean decoder row norm over all {rows} is {_num(norm)}, at most "
        f"{_num(LARGE_HEAD_ROW_NORM)} (BERT-tiny 0.682, ALBERT 1.333), so the paper's rule leaves "
        "the head unscaled: k = 1.",
    )


def reference_distance(stats: KStats, ref: KStats) -> float:
    """Mean |ln(stats / ref)| over REFERENCE_METRICS; metrics not positive on both sides are
    skipped, and inf when none is comparable. 0 means identical; 0.69 a factor 2 on average."""
    terms = []
    for metric in REFERENCE_METRICS:
        a, b = getattr(stats, metric), getattr(ref, metric)
        if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0:
            terms.append(abs(math.log(a / b)))
    return sum(terms) / len(terms) if terms else math.inf


def _reference(
    per_k: tuple[KStats, ...], reference: Sequence[KStats]
) -> tuple[float, tuple[str, ...]]:
    ref = next((s for s in reference if s.k == 1), None)
    if ref is None:
        raise InputError(
            "The reference statistics have no k = 1 entry; measure the reference checkpoint "
            "with k = 1 among its candidates."
        )
    distances = [(reference_distance(s, ref), s.k) for s in per_k]
    ranked = sorted(distances)
    best_d, best_k = ranked[0]
    if not math.isfinite(best_d):
        raise InputError(
            "No candidate k can be compared with the reference: start_loss, term_weight_mean "
            "and score_pos must be positive and finite on both sides."
        )
    stats = next(s for s in per_k if s.k == best_k)
    reasons = [
        f"k = {_k(best_k)} best matches the reference checkpoint's k = 1 statistics: mean "
        f"|log ratio| {_num(best_d)} over {', '.join(REFERENCE_METRICS)}"
        + (f" (next: k = {_k(ranked[1][1])} at {_num(ranked[1][0])})." if len(ranked) > 1 else "."),
        "At k = "
        + _k(best_k)
        + ": "
        + "; ".join(
            f"{m} {_num(getattr(stats, m))} vs reference {_num(getattr(ref, m))}"
            for m in REFERENCE_METRICS
        )
        + ".",
    ]
    return best_k, tuple(reasons)


# --------------------------------------------------------------------------------------------
# Findings


@dataclass(frozen=True)
class Finding:
    code: str  # stable, e.g. "HS101"; see FINDING_CODES and docs/findings.md
    name: str  # stable slug, e.g. "large-head-scale"
    severity: str  # "info" | "warning" | "error"
    message: str  # one checkable sentence with the numbers and the remedy
    value: float | None  # the measured value the finding is about
    threshold: float | None  # the documented threshold it crossed


# code -> (name, severity). Codes are never renumbered or reused.
FINDING_CODES: dict[str, tuple[str, str]] = {
    "HS101": ("large-head-scale", "warning"),
    "HS102": ("rows-beyond-tokenizer", "info"),
    "HS103": ("tied-decoder", "info"),
    "HS104": ("head-not-loaded", "error"),
    "HS201": ("dense-at-k1", "warning"),
    "HS202": ("saturating-weights", "warning"),
    "HS203": ("unrelated-texts-similar", "warning"),
    "HS204": ("high-start-loss", "warning"),
    "HS205": ("dense-at-every-k", "warning"),
    "HS206": ("no-active-terms", "error"),
    "HS207": ("non-finite-statistics", "error"),
    "HS208": ("bias-dominates-activity", "warning"),
    "HS209": ("probe-vocabulary-mismatch", "warning"),
    "HS301": ("weights-clip-in-pyserini", "warning"),
    "HS302": ("weights-coarse-in-anserini", "info"),
    "HS303": ("too-many-terms-for-pgvector-hnsw", "warning"),
    "HS304": ("too-many-terms-for-pgvector", "error"),
    "HS305": ("logits-overflow-float16", "warning"),
    "HS306": ("weights-coarse-in-bfloat16", "info"),
}

VOCAB_KEYS = ("n_rows", "n_tokenizer", "n_real_rows", "tied", "head_loaded")


def finding(code: str, message: str, value: float | None, threshold: float | None) -> Finding:
    name, severity = FINDING_CODES[code]
    return Finding(code, name, severity, message, value, threshold)


def diagnose(
    weights: WeightStats,
    per_k: Sequence[KStats] = (),
    vocab: Mapping[str, Any] | None = None,
    recommendation: Recommendation | None = None,
) -> tuple[Finding, ...]:
    """Findings about the head as shipped (k = 1), ordered by code.

    `recommendation` (of the same statistics) lets HS101 say what the probe showed and what
    was recommended instead of advising a rescale the probe may not support.

    `vocab` may hold n_rows (decoder rows), n_tokenizer (len(tokenizer) or None), n_real_rows
    (accepted for the caller's convenience; WeightStats already carries it), tied (bool) and
    head_loaded (bool); absent keys skip the findings that need them, an unknown key raises.
    Probe findings use the k = 1 statistics, or the smallest measured k when k = 1 was not
    measured.
    """
    vocab = dict(vocab or {})
    unknown = sorted(set(vocab) - set(VOCAB_KEYS))
    if unknown:
        raise InputError(
            f"diagnose got unknown vocab key(s) {', '.join(unknown)}; valid keys: "
            f"{', '.join(VOCAB_KEYS)}."
        )
    found: list[Finding] = []

    if weights.row_norm_all.mean > LARGE_HEAD_ROW_NORM:
        found.append(_large_head(weights, _sorted_candidates(per_k), recommendation))
    n_rows = vocab.get("n_rows", weights.n_rows)
    n_tok = vocab.get("n_tokenizer")
    if n_tok is not None and n_rows > n_tok:
        extra = n_rows - n_tok
        found.append(
            finding(
                "HS102",
                f"The decoder has {n_rows:,} rows but the tokenizer only {n_tok:,} tokens: "
                f"{extra:,} rows were never trained; real-token statistics (row_norm_real) "
                "exclude them.",
                float(extra),
                float(n_tok),
            )
        )
    if vocab.get("tied") is True:
        found.append(
            finding(
                "HS103",
                "The decoder is tied to the input embeddings: dividing it in place also divides "
                "the embeddings; use the untie or fold strategy to change only the projection.",
                None,
                None,
            )
        )
    if vocab.get("head_loaded") is False:
        found.append(
            finding(
                "HS104",
                "The MLM head was not loaded from the checkpoint (newly initialised): its "
                "statistics describe random weights; use a checkpoint that ships a trained MLM "
                "head.",
                None,
                None,
            )
        )

    per_k = _sorted_candidates(per_k)
    if per_k:
        found.extend(_probe_findings(per_k))
    return tuple(sorted(found, key=lambda f: f.code))


def _large_head(weights: WeightStats, per_k: tuple[KStats, ...],
                rec: Recommendation | None) -> Finding:
    """HS101. The row norm is a fact about the weights; whether it harms SPLADE is what the
    probe measures, so the message reports the probe (or says none was run), never a remedy the
    probe does not support."""
    norm = weights.row_norm_all.mean
    fact = (f"Mean decoder row norm is {_num(norm)}, above {_num(LARGE_HEAD_ROW_NORM)} "
            "(ModernBERT-base: 2.553), a fact about the weights")
    if not per_k:
        message = (f"{fact}; no probe was run, so the paper's k = {_k(PAPER_K)} is recommended "
                   "from the row norm alone; inspect without --weights-only to measure what "
                   "this head does to SPLADE's term weights and scores.")
        return finding("HS101", message, norm, LARGE_HEAD_ROW_NORM)
    base = next((s for s in per_k if s.k == 1), per_k[0])
    at = f"k = {_k(base.k)}"
    verdict = next((v for v in rec.verdicts if v.k == base.k), None) if rec else None
    if verdict is not None and rec is not None and verdict.failed:
        by_metric = {b.metric: b for b in rec.bands}
        shown = "; ".join(f"{m} {_num(getattr(base, m))} is not {by_metric[m].describe()}"
                          for m in verdict.failed)
        probe = f"on the probe at {at}: {shown}"
    else:
        shown = ", ".join(f"{m} {_num(getattr(base, m))}" for m in REFERENCE_METRICS)
        inside = " (inside every band)" if verdict is not None else ""
        probe = f"on the probe at {at}: {shown}{inside}"
    if rec is None:
        message = f"{fact}; {probe}."
    elif rec.k == base.k == 1:
        message = (f"{fact}; {probe}, so the head is left as shipped (recommended: k = 1) "
                   "despite its size.")
    else:
        message = (f"{fact}; {probe}; recommended: "
                   f"{decision_text(rec, has_bias=weights.bias_mean is not None)}.")
    return finding("HS101", message, norm, LARGE_HEAD_ROW_NORM)


def _probe_findings(per_k: tuple[KStats, ...]) -> list[Finding]:
    found: list[Finding] = []
    base = next((s for s in per_k if s.k == 1), per_k[0])
    at = "at k = 1" if base.k == 1 else f"at k = {_k(base.k)} (k = 1 was not measured)"

    bad = [
        f"{f.name} at k = {_k(s.k)}"
        for s in per_k
        for f in fields(KStats)
        if not math.isfinite(getattr(s, f.name))
        # With no active passage term the weight mean/max are undefined; HS206 reports that.
        and not (f.name in ("term_weight_mean", "term_weight_max") and s.active_passage == 0)
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        found.append(
            finding(
                "HS207",
                f"Probe statistics are not finite ({shown}): the forward pass overflowed or "
                "produced NaN; re-run in float32.",
                float(len(bad)),
                0.0,
            )
        )

    dense = BAND_ACTIVE_PASSAGE_SHARE.high
    assert dense is not None
    if base.active_passage_share > dense:
        found.append(
            finding(
                "HS201",
                f"{_pct(base.active_passage_share)} of the vocabulary is active per passage "
                f"{at} (above {_pct(dense)}; trained SPLADE keeps 150-250 terms): the head "
                "starts dense.",
                base.active_passage_share,
                dense,
            )
        )
    if base.active_passage == 0:
        found.append(
            finding(
                "HS206",
                f"No vocabulary term is active on any probe passage {at}: every logit is <= 0, so "
                "SPLADE gets no gradient through relu; check the head and the output bias.",
                0.0,
                0.0,
            )
        )
    largest = per_k[-1]
    if len(per_k) > 1 and largest.active_passage_share > dense:
        found.append(
            finding(
                "HS205",
                f"{_pct(largest.active_passage_share)} of the vocabulary is still active per "
                f"passage at the largest candidate k = {_k(largest.k)}: dividing by k does not "
                "change which terms are active (only an undivided output bias can), so "
                "rescaling alone will not make this head sparse.",
                largest.active_passage_share,
                dense,
            )
        )
    checks = (
        (
            "HS202",
            BAND_SHARE_ABOVE_5,
            "of active passage weights exceed 5 (pyserini's quantisation ceiling; log1p saturates)",
        ),
        (
            "HS203",
            BAND_COSINE_UNRELATED,
            "is the mean cosine between unrelated passages (healthy bases ~0.8, broken ones 1.0)",
        ),
        ("HS204", BAND_START_LOSS, "is the in-batch contrastive loss training would start with"),
    )
    for code, band, what in checks:
        value = getattr(base, band.metric)
        assert band.high is not None
        if math.isfinite(value) and value > band.high:
            shown = _pct(value) if band.metric == "share_above_5" else _num(value)
            limit = _pct(band.high) if band.metric == "share_above_5" else _num(band.high)
            found.append(
                finding(
                    code,
                    f"{shown} {what} {at}, above {limit}; a larger k can reduce it.",
                    value,
                    band.high,
                )
            )
    return found


# --------------------------------------------------------------------------------------------
# Number formatting for sentences: the one format of headscope.stats (12,000, never 1.2e+04)

_num = number
_k = k_text
_pct = percent


__all__ = [
    "ACTIVITY_METRICS",
    "ANSERINI_COARSE_MEAN",
    "BAND_ACTIVE_PASSAGE_SHARE",
    "BAND_COSINE_UNRELATED",
    "BAND_SCORE_POS",
    "BAND_SHARE_ABOVE_5",
    "BAND_START_LOSS",
    "BAND_TERM_WEIGHT_MEAN",
    "DEFAULT_BANDS",
    "FINDING_CODES",
    "FLOAT16_MAX",
    "LARGE_HEAD_ROW_NORM",
    "METRICS",
    "PAPER_K",
    "PGVECTOR_HNSW_NONZERO",
    "PGVECTOR_SPARSEVEC_NONZERO",
    "REFERENCE_METRICS",
    "RULES",
    "SCORE_LIMIT",
    "SEVERITIES",
    "UNKNOWN_TOKEN_SHARE",
    "Band",
    "Finding",
    "KVerdict",
    "Recommendation",
    "bias_fallback",
    "check_bands",
    "decision_text",
    "diagnose",
    "engine_findings",
    "finding",
    "override_bands",
    "precision_findings",
    "prefer_divided_bias",
    "probe_fit_findings",
    "recommend",
    "reference_distance",
    "serving_findings",
    "unreachable_bands",
]


# Share of probe tokens mapped to the unknown token above which the probe does not fit the
# model's vocabulary. The built-in English probe: 0% [UNK] under BERT-tiny's tokenizer, 88%
# under a chemistry ALBERT's 591 SMILES tokens (whose probe statistics then describe [UNK]).
UNKNOWN_TOKEN_SHARE = 0.05


def probe_fit_findings(unknown_share: float | None) -> tuple[Finding, ...]:
    """HS209 when too many probe tokens are unknown to the model's tokenizer."""
    if unknown_share is None or not unknown_share > UNKNOWN_TOKEN_SHARE:
        return ()
    return (finding(
        "HS209",
        f"{_pct(unknown_share)} of the probe's tokens are unknown to the model's tokenizer "
        f"(above {_pct(UNKNOWN_TOKEN_SHARE)}): the probe is not in the model's language, so the "
        "probe statistics, the bands and the recommended k describe the unknown token, not the "
        "model's text; inspect again with --probe FILE holding texts of the model's domain (one "
        "per line, or JSONL with text or query/passage).",
        unknown_share, UNKNOWN_TOKEN_SHARE),)


# Serving ranges of index builders. pyserini quantises a SPLADE weight w to round(w / 5 * 256)
# in 8 bits, so weights above 5 clip (stats.PYSERINI_CEILING); Anserini's impact index stores
# round(w * 100), so a weight below 0.005 is lost and a mean weight near 0.05 keeps only ~5
# quantisation levels.
ANSERINI_COARSE_MEAN = 0.05


def serving_findings(per_k: Sequence[KStats], k: float) -> tuple[Finding, ...]:
    """How the term weights at the chosen k fit the ranges index builders assume (HS3xx)."""
    stats = next((s for s in per_k if s.k == k), None)
    if stats is None:
        return ()
    found = []
    if stats.term_weight_max > PYSERINI_CEILING:
        found.append(finding(
            "HS301",
            f"At k = {_k(k)} the largest passage term weight is {_num(stats.term_weight_max)} "
            f"({_pct(stats.share_above_5)} of active weights above {_num(PYSERINI_CEILING)}): "
            "pyserini's 8-bit quantisation (w / 5 * 256) would clip them; use a larger k or "
            "a wider quantisation range.",
            stats.term_weight_max, PYSERINI_CEILING))
    if 0 < stats.term_weight_mean < ANSERINI_COARSE_MEAN:
        found.append(finding(
            "HS302",
            f"At k = {_k(k)} the mean passage term weight is {_num(stats.term_weight_mean)}: "
            "Anserini's impact index (round(w * 100)) keeps few quantisation levels and drops "
            "weights below 0.005; training will grow the weights, but an untrained index would "
            "be coarse.",
            stats.term_weight_mean, ANSERINI_COARSE_MEAN))
    return (tuple(found) + engine_findings(stats.active_passage, k)
            + precision_findings(stats.term_weight_max, stats.term_weight_mean,
                                 stats.logit_p01, k))


# pgvector: a sparsevec holds at most 16,000 non-zero elements, and an HNSW index accepts
# sparsevecs of at most 1,000 (github.com/pgvector/pgvector, README: "Sparsevec Type", "HNSW").
PGVECTOR_HNSW_NONZERO = 1000
PGVECTOR_SPARSEVEC_NONZERO = 16000


def engine_findings(active_passage: float, k: float,
                    stage: str = "before training") -> tuple[Finding, ...]:
    """What pgvector would refuse of passages with `active_passage` non-zero terms on average
    (HS303, HS304). Qdrant sparse vectors and Elasticsearch/OpenSearch `rank_features` take any
    number of non-zero terms; their value limits are in docs/findings.md."""
    if not math.isfinite(active_passage):
        return ()
    at = f"At k = {_k(k)} {stage}" if math.isfinite(k) else stage[:1].upper() + stage[1:]
    where = f"{at}, passages have {_num(active_passage)} non-zero terms on average"
    if active_passage > PGVECTOR_SPARSEVEC_NONZERO:
        return (finding(
            "HS304",
            f"{where}: pgvector's sparsevec type rejects vectors with more than 16,000 non-zero "
            "elements, so most passages could not be stored; use a larger k, or keep only each "
            "passage's largest weights before indexing.",
            active_passage, PGVECTOR_SPARSEVEC_NONZERO),)
    if active_passage > PGVECTOR_HNSW_NONZERO:
        return (finding(
            "HS303",
            f"{where}: a pgvector HNSW index accepts sparsevecs with at most 1,000 non-zero "
            "elements, so most passages could not be indexed (exact search still works); use "
            "a larger k, or keep only each passage's 1,000 largest weights.",
            active_passage, PGVECTOR_HNSW_NONZERO),)
    return ()


FLOAT16_MAX = 65504.0
BFLOAT16_BITS = 8  # significand bits, the implicit one included (float16: 11, float32: 24)
# bfloat16 is called coarse when the spacing of its logits near the largest one, carried into
# term weights, exceeds this share of the mean term weight.
BFLOAT16_COARSE_SHARE = 0.01


def _spacing(x: float, bits: int) -> float:
    """The gap between consecutive floats with `bits` significand bits near |x| > 0."""
    return 2.0 ** (math.floor(math.log2(abs(x))) - bits + 1)


def precision_findings(weight_max: float, weight_mean: float, logit_min: float,
                       k: float) -> tuple[Finding, ...]:
    """Whether encoding in half precision overflows (float16, HS305) or blurs term weights
    (bfloat16, HS306) at this k. The largest logit is exp(weight_max) - 1 (SPLADE weights are
    log(1 + relu(logit)), so the largest weight comes from the largest logit); `logit_min`
    (the probe's 1st percentile logit) bounds how negative logits go."""
    if not (math.isfinite(weight_max) and weight_max > 0):
        return ()
    top = math.expm1(weight_max)  # the largest passage logit
    largest = max(top, abs(logit_min) if math.isfinite(logit_min) else 0.0)
    found = []
    if largest > FLOAT16_MAX:
        found.append(finding(
            "HS305",
            f"At k = {_k(k)} logits reach {_num(largest)}, beyond float16's largest value "
            "65504: a float16 forward pass gives inf, then NaN losses and weights; encode and "
            "train in bfloat16 or float32, or use a larger k.",
            largest, FLOAT16_MAX))
    if top > 0 and math.isfinite(weight_mean) and weight_mean > 0:
        # the largest weight step over the top logit's binade [2^e, 2^(e+1)): spacing / (1 + 2^e)
        blur = _spacing(top, BFLOAT16_BITS) / (1.0 + 2.0 ** math.floor(math.log2(top)))
        if blur > BFLOAT16_COARSE_SHARE * weight_mean:
            dtype = "float32" if largest > FLOAT16_MAX else "float16 or float32"
            found.append(finding(
                "HS306",
                f"At k = {_k(k)} bfloat16 (8 significant bits) spaces logits near the largest "
                f"({_num(top)}) {_num(_spacing(top, BFLOAT16_BITS))} apart, so term weights "
                f"there move in steps of {_num(blur)}, more than 1% of the mean weight "
                f"{_num(weight_mean)}: weights closer than that collapse; encode in {dtype}.",
                blur, BFLOAT16_COARSE_SHARE * weight_mean))
    return tuple(found)
