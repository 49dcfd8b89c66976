"""report: schema validation of a realistic report, exact round trips, strict reading."""

from __future__ import annotations

import io
import json
import math
from dataclasses import fields, replace

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headscope import __version__
from headscope.calibrated import DomainEvidence, ModelEvidence, TiedArm
from headscope.errors import ReportError
from headscope.findings import Finding, diagnose
from headscope.recommend import Band, KVerdict, Recommendation, recommend
from headscope.report import (
    HASH_FIELD,
    RANGES,
    SCHEMA_VERSION,
    ModelInfo,
    ProbeSummary,
    Report,
    content_sha256,
    dumps,
    from_dict,
    loads,
    make_report,
    read_json,
    schema,
    to_dict,
    write_json,
)
from headscope.stats import Histogram, KStats, Summary, WeightStats

CREATED = "2026-07-01T12:00:00Z"


def kstats(k: float, start: float, score: float, twm: float, cos: float) -> KStats:
    return KStats(
        k=k,
        logit_p01=-31.5 / k,
        logit_p50=-6.25 / k,
        logit_p99=11.0 / k,
        frac_positive=0.0031,
        term_weight_mean=twm,
        term_weight_max=3 * twm,
        share_above_5=0.0 if k > 4 else 0.04,
        active_query=41.5,
        active_passage=187.25,
        active_query_share=41.5 / 50368,
        active_passage_share=187.25 / 50368,
        cosine_unrelated=cos,
        score_pos=score,
        score_neg=score / 4,
        start_loss=start,
    )


WEIGHTS = WeightStats(
    row_norm_all=Summary(2.553124, 2.5, 3.75, 5.125, 0.0625, 50368),
    row_norm_real=Summary(2.56, 2.5, 3.75, 5.125, 0.5, 50285),
    n_rows=50368,
    n_real_rows=50285,
    hidden_size=768,
    bias_mean=-1.25,
    bias_std=0.5,
    norm_weight_l2=27.75,
    norm_bias_l2=None,
    dense_spectral_norm=14.5,
)
MODEL = ModelInfo(
    source="answerdotai/ModernBERT-base",
    revision="8949b909ec900327062f0ebf497f51aef5e6f0c8",
    model_type="modernbert",
    family="modernbert",
    architecture="ModernBertForMaskedLM",
    dtype="float32",
    device="cpu",
    n_rows=50368,
    n_tokenizer=50285,
    hidden_size=768,
    tied=True,
    head_loaded=True,
    special_tokens=("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]"),
    weights_only=False,
)
PROBE = ProbeSummary(
    name="stdlib",
    version="stdlib-v1",
    sha256="ab" * 32,
    n_pairs=256,
    ks=(1.0, 4.0, 16.0),
    batch_size=16,
    max_query_length=32,
    max_passage_length=128,
    scale_bias=False,
)
PER_K = (
    kstats(1.0, 279.0, 900.0, 3.75, 0.97),
    kstats(4.0, 50.0, 150.0, 2.25, 0.92),
    kstats(16.0, 7.0, 20.0, 0.875, 0.8),
)


def realistic() -> Report:
    findings = diagnose(WEIGHTS, PER_K, {"n_rows": 50368, "n_tokenizer": 50285, "tied": True})
    return make_report(
        MODEL,
        WEIGHTS,
        probe=PROBE,
        per_k=PER_K,
        findings=findings,
        recommendation=recommend(PER_K, weights=WEIGHTS),
        created=CREATED,
    )


def weights_only() -> Report:
    return make_report(
        replace(MODEL, weights_only=True, tied=False),
        WEIGHTS,
        findings=diagnose(WEIGHTS),
        recommendation=recommend((), weights=WEIGHTS),
        created=CREATED,
    )


def test_realistic_report_contents():
    report = realistic()
    assert report.schema_version == SCHEMA_VERSION == 2
    assert report.headscope_version == __version__
    assert report.recommendation is not None and report.recommendation.k == 16.0
    assert [f.code for f in report.findings] == [
        "HS101",
        "HS102",
        "HS103",
        "HS202",
        "HS203",
        "HS204",
    ]


@pytest.mark.parametrize("build", [realistic, weights_only])
def test_report_validates_against_shipped_schema(build):
    validator = jsonschema.Draft202012Validator(schema())
    data = json.loads(dumps(build()))
    validator.validate(data)


