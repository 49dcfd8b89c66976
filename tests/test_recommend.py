"""recommend: bands, the three rules, findings. Hand-made statistics, hand-checked answers."""

from __future__ import annotations

import math
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headscope.errors import InputError
from headscope.findings import FINDING_CODES, diagnose
from headscope.recommend import (
    ACTIVITY_METRICS,
    DEFAULT_BANDS,
    METRICS,
    Band,
    KVerdict,
    bias_fallback,
    decision_text,
    override_bands,
    prefer_divided_bias,
    recommend,
    reference_distance,
    resolve_rule,
    unreachable_bands,
    weights_only_rule,
)
from headscope.stats import KStats, Summary, WeightStats

# The rule's mechanics are tested against a fixed six-band set (the provisional values shipped
# before calibration), so that recalibrating DEFAULT_BANDS does not change what these
# hand-computed cases mean.
SIX_BANDS = (
    Band("active_passage_share", None, 0.10, "test"),
    Band("cosine_unrelated", None, 0.90, "test"),
    Band("share_above_5", None, 0.01, "test"),
    Band("start_loss", None, 44.0, "test"),
    Band("term_weight_mean", 0.05, 2.5, "test"),
    Band("score_pos", None, 100.0, "test"),
)

def kstats(k, *, start, score, twm, s5, cos, active=0.004, **kw) -> KStats:
    """A KStats whose banded fields are given; the rest are plausible fillers."""
    base = dict(
        k=float(k),
        logit_p01=-20.0 / k,
        logit_p50=-5.0 / k,
        logit_p99=8.0 / k,
        frac_positive=0.002,
        term_weight_mean=twm,
        term_weight_max=2 * twm + 1,
        share_above_5=s5,
        active_query=60.0,
        active_passage=active * 30522,
        active_query_share=60.0 / 30522,
        active_passage_share=active,
        cosine_unrelated=cos,
        score_pos=score,
        score_neg=score / 3,
        start_loss=start,
    )
    base.update(kw)
    return KStats(**base)


def weights(mean_norm: float, n_rows: int = 50368, n_real: int = 50285) -> WeightStats:
    s = Summary(mean_norm, mean_norm, mean_norm * 1.5, mean_norm * 2, mean_norm / 4, n_rows)
    r = Summary(mean_norm, mean_norm, mean_norm * 1.5, mean_norm * 2, mean_norm / 4, n_real)
    return WeightStats(s, r, n_rows, n_real, 768, -0.5, 0.3, 27.7, None, 12.0)


# A large head, sparse activity: k shrinks loss, scores, weights, saturation and cosine.
TABLE = (
    kstats(1, start=279.0, score=900.0, twm=3.7, s5=0.2, cos=0.97),
    kstats(2, start=120.0, score=400.0, twm=3.0, s5=0.08, cos=0.95),
    kstats(4, start=50.0, score=150.0, twm=2.3, s5=0.02, cos=0.92),
    kstats(8, start=20.0, score=60.0, twm=1.6, s5=0.005, cos=0.85),
    kstats(16, start=7.0, score=20.0, twm=0.9, s5=0.0, cos=0.80),
    kstats(32, start=3.0, score=6.0, twm=0.5, s5=0.0, cos=0.78),
)


def test_default_bands_cover_distinct_known_metrics_with_provenance():
    metrics = [b.metric for b in DEFAULT_BANDS]
    assert len(set(metrics)) == len(metrics)
    assert set(metrics) <= set(METRICS)
    assert "k" not in METRICS and len(METRICS) == len(fields(KStats)) - 1
    for band in DEFAULT_BANDS:
        assert band.provenance and "\n" not in band.provenance
        assert band.low is not None or band.high is not None


def test_band_contains_margin_and_describe():
    band = Band("start_loss", None, 44.0, "p")
    assert band.contains(44.0) and not band.contains(44.1)
    assert band.margin(22.0) == pytest.approx(0.5)
    assert band.margin(88.0) == pytest.approx(-1.0)
    assert not band.contains(math.nan) and band.margin(math.nan) == -math.inf
    both = Band("term_weight_mean", 0.05, 2.5, "p")
    assert both.describe() == "between 0.05 and 2.5"
    assert band.describe() == "at most 44"
    assert Band("score_pos", 1.0, None, "p").describe() == "at least 1"
    assert both.margin(0.04) == pytest.approx(-0.2)  # (0.04 - 0.05) / 0.05
    assert not both.contains(0.04) and both.contains(0.05)


