"""Rich renderings for people. Every function takes a result record and returns a renderable;
nothing here computes statistics or prints (the CLI prints)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from headscope.recommend import Recommendation, decision_text
from headscope.report import Report

# Short band names for the per-k table's last column (the reasons spell them out).
_SHORT = {"active_passage_share": "active", "cosine_unrelated": "cos", "share_above_5": ">5",
          "start_loss": "loss", "term_weight_mean": "weight", "score_pos": "score"}
_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def num(x: float | None, digits: int = 3) -> str:
    """Compact number: 3 significant digits, thousands separators for big counts."""
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax == 0:
        return "0"
    if ax < 1e-3:
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def k_label(k: float) -> str:
    return f"{k:g}"


def _model_lines(report: Report) -> Table:
    m, w = report.model, report.weights
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("model", m.source + (f" @ {m.revision[:12]}" if m.revision else ""))
    t.add_row("family", f"{m.family} ({m.architecture}, model_type {m.model_type})")
    tok = f", tokenizer {m.n_tokenizer:,}" if m.n_tokenizer is not None else ", no tokenizer"
    t.add_row("vocabulary", f"{m.n_rows:,} head rows{tok}, hidden {m.hidden_size}")
    t.add_row("decoder", "tied to the input embeddings" if m.tied else "untied (own weight)")
    t.add_row("dtype / device", f"{m.dtype} / {m.device}" + (" (weights only)" if m.weights_only
                                                           else ""))
    t.add_row("row norm (paper)", f"mean {num(w.row_norm_all.mean)} over all {w.n_rows:,} rows; "
              f"{num(w.row_norm_real.mean)} over {w.n_real_rows:,} real-token rows")
    return t


def weights_table(report: Report) -> Table:
    w = report.weights
    t = Table(title="Head weights", title_justify="left")
    for col in ("statistic", "all rows", "real-token rows"):
        t.add_column(col, justify="right" if col != "statistic" else "left")
    for label, attr in (("row norm mean", "mean"), ("row norm median", "median"),
                        ("row norm p99", "p99"), ("row norm max", "max")):
        t.add_row(label, num(getattr(w.row_norm_all, attr)), num(getattr(w.row_norm_real, attr)))
    t.add_row("bias mean / std", f"{num(w.bias_mean)} / {num(w.bias_std)}", "")
    t.add_row("LayerNorm weight L2", num(w.norm_weight_l2), "")
    t.add_row("LayerNorm bias L2", num(w.norm_bias_l2) if w.norm_bias_l2 is not None
              else "no bias", "")
    t.add_row("dense spectral norm", num(w.dense_spectral_norm), "")
    return t


def per_k_table(report: Report) -> Table:
    rec = report.recommendation
    failed = {v.k: v.failed for v in rec.verdicts} if rec else {}
    t = Table(title=f"Probe statistics per k ({_divided(report)})" + (
        f"; bold: the recommendation, {decision_text(rec, has_bias=_has_bias(report), short=True)}"
        if rec else ""), title_justify="left")
    cols = ("k", "logit p50", "pos. logits", "active q", "active p", "weight mean",
            "weight max", ">5", "cos unrel.", "score +", "start loss", "bands")
    for c in cols:
        t.add_column(c, justify="right")
    for s in report.per_k:
        fails = failed.get(s.k, ())
        verdict = Text("ok", style="green") if not fails else Text(
            "x " + ",".join(_SHORT.get(f, f) for f in fails), style="red")
        style = "bold" if rec and s.k == rec.k else None
        t.add_row(k_label(s.k), num(s.logit_p50), f"{s.frac_positive:.1%}",
                  num(s.active_query), num(s.active_passage), num(s.term_weight_mean),
                  num(s.term_weight_max), f"{s.share_above_5:.1%}", num(s.cosine_unrelated),
                  num(s.score_pos), num(s.start_loss), verdict, style=style)
    return t


def _has_bias(report: Report) -> bool:
    return report.weights.bias_mean is not None


def _divided(report: Report) -> str:
    """What the per-k statistics divide: the projection, and the output bias or not."""
    if not _has_bias(report):
        return "projection divided by k; no output bias"
    if report.probe and report.probe.scale_bias:
        return "projection and output bias divided by k"
    return "projection divided by k, output bias kept"


def findings_view(report: Report) -> Group | Text:
    if not report.findings:
        return Text("No findings.", style="green")
    lines = []
    for f in report.findings:
        line = Text()
        line.append(f"{f.code} {f.severity:<7}", style=_SEVERITY_STYLE.get(f.severity, ""))
        line.append(f" {f.name}: {f.message}")
        lines.append(line)
    return Group(Text("Findings", style="bold"), *lines)


def recommendation_view(rec: Recommendation | None, has_bias: bool = True) -> Panel | Text:
    """The recommendation's headline names k and the bias setting together (one decision)."""
    if rec is None:
        return Text("No recommendation.")
    body = Text()
    body.append(decision_text(rec, has_bias=has_bias), style="bold")
    body.append(f"  (rule: {rec.rule})\n")
    for r in rec.reasons:
        body.append(f"- {r}\n")
    body.rstrip()  # in place
    return Panel(body, title="Recommendation", title_align="left")


