"""sweep --devices: arms spread over worker processes, one per device, give the sequential
run's results (scheduled here on two CPU "devices")."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from headscope import api
from headscope.errors import InputError
from headscope.scheduler import parse_devices


def test_devices_are_parsed_and_an_empty_list_is_refused():
    assert parse_devices("cuda:0, cuda:1") == ("cuda:0", "cuda:1")
    assert parse_devices("cpu,cpu") == ("cpu", "cpu")
    with pytest.raises(InputError, match=r"^--devices ',' names no device; give e\.g\. "
                                         r"cuda:0,cuda:1\.$"):
        api.ConfirmOptions(devices=",")


@pytest.mark.slow
def test_two_devices_give_the_sequential_results(bert_tiny_dir, pairs_file, tmp_path):
    fast = api.ConfirmOptions(data=str(pairs_file), steps=3, batch_size=4,
                              max_passage_length=32, max_eval_queries=8)
    ks = (1.0, 4.0, 16.0)  # three arms on two devices: one device trains two in turn
    seq = api.sweep(str(bert_tiny_dir), ks, options=replace(fast, log=str(tmp_path / "a.jsonl")))
    par = api.sweep(str(bert_tiny_dir), ks, options=replace(
        fast, devices="cpu,cpu", log=str(tmp_path / "b.jsonl")))
    assert [a.name for a in par.arms] == [a.name for a in seq.arms] == ["k=1", "k=4", "k=16"]
    for a, b in zip(seq.arms, par.arms, strict=True):
        assert b.status == a.status
        assert b.start_loss == pytest.approx(a.start_loss, rel=1e-5)
        assert b.end_loss == pytest.approx(a.end_loss, rel=1e-5)
        assert b.mrr_at_10 == pytest.approx(a.mrr_at_10, abs=1e-6)
    for name in seq.records:
        assert [r.loss for r in par.records[name]] == pytest.approx(
            [r.loss for r in seq.records[name]], rel=1e-5)
    one = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [(r["arm"], r["step"]) for r in two] == [(r["arm"], r["step"]) for r in one]