@pytest.mark.usefixtures("bands_default")
def test_bands_rule_picks_smallest_passing_k_with_reasons():
    rec = recommend(TABLE, bands=SIX_BANDS)
    assert rec.k == 8.0 and rec.rule == "bands"
    assert rec.passing == (8.0, 16.0, 32.0)
    assert rec.verdicts[2] == KVerdict(
        4.0, ("cosine_unrelated", "share_above_5", "start_loss", "score_pos")
    )
    assert rec.verdicts[0].failed == (
        "cosine_unrelated",
        "share_above_5",
        "start_loss",
        "term_weight_mean",
        "score_pos",
    )
    assert rec.reasons[0] == (
        "k = 8 is the smallest candidate whose statistics fall inside every band "
        "(candidates: 1, 2, 4, 8, 16, 32; passing: 8, 16, 32)."
    )
    assert rec.reasons[1] == (
        "At k = 8: active_passage_share 0.004 (at most 0.1); cosine_unrelated 0.85 (at most "
        "0.9); share_above_5 0.005 (at most 0.01); start_loss 20 (at most 44); term_weight_mean "
        "1.6 (between 0.05 and 2.5); score_pos 60 (at most 100)."
    )
    assert rec.reasons[4] == (
        "k = 4 fails: cosine_unrelated 0.92 is not at most 0.9; share_above_5 0.02 is not at "
        "most 0.01; start_loss 50 is not at most 44; score_pos 150 is not at most 100."
    )
    assert len(rec.reasons) == 5  # chosen, its values, one line per smaller k
    assert rec.bands == SIX_BANDS


def test_bands_rule_is_order_independent():
    assert recommend(tuple(reversed(TABLE)), bands=SIX_BANDS) == recommend(TABLE, bands=SIX_BANDS)


@pytest.mark.usefixtures("bands_default")
def test_unreachable_band_does_not_veto_every_k():
    # A dense head: the active share is out of band at every k (k cannot change which terms are
    # active), so it must not choose k; the smallest k inside the other bands wins.
    dense = tuple(replace(s, active_passage_share=0.75) for s in TABLE)
    rec = recommend(dense, bands=SIX_BANDS)
    assert rec.passing == ()  # strictly, no k is inside every band
    assert rec.k == 8.0  # 1, 2 and 4 fail a reachable band (see TABLE)
    assert rec.reasons[0] == (
        "k = 8 is the smallest candidate whose statistics fall inside every band that some "
        "candidate k reaches (candidates: 1, 2, 4, 8, 16, 32; passing: 8, 16, 32)."
    )
    assert rec.reasons[-1] == (
        "active_passage_share is outside its band (at most 0.1) at every candidate k, so it does "
        "not choose k: dividing the logits by k does not change which terms are active (only an "
        "output bias left undivided can); training's FLOPS regulariser has to sparsify this head."
    )
    assert [b.metric for b in unreachable_bands(rec.verdicts, rec.bands)] == [
        "active_passage_share"]


@pytest.mark.usefixtures("bands_default")
def test_a_magnitude_band_out_of_reach_takes_the_closest_k():
    # A head on a larger scale than the grid: its start loss stays above 44 at every k (k divides
    # it), so the ks inside the other bands (8, 16, 32) are ranked by how close they come to it:
    # 32 (shortfall (60 - 44) / 44) beats 16 ((130 - 44) / 44) and 8.
    huge = tuple(replace(s, start_loss=1920.0 / s.k) for s in TABLE)
    rec = recommend(huge, bands=SIX_BANDS)
    assert rec.k == 32.0 and rec.passing == ()
    assert rec.reasons[0] == (
        "k = 32 is, of the candidates inside every band that some candidate k reaches "
        "(candidates: 1, 2, 4, 8, 16, 32; passing: 8, 16, 32), the one closest to the band of "
        "start_loss, which no candidate reaches.")
    assert rec.reasons[-1] == (
        "start_loss is outside its band (at most 44) at every candidate k, so the candidate "
        "closest to the band was taken; k divides this statistic, so other candidates (--ks) "
        "may reach it.")
    # The old rule (ignore it, take the smallest k inside the rest) would have said 8, where the
    # start loss is 240, five times its band.
    assert next(s for s in huge if s.k == 8).start_loss == 240.0


