"""The command line, end to end through click's CliRunner (and one real subprocess).

Real BERT-tiny SPLADE for everything that runs a probe (small --n-pairs keeps it quick), tiny
models for the refusals that happen before any forward pass. Every refusal is checked word for
word: one `Error:` line on stderr, exit code 2, nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import tiny_models
import torch
from click.testing import CliRunner

from headscope import __version__
from headscope import report as report_mod
from headscope.cli import commands, main

N_PAIRS = "16"  # probe size for BERT-tiny runs whose statistics are checked
FEW = "4"  # probe size where only the control flow matters

COMMANDS = ("inspect", "fix", "check", "demo", "confirm", "sweep", "compare", "report")


def valid(kind: str, payload: dict) -> dict:
    """`payload` validated against the shipped JSON Schema of `kind` (api.json_schema)."""
    from headscope import api

    assert payload["schema_version"] == 1
    jsonschema.Draft202012Validator(api.json_schema(kind)).validate(payload)
    return payload


@pytest.fixture(autouse=True)
def _private_cache(headscope_cache):
    """Every test here runs with conftest's private HEADSCOPE_CACHE and working directory."""
    return headscope_cache


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def state_file(headscope_cache) -> Path:
    from headscope import api

    path = api.memory.state_file()
    assert path.parent == headscope_cache  # never the user's real memory
    return path


@pytest.fixture(scope="module")
def saved_inspection(bert_tiny_dir, tmp_path_factory):
    """`inspect BERT-tiny --json PATH`, run once: (PATH, the CliRunner result)."""
    folder = tmp_path_factory.mktemp("reports")
    path = folder / "bert-tiny.json"
    (folder / "cache").mkdir()
    (folder / "cache" / "assets").symlink_to(bert_tiny_dir.parent, target_is_directory=True)
    result = CliRunner().invoke(main, ["inspect", str(bert_tiny_dir), "--n-pairs", N_PAIRS,
                                       "--json", str(path)],
                                env={"HEADSCOPE_CACHE": str(folder / "cache")})
    assert result.exit_code == 0, result.stderr
    return path, result


@pytest.fixture
def bert_report(saved_inspection) -> Path:
    return saved_inspection[0]


def validate(payload: dict) -> None:
    jsonschema.Draft202012Validator(report_mod.schema()).validate(payload)


