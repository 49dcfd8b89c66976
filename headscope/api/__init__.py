"""The public verbs. Each composes the layers below it and holds no maths of its own.

    from headscope import api
    report = api.inspect("answerdotai/ModernBERT-base")
    outcome = api.fix("answerdotai/ModernBERT-base", out="./fixed")   # k from the recommendation

One module per group of verbs: `inspecting` (inspect, check, compare), `fixing` (fix),
`training` (confirm, sweep), `demo`, `summaries` (the JSON forms of their results) and `memory`
(the last inspection `fix` follows). They draw nothing and write no document: figures and
HTML/Markdown belong to the faces (`plots`, `export`, `render`, `cli`).

Each name is imported from its submodule on first use (`api.inspect` imports `inspecting`, not
`training`), so a command pays only for the verbs it calls.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as the type checker sees them; imported on first use below
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

# name -> the submodule that owns it. Each submodule is imported on first use of one of its
# names, so `headscope inspect --weights-only` never imports the training verbs.
_HOMES: dict[str, str] = {
    **dict.fromkeys(("DEMO_ASSET", "DemoOutcome", "demo"), "demo"),
    **dict.fromkeys(("FixOptions", "FixOutcome", "fix", "fixed_folder_k"), "fixing"),
    **dict.fromkeys(("CheckOutcome", "InspectOptions", "Progress", "check", "check_many",
                     "compare", "compare_labels", "inspect", "inspect_loaded", "inspect_many",
                     "vocab_fields"), "inspecting"),
    **dict.fromkeys(("LAST_INSPECTION_MAX_AGE_HOURS", "LastInspection", "last_inspection",
                     "remember_inspection"), "memory"),
    **dict.fromkeys(("SUMMARY_KINDS", "SUMMARY_SCHEMA_VERSION", "check_summary",
                     "compare_summary", "fix_summary", "json_schema", "training_summary"),
                    "summaries"),
    **dict.fromkeys(("DEFAULT_SWEEP_KS", "ArmOutcome", "ArmSummary", "ConfirmOptions",
                     "TrainingOutcome", "confirm", "is_main_process", "sweep"), "training"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
        globals()[name] = value  # imported once
        return value
    # Moved to the face that writes documents; still reachable here for existing callers.
    if name == "write_report_documents":
        from headscope.export import write_report_documents

        return write_report_documents
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


class _Package(types.ModuleType):
    """This package, except that importing a submodule does not rebind a verb of the same name
    (the import system sets `api.demo` to the module `api.demo` when it first loads it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and name in _HOMES):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