def test_prefer_divided_bias_when_k_reaches_more_bands():
    kept = recommend(tuple(replace(s, active_passage_share=0.75, start_loss=300.0)
                           for s in TABLE), bands=SIX_BANDS)
    divided = recommend(tuple(replace(s, active_passage_share=0.75) for s in TABLE),
                        bands=SIX_BANDS)
    assert prefer_divided_bias(kept, divided)  # start_loss reachable only with the bias divided
    assert not prefer_divided_bias(divided, kept)
    assert not prefer_divided_bias(divided, divided)


def test_bias_fallback_measures_the_divided_bias_only_when_a_band_is_out_of_reach():
    kept = recommend(tuple(replace(s, active_passage_share=0.75, start_loss=300.0)
                           for s in TABLE), bands=SIX_BANDS)
    divided = recommend(tuple(replace(s, active_passage_share=0.75) for s in TABLE),
                        bands=SIX_BANDS)
    calls = []

    def measure(rec):
        return lambda: calls.append(rec) or rec

    assert bias_fallback(kept, measure(divided)) is divided  # reaches more bands
    assert bias_fallback(kept, measure(kept)) is None  # measured, no better: the bias is kept
    assert calls == [divided, kept]
    healthy = recommend(TABLE, bands=SIX_BANDS)
    assert not unreachable_bands(healthy.verdicts, healthy.bands)
    assert bias_fallback(healthy, measure(divided)) is None
    assert calls == [divided, kept]  # every band in reach: nothing more measured


@pytest.mark.usefixtures("bands_default")
def test_no_k_passes_tie_broken_by_smallest_shortfall():
    # Both fail one band; k=1 overshoots start_loss by 100% (88 vs 44), k=2 score_pos by 10%.
    table = (
        kstats(1, start=88.0, score=50.0, twm=1.0, s5=0.0, cos=0.8),
        kstats(2, start=10.0, score=110.0, twm=1.0, s5=0.0, cos=0.8),
    )
    rec = recommend(table, bands=SIX_BANDS)
    assert rec.k == 2.0 and rec.passing == ()
    assert rec.reasons[1] == "k = 2 fails: score_pos 110 is not at most 100."


def test_paper_rule_threshold_and_reasons():
    large = recommend(TABLE, rule="paper", weights=weights(2.553), bands=SIX_BANDS)
    assert large.k == 16.0 and large.rule == "paper"
    assert large.reasons == (
        "Mean decoder row norm over all 50,368 rows is 2.553, above 1.5, so the paper's setting "
        "k = 16 applies (arXiv 2606.18811: ModernBERT-base has 2.553 and trains well at k = 16).",
        "k = 16 falls inside every band.",
    )
    assert large.passing == (8.0, 16.0, 32.0)  # the table is still judged
    small = recommend(TABLE, rule="paper", weights=weights(0.682, 30522, 30522),
                      bands=SIX_BANDS)
    assert small.k == 1.0
    assert small.reasons[0] == (
        "Mean decoder row norm over all 30,522 rows is 0.682, at most 1.5 (BERT-tiny 0.682, "
        "ALBERT 1.333), so the paper's rule leaves the head unscaled: k = 1."
    )
    assert small.reasons[1].startswith("k = 1 fails: cosine_unrelated 0.97")
    assert recommend((), rule="paper", weights=weights(1.5)).k == 1.0  # "above" is strict
    assert recommend((), rule="paper", weights=weights(1.5001)).k == 16.0


@pytest.mark.usefixtures("bands_default")
def test_weights_only_falls_back_to_paper_rule_and_says_so():
    rec = recommend((), weights=weights(1.333, 591, 591))
    assert rec.rule == "paper" and rec.k == 1.0
    assert rec.reasons[0] == (
        "No probe statistics were measured, so the paper rule was applied instead of the bands "
        "rule."
    )
    assert rec.verdicts == () and rec.passing == ()


