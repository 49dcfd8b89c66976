"""export: the HTML and Markdown documents hold the report's numbers, escape its text, embed
their figures, reference nothing outside themselves, and are written atomically."""

from __future__ import annotations

import base64
import errno
import os
import re
import shutil
import subprocess
from dataclasses import replace

import pytest
from test_plots import six_k_report, telemetry_rows, write_jsonl
from test_report import weights_only

from headscope import export, fileio
from headscope.errors import InputError, OutputWriteError
from headscope.findings import Finding

DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def fmt(x: float) -> str:
    # The documents' number format: 4 significant digits, separators from 1,000.
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


@pytest.fixture(scope="module")
def page() -> str:
    """The six-k report as HTML, rendered once (drawing the figures is the slow part)."""
    return export.report_html(six_k_report())


@pytest.fixture
def confirm_log(tmp_path):
    path = tmp_path / "confirm.jsonl"
    write_jsonl(
        path, telemetry_rows("original", 12, 2e4, 1.2) + telemetry_rows("fixed", 12, 6e2, 0.08)
    )
    return path


# The six-k report's recommendation as one decision (k and the output bias together).
DEC = "k = 16: projection divided by 16, output bias kept (fix --no-scale-bias)"

# --------------------------------------------------------------------------------------------
# HTML


@pytest.mark.usefixtures("bands_default")
def test_html_holds_recommendation_findings_and_per_k_numbers(page):
    report = six_k_report()
    rec = report.recommendation
    assert rec is not None and rec.k == 16.0
    # k and the output bias are one decision: both halves in the headline and the box.
    assert f'<span class="rec-k">{DEC}</span>' in page
    assert f'<p class="summary">Recommendation (bands rule): {DEC}; findings:' in page
    assert ("with its MLM-head projection divided by k and its output bias kept. The "
            "recommended row: k = 16, bias kept.") in page
    for reason in rec.reasons:
        assert f"<li>{reason}</li>" in page.replace("&#x27;", "'")
    for f in report.findings:
        assert f"<code>{f.code}</code>" in page
        assert f'<span class="sev sev-{f.severity}">{f.severity}</span>' in page
    assert [f.code for f in report.findings] == [
        "HS101",
        "HS102",
        "HS103",
        "HS202",
        "HS203",
        "HS204",
    ]

    table = section(page, "<h2>Probe statistics per k</h2>", "<h2>Findings</h2>")
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table)[1:]  # minus the header row
    assert len(rows) == len(report.per_k) == 6
    verdicts = {v.k: v.failed for v in rec.verdicts}
    for s, row in zip(report.per_k, rows, strict=True):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert cells[0] == (f"{s.k:g} (recommended)" if s.k == rec.k else f"{s.k:g}")
        assert cells[1:4] == [fmt(s.logit_p01), fmt(s.logit_p50), fmt(s.logit_p99)]
        assert cells[5:7] == [fmt(s.active_query), fmt(s.active_passage)]
        assert cells[8] == fmt(s.term_weight_mean)
        assert cells[11:15] == [
            fmt(s.cosine_unrelated),
            fmt(s.score_pos),
            fmt(s.score_neg),
            fmt(s.start_loss),
        ]
        failed = verdicts[s.k]
        assert cells[-1] == ("ok" if not failed else "fails " + ", ".join(failed))
        # every failed band marks exactly one cell red
        assert row.count('class="num fail"') == len(failed)
    assert table.count('<tr class="rec">') == 1


def test_html_holds_model_facts_and_head_weights(page):
    facts = section(page, "<h2>Model</h2>", "<h2>Head weights</h2>")
    for text in (
        "answerdotai/ModernBERT-base",
        "8949b909ec900327062f0ebf497f51aef5e6f0c8",
        "ModernBertForMaskedLM",
        "50,368",
        "50,285",
        "[CLS] [SEP] [MASK] [PAD] [UNK]",
    ):
        assert text in facts
    weights = section(page, "<h2>Head weights</h2>", "<h2>Probe statistics per k</h2>")
    assert '<td class="num">2.553</td><td class="num">2.56</td>' in weights  # row norm means
    assert '<td class="num">50,368</td><td class="num">50,285</td>' in weights
    assert "no bias" in weights and "27.75" in weights and "14.5" in weights


