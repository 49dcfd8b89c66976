"""A report as a document for people: self-contained HTML, or Markdown with PNG figures.

Both documents hold the same sections: the recommendation in one line, model facts, head weight
statistics, the per-k probe table with each k's band verdict (failing cells marked), the findings
with their codes, the recommendation with its reasons, the bands and where their numbers come
from, and the figures (k grid and logits; training curves when a confirm telemetry JSONL is
given). Everything is drawn from the `Report` record, so a report read back from JSON renders the
same document without torch.

The HTML has no external references: its CSS is inline and its figures are embedded as base64
PNG. Every piece of text from the report is escaped with `html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headscope import fileio
from headscope.errors import InputError
from headscope.plots import (
    DPI,
    k_grid_figure,
    logit_figure,
    row_norm_histogram_figure,
    training_figure,
)
from headscope.recommend import decision_text
from headscope.report import Report
from headscope.splade.telemetry import read_telemetry
from headscope.stats import METRIC_REGISTRY, k_text, number, percent

Telemetry = Mapping[str, Sequence[Mapping[str, Any]]]
PathLike = str | os.PathLike[str]

# --------------------------------------------------------------------------------------------
# Numbers


def _num(x: float | int | None) -> str:
    """4 significant digits; thousands separators from 1,000 up; n/a for NaN; – for None."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return number(x, 4)  # the one number format, one more significant digit than the terminal


def _pct(x: float) -> str:
    return percent(x) if math.isfinite(x) else _num(x)


_k = k_text


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# --------------------------------------------------------------------------------------------
# Content shared by both formats: plain-text tables


@dataclass(frozen=True)
class _Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    # Per row: indices of cells to mark as failing a band; whether the row is the recommended k.
    marks: tuple[tuple[int, ...], ...] = ()
    highlight: tuple[bool, ...] = ()


def _summary_line(report: Report) -> str:
    rec = report.recommendation
    counts = {
        s: sum(f.severity == s for f in report.findings) for s in ("error", "warning", "info")
    }
    found = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n)
    head = f"Recommendation ({rec.rule} rule): {_decision(report)}" if rec is not None \
        else "No recommendation"
    return f"{head}; findings: {found or 'none'}."


def _decision(report: Report, short: bool = False) -> str:
    """k and the output bias, always together (the recommendation is one decision)."""
    assert report.recommendation is not None
    return decision_text(report.recommendation, has_bias=report.weights.bias_mean is not None,
                         short=short)


def _per_k_note(report: Report) -> str:
    """The per-k caption: what the statistics divide, and the recommended row's decision."""
    if report.weights.bias_mean is None:
        divided = "projection divided by k (the head has no output bias)"
    elif report.probe is not None and report.probe.scale_bias:
        divided = "projection and output bias divided by k"
    else:
        divided = "projection divided by k and its output bias kept"
    rec = ("" if report.recommendation is None
           else f" The recommended row: {_decision(report, short=True)}.")
    return f"Every statistic as the model would have it with its MLM-head {divided}.{rec}"


def _model_table(report: Report) -> _Table:
    m = report.model
    tok = f"{m.n_tokenizer:,}" if m.n_tokenizer is not None else "no tokenizer"
    rows = [
        ("source", m.source),
        ("revision", m.revision or "–"),
        ("model type / head family", f"{m.model_type} / {m.family}"),
        ("architecture", m.architecture or "–"),
        ("decoder rows (vocabulary of the head)", f"{m.n_rows:,}"),
        ("tokenizer length", tok),
        ("decoder input width", f"{m.hidden_size:,}"),
        ("decoder tied to input embeddings", _yes(m.tied)),
        ("head loaded from the checkpoint", _yes(m.head_loaded)),
        ("dtype / device", f"{m.dtype} / {m.device}"),
        ("special tokens", " ".join(m.special_tokens) or "–"),
        (
            "statistics",
            "weights only (no probe forward pass)"
            if m.weights_only
            else "weights and a probe forward pass",
        ),
    ]
    p = report.probe
    if p is not None:
        rows.append(
            (
                "probe",
                f"{p.name} {p.version}: {p.n_pairs:,} pairs, batch {p.batch_size}, max length "
                f"{p.max_query_length}/{p.max_passage_length} tokens, output bias "
                f"{'divided' if p.scale_bias else 'not divided'} by k, sha256 {p.sha256[:12]}"
                + (f", {_pct(p.unknown_token_share)} of its tokens unknown to the tokenizer"
                   if p.unknown_token_share is not None else ""),
            )
        )
    rows.append(
        (
            "report",
            f"headscope {report.headscope_version}, schema "
            f"{report.schema_version}, created {report.created}",
        )
    )
    return _Table(("fact", "value"), tuple(rows))


