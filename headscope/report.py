"""The versioned report record and its JSON form (no torch).

A `Report` is everything `inspect` measured about one checkpoint: model facts, head weight
statistics, the probe that was run, per-k statistics, findings and the recommendation. It is
written as JSON with an integer `schema_version` and a shipped JSON Schema
(`headscope/schema/report.schema.json`, loaded by `schema()`), and read back strictly: a wrong
schema_version, a missing or unknown field, or a value of the wrong type raises `ReportError`.

JSON has no NaN or infinity. A non-finite float is written as `null`; reading `null` back gives
NaN for a float field and None for a field that is optional (`float | None`). Everything else
round-trips exactly: `from_dict(to_dict(r)) == r` for reports without NaN.

A report cannot be edited into a pass. Every number has a range (`RANGES`: k >= 1 and finite,
counts >= 0, shares in [0, 1], norms >= 0, ...), stated by the shipped schema and checked by the
reader, which names the first field out of range. The JSON form carries `content_sha256`, the
sha256 of the rest of the document in a canonical form (`content_sha256()`); the reader refuses
a report whose content no longer matches it ("edited after it was written"). This is a check
against edits and damage, not a signature: whoever edits a report can recompute the hash, but
not move a number out of its range.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import types
from dataclasses import MISSING, dataclass, fields, is_dataclass
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from pathlib import Path
from typing import IO, Any, Union, get_args, get_origin, get_type_hints

from headscope import __version__, fileio
from headscope.calibrated import DomainEvidence, ModelEvidence, TiedArm
from headscope.errors import ReportError
from headscope.findings import SEVERITIES, Finding
from headscope.recommend import KVerdict, Recommendation
from headscope.stats import Histogram, KStats, Summary, WeightStats

# 2: the content hash and the ranges. A report of schema_version 1 (no hash, unchecked ranges)
# is refused like any other version: re-create it.
SCHEMA_VERSION = 2
HASH_FIELD = "content_sha256"
_REMEDY = "re-create the report with headscope inspect --json"


@dataclass(frozen=True)
class ModelInfo:
    source: str  # as the user gave it: Hub id or path
    revision: str | None  # Hub commit hash of the snapshot, else None
    model_type: str  # config model_type (inferred when the config lacks it)
    family: str  # head layout family: "bert", "roberta", ..., "generic"
    architecture: str | None  # config "architectures"[0], e.g. "BertForMaskedLM"; None if absent
    dtype: str  # "float32" | "bfloat16" | "float16"
    device: str  # where the forward passes ran
    n_rows: int  # decoder rows (vocabulary size of the head)
    n_tokenizer: int | None  # len(tokenizer); None without a tokenizer
    hidden_size: int  # decoder input width
    tied: bool  # decoder shares storage with the input embeddings
    head_loaded: bool  # every head tensor came from the checkpoint (none newly initialised)
    special_tokens: tuple[str, ...]  # the tokenizer's special tokens
    weights_only: bool  # statistics read from the files without a forward pass (no probe)
    head_found_by: str = "layout"  # how the head was named: layout, output-embeddings, meta-model


@dataclass(frozen=True)
class ProbeSummary:
    name: str  # probe set name, e.g. "stdlib"
    version: str  # e.g. "stdlib-v1"
    sha256: str  # of the probe texts, so two reports can tell whether they saw the same probe
    n_pairs: int  # query/passage pairs probed
    ks: tuple[float, ...]  # candidate divisors measured
    batch_size: int  # also the in-batch size of start_loss (chance level ln batch_size)
    max_query_length: int  # tokens per query, at most
    max_passage_length: int  # tokens per passage, at most
    scale_bias: bool  # whether k divided the output bias too
    unknown_token_share: float | None = None  # share of probe tokens that are [UNK] (HS209)

    @classmethod
    def from_result(cls, result: Any, unknown_token_share: float | None = None) -> ProbeSummary:
        """From a `probe.ProbeResult` (read by attribute, so this module never imports probe)."""
        config = result.config
        return cls(
            name=result.probe_name,
            version=result.probe_version,
            sha256=result.probe_sha256,
            n_pairs=int(result.n_pairs),
            ks=tuple(float(k) for k in config.ks),
            batch_size=int(config.batch_size),
            max_query_length=int(config.max_query_length),
            max_passage_length=int(config.max_passage_length),
            scale_bias=bool(config.scale_bias),
            unknown_token_share=unknown_token_share,
        )


@dataclass(frozen=True)
class Report:
    schema_version: int  # integer version of this record; readers refuse an unknown one
    headscope_version: str  # the headscope that wrote the report
    created: str  # ISO 8601, UTC, e.g. "2026-07-01T12:00:00Z"
    model: ModelInfo  # what was inspected
    weights: WeightStats  # head weight statistics
    probe: ProbeSummary | None  # None for a weights-only report
    per_k: tuple[KStats, ...]  # ascending k; () without a probe
    findings: tuple[Finding, ...]  # stable codes, docs/findings.md
    recommendation: Recommendation | None  # the recommended k and its reasons; None: none
    evidence: ModelEvidence | None = None  # a calibration condition's own grid; None: another model


@dataclass(frozen=True)
class Range:
    """The values one number of a report may take; None leaves a side open. `finite`: null (a
    non-finite number) is refused too; otherwise null (unknown) is allowed."""

    low: float | None = None
    high: float | None = None
    finite: bool = False

    def admits(self, x: float | None) -> bool:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return not self.finite
        return (self.low is None or x >= self.low) and (self.high is None or x <= self.high)

    def text(self, integer: bool = False) -> str:
        """The range in words, e.g. "a finite number >= 1", "a number between 0 and 1 or null"."""
        kind = "an integer" if integer else "a finite number" if self.finite else "a number"
        if self.low is not None and self.high is not None:
            bounds = f"between {self.low:g} and {self.high:g}"
        elif self.low is not None:
            bounds = f">= {self.low:g}"
        else:
            bounds = f"<= {self.high:g}"
        return f"{kind} {bounds}" + ("" if integer or self.finite else " or null")


_K = Range(1.0, finite=True)  # a divisor of the head: headscope only divides (ProbeConfig.ks)
_COUNT = Range(0)
_NONNEGATIVE = Range(0.0)  # norms, term weights, scores of non-negative vectors, losses
_SHARE = Range(0.0, 1.0)

# Every number of a report with a range, by record and field (a tuple field: each item). The
# shipped schema states the same bounds (tests/test_report.py compares them).
RANGES: dict[type, dict[str, Range]] = {
    ModelInfo: {"n_rows": _COUNT, "n_tokenizer": _COUNT, "hidden_size": _COUNT},
    Summary: {"mean": _NONNEGATIVE, "median": _NONNEGATIVE, "p99": _NONNEGATIVE,
              "max": _NONNEGATIVE, "min": _NONNEGATIVE, "count": _COUNT},
    Histogram: {"edges": Range(0.0, finite=True), "real": _COUNT, "other": _COUNT},
    WeightStats: {"n_rows": _COUNT, "n_real_rows": _COUNT, "hidden_size": _COUNT,
                  "bias_std": _NONNEGATIVE, "norm_weight_l2": _NONNEGATIVE,
                  "norm_bias_l2": _NONNEGATIVE, "dense_spectral_norm": _NONNEGATIVE},
    ProbeSummary: {"n_pairs": _COUNT, "ks": _K, "batch_size": Range(1),
                   "max_query_length": Range(1), "max_passage_length": Range(1),
                   "unknown_token_share": _SHARE},
    KStats: {"k": _K, "frac_positive": _SHARE, "term_weight_mean": _NONNEGATIVE,
             "term_weight_max": _NONNEGATIVE, "share_above_5": _SHARE,
             "active_query": _NONNEGATIVE, "active_passage": _NONNEGATIVE,
             "active_query_share": _SHARE, "active_passage_share": _SHARE,
             "cosine_unrelated": _SHARE, "score_pos": _NONNEGATIVE, "score_neg": _NONNEGATIVE,
             "start_loss": _NONNEGATIVE, "frac_positive_se": _NONNEGATIVE},
    KVerdict: {"k": _K},
    Recommendation: {"k": _K, "passing": _K},
    DomainEvidence: {"steps": Range(1), "seeds": Range(1)},
    TiedArm: {"k": _K},
}


def utc_now() -> str:
    """The current time as the report's `created` string (seconds, UTC, trailing Z)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_report(
    model: ModelInfo,
    weights: WeightStats,
    *,
    probe: ProbeSummary | None = None,
    per_k: tuple[KStats, ...] = (),
    findings: tuple[Finding, ...] = (),
    recommendation: Recommendation | None = None,
    evidence: ModelEvidence | None = None,
    created: str | None = None,
) -> Report:
    """A Report stamped with this schema version, this headscope version and the time."""
    return Report(
        schema_version=SCHEMA_VERSION,
        headscope_version=__version__,
        created=created or utc_now(),
        model=model,
        weights=weights,
        probe=probe,
        per_k=tuple(per_k),
        findings=tuple(findings),
        recommendation=recommendation,
        evidence=evidence,
    )