def test_html_is_self_contained(page):
    images = DATA_URI.findall(page)
    assert len(images) == 2  # k grid and logits
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    rest = DATA_URI.sub("", page)
    assert "http" not in rest.lower()
    assert "<link" not in rest and "<script" not in rest and "url(" not in rest
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_html_escapes_report_text():
    evil = Finding("HS101", "large-head-scale", "warning", 'row norm <b>3</b> & "big"', 3.0, 1.5)
    report = six_k_report()
    report = replace(
        report,
        model=replace(report.model, source='<script>alert("x")</script>'),
        findings=(evil,),
    )
    page = export.report_html(report)
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "row norm &lt;b&gt;3&lt;/b&gt; &amp; &quot;big&quot;" in page


def test_html_with_confirm_telemetry(confirm_log):
    page = export.report_html(six_k_report(), confirm_log=confirm_log)
    assert len(DATA_URI.findall(page)) == 3
    table = section(page, "<h2>Training telemetry</h2>", "<h2>Figures</h2>")
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]  # minus the header row
    assert len(rows) == 2
    original = telemetry_rows("original", 12, 2e4, 1.2)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0])
    assert cells[:5] == [
        "original",
        "12",
        fmt(original[0]["loss"]),
        fmt(original[-1]["loss"]),
        fmt(min(r["loss"] for r in original)),
    ]
    assert cells[5] == fmt(original[-1]["active_query"])
    assert re.findall(r"<td[^>]*>(.*?)</td>", rows[1])[0] == "fixed"


@pytest.mark.usefixtures("bands_default")
def test_weights_only_report_renders_without_figures():
    report = weights_only()
    page = export.report_html(report)
    assert "No probe was run (weights-only report)" in page
    assert not DATA_URI.findall(page)
    assert f'<span class="rec-k">{DEC}</span> (rule: paper' in page
    md = export.report_markdown(report)
    assert "No probe was run (weights-only report)" in md
    assert "![" not in md


# --------------------------------------------------------------------------------------------
# Markdown


def md_table(text: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the first table after `heading`, header and rule excluded."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| "))
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]])
    return rows


@pytest.mark.usefixtures("bands_default")
def test_markdown_tables_have_a_row_per_k_and_per_finding():
    report = six_k_report()
    rec = report.recommendation
    assert rec is not None
    md = export.report_markdown(report)
    rows = md_table(md, "## Probe statistics per k")
    assert rec.k == 16.0
    assert [r[0] for r in rows] == ["1", "2", "4", "8", "**16 (recommended)**", "32"]
    verdicts = {v.k: v.failed for v in rec.verdicts}
    for s, row in zip(report.per_k, rows, strict=True):
        assert row[1] == fmt(s.logit_p01)
        assert row[14].removesuffix(" ✗") == fmt(s.start_loss)
        assert row[14].endswith(" ✗") == ("start_loss" in verdicts[s.k])
        assert row[-1] == ("ok" if not verdicts[s.k] else "fails " + ", ".join(verdicts[s.k]))
    findings = md_table(md, "## Findings")
    assert [r[0] for r in findings] == [f.code for f in report.findings]
    assert f"**{DEC}** (rule: bands" in md
    assert md.splitlines()[2].startswith(f"Recommendation (bands rule): {DEC}; findings:")
    for reason in rec.reasons:
        assert f"- {reason}" in md
    assert md.startswith("# headscope report: answerdotai/ModernBERT-base\n")
    assert "![" not in md  # no figures without figures_dir


