"""Rich renderings for people. Every function takes a result record and returns a renderable;
nothing here computes statistics or prints (the CLI prints)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from headscope.calibrated import ModelEvidence, model_sentences
from headscope.findings import FINDING_CODES
from headscope.recommend import Recommendation, decision_text, how_sure
from headscope.report import Report
from headscope.stats import BAND_ABBREV, METRIC_REGISTRY, k_text, number, percent

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def num(x: float | None, digits: int = 3) -> str:
    """Compact number for the terminal: `stats.number` with 3 significant digits; '-' for None."""
    return "-" if x is None else number(x, digits)


k_label = k_text  # a candidate k as typed


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


def duration(seconds: float) -> str:
    """A short duration: 42 s, 3 min 05 s, 1 h 02 min."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressLines:
    """Progress as plain lines, for a stderr that is not a terminal (a log, CI, a pipe).

    Fed the library's (phase, done, total) callbacks with the time, `update` returns the line to
    print, or None. A phase says nothing for its first `quiet_s` seconds (so a quick phase, or a
    refusal right after loading, leaves stderr to the one error line); after that, a line at
    most every `every_s` seconds or per `step` of the total, whichever comes first, and one
    when it ends. Each line has the elapsed time and an estimate of the time left (elapsed /
    done x left: phases here advance at a steady rate per item).
    """

    def __init__(self, every_s: float = 5.0, step: float = 0.1, quiet_s: float = 2.0) -> None:
        self.every_s = every_s
        self.step = step
        self.quiet_s = quiet_s
        self._start: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._mark: dict[str, int] = {}  # steps of the total already reported
        self._printed: set[str] = set()
        self._ended: set[str] = set()

    def update(self, phase: str, done: int, total: int, now: float) -> str | None:
        steps = round(1 / self.step)
        if phase not in self._start or (phase in self._ended and done < total):
            # new, or run again (fix probes before and after): start over
            self._start[phase], self._last[phase] = now, now
            self._printed.discard(phase)
            self._mark[phase] = done * steps // total if total > 0 else 0
            self._ended.discard(phase)
        if phase in self._ended:
            return None
        elapsed = now - self._start[phase]
        if total <= 0 or done >= total:
            self._ended.add(phase)
            return f"{phase}: done in {duration(elapsed)}" if phase in self._printed else None
        if elapsed < self.quiet_s:
            return None
        mark = done * steps // total  # whole steps done, in integers
        if (phase in self._printed and mark <= self._mark[phase]
                and now - self._last[phase] < self.every_s):
            return None
        self._mark[phase], self._last[phase] = max(mark, self._mark[phase]), now
        self._printed.add(phase)
        line = f"{phase}: {done}/{total} ({done / total:.0%}), {duration(elapsed)} elapsed"
        if done > 0:
            line += f", about {duration(elapsed / done * (total - done))} left"
        return line


# The per-k table's statistic columns, between k and the band verdict.
_PER_K_METRICS = ("logit_p50", "frac_positive", "active_query", "active_passage",
                  "term_weight_mean", "term_weight_max", "share_above_5", "cosine_unrelated",
                  "score_pos", "start_loss")


