"""calibrated: the calibration evidence the package ships, a checkpoint known as a calibration
condition by its weight file, and what `inspect` says of both."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import jsonschema
import pytest
from click.testing import CliRunner

from headscope import assets, calibrated
from headscope import report as report_mod
from headscope.calibrated import DomainEvidence, ModelEvidence, TiedArm
from headscope.cli import main

SHIPPED = json.loads(calibrated.DATA_FILE.read_text(encoding="utf-8"))


def _shipped(condition: str) -> dict:
    (entry,) = [m for m in SHIPPED["models"] if m["condition"] == condition]
    return entry


def test_shipped_identities_are_the_pinned_checkpoints():
    """The sha256 each shipped entry knows a local condition by is the one its asset pins."""
    for name in ("modernbert-pt128", "modernbert-mini", "bert-mini-control"):
        entry = _shipped(name)
        assert entry["weights_sha256"] == assets.LOCAL[name].sha256
        folder = assets.local(name)
        assert entry["weights_bytes"] == (folder / "model.safetensors").stat().st_size
    # simulations are never shipped: no user has their files
    assert {m["condition"] for m in SHIPPED["models"]}.isdisjoint(
        {"bias-dense", "projection-dense", "modernbert-matched-sim", "tied-scale-sim",
         "pt128-scaled-sim"})


def test_identify_tells_two_conditions_of_one_size_apart(tmp_path):
    """modernbert-mini and modernbert-pt128 have weight files of the same size: the hash
    decides; a file of that size with other bytes is no condition."""
    pt128 = assets.local("modernbert-pt128") / "model.safetensors"
    mini = assets.local("modernbert-mini") / "model.safetensors"
    assert pt128.stat().st_size == mini.stat().st_size
    got = calibrated.identify([pt128])
    entry = _shipped("modernbert-pt128")
    assert got == ModelEvidence("modernbert-pt128", "pre-registered", tuple(
        DomainEvidence(d["domain"], d["train"], d["eval"], d["steps"], d["seeds"],
                       tuple(TiedArm(a["k"], a["scale_bias"]) for a in d["tied"]))
        for d in entry["domains"]))
    assert calibrated.identify([mini]).condition == "modernbert-mini"
    assert calibrated.identify([mini]).block == "fitted"
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"\0" * pt128.stat().st_size)
    assert calibrated.identify([other]) is None
    assert calibrated.identify([pt128, mini]) is None  # a sharded checkpoint is no condition
    assert calibrated.identify([tmp_path / "missing.safetensors"]) is None


def test_identify_reads_no_file_of_another_size(tmp_path, monkeypatch):
    def refuse(path):
        raise AssertionError(f"{path} was hashed")

    monkeypatch.setattr(calibrated.fileio, "sha256_file", refuse)
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x" * 1000)
    assert calibrated.identify([f]) is None


def test_holds_and_the_sentences_by_hand():
    d_in = DomainEvidence("in", "boolq", "boolq", 300, 3,
                          (TiedArm(1.0, False), TiedArm(32.0, True), TiedArm(64.0, True)))
    d_out = DomainEvidence("out", "boolq", "sciq", 300, 3,
                           (TiedArm(8.0, False), TiedArm(16.0, False), TiedArm(32.0, True)))
    assert d_in.holds(1.0, True) and d_in.holds(1.0, False)  # at k = 1 the bias is not divided
    assert d_in.holds(32.0, True) and not d_in.holds(32.0, False)
    assert not d_in.holds(16.0, False)
    ev = ModelEvidence("some-model", "pre-registered", (d_in, d_out))
    assert calibrated.model_sentences(ev, 16.0, False) == [
        "This checkpoint is the calibration condition some-model (registered before its runs).",
        "Trained on boolq (3 seeds x 300 steps), evaluated in domain on boolq: the evidence "
        "cannot separate k = 1, k = 32 or 64 (bias divided); the recommended k = 16 (bias kept) "
        "is outside that set.",
        "Trained on boolq (3 seeds x 300 steps), evaluated out of domain on sciq: the evidence "
        "cannot separate k = 8 or 16 (bias kept), k = 32 (bias divided); the recommended k = 16 "
        "(bias kept) is inside that set.",
    ]
    fitted = replace(ev, block="fitted", domains=(d_out,))
    assert calibrated.model_sentences(fitted, None, False) == [
        "This checkpoint is the calibration condition some-model (a condition the bands were "
        "fitted on, so in sample).",
        "Trained on boolq (3 seeds x 300 steps), evaluated out of domain on sciq: the evidence "
        "cannot separate k = 8 or 16 (bias kept), k = 32 (bias divided).",
    ]


def _counts(**inside: tuple[int, int]) -> dict:
    rules = ["bands (shipped)", "paper", "k = 1", "k = 4, bias kept", "k = 4, bias divided",
             "k = 8, bias kept"]
    return {r: {"in": [inside.get(r, (0, 0))[0], 4], "out": [inside.get(r, (0, 0))[1], 4]}
            for r in rules}


@pytest.mark.parametrize(("complete", "verdict", "tail"), [
    (4, None, " The decision rule needs 4 such conditions: its verdict is pending."),
    (4, "paper", " The decision rule, written before those runs, chose paper as the default."),
    (4, "bands (shipped)", " The decision rule, written before those runs, chose the bands rule "
     "as the default."),
])
def test_counts_sentence_by_hand(monkeypatch, complete, verdict, tail):
    counts = _counts(**{"bands (shipped)": (1, 3), "paper": (2, 2), "k = 4, bias kept": (1, 2),
                        "k = 8, bias kept": (2, 1)})
    data = {"complete": complete, "needed": 4, "verdict": verdict, "counts": counts,
            "models": []}
    monkeypatch.setattr(calibrated, "_data", lambda: data)
    # k = 4 kept and k = 8 kept both land inside 3 times: the simpler (listed first) is named
    assert calibrated.counts_sentence() == (
        "On the 4 calibration conditions registered before they ran, the bands' k landed among "
        "the arms that trained as well as the best 1 of 4 in domain, 3 of 4 out of domain; the "
        "paper's rule 2 of 4 in domain, 2 of 4 out of domain; the best constant (k = 4, bias "
        "kept) 1 of 4 in domain, 2 of 4 out of domain." + tail)
    data["complete"] = 0
    assert calibrated.counts_sentence() == (
        "No condition registered before its runs is complete yet.")


def test_a_report_with_evidence_round_trips(tmp_path):
    rep = report_mod.loads(report_mod.dumps(_weights_only_report("modernbert-pt128")))
    assert rep.evidence == calibrated.identify(
        [assets.local("modernbert-pt128") / "model.safetensors"])
    assert report_mod.loads(report_mod.dumps(rep)) == rep
    # a report written before the field existed still reads, without evidence
    data = report_mod.to_dict(rep)
    del data["evidence"]
    data[report_mod.HASH_FIELD] = report_mod.content_sha256(data)
    assert report_mod.from_dict(data).evidence is None


def _weights_only_report(name: str):
    from headscope import api
    from headscope.api.inspecting import InspectOptions

    return api.inspect(str(assets.local(name)), options=InspectOptions(weights_only=True))


def test_inspect_shows_a_conditions_own_evidence_and_writes_it_to_json(tmp_path,
                                                                       tiny_checkpoint):
    """For a checkpoint that is a calibration condition the report carries its grid and the
    panel says where the recommendation lies in it; a copy under another name is the same
    checkpoint; any other checkpoint carries null."""
    folder = tmp_path / "renamed"
    shutil.copytree(assets.local("modernbert-pt128"), folder)
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", "--weights-only", str(folder), "--json", "-"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, report_mod.schema())
    assert doc["evidence"]["condition"] == "modernbert-pt128"
    assert doc["evidence"]["domains"] == [
        {k: v for k, v in d.items() if k != "tied_text"}
        for d in _shipped("modernbert-pt128")["domains"]]
    shown = runner.invoke(main, ["inspect", "--weights-only", str(folder)])
    text = " ".join(" ".join(ln.strip(" │") for ln in shown.stdout.splitlines()).split())
    ev = calibrated.identify([folder / "model.safetensors"])
    rec = report_mod.from_dict(doc).recommendation
    for sentence in calibrated.model_sentences(ev, rec.k, rec.scale_bias):
        assert f"- {sentence}" in text
    tiny = str(tiny_checkpoint("bert"))
    other = runner.invoke(main, ["inspect", "--weights-only", tiny, "--json", "-"])
    assert json.loads(other.stdout)["evidence"] is None
    assert "This checkpoint is the calibration condition" not in runner.invoke(
        main, ["inspect", "--weights-only", tiny]).stdout


# ------------------------------------------------------------------ the shipped (default) rule

def _with_verdict(monkeypatch, ships, row_norms=(1.32, 2.553)):
    """The shipped evidence with its verdict replaced by `ships` (None: pending)."""
    data = dict(SHIPPED, ships=ships, row_norms=list(row_norms),
                verdict=None if ships is None else "k = 16, bias kept", complete=4)
    monkeypatch.setattr(calibrated, "_data", lambda: data)


def test_the_shipped_rule_is_the_verdict_and_the_bands_while_pending(monkeypatch):
    _with_verdict(monkeypatch, None)
    assert calibrated.shipped_rule() == calibrated.ShippedRule("bands")
    _with_verdict(monkeypatch, {"rule": "constant", "k": 16.0, "scale_bias": True})
    assert calibrated.shipped_rule() == calibrated.ShippedRule("constant", 16.0, True)
    _with_verdict(monkeypatch, {"rule": "paper"})
    assert calibrated.shipped_rule() == calibrated.ShippedRule("paper")
    assert calibrated.judged_row_norms() == (1.32, 2.553)
    _with_verdict(monkeypatch, None, row_norms=())
    assert calibrated.judged_row_norms() is None


def test_the_shipped_file_applies_its_own_verdict():
    """`ships` is the verdict as the product applies it, and `row_norms` the complete
    pre-registered conditions' row norms, from the registry."""
    verdict, ships = SHIPPED["verdict"], SHIPPED["ships"]
    if verdict is None:
        assert ships is None
    elif verdict == "bands (shipped)":
        assert ships == {"rule": "bands"}
    elif verdict == "paper":
        assert ships == {"rule": "paper"}
    else:
        k, bias = verdict.removeprefix("k = ").split(", bias ") if "," in verdict else (
            verdict.removeprefix("k = "), "kept")
        assert ships == {"rule": "constant", "k": float(k), "scale_bias": bias == "divided"}
    assert len(SHIPPED["row_norms"]) == SHIPPED["complete"]
    assert SHIPPED["row_norms"] == sorted(SHIPPED["row_norms"])


