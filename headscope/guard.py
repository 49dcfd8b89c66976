"""CI policy for `headscope check`: load a Policy, evaluate a Report against it (no torch).

Policy sources, later ones winning key by key: the defaults of `Policy`, then one file (an
explicit TOML file, or the nearest pyproject.toml's `[tool.headscope]` and
`[tool.headscope.check]` tables), then overrides (CLI flags). An unknown key or a value of the
wrong type raises PolicyError naming the key, where it came from and the valid keys.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from headscope.errors import PolicyError
from headscope.findings import FINDING_CODES, SEVERITIES
from headscope.report import Report
from headscope.stats import METRIC_REGISTRY, k_text, number

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Policy:
    """What `headscope check` requires of a report. `None` switches a rule off.

    The per-k maxima are read at `at_k` when set (e.g. the k you train with), else at the
    report's recommended k.
    """

    max_k: float | None = None  # the recommended k may be at most this
    max_row_norm: float | None = None  # mean decoder row norm over all rows may be at most this
    max_start_loss: float | None = None  # in-batch InfoNCE at the checked k
    max_active_passage_share: float | None = None  # active passage terms / V at the checked k
    max_cosine_unrelated: float | None = None  # mean cosine of unrelated passages at the checked k
    max_share_above_5: float | None = None  # share of active weights above 5 at the checked k
    at_k: float | None = None  # where the per-k maxima are read; None: the recommended k
    require_head_loaded: bool = True  # fail when the head was newly initialised
    require_probe: bool = False  # fail a weights-only report (no per-k statistics)
    require_passing_k: bool = False  # fail when no candidate k falls inside every band
    fail_on: tuple[str, ...] = ("error",)  # finding severities and/or codes that fail the check
    ignore: tuple[str, ...] = ()  # finding codes that never fail the check
    source: str = "defaults"  # where the policy came from (set by load_policy; not a key)


# Keys a file or flags may set: every field but `source`.
POLICY_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Policy) if f.name != "source")
_FLOAT_KEYS = {
    "max_k",
    "max_row_norm",
    "max_start_loss",
    "max_active_passage_share",
    "max_cosine_unrelated",
    "max_share_above_5",
    "at_k",
}
_BOOL_KEYS = {"require_head_loaded", "require_probe", "require_passing_k"}


def load_policy(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    search_dir: str | Path | None = None,
) -> Policy:
    """Build a Policy from defaults, one file and overrides.

    path: a TOML file whose top-level keys are policy keys, or a pyproject.toml (its
    `[tool.headscope]` keys, then `[tool.headscope.check]`). Without a path, the nearest
    pyproject.toml in `search_dir` (default: the working directory) or its parents is used when
    it has a `[tool.headscope]` table; the search stops at the first pyproject.toml found.
    """
    policy = Policy()
    values: dict[str, Any] = {}
    sources: list[str] = []
    if path is not None:
        p = Path(path)
        data = _read_toml(p)
        if p.name == "pyproject.toml":
            values.update(_pyproject_values(data, p))
        else:
            values.update(_validated(data, str(p)))
        sources.append(str(p))
    else:
        found = find_pyproject(Path(search_dir) if search_dir is not None else Path.cwd())
        if found is not None:
            table = _read_toml(found).get("tool", {}).get("headscope")
            if table is not None:
                values.update(_pyproject_values({"tool": {"headscope": table}}, found))
                sources.append(f"{found} [tool.headscope]")
    if overrides:
        values.update(_validated(dict(overrides), "flags"))
        sources.append("flags")
    return replace(policy, **values, source=" + ".join(sources) if sources else "defaults")


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml in `start` or its parents, or None."""
    start = start.resolve()
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PolicyError(
            f"Policy file {path} does not exist; pass an existing TOML file or omit --policy to "
            "use [tool.headscope] in pyproject.toml."
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"Policy file {path} is not valid TOML ({e}); fix the syntax.") from None


def _pyproject_values(data: dict[str, Any], path: Path) -> dict[str, Any]:
    table = data.get("tool", {}).get("headscope", {})
    where = f"{path} [tool.headscope]"
    if not isinstance(table, dict):
        raise PolicyError(
            f"{where} must be a table of policy keys; valid keys: {', '.join(POLICY_KEYS)}."
        )
    top = {k: v for k, v in table.items() if k != "check"}
    values = _validated(top, where)
    check = table.get("check", {})
    if not isinstance(check, dict):
        raise PolicyError(
            f"{path} [tool.headscope.check] must be a table of policy keys; "
            f"valid keys: {', '.join(POLICY_KEYS)}."
        )
    values.update(_validated(check, f"{path} [tool.headscope.check]"))
    return values