def test_reference_rule_distance_hand_computed():
    ref = (kstats(1, start=7.0, score=20.0, twm=0.9, s5=0.0, cos=0.8),)
    expected_k8 = (abs(math.log(20 / 7)) + abs(math.log(1.6 / 0.9)) + abs(math.log(60 / 20))) / 3
    assert reference_distance(TABLE[3], ref[0]) == pytest.approx(expected_k8)
    assert reference_distance(TABLE[4], ref[0]) == 0.0
    rec = recommend(TABLE, rule="reference", reference=ref, bands=SIX_BANDS)
    assert rec.k == 16.0 and rec.rule == "reference"
    k32 = (abs(math.log(3 / 7)) + abs(math.log(0.5 / 0.9)) + abs(math.log(6 / 20))) / 3
    assert rec.reasons[0] == (
        "k = 16 best matches the reference checkpoint's k = 1 statistics: mean |log ratio| 0 "
        f"over start_loss, term_weight_mean, score_pos (next: k = 32 at {k32:.4g})."
    )
    assert rec.reasons[1] == (
        "At k = 16: start_loss 7 vs reference 7; term_weight_mean 0.9 vs reference 0.9; "
        "score_pos 20 vs reference 20."
    )


def test_reference_distance_skips_non_positive_metrics():
    a = kstats(1, start=7.0, score=0.0, twm=0.9, s5=0.0, cos=0.8)
    b = kstats(1, start=14.0, score=20.0, twm=0.9, s5=0.0, cos=0.8)
    assert reference_distance(a, b) == pytest.approx(math.log(2) / 2)


@pytest.mark.usefixtures("bands_default")
def test_override_bands_by_metric_name():
    bands = override_bands({"start_loss": (None, 10.0)})
    assert [b.metric for b in bands] == [b.metric for b in DEFAULT_BANDS]
    changed = next(b for b in bands if b.metric == "start_loss")
    assert (changed.low, changed.high) == (None, 10.0)
    assert changed.provenance.startswith("Overridden by the user (default at most 150: ")
    # start loss <= 10 from k = 16; the default term-weight band (at most 0.2757) is out of
    # reach at every k of TABLE (0.5 at k = 32), so the k closest to it among 16 and 32 wins.
    assert recommend(TABLE, bands=bands).k == 32.0
    assert recommend(TABLE, bands=override_bands({"start_loss": (None, 10.0),
                                                  "term_weight_mean": (0.08, 2.5)})).k == 16.0
    added = override_bands({"logit_p99": (None, 1.0)})
    assert added[-1] == Band("logit_p99", None, 1.0, "Added by the user.")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: override_bands({"loss": (None, 1.0)}),
            "Cannot override band 'loss': it is not a per-k statistic; use one of: "
            + ", ".join(METRICS)
            + ".",
        ),
        (
            lambda: override_bands({"start_loss": (50.0, 10.0)}),
            "Band 'start_loss' has low 50.0 above high 10.0; swap them.",
        ),
        (
            lambda: recommend(TABLE, rule="best"),
            "Unknown recommendation rule 'best'; use one of: shipped, bands, paper, reference.",
        ),
        (
            lambda: recommend(TABLE, rule="paper", bands=SIX_BANDS),
            "The paper rule needs the head's weight statistics; pass weights=WeightStats or use "
            "rule='bands'.",
        ),
        (
            lambda: recommend(()),
            "Cannot recommend k without statistics: pass probe statistics (per_k) or the head's "
            "weight statistics (weights).",
        ),
        (
            lambda: recommend(TABLE, rule="reference", reference=(TABLE[1],)),
            "The reference statistics have no k = 1 entry; measure the reference checkpoint with "
            "k = 1 among its candidates.",
        ),
        (
            lambda: recommend(TABLE + (TABLE[0],)),
            "k = 1 appears twice in the per-k statistics; pass each once.",
        ),
        (
            lambda: recommend(TABLE, bands=DEFAULT_BANDS + (Band("start_loss", None, 1, "x"),)),
            "Two bands bound 'start_loss'; keep one (override_bands replaces a band).",
        ),
    ],
)
@pytest.mark.usefixtures("bands_default")
def test_errors_word_for_word(call, message):
    with pytest.raises(InputError) as err:
        call()
    assert str(err.value) == message