def test_markdown_escapes_pipes_and_html():
    odd = Finding("HS101", "large-head-scale", "warning", "a | b <i>c</i>", None, None)
    md = export.report_markdown(replace(six_k_report(), findings=(odd,)))
    assert r"a \| b &lt;i&gt;c&lt;/i&gt;" in md
    row = md_table(md, "## Findings")[0]
    assert len(row) == 6 and row[4:] == ["–", "–"]


def test_markdown_writes_and_links_figures(tmp_path, confirm_log):
    folder = tmp_path / "figs"
    md = export.report_markdown(six_k_report(), figures_dir=folder, confirm_log=confirm_log)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["k_grid.png", "logits.png", "training.png"]
    for name in names:
        assert f"](figs/{name})" in md
        assert (folder / name).read_bytes().startswith(b"\x89PNG")
    assert len(md_table(md, "## Training telemetry")) == 2


# --------------------------------------------------------------------------------------------
# Files


def test_write_report_writes_both_atomically(tmp_path, confirm_log):
    report = six_k_report()
    html_path, md_path = tmp_path / "r.html", tmp_path / "r.md"
    written = export.write_report(report, html=html_path, md=md_path, confirm_log=confirm_log)
    assert written == (html_path, md_path)
    written_html = html_path.read_text(encoding="utf-8")
    assert written_html.startswith("<!DOCTYPE html>") and written_html.endswith("</html>\n")
    assert f'<span class="rec-k">{DEC}</span>' in written_html
    assert len(DATA_URI.findall(written_html)) == 3  # with the training figure
    written_md = md_path.read_text(encoding="utf-8")
    assert (
        written_md.startswith("# headscope report:") and "](r_figures/training.png)" in written_md
    )
    assert sorted(p.name for p in (tmp_path / "r_figures").iterdir()) == [
        "k_grid.png",
        "logits.png",
        "training.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confirm.jsonl",
        "r.html",
        "r.md",
        "r_figures",
    ]  # no temp files left behind
    umask = os.umask(0)
    os.umask(umask)
    assert html_path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_report_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "r.html"
    path.write_text("old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "write", full)
    with pytest.raises(OutputWriteError) as err:
        export.write_report(six_k_report(), html=path)
    assert str(err.value) == (f"Cannot write {path}: No space left on device; nothing was "
                              "written there; free some space or choose another path.")
    assert err.value.exit_code == 2
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_write_report_errors(tmp_path):
    with pytest.raises(InputError, match="pass html=PATH, md=PATH or both"):
        export.write_report(six_k_report())
    with pytest.raises(InputError, match="directory .*missing does not exist"):
        export.write_report(
            six_k_report(), html=tmp_path / "r.html", md=tmp_path / "missing" / "r.md"
        )
    assert list(tmp_path.iterdir()) == []  # nothing written when one destination is bad


@pytest.mark.slow
def test_html_renders_in_headless_chromium(tmp_path, confirm_log):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed")
    page = tmp_path / "report.html"
    export.write_report(six_k_report(), html=page, confirm_log=confirm_log)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,4400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG")
    assert int.from_bytes(data[16:20], "big") == 1400
    keep = os.environ.get("HEADSCOPE_SCREENSHOT")  # set to a path to look at the page
    if keep:
        shutil.copyfile(shot, keep)


@pytest.mark.usefixtures("bands_default")
def test_a_bias_dividing_recommendation_says_so_in_every_headline():
    from dataclasses import replace

    report = six_k_report()
    rec = report.recommendation
    report = replace(report, recommendation=replace(rec, scale_bias=True),
                     probe=replace(report.probe, scale_bias=True))
    decision = "k = 16: projection and output bias divided by 16 (fix --scale-bias)"
    page = export.report_html(report)
    assert f'<span class="rec-k">{decision}</span>' in page
    assert f"Recommendation (bands rule): {decision}; findings:" in page
    assert ("with its MLM-head projection and output bias divided by k. The recommended row: "
            "k = 16, bias divided.") in page
    md = export.report_markdown(report)
    assert f"**{decision}** (rule: bands" in md
    assert "The recommended row: k = 16, bias divided." in md
