"""The CLI's rich renderings: the recommendation is shown as one decision (k and the bias)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.console import Console
from test_plots import six_k_report

from headscope import render


def text(renderable) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.usefixtures("bands_default")
def test_cli_headline_and_per_k_title_name_k_and_the_bias():
    report = six_k_report()
    rec = report.recommendation
    out = text(render.report_view(report))
    assert ("Probe statistics per k (projection divided by k, output bias kept); bold: the "
            "recommendation, k = 16, bias kept") in out
    panel = [ln for ln in out.splitlines() if "(rule: bands)" in ln]
    assert [ln.strip(" │") for ln in panel] == [
        "k = 16: projection divided by 16, output bias kept (fix --no-scale-bias)  (rule: bands)"]

    divided = replace(report, recommendation=replace(rec, scale_bias=True),
                      probe=replace(report.probe, scale_bias=True))
    out = text(render.report_view(divided))
    assert ("Probe statistics per k (projection and output bias divided by k); bold: the "
            "recommendation, k = 16, bias divided") in out
    assert "k = 16: projection and output bias divided by 16 (fix --scale-bias)  (rule: bands)" \
        in out


@pytest.mark.parametrize("rule", ["bands", "paper", "reference"])
def test_every_recommendation_says_how_sure_it_is(rule):
    """The sentence under each rule's recommendation; the bands' and the paper's carry the
    counts the package ships from its calibration (read here from the data file itself)."""
    import json

    from headscope import calibrated
    from headscope.recommend import how_sure

    report = six_k_report()
    report = replace(report, recommendation=replace(report.recommendation, rule=rule))
    out = " ".join(ln.strip(" │") for ln in text(render.report_view(report)).splitlines())
    said = how_sure(rule)
    assert said.startswith("How sure: ")
    assert " ".join(said.split()) in " ".join(out.split())
    counts = json.loads(calibrated.DATA_FILE.read_text())["counts"]
    bands, paper = counts["bands (shipped)"], counts["paper"]
    expected = (f"the bands' k landed among the arms that trained as well as the best "
                f"{bands['in'][0]} of {bands['in'][1]} in domain, {bands['out'][0]} of "
                f"{bands['out'][1]} out of domain; the paper's rule {paper['in'][0]} of "
                f"{paper['in'][1]} in domain, {paper['out'][0]} of {paper['out'][1]} out of "
                "domain")
    assert (expected in said) == (rule in ("bands", "paper"))


def test_compare_table_shows_the_whole_decision():
    report = six_k_report()
    divided = replace(report, recommendation=replace(report.recommendation, scale_bias=True))
    out = text(render.compare_table([report, divided], ["kept", "divided"]))
    (row,) = [ln for ln in out.splitlines() if "recommendation" in ln]
    assert 0 < row.index("k = 16, bias kept") < row.index("k = 16, bias divided")


def test_probe_line_reports_the_unknown_token_share():
    from headscope import export

    report = six_k_report()
    report = replace(report, probe=replace(report.probe, unknown_token_share=0.8824))
    assert "88.2% of its tokens unknown to the tokenizer)" in text(render.report_view(report))
    assert ", 88.2% of its tokens unknown to the tokenizer" in export.report_markdown(report)


# --------------------------------------------------------------------------------------------
# The demo teaches: why scale matters, what a healthy model's k is, what to run next


def _one_line(renderable) -> str:
    return " ".join(text(renderable).split())


def test_the_healthy_models_k_is_said_to_be_small_and_uncertain():
    from headscope.api.demonstration import TrainedEvidence
    from headscope.findings import Finding

    evidence = TrainedEvidence()
    base = six_k_report()
    healthy = replace(base, findings=(), recommendation=replace(
        base.recommendation, k=evidence.k, scale_bias=False))
    assert _one_line(render.healthy_note(healthy, evidence)) == (
        "No finding says this head is too large: k = 4 is a small and uncertain adjustment the "
        "bands suggest, not a repair. Trained (docs/calibration.md, 3 seeds x 50 steps): k = 4 "
        "beat k = 1 by 0.012 MRR@10 in domain (95% interval +0.004 to +0.022), and out of domain "
        "the two were tied (0.931 at k = 1, 0.927 at k = 4; interval -0.002 to +0.010).")
    # another k: no training evidence to quote, the size is still said
    at8 = replace(healthy, recommendation=replace(healthy.recommendation, k=8.0))
    assert _one_line(render.healthy_note(at8, evidence)) == (
        "No finding says this head is too large: k = 8 is a small and uncertain adjustment the "
        "bands suggest, not a repair.")
    # a head with a warning, or one that needs no rescale: nothing to soften
    warned = replace(healthy, findings=(Finding("HS101", "large-head-scale", "warning", "m",
                                                2.5, 1.5),))
    assert render.healthy_note(warned, evidence) is None
    at1 = replace(healthy, recommendation=replace(healthy.recommendation, k=1.0))
    assert render.healthy_note(at1, evidence) is None


def test_the_demos_trained_evidence_is_the_calibration_pages():
    """The numbers the demo quotes for the real BERT-tiny are docs/calibration.md's."""
    from pathlib import Path

    from headscope.api.demonstration import TrainedEvidence

    e = TrainedEvidence()
    page = " ".join((Path(__file__).resolve().parent.parent / "docs" / "calibration.md")
                    .read_text().split())
    lo, hi = e.gain_in_domain_interval
    assert f"best − k=1 +{e.gain_in_domain:.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]" in page
    olo, ohi = e.diff_out_of_domain_interval
    assert (f"k = 1 and k = {e.k:g} are tied ({e.mrr_k1_out_of_domain:.3f} vs "
            f"{e.mrr_k_out_of_domain:.3f}, [{olo:+.3f}, {ohi:+.3f}])") in page
    assert "real BERT-tiny 1 → 4" in page


def test_demo_next_steps_put_headscope_on_path_and_name_a_local_model_first():
    out = text(render.demo_next_steps("/cache/bert-tiny-splade", ". .venv/bin/activate"))
    lines = [ln.rstrip() for ln in out.splitlines()]
    assert lines[:4] == [
        "Next:",
        "  . .venv/bin/activate    puts headscope on your PATH (it is installed there)",
        "Try it first on the demo's real model, a local folder:",
        "  headscope inspect /cache/bert-tiny-splade"]
    assert lines[4] == "Then on your own model (a local folder or a Hub id in your cache):"
    bare = text(render.demo_next_steps()).splitlines()
    assert bare[1] == "On your own model (a local folder or a Hub id in your cache):"


def test_activation_command_only_when_the_virtualenv_is_not_active(monkeypatch, tmp_path):
    import sys

    venv = tmp_path / ".venv"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    assert render.activation_command() == ". .venv/bin/activate"
    monkeypatch.setenv("VIRTUAL_ENV", str(venv))  # already active: headscope is on PATH
    assert render.activation_command() is None
    monkeypatch.delenv("VIRTUAL_ENV")
    elsewhere = tmp_path / "elsewhere"  # the virtualenv is not below it: its absolute path
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert render.activation_command() == f". {venv}/bin/activate"
    monkeypatch.setattr(sys, "prefix", "/usr")  # no virtualenv at all
    assert render.activation_command() is None