# --------------------------------------------------------------------------------------------
# diagnose


def test_diagnose_weight_findings_modernbert_like():
    found = diagnose(weights(2.553), (), {"n_rows": 50368, "n_tokenizer": 50285, "tied": True})
    assert [f.code for f in found] == ["HS101", "HS102", "HS103"]
    hs101, hs102, hs103 = found
    assert (hs101.name, hs101.severity, hs101.value, hs101.threshold) == (
        "large-head-scale",
        "warning",
        2.553,
        1.5,
    )
    # Without a probe the row norm is all there is: the paper's k applies, and it says so.
    assert hs101.message == (
        "Mean decoder row norm is 2.553, above 1.5 (ModernBERT-base: 2.553), a fact about the "
        "weights; no probe was run, so the paper's k = 16 is recommended from the row norm "
        "alone; inspect without --weights-only to measure what this head does to SPLADE's term "
        "weights and scores."
    )
    assert (hs102.value, hs102.threshold, hs102.severity) == (83.0, 50285.0, "info")
    assert hs102.message == (
        "The decoder has 50,368 rows but the tokenizer only 50,285 tokens: 83 rows were never "
        "trained; real-token statistics (row_norm_real) exclude them."
    )
    assert hs103.name == "tied-decoder" and hs103.severity == "info"


def test_diagnose_healthy_small_head_has_no_findings():
    healthy = tuple(TABLE[4:])  # k = 16, 32 only: smallest measured k stands in for k = 1
    found = diagnose(
        weights(0.682, 30522, 30522),
        healthy,
        {"n_rows": 30522, "n_tokenizer": 30522, "tied": False, "head_loaded": True},
    )
    assert found == ()


def test_diagnose_probe_findings_at_k1():
    found = {f.code: f for f in diagnose(weights(0.682), TABLE)}
    assert sorted(found) == ["HS202", "HS203", "HS204"]
    assert found["HS204"].message == (
        "279 is the in-batch contrastive loss training would start with at k = 1, above 150; a "
        "larger k can reduce it."
    )
    assert found["HS202"].message == (
        "20% of active passage weights exceed 5 (pyserini's quantisation ceiling; log1p "
        "saturates) at k = 1, above 1%; a larger k can reduce it."
    )
    assert (found["HS203"].value, found["HS203"].threshold) == (0.97, 0.9)


def test_diagnose_dense_head_and_smallest_k_wording():
    dense = tuple(replace(s, active_passage_share=0.75) for s in TABLE[1:])
    found = {f.code: f for f in diagnose(weights(0.682), dense)}
    assert {"HS201", "HS205"} <= set(found)
    assert found["HS201"].message == (
        "75% of the vocabulary is active per passage at k = 2 (k = 1 was not measured) (above "
        "10%; trained SPLADE keeps 150-250 terms): the head starts dense."
    )
    assert found["HS205"].message.startswith(
        "75% of the vocabulary is still active per passage at the largest candidate k = 32:"
    )


def test_diagnose_errors_no_active_terms_nan_and_missing_head():
    empty = replace(
        TABLE[0],
        active_passage=0.0,
        active_passage_share=0.0,
        term_weight_mean=math.nan,
        term_weight_max=math.nan,
    )
    found = {f.code: f for f in diagnose(weights(0.682), (empty,), {"head_loaded": False})}
    assert "HS206" in found and "HS207" not in found  # NaN weights are explained by HS206
    assert found["HS206"].severity == "error"
    assert found["HS104"].severity == "error"
    broken = replace(TABLE[0], start_loss=math.inf, score_pos=math.nan)
    hs207 = next(f for f in diagnose(weights(0.682), (broken,)) if f.code == "HS207")
    assert hs207.message == (
        "Probe statistics are not finite (score_pos at k = 1, start_loss at k = 1): the forward "
        "pass overflowed or produced NaN; re-run in float32."
    )


def test_diagnose_rejects_unknown_vocab_key():
    with pytest.raises(InputError) as err:
        diagnose(weights(1.0), (), {"n_tokeniser": 5})
    assert str(err.value) == (
        "diagnose got unknown vocab key(s) n_tokeniser; valid keys: n_rows, n_tokenizer, "
        "n_real_rows, tied, head_loaded."
    )