def test_under_a_shipped_constant_inspect_check_and_fix_give_one_answer(
        monkeypatch, bert_tiny_dir, tmp_path, headscope_cache):
    """With a constant verdict the weights-only and the full inspection recommend the same arm,
    check --weights-only judges max_k on it, and fix acts on it without probing, after a
    weights-only inspection too."""
    import torch
    from safetensors.torch import load_file

    _with_verdict(monkeypatch, {"rule": "constant", "k": 16.0, "scale_bias": False})
    runner, model = CliRunner(), str(bert_tiny_dir)
    full = runner.invoke(main, ["inspect", model, "--fast", "--json", "-"])
    bare = runner.invoke(main, ["inspect", "--weights-only", model, "--json", "-"])
    for result in (full, bare):
        assert result.exit_code == 0, result.stderr
        rec = json.loads(result.stdout)["recommendation"]
        assert (rec["k"], rec["rule"], rec["scale_bias"]) == (16.0, "constant", False)
        assert rec["reasons"][1] == ("Those conditions' heads have mean decoder row norms 1.32 "
                                     "to 2.553; this head's 0.6819 is below that range, where "
                                     "this evidence does not reach.")
    checked = runner.invoke(main, ["check", "--weights-only", model, "--max-k", "8"])
    assert checked.exit_code == 1, checked.output
    assert checked.output.endswith("FAIL\n- The recommended k is 16, above the limit 8.\n")

    assert runner.invoke(main, ["inspect", "--weights-only", model]).exit_code == 0
    out = tmp_path / "fixed"
    fixed = runner.invoke(main, ["fix", "--out", str(out), "--json", "-"])
    assert fixed.exit_code == 0, fixed.stderr
    assert (f"No MODEL given: acting on {model}, the model of the last `headscope inspect`, "
            "with k = 16 (last inspection's recommendation).") in fixed.stderr
    assert "probe" not in fixed.stderr.lower()
    before = load_file(bert_tiny_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    embeddings = before["bert.embeddings.word_embeddings.weight"]
    assert torch.equal(after["bert.embeddings.word_embeddings.weight"], embeddings)
    assert torch.allclose(after["cls.predictions.decoder.weight"] * 16, embeddings, atol=1e-6)
    assert torch.equal(after["cls.predictions.bias"], before["cls.predictions.bias"])

    # the constant is meant for the head as pretrained: a folder headscope fixed at 16 has k = 1
    # left, so fixing it again writes nothing; one fixed at 4 has 4 left
    again = runner.invoke(main, ["inspect", "--weights-only", str(out), "--json", "-"])
    rec = json.loads(again.stdout)["recommendation"]
    assert (rec["k"], rec["rule"]) == (1.0, "constant")
    assert rec["reasons"][2] == (
        "This checkpoint was written by headscope fix, its head already divided by 16 "
        "(headscope.json), and the constant is meant for the head as pretrained: k = 1 is left.")
    twice = runner.invoke(main, ["fix", str(out), "--out", str(tmp_path / "twice")])
    assert twice.exit_code == 0, twice.stderr
    assert not (tmp_path / "twice").exists()
    assert f"No fix needed: {out} is recommended k = 1 (recommended by the shipped constant " \
        "rule)" in " ".join((twice.stdout + twice.stderr).split())
    quarter = tmp_path / "k4"
    assert runner.invoke(main, ["fix", model, "--out", str(quarter), "--k", "4",
                                "--no-scale-bias"]).exit_code == 0
    rest = runner.invoke(main, ["fix", str(quarter), "--out", str(tmp_path / "k4-k4"), "--json",
                                "-"])
    assert rest.exit_code == 0, rest.stderr
    assert json.loads(rest.stdout)["k"] == 4.0
    assert json.loads((tmp_path / "k4-k4" / "headscope.json").read_text())["k"] == 4.0
