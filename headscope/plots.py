"""Matplotlib figures of a report and of training telemetry (no torch, never pyplot).

Every function builds a `matplotlib.figure.Figure` with the object API and returns it; nothing
here shows a window, prints or keeps global state, so figures can be drawn in a library, a test
or a headless server. The inputs are records that survive a round trip through files: a `Report`
(read back from JSON with `report.read_json`) and training telemetry (StepRecords, e.g. read back
with `headscope.splade.telemetry.read_telemetry`, or plain dicts with the same fields).

Every line carries a label; the tests find lines by label and compare their data with the
report's numbers, so keep labels stable.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

from headscope import fileio
from headscope.errors import InputError
from headscope.stats import METRIC_REGISTRY, k_text, number

if TYPE_CHECKING:
    from headscope.api import TrainingOutcome
    from headscope.recommend import Band
    from headscope.report import Report
    from headscope.splade.telemetry import StepRecord

DPI = 120
FORMATS = ("png", "svg")

# Fields of a StepRecord that the training figure draws.
# What the second series of a row-norm histogram holds: rows that are no real token.
OTHER_ROWS = "rows of no real token: beyond the tokenizer, or placeholders like [unused*]"

TRAINING_FIELDS = ("step", "loss", "active_query", "active_passage", "score_pos", "score_neg")

_SHARE_OF = {"active_query_share": "active_query", "active_passage_share": "active_passage"}


# --------------------------------------------------------------------------------------------
# Report figures


def k_grid_figure(report: Report) -> Figure:
    """Active terms, start loss and mean term weight against the candidate k (log2 axis).

    The recommended k is a dotted vertical line on every panel; each band of
    `report.recommendation.bands` that bounds a plotted statistic is drawn as dashed
    horizontal lines at its limits (share bands of active terms are converted to terms with
    the head's vocabulary size).
    """
    per_k = _per_k(report, "k_grid_figure")
    ks = [s.k for s in per_k]
    bands = _bands(report)
    fig = Figure(figsize=(13.0, 4.2), layout="constrained")
    ax_act, ax_loss, ax_w = fig.subplots(1, 3)

    ax_act.plot(ks, [s.active_query for s in per_k], marker="o", label="per query")
    ax_act.plot(ks, [s.active_passage for s in per_k], marker="s", label="per passage")
    n_rows = report.model.n_rows
    for band in bands:
        if band.metric in ("active_query", "active_passage"):
            _band_lines(ax_act, band, 1.0, f"{_who(band.metric)} band")
        elif band.metric in _SHARE_OF:
            _band_lines(ax_act, band, float(n_rows), f"{_who(_SHARE_OF[band.metric])} band")
    ax_act.set_ylabel("mean active terms")
    ax_act.set_title("Active terms (relu(logit) > 0)")
    _log_y(ax_act, [s.active_query for s in per_k] + [s.active_passage for s in per_k])

    losses = [s.start_loss for s in per_k]
    ax_loss.plot(ks, losses, marker="o", color="C3", label=METRIC_REGISTRY["start_loss"].label)
    for band in bands:
        if band.metric == "start_loss":
            _band_lines(ax_loss, band, 1.0, "band")
    if report.probe is not None and report.probe.batch_size > 1:
        chance = math.log(report.probe.batch_size)
        ax_loss.axhline(
            chance,
            color="0.55",
            linestyle="-.",
            linewidth=1,
            label=f"chance: ln {report.probe.batch_size} = {number(chance, 3)}",
        )
    ax_loss.set_ylabel("in-batch InfoNCE at step 0")
    ax_loss.set_title("Start loss")
    _log_y(ax_loss, losses)

    ax_w.plot(
        ks, [s.term_weight_mean for s in per_k], marker="o", color="C2",
        label=METRIC_REGISTRY["term_weight_mean"].label,
    )
    for band in bands:
        if band.metric == "term_weight_mean":
            _band_lines(ax_w, band, 1.0, "band")
    ax_w.set_ylabel("log(1 + relu(logit)), active passage terms")
    ax_w.set_title("Mean SPLADE term weight")

    for ax in (ax_act, ax_loss, ax_w):
        _k_axis(ax, ks)
        _mark_recommended(ax, report)
        ax.legend(fontsize="small")
    fig.suptitle(_plain(f"{report.model.source}: probe statistics per k ({_divided(report)})"
                        + (f"; recommended {_decision(report)}" if report.recommendation
                           else "")))
    return fig


def _divided(report: Report) -> str:
    if report.weights.bias_mean is None:
        return "MLM-head projection divided by k; no output bias"
    if report.probe is not None and report.probe.scale_bias:
        return "MLM-head projection and output bias divided by k"
    return "MLM-head projection divided by k, output bias kept"


def _decision(report: Report) -> str:
    """The recommendation in a few words: k and the bias, together."""
    from headscope.recommend import decision_text

    assert report.recommendation is not None
    return decision_text(report.recommendation, has_bias=report.weights.bias_mean is not None,
                         short=True)


def logit_figure(report: Report) -> Figure:
    """Token-logit percentiles (p01, p50, p99) and the share of positive logits per k."""
    per_k = _per_k(report, "logit_figure")
    ks = [s.k for s in per_k]
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    ax_p, ax_pos = fig.subplots(1, 2)

    for attr, label, style in (
        ("logit_p99", "p99", "^"),
        ("logit_p50", "p50", "o"),
        ("logit_p01", "p01", "v"),
    ):
        ax_p.plot(ks, [getattr(s, attr) for s in per_k], marker=style, label=label)
    ax_p.axhline(0.0, color="0.55", linewidth=1, label="0")
    ax_p.set_ylabel("token logit")
    ax_p.set_title("Logit percentiles")

    ax_pos.plot(
        ks,
        [100.0 * s.frac_positive for s in per_k],
        marker="o",
        color="C4",
        label=METRIC_REGISTRY["frac_positive"].label,
    )
    for band in _bands(report):
        if band.metric == "frac_positive":
            _band_lines(ax_pos, band, 100.0, "band")
    ax_pos.set_ylabel("% of token x vocabulary logits > 0")
    ax_pos.set_title("Share of positive logits")
    ax_pos.set_ylim(bottom=0.0)

    for ax in (ax_p, ax_pos):
        _k_axis(ax, ks)
        _mark_recommended(ax, report)
        ax.legend(fontsize="small")
    scale = (
        "output bias divided too"
        if report.probe and report.probe.scale_bias
        else ("output bias not divided")
    )
    fig.suptitle(_plain(f"{report.model.source}: token logits per k ({scale})"))
    return fig


def row_norm_histogram_figure(report: Report) -> Figure:
    """The report's row-norm histogram (stored binned, so a saved report can draw it): real-token
    rows and the others (rows beyond the tokenizer's length and placeholder tokens such as BERT's
    [unused*]), log count axis, with the all-rows mean (the paper's
    statistic) marked. The legend sits below the axes, clear of the bars."""
    h = report.weights.row_norm_histogram
    if h is None:
        raise InputError("This report has no row-norm histogram; re-create it with headscope "
                         "inspect.")
    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.stairs(h.real, h.edges, fill=True, alpha=0.6, color="C0",
              label=f"real-token rows ({sum(h.real):,})")
    if any(h.other):
        ax.stairs(h.other, h.edges, fill=True, alpha=0.6, color="C3",
                  label=f"{OTHER_ROWS} ({sum(h.other):,})")
    mean = report.weights.row_norm_all.mean
    ax.axvline(mean, color="black", linestyle="--", label=f"mean, all rows: {number(mean)}")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("decoder row L2 norm")
    ax.set_ylabel("rows")
    ax.set_title(_plain(f"Decoder row norms: {report.model.source}"))
    fig.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    return fig


def row_norm_figure(
    row_norms_all: np.ndarray,
    real_rows: np.ndarray | None = None,
    paper_value: float | None = None,
) -> Figure:
    """Histogram of decoder row L2 norms (log count axis, so a few untrained rows stay visible).

    `real_rows` (bool, one per row) splits the histogram into real-token rows and the others
    (rows beyond the tokenizer and placeholder tokens such as BERT's [unused*]). The mean over
    all rows (the paper's statistic) is a vertical line, and so is `paper_value` when given.
    """
    norms = np.asarray(row_norms_all, dtype=np.float64).ravel()  # (V,)
    if norms.size == 0:
        raise InputError("row_norm_figure() got no row norms; pass one L2 norm per decoder row.")
    if real_rows is not None:
        mask = np.asarray(real_rows)
        if mask.dtype != np.bool_ or mask.shape != norms.shape:
            raise InputError(
                f"real_rows must be a bool array with one entry per decoder row ({norms.size}), "
                f"got dtype {mask.dtype} and shape {mask.shape}; pass VocabInfo.real_rows."
            )
    finite = norms[np.isfinite(norms)]
    if finite.size == 0:
        raise InputError("Every row norm is NaN or infinite; the decoder weight is not finite.")
    # Shared bins so the two groups are comparable bar by bar.
    edges = np.histogram_bin_edges(finite, bins=60).tolist()  # 61 edges

    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.subplots()
    if real_rows is None:
        ax.hist(finite, bins=edges, color="C0", label=f"all rows ({norms.size:,})")
    else:
        real = norms[mask & np.isfinite(norms)]
        other = norms[~mask & np.isfinite(norms)]
        ax.hist(real, bins=edges, color="C0", alpha=0.75, label=f"real-token rows ({real.size:,})")
        ax.hist(other, bins=edges, color="C3", alpha=0.75,
                label=f"{OTHER_ROWS} ({other.size:,})")
    mean = float(finite.mean())
    ax.axvline(
        mean, color="k", linestyle="--", linewidth=1.2, label=f"mean over all rows = {number(mean)}"
    )
    if paper_value is not None:
        ax.axvline(
            paper_value,
            color="C2",
            linestyle=":",
            linewidth=1.5,
            label=f"paper value = {number(paper_value)}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("L2 norm of a decoder row")
    ax.set_ylabel("rows (log scale)")
    ax.set_title("MLM decoder row norms")
    fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    return fig


# --------------------------------------------------------------------------------------------
# Training telemetry


Records = Sequence["StepRecord | Mapping[str, Any]"]


def training_figure(runs: Mapping[str, Records], title: str | None = None) -> Figure:
    """Three panels per step, one colour per run: total loss (log y), active terms per query
    (solid) and per passage (dashed), mean positive (solid) and negative (dashed) scores.

    Records may be StepRecords (e.g. from `headscope.splade.telemetry.read_telemetry`) or plain
    dicts with the same fields; None stands for NaN. Non-positive losses leave gaps on the log
    axis; active terms and scores use a symmetric log axis, so zero and negative values show.
    Steps are whole numbers on the x axis; one legend below the panels names the runs and the
    line styles, so it covers no curve. A panel with fewer than two points in every curve says
    so in its middle ("one step logged: too little data for a curve", or "no finite values
    logged"), and a one-step run is drawn as markers.
    """
    if not runs:
        raise InputError("training_figure() got no runs; pass {name: records} with at least one.")
    fig = Figure(figsize=(14.0, 4.8), layout="constrained")
    ax_loss, ax_act, ax_score = fig.subplots(1, 3)
    handles = []
    points = {ax_loss: 0, ax_act: 0, ax_score: 0}  # most finite points of one curve, per panel
    for i, (name, records) in enumerate(runs.items()):
        if len(records) == 0:
            raise InputError(f"Run {name!r} has no step records; drop it or pass its telemetry.")
        color = f"C{i % 10}"
        steps = _series(records, "step", name)
        # A run of one step has no line to draw: a marker shows its point.
        marker = "o" if len(records) < 2 else None
        loss = _series(records, "loss", name)
        (handle,) = ax_loss.plot(steps, loss, color=color, marker=marker, label=_plain(name))
        points[ax_loss] = max(points[ax_loss], int(np.isfinite(loss).sum()))
        handles.append(handle)
        for ax, key, suffix, style in (
            (ax_act, "active_query", "query", "-"),
            (ax_act, "active_passage", "passage", "--"),
            (ax_score, "score_pos", "positive", "-"),
            (ax_score, "score_neg", "negative", "--"),
        ):
            values = _series(records, key, name)
            points[ax] = max(points[ax], int(np.isfinite(values).sum()))
            ax.plot(steps, values, color=color, linestyle=style, marker=marker,
                    label=_plain(f"{name} {suffix}"))
    for ax, n in points.items():
        if n < 2:  # say so, rather than leave an empty-looking panel
            note = ("no finite values logged" if n == 0 else
                    "one step logged: too little data for a curve")
            ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center",
                    fontsize="medium", color="0.35")
    ax_loss.set_yscale("log", nonpositive="mask")
    ax_loss.set_title("Training loss")
    ax_loss.set_ylabel("loss (ranking + FLOPS)")
    ax_act.set_yscale("symlog", linthresh=1.0)
    ax_act.set_title("Active terms (solid: query, dashed: passage)")
    ax_act.set_ylabel("mean non-zero terms")
    ax_score.set_yscale("symlog", linthresh=1.0)
    ax_score.set_title("Scores (solid: positive, dashed: negative)")
    ax_score.set_ylabel("mean q . d")
    for ax in (ax_loss, ax_act, ax_score):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    styles = [Line2D([], [], color="0.3", linestyle="-",
                     label="solid: queries / positive pairs"),
              Line2D([], [], color="0.3", linestyle="--",
                     label="dashed: passages / other pairs")]
    fig.legend(handles=handles + styles, loc="outside lower center",
               ncols=min(len(handles) + 2, 6), fontsize="small", frameon=False)
    if title:
        fig.suptitle(_plain(title))
    return fig


def save_training_figure(outcome: TrainingOutcome, path: str | os.PathLike[str]) -> Path:
    """Draw the training curves of a confirm or sweep run (`training_figure` of its records,
    titled with its model and whether it is a simulation) and save them (`save_figure`)."""
    title = outcome.source + (" (simulated dense regime)" if outcome.simulation else "")
    return save_figure(training_figure(outcome.records, title), path)


def _series(records: Records, name: str, run: str) -> np.ndarray:
    out = np.empty(len(records), dtype=np.float64)  # (steps,)
    for i, rec in enumerate(records):
        try:
            value = rec[name] if isinstance(rec, Mapping) else getattr(rec, name)
        except (KeyError, AttributeError):
            raise InputError(
                f"Run {run!r}, record {i} has no field {name!r}; pass StepRecords "
                "(headscope.splade.telemetry.read_telemetry) or dicts with their fields."
            ) from None
        try:
            out[i] = math.nan if value is None else float(value)
        except (TypeError, ValueError):
            raise InputError(
                f"Run {run!r}, record {i}: field {name!r} is {value!r}, not a number."
            ) from None
    return out


# --------------------------------------------------------------------------------------------
# Files


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write `fig` as PNG or SVG (by suffix) at 120 dpi, atomically (temp file, then rename).

    Files carry no creation date or software stamp, so the same figure gives the same bytes.
    """
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(f"Cannot save figure {p}: unknown suffix {p.suffix!r}; use .png or .svg.")
    if not p.parent.is_dir():
        raise InputError(
            f"Cannot save figure {p}: directory {p.parent} does not exist; create "
            "it or choose another path."
        )
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI, metadata=_metadata(fmt))
    return fileio.write_bytes(p, buf.getvalue())  # temp file, fsync, rename; the user's umask


def _metadata(fmt: str) -> dict[str, None]:
    if fmt == "png":
        return {"Software": None}
    return {"Creator": None, "Date": None}


# --------------------------------------------------------------------------------------------
# Helpers


def _per_k(report: Report, what: str) -> list:
    if not report.per_k:
        raise InputError(
            f"{what}() needs per-k probe statistics, but the report of {report.model.source} has "
            "none (weights only); re-run headscope inspect with a probe."
        )
    return sorted(report.per_k, key=lambda s: s.k)


def _bands(report: Report) -> tuple[Band, ...]:
    rec = report.recommendation
    return rec.bands if rec is not None else ()


def _who(metric: str) -> str:
    return "query" if metric == "active_query" else "passage"


def _band_lines(ax, band: Band, scale: float, label: str) -> None:
    """Dashed horizontal lines at the band's limits, multiplied by `scale`."""
    for side, bound in (("low", band.low), ("high", band.high)):
        if bound is None:
            continue
        word = "at least" if side == "low" else "at most"
        ax.axhline(
            bound * scale,
            color="0.35",
            linestyle="--",
            linewidth=1,
            label=f"{label}: {word} {number(bound * scale)}",
        )


def _mark_recommended(ax, report: Report) -> None:
    rec = report.recommendation
    if rec is not None:
        ax.axvline(
            rec.k, color="C6", linestyle=":", linewidth=2, label=f"recommended {_decision(report)}"
        )


def _k_axis(ax, ks: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), [k_text(k) for k in ks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("k (projection divided by k)")
    ax.grid(True, alpha=0.3)


def _log_y(ax, values: Sequence[float]) -> None:
    """Log y axis when there is something positive to show on it."""
    if any(math.isfinite(v) and v > 0 for v in values):
        ax.set_yscale("log", nonpositive="mask")


def _plain(text: str) -> str:
    """Text shown as typed: a '$' would otherwise start matplotlib mathtext."""
    return text.replace("$", r"\$")


__all__ = [
    "DPI",
    "FORMATS",
    "OTHER_ROWS",
    "TRAINING_FIELDS",
    "k_grid_figure",
    "logit_figure",
    "row_norm_figure",
    "row_norm_histogram_figure",
    "save_figure",
    "save_training_figure",
    "training_figure",
]
