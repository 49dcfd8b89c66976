"""The versioned report record and its JSON form (no torch).

A `Report` is everything `inspect` measured about one checkpoint: model facts, head weight
statistics, the probe that was run, per-k statistics, findings and the recommendation. It is
written as JSON with an integer `schema_version` and a shipped JSON Schema
(`headscope/schema/report.schema.json`, loaded by `schema()`), and read back strictly: a wrong
schema_version, a missing or unknown field, or a value of the wrong type raises `ReportError`.

JSON has no NaN or infinity. A non-finite float is written as `null`; reading `null` back gives
NaN for a float field and None for a field that is optional (`float | None`). Everything else
round-trips exactly: `from_dict(to_dict(r)) == r` for reports without NaN.
"""

from __future__ import annotations

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
from headscope.errors import ReportError
from headscope.findings import SEVERITIES, Finding
from headscope.recommend import Recommendation
from headscope.stats import KStats, WeightStats

SCHEMA_VERSION = 1
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
    )


# --------------------------------------------------------------------------------------------
# Dict form


def to_dict(obj: Any) -> Any:
    """JSON-ready form of a report (or any record in it): dicts in field order, lists for
    tuples, None for non-finite floats."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


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
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ReportError(
            f"{prefix} has schema_version {version!r}, but headscope {__version__} reads "
            f"schema_version {SCHEMA_VERSION}; {_REMEDY} or use the headscope that wrote it."
        )
    report = _decode(Report, data, "", prefix)
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
        return tp(**{n: _decode(hints[n], value[n], _join(path, n), prefix) for n in names
                     if n in value})
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
    """The shipped JSON Schema of schema_version 1 (draft 2020-12)."""
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
    "SCHEMA_VERSION",
    "ModelInfo",
    "ProbeSummary",
    "Report",
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