def per_k_table(report: Report) -> Table:
    rec = report.recommendation
    failed = {v.k: v.failed for v in rec.verdicts} if rec else {}
    t = Table(title=f"Probe statistics per k ({_divided(report)})" + (
        f"; bold: the recommendation, {decision_text(rec, has_bias=_has_bias(report), short=True)}"
        if rec else ""), title_justify="left")
    cols = ("k", *(METRIC_REGISTRY[m].short for m in _PER_K_METRICS), "bands")
    for c in cols:
        t.add_column(c, justify="right")
    for s in report.per_k:
        fails = failed.get(s.k, ())
        verdict = Text("ok", style="green") if not fails else Text(
            "x " + ",".join(BAND_ABBREV.get(f, f) for f in fails), style="red")
        style = "bold" if rec and s.k == rec.k else None
        # "~": estimated from the token sample (exact at the counted k; docs/report.md)
        pos = percent(s.frac_positive) if s.frac_positive_exact else f"~{percent(s.frac_positive)}"
        t.add_row(k_label(s.k), num(s.logit_p50), pos,
                  num(s.active_query), num(s.active_passage), num(s.term_weight_mean),
                  num(s.term_weight_max), percent(s.share_above_5), num(s.cosine_unrelated),
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


def recommendation_view(rec: Recommendation | None, has_bias: bool = True,
                        evidence: ModelEvidence | None = None) -> Panel | Text:
    """The recommendation's headline names k and the bias setting together (one decision), its
    reasons, how sure it is, and, for a checkpoint that is a calibration condition, what its
    own grid measured."""
    if rec is None:
        if evidence is None:
            return Text("No recommendation.")
        return Text("\n".join(["No recommendation.", *model_sentences(evidence, None, False)]))
    body = Text()
    body.append(decision_text(rec, has_bias=has_bias), style="bold")
    body.append(f"  (rule: {rec.rule})\n")
    for r in rec.reasons:
        body.append(f"- {r}\n")
    body.append(how_sure(rec.rule) + "\n", style="italic")
    if evidence is not None:
        for line in model_sentences(evidence, rec.k, rec.scale_bias):
            body.append(f"- {line}\n")
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
                + (f"; {percent(p.unknown_token_share)} of its tokens unknown to the tokenizer"
                   if p.unknown_token_share is not None else "") + ")",
                style="dim"))
    parts += [findings_view(report),
              recommendation_view(report.recommendation, _has_bias(report),
                                  report.evidence)]
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
        return "-" if x is None else percent(x)

    decisions = {id(row): "-" if r.recommendation is None else decision_text(
        r.recommendation, has_bias=_has_bias(r), short=True) for r, row in zip(
        reports, rows, strict=True)}

    def rec(row):
        return decisions[id(row)]

    lines = [
        ("decoder row norm (mean, all rows)", lambda r: num(r["row_norm_mean"])),
        ("output bias mean", lambda r: num(r["bias_mean"])),
        *((METRIC_REGISTRY[m].label,
           lambda r, m=m: (pct if METRIC_REGISTRY[m].unit == "share" else num)(r[m]))
          for m in ("logit_p50", "frac_positive", "active_query", "active_passage",
                    "cosine_unrelated", "score_pos", "start_loss")),
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
              f"changed: {', '.join(outcome.changed_tensors) or 'none'}"
              + (f"; written separately, values unchanged: {', '.join(outcome.new_tensors)}"
                 if outcome.new_tensors else ""))
    before = next((s for s in outcome.report.per_k if s.k == 1.0), None)
    after = next((s for s in outcome.report.per_k if s.k == outcome.k), None)
    parts: list = [t]
    if before and after:
        c = Table(title="Probe statistics, before and after", title_justify="left")
        for col in ("statistic", "before (k = 1)", f"after (k = {k_label(outcome.k)})"):
            c.add_column(col, justify="left" if col == "statistic" else "right")
        for attr in ("term_weight_mean", "term_weight_max", "active_passage",
                     "cosine_unrelated", "score_pos", "start_loss"):
            c.add_row(METRIC_REGISTRY[attr].label, num(getattr(before, attr)),
                      num(getattr(after, attr)))
        parts.append(c)
    return Group(*parts)


def finding_legend(reports: Sequence[Report]) -> Text | None:
    """One line per warning-or-worse finding code listed for `reports`: the code and its gist."""
    codes = sorted({f.code for r in reports for f in r.findings if f.severity != "info"})
    if not codes:
        return None
    gists = {code: FINDING_CODES[code].gist if code in FINDING_CODES else "see docs/findings.md"
             for code in codes}
    lines = [f"{code}  {gist}" for code, gist in gists.items()]
    return Text("Findings: " + "\n          ".join(lines) + "\n(details: docs/findings.md, or "
                "headscope inspect MODEL for the full messages)", style="dim")