def assert_refused(result, message: str) -> None:
    """Exit 2, nothing on stdout, exactly one `Error:` line on stderr, no traceback."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr == f"Error: {message}\n"


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


# --------------------------------------------------------------------------------------------
# inspect


@pytest.mark.usefixtures("bands_default")
def test_inspect_json_to_stdout_is_only_json_and_valid(runner, bert_tiny_dir, state_file):
    result = runner.invoke(main, ["inspect", str(bert_tiny_dir), "--n-pairs", N_PAIRS,
                                  "--json", "-"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)  # the whole of stdout, no table around it
    validate(payload)
    assert payload["schema_version"] == report_mod.SCHEMA_VERSION
    assert payload["model"]["source"] == str(bert_tiny_dir)
    assert payload["model"]["family"] == "bert"
    assert payload["model"]["tied"] is True
    assert payload["model"]["n_rows"] == 30522
    assert round(payload["weights"]["row_norm_all"]["mean"], 3) == 0.682
    assert payload["recommendation"]["k"] == 4  # docs/calibration.md: its best arm
    assert payload["probe"]["n_pairs"] == 16
    assert [s["k"] for s in payload["per_k"]] == [1, 2, 4, 8, 16, 32]
    assert "{" not in result.stderr
    # the report reads back into the typed record
    assert report_mod.from_dict(payload).weights.n_rows == 30522
    # ... and is remembered for a following `fix` without MODEL
    assert json.loads(state_file.read_text())["source"] == str(bert_tiny_dir)


def test_an_inspection_whose_json_was_not_written_is_not_remembered(runner, bert_tiny_dir,
                                                                       state_file, tmp_path,
                                                                       monkeypatch):
    """The issue's case: `inspect --json FILE` failed to write its report and still became the
    inspection an argument-less `fix` follows. It is recorded only after every output."""
    from headscope import fileio
    from headscope.errors import OutputWriteError

    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text("earlier record\n")
    dest = tmp_path / "report.json"
    write_text = fileio.write_text

    def full_disk(path, text, *args, **kwargs):
        if str(path) == str(dest):
            raise OutputWriteError(str(dest), "No space left on device")
        return write_text(path, text, *args, **kwargs)

    monkeypatch.setattr(fileio, "write_text", full_disk)
    result = runner.invoke(main, ["inspect", str(bert_tiny_dir), "--weights-only", "--json",
                                  str(dest)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: Cannot write {dest}")
    assert state_file.read_text() == "earlier record\n"  # not replaced by the failed run
    monkeypatch.setattr(fileio, "write_text", write_text)
    result = runner.invoke(main, ["inspect", str(bert_tiny_dir), "--weights-only", "--json",
                                  str(dest)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(state_file.read_text())["source"] == str(bert_tiny_dir)


def test_inspect_weights_only_json(runner, bert_tiny_dir):
    result = runner.invoke(main, ["inspect", str(bert_tiny_dir), "--weights-only", "--json", "-"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    validate(payload)
    assert payload["model"]["weights_only"] is True
    assert payload["per_k"] == []
    assert payload["probe"] is None
    assert round(payload["weights"]["row_norm_all"]["mean"], 3) == 0.682


def test_inspect_json_to_file_keeps_the_table_on_stdout(saved_inspection):
    out, result = saved_inspection
    payload = json.loads(out.read_text())
    validate(payload)
    assert round(payload["weights"]["row_norm_all"]["mean"], 3) == 0.682
    assert not result.stdout.lstrip().startswith("{")
    for heading in ("row norm (paper)", "Head weights", "Probe statistics per k", "Recommendation",
                    "k = 1"):
        assert heading in result.stdout
    assert f"JSON written to {out}" in result.stderr


def test_inspect_missing_path(runner, tmp_path, state_file):
    missing = tmp_path / "no-such-model"
    out = tmp_path / "r.json"
    result = runner.invoke(main, ["inspect", str(missing), "--json", str(out)])
    assert_refused(result, f"Checkpoint {str(missing)!r} was not found (no such directory, and not "
                   "a Hub id of the form org/name); pass a local directory or a Hub id that is in "
                   "the Hugging Face cache.")
    assert not out.exists()
    assert not state_file.exists()


def test_inspect_hub_id_not_in_cache(runner, tmp_path, monkeypatch):
    empty = tmp_path / "hf-cache"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(main, ["inspect", "acme/no-such-bert", "--weights-only"])
    assert_refused(result, "Model 'acme/no-such-bert' is not in the Hugging Face cache and the Hub "
                   "cannot be reached; download it where the network is available "
                   "(hf download acme/no-such-bert) or pass a local directory.")
    assert list(empty.iterdir()) == []


HEADLESS = ("has no trained MLM head: the checkpoint stores none of its bert head tensors "
            "(cls.predictions.bias, cls.predictions.transform.dense.weight, "
            "cls.predictions.transform.dense.bias and 2 more), so transformers {verb} them at "
            "random; pass a checkpoint saved with its masked-LM head.")


@pytest.mark.parametrize("weights_only", [False, True], ids=["loaded", "weights-only"])
def test_inspect_headless_bert_model(runner, tmp_path, state_file, weights_only):
    path = tiny_models.save_headless_bert(tmp_path / "headless")
    out = tmp_path / "r.json"
    args = ["inspect", str(path), "--json", str(out)] + (["--weights-only"] if weights_only else [])
    result = runner.invoke(main, args)
    # the loaded model's head was initialised; the weights-only reader says it would be
    verb = "would initialise" if weights_only else "initialised"
    assert_refused(result, f"{path} " + HEADLESS.format(verb=verb))
    assert not out.exists()
    assert not state_file.exists()


def test_inspect_checkpoint_whose_head_is_missing(runner, tmp_path):
    path = tiny_models.save_bert_without_head(tmp_path / "stripped")
    result = runner.invoke(main, ["inspect", str(path)])
    assert_refused(result, f"{path} " + HEADLESS.format(verb="initialised"))


def test_inspect_checkpoint_whose_head_is_partly_missing(runner, tmp_path):
    path = tiny_models.save_bert_without_head(tmp_path / "partial",
                                              strip="cls.predictions.transform.dense.")
    result = runner.invoke(main, ["inspect", str(path)])
    assert_refused(result, f"{path} has no trained MLM head: transformers newly initialised head "
                   "tensor(s) cls.predictions.transform.dense.weight, "
                   "cls.predictions.transform.dense.bias, so the head is partly random; pass a "
                   "checkpoint whose whole head was trained.")


def test_inspect_empty_probe_file(runner, tmp_checkpoint_bert, tmp_path, state_file):
    probe = tmp_path / "probe.txt"
    probe.write_text("\n  \n")
    out = tmp_path / "r.json"
    result = runner.invoke(main, ["inspect", str(tmp_checkpoint_bert), "--probe", str(probe),
                                  "--json", str(out)])
    assert_refused(result, f"Probe file {probe} is empty; put one text per line, or JSONL with "
                   '"text" or "query" and "passage".')
    assert not out.exists()
    assert not state_file.exists()


@pytest.fixture
def tmp_checkpoint_bert(tiny_checkpoint) -> Path:
    return tiny_checkpoint("bert")


def test_inspect_bad_ks_is_a_usage_error(runner, bert_tiny_dir):
    result = runner.invoke(main, ["inspect", str(bert_tiny_dir), "--ks", "1,0"])
    assert result.exit_code == 2
    assert "'1,0': every k must be a number >= 1 (k divides the head)" in result.stderr


# --------------------------------------------------------------------------------------------
# fix


def _logits(folder: Path, texts: list[str]):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForMaskedLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        return model(**enc).logits, model


TEXTS = ["the mlm head of a sparse retriever", "Rescaling divides the projection by k."]


def test_fix_writes_a_checkpoint_that_reloads_with_the_expected_logits(runner, bert_tiny_dir,
                                                                       tmp_path):
    out = tmp_path / "fixed"
    result = runner.invoke(main, ["fix", str(bert_tiny_dir), "--out", str(out), "--k", "4",
                                  "--n-pairs", FEW, "--json", "-"])
    assert result.exit_code == 0, result.stderr
    summary = valid("fix", json.loads(result.stdout))
    assert summary["k"] == 4.0 and summary["k_from"] == "--k"
    assert summary["needed"] is True and summary["written"] is True
    assert summary["changed_tensors"] == ["cls.predictions.decoder.weight"]
    assert summary["strategy"] == "untie" and summary["scale_bias"] is False
    assert summary["dry_run"] is False and summary["tied"] is False
    assert summary["out"] == str(out.resolve())
    assert sorted(summary["files"]) == sorted(p.name for p in out.iterdir())
    assert f"Fixing {bert_tiny_dir} with k = 4 (--k)." in result.stderr.splitlines()

    x, original = _logits(bert_tiny_dir, TEXTS)
    y, fixed = _logits(out, TEXTS)
    b = original.cls.predictions.bias.detach()  # (V,) the output bias, not divided by default
    expected = (x - b) / 4 + b
    assert torch.allclose(y, expected, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(y, x, atol=1e-2)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    provenance = json.loads((out / "headscope.json").read_text())
    assert str(bert_tiny_dir) in json.dumps(provenance)
    # the input embeddings are untouched; only the decoder got its own, divided, weight
    emb = original.get_input_embeddings().weight
    assert torch.equal(fixed.get_input_embeddings().weight, emb)
    assert torch.allclose(fixed.cls.predictions.decoder.weight, emb / 4)


def test_fix_dry_run_writes_nothing(runner, bert_tiny_dir, tmp_path):
    out = tmp_path / "fixed"
    result = runner.invoke(main, ["fix", str(bert_tiny_dir), "--out", str(out), "--k", "8",
                                  "--dry-run", "--n-pairs", FEW])
    assert result.exit_code == 0, result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["headscope-cache", "work"]
    assert "dry run: nothing written" in result.stdout


def test_fix_refuses_a_non_empty_out_without_overwrite(runner, bert_tiny_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = tree(out)
    result = runner.invoke(main, ["fix", str(bert_tiny_dir), "--out", str(out), "--k", "4",
                                  "--n-pairs", FEW])
    assert_refused(result, f"Output directory {out.resolve()} is not empty; pass --overwrite or "
                   "choose another --out.")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["headscope-cache", "taken", "work"]


def test_fix_refuses_an_out_inside_the_source(runner, bert_tiny_dir, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(bert_tiny_dir, src)
    before = tree(src)
    out = src / "fixed"
    result = runner.invoke(main, ["fix", str(src), "--out", str(out), "--k", "4",
                                  "--n-pairs", FEW])
    assert_refused(result, f"Output directory {out.resolve()} is the source checkpoint folder "
                   f"{src.resolve()} or inside it; choose an --out outside the source.")
    assert tree(src) == before


@pytest.mark.usefixtures("bands_default")
def test_fix_without_model_follows_the_last_inspection(runner, bert_tiny_dir, tmp_path,
                                                       state_file):
    # --ks without 1: the recommendation cannot be the default k = 1
    first = runner.invoke(main, ["inspect", str(bert_tiny_dir), "--n-pairs", FEW, "--ks", "2,4,8",
                                 "--json", "-"])
    assert first.exit_code == 0, first.stderr
    k = json.loads(first.stdout)["recommendation"]["k"]
    assert k in (2, 4, 8)
    assert json.loads(state_file.read_text())["k"] == k

    out = tmp_path / "followed"
    result = runner.invoke(main, ["fix", "--out", str(out), "--n-pairs", FEW, "--json", "-"])
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    said = [line for line in lines if line.startswith("No MODEL given")]
    assert said == [f"No MODEL given: acting on {bert_tiny_dir}, the model of the last "
                    f"`headscope inspect`, with k = {k:g} (last inspection's recommendation)."]
    summary = json.loads(result.stdout)
    assert summary["source"] == str(bert_tiny_dir)
    assert summary["k"] == k and summary["followed_last_inspection"] is True
    assert (out / "config.json").is_file()
    meta = json.loads((out / "headscope.json").read_text())
    assert str(bert_tiny_dir) in json.dumps(meta)


@pytest.mark.usefixtures("bands_default")
def test_fix_at_a_recommended_k_of_1_writes_nothing(runner, bert_tiny_dir, tmp_path):
    # BERT-tiny once fixed at its recommended k = 4 is inside every band unscaled: recommended
    # k = 1, so fixing it again is not needed.
    src = tmp_path / "fixed4"
    result = runner.invoke(main, ["fix", str(bert_tiny_dir), "--out", str(src), "--k", "4",
                                  "--no-scale-bias", "--n-pairs", FEW])
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "fixed"
    result = runner.invoke(main, ["fix", str(src), "--out", str(out), "--n-pairs", FEW,
                                  "--json", "-"])
    assert result.exit_code == 0, result.stderr
    note = (f"No fix needed: {src} is recommended k = 1 (recommended by the bands "
            "rule), so its head is left as it is and nothing was written. Pass --k K to rescale "
            "it anyway, or --force to write an unchanged copy.")
    assert note in result.stderr.splitlines()
    summary = valid("fix", json.loads(result.stdout))
    assert summary["needed"] is False and summary["written"] is False
    assert summary["k"] == 1.0 and summary["files"] == [] and summary["out"] is None
    assert summary["changed_tensors"] == [] and summary["note"] == note
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed4", "headscope-cache", "work"]
    # --force writes the copy, and calls no tensor changed: dividing by 1 changes nothing.
    result = runner.invoke(main, ["fix", str(src), "--out", str(out), "--n-pairs", FEW,
                                  "--force", "--json", "-"])
    assert result.exit_code == 0, result.stderr
    summary = valid("fix", json.loads(result.stdout))
    assert summary["written"] is True and summary["k"] == 1.0
    assert summary["changed_tensors"] == []
    assert summary["new_tensors"] == ["cls.predictions.decoder.weight"]  # untied, same values
    assert (out / "model.safetensors").is_file()
    # On a tied head, k = 1 unties the decoder and changes no value.
    result = runner.invoke(main, ["fix", str(bert_tiny_dir), "--out", str(tmp_path / "v"),
                                  "--n-pairs", FEW, "--k", "1"])
    assert result.exit_code == 0, result.stderr
    assert "changed: none; written separately, values unchanged: " \
           "cls.predictions.decoder.weight" in " ".join(result.stdout.split())


def test_fix_without_model_and_without_an_inspection(runner, tmp_path, state_file):
    out = tmp_path / "fixed"
    result = runner.invoke(main, ["fix", "--out", str(out)])
    assert_refused(result, "No model given and no earlier inspection to follow; pass MODEL, or run "
                   "`headscope inspect MODEL` first.")
    assert not out.exists()
    assert not state_file.exists()


def test_fix_bad_k(runner, bert_tiny_dir, tmp_path):
    out = tmp_path / "fixed"
    result = runner.invoke(main, ["fix", str(bert_tiny_dir), "--out", str(out), "--k", "0"])
    assert_refused(result, "k must be a finite number > 0, got 0.0; pass e.g. --k 8.")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# check


def test_check_report_passes_by_default(runner, bert_report):
    result = runner.invoke(main, ["check", "--report", str(bert_report)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "PASS"
    assert "require_head_loaded" in result.stdout and "fail_on" in result.stdout


def test_check_json_lists_every_rule(runner, bert_report):
    result = runner.invoke(main, ["check", "--report", str(bert_report), "--max-row-norm", "1",
                                  "--max-k", "2", "--max-start-loss", "0.5", "--json", "-"])
    assert result.exit_code == 1, result.stderr
    payload = valid("check", json.loads(result.stdout))
    assert payload["passed"] is False
    k = json.loads(bert_report.read_text())["recommendation"]["k"]
    assert payload["k"] == k
    rules = {r["name"]: r for r in payload["rules"]}
    assert list(rules) == ["require_head_loaded", "max_row_norm", "max_k", "max_start_loss",
                           "fail_on"]
    for r in payload["rules"]:
        assert set(r) == {"name", "threshold", "measured", "passed", "message"}
    assert rules["max_row_norm"]["threshold"] == 1.0
    assert round(rules["max_row_norm"]["measured"], 3) == 0.682
    assert rules["max_row_norm"]["passed"] is True
    assert rules["max_k"]["measured"] == k and rules["max_k"]["passed"] is False
    assert rules["max_start_loss"]["passed"] is False
    assert rules["max_start_loss"]["measured"] > 0.5
    assert rules["fail_on"]["threshold"] == "error" and rules["fail_on"]["passed"] is True
    assert payload["policy"]["source"] == "flags"


def test_check_model_fails_on_a_row_norm_limit(runner, bert_tiny_dir, tmp_path):
    out = tmp_path / "check.json"
    result = runner.invoke(main, ["check", str(bert_tiny_dir), "--max-row-norm", "0.5",
                                  "--n-pairs", FEW, "--json", str(out)])
    assert result.exit_code == 1, result.stderr
    assert "FAIL" in result.stdout
    assert "- The mean decoder row norm is 0.6819, above the limit 0.5." in result.stdout
    payload = json.loads(out.read_text())
    assert payload["source"] == str(bert_tiny_dir) and payload["passed"] is False
    failed = [r["name"] for r in payload["rules"] if not r["passed"]]
    assert failed == ["max_row_norm"]


def test_check_policy_file(runner, bert_report, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("max_row_norm = 0.6\nfail_on = ['warning']\n")
    result = runner.invoke(main, ["check", "--report", str(bert_report), "--policy", str(policy),
                                  "--json", "-"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["policy"]["source"] == str(policy)
    assert payload["policy"]["max_row_norm"] == 0.6
    # flags win over the file, key by key
    result = runner.invoke(main, ["check", "--report", str(bert_report), "--policy", str(policy),
                                  "--max-row-norm", "0.7", "--json", "-"])
    payload = json.loads(result.stdout)
    assert payload["policy"]["source"] == f"{policy} + flags"
    assert {r["name"]: r["passed"] for r in payload["rules"]}["max_row_norm"] is True


def test_check_policy_from_pyproject_in_the_working_directory(runner, bert_report):
    Path("pyproject.toml").write_text("[tool.headscope]\nmax_row_norm = 0.5\n")
    result = runner.invoke(main, ["check", "--report", str(bert_report), "--json", "-"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["policy"]["source"] == f"{Path.cwd() / 'pyproject.toml'} [tool.headscope]"
    assert payload["policy"]["max_row_norm"] == 0.5


def test_check_unknown_policy_key(runner, bert_report, tmp_path):
    from headscope.guard import POLICY_KEYS

    policy = tmp_path / "policy.toml"
    policy.write_text("max_rownorm = 1.0\n")
    result = runner.invoke(main, ["check", "--report", str(bert_report), "--policy", str(policy)])
    assert_refused(result, f"Unknown policy key 'max_rownorm' in {policy}; valid keys: "
                   f"{', '.join(POLICY_KEYS)}.")
    assert POLICY_KEYS[:2] == ("max_k", "max_row_norm")


def test_check_missing_model(runner, tmp_path):
    missing = tmp_path / "gone"
    result = runner.invoke(main, ["check", str(missing)])
    assert_refused(result, f"Checkpoint {str(missing)!r} was not found (no such directory, and not "
                   "a Hub id of the form org/name); pass a local directory or a Hub id that is in "
                   "the Hugging Face cache.")


def test_check_needs_model_or_report(runner, bert_report, bert_tiny_dir):
    message = "Pass either MODEL or --report R.json to check, not both or neither."
    assert_refused(runner.invoke(main, ["check"]), message)
    assert_refused(runner.invoke(main, ["check", str(bert_tiny_dir), "--report",
                                        str(bert_report)]), message)


def test_check_missing_report(runner, tmp_path):
    missing = tmp_path / "r.json"
    result = runner.invoke(main, ["check", "--report", str(missing)])
    assert_refused(result, f"Report file {missing} does not exist; pass the path of a report "
                   "written by headscope inspect --json.")


def _run_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "from headscope.cli import main; main()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_check_report_runs_without_torch(bert_report, tmp_path):
    """The contract of `check --report`: CI machines without torch can re-check saved reports."""
    passed = _run_without_torch(["check", "--report", str(bert_report)], tmp_path)
    assert passed.returncode == 0, passed.stderr
    assert "PASS" in passed.stdout
    failed = _run_without_torch(["check", "--report", str(bert_report), "--max-row-norm", "0.5",
                                 "--json", "-"], tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["passed"] is False


# --------------------------------------------------------------------------------------------
# demo, help, version


def test_demo_shows_the_real_model_and_the_labelled_simulation(runner):
    result = runner.invoke(main, ["demo", "--n-pairs", FEW])
    assert result.exit_code == 0, result.stderr
    assert "bert-tiny-splade (real)" in result.stdout
    assert "bert-tiny-splade SIMULATED dense (bias)" in result.stdout
    assert "Simulated large-head regime (not a real checkpoint)" in result.stdout
    out = " ".join(result.stdout.split())
    # the panel says why its numbers differ from the table's
    assert "the table below counts the tokens of the probe's queries too" in out
    # every finding code listed is explained, and the demo ends with what to run next
    import re

    from headscope.findings import FINDING_CODES

    codes = set(re.findall(r"HS\d{3}", out))
    assert codes  # the simulation has warnings
    for code in codes:
        assert f"{code} {FINDING_CODES[code].gist}" in out
    assert out.endswith("Every command and flag: headscope COMMAND --help, or docs/cli.md.")
    assert "headscope inspect MODEL measure its head and recommend k" in out
    # it says why scale matters and what k does, and names its own cached model to try first
    from headscope import assets
    from headscope.render import DEMO_WHY

    assert out.startswith(" ".join(" ".join(DEMO_WHY).split()))
    assert ("Try it first on the demo's real model, a local folder: headscope inspect "
            f"{assets.fetch('bert-tiny-splade')}") in out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(runner, command):
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    assert f" {command} [OPTIONS]" in result.stdout
    short = runner.invoke(main, [command, "-h"])
    assert short.stdout == result.stdout


def test_top_level_help_lists_every_command(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f"  {command} " in result.stdout
    assert set(commands()) == set(COMMANDS), "a new command needs tests and docs"


def test_version(runner):
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"headscope, version {__version__}\n"


def test_unknown_option_is_a_usage_error(runner):
    result = runner.invoke(main, ["inspect", "--no-such-flag", "x"])
    assert result.exit_code == 2
    assert "Error: No such option '--no-such-flag'." in result.stderr


# --------------------------------------------------------------------------------------------
# compare and report


def test_compare_saved_report_and_model_json(runner, bert_report, bert_tiny_dir):
    saved = json.loads(bert_report.read_text())
    result = runner.invoke(main, ["compare", str(bert_report), str(bert_tiny_dir),
                                  "--n-pairs", N_PAIRS, "--json", "-"])
    assert result.exit_code == 0, result.stderr
    rows = valid("compare", json.loads(result.stdout))["models"]
    assert [r["source"] for r in rows] == [saved["model"]["source"], str(bert_tiny_dir)]
    at1 = next(s for s in saved["per_k"] if s["k"] == 1.0)
    assert rows[0]["start_loss"] == at1["start_loss"]
    assert rows[0]["row_norm_mean"] == saved["weights"]["row_norm_all"]["mean"]
    assert rows[0]["recommended_k"] == saved["recommendation"]["k"]
    assert rows[1]["row_norm_mean"] == pytest.approx(0.682, abs=5e-4)


def test_compare_never_heads_two_columns_alike(runner, bert_tiny_dir, tmp_path):
    # A full and a weights-only report of one model, and the same report twice.
    full, weights = tmp_path / "full.json", tmp_path / "weights.json"
    for path, extra in ((full, ["--n-pairs", FEW]), (weights, ["--weights-only"])):
        result = runner.invoke(main, ["inspect", str(bert_tiny_dir), *extra, "--json",
                                      str(path)])
        assert result.exit_code == 0, result.stderr
    result = runner.invoke(main, ["compare", str(full), str(weights), str(full), "--json", "-"])
    assert result.exit_code == 0, result.stderr
    labels = [m["label"] for m in valid("compare", json.loads(result.stdout))["models"]]
    # saved reports are named by file (they were "bert-tiny-splade (probe) #1", ...)
    assert labels == ["full.json #1", "weights.json", "full.json #2"]
    table = runner.invoke(main, ["compare", str(full), str(weights)])
    header = next(line for line in table.stdout.splitlines() if "full.json" in line)
    assert "weights.json" in header and "bert-tiny-splade" not in header
    # two files of one name: their paths as given; a model beside them: its folder name
    other = tmp_path / "other"
    other.mkdir()
    (other / "full.json").write_text(full.read_text())
    result = runner.invoke(main, ["compare", str(full), str(other / "full.json"),
                                  str(bert_tiny_dir), "--n-pairs", FEW, "--json", "-"])
    assert result.exit_code == 0, result.stderr
    labels = [m["label"] for m in valid("compare", json.loads(result.stdout))["models"]]
    assert labels == [str(full), str(other / "full.json"), "bert-tiny-splade"]
    # models (no saved-report sources): one model's reports differ by what they measured
    from headscope import api, report

    reports = (report.read_json(full), report.read_json(weights), report.read_json(full))
    assert api.compare_labels(reports) == (
        "bert-tiny-splade (probe) #1", "bert-tiny-splade (weights only)",
        "bert-tiny-splade (probe) #2")


def test_compare_inspects_on_the_probe_file_given(runner, tmp_checkpoint_bert, tmp_path):
    """compare --probe FILE measures each model on FILE's texts, as inspect --probe does (it was
    accepted and ignored)."""
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps({"query": f"what is topic {i}",
                                         "passage": f"Topic {i} is a subject of study number {i}."})
                             + "\n" for i in range(8)))
    inspected = runner.invoke(main, ["inspect", str(tmp_checkpoint_bert), "--probe", str(probe),
                                     "--json", "-"])
    builtin = runner.invoke(main, ["inspect", str(tmp_checkpoint_bert), "--n-pairs", "8",
                                   "--json", "-"])
    compared = runner.invoke(main, ["compare", str(tmp_checkpoint_bert), "--probe", str(probe),
                                    "--json", "-"])
    for result in (inspected, builtin, compared):
        assert result.exit_code == 0, result.stderr
    at1 = {name: next(s for s in json.loads(r.stdout)["per_k"] if s["k"] == 1.0)["start_loss"]
           for name, r in (("file", inspected), ("builtin", builtin))}
    assert at1["file"] != at1["builtin"]
    row = valid("compare", json.loads(compared.stdout))["models"][0]
    assert row["start_loss"] == at1["file"]


def test_compare_needs_a_source(runner):
    result = runner.invoke(main, ["compare"])
    assert result.exit_code == 2
    assert "Missing argument 'SOURCES...'" in result.stderr


def test_report_writes_html_and_markdown(runner, bert_report, tmp_path):
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    result = runner.invoke(main, ["report", str(bert_report), "--html", str(html),
                                  "--md", str(md)])
    assert result.exit_code == 0, result.stderr
    saved = json.loads(bert_report.read_text())
    page = html.read_text()
    assert "k = " + format(saved["recommendation"]["k"], "g") in page
    assert "http" not in page.replace("http-equiv", "")
    assert md.read_text().count("\n| ") >= len(saved["per_k"])
    assert f"wrote {html}" in result.stderr


def test_report_with_a_missing_folder_writes_nothing(runner, bert_report, tmp_path):
    # The whole command is refused before anything is written: not even the --html asked for
    # (a refused command writes nothing).
    html, md = tmp_path / "r.html", tmp_path / "missing" / "r.md"
    result = runner.invoke(main, ["report", str(bert_report), "--html", str(html),
                                  "--md", str(md)])
    assert_refused(result, f"Cannot write {md}: folder {md.parent} does not exist; create it or "
                   "choose another path.")
    assert not html.exists() and not md.parent.exists()


def test_report_needs_an_output(runner, bert_report):
    result = runner.invoke(main, ["report", str(bert_report)])
    assert_refused(result, "Pass --html OUT.html and/or --md OUT.md to say what to write.")


@pytest.mark.usefixtures("bands_default")
def test_inspect_band_override_changes_the_recommendation(runner, bert_tiny_dir):
    # BERT-tiny's start loss on the probe is ~1.5 at every k; a band it cannot meet at k = 1
    # but meets at larger k (term weights shrink with k) moves the recommendation.
    result = runner.invoke(main, ["inspect", str(bert_tiny_dir), "--n-pairs", N_PAIRS,
                                  "--band", "term_weight_mean=:0.3", "--json", "-"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    rec = payload["recommendation"]
    band = next(b for b in rec["bands"] if b["metric"] == "term_weight_mean")
    assert (band["low"], band["high"]) == (None, 0.3)
    first_ok = min(s["k"] for s in payload["per_k"] if s["term_weight_mean"] <= 0.3)
    assert rec["k"] == first_ok > 1


def test_inspect_bad_band_is_a_usage_error(runner, bert_tiny_dir):
    result = runner.invoke(main, ["inspect", str(bert_tiny_dir), "--band", "start_loss"])
    assert result.exit_code == 2
    assert "'start_loss' is not METRIC=LOW:HIGH (e.g. start_loss=:50)" in result.stderr


@pytest.mark.usefixtures("bands_default")
def test_fix_k_without_a_bias_choice_on_a_bias_dividing_recommendation_exits_2(runner,
                                                                                tmp_path):
    model = tiny_models.build_tiny("bert")
    with torch.no_grad():
        model.cls.predictions.bias.fill_(200.0)  # activity in the bias: it must be divided
    src = tmp_path / "bias-dense"
    model.save_pretrained(str(src))
    tiny_models.write_tokenizer(src)
    out = tmp_path / "fixed"
    result = runner.invoke(main, ["fix", str(src), "--out", str(out), "--k", "4",
                                  "--n-pairs", FEW])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: The recommendation for {src} divides the output bias too (k = 32 with "
        "--scale-bias); with --k 4, say which: --scale-bias (bias divided by k too, as "
        "recommended) or --no-scale-bias (projection only)."]
    assert result.stdout == "" and not out.exists()
    result = runner.invoke(main, ["fix", str(src), "--out", str(out), "--k", "4",
                                  "--no-scale-bias", "--n-pairs", FEW, "--json", "-"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["scale_bias"] is False