def _findings_table() -> dict[str, list[str]]:
    """docs/findings.md's finding-code table: code -> its cells."""
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "findings.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"HS\d{3}", cells[0]):
            rows[cells[0]] = cells
    return rows


def test_docs_findings_table_lists_every_code_with_its_name_and_severity():
    """docs/findings.md's table and findings.FINDING_CODES hold the same codes, names and
    severities, in both directions."""
    table = _findings_table()
    assert {code: (cells[1], cells[2]) for code, cells in table.items()} == {
        code: (f"`{c.name}`", c.severity) for code, c in FINDING_CODES.items()}
    doc = (Path(__file__).parents[1] / "docs" / "findings.md").read_text()
    for band in DEFAULT_BANDS:
        assert f"`{band.metric}`" in doc


def test_docs_findings_thresholds_are_the_constants_the_rules_use():
    """The threshold column of docs/findings.md is the constant each rule compares with."""
    from headscope import findings, recommend
    from headscope.stats import PYSERINI_CEILING

    used = {
        "HS101": recommend.LARGE_HEAD_ROW_NORM,
        "HS201": recommend.BAND_ACTIVE_PASSAGE_SHARE.high,
        "HS202": recommend.BAND_SHARE_ABOVE_5.high,
        "HS203": recommend.BAND_COSINE_UNRELATED.high,
        "HS204": recommend.BAND_START_LOSS.high,
        "HS205": recommend.BAND_ACTIVE_PASSAGE_SHARE.high,
        "HS209": findings.UNKNOWN_TOKEN_SHARE,
        "HS301": PYSERINI_CEILING,
        "HS302": findings.ANSERINI_COARSE_MEAN,
        "HS303": findings.PGVECTOR_HNSW_NONZERO,
        "HS304": findings.PGVECTOR_SPARSEVEC_NONZERO,
        "HS305": findings.FLOAT16_MAX,
    }
    table = _findings_table()
    assert {code: float(table[code][5]) for code in used} == used


def test_probe_rules_are_the_hs2xx_findings_read_from_the_probe():
    from headscope.findings import PROBE_RULES

    codes = [code for code, _ in PROBE_RULES]
    assert len(set(codes)) == len(codes)
    assert set(codes) == {f"HS20{i}" for i in range(1, 8)}


# --------------------------------------------------------------------------------------------
# Properties


_value = st.floats(min_value=0.0, max_value=500.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(_value, _value, st.floats(0.0, 5.0), st.floats(0.0, 0.3), st.floats(0.0, 1.0)),
        min_size=1,
        max_size=6,
    )
)
@pytest.mark.usefixtures("bands_default")
def test_bands_rule_properties(rows):
    table = tuple(
        kstats(2**i, start=a, score=b, twm=c, s5=d, cos=e) for i, (a, b, c, d, e) in enumerate(rows)
    )
    rec = recommend(table, bands=SIX_BANDS)
    inside = [s.k for s in table if all(b.contains(getattr(s, b.metric)) for b in SIX_BANDS)]
    assert rec.passing == tuple(inside)
    # Bands no k reaches do not veto every k; of the ks inside all the others, the smallest
    # wins, unless a band k moves is out of reach: then the one closest to it (then smaller k).
    unreachable = unreachable_bands(rec.verdicts, SIX_BANDS)
    skip = {b.metric for b in unreachable}
    chase = [b for b in unreachable if b.metric not in ACTIVITY_METRICS]
    reachable_ok = [v.k for v in rec.verdicts if not set(v.failed) - skip]
    if inside:
        assert not skip and reachable_ok == inside
    if reachable_ok and not chase:
        assert rec.k == reachable_ok[0]  # the smallest such k, never a larger one
    elif reachable_ok:
        by_k = {s.k: s for s in table}

        def shortfall(k):  # a naive loop over the out-of-reach bands
            total = 0.0
            for b in chase:
                total -= b.margin(getattr(by_k[k], b.metric))
            return total

        assert rec.k == min(reachable_ok, key=lambda k: (shortfall(k), k))
    else:
        fewest = min(len(v.failed) for v in rec.verdicts)
        assert len(next(v for v in rec.verdicts if v.k == rec.k).failed) == fewest
    assert [v.k for v in rec.verdicts] == [s.k for s in table]