def _weights_table(report: Report) -> _Table:
    w = report.weights
    a, r = w.row_norm_all, w.row_norm_real
    rows = [
        ("row norm mean (the paper's statistic)", _num(a.mean), _num(r.mean)),
        ("row norm median", _num(a.median), _num(r.median)),
        ("row norm p99", _num(a.p99), _num(r.p99)),
        ("row norm max", _num(a.max), _num(r.max)),
        ("row norm min", _num(a.min), _num(r.min)),
        ("rows", _num(a.count), _num(r.count)),
        ("output bias mean / std", f"{_num(w.bias_mean)} / {_num(w.bias_std)}", ""),
        ("head LayerNorm weight L2", _num(w.norm_weight_l2), ""),
        (
            "head LayerNorm bias L2",
            _num(w.norm_bias_l2) if w.norm_bias_l2 is not None else "no bias",
            "",
        ),
        ("head dense spectral norm", _num(w.dense_spectral_norm), ""),
    ]
    return _Table(("statistic", "all rows", "real-token rows"), tuple(rows))


# (header, KStats field, formatter), headers from the metric registry. A share band that has
# no column of its own marks the column of the absolute count (_MARK_AS).
_PER_K_COLUMNS: tuple[tuple[str, str, Callable[[float], str]], ...] = tuple(
    (METRIC_REGISTRY[field].column, field,
     _pct if METRIC_REGISTRY[field].unit == "share" else _num)
    for field in ("logit_p01", "logit_p50", "logit_p99", "frac_positive", "active_query",
                  "active_passage", "active_passage_share", "term_weight_mean",
                  "term_weight_max", "share_above_5", "cosine_unrelated", "score_pos",
                  "score_neg", "start_loss")
)
_MARK_AS = {"active_query_share": "active_query"}


def _per_k_table(report: Report) -> _Table:
    rec = report.recommendation
    failed = {v.k: v.failed for v in rec.verdicts} if rec is not None else {}
    column = {field: i + 1 for i, (_, field, _) in enumerate(_PER_K_COLUMNS)}
    rows, marks, highlight = [], [], []
    for s in sorted(report.per_k, key=lambda s: s.k):
        chosen = rec is not None and s.k == rec.k
        cells = [_k(s.k) + (" (recommended)" if chosen else "")]
        cells += [fmt(getattr(s, field)) for _, field, fmt in _PER_K_COLUMNS]
        if s.k in failed:
            cells.append("ok" if not failed[s.k] else "fails " + ", ".join(failed[s.k]))
        else:
            cells.append("–")
        fails = failed.get(s.k, ())
        marks.append(
            tuple(
                sorted({column[_MARK_AS.get(m, m)] for m in fails if _MARK_AS.get(m, m) in column})
            )
        )
        rows.append(tuple(cells))
        highlight.append(chosen)
    headers = ("k",) + tuple(h for h, _, _ in _PER_K_COLUMNS) + ("bands",)
    return _Table(headers, tuple(rows), tuple(marks), tuple(highlight))


def _bands_table(report: Report) -> _Table | None:
    rec = report.recommendation
    if rec is None or not rec.bands:
        return None
    rows = tuple((b.metric, b.describe(), b.provenance) for b in rec.bands)
    return _Table(("statistic", "healthy band", "where the numbers come from"), rows)


def _findings_table(report: Report) -> _Table:
    rows = tuple(
        (f.code, f.severity, f.name, f.message, _num(f.value), _num(f.threshold))
        for f in report.findings
    )
    return _Table(("code", "severity", "name", "message", "value", "threshold"), rows)