def test_schema_names_exactly_the_dataclass_fields():
    defs = schema()["$defs"]
    pairs = {
        "summary": Summary,
        "weight_stats": WeightStats,
        "k_stats": KStats,
        "model_info": ModelInfo,
        "probe_summary": ProbeSummary,
        "finding": Finding,
        "band": Band,
        "k_verdict": KVerdict,
        "recommendation": Recommendation,
        "model_evidence": ModelEvidence,
        "domain_evidence": DomainEvidence,
        "tied_arm": TiedArm,
    }
    for name, cls in pairs.items():
        names = [f.name for f in fields(cls)]
        assert list(defs[name]["properties"]) == names, name
        assert defs[name]["required"] == names, name
    assert list(schema()["properties"]) == [f.name for f in fields(Report)] + [HASH_FIELD]
    assert schema()["required"] == [f.name for f in fields(Report)] + [HASH_FIELD]


def test_schema_rejects_unknown_field_and_wrong_version():
    validator = jsonschema.Draft202012Validator(schema())
    data = to_dict(realistic())
    data["model"]["colour"] = "red"
    assert not validator.is_valid(data)
    data = to_dict(realistic())
    data["schema_version"] = 3
    assert not validator.is_valid(data)


@pytest.mark.parametrize("build", [realistic, weights_only])
def test_round_trip_equality(build, tmp_path):
    report = build()
    assert from_dict(to_dict(report)) == report
    path = tmp_path / "r.json"
    write_json(report, path)
    assert read_json(path) == report
    assert path.read_text() == dumps(report)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_write_to_stream_and_stdout(capsys):
    buf = io.StringIO()
    write_json(realistic(), buf)
    assert loads(buf.getvalue()) == realistic()
    write_json(realistic(), "-")
    assert capsys.readouterr().out == buf.getvalue()


def test_json_text_is_pinned():
    # The format is ours: pin the bytes of one small record.
    verdict = KVerdict(4.0, ("start_loss",))
    assert json.dumps(to_dict(verdict)) == '{"k": 4.0, "failed": ["start_loss"]}'
    text = dumps(realistic())
    assert text.startswith('{\n  "schema_version": 2,\n  "headscope_version": "')
    assert text.endswith("}\n")
    assert '"created": "2026-07-01T12:00:00Z"' in text


def test_non_finite_floats_are_written_as_null():
    nan_k = replace(PER_K[0], term_weight_mean=math.nan, start_loss=math.inf)
    report = replace(realistic(), per_k=(nan_k,) + PER_K[1:])
    text = dumps(report)
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["per_k"][0]["term_weight_mean"] is None
    assert data["per_k"][0]["start_loss"] is None
    jsonschema.Draft202012Validator(schema()).validate(data)
    back = loads(text)
    assert math.isnan(back.per_k[0].term_weight_mean)
    assert math.isnan(back.per_k[0].start_loss)  # infinity comes back as NaN (documented)
    assert back.weights.norm_bias_l2 is None  # an optional float stays None


def seal(data: dict) -> dict:
    """`data` with its content hash recomputed: an edit made by someone who also rewrote the
    hash (so that only the reader's other checks can catch it)."""
    data[HASH_FIELD] = content_sha256(data)
    return data


def _with(path: str, value, *, delete: bool = False, sealed: bool = True) -> dict:
    data = to_dict(realistic())
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return seal(data) if sealed else data


REMEDY = "re-create the report with headscope inspect --json"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _with("schema_version", 3),
            f"Report r.json has schema_version 3, but headscope {__version__} reads "
            f"schema_version 2; {REMEDY} or use the headscope that wrote it.",
        ),
        (
            _with("schema_version", True),
            f"Report r.json has schema_version True, but headscope {__version__} reads "
            f"schema_version 2; {REMEDY} or use the headscope that wrote it.",
        ),
        (
            _with("schema_version", 1),
            "Report r.json has schema_version 1, written before reports carried a content hash "
            f"and range-checked numbers; headscope {__version__} reads schema_version 2: "
            f"{REMEDY}.",
        ),
        (
            _with(HASH_FIELD, None, delete=True, sealed=False),
            f"Report r.json has no content_sha256, which every report headscope writes carries; "
            f"{REMEDY}.",
        ),
        (
            _with("recommendation.k", 1.0, sealed=False),
            "Report r.json was edited after it was written: its content does not match its "
            f"content_sha256; {REMEDY} rather than editing it.",
        ),
        (
            _with("schema_version", None, delete=True),
            "Report r.json has no schema_version, so it was not written by headscope; pass a "
            "file written by headscope inspect --json.",
        ),
        (
            _with("model.n_rows", None, delete=True),
            f"Report r.json is missing field 'model.n_rows'; {REMEDY}.",
        ),
        (
            _with("model.colour", "red"),
            f"Report r.json has unknown field 'model.colour'; remove it or {REMEDY}.",
        ),
        (
            _with("model.n_rows", "50368"),
            f"Report r.json field 'model.n_rows' must be an integer, got a string '50368'; "
            f"{REMEDY}.",
        ),
        (
            _with("model.tied", 1),
            f"Report r.json field 'model.tied' must be true or false, got a number 1; {REMEDY}.",
        ),
        (
            _with("per_k.1.start_loss", "high"),
            f"Report r.json field 'per_k[1].start_loss' must be a number, got a string 'high'; "
            f"{REMEDY}.",
        ),
        (
            _with("findings.0.severity", "fatal"),
            f"Report r.json field 'findings[0].severity' must be one of info, warning, error, "
            f"got 'fatal'; {REMEDY}.",
        ),
        (
            _with("recommendation.passing", 16.0),
            f"Report r.json field 'recommendation.passing' must be a list, got a number 16.0; "
            f"{REMEDY}.",
        ),
        (
            _with("weights.row_norm_all", [1, 2]),
            f"Report r.json field 'weights.row_norm_all' must be an object, got a list; {REMEDY}.",
        ),
    ],
)
def test_from_dict_errors_word_for_word(data, message):
    with pytest.raises(ReportError) as err:
        from_dict(data, source="r.json")
    assert str(err.value) == message