# --------------------------------------------------------------------------------------------
# Dict form


def to_dict(obj: Any) -> Any:
    """JSON-ready form of a report (or any record in it): dicts in field order, lists for
    tuples, None for non-finite floats. A Report's dict ends with its `content_sha256`."""
    data = _plain(obj)
    if isinstance(obj, Report):
        data[HASH_FIELD] = content_sha256(data)
    return data


def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def content_sha256(data: dict[str, Any]) -> str:
    """The sha256 (hex) of a report's dict form without its `content_sha256`: JSON with sorted
    keys, no spaces, UTF-8. Re-indenting a report keeps it; changing any value does not."""
    body = {k: v for k, v in data.items() if k != HASH_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def from_dict(data: Any, *, source: str | None = None) -> Report:
    """Strictly rebuild a Report; `source` (a path) only names the report in error messages."""
    prefix = "Report" if source is None else f"Report {source}"
    if not isinstance(data, dict):
        raise ReportError(
            f"{prefix} must be a JSON object, got {_json_type(data)}; pass a file written by "
            "headscope inspect --json."
        )
    if "schema_version" not in data:
        raise ReportError(
            f"{prefix} has no schema_version, so it was not written by headscope; pass a file "
            "written by headscope inspect --json."
        )
    version = data["schema_version"]
    if version == 1 and not isinstance(version, bool):
        raise ReportError(
            f"{prefix} has schema_version 1, written before reports carried a content hash and "
            f"range-checked numbers; headscope {__version__} reads schema_version "
            f"{SCHEMA_VERSION}: {_REMEDY}."
        )
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ReportError(
            f"{prefix} has schema_version {version!r}, but headscope {__version__} reads "
            f"schema_version {SCHEMA_VERSION}; {_REMEDY} or use the headscope that wrote it."
        )
    stored = data.get(HASH_FIELD)
    if not isinstance(stored, str):
        raise ReportError(
            f"{prefix} has no {HASH_FIELD}, which every report headscope writes carries; "
            f"{_REMEDY}."
        )
    if stored != content_sha256(data):
        raise ReportError(
            f"{prefix} was edited after it was written: its content does not match its "
            f"{HASH_FIELD}; {_REMEDY} rather than editing it."
        )
    report = _decode(Report, {k: v for k, v in data.items() if k != HASH_FIELD}, "", prefix)
    for i, finding in enumerate(report.findings):
        if finding.severity not in SEVERITIES:
            raise ReportError(
                f"{prefix} field 'findings[{i}].severity' must be one of "
                f"{', '.join(SEVERITIES)}, got {finding.severity!r}; {_REMEDY}."
            )
    return report


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode(tp: Any, value: Any, path: str, prefix: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(inner, value, path, prefix)
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(value, dict):
            raise _type_error(prefix, path, "an object", value)
        names = [f.name for f in fields(tp)]
        # A field added later with a default may be absent from a report written before it.
        optional = {f.name for f in fields(tp) if f.default is not MISSING}
        for key in value:
            if key not in names:
                raise ReportError(
                    f"{prefix} has unknown field '{_join(path, key)}'; remove it or {_REMEDY}."
                )
        for name in names:
            if name not in value and name not in optional:
                raise ReportError(f"{prefix} is missing field '{_join(path, name)}'; {_REMEDY}.")
        hints = _hints(tp)
        ranges = RANGES.get(tp, {})
        decoded = {}
        for n in names:
            if n in value:
                decoded[n] = _decode(hints[n], value[n], _join(path, n), prefix)
                if n in ranges:
                    _check_range(ranges[n], decoded[n], value[n], _join(path, n), prefix)
        return tp(**decoded)
    if origin is tuple:
        if not isinstance(value, list):
            raise _type_error(prefix, path, "a list", value)
        return tuple(_decode(args[0], v, f"{path}[{i}]", prefix) for i, v in enumerate(value))
    if tp is float:
        if value is None:  # a non-finite float was written as null
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(prefix, path, "a number", value)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(prefix, path, "an integer", value)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(prefix, path, "true or false", value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(prefix, path, "a string", value)
        return value
    raise TypeError(f"report field {path} has unsupported type {tp!r}")  # a bug in headscope


def _check_range(rng: Range, decoded: Any, raw: Any, path: str, prefix: str) -> None:
    """Refuse a decoded number (or each number of a tuple) outside `rng`, naming the field."""
    if isinstance(decoded, tuple):
        for i, (d, r) in enumerate(zip(decoded, raw, strict=True)):
            _check_range(rng, d, r, f"{path}[{i}]", prefix)
        return
    if not rng.admits(decoded):
        shown = "null" if raw is None else repr(raw)
        raise ReportError(
            f"{prefix} field '{path}' is {shown}, outside its range "
            f"({rng.text(isinstance(decoded, int))}): the report "
            f"was edited or damaged; {_REMEDY}."
        )


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _type_error(prefix: str, path: str, expected: str, value: Any) -> ReportError:
    shown = "" if isinstance(value, dict | list) or value is None else f" {value!r}"
    return ReportError(
        f"{prefix} field '{path}' must be {expected}, got {_json_type(value)}{shown}; {_REMEDY}."
    )


# --------------------------------------------------------------------------------------------
# Files


def dumps(report: Report) -> str:
    """The report as JSON text (indent 2, field order, trailing newline, no NaN tokens)."""
    return json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n"


def write_json(report: Report, dest: str | os.PathLike[str] | IO[str]) -> None:
    """Write to a path (atomically: temp file, fsync, rename; the user's umask), to "-"
    (stdout) or to a stream. A failed write (disk full) raises OutputWriteError and leaves an
    older file at `dest` as it was."""
    text = dumps(report)
    if isinstance(dest, str) and dest == "-":
        sys.stdout.write(text)
        return
    if not isinstance(dest, str | os.PathLike):
        dest.write(text)
        return
    path = Path(dest)
    if not path.parent.is_dir():
        raise ReportError(
            f"Cannot write report {path}: directory {path.parent} does not exist; create it or "
            "choose another path."
        )
    fileio.write_text(path, text)  # temp file, fsync, rename; the user's umask


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str, *, source: str | None = None) -> Report:
    """Parse report JSON text strictly (NaN/Infinity tokens are rejected, as JSON requires)."""
    prefix = "Report" if source is None else f"Report {source}"
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{prefix} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); pass a "
            "file written by headscope inspect --json."
        ) from None
    except ValueError as e:
        raise ReportError(
            f"{prefix} is not valid JSON ({e}); pass a file written by headscope inspect --json."
        ) from None
    except RecursionError:
        raise ReportError(
            f"{prefix} is JSON nested too deeply to read; pass a file written by headscope "
            "inspect --json."
        ) from None
    return from_dict(data, source=source)


