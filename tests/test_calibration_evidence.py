"""The calibration evidence committed in docs/calibration/runs pins the recommendation of every
calibration condition, and docs/calibration.md is what `calibrate.py report` makes of it.

PINNED is the recommendation (k, bias divided) that headscope gives each condition today and
where the committed training runs place it against their tied-with-best set (the arms whose
paired bootstrap interval to the best arm reaches zero). Changing the bands, the probe or a
condition without re-running `calibrate.py inspect` and `report` fails here; so does a page that
no longer matches its raw results. The slow test recomputes every recommendation from the
models themselves."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs" / "calibration" / "runs"

# condition -> ((k, bias divided), outcome of that arm in the committed grid)
PINNED: dict[str, tuple[tuple[float, bool], str]] = {
    "real-bert-tiny": ((4.0, False), "tied"),
    "bias-dense": ((16.0, True), "tied"),
    "projection-dense": ((8.0, False), "tied"),
    "modernbert-matched-sim": ((32.0, False), "tied"),
    "modernbert-mini": ((8.0, False), "tied"),
    "bert-mini-control": ((4.0, False), "tied"),
}


@pytest.fixture(scope="module")
def calibrate():
    spec = importlib.util.spec_from_file_location("calibrate", ROOT / "scripts" / "calibrate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibrate"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def evidence(calibrate):
    rows = calibrate.read_rows(RUNS)
    inspections = calibrate.latest_inspections(rows)
    groups = calibrate.analyse(rows)
    return inspections, calibrate.calibration_cases(groups, inspections)


def test_every_calibration_condition_is_pinned(calibrate):
    assert set(PINNED) == set(calibrate.FITTED_CONDITIONS)
    # the band fit never sees a pre-registered condition
    assert not set(calibrate.CALIBRATION_CONDITIONS) - set(PINNED) & set(
        calibrate.calibration_cases(calibrate.analyse(calibrate.read_rows(RUNS)),
                                    calibrate.latest_inspections(calibrate.read_rows(RUNS))))


@pytest.mark.parametrize("name", sorted(PINNED))
def test_recorded_recommendation_is_what_the_shipped_bands_decide(calibrate, evidence, name):
    from headscope.recommend import DEFAULT_BANDS

    inspections, _ = evidence
    decision, _ = PINNED[name]
    rec = inspections[name]["recommendation"]
    assert (rec["k"], rec["scale_bias"]) == decision
    # The shipped bands, replayed on the recorded per-k statistics, decide the same: bands
    # changed since the last `calibrate.py inspect` fail here.
    assert calibrate.replay(inspections[name], DEFAULT_BANDS) == decision


@pytest.mark.parametrize("name", sorted(PINNED))
def test_committed_runs_place_the_recommendation(calibrate, evidence, name):
    _, cases = evidence
    decision, outcome = PINNED[name]
    _ins, group = cases[name]
    assert len(group["seeds"]) >= 3
    assert calibrate._outcome(decision, group) == outcome


def test_the_page_is_the_report_of_the_committed_runs(calibrate, tmp_path):
    """The page, and the evidence the package ships (inspect's counts and the arms each
    condition's grid cannot separate), are what the report makes of the committed runs."""
    md = tmp_path / "calibration.md"
    shutil.copy(ROOT / "docs" / "calibration.md", md)
    assert calibrate.main(["report", "--runs", str(RUNS), "--md", str(md),
                           "--figures", str(tmp_path / "figures"),
                           "--evidence", str(tmp_path / "calibration.json")]) == 0
    assert md.read_text(encoding="utf-8") == \
        (ROOT / "docs" / "calibration.md").read_text(encoding="utf-8")
    assert (tmp_path / "calibration.json").read_text(encoding="utf-8") == \
        (ROOT / "headscope" / "data" / "calibration.json").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PINNED))
def test_live_recommendation_and_statistics_match_the_record(calibrate, evidence, name):
    """Built and probed now: the recommendation is the pinned one and the per-k statistics the
    band fit used are the ones this code measures."""
    inspections, _ = evidence
    loaded, label = calibrate.build(name)
    row = calibrate.inspection(name, loaded, label, "live")
    decision, _ = PINNED[name]
    assert (row["recommendation"]["k"], row["recommendation"]["scale_bias"]) == decision
    recorded = inspections[name]["per_k"]
    assert set(row["per_k"]) == set(recorded)
    for bias, per_k in row["per_k"].items():
        for live, rec in zip(per_k, recorded[bias], strict=True):
            assert live["k"] == rec["k"]
            for field in ("start_loss", "term_weight_mean", "score_pos", "share_above_5"):
                assert live[field] == pytest.approx(rec[field], rel=1e-3, abs=1e-9), (bias, field)