def test_from_dict_accepts_int_for_float_and_null_for_optional():
    data = _with("per_k.0.k", 1)
    assert from_dict(data).per_k[0].k == 1.0
    data = _with("probe", None)
    assert from_dict(data).probe is None
    data = _with("model.architecture", None)  # configs without "architectures"
    jsonschema.Draft202012Validator(schema()).validate(data)
    assert from_dict(data).model.architecture is None


def test_read_json_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ReportError) as err:
        read_json(missing)
    assert str(err.value) == (
        f"Report file {missing} does not exist; pass the path of a report written by headscope "
        "inspect --json."
    )
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1,\n  oops}')
    with pytest.raises(ReportError) as err:
        read_json(bad)
    assert str(err.value) == (
        f"Report {bad} is not valid JSON (Expecting property name enclosed in double quotes at "
        "line 2 column 3); pass a file written by headscope inspect --json."
    )
    nan = tmp_path / "nan.json"
    nan.write_text(dumps(realistic()).replace('"start_loss": 7.0', '"start_loss": NaN'))
    with pytest.raises(ReportError) as err:
        read_json(nan)
    assert str(err.value) == (
        f"Report {nan} is not valid JSON (NaN is not valid JSON); pass a file written by "
        "headscope inspect --json."
    )
    with pytest.raises(ReportError) as err:
        loads("[1, 2]")
    assert str(err.value) == (
        "Report must be a JSON object, got a list; pass a file written by headscope inspect --json."
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=15, max_size=15))
def test_round_trip_any_finite_floats(values):
    names = [f.name for f in fields(KStats) if f.type in (float, "float") and f.name != "k"
             and f.name != "frac_positive_se"]
    # Each value moved into its field's range (a share folded into [0, 1], a norm made >= 0).
    ranges = RANGES[KStats]
    inside = {}
    for name, v in zip(names, values, strict=True):
        rng = ranges.get(name)
        if rng is not None and rng.low is not None:
            v = abs(v)
        if rng is not None and rng.high is not None:
            v = v / (1 + v)
        inside[name] = v
    per_k = (KStats(k=1.0, **inside),)
    report = replace(realistic(), per_k=per_k)
    assert loads(dumps(report)) == report


def test_probe_summary_from_a_probe_result_like_object():
    from types import SimpleNamespace

    config = SimpleNamespace(
        ks=(1, 4, 16),
        batch_size=16,
        max_query_length=32,
        max_passage_length=128,
        scale_bias=False,
        n_pairs=256,
        sample_size=65536,
        seed=0,
    )
    result = SimpleNamespace(
        probe_name="stdlib",
        probe_version="stdlib-v1",
        probe_sha256="ab" * 32,
        n_pairs=256,
        config=config,
        per_k=PER_K,
    )
    assert ProbeSummary.from_result(result) == PROBE


def test_a_report_written_before_the_frac_positive_fields_still_reads():
    """frac_positive_exact and frac_positive_se were added with defaults (exact, 0): a report
    without them reads as exact; any other missing field is still refused."""
    data = json.loads(dumps(realistic()))
    for row in data["per_k"]:
        del row["frac_positive_exact"], row["frac_positive_se"]
    old = from_dict(seal(data))
    assert all(s.frac_positive_exact and s.frac_positive_se == 0.0 for s in old.per_k)
    assert old.per_k == realistic().per_k
    del data["per_k"][0]["start_loss"]
    with pytest.raises(ReportError, match=r"is missing field 'per_k\[0\]\.start_loss'"):
        from_dict(seal(data))


# --------------------------------------------------------------------------------------------
# A report cannot be edited into a pass: ranges (schema and reader) and the content hash