def _training_table(runs: Telemetry) -> _Table:
    rows = []
    for name, records in runs.items():
        loss = [float(r["loss"]) for r in records]
        finite = [x for x in loss if math.isfinite(x)]
        bad = sum(
            1 for r in records if r.get("loss_finite") is False or r.get("grad_finite") is False
        )
        last = records[-1]
        rows.append(
            (
                name,
                f"{len(records):,}",
                _num(loss[0]),
                _num(loss[-1]),
                _num(min(finite)) if finite else "n/a",
                _num(float(last["active_query"])),
                _num(float(last["active_passage"])),
                _num(float(last["score_pos"])),
                _num(float(last["score_neg"])),
                f"{bad:,}",
            )
        )
    headers = ("run", "steps", "first loss", "last loss", "lowest loss",
               *(METRIC_REGISTRY[m].column for m in ("active_query", "active_passage",
                                                      "score_pos", "score_neg")),
               "skipped steps")
    return _Table(headers, tuple(rows))


def _read_telemetry(confirm_log: PathLike | Sequence[PathLike] | None) -> Telemetry | None:
    """{run: records} from one telemetry JSONL or several (runs of several files merge)."""
    if confirm_log is None:
        return None
    paths = [confirm_log] if isinstance(confirm_log, str | os.PathLike) else list(confirm_log)
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for name, records in read_telemetry(path).items():
            runs.setdefault(name, []).extend(asdict(r) for r in records)
    return runs


@dataclass
class _Figure:
    name: str  # file stem in a figures folder
    title: str
    make: Callable[[], Any]  # -> matplotlib Figure
    _png: bytes | None = None

    def png(self) -> bytes:
        """The figure as PNG, drawn once (write_report shares it between HTML and Markdown)."""
        if self._png is None:
            buf = io.BytesIO()
            self.make().savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
            self._png = buf.getvalue()
        return self._png


def _figures(report: Report, runs: Telemetry | None) -> list[_Figure]:
    figs = []
    if report.weights.row_norm_histogram is not None:
        figs.append(_Figure("row_norms", "Decoder row norms (real-token rows and the others)",
                            lambda: row_norm_histogram_figure(report)))
    if report.per_k:
        figs.append(
            _Figure("k_grid", "Probe statistics per candidate k", lambda: k_grid_figure(report))
        )
        figs.append(_Figure("logits", "Token logits per candidate k", lambda: logit_figure(report)))
    if runs:
        figs.append(
            _Figure(
                "training",
                "Training telemetry (confirm)",
                lambda: training_figure(
                    runs, title="Short SPLADE training: " + report.model.source
                ),
            )
        )
    return figs


# --------------------------------------------------------------------------------------------
# Markdown