# What the demo says first: why a head's scale matters, and what k does.
DEMO_WHY = (
    "Why the head's scale matters: SPLADE turns the MLM head's logits into term weights, "
    "log(1 + relu(logit)), and scores a query against a passage by their dot product, so a head "
    "on a large scale makes most of the vocabulary active with large weights, and contrastive "
    "training starts from huge scores and losses and degrades or collapses.",
    "What k does: dividing the head's projection by k before training shrinks its logits, so "
    "that active terms, weights and scores start on the scale SPLADE trains well from; "
    "headscope measures the head and recommends k.",
)


def activation_command() -> str | None:
    """`. .venv/bin/activate` (the running virtualenv's activate script, relative to the
    working directory when it lies below it) when headscope runs from a virtualenv that is not
    active, so that `headscope` is not on PATH; None otherwise."""
    import os
    import sys
    from pathlib import Path

    prefix = Path(sys.prefix)
    active = os.environ.get("VIRTUAL_ENV")
    if sys.prefix == sys.base_prefix or (active and Path(active).resolve() == prefix.resolve()):
        return None
    script = prefix / ("Scripts" if os.name == "nt" else "bin") / "activate"
    try:
        shown = script.relative_to(Path.cwd())
    except ValueError:
        shown = script
    return f". {shown}"


def demo_next_steps(model_path: str = "", activate: str | None = None) -> Text:
    """The commands to run after the demo: first how to put `headscope` on PATH (`activate`,
    when it is not), then the demo's own real model (`model_path`, a local folder), then yours."""
    lines = ["Next:"]
    if activate:
        lines.append(f"  {activate}    puts headscope on your PATH (it is installed there)")
    if model_path:
        lines += ["Try it first on the demo's real model, a local folder:",
                  f"  headscope inspect {model_path}"]
    lines += [
        f"{'Then on' if model_path else 'On'} your own model (a local folder or a Hub id in "
        "your cache):",
        "  headscope inspect MODEL                 measure its head and recommend k",
        "  headscope fix MODEL --out ./fixed       write the rescaled checkpoint (nothing when "
        "k = 1)",
        "  headscope confirm MODEL --k K           train original and fixed side by side "
        "(minutes)",
        "  headscope demo --confirm                train this simulation as is and fixed",
        "Every command and flag: headscope COMMAND --help, or docs/cli.md."]
    return Text("\n".join(lines))


def healthy_note(report: Report, evidence) -> Text | None:
    """For a model with no warning findings whose recommended k is above 1: what that k is
    (small, and as certain as `evidence`, the trained comparison, says), so that "rescale"
    beside "findings: none" is not read as a repair. None for any other report."""
    rec = report.recommendation
    if rec is None or rec.k == 1 or any(f.severity != "info" for f in report.findings):
        return None
    k = k_text(rec.k)
    text = (f"No finding says this head is too large: k = {k} is a small and uncertain "
            "adjustment the bands suggest, not a repair.")
    if evidence is not None and rec.k == evidence.k and not rec.scale_bias:
        lo, hi = evidence.gain_in_domain_interval
        olo, ohi = evidence.diff_out_of_domain_interval
        text += (f" Trained (docs/calibration.md, 3 seeds x 50 steps): k = {k} beat k = 1 by "
                 f"{evidence.gain_in_domain:.3f} MRR@10 in domain (95% interval {lo:+.3f} to "
                 f"{hi:+.3f}), and out of domain the two were tied "
                 f"({evidence.mrr_k1_out_of_domain:.3f} at k = 1, "
                 f"{evidence.mrr_k_out_of_domain:.3f} at k = {k}; interval {olo:+.3f} to "
                 f"{ohi:+.3f}).")
    return Text(text, style="cyan")


