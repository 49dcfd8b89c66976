"""Progress for people: plain lines with an ETA when stderr is not a terminal, and the fast
inspect mode (its configuration and the CLI wiring; its recommendation against the default's on
every model is checked in tests/test_recommend_real.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from headscope.cli import main
from headscope.probe import FAST_MAX_PASSAGE_LENGTH, FAST_N_PAIRS, ProbeConfig, fast_config
from headscope.render import ProgressLines, duration


def test_duration():
    assert [duration(s) for s in (0, 4.4, 59.6, 61, 3599, 3720)] == [
        "0 s", "4 s", "1 min 00 s", "1 min 01 s", "59 min 59 s", "1 h 02 min"]


def test_progress_lines_every_tenth_or_five_seconds_with_an_eta():
    lines = ProgressLines(every_s=5.0, step=0.1, quiet_s=2.0)
    feed = [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 9.0), (30, 10.0), (31, 10.5), (100, 20.0),
            (100, 21.0)]
    got = [lines.update("probe", done, 100, now) for done, now in feed]
    assert got == [
        None, None,  # the first 2 s are quiet
        "probe: 2/100 (2%), 2 s elapsed, about 1 min 38 s left",  # first line: 2 / 2 x 98
        None,  # 3%: less than a tenth more and under 5 s since the last line
        "probe: 4/100 (4%), 9 s elapsed, about 3 min 36 s left",  # 5 s passed: 9 / 4 x 96
        "probe: 30/100 (30%), 10 s elapsed, about 23 s left",  # crossed 10%, 20% and 30%
        None,  # 31%: still the 30% step, 0.5 s later
        "probe: done in 20 s",
        None,  # a finished phase says nothing more
    ]
    # A phase that ends within its quiet seconds, or is refused then, prints nothing at all.
    assert [lines.update("load", d, 1, t) for d, t in ((0, 30.0), (1, 31.5))] == [None, None]
    assert lines.update("verify", 0, 3, 40.0) is None
    assert lines.update("verify", 1, 3, 43.0) == ("verify: 1/3 (33%), 3 s elapsed, about 6 s "
                                                  "left")
    # A phase run again (fix probes before and after rescaling) starts over.
    assert lines.update("probe", 0, 10, 50.0) is None
    assert lines.update("probe", 5, 10, 54.0) == "probe: 5/10 (50%), 4 s elapsed, about 4 s left"
    assert lines.update("probe", 10, 10, 58.0) == "probe: done in 8 s"


def test_fast_config_keeps_everything_but_pairs_and_passage_length():
    default = ProbeConfig()
    fast = fast_config()
    assert (fast.n_pairs, fast.max_passage_length) == (FAST_N_PAIRS, FAST_MAX_PASSAGE_LENGTH)
    assert fast.n_pairs * 4 == default.n_pairs and fast.batch_size == default.batch_size
    assert fast.max_passage_length * 2 == default.max_passage_length
    custom = fast_config(ProbeConfig(ks=(1, 4), scale_bias=True))
    assert (custom.ks, custom.scale_bias) == ((1, 4), True)


@pytest.mark.parametrize("args, n_pairs, passage", [
    (["--fast"], FAST_N_PAIRS, FAST_MAX_PASSAGE_LENGTH),
    (["--fast", "--n-pairs", "8"], 8, FAST_MAX_PASSAGE_LENGTH),  # an explicit --n-pairs wins
])
def test_inspect_fast_on_the_command_line(bert_tiny_dir, tmp_path, monkeypatch, args, n_pairs,
                                          passage):
    """--fast probes fewer, shorter texts; stderr (not a terminal under CliRunner) gets plain
    progress lines. A clock that advances 3 s per reading makes the lines deterministic."""
    import time

    ticks = iter(range(0, 10**6, 3))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(ticks)))
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "assets").symlink_to(bert_tiny_dir.parent, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["inspect", str(bert_tiny_dir), "--ks", "1,8", *args,
                                       "--json", "-"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["probe"]["n_pairs"] == n_pairs
    assert report["probe"]["max_passage_length"] == passage
    lines = result.stderr.splitlines()
    # load: 0 s, then 3 s: past the quiet 2 s but already done, so it was never reported
    assert not any(line.startswith("load") for line in lines)
    probe = [line for line in lines if line.startswith("probe: ")]
    if n_pairs == 8:  # one batch, done 3 s after the start: never reported
        assert probe == []
    else:  # four batches of 16, 3 s apart: each a new tenth
        assert probe == ["probe: 16/64 (25%), 3 s elapsed, about 9 s left",
                         "probe: 32/64 (50%), 6 s elapsed, about 6 s left",
                         "probe: 48/64 (75%), 9 s elapsed, about 3 s left",
                         "probe: done in 12 s"]
