"""The JSON forms of the verbs' results (fix, training, check, compare), each versioned and
with a shipped JSON Schema (docs/json.md). The report's own form is `report.to_dict`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from headscope.errors import InputError
from headscope.report import Report, to_dict

if TYPE_CHECKING:
    from headscope.api.fixing import FixOutcome
    from headscope.api.inspecting import CheckOutcome
    from headscope.api.training import TrainingOutcome

# The version of every JSON summary below (fix, training, check, compare); each has a JSON
# Schema shipped in headscope/schema/ (see `json_schema`) and documented in docs/json.md.
SUMMARY_SCHEMA_VERSION = 1
SUMMARY_KINDS = ("fix", "training", "check", "compare")


def json_schema(kind: str) -> dict:
    """The shipped JSON Schema (draft 2020-12) of a verb's JSON output: "report" (inspect),
    "fix", "training" (confirm and sweep), "check" or "compare"."""
    from importlib import resources

    if kind not in ("report",) + SUMMARY_KINDS:
        raise InputError(f"No JSON schema named {kind!r}; the schemas are report, "
                         f"{', '.join(SUMMARY_KINDS)}.")
    text = resources.files("headscope").joinpath(f"schema/{kind}.schema.json").read_text("utf-8")
    return json.loads(text)


def fix_summary(outcome: FixOutcome) -> dict:
    """The JSON form of a fix: what was written, with which k and why, and how it verified.
    `written` is False when no fix was needed (recommended k = 1) or in a dry run."""
    r = outcome.result
    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "source": outcome.source,
        "k": outcome.k,
        "k_from": outcome.k_from,
        "followed_last_inspection": outcome.followed_last_inspection,
        "needed": outcome.needed,
        "written": r is not None and not r.dry_run,
        "note": outcome.note,
        "strategy": None if r is None else r.spec.strategy,
        "scale_bias": None if r is None else r.spec.scale_bias,
        "out": None if r is None else str(r.out),
        "dry_run": None if r is None else r.dry_run,
        "files": [] if r is None else list(r.files),
        "tied": None if r is None else r.tied,
        "changed_tensors": list(outcome.changed_tensors),
        "new_tensors": list(outcome.new_tensors),
        "verification": None if r is None else r.verification,
        "pushed": outcome.pushed,
    }
    return to_dict(summary)


def check_summary(outcome: CheckOutcome) -> dict:
    """The JSON form of a check: the policy, each rule's threshold and measurement, pass/fail."""
    return to_dict({"schema_version": SUMMARY_SCHEMA_VERSION,
                       "source": outcome.report.model.source, **outcome.result.to_dict()})


def compare_summary(reports: Sequence[Report], labels: Sequence[str]) -> dict:
    """The JSON form of a comparison: each model's key statistics under its column label."""
    from headscope.report import key_statistics

    return to_dict({"schema_version": SUMMARY_SCHEMA_VERSION,
                       "models": [{"label": label, **key_statistics(r)}
                                  for r, label in zip(reports, labels, strict=True)]})


def training_summary(outcome: TrainingOutcome) -> dict:
    """The JSON form of a confirm or sweep run (telemetry stays in the JSONL log). `evaluated`
    says how many held-out queries and passages each arm was scored on."""
    return to_dict({
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "source": outcome.source,
        "simulation": outcome.simulation,
        "data": outcome.data,
        "eval_data": outcome.eval_data,
        "options": outcome.config,
        "evaluated": {"queries": outcome.eval_queries, "passages": outcome.eval_passages},
        "log": outcome.log,
        "figure": outcome.figure,
        "arms": [to_dict(a) for a in outcome.arms],
        "findings": [to_dict(f) for f in outcome.findings],
    })