def demo_view(outcome) -> Group:
    """The demo: why scale matters and what k does, the simulation's label, the two models side
    by side, both recommendations (the healthy one said for what it is), what to run next."""
    sim = outcome.simulation
    note = Text(
        f"{sim.label}\nShift {num(sim.shift)}: median token logit {num(sim.median_before)} -> "
        f"{num(sim.median_after)}; positive logits {percent(sim.frac_positive_before)} -> "
        f"{percent(sim.frac_positive_after)}; active terms per text {num(sim.active_before)} -> "
        f"{num(sim.active_after)} of {sim.vocab_size:,}.\nMeasured on the {sim.n_texts} probe "
        "passages the shift was calibrated on; the table below counts the tokens of the probe's "
        "queries too, so its median and share of positive logits differ.", style="yellow")
    parts: list = [Text("\n".join(DEMO_WHY)),
                   Panel(note, title="Simulated large-head regime (not a real checkpoint)",
                         title_align="left"),
                   compare_table(outcome.reports, outcome.labels)]
    legend = finding_legend(outcome.reports)
    if legend is not None:
        parts.append(legend)
    for label, rep in zip(outcome.labels, outcome.reports, strict=True):
        parts.append(Text(label, style="bold"))
        parts.append(per_k_table(rep))
        parts.append(recommendation_view(rep.recommendation, _has_bias(rep), rep.evidence))
        healthy = healthy_note(rep, outcome.evidence)
        if healthy is not None:
            parts.append(healthy)
    if outcome.training is not None:
        parts.append(Text("Trained side by side: the simulation as is, and fixed as recommended",
                          style="bold"))
        parts.append(training_view(outcome.training))
    parts.append(demo_next_steps(outcome.model_path, activation_command()))
    return Group(*parts)


_STATUS_STYLE = {"stable": "green", "degraded": "yellow", "collapsed": "bold red",
                 "too short": "dim"}
_STATUS_TEXT = {"too short": "too short to judge"}


def training_view(outcome) -> Group:
    """confirm / sweep: one row per arm with its verdict, then the evidence."""
    o = outcome.config
    title = (f"{outcome.source}: {o.steps} steps x batch {o.batch_size} on {outcome.data} "
             f"(seed {o.seed})"
             + (f", evaluated on {outcome.eval_data}" if outcome.eval_data else ""))
    t = Table(title=title, title_justify="left")
    for c in ("arm", "model", "start loss", "end loss", "max grad", "active q", "active p",
              "nDCG@10", "MRR@10", "R@100", "verdict"):
        t.add_column(c, justify="left" if c in ("arm", "model") else "right")
    for a in outcome.arms:
        t.add_row(a.name, a.description, num(a.start_loss), num(a.end_loss),
                  num(a.max_grad_norm), num(a.active_query_end), num(a.active_passage_end),
                  num(a.ndcg_at_10), num(a.mrr_at_10), num(a.recall_at_100),
                  Text(_STATUS_TEXT.get(a.status, a.status),
                       style=_STATUS_STYLE.get(a.status, "")))
    parts: list = []
    if outcome.simulation:
        parts.append(Text(outcome.simulation, style="yellow"))
    parts.append(t)
    for a in outcome.arms:
        for e in a.evidence:
            parts.append(Text(f"- {a.name}: {e}"))
        if a.zero_shot_mrr_at_10 is not None and a.mrr_at_10 is not None:
            parts.append(Text(f"- {a.name}: MRR@10 {a.zero_shot_mrr_at_10:.3f} zero-shot "
                              f"(step 0), {a.mrr_at_10:.3f} trained.", style="dim"))
        if (a.truncated_queries or a.truncated_passages) and a.serving_mrr_at_10 is not None:
            parts.append(Text(f"- {a.name}: MRR@10 pruned to {a.serving_terms} terms (serving): "
                              f"{a.serving_mrr_at_10:.3f} ({a.truncated_queries} queries and "
                              f"{a.truncated_passages} passages pruned); the table's metrics are "
                              "exact, over all terms.", style="dim"))
    for label, path in (("telemetry", outcome.log), ("figure", outcome.figure)):
        if path:
            parts.append(Text(f"{label}: {path}", style="dim"))
    return Group(*parts)
