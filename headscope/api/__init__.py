"""The public verbs. Each composes the layers below it and holds no maths of its own.

    from headscope import api
    report = api.inspect("answerdotai/ModernBERT-base")
    outcome = api.fix("answerdotai/ModernBERT-base", out="./fixed")   # k from the recommendation

One module per group of verbs: `inspecting` (inspect, check, compare), `fixing` (fix),
`training` (confirm, sweep), `demo`, `summaries` (the JSON forms of their results) and `memory`
(the last inspection `fix` follows). They draw nothing and write no document: figures and
HTML/Markdown belong to the faces (`plots`, `export`, `render`, `cli`).
"""

from __future__ import annotations

from typing import Any

from headscope.api.demo import DEMO_ASSET, DemoOutcome, demo
from headscope.api.fixing import FixOptions, FixOutcome, fix, fixed_folder_k
from headscope.api.inspecting import (
    CheckOutcome,
    InspectOptions,
    Progress,
    check,
    check_many,
    compare,
    compare_labels,
    inspect,
    inspect_loaded,
    inspect_many,
    vocab_fields,
)
from headscope.api.memory import (
    LAST_INSPECTION_MAX_AGE_HOURS,
    LastInspection,
    last_inspection,
    remember_inspection,
)
from headscope.api.summaries import (
    SUMMARY_KINDS,
    SUMMARY_SCHEMA_VERSION,
    check_summary,
    compare_summary,
    fix_summary,
    json_schema,
    training_summary,
)
from headscope.api.training import (
    DEFAULT_SWEEP_KS,
    ArmOutcome,
    ArmSummary,
    ConfirmOptions,
    TrainingOutcome,
    confirm,
    is_main_process,
    sweep,
)


def __getattr__(name: str) -> Any:
    # Moved to the face that writes documents; still reachable here for existing callers.
    if name == "write_report_documents":
        from headscope.export import write_report_documents

        return write_report_documents
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_SWEEP_KS",
    "DEMO_ASSET",
    "LAST_INSPECTION_MAX_AGE_HOURS",
    "SUMMARY_KINDS",
    "SUMMARY_SCHEMA_VERSION",
    "ArmOutcome",
    "ArmSummary",
    "CheckOutcome",
    "ConfirmOptions",
    "DemoOutcome",
    "FixOptions",
    "FixOutcome",
    "InspectOptions",
    "LastInspection",
    "Progress",
    "TrainingOutcome",
    "check",
    "check_many",
    "check_summary",
    "compare",
    "compare_labels",
    "compare_summary",
    "confirm",
    "demo",
    "fix",
    "fix_summary",
    "fixed_folder_k",
    "inspect",
    "inspect_loaded",
    "inspect_many",
    "is_main_process",
    "json_schema",
    "last_inspection",
    "remember_inspection",
    "sweep",
    "training_summary",
    "vocab_fields",
]