def report_view(report: Report) -> Group:
    parts: list[RenderableType] = [_model_lines(report), weights_table(report)]
    if report.per_k:
        parts.append(per_k_table(report))
        if report.probe:
            p = report.probe
            parts.append(Text(
                f"probe: {p.version} ({p.n_pairs} pairs, batch {p.batch_size}, max length "
                f"{p.max_query_length}/{p.max_passage_length}, bias "
                f"{'divided' if p.scale_bias else 'not divided'} by k; sha256 {p.sha256[:12]}"
                + (f"; {p.unknown_token_share:.1%} of its tokens unknown to the tokenizer"
                   if p.unknown_token_share is not None else "") + ")",
                style="dim"))
    parts += [findings_view(report),
              recommendation_view(report.recommendation, _has_bias(report))]
    return Group(*parts)


def compare_table(reports: Sequence[Report], labels: Sequence[str], at_k: float = 1.0) -> Table:
    """Key statistics of several reports side by side, at k (default 1: as shipped)."""
    from headscope.report import key_statistics

    t = Table(title=f"Side by side (probe statistics at k = {k_label(at_k)})",
              title_justify="left")
    t.add_column("statistic")
    for label in labels:
        t.add_column(label, justify="right")
    rows = [key_statistics(r, at_k) for r in reports]

    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    decisions = {id(row): "-" if r.recommendation is None else decision_text(
        r.recommendation, has_bias=_has_bias(r), short=True) for r, row in zip(
        reports, rows, strict=True)}

    def rec(row):
        return decisions[id(row)]

    lines = [
        ("decoder row norm (mean, all rows)", lambda r: num(r["row_norm_mean"])),
        ("output bias mean", lambda r: num(r["bias_mean"])),
        ("logit median", lambda r: num(r["logit_p50"])),
        ("positive logits", lambda r: pct(r["frac_positive"])),
        ("active terms / query", lambda r: num(r["active_query"])),
        ("active terms / passage", lambda r: num(r["active_passage"])),
        ("cosine, unrelated passages", lambda r: num(r["cosine_unrelated"])),
        ("q.d score (positive pair)", lambda r: num(r["score_pos"])),
        ("start loss (in-batch)", lambda r: num(r["start_loss"])),
        ("recommendation", rec),
        ("findings (warning+)", lambda r: ", ".join(r["warnings"]) or "none"),
    ]
    for label, get in lines:
        t.add_row(label, *(get(r) for r in rows))
    return t


def check_view(result, report: Report) -> Group:
    """The guard's verdict: one row per rule, then PASS or FAIL."""
    t = Table(title=f"headscope check: {report.model.source} (policy: {result.policy.source})",
              title_justify="left")
    for c in ("rule", "threshold", "measured", "verdict"):
        t.add_column(c, justify="left" if c == "rule" else "right")
    for r in result.rules:
        verdict = Text("pass", style="green") if r.passed else Text("FAIL", style="bold red")
        t.add_row(r.name, _cell(r.threshold), _cell(r.measured), verdict)
    summary = Text("PASS" if result.passed else "FAIL",
                   style="bold green" if result.passed else "bold red")
    failed = [Text(f"- {r.message}") for r in result.rules if not r.passed]
    return Group(t, summary, *failed)