def read_json(path: str | os.PathLike[str]) -> Report:
    """Read a report from a path, or from stdin when path is "-"."""
    if isinstance(path, str) and path == "-":
        return loads(sys.stdin.read(), source="<stdin>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(
            f"Report file {p} does not exist; pass the path of a report written by headscope "
            "inspect --json."
        ) from None
    except IsADirectoryError:
        raise ReportError(
            f"Report path {p} is a directory; pass the path of a report file written by "
            "headscope inspect --json."
        ) from None
    except UnicodeDecodeError:
        raise ReportError(
            f"Report {p} is not UTF-8 text; pass a file written by headscope inspect --json."
        ) from None
    except OSError as e:
        raise ReportError(
            f"Report {p} cannot be read ({e.strerror or e}); check the path and its permissions."
        ) from None
    return loads(text, source=str(p))


def schema() -> dict[str, Any]:
    """The shipped JSON Schema of this schema_version (draft 2020-12)."""
    text = resources.files("headscope").joinpath("schema/report.schema.json").read_text("utf-8")
    return json.loads(text)




def key_statistics(report: Report, at_k: float = 1.0) -> dict[str, Any]:
    """The few numbers that tell heads apart, for `compare`: weights, the probe at `at_k`
    (default 1: the head as shipped), the recommendation and the warning findings."""
    at = next((s for s in report.per_k if s.k == at_k), None)
    rec = report.recommendation

    def probe(name: str) -> float | None:
        return None if at is None else _finite_or_none(getattr(at, name))

    return {
        "source": report.model.source,
        "family": report.model.family,
        "row_norm_mean": _finite_or_none(report.weights.row_norm_all.mean),
        "bias_mean": _finite_or_none(report.weights.bias_mean),
        "at_k": at_k,
        "logit_p50": probe("logit_p50"),
        "frac_positive": probe("frac_positive"),
        "active_query": probe("active_query"),
        "active_passage": probe("active_passage"),
        "cosine_unrelated": probe("cosine_unrelated"),
        "score_pos": probe("score_pos"),
        "start_loss": probe("start_loss"),
        "recommended_k": None if rec is None else rec.k,
        "scale_bias": None if rec is None else rec.scale_bias,
        "rule": None if rec is None else rec.rule,
        "warnings": [f.code for f in report.findings if f.severity != "info"],
    }


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


__all__ = [
    "HASH_FIELD",
    "RANGES",
    "SCHEMA_VERSION",
    "ModelInfo",
    "Range",
    "ProbeSummary",
    "Report",
    "content_sha256",
    "dumps",
    "from_dict",
    "key_statistics",
    "loads",
    "make_report",
    "read_json",
    "schema",
    "to_dict",
    "utc_now",
    "write_json",
]