def test_serving_findings_at_the_chosen_k():
    from headscope.findings import serving_findings

    table = (replace(TABLE[0], term_weight_max=7.5, share_above_5=0.02, term_weight_mean=1.0),
             replace(TABLE[1], term_weight_max=2.0, share_above_5=0.0, term_weight_mean=0.01))
    hot = serving_findings(table, table[0].k)
    assert [f.code for f in hot] == ["HS301"]
    assert hot[0].message == (
        f"At k = {table[0].k:g} the largest passage term weight is 7.5 (2% of active weights "
        "above 5): pyserini's 8-bit quantisation (w / 5 * 256) would clip them; use a larger k "
        "or a wider quantisation range.")
    # a mean weight of 0.01 also sits below bfloat16's weight step near the top (HS306)
    assert [f.code for f in serving_findings(table, table[1].k)] == ["HS302", "HS306"]
    assert serving_findings(table, 999.0) == ()


@pytest.mark.usefixtures("bands_default")
def test_large_head_that_the_probe_finds_harmless_is_not_told_to_rescale():
    # A large row norm (a weight fact) on a head whose probe statistics pass every band at k = 1:
    # the recommendation is k = 1, and HS101 must say what the probe showed, not "rescale".
    calm = tuple(replace(s, start_loss=3.0, score_pos=20.0, term_weight_mean=0.9,
                         share_above_5=0.0, cosine_unrelated=0.8) for s in TABLE)
    rec = recommend(calm, bands=SIX_BANDS)
    assert rec.k == 1
    (hs101,) = [f for f in diagnose(weights(2.553), calm, recommendation=rec)
                if f.code == "HS101"]
    assert hs101.message == (
        "Mean decoder row norm is 2.553, above 1.5 (ModernBERT-base: 2.553), a fact about the "
        "weights; on the probe at k = 1: start_loss 3, term_weight_mean 0.9, score_pos 20 "
        "(inside every band), so the head is left as shipped (recommended: k = 1) despite its "
        "size."
    )
    assert "rescale" not in hs101.message.lower()
    assert hs101.severity == "warning" and hs101.value == 2.553


@pytest.mark.usefixtures("bands_default")
def test_large_head_that_the_probe_finds_harmful_reports_what_failed_and_the_decision():
    rec = recommend(TABLE, bands=SIX_BANDS)
    assert (rec.k, rec.scale_bias) == (8.0, False)
    (hs101,) = [f for f in diagnose(weights(2.553), TABLE, recommendation=rec)
                if f.code == "HS101"]
    assert hs101.message == (
        "Mean decoder row norm is 2.553, above 1.5 (ModernBERT-base: 2.553), a fact about the "
        "weights; on the probe at k = 1: cosine_unrelated 0.97 is not at most 0.9; share_above_5 "
        "0.2 is not at most 0.01; start_loss 279 is not at most 44; term_weight_mean 3.7 is not "
        "between 0.05 and 2.5; score_pos 900 is "
        "not at most 100; recommended: k = 8: projection divided by 8, output bias kept (fix "
        "--no-scale-bias)."
    )


@pytest.mark.usefixtures("bands_default")
def test_decision_text_names_k_and_the_bias_together():
    rec = recommend(TABLE, bands=SIX_BANDS)
    divided = replace(rec, scale_bias=True)
    assert decision_text(rec) == (
        "k = 8: projection divided by 8, output bias kept (fix --no-scale-bias)")
    assert decision_text(divided) == (
        "k = 8: projection and output bias divided by 8 (fix --scale-bias)")
    assert decision_text(rec, short=True) == "k = 8, bias kept"
    assert decision_text(divided, short=True) == "k = 8, bias divided"
    assert decision_text(rec, has_bias=False) == (
        "k = 8: projection divided by 8 (the head has no output bias)")
    one = replace(rec, k=1.0, scale_bias=True)
    assert decision_text(one) == "k = 1: no rescale (projection and output bias as shipped)"
    assert decision_text(one, short=True) == "k = 1 (no rescale)"


def test_the_score_band_and_the_score_explosion_limit_are_one_constant():
    from headscope.recommend import BAND_SCORE_POS, SCORE_LIMIT
    from headscope.splade.detectors import Thresholds

    assert BAND_SCORE_POS.high == Thresholds().score_limit == SCORE_LIMIT == 1000.0
    assert BAND_SCORE_POS.describe() == "at most 1,000"