def _cell(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return num(v)
    if isinstance(v, (tuple, list)):
        return ", ".join(map(str, v))
    return "-" if v is None else str(v)


def fix_view(outcome) -> Group:
    """What `fix` wrote (or would write), the factor and how the output verified."""
    r, v = outcome.result, outcome.result.verification
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("source", outcome.source)
    t.add_row("k", f"{k_label(outcome.k)} ({outcome.k_from})")
    t.add_row("strategy", f"{r.spec.strategy}; output bias "
              f"{'divided' if r.spec.scale_bias else 'not divided'} by k")
    t.add_row("output", f"{r.out}" + (" (dry run: nothing written)" if r.dry_run else ""))
    t.add_row("decoder", "tied to the input embeddings" if r.tied else "untied (own weight)")
    t.add_row("files", ", ".join(r.files))
    t.add_row("verified", f"against {v.against}: {v.n_texts} texts, max |logit error| "
              f"{num(v.max_abs_logit_error)} (tolerance {num(v.logit_tolerance)}), hidden-state "
              f"drift {num(v.hidden_drift)}, {v.tensors_identical} tensors bit-identical, "
              f"changed: {', '.join(v.tensors_changed) or 'none'}")
    before = next((s for s in outcome.report.per_k if s.k == 1.0), None)
    after = next((s for s in outcome.report.per_k if s.k == outcome.k), None)
    parts: list = [t]
    if before and after:
        c = Table(title="Probe statistics, before and after", title_justify="left")
        for col in ("statistic", "before (k = 1)", f"after (k = {k_label(outcome.k)})"):
            c.add_column(col, justify="left" if col == "statistic" else "right")
        for label, attr in (("mean term weight", "term_weight_mean"),
                            ("max term weight", "term_weight_max"),
                            ("active terms / passage", "active_passage"),
                            ("cosine, unrelated", "cosine_unrelated"),
                            ("q.d score (positive)", "score_pos"),
                            ("start loss", "start_loss")):
            c.add_row(label, num(getattr(before, attr)), num(getattr(after, attr)))
        parts.append(c)
    return Group(*parts)


def demo_view(outcome) -> Group:
    """The demo: the simulation's label, the two models side by side, both recommendations."""
    sim = outcome.simulation
    note = Text(
        f"{sim.label}\nShift {num(sim.shift)}: median token logit {num(sim.median_before)} -> "
        f"{num(sim.median_after)}; positive logits {sim.frac_positive_before:.1%} -> "
        f"{sim.frac_positive_after:.1%}; active terms per text {num(sim.active_before)} -> "
        f"{num(sim.active_after)} of {sim.vocab_size:,}.", style="yellow")
    parts: list = [Panel(note, title="Simulated large-head regime (not a real checkpoint)",
                         title_align="left"),
                   compare_table(outcome.reports, outcome.labels)]
    for label, rep in zip(outcome.labels, outcome.reports, strict=True):
        parts.append(Text(label, style="bold"))
        parts.append(per_k_table(rep))
        parts.append(recommendation_view(rep.recommendation, _has_bias(rep)))
    if outcome.training is not None:
        parts.append(Text("Trained side by side: the simulation as is, and fixed as recommended",
                          style="bold"))
        parts.append(training_view(outcome.training))
    return Group(*parts)


_STATUS_STYLE = {"stable": "green", "degraded": "yellow", "collapsed": "bold red"}


def training_view(outcome) -> Group:
    """confirm / sweep: one row per arm with its verdict, then the evidence."""
    o = outcome.config
    title = (f"{outcome.source}: {o.steps} steps x batch {o.batch_size} on {outcome.data} "
             f"(seed {o.seed})")
    t = Table(title=title, title_justify="left")
    for c in ("arm", "model", "start loss", "end loss", "max grad", "active q", "active p",
              "nDCG@10", "MRR@10", "R@100", "verdict"):
        t.add_column(c, justify="left" if c in ("arm", "model") else "right")
    for a in outcome.arms:
        t.add_row(a.name, a.description, num(a.start_loss), num(a.end_loss),
                  num(a.max_grad_norm), num(a.active_query_end), num(a.active_passage_end),
                  num(a.ndcg_at_10), num(a.mrr_at_10), num(a.recall_at_100),
                  Text(a.status, style=_STATUS_STYLE.get(a.status, "")))
    parts: list = []
    if outcome.simulation:
        parts.append(Text(outcome.simulation, style="yellow"))
    parts.append(t)
    for a in outcome.arms:
        for e in a.evidence:
            parts.append(Text(f"- {a.name}: {e}"))
        if a.truncated_queries or a.truncated_passages:
            parts.append(Text(f"- {a.name}: evaluated on the largest weights only for "
                              f"{a.truncated_queries} queries and {a.truncated_passages} passages "
                              "(too many active terms): its metrics are approximate.",
                              style="dim"))
    for label, path in (("telemetry", outcome.log), ("figure", outcome.figure)):
        if path:
            parts.append(Text(f"{label}: {path}", style="dim"))
    return Group(*parts)
