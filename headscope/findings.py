"""Findings: what `inspect` diagnoses, each under a stable code (docs/findings.md).

Each code holds its name, severity and gist (the few words shown where codes are listed without
their messages: the compare table, the demo), the gist built from the same constants its rule
uses. The probe findings are a table of small rules (`PROBE_RULES`), each reading the per-k
statistics and returning its finding or None. No torch, no numpy: `check --report R.json`
re-evaluates a saved report without either.

Codes are never renumbered or reused; new findings get new codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from headscope.errors import InputError
from headscope.recommend import (
    BAND_ACTIVE_PASSAGE_SHARE,
    BAND_COSINE_UNRELATED,
    BAND_SHARE_ABOVE_5,
    BAND_START_LOSS,
    LARGE_HEAD_ROW_NORM,
    PAPER_K,
    REFERENCE_METRICS,
    Band,
    Recommendation,
    decision_text,
    sorted_candidates,
    unreachable_bands,
)
from headscope.stats import PYSERINI_CEILING, KStats, WeightStats, k_text, number, percent

SEVERITIES = ("info", "warning", "error")

# Share of probe tokens mapped to the unknown token above which the probe does not fit the
# model's vocabulary. The built-in English probe: 0% [UNK] under BERT-tiny's tokenizer, 88%
# under a chemistry ALBERT's 591 SMILES tokens (whose probe statistics then describe [UNK]).
UNKNOWN_TOKEN_SHARE = 0.05

# Serving ranges of index builders. pyserini quantises a SPLADE weight w to round(w / 5 * 256)
# in 8 bits, so weights above 5 clip (stats.PYSERINI_CEILING); Anserini's impact index stores
# round(w * 100), so a weight below 0.005 is lost and a mean weight near 0.05 keeps only ~5
# quantisation levels.
ANSERINI_COARSE_MEAN = 0.05

# pgvector: a sparsevec holds at most 16,000 non-zero elements, and an HNSW index accepts
# sparsevecs of at most 1,000 (github.com/pgvector/pgvector, README: "Sparsevec Type", "HNSW").
PGVECTOR_HNSW_NONZERO = 1000
PGVECTOR_SPARSEVEC_NONZERO = 16000

FLOAT16_MAX = 65504.0
BFLOAT16_BITS = 8  # significand bits, the implicit one included (float16: 11, float32: 24)
# bfloat16 is called coarse when the spacing of its logits near the largest one, carried into
# term weights, exceeds this share of the mean term weight.
BFLOAT16_COARSE_SHARE = 0.01

_num = number
_k = k_text
_pct = percent


def _high(band: Band) -> float:
    assert band.high is not None
    return band.high


@dataclass(frozen=True)
class FindingCode:
    """What a code always means: its stable name, its severity and its gist."""

    code: str
    name: str  # stable slug, e.g. "large-head-scale"
    severity: str  # "info" | "warning" | "error"
    gist: str  # a few words, for the places that list codes without their messages


# Every code. Codes are never renumbered or reused.
FINDING_CODES: dict[str, FindingCode] = {c.code: c for c in (
    FindingCode("HS101", "large-head-scale", "warning",
                f"large head: mean decoder row norm above {_num(LARGE_HEAD_ROW_NORM)}"),
    FindingCode("HS102", "rows-beyond-tokenizer", "info",
                "decoder rows beyond the tokenizer (never real tokens)"),
    FindingCode("HS103", "tied-decoder", "info", "decoder tied to the input embeddings"),
    FindingCode("HS104", "head-not-loaded", "error", "no trained MLM head in the checkpoint"),
    FindingCode("HS201", "dense-at-k1", "warning",
                f"dense at k = 1: over {_pct(_high(BAND_ACTIVE_PASSAGE_SHARE))} of the vocabulary "
                "active per passage"),
    FindingCode("HS202", "saturating-weights", "warning",
                f"saturating weights: over {_pct(_high(BAND_SHARE_ABOVE_5))} of term weights "
                f"above {_num(PYSERINI_CEILING)}"),
    FindingCode("HS203", "unrelated-texts-similar", "warning",
                f"unrelated texts look alike (cosine above {_num(_high(BAND_COSINE_UNRELATED))})"),
    FindingCode("HS204", "high-start-loss", "warning",
                "training would start from a very high loss (above "
                f"{_num(_high(BAND_START_LOSS))})"),
    FindingCode("HS205", "dense-at-every-k", "warning",
                "still dense at every k: dividing the projection cannot sparsify it"),
    FindingCode("HS206", "no-active-terms", "error", "no active term at all"),
    FindingCode("HS207", "non-finite-statistics", "error", "statistics are NaN or infinite"),
    FindingCode("HS208", "bias-dominates-activity", "warning",
                "the activity lives in the output bias: divide it too (--scale-bias)"),
    FindingCode("HS209", "probe-vocabulary-mismatch", "warning",
                "the probe does not fit the model's vocabulary: pass --probe FILE"),
    FindingCode("HS301", "weights-clip-in-pyserini", "warning",
                f"weights above {_num(PYSERINI_CEILING)} would clip in pyserini's 8-bit index"),
    FindingCode("HS302", "weights-coarse-in-anserini", "info",
                f"weights below {_num(ANSERINI_COARSE_MEAN)} are coarse in Anserini's impact "
                "index"),
    FindingCode("HS303", "too-many-terms-for-pgvector-hnsw", "warning",
                f"over {_num(PGVECTOR_HNSW_NONZERO)} non-zero terms: a pgvector HNSW index "
                "refuses them"),
    FindingCode("HS304", "too-many-terms-for-pgvector", "error",
                f"over {_num(PGVECTOR_SPARSEVEC_NONZERO)} non-zero terms: pgvector's sparsevec "
                "refuses them"),
    FindingCode("HS305", "logits-overflow-float16", "warning",
                f"logits beyond float16's {FLOAT16_MAX:g}: use bfloat16 or float32"),
    FindingCode("HS306", "weights-coarse-in-bfloat16", "info",
                "bfloat16 blurs term weights: use float16 or float32"),
)}


@dataclass(frozen=True)
class Finding:
    code: str  # stable, e.g. "HS101"; see FINDING_CODES and docs/findings.md
    name: str  # stable slug, e.g. "large-head-scale"
    severity: str  # "info" | "warning" | "error"
    message: str  # one checkable sentence with the numbers and the remedy
    value: float | None  # the measured value the finding is about
    threshold: float | None  # the documented threshold it crossed


VOCAB_KEYS = ("n_rows", "n_tokenizer", "n_real_rows", "tied", "head_loaded")


def finding(code: str, message: str, value: float | None, threshold: float | None) -> Finding:
    known = FINDING_CODES[code]
    return Finding(code, known.name, known.severity, message, value, threshold)


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
    per_k = sorted_candidates(per_k)
    found: list[Finding] = []
    if weights.row_norm_all.mean > LARGE_HEAD_ROW_NORM:
        found.append(_large_head(weights, per_k, recommendation))
    found.extend(_vocabulary_findings(weights, vocab))
    if per_k:
        view = _ProbeView.of(per_k)
        found.extend(f for _, rule in PROBE_RULES if (f := rule(view)) is not None)
    return tuple(sorted(found, key=lambda f: f.code))


def _vocabulary_findings(weights: WeightStats, vocab: Mapping[str, Any]) -> list[Finding]:
    """HS102-HS104: facts about the head and the tokenizer."""
    found = []
    n_rows = vocab.get("n_rows", weights.n_rows)
    n_tok = vocab.get("n_tokenizer")
    if n_tok is not None and n_rows > n_tok:
        extra = n_rows - n_tok
        found.append(finding(
            "HS102",
            f"The decoder has {n_rows:,} rows but the tokenizer only {n_tok:,} tokens: "
            f"{extra:,} rows were never trained; real-token statistics (row_norm_real) "
            "exclude them.",
            float(extra), float(n_tok)))
    if vocab.get("tied") is True:
        found.append(finding(
            "HS103",
            "The decoder is tied to the input embeddings: dividing it in place also divides "
            "the embeddings; use the untie or fold strategy to change only the projection.",
            None, None))
    if vocab.get("head_loaded") is False:
        found.append(finding(
            "HS104",
            "The MLM head was not loaded from the checkpoint (newly initialised): its "
            "statistics describe random weights; use a checkpoint that ships a trained MLM "
            "head.",
            None, None))
    return found


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


@dataclass(frozen=True)
class _ProbeView:
    """What the probe rules read: the per-k statistics (sorted by k), the base statistics
    (k = 1, or the smallest k measured) and how a message names that k."""

    per_k: tuple[KStats, ...]
    base: KStats
    at: str

    @staticmethod
    def of(per_k: tuple[KStats, ...]) -> _ProbeView:
        base = next((s for s in per_k if s.k == 1), per_k[0])
        at = "at k = 1" if base.k == 1 else f"at k = {_k(base.k)} (k = 1 was not measured)"
        return _ProbeView(per_k, base, at)


def _non_finite(view: _ProbeView) -> Finding | None:
    bad = [
        f"{f.name} at k = {_k(s.k)}"
        for s in view.per_k
        for f in fields(KStats)
        if not math.isfinite(getattr(s, f.name))
        # With no active passage term the weight mean/max are undefined; HS206 reports that.
        and not (f.name in ("term_weight_mean", "term_weight_max") and s.active_passage == 0)
    ]
    if not bad:
        return None
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return finding("HS207", f"Probe statistics are not finite ({shown}): the forward pass "
                   "overflowed or produced NaN; re-run in float32.", float(len(bad)), 0.0)


def _dense_at_k1(view: _ProbeView) -> Finding | None:
    dense = _high(BAND_ACTIVE_PASSAGE_SHARE)
    share = view.base.active_passage_share
    if not share > dense:
        return None
    return finding("HS201", f"{_pct(share)} of the vocabulary is active per passage {view.at} "
                   f"(above {_pct(dense)}; trained SPLADE keeps 150-250 terms): the head "
                   "starts dense.", share, dense)


def _no_active_terms(view: _ProbeView) -> Finding | None:
    if view.base.active_passage != 0:
        return None
    return finding("HS206", f"No vocabulary term is active on any probe passage {view.at}: every "
                   "logit is <= 0, so SPLADE gets no gradient through relu; check the head and "
                   "the output bias.", 0.0, 0.0)


def _dense_at_every_k(view: _ProbeView) -> Finding | None:
    dense = _high(BAND_ACTIVE_PASSAGE_SHARE)
    largest = view.per_k[-1]
    if not (len(view.per_k) > 1 and largest.active_passage_share > dense):
        return None
    return finding(
        "HS205",
        f"{_pct(largest.active_passage_share)} of the vocabulary is still active per passage at "
        f"the largest candidate k = {_k(largest.k)}: dividing by k does not change which terms "
        "are active (only an undivided output bias can), so rescaling alone will not make this "
        "head sparse.",
        largest.active_passage_share, dense)


def _above_band(code: str, band: Band, what: str, share: bool = False
                ) -> Callable[[_ProbeView], Finding | None]:
    """The rule of a finding that fires when the base statistic of `band` is above its high
    end ("{value} {what} {at}, above {limit}; a larger k can reduce it.")."""
    shown = _pct if share else _num

    def rule(view: _ProbeView) -> Finding | None:
        value, limit = getattr(view.base, band.metric), _high(band)
        if not (math.isfinite(value) and value > limit):
            return None
        return finding(code, f"{shown(value)} {what} {view.at}, above {shown(limit)}; a larger "
                       "k can reduce it.", value, limit)

    return rule


# (code, rule) of every finding read from the probe statistics.
PROBE_RULES: tuple[tuple[str, Callable[[_ProbeView], Finding | None]], ...] = (
    ("HS201", _dense_at_k1),
    ("HS202", _above_band("HS202", BAND_SHARE_ABOVE_5,
                          f"of active passage weights exceed {_num(PYSERINI_CEILING)} (pyserini's "
                          "quantisation ceiling; log1p saturates)", share=True)),
    ("HS203", _above_band("HS203", BAND_COSINE_UNRELATED,
                          "is the mean cosine between unrelated passages (healthy bases ~0.8, "
                          "broken ones 1.0)")),
    ("HS204", _above_band("HS204", BAND_START_LOSS,
                          "is the in-batch contrastive loss training would start with")),
    ("HS205", _dense_at_every_k),
    ("HS206", _no_active_terms),
    ("HS207", _non_finite),
)


def bias_finding(kept: Recommendation, divided: Recommendation) -> Finding:
    """HS208: with the output bias kept, some band is out of reach of every k, and with the
    bias divided too (`divided`, the recommendation chosen) k reaches more bands."""
    return finding("HS208", bias_note(kept), divided.k, None)


def bias_note(kept: Recommendation) -> str:
    """Why the bias is divided too: the reason HS208 and the recommendation give."""
    bands = ", ".join(b.metric for b in unreachable_bands(kept.verdicts, kept.bands))
    return (f"With the output bias kept, no k brings {bands} into its band: the head's activity "
            "lives in its output bias. With the bias divided by k too, k reaches more bands; fix "
            "with --scale-bias.")


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
            f"{where}: pgvector's sparsevec type rejects vectors with more than "
            f"{_num(PGVECTOR_SPARSEVEC_NONZERO)} non-zero elements, so most passages could not "
            "be stored; use a larger k, or keep only each passage's largest weights before "
            "indexing.",
            active_passage, PGVECTOR_SPARSEVEC_NONZERO),)
    if active_passage > PGVECTOR_HNSW_NONZERO:
        return (finding(
            "HS303",
            f"{where}: a pgvector HNSW index accepts sparsevecs with at most "
            f"{_num(PGVECTOR_HNSW_NONZERO)} non-zero elements, so most passages could not be "
            "indexed (exact search still works); use a larger k, or keep only each passage's "
            f"{_num(PGVECTOR_HNSW_NONZERO)} largest weights.",
            active_passage, PGVECTOR_HNSW_NONZERO),)
    return ()


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
            f"{FLOAT16_MAX:g}: a float16 forward pass gives inf, then NaN losses and weights; "
            "encode and train in bfloat16 or float32, or use a larger k.",
            largest, FLOAT16_MAX))
    if top > 0 and math.isfinite(weight_mean) and weight_mean > 0:
        # the largest weight step over the top logit's binade [2^e, 2^(e+1)): spacing / (1 + 2^e)
        blur = _spacing(top, BFLOAT16_BITS) / (1.0 + 2.0 ** math.floor(math.log2(top)))
        if blur > BFLOAT16_COARSE_SHARE * weight_mean:
            dtype = "float32" if largest > FLOAT16_MAX else "float16 or float32"
            found.append(finding(
                "HS306",
                f"At k = {_k(k)} bfloat16 ({BFLOAT16_BITS} significant bits) spaces logits near "
                f"the largest ({_num(top)}) {_num(_spacing(top, BFLOAT16_BITS))} apart, so term "
                f"weights there move in steps of {_num(blur)}, more than "
                f"{_pct(BFLOAT16_COARSE_SHARE)} of the mean weight {_num(weight_mean)}: weights "
                f"closer than that collapse; encode in {dtype}.",
                blur, BFLOAT16_COARSE_SHARE * weight_mean))
    return tuple(found)
