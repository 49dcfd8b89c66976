"""splade.telemetry: the one writer (every field sanitised, one NaN convention: null) and the one
reader (runs kept apart by their keys), without torch."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headscope.errors import InputError
from headscope.splade.telemetry import (
    ProbeRecord,
    StepRecord,
    TelemetryWriter,
    read_telemetry,
    run_label,
    sanitize,
)

FIELDS = {f.name for f in dataclasses.fields(StepRecord)}


def record(step: int, **over) -> StepRecord:
    base = dict(step=step, loss=2.0, ranking_loss=1.9, flops_q=1.0, flops_d=1.5, weight_q=0.0,
                weight_d=0.0, active_query=40.0, active_passage=200.0, score_pos=10.0,
                score_neg=2.0, grad_norm=1.0, lr=1e-5, loss_finite=True, grad_finite=True)
    base.update(over)
    return StepRecord(**base)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_round_trip_writes_null_for_non_finite_and_reads_nan(tmp_path):
    records = [record(0), record(1, loss=math.nan, loss_finite=False),
               record(2, grad_norm=math.inf, score_neg=-math.inf, grad_finite=False)]
    path = tmp_path / "telemetry.jsonl"
    with TelemetryWriter(path, arm="fixed") as writer:
        for r in records:
            writer(r)
    rows = lines(path)
    assert rows[0] == {"arm": "fixed", **dataclasses.asdict(records[0])}
    assert rows[1]["loss"] is None and rows[1]["loss_finite"] is False
    assert rows[2]["grad_norm"] is None and rows[2]["score_neg"] is None
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    back = read_telemetry(path)
    assert list(back) == ["fixed"]
    assert back["fixed"][0] == records[0]
    assert math.isnan(back["fixed"][1].loss) and back["fixed"][1].loss_finite is False
    assert math.isnan(back["fixed"][2].grad_norm)  # JSON has no infinity: it reads back as NaN
    assert dataclasses.replace(back["fixed"][1], loss=0.0) == dataclasses.replace(records[1],
                                                                                  loss=0.0)


def test_every_field_is_sanitised_numpy_and_nested_extras(tmp_path):
    # What crashed `confirm --fixed DIR --log FILE`: a NaN k among the run keys.
    buffer = io.StringIO()
    writer = TelemetryWriter(buffer, arm="fixed", k=math.nan,
                             run={"seed": np.int64(3), "ks": (np.float32(0.5), math.inf),
                                  "where": Path("/tmp/x")})
    writer(record(np.int64(4), loss=np.float32(1.5), active_query=np.float64(math.nan)))
    row = json.loads(buffer.getvalue())
    assert row["k"] is None
    assert row["run"] == {"seed": 3, "ks": [0.5, None], "where": "/tmp/x"}
    assert row["step"] == 4 and type(row["step"]) is int
    assert row["loss"] == 1.5 and row["active_query"] is None


def test_sanitize_values():
    assert sanitize({"a": [np.bool_(True), np.array([1.0, np.nan])], 2: None}) == {
        "a": [True, [1.0, None]], "2": None}
    assert sanitize(-math.inf) is None and sanitize(np.float16(2.0)) == 2.0
    with pytest.raises(InputError) as err:
        sanitize({"arm": object()}, "run")
    assert str(err.value) == ("Telemetry field run.arm is a object, which JSON cannot hold; pass "
                              "numbers, strings, booleans, lists or mappings.")


def test_run_keys_may_not_overwrite_record_fields():
    with pytest.raises(InputError) as err:
        TelemetryWriter(io.StringIO(), step=3, loss=1.0)
    assert str(err.value) == ("Telemetry run key(s) loss, step would overwrite record fields; "
                              "name the run with other keys (e.g. arm=..., k=...).")


def test_reader_keeps_runs_apart_and_reads_probe_records(tmp_path):
    path = tmp_path / "confirm.jsonl"
    probe = ProbeRecord(**dataclasses.asdict(record(10)), term_weight_mean=0.7,
                        term_weight_max=math.nan)
    with open(path, "w", encoding="utf-8") as fh:
        for arm, k in (("original", 1.0), ("fixed", 16.0)):
            writer = TelemetryWriter(fh, arm=arm, k=k)
            for s in range(3):
                writer(record(s, loss=float(s) + k))
        TelemetryWriter(fh, run="callback")(probe)
    runs = read_telemetry(path)
    assert list(runs) == ["original, k = 1", "fixed, k = 16", "callback"]
    assert [r.loss for r in runs["fixed, k = 16"]] == [16.0, 17.0, 18.0]
    (back,) = runs["callback"]
    assert isinstance(back, ProbeRecord) and back.term_weight_mean == 0.7
    assert math.isnan(back.term_weight_max)
    assert type(runs["original, k = 1"][0]) is StepRecord


def test_reader_without_run_keys_uses_the_stem_and_reads_old_nan_strings(tmp_path):
    row = dataclasses.asdict(record(0))
    row.update(loss="nan", score_pos="inf", extra_key="ignored")
    path = tmp_path / "baseline.jsonl"
    path.write_text(json.dumps(row) + "\n\n", encoding="utf-8")
    runs = read_telemetry(path)
    assert list(runs) == ["baseline"]
    assert math.isnan(runs["baseline"][0].loss) and runs["baseline"][0].score_pos == math.inf


def test_run_label():
    assert run_label({"arm": "fixed", "k": 16.0}, "x") == "fixed, k = 16"
    assert run_label({"k": None, "arm": "fixed"}, "x") == "fixed, k = ?"
    assert run_label({"run": "a", "other": 1}, "x") == "a"
    assert run_label({}, "stem") == "stem"


def test_reader_errors_name_the_line(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl does not exist"):
        read_telemetry(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(dataclasses.asdict(record(0)))
    cases = [
        (good + "\n{oops\n", "line 2: not a headscope telemetry record (Expecting property "
                             "name enclosed in double quotes)"),
        ("[1, 2]\n", "line 1: not a headscope telemetry record (expected a JSON object per "
                     "line)"),
        ('{"step": 0}\n', "line 1: not a headscope telemetry record (missing field(s) loss, "),
        (good.replace('"loss": 2.0', '"loss": "high"') + "\n",
         "line 1: not a headscope telemetry record (field loss is 'high', not a number)"),
        (good.replace('"step": 0', '"step": 0.5') + "\n",
         "line 1: not a headscope telemetry record (field step is 0.5, not an integer)"),
        (good.replace('"loss_finite": true', '"loss_finite": 1') + "\n",
         "line 1: not a headscope telemetry record (field loss_finite is 1, not true or false)"),
    ]
    for text, message in cases:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(InputError) as err:
            read_telemetry(bad)
        assert str(err.value).startswith(f"{bad}, {message}"), str(err.value)
        assert str(err.value).endswith("the file must come from TelemetryWriter (headscope "
                                       "confirm or sweep --log).")
    bad.write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match="holds no records"):
        read_telemetry(bad)


def test_telemetry_and_detectors_import_no_torch():
    code = ("import sys, headscope.splade.telemetry, headscope.splade.detectors, "
            "headscope.plots; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, headscope.splade.telemetry; assert 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_record_has_one_owner():
    from headscope.splade import train

    assert train.StepRecord is StepRecord
    assert not hasattr(train, "read_telemetry") and not hasattr(train, "TelemetryWriter")
    from headscope import plots

    assert not hasattr(plots, "records_from_jsonl")
    assert FIELDS <= {f.name for f in dataclasses.fields(ProbeRecord)}
