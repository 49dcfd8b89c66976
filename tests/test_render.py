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
    from headscope.recommend import RULE_EVIDENCE

    report = six_k_report()
    report = replace(report, recommendation=replace(report.recommendation, rule=rule))
    out = " ".join(ln.strip(" │") for ln in text(render.report_view(report)).splitlines())
    assert RULE_EVIDENCE[rule].startswith("How sure: ")
    assert " ".join(RULE_EVIDENCE[rule].split()) in " ".join(out.split())


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