def _md(text: str) -> str:
    """Escape text for a Markdown table cell or paragraph: HTML specials, pipes, newlines."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(table: _Table) -> list[str]:
    lines = [
        "| " + " | ".join(_md(h) for h in table.headers) + " |",
        "|" + "|".join("---" for _ in table.headers) + "|",
    ]
    for i, row in enumerate(table.rows):
        marked = table.marks[i] if table.marks else ()
        chosen = table.highlight[i] if table.highlight else False
        cells = []
        for j, cell in enumerate(row):
            text = _md(cell)
            if j in marked:
                text += " ✗"
            if chosen and j == 0:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report_markdown(
    report: Report,
    figures_dir: PathLike | None = None,
    confirm_log: PathLike | Sequence[PathLike] | None = None,
) -> str:
    """The report as GitHub-flavoured Markdown.

    With `figures_dir`, the figures are written there as PNG (the folder is created if its
    parent exists) and linked as `<folder name>/<figure>.png`: links resolve when the Markdown
    file is saved next to that folder, as `write_report` does. Without it, the document has no
    figures. `confirm_log` is a telemetry JSONL (or several) of `headscope confirm`.
    """
    runs = _read_telemetry(confirm_log)
    return _markdown(report, runs, _figures(report, runs), figures_dir)


def _markdown(
    report: Report, runs: Telemetry | None, figs: list[_Figure], figures_dir: PathLike | None
) -> str:
    out = [f"# headscope report: {_md(report.model.source)}", "", _md(_summary_line(report)), ""]
    out += ["## Model", ""] + _md_table(_model_table(report)) + [""]
    out += ["## Head weights", ""] + _md_table(_weights_table(report)) + [""]

    out += ["## Probe statistics per k", ""]
    if report.per_k:
        out.append(_md(_per_k_note(report)) + " ✗ marks a value outside its healthy band.")
        out += [""] + _md_table(_per_k_table(report)) + [""]
    else:
        out += ["No probe was run (weights-only report), so there are no per-k statistics.", ""]

    out += ["## Findings", ""]
    if report.findings:
        out += _md_table(_findings_table(report)) + [""]
    else:
        out += ["No findings.", ""]

    out += ["## Recommendation", ""]
    rec = report.recommendation
    if rec is None:
        out += ["No recommendation.", ""]
    else:
        passing = ", ".join(_k(k) for k in rec.passing) or "none"
        out += [
            f"**{_md(_decision(report))}** (rule: {_md(rec.rule)}; candidates inside every "
            f"band: {passing})",
            "",
        ]
        out += [f"- {_md(reason)}" for reason in rec.reasons] + [""]
    bands = _bands_table(report)
    if bands is not None:
        out += ["### Bands", ""] + _md_table(bands) + [""]

    if runs:
        out += ["## Training telemetry", ""] + _md_table(_training_table(runs)) + [""]

    if figures_dir is not None and figs:
        folder = Path(figures_dir)
        if not folder.parent.is_dir():
            raise InputError(
                f"Cannot write figures to {folder}: directory {folder.parent} does "
                "not exist; create it or choose another folder."
            )
        folder.mkdir(exist_ok=True)
        out += ["## Figures", ""]
        for f in figs:
            _write_bytes(folder / f"{f.name}.png", f.png())
            out += [f"![{_md(f.title)}]({folder.name}/{f.name}.png)", ""]
    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1320px; padding: 0 1rem; color: #1d2330; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d8dce3; padding-bottom: .2rem; }
h3 { font-size: 1rem; margin-top: 1.4rem; }
.summary { background: #eef4ff; border-left: 4px solid #3b6fd8; padding: .6rem 1rem;
           font-size: 1.05rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .88rem; }
th, td { border: 1px solid #d8dce3; padding: .25rem .5rem; vertical-align: top; }
th { background: #f3f5f8; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.rec td { font-weight: 600; background: #f1f8ee; }
td.fail { background: #fde8e8; color: #9b1c1c; }
table.per-k { font-size: .8rem; }
table.per-k th, table.per-k td { padding: .25rem .35rem; }
table.per-k td:last-child { min-width: 12rem; }
.scroll { overflow-x: auto; }
.sev { display: inline-block; border-radius: 3px; padding: 0 .4rem; font-size: .8rem;
       font-weight: 600; }
.sev-error { background: #fde8e8; color: #9b1c1c; }
.sev-warning { background: #fff4d6; color: #7a5200; }
.sev-info { background: #e6f0ff; color: #1e4fa3; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.rec-box { border: 1px solid #b9d7b0; background: #f6fbf4; padding: .6rem 1rem; }
.rec-k { font-size: 1.3rem; font-weight: 700; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #e3e6eb; }
figcaption { color: #5a6270; font-size: .85rem; }
.note { color: #5a6270; font-size: .88rem; }
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _html_table(
    table: _Table,
    numeric: Sequence[int] = (),
    cell: Callable[[int, str], str] | None = None,
    css: str | None = None,
) -> str:
    """`numeric`: indices of columns aligned right as numbers; `css`: the table's class."""
    attr = f' class="{css}"' if css else ""
    parts = [f'<div class="scroll"><table{attr}>', "<thead><tr>"]
    parts += [f"<th>{_e(h)}</th>" for h in table.headers]
    parts.append("</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        marked = table.marks[i] if table.marks else ()
        chosen = table.highlight[i] if table.highlight else False
        parts.append('<tr class="rec">' if chosen else "<tr>")
        for j, text in enumerate(row):
            classes = []
            if j in numeric:
                classes.append("num")
            if j in marked:
                classes.append("fail")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            body = cell(j, text) if cell is not None else _e(text)
            parts.append(f"<td{attr}>{body}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _finding_cell(j: int, text: str) -> str:
    if j == 0:
        return f"<code>{_e(text)}</code>"
    if j == 1:
        return f'<span class="sev sev-{_e(text)}">{_e(text)}</span>'
    return _e(text)


def report_html(
    report: Report,
    confirm_log: PathLike | Sequence[PathLike] | None = None,
) -> str:
    """The report as one self-contained HTML page (inline CSS, figures as base64 PNG)."""
    runs = _read_telemetry(confirm_log)
    return _html(report, runs, _figures(report, runs))


def _html(report: Report, runs: Telemetry | None, figs: list[_Figure]) -> str:
    source = report.model.source
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>headscope report: {_e(source)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>headscope report: {_e(source)}</h1>",
        f'<p class="note">headscope {_e(report.headscope_version)} · schema '
        f"{report.schema_version} · created {_e(report.created)}</p>",
        f'<p class="summary">{_e(_summary_line(report))}</p>',
        "<h2>Model</h2>",
        _html_table(_model_table(report)),
        "<h2>Head weights</h2>",
        _html_table(_weights_table(report), numeric=(1, 2)),
        "<h2>Probe statistics per k</h2>",
    ]
    if report.per_k:
        out.append(
            f'<p class="note">{_e(_per_k_note(report))} Red cells lie outside their healthy '
            "band; the green row is the recommended one.</p>"
        )
        table = _per_k_table(report)
        out.append(_html_table(table, numeric=range(1, len(table.headers) - 1), css="per-k"))
    else:
        out.append(
            "<p>No probe was run (weights-only report), so there are no per-k statistics.</p>"
        )

    out.append("<h2>Findings</h2>")
    if report.findings:
        findings = _findings_table(report)
        out.append(_html_table(findings, numeric=(4, 5), cell=_finding_cell))
    else:
        out.append("<p>No findings.</p>")

    out.append("<h2>Recommendation</h2>")
    rec = report.recommendation
    if rec is None:
        out.append("<p>No recommendation.</p>")
    else:
        passing = ", ".join(_k(k) for k in rec.passing) or "none"
        out.append('<div class="rec-box">')
        out.append(
            f'<p><span class="rec-k">{_e(_decision(report))}</span> (rule: {_e(rec.rule)}; '
            f"candidates inside every band: {_e(passing)})</p>"
        )
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in rec.reasons) + "</ul>")
        out.append("</div>")
    bands = _bands_table(report)
    if bands is not None:
        out += ["<h3>Bands</h3>", _html_table(bands)]

    if runs:
        table = _training_table(runs)
        out += [
            "<h2>Training telemetry</h2>",
            _html_table(table, numeric=range(1, len(table.headers))),
        ]

    if figs:
        out.append("<h2>Figures</h2>")
        for f in figs:
            data = base64.b64encode(f.png()).decode("ascii")
            out.append(
                f'<figure><img alt="{_e(f.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_e(f.title)}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Files


def write_report(
    report: Report,
    html: PathLike | None = None,
    md: PathLike | None = None,
    confirm_log: PathLike | Sequence[PathLike] | None = None,
) -> tuple[Path, ...]:
    """Write the HTML and/or Markdown document, each through a temp file and a rename.

    The Markdown's figures go to `<md stem>_figures/` next to it. Returns the paths written.
    """
    targets = [Path(p) for p in (html, md) if p is not None]
    if not targets:
        raise InputError("write_report needs a destination: pass html=PATH, md=PATH or both.")
    for path in targets:
        if not path.parent.is_dir():
            raise InputError(
                f"Cannot write report {path}: directory {path.parent} does not "
                "exist; create it or choose another path."
            )
        fileio.check_writable(path)  # before the figures are drawn
    runs = _read_telemetry(confirm_log)
    figs = _figures(report, runs)  # drawn once, shared by both documents
    written = []
    if html is not None:
        written.append(_write_bytes(Path(html), _html(report, runs, figs).encode("utf-8")))
    if md is not None:
        path = Path(md)
        figures = path.parent / f"{path.stem}_figures"
        existed = figures.exists()
        try:
            text = _markdown(report, runs, figs, figures)
            written.append(_write_bytes(path, text.encode("utf-8")))
        except BaseException:
            if not existed:  # a failed or interrupted write leaves no figures folder behind
                shutil.rmtree(figures, ignore_errors=True)
            raise
    return tuple(written)


def write_report_documents(report_path: PathLike, *, html: PathLike | None = None,
                           md: PathLike | None = None,
                           confirm_log: Sequence[PathLike] = ()) -> tuple[Path, ...]:
    """Render a JSON report saved by `inspect --json` as a self-contained HTML and/or Markdown
    document (`headscope report`); read without torch."""
    from headscope.report import read_json

    if not html and not md:
        raise InputError("Pass --html OUT.html and/or --md OUT.md to say what to write.")
    return write_report(read_json(report_path), html=html, md=md,
                        confirm_log=list(confirm_log) or None)


def _write_bytes(path: Path, data: bytes) -> Path:
    return fileio.write_bytes(path, data)  # temp file, fsync, rename; the user's umask


__all__ = ["report_html", "report_markdown", "write_report", "write_report_documents"]