# Schema $defs name of every record with ranged fields.
_DEFS = {ModelInfo: "model_info", Summary: "summary", Histogram: "histogram",
         WeightStats: "weight_stats", ProbeSummary: "probe_summary", KStats: "k_stats",
         KVerdict: "k_verdict", Recommendation: "recommendation",
         DomainEvidence: "domain_evidence", TiedArm: "tied_arm"}


def test_schema_states_exactly_the_reader_ranges():
    defs = schema()["$defs"]
    assert set(RANGES) == set(_DEFS)
    for cls, name in _DEFS.items():
        for f in fields(cls):
            node = defs[name]["properties"][f.name]
            if node.get("type") == "array":
                node = node["items"]
            rng = RANGES[cls].get(f.name)
            assert node.get("minimum") == (None if rng is None else rng.low), (name, f.name)
            assert node.get("maximum") == (None if rng is None else rng.high), (name, f.name)
            if rng is not None and rng.finite:
                assert node["type"] in ("number", "integer"), (name, f.name)  # null refused


@pytest.mark.parametrize(
    ("path", "value", "shown", "range_text"),
    [
        ("recommendation.k", -4, "-4", "a finite number >= 1"),
        ("recommendation.k", 0, "0", "a finite number >= 1"),
        ("recommendation.k", None, "null", "a finite number >= 1"),  # null would read as NaN
        ("recommendation.passing", [0.5], "0.5", "a finite number >= 1"),
        ("model.n_rows", -1, "-1", "an integer >= 0"),
        ("weights.row_norm_all.mean", -0.1, "-0.1", "a number >= 0 or null"),
        ("per_k.0.active_passage_share", 1.5, "1.5", "a number between 0 and 1 or null"),
        ("per_k.1.k", 0.25, "0.25", "a finite number >= 1"),
        ("per_k.2.start_loss", -3.0, "-3.0", "a number >= 0 or null"),
        ("probe.batch_size", 0, "0", "an integer >= 1"),
        ("per_k.0.frac_positive_se", -1e-3, "-0.001", "a number >= 0 or null"),
    ],
)
def test_a_number_out_of_range_is_refused_naming_the_field(path, value, shown, range_text):
    data = _with(path, value)  # the hash rewritten too: only the range can catch it
    field = path.replace(".0.", "[0].").replace(".1.", "[1].").replace(".2.", "[2].")
    if path == "recommendation.passing":
        field += "[0]"
    with pytest.raises(ReportError) as err:
        from_dict(data, source="r.json")
    assert str(err.value) == (
        f"Report r.json field '{field}' is {shown}, outside its range ({range_text}): the report "
        f"was edited or damaged; {REMEDY}."
    )
    body = {k: v for k, v in data.items()}
    assert not jsonschema.Draft202012Validator(schema()).is_valid(body)


def test_the_hash_survives_reindenting_but_not_an_edit(tmp_path):
    text = dumps(realistic())
    data = json.loads(text)
    assert data[HASH_FIELD] == content_sha256(data)
    assert len(data[HASH_FIELD]) == 64
    compact = json.dumps(data, separators=(",", ":"))
    assert loads(compact) == realistic()  # the same content, another layout
    edited = text.replace('"k": 16.0,\n    "rule"', '"k": 1.0,\n    "rule"')
    assert edited != text
    with pytest.raises(ReportError, match="was edited after it was written"):
        loads(edited)


def _check(tmp_path, data, *args):
    from click.testing import CliRunner

    from headscope.cli import main

    path = tmp_path / "report.json"
    path.write_text(json.dumps(data, indent=2))
    return CliRunner().invoke(main, ["check", "--report", str(path), *args]), path


def test_check_report_refuses_an_edited_report(tmp_path):
    result, path = _check(tmp_path, to_dict(realistic()), "--max-k", "16")
    assert result.exit_code == 0, result.output  # as written: passes
    # The cases: edited to k = -4, k = 0, n_rows = -1 passed --max-k 8 with exit 0.
    for edit, field, shown in (("recommendation.k", "recommendation.k", "-4"),
                               ("recommendation.k", "recommendation.k", "0"),
                               ("model.n_rows", "model.n_rows", "-1")):
        sealed = _with(edit, int(shown))
        result, path = _check(tmp_path, sealed, "--max-k", "8")
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"Error: Report {path} field '{field}' is {shown}, outside its range "
            f"({'a finite number >= 1' if 'k' in field else 'an integer >= 0'}): the "
            f"report was edited or damaged; {REMEDY}."]
        result, path = _check(tmp_path, _with(edit, int(shown), sealed=False), "--max-k", "8")
        assert result.exit_code == 2
        assert result.stderr.splitlines() == [
            f"Error: Report {path} was edited after it was written: its content does not match "
            f"its content_sha256; {REMEDY} rather than editing it."]
