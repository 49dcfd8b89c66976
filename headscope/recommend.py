"""The recommended k, computed from statistics alone (no torch, no numpy needed).

`recommend` proposes the divisor k for the MLM-head projection under one of these rules:
"bands" (smallest k whose statistics fall inside every healthy band), "paper" (k = 16 for a
large head, else 1), "reference" (the k whose statistics best match a reference checkpoint's
unscaled statistics on the same probe) and "shipped", the default: the rule headscope's
out-of-sample calibration chose (`calibrated.shipped_rule`), which is the bands while its
verdict is pending and may be one constant arm (rule "constant": the same k and bias setting
for every head). The bands are defined here; the findings that read the same statistics (and
these bands' limits) are in `findings`.

Reminder that shapes the bands (docs/science.md): dividing every logit by k never changes which
terms are active; only an output bias left undivided can. So the active-terms band is a health
check that k usually cannot repair, and the bands that choose k are the magnitude ones: start
loss, score scale, term weights, saturation and the cosine between unrelated texts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

from headscope import calibrated
from headscope.errors import InputError
from headscope.stats import KStats, WeightStats, k_text, number, percent

RULES = ("shipped", "bands", "paper", "reference")  # what a caller may ask for
# The rule a Recommendation records: "shipped" resolves to one of the first three.
APPLIED_RULES = ("bands", "paper", "constant", "reference")

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

# How sure each rule's k is, shown under every recommendation (`how_sure`). The evidence is
# docs/calibration.md; its counts on the conditions registered before they ran ship with the
# package (`calibrated`), and the decision rule that will pick the default is
# docs/calibration/decision-rule.md.
RULE_EVIDENCE = {
    "bands": "How sure: the bands were fitted on six calibration conditions (in sample).",
    "paper": ("How sure: one constant from the paper (k = 16 for a mean row norm above "
              f"{LARGE_HEAD_ROW_NORM:g}, else 1); headscope's calibration judges it beside the "
              "bands and other constants on the same arms."),
    "reference": ("How sure: k matches another checkpoint's statistics; no training run stands "
                  "behind the match itself."),
    "constant": ("How sure: one arm for every head, judged beside the bands, the paper's rule "
                 "and the other constants on the same arms."),
}


def how_sure(rule: str) -> str:
    """The sentence under a recommendation of `rule`: what its k rests on and, for the bands
    and the paper's rule, how each rule fared on the calibration conditions registered before
    they ran."""
    text = RULE_EVIDENCE[rule]
    if rule in ("bands", "paper", "constant"):
        text += " " + calibrated.counts_sentence()
    if rule == "bands":
        text += " Read k as a best guess inside the range that trained about as well."
    return text


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
    rule: str  # the rule actually applied: "bands" | "paper" | "constant" | "reference"
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


def resolve_rule(rule: str) -> tuple[str, calibrated.ShippedRule | None]:
    """(the rule `recommend` applies for `rule`, the shipped constant when that is "constant");
    only "shipped" resolves to anything but itself."""
    if rule not in RULES:
        raise InputError(f"Unknown recommendation rule {rule!r}; use one of: {', '.join(RULES)}.")
    if rule != "shipped":
        return rule, None
    shipped = calibrated.shipped_rule()
    return shipped.rule, (shipped if shipped.rule == "constant" else None)


def weights_only_rule() -> str:
    """The rule of a recommendation made without a probe: the shipped rule when it needs none
    (a constant, or the paper's rule), else the paper's rule, which reads the row norm alone."""
    return "shipped" if resolve_rule("shipped")[0] in ("constant", "paper") else "paper"


def recommend(
    per_k: Sequence[KStats],
    *,
    rule: str = "shipped",
    bands: Sequence[Band] = DEFAULT_BANDS,
    weights: WeightStats | None = None,
    reference: Sequence[KStats] | None = None,
    rescaled: float | None = None,
) -> Recommendation:
    """Recommend the divisor k for the MLM-head projection.

    `rescaled`: the k a headscope fix already divided this head by (its provenance), which a
    constant rule, meant for the head as pretrained, takes off its k.

    "shipped" (the default) applies the rule the calibration's verdict chose. A constant needs
    no statistics; without probe statistics (`per_k` empty) any other rule falls back to the
    paper rule, and the first reason says so: this is how a weights-only report gets its
    recommendation.
    """
    rule, constant = resolve_rule(rule)
    bands = check_bands(bands)
    per_k = sorted_candidates(per_k)
    verdicts = tuple(KVerdict(s.k, _failed(s, bands)) for s in per_k)
    passing = tuple(v.k for v in verdicts if v.passed)

    if constant is not None:
        assert constant.k is not None
        reasons = _constant(constant, weights)
        k = constant.k
        if rescaled is not None and rescaled != 1:
            k = max(1.0, k / rescaled)
            reasons += (f"This checkpoint was written by headscope fix, its head already divided "
                        f"by {_k(rescaled)} (headscope.json), and the constant is meant for the "
                        f"head as pretrained: k = {_k(k)} is left.",)
        verdict = next((v for v in verdicts if v.k == k), None)
        if verdict is not None:
            reasons += (_verdict_sentence(verdict, per_k, bands),)
        return Recommendation(k, "constant", reasons, passing, verdicts, bands,
                              scale_bias=constant.scale_bias and k != 1)

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


def sorted_candidates(per_k: Sequence[KStats]) -> tuple[KStats, ...]:
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


def _constant(constant: calibrated.ShippedRule, weights: WeightStats | None
              ) -> tuple[str, ...]:
    """Why the shipped constant's k, and whether this head lies among the heads that chose it."""
    k = _k(constant.k or 1.0)
    bias = "divided too" if constant.scale_bias else "kept"
    arm = "no rescale" if constant.k == 1 else f"projection divided by {k}, output bias {bias}"
    reasons = [f"k = {k} ({arm}) for every head: headscope's calibration chose this constant "
               "with its decision rule, written before the runs that judged it, because no "
               "fitted rule beat it on the conditions registered before they ran "
               "(docs/calibration.md)."]
    span = calibrated.judged_row_norms()
    if weights is not None and span is not None:
        norm, (low, high) = weights.row_norm_all.mean, span
        where = ("inside that range" if low <= norm <= high else
                 f"{'below' if norm < low else 'above'} that range, where this evidence does not "
                 "reach")
        reasons.append(f"Those conditions' heads have mean decoder row norms {_num(low)} to "
                       f"{_num(high)}; this head's {_num(norm)} is {where}.")
    return tuple(reasons)


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
# Number formatting for sentences: the one format of headscope.stats (12,000, never 1.2e+04)

_num = number
_k = k_text
_pct = percent


__all__ = [
    "RULE_EVIDENCE",
    "how_sure",
    "ACTIVITY_METRICS",
    "BAND_ACTIVE_PASSAGE_SHARE",
    "BAND_COSINE_UNRELATED",
    "BAND_SCORE_POS",
    "BAND_SHARE_ABOVE_5",
    "BAND_START_LOSS",
    "BAND_TERM_WEIGHT_MEAN",
    "DEFAULT_BANDS",
    "LARGE_HEAD_ROW_NORM",
    "METRICS",
    "PAPER_K",
    "REFERENCE_METRICS",
    "RULES",
    "APPLIED_RULES",
    "resolve_rule",
    "weights_only_rule",
    "SCORE_LIMIT",
    "Band",
    "KVerdict",
    "Recommendation",
    "bias_fallback",
    "check_bands",
    "decision_text",
    "override_bands",
    "prefer_divided_bias",
    "recommend",
    "sorted_candidates",
    "reference_distance",
    "unreachable_bands",
]
