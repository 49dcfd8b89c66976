"""The public verbs. Each composes the layers below it and holds no maths of its own.

    from headscope import api
    report = api.inspect("answerdotai/ModernBERT-base")
    outcome = api.fix("answerdotai/ModernBERT-base", out="./fixed")   # k from the recommendation

One module per group of verbs: `inspecting` (inspect, check, compare), `fixing` (fix),
`training` (confirm, sweep), `demonstration` (demo), `summaries` (the JSON forms of their
results) and `memory` (the last inspection `fix` follows). They draw nothing and write no
document: figures and HTML/Markdown belong to the faces (`plots`, `export`, `render`, `cli`).

Each name is imported from its submodule on first use (`api.inspect` imports `inspecting`, not
`training`), so a command pays only for the verbs it calls. `_HOMES` is the one table of those
names; `__all__` is made from it, and a test checks that the type checker's imports below name
the same names from the same submodules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as the type checker sees them; imported on first use below
    from headscope.api.demonstration import DEMO_ASSET, DemoOutcome, demo
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
    **dict.fromkeys(("DEMO_ASSET", "DemoOutcome", "demo"), "demonstration"),
    **dict.fromkeys(("FixOptions", "FixOutcome", "fix", "fixed_folder_k"), "fixing"),
    **dict.fromkeys(("CheckOutcome", "InspectOptions", "Progress", "check", "check_many",
                     "compare", "compare_labels", "inspect", "inspect_loaded", "inspect_many",
                     "vocab_fields"), "inspecting"),
    **dict.fromkeys(("LAST_INSPECTION_MAX_AGE_HOURS", "LastInspection", "last_inspection",
                     "remember_inspection"), "memory"),
    **dict.fromkeys(("SUMMARY_KINDS", "SUMMARY_SCHEMA_VERSION", "check_summary",
                     "compare_summary", "fix_summary", "json_schema", "training_summary"),
                    "summaries"),
    **dict.fromkeys(("DEFAULT_SWEEP_KS", "ArmSummary", "ConfirmOptions",
                     "TrainingOutcome", "confirm", "is_main_process", "sweep"), "training"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = sorted(_HOMES)
