"""plots: figure content (axes, labels, line data) equals the report's and telemetry's numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from test_report import MODEL, PROBE, WEIGHTS, kstats

from headscope import plots
from headscope.errors import InputError
from headscope.findings import diagnose
from headscope.recommend import (
    BAND_TERM_WEIGHT_MEAN,
    override_bands,
    recommend,
)
from headscope.report import Report, make_report

KS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
V = 50368

# A fixed six-band set (the provisional values shipped before calibration), so that these
# drawings do not change meaning when DEFAULT_BANDS is recalibrated.
SIX_BANDS = override_bands({"start_loss": (None, 44.0), "term_weight_mean": (0.05, 2.5),
                            "score_pos": (None, 100.0), "active_passage_share": (None, 0.10),
                            "cosine_unrelated": (None, 0.90)})


def six_k_report(bands=SIX_BANDS) -> Report:
    """A ModernBERT-like report over six candidate ks: start loss, scores and weights shrink
    with k; active terms do not (the bias is left undivided but is small here)."""
    per_k = tuple(
        replace(
            kstats(
                k, start=279.0 / k**1.3, score=900.0 / k, twm=3.75 / k**0.7, cos=0.97 - 0.03 * i
            ),
            active_query=41.5 + i,
            active_passage=187.25 + 2 * i,
            active_passage_share=(187.25 + 2 * i) / V,
            frac_positive=0.0031 - 0.0001 * i,
        )
        for i, k in enumerate(KS)
    )
    return make_report(
        MODEL,
        WEIGHTS,
        probe=replace(PROBE, ks=KS),
        per_k=per_k,
        findings=diagnose(WEIGHTS, per_k, {"n_rows": V, "n_tokenizer": 50285, "tied": True}),
        recommendation=recommend(per_k, rule="bands", weights=WEIGHTS, bands=bands),
        created="2026-07-01T12:00:00Z",
    )


def telemetry_rows(arm: str, steps: int, start: float, end: float) -> list[dict]:
    """Plain dicts shaped like TelemetryWriter lines (StepRecord fields plus an arm key)."""
    rows = []
    for s in range(steps):
        frac = s / max(1, steps - 1)
        loss = start ** (1 - frac) * end**frac
        rows.append(
            {
                "arm": arm,
                "step": s,
                "loss": loss,
                "ranking_loss": 0.9 * loss,
                "flops_q": 1.5,
                "flops_d": 2.5,
                "weight_q": 0.0,
                "weight_d": 0.0,
                "active_query": 28000.0 * (1 - frac) + 40.0,
                "active_passage": 38000.0 * (1 - frac) + 200.0 + s,
                "score_pos": start / 10 * (1 - frac) + 20.0,
                "score_neg": start / 40 * (1 - frac) - 2.0,
                "grad_norm": 10.0,
                "lr": 2e-5,
                "loss_finite": True,
                "grad_finite": True,
            }
        )
    return rows


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def line(ax, label: str):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, (label, [ln.get_label() for ln in ax.get_lines()])
    return found[0]


def labels(ax) -> list[str]:
    return [ln.get_label() for ln in ax.get_lines()]


# --------------------------------------------------------------------------------------------
# k grid


def test_k_grid_lines_are_the_report_numbers():
    report = six_k_report()
    rec = report.recommendation
    assert rec is not None
    fig = plots.k_grid_figure(report)
    ax_act, ax_loss, ax_w = fig.axes
    per_k = report.per_k

    np.testing.assert_array_equal(line(ax_act, "per query").get_xdata(), KS)
    np.testing.assert_array_equal(
        line(ax_act, "per query").get_ydata(), [s.active_query for s in per_k]
    )
    np.testing.assert_array_equal(
        line(ax_act, "per passage").get_ydata(), [s.active_passage for s in per_k]
    )
    np.testing.assert_array_equal(
        line(ax_loss, "start loss").get_ydata(), [s.start_loss for s in per_k]
    )
    np.testing.assert_array_equal(
        line(ax_w, "mean term weight").get_ydata(), [s.term_weight_mean for s in per_k]
    )
    # Axes: log2 k with the candidates as ticks, log start loss, labelled.
    for ax in (ax_act, ax_loss, ax_w):
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8", "16", "32"]
        assert ax.get_xlabel() == "k (projection divided by k)"
        marker = line(ax, f"recommended k = {rec.k:g}, bias kept")
        assert list(marker.get_xdata()) == [rec.k, rec.k]
    assert ax_loss.get_yscale() == "log"
    assert ax_loss.get_ylabel() == "in-batch InfoNCE at step 0"
    assert ax_act.get_ylabel() == "mean active terms"
    # The title names the recommendation as one decision: k and the output bias together.
    assert fig.get_suptitle() == (
        "answerdotai/ModernBERT-base: probe statistics per k (MLM-head projection divided by k, "
        f"output bias kept); recommended k = {rec.k:g}, bias kept")
    divided = replace(report, recommendation=replace(rec, scale_bias=True),
                      probe=replace(report.probe, scale_bias=True))
    assert plots.k_grid_figure(divided).get_suptitle() == (
        "answerdotai/ModernBERT-base: probe statistics per k (MLM-head projection and output bias "
        f"divided by k); recommended k = {rec.k:g}, bias divided")


def test_k_grid_draws_the_bands_that_apply():
    fig = plots.k_grid_figure(six_k_report())
    ax_act, ax_loss, ax_w = fig.axes
    # active_passage_share <= 0.10 drawn in terms: 0.10 x 50,368 rows.
    passage = line(ax_act, "passage band: at most 5,037")
    assert list(passage.get_ydata()) == pytest.approx([0.10 * V] * 2)
    assert list(line(ax_loss, "band: at most 44").get_ydata()) == [44.0, 44.0]
    chance = line(ax_loss, "chance: ln 16 = 2.77")
    assert chance.get_ydata()[0] == pytest.approx(math.log(16))
    assert list(line(ax_w, "band: at least 0.05").get_ydata()) == [0.05, 0.05]
    assert list(line(ax_w, "band: at most 2.5").get_ydata()) == [2.5, 2.5]


def test_k_grid_without_a_band_draws_no_band_line():
    fig = plots.k_grid_figure(six_k_report(bands=(BAND_TERM_WEIGHT_MEAN,)))
    ax_act, ax_loss, ax_w = fig.axes
    assert not [lb for lb in labels(ax_act) + labels(ax_loss) if "band" in lb]
    assert sum("band" in lb for lb in labels(ax_w)) == 2


def test_k_grid_needs_per_k_statistics():
    report = replace(six_k_report(), per_k=())
    with pytest.raises(InputError, match="needs per-k probe statistics.*re-run headscope inspect"):
        plots.k_grid_figure(report)
    with pytest.raises(InputError, match="logit_figure"):
        plots.logit_figure(report)


# --------------------------------------------------------------------------------------------
# logits


def test_logit_figure_lines_and_band():
    bands = override_bands({"frac_positive": (None, 0.05)})
    report = six_k_report(bands=bands)
    fig = plots.logit_figure(report)
    ax_p, ax_pos = fig.axes
    for attr, label in (("logit_p01", "p01"), ("logit_p50", "p50"), ("logit_p99", "p99")):
        ln = line(ax_p, label)
        np.testing.assert_array_equal(ln.get_xdata(), KS)
        np.testing.assert_array_equal(ln.get_ydata(), [getattr(s, attr) for s in report.per_k])
    np.testing.assert_allclose(
        line(ax_pos, "positive logits").get_ydata(),
        [100 * s.frac_positive for s in report.per_k],
    )
    assert list(line(ax_pos, "band: at most 5").get_ydata()) == [5.0, 5.0]
    assert ax_p.get_ylabel() == "token logit"
    assert ax_pos.get_ylabel() == "% of token x vocabulary logits > 0"
    assert "output bias not divided" in fig.get_suptitle()


# --------------------------------------------------------------------------------------------
# row norms


def test_row_norm_histogram_separates_real_rows():
    rng = np.random.default_rng(0)
    norms = rng.normal(2.5, 0.3, V)
    real = np.ones(V, dtype=bool)
    real[50285:] = False
    norms[~real] = rng.normal(0.3, 0.05, int((~real).sum()))
    fig = plots.row_norm_figure(norms, real, paper_value=2.553)
    (ax,) = fig.axes
    bars = {c.patches[0].get_label(): c for c in ax.containers}  # hist labels a patch
    other = f"{plots.OTHER_ROWS} (83)"
    assert set(bars) == {"real-token rows (50,285)", other}
    heights = {k: sum(p.get_height() for p in c.patches) for k, c in bars.items()}
    assert heights == {"real-token rows (50,285)": 50285, other: 83}
    mean = line(ax, f"mean over all rows = {norms.mean():.4g}")
    assert mean.get_xdata()[0] == pytest.approx(norms.mean())
    assert line(ax, "paper value = 2.553").get_xdata()[0] == 2.553
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "L2 norm of a decoder row"


def test_row_norm_histogram_without_mask_and_bad_mask():
    norms = np.linspace(0.5, 1.0, 100)
    (ax,) = plots.row_norm_figure(norms).axes
    assert [c.patches[0].get_label() for c in ax.containers] == ["all rows (100)"]
    assert not [lb for lb in labels(ax) if lb.startswith("paper")]
    with pytest.raises(InputError, match="bool array with one entry per decoder row"):
        plots.row_norm_figure(norms, np.ones(99, dtype=bool))
    with pytest.raises(InputError, match="bool array"):
        plots.row_norm_figure(norms, np.ones(100))
    with pytest.raises(InputError, match="no row norms"):
        plots.row_norm_figure(np.array([]))


# --------------------------------------------------------------------------------------------
# training


def test_training_figure_from_plain_dicts():
    runs = {
        "original": telemetry_rows("original", 30, 2e4, 1.2),
        "fixed, k = 16": telemetry_rows("fixed", 30, 6e2, 0.08),
    }
    fig = plots.training_figure(runs, title="ModernBERT (simulated)")
    ax_loss, ax_act, ax_score = fig.axes
    assert labels(ax_loss) == ["original", "fixed, k = 16"]
    assert len(ax_act.get_lines()) == 4 and len(ax_score.get_lines()) == 4
    for name, rows in runs.items():
        steps = [r["step"] for r in rows]
        loss = line(ax_loss, name)
        np.testing.assert_array_equal(loss.get_xdata(), steps)
        np.testing.assert_array_equal(loss.get_ydata(), [r["loss"] for r in rows])
        for ax, suffix, key in (
            (ax_act, "query", "active_query"),
            (ax_act, "passage", "active_passage"),
            (ax_score, "positive", "score_pos"),
            (ax_score, "negative", "score_neg"),
        ):
            np.testing.assert_array_equal(
                line(ax, f"{name} {suffix}").get_ydata(), [r[key] for r in rows]
            )
        # one colour per run across panels; dashed passage / negative
        color = loss.get_color()
        assert line(ax_act, f"{name} passage").get_color() == color
        assert line(ax_act, f"{name} passage").get_linestyle() == "--"
    assert ax_loss.get_yscale() == "log"
    assert ax_loss.get_xlabel() == "step"
    assert fig.get_suptitle() == "ModernBERT (simulated)"


def test_training_figure_with_too_little_data_says_so():
    """A one-step log draws its point as markers and says, in each panel, that one step is too
    little for a curve; a panel whose values are all missing says so too."""
    rows = telemetry_rows("a", 1, 5.0, 1.0)
    fig = plots.training_figure({"a": rows})
    for ax in fig.axes:
        assert [t.get_text() for t in ax.texts] == ["one step logged: too little data for a curve"]
        assert all(ln.get_marker() == "o" and len(ln.get_xdata()) == 1 for ln in ax.get_lines())
    two = telemetry_rows("a", 2, 5.0, 1.0)
    for row in two:
        row["loss"] = None
    ax_loss, ax_act, _ = plots.training_figure({"a": two}).axes
    assert [t.get_text() for t in ax_loss.texts] == ["no finite values logged"]
    assert len(ax_act.texts) == 0 and ax_act.get_lines()[0].get_marker() in ("None", None, "")


def test_training_figure_rejects_empty_and_malformed_runs():
    with pytest.raises(InputError, match="no runs"):
        plots.training_figure({})
    with pytest.raises(InputError, match="'a' has no step records"):
        plots.training_figure({"a": []})
    rows = telemetry_rows("a", 3, 10.0, 1.0)
    del rows[1]["score_neg"]
    with pytest.raises(InputError, match="Run 'a', record 1 has no field 'score_neg'"):
        plots.training_figure({"a": rows})


def test_training_figure_from_telemetry_written_and_read_back(tmp_path):
    from headscope.splade.telemetry import StepRecord, TelemetryWriter, read_telemetry

    fields = {k: v for k, v in telemetry_rows("a", 1, 5.0, 5.0)[0].items() if k != "arm"}
    records = [
        StepRecord(**{**fields, "step": 0}),
        StepRecord(**{**fields, "step": 1, "loss": math.nan, "loss_finite": False}),
        StepRecord(**{**fields, "step": 2, "loss": 3.0}),
    ]
    path = tmp_path / "t.jsonl"
    with TelemetryWriter(path, arm="fixed", k=16) as writer:
        for r in records:
            writer(r)
    runs = read_telemetry(path)
    fig = plots.training_figure(runs)
    loss = line(fig.axes[0], "fixed, k = 16")
    np.testing.assert_array_equal(loss.get_ydata(), [5.0, math.nan, 3.0])
    # plain dicts with None for NaN (the JSON lines themselves) draw the same line
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    again = plots.training_figure({"fixed, k = 16": rows}).axes[0].get_lines()[0].get_ydata()
    np.testing.assert_array_equal(again, loss.get_ydata())


def test_training_figure_steps_are_integers_and_the_legend_covers_no_curve():
    runs = {"original": telemetry_rows("original", 3, 2e4, 1.2),
            "fixed": telemetry_rows("fixed", 3, 6e2, 0.08)}
    fig = plots.training_figure(runs)
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_legend() is None  # no legend inside a panel
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["original", "fixed", "solid: queries / positive pairs",
                     "dashed: passages / other pairs"]
    box = legend.get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent())


# --------------------------------------------------------------------------------------------
# files and imports


def test_save_figure_png_and_svg(tmp_path):
    fig = plots.k_grid_figure(six_k_report())
    png = plots.save_figure(fig, tmp_path / "grid.png")
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"matplotlib" not in data  # no software stamp
    svg = plots.save_figure(fig, tmp_path / "grid.SVG")
    text = svg.read_text()
    assert "<svg" in text and "per passage" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.SVG", "grid.png"]
    again = plots.save_figure(fig, tmp_path / "again.png")
    assert again.read_bytes() == data  # same figure, same bytes
    # 120 dpi: 13 x 4.2 inches
    width = int.from_bytes(data[16:20], "big")
    assert width == 13 * 120


def test_save_figure_errors_leave_nothing(tmp_path):
    fig = plots.logit_figure(six_k_report())
    with pytest.raises(InputError, match="unknown suffix '.pdf'; use .png or .svg"):
        plots.save_figure(fig, tmp_path / "f.pdf")
    with pytest.raises(InputError, match="does not exist"):
        plots.save_figure(fig, tmp_path / "missing" / "f.png")
    assert list(tmp_path.iterdir()) == []


def test_importing_plots_and_export_loads_neither_torch_nor_pyplot():
    code = (
        "import sys, headscope.plots, headscope.export; "
        "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_row_norm_histogram_figure_from_a_report():
    import dataclasses

    from headscope.stats import Histogram

    report = six_k_report()
    hist = Histogram(edges=(0.0, 1.0, 2.0, 3.0), real=(10, 30, 5), other=(0, 0, 7))
    report = dataclasses.replace(
        report, weights=dataclasses.replace(report.weights, row_norm_histogram=hist))
    fig = plots.row_norm_histogram_figure(report)
    ax = fig.axes[0]
    (legend,) = fig.legends  # below the axes, covering no bar
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:2] == ["real-token rows (45)", "rows of no real token: beyond the tokenizer, "
                          "or placeholders like [unused*] (7)"]
    fig.canvas.draw()
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())
    assert ax.get_xlabel() == "decoder row L2 norm"