def _validated(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check keys and types; normalise ints to floats and strings/lists to tuples."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in POLICY_KEYS:
            raise PolicyError(
                f"Unknown policy key {key!r} in {where}; valid keys: {', '.join(POLICY_KEYS)}."
            )
        out[key] = _coerce(key, value, where)
    return out


def _coerce(key: str, value: Any, where: str) -> Any:
    if key in _FLOAT_KEYS:
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise _type_error(key, value, where, "a finite number")
        return float(value)
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise _type_error(key, value, where, "true or false")
        return value
    # fail_on / ignore: a list of strings, or one comma-separated string (CLI flags)
    if isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    elif isinstance(value, list | tuple) and all(isinstance(s, str) for s in value):
        items = list(value)
    else:
        raise _type_error(key, value, where, "a list of strings")
    for item in items:
        if item in SEVERITIES and key == "fail_on":
            continue
        if item in FINDING_CODES:
            continue
        allowed = (
            (", ".join(SEVERITIES) + " or a finding code")
            if key == "fail_on"
            else ("a finding code")
        )
        raise PolicyError(
            f"Policy key {key!r} in {where} has entry {item!r}; use {allowed} "
            f"({', '.join(FINDING_CODES)})."
        )
    return tuple(items)


def _type_error(key: str, value: Any, where: str, expected: str) -> PolicyError:
    return PolicyError(
        f"Policy key {key!r} in {where} must be {expected}, got {type(value).__name__} "
        f"{value!r}; valid keys: {', '.join(POLICY_KEYS)}."
    )


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class RuleResult:
    name: str  # the policy key that produced the rule
    threshold: float | bool | str | None
    measured: float | bool | str | None  # None: not measurable from this report
    passed: bool
    message: str  # one sentence with the numbers

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threshold": _json_value(self.threshold),
            "measured": _json_value(self.measured),
            "passed": self.passed,
            "message": self.message,
        }


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    k: float | None  # the k the per-k rules read (at_k, or the recommended k)
    rules: tuple[RuleResult, ...]
    policy: Policy

    @property
    def failed(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.rules if not r.passed)

    def to_dict(self) -> dict[str, Any]:
        policy = {f.name: _json_value(getattr(self.policy, f.name)) for f in fields(Policy)}
        return {
            "passed": self.passed,
            "k": _json_value(self.k),
            "policy": policy,
            "rules": [r.to_dict() for r in self.rules],
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    return value


# --- the rules: one function per policy key, evaluated in this table's order ----------------
# A rule gets the report, the policy and the k the per-k rules read; the policy key's value
# switches it on (None and False switch it off, and so does an empty fail_on).


def _head_loaded(report: Report, policy: Policy, k: float | None) -> RuleResult:
    ok = report.model.head_loaded
    return RuleResult("require_head_loaded", True, ok, ok,
                      "The MLM head was loaded from the checkpoint." if ok else
                      "The MLM head was not loaded from the checkpoint (newly initialised).")


def _has_probe(report: Report, policy: Policy, k: float | None) -> RuleResult:
    ok = bool(report.per_k)
    return RuleResult("require_probe", True, ok, ok,
                      f"The report has probe statistics at {len(report.per_k)} k values." if ok
                      else "The report is weights-only; run headscope inspect with a probe.")


def _row_norm(report: Report, policy: Policy, k: float | None) -> RuleResult:
    assert policy.max_row_norm is not None
    return _at_most("max_row_norm", METRIC_REGISTRY["row_norm_mean"].label,
                    report.weights.row_norm_all.mean, policy.max_row_norm)


def _recommended_k(report: Report, policy: Policy, k: float | None) -> RuleResult:
    assert policy.max_k is not None
    rec = report.recommendation
    if rec is None:
        return RuleResult("max_k", policy.max_k, None, False,
                          "The report has no recommendation; re-run headscope inspect.")
    if report.model.weights_only and not weights_only_k_is_full(rec.rule):
        return RuleResult("max_k", policy.max_k, None, False,
                          f"Cannot check the recommended k: {WEIGHTS_ONLY_K}.")
    return _at_most("max_k", "recommended k", rec.k, policy.max_k)


# Why a weights-only report's k is no answer to max_k: one model must get one answer.
WEIGHTS_ONLY_K = ("the report is weights-only, and its paper rule (k from the decoder row norm "
                  "alone) can differ from the k the full inspection recommends")
# The policy keys a weights-only report cannot judge: the per-k statistics and the bands come
# from the probe, and its recommended k from another rule than the full inspection's.
PROBE_KEYS = ("max_k", "max_start_loss", "max_active_passage_share", "max_cosine_unrelated",
              "max_share_above_5", "require_passing_k")


def weights_only_k_is_full(applied: str) -> bool:
    """Whether a weights-only recommendation by the rule `applied` ("constant", "paper", or the
    rule a request resolves to) is the k the full inspection gives by the same rule: a constant
    is; so is the paper rule, which reads the row norm alone, except while the shipped rule is
    the bands, when a weights-only paper k stands in for the bands' measured one."""
    from headscope.recommend import resolve_rule

    return applied == "constant" or (applied == "paper" and resolve_rule("shipped")[0] != "bands")


def weights_only_conflicts(policy: Policy, rule: str = "shipped") -> tuple[str, ...]:
    """The keys `policy` switches on that a weights-only report by the rule `rule` (as asked,
    e.g. "shipped", or as applied, e.g. "constant") cannot judge: PROBE_KEYS, less max_k when
    the weights-only k is the full inspection's (`weights_only_k_is_full`)."""
    from headscope.recommend import resolve_rule

    applied = rule if rule == "constant" else resolve_rule(rule)[0]
    keys = tuple(key for key in PROBE_KEYS
                 if key != "max_k" or not weights_only_k_is_full(applied))
    return tuple(key for key in keys if getattr(policy, key) not in (None, False))


def _per_k_rule(key: str, metric: str) -> Callable[[Report, Policy, float | None], RuleResult]:
    """The rule `key`: the per-k statistic `metric` at the checked k is at most the limit."""
    label = METRIC_REGISTRY[metric].label

    def rule(report: Report, policy: Policy, k: float | None) -> RuleResult:
        limit = getattr(policy, key)
        stats = next((s for s in report.per_k if s.k == k), None)
        if stats is None:
            if not report.per_k:
                why = "the report is weights-only (no probe statistics)"
            elif k is None:
                why = "the report has no recommended k"
            else:
                why = (f"the report has no statistics at k = {k_text(k)} (measured: "
                       f"{', '.join(k_text(s.k) for s in report.per_k)})")
            return RuleResult(key, limit, None, False, f"Cannot check {label}: {why}.")
        assert k is not None
        return _at_most(key, f"{label} at k = {k_text(k)}", getattr(stats, metric), limit)

    return rule


def _passing_k(report: Report, policy: Policy, k: float | None) -> RuleResult:
    rec = report.recommendation
    if rec is None or not rec.verdicts:
        return RuleResult("require_passing_k", True, None, False,
                          "Cannot check the bands: the report has no per-k verdicts (weights-only "
                          "or no recommendation).")
    ok = bool(rec.passing)
    return RuleResult("require_passing_k", True, ok, ok,
                      f"Candidates inside every band: {', '.join(map(k_text, rec.passing))}."
                      if ok else "No candidate k falls inside every band.")


def _findings(report: Report, policy: Policy, k: float | None) -> RuleResult:
    hits = [f for f in report.findings if f.code not in policy.ignore
            and (f.code in policy.fail_on or f.severity in policy.fail_on)]
    codes = ", ".join(f"{f.code} {f.name} ({f.severity})" for f in hits)
    return RuleResult("fail_on", ", ".join(policy.fail_on),
                      ", ".join(f.code for f in hits) or "none", not hits,
                      f"Findings that fail the check: {codes}." if hits
                      else f"No finding matches fail_on ({', '.join(policy.fail_on)}).")


# (policy key, rule), in the order a check lists them.
CHECK_RULES: tuple[tuple[str, Callable[[Report, Policy, float | None], RuleResult]], ...] = (
    ("require_head_loaded", _head_loaded),
    ("require_probe", _has_probe),
    ("max_row_norm", _row_norm),
    ("max_k", _recommended_k),
    ("max_start_loss", _per_k_rule("max_start_loss", "start_loss")),
    ("max_active_passage_share", _per_k_rule("max_active_passage_share",
                                             "active_passage_share")),
    ("max_cosine_unrelated", _per_k_rule("max_cosine_unrelated", "cosine_unrelated")),
    ("max_share_above_5", _per_k_rule("max_share_above_5", "share_above_5")),
    ("require_passing_k", _passing_k),
    ("fail_on", _findings),
)


def evaluate(report: Report, policy: Policy = Policy()) -> CheckResult:
    """Evaluate every rule the policy switches on; the check passes when all of them pass."""
    rec = report.recommendation
    k = policy.at_k if policy.at_k is not None else (rec.k if rec is not None else None)
    rules = tuple(rule(report, policy, k) for key, rule in CHECK_RULES
                  if getattr(policy, key) not in (None, False, ()))
    return CheckResult(all(r.passed for r in rules), k, rules, policy)


def _at_most(name: str, label: str, measured: float, limit: float) -> RuleResult:
    """Measured (4 significant digits) against the limit (as typed: up to 6 digits)."""
    if not math.isfinite(measured):
        return RuleResult(name, limit, measured, False,
                          f"The {label} was not measured (NaN); it must be at most "
                          f"{number(limit, 6)}.")
    ok = measured <= limit
    return RuleResult(name, limit, measured, ok,
                      f"The {label} is {number(measured)}, {'within' if ok else 'above'} the "
                      f"limit {number(limit, 6)}.")


__all__ = [
    "POLICY_KEYS",
    "PROBE_KEYS",
    "WEIGHTS_ONLY_K",
    "CHECK_RULES",
    "CheckResult",
    "Policy",
    "RuleResult",
    "evaluate",
    "find_pyproject",
    "load_policy",
    "weights_only_conflicts",
    "weights_only_k_is_full",
]