# --------------------------------------------------------------------------------------------
# the shipped rule: the calibration's verdict, resolved at recommendation time


def _ship(monkeypatch, ships, row_norms=(1.32, 2.553)):
    """The package's calibration evidence with its verdict replaced (`ships`; None: pending)."""
    from headscope import calibrated

    data = dict(calibrated._data(), ships=ships, row_norms=list(row_norms))
    monkeypatch.setattr(calibrated, "_data", lambda: data)


def test_a_shipped_constant_gives_one_answer_with_or_without_the_probe(monkeypatch):
    _ship(monkeypatch, {"rule": "constant", "k": 16.0, "scale_bias": False})
    small = weights(0.682, 30522, 30522)
    full = recommend(TABLE, weights=small, bands=SIX_BANDS)
    bare = recommend((), weights=small)
    assert (full.k, full.rule, full.scale_bias) == (bare.k, bare.rule, bare.scale_bias) == (
        16.0, "constant", False)
    assert full.reasons[:2] == bare.reasons == (
        "k = 16 (projection divided by 16, output bias kept) for every head: headscope's "
        "calibration chose this constant with its decision rule, written before the runs that "
        "judged it, because no fitted rule beat it on the conditions registered before they "
        "ran (docs/calibration.md).",
        "Those conditions' heads have mean decoder row norms 1.32 to 2.553; this head's 0.682 "
        "is below that range, where this evidence does not reach.")
    assert full.reasons[2:] == ("k = 16 falls inside every band.",)
    assert full.passing == (8.0, 16.0, 32.0) and bare.verdicts == ()
    assert recommend((), weights=weights(2.0)).reasons[1].endswith(
        "this head's 2 is inside that range.")
    assert recommend((), weights=weights(3.0)).reasons[1].endswith(
        "this head's 3 is above that range, where this evidence does not reach.")
    assert weights_only_rule() == "shipped"
    # a rule asked for by name is that rule
    assert recommend(TABLE, rule="bands", bands=SIX_BANDS).k == 8.0
    assert recommend(TABLE, rule="paper", weights=small, bands=SIX_BANDS).k == 1.0

    _ship(monkeypatch, {"rule": "constant", "k": 8.0, "scale_bias": True}, row_norms=())
    divided = recommend((), weights=weights(2.0))
    assert (divided.k, divided.scale_bias) == (8.0, True)
    assert divided.reasons == (
        "k = 8 (projection divided by 8, output bias divided too) for every head: headscope's "
        "calibration chose this constant with its decision rule, written before the runs that "
        "judged it, because no fitted rule beat it on the conditions registered before they "
        "ran (docs/calibration.md).",)  # no judged range: no range sentence


def test_the_shipped_rule_is_the_bands_while_pending_and_the_verdicts_rule_after(monkeypatch):
    _ship(monkeypatch, None)
    assert recommend(TABLE, bands=SIX_BANDS) == recommend(TABLE, rule="bands", bands=SIX_BANDS)
    assert resolve_rule("shipped") == ("bands", None)
    assert weights_only_rule() == "paper"  # the bands need the probe
    _ship(monkeypatch, {"rule": "paper"})
    large = weights(2.553)
    assert recommend(TABLE, weights=large, bands=SIX_BANDS) == recommend(
        TABLE, rule="paper", weights=large, bands=SIX_BANDS)
    assert weights_only_rule() == "shipped"
    assert resolve_rule("reference") == ("reference", None)


def test_the_report_schema_lists_the_rules_a_recommendation_records():
    """APPLIED_RULES is the one list: the report schema's enum for recommendation.rule."""
    from headscope import report as report_mod
    from headscope.recommend import APPLIED_RULES

    def enums(node):
        if isinstance(node, dict):
            if "rule" in node.get("properties", {}) and "enum" in node["properties"]["rule"]:
                yield node["properties"]["rule"]["enum"]
            for value in node.values():
                yield from enums(value)
        elif isinstance(node, list):
            for value in node:
                yield from enums(value)

    assert list(enums(report_mod.schema())) == [list(APPLIED_RULES)]
