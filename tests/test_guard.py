"""guard: policy loading (flags, TOML, pyproject discovery), rule evaluation, torch-free check."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from headscope.errors import PolicyError
from headscope.findings import diagnose
from headscope.guard import POLICY_KEYS, Policy, RuleResult, evaluate, load_policy
from headscope.recommend import Band, recommend
from headscope.report import ModelInfo, make_report, write_json
from headscope.stats import KStats, Summary, WeightStats

KEYS = ", ".join(POLICY_KEYS)


def kstats(k: float, start: float, active_share: float = 0.005) -> KStats:
    return KStats(
        k=k,
        logit_p01=-20.0,
        logit_p50=-5.0,
        logit_p99=8.0,
        frac_positive=0.002,
        term_weight_mean=6.0 / k,
        term_weight_max=12.0 / k,
        share_above_5=0.5 if k < 4 else 0.0,
        active_query=40.0,
        active_passage=150.0,
        active_query_share=40 / 30522,
        active_passage_share=active_share,
        cosine_unrelated=0.95 if k < 4 else 0.8,
        score_pos=start * 3,
        score_neg=start,
        start_loss=start,
    )


WEIGHTS = WeightStats(
    Summary(2.5, 2.5, 3.0, 4.0, 0.5, 30522),
    Summary(2.5, 2.5, 3.0, 4.0, 0.5, 30522),
    30522,
    30522,
    128,
    0.0,
    0.25,
    11.25,
    0.5,
    3.0,
)
MODEL = ModelInfo(
    "prajjwal1/bert-tiny",
    None,
    "bert",
    "bert",
    "BertForMaskedLM",
    "float32",
    "cpu",
    30522,
    30522,
    128,
    False,
    True,
    ("[CLS]", "[SEP]"),
    False,
)
PER_K = (kstats(1.0, 279.0), kstats(4.0, 30.0), kstats(16.0, 7.0))
# The policy mechanics are tested against a fixed band set (the defaults before the calibration
# of docs/calibration.md), so that recalibrating DEFAULT_BANDS does not change these cases.
GUARD_BANDS = (
    Band("share_above_5", None, 0.01, "test"),
    Band("start_loss", None, 150.0, "test"),
    Band("term_weight_mean", 0.08, 2.5, "test"),
    Band("score_pos", None, 1000.0, "test"),
)


def report(per_k=PER_K, model=MODEL, weights=WEIGHTS):
    vocab = {"n_rows": 30522, "n_tokenizer": 30522, "head_loaded": model.head_loaded}
    return make_report(
        model,
        weights,
        per_k=per_k,
        findings=diagnose(weights, per_k, vocab),
        recommendation=recommend(per_k, weights=weights, bands=GUARD_BANDS),
        created="2026-07-01T12:00:00Z",
    )


@pytest.mark.usefixtures("bands_default")
def test_default_policy_passes_healthy_report():
    r = report()
    assert r.recommendation.k == 4.0  # k = 4 is the smallest k inside every band
    result = evaluate(r, Policy())
    assert result.passed and result.k == 4.0
    assert [x.name for x in result.rules] == ["require_head_loaded", "fail_on"]
    assert result.rules[1] == RuleResult(
        "fail_on", "error", "none", True, "No finding matches fail_on (error)."
    )


@pytest.mark.usefixtures("bands_default")
def test_thresholds_pass_and_fail_with_numbers():
    policy = Policy(max_k=8, max_row_norm=2.0, max_start_loss=40.0, max_cosine_unrelated=0.9)
    result = evaluate(report(), policy)
    assert not result.passed
    by_name = {x.name: x for x in result.rules}
    assert by_name["max_row_norm"] == RuleResult(
        "max_row_norm", 2.0, 2.5, False, "The mean decoder row norm is 2.5, above the limit 2."
    )
    assert by_name["max_k"].passed and by_name["max_k"].message == (
        "The recommended k is 4, within the limit 8."
    )
    assert by_name["max_start_loss"].message == (
        "The start loss at k = 4 is 30, within the limit 40."
    )
    assert by_name["max_cosine_unrelated"].passed
    assert [x.name for x in result.failed] == ["max_row_norm"]


@pytest.mark.usefixtures("bands_default")
def test_every_rule_switched_on_is_listed_in_table_order_with_the_one_number_format():
    from headscope.guard import CHECK_RULES

    policy = Policy(max_k=8, max_row_norm=2.0, max_start_loss=12000.0,
                    max_active_passage_share=0.5, max_cosine_unrelated=0.9,
                    max_share_above_5=0.01, require_probe=True, require_passing_k=True)
    result = evaluate(report(), policy)
    switched_off = {"at_k", "ignore"}  # not rules: they say where and what the rules read
    assert sorted(key for key, _ in CHECK_RULES) == sorted(k for k in POLICY_KEYS
                                                     if k not in switched_off)
    assert [r.name for r in result.rules] == [key for key, _ in CHECK_RULES]
    # a limit of 12,000 is shown as the tables show it, not as 1.2e+04
    assert result.rules[4].message == "The start loss at k = 4 is 30, within the limit 12,000."
    # False and None switch a rule off; so does an empty fail_on
    off = evaluate(report(), Policy(require_head_loaded=False, fail_on=()))
    assert off.rules == () and off.passed


def test_at_k_reads_another_k_and_reports_missing_k():
    result = evaluate(report(), Policy(max_start_loss=5.0, at_k=16))
    assert result.k == 16.0
    assert result.rules[-2].message == "The start loss at k = 16 is 7, above the limit 5."
    result = evaluate(report(), Policy(max_start_loss=5.0, at_k=8))
    rule = next(x for x in result.rules if x.name == "max_start_loss")
    assert rule == RuleResult(
        "max_start_loss",
        5.0,
        None,
        False,
        "Cannot check start loss: the report has no statistics at k = 8 (measured: 1, 4, 16).",
    )


@pytest.mark.usefixtures("bands_default")
def test_weights_only_report_against_probe_rules():
    r = report(per_k=(), model=replace(MODEL, weights_only=True))
    assert r.recommendation.rule == "paper" and r.recommendation.k == 16.0
    result = evaluate(
        r, Policy(require_probe=True, max_active_passage_share=0.1, require_passing_k=True)
    )
    messages = {x.name: x.message for x in result.failed}
    assert messages == {
        "require_probe": "The report is weights-only; run headscope inspect with a probe.",
        "max_active_passage_share": "Cannot check active passage share: the report is "
        "weights-only (no probe statistics).",
        "require_passing_k": "Cannot check the bands: the report has no per-k verdicts "
        "(weights-only or no recommendation).",
    }


def test_fail_on_severity_code_and_ignore():
    r = report()  # findings: HS101 (warning), HS202, HS203, HS204 (warnings at k = 1)
    assert [f.code for f in r.findings] == ["HS101", "HS202", "HS203", "HS204"]
    result = evaluate(r, Policy(fail_on=("warning",), ignore=("HS202", "HS203")))
    rule = result.rules[-1]
    assert not result.passed and rule.measured == "HS101, HS204"
    assert rule.message == (
        "Findings that fail the check: HS101 large-head-scale (warning), HS204 high-start-loss "
        "(warning)."
    )
    assert evaluate(r, Policy(fail_on=("HS104",))).passed


def test_missing_head_fails_twice():
    r = report(model=replace(MODEL, head_loaded=False))
    result = evaluate(r)
    assert not result.passed
    assert [x.name for x in result.failed] == ["require_head_loaded", "fail_on"]
    assert result.failed[1].measured == "HS104"


def test_nan_measurement_fails():
    per_k = (kstats(1.0, math.nan), kstats(4.0, 30.0))
    result = evaluate(report(per_k=per_k), Policy(max_start_loss=50.0, at_k=1))
    rule = next(x for x in result.rules if x.name == "max_start_loss")
    assert not rule.passed
    assert rule.message == "The start loss at k = 1 was not measured (NaN); it must be at most 50."


def test_check_result_to_dict_is_strict_json():
    per_k = (kstats(1.0, math.nan), kstats(4.0, 30.0))
    result = evaluate(report(per_k=per_k), Policy(max_start_loss=50.0, at_k=1))
    data = result.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["rules"][-2]["measured"] is None
    assert data["passed"] is False and data["k"] == 1.0
    assert data["policy"]["fail_on"] == ["error"] and data["policy"]["source"] == "defaults"


# --------------------------------------------------------------------------------------------
# Loading


def test_load_policy_from_toml_file_then_flags(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('max_k = 16\nfail_on = ["warning", "HS104"]\nrequire_probe = true\n')
    policy = load_policy(path, overrides={"max_k": 8, "ignore": "HS101,HS202"})
    assert policy == Policy(
        max_k=8.0,
        require_probe=True,
        fail_on=("warning", "HS104"),
        ignore=("HS101", "HS202"),
        source=f"{path} + flags",
    )
    assert isinstance(policy.max_k, float)


def test_pyproject_discovery_from_a_subdirectory(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent("""
        [project]
        name = "x"

        [tool.headscope]
        max_row_norm = 3.0
        max_k = 32

        [tool.headscope.check]
        max_k = 16
        require_passing_k = true
    """)
    )
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    policy = load_policy(search_dir=sub)
    assert (policy.max_row_norm, policy.max_k, policy.require_passing_k) == (3.0, 16.0, True)
    assert policy.source == f"{tmp_path / 'pyproject.toml'} [tool.headscope]"


def test_pyproject_without_table_gives_defaults(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_policy(search_dir=tmp_path) == Policy()


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("max_kk = 16\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(err.value) == f"Unknown policy key 'max_kk' in {path}; valid keys: {KEYS}."
    with pytest.raises(PolicyError) as err:
        load_policy(overrides={"source": "me"})
    assert str(err.value) == f"Unknown policy key 'source' in flags; valid keys: {KEYS}."


def test_unknown_key_in_pyproject_check_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.headscope.check]\nmax_loss = 3\n")
    with pytest.raises(PolicyError) as err:
        load_policy(search_dir=tmp_path)
    assert str(err.value) == (
        f"Unknown policy key 'max_loss' in {tmp_path / 'pyproject.toml'} "
        f"[tool.headscope.check]; valid keys: {KEYS}."
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            'max_k = "16"',
            "Policy key 'max_k' in {p} must be a finite number, got str '16'; "
            "valid keys: " + KEYS + ".",
        ),
        (
            "max_k = true",
            "Policy key 'max_k' in {p} must be a finite number, got bool True; "
            "valid keys: " + KEYS + ".",
        ),
        (
            "require_probe = 1",
            "Policy key 'require_probe' in {p} must be true or false, got int "
            "1; valid keys: " + KEYS + ".",
        ),
        (
            "fail_on = [1]",
            "Policy key 'fail_on' in {p} must be a list of strings, got list [1]; "
            "valid keys: " + KEYS + ".",
        ),
        (
            'fail_on = ["fatal"]',
            "Policy key 'fail_on' in {p} has entry 'fatal'; use info, "
            "warning, error or a finding code (HS101, HS102, HS103, HS104, "
            "HS201, HS202, HS203, HS204, HS205, HS206, HS207, HS208, HS209, "
            "HS301, HS302, HS303, HS304, HS305, HS306).",
        ),
        (
            'ignore = ["warning"]',
            "Policy key 'ignore' in {p} has entry 'warning'; use a finding "
            "code (HS101, HS102, HS103, HS104, HS201, HS202, HS203, HS204, "
            "HS205, HS206, HS207, HS208, HS209, HS301, HS302, HS303, HS304, HS305, "
            "HS306).",
        ),
    ],
)
def test_wrong_type_word_for_word(tmp_path, toml, message):
    path = tmp_path / "policy.toml"
    path.write_text(toml + "\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(err.value) == message.format(p=path)


def test_missing_and_invalid_policy_files(tmp_path):
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "none.toml")
    assert str(err.value) == (
        f"Policy file {tmp_path / 'none.toml'} does not exist; pass an existing TOML file or "
        "omit --policy to use [tool.headscope] in pyproject.toml."
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("max_k = \n")
    with pytest.raises(PolicyError) as err:
        load_policy(bad)
    assert str(err.value).startswith(f"Policy file {bad} is not valid TOML (")


# --------------------------------------------------------------------------------------------
# No torch


@pytest.mark.usefixtures("bands_default")
def test_check_works_with_torch_blocked(tmp_path):
    path = tmp_path / "r.json"
    write_json(report(), path)
    child = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None          # any import of torch now raises ImportError
        sys.modules["transformers"] = None
        from headscope.guard import Policy, evaluate
        from headscope.report import read_json
        result = evaluate(read_json({str(path)!r}), Policy(max_k=2))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")
                        and sys.modules[m] is not None)
        print(json.dumps({{"passed": result.passed, "k": result.k, "loaded": loaded}}))
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"passed": False, "k": 4.0, "loaded": []}
