"""headscope: diagnose and calibrate the MLM head of pretrained encoders for SPLADE.

The verbs and their options are reachable from here:

    import headscope
    report = headscope.inspect("./ckpt")
    outcome = headscope.fix("./ckpt", "./fixed", options=headscope.FixOptions(k=8))

Each name is imported on first use, so `import headscope` stays import-light (no torch, no
numpy): `headscope check --report` and the weights-only readers work where torch is not
installed, and a name whose module needs torch (ProbeConfig, LoadOptions) imports it only when
used. `headscope.api` holds the verbs; the other modules are the layers below and the faces.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

# name -> the module that owns it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("inspect", "inspect_loaded", "inspect_many", "fix", "check", "check_many", "compare",
         "confirm", "sweep", "demo", "InspectOptions", "FixOptions", "ConfirmOptions",
         "FixOutcome", "CheckOutcome", "TrainingOutcome", "DemoOutcome"),
        "headscope.api"),
    "ProbeConfig": "headscope.probe",
    "LoadOptions": "headscope.checkpoint",
    "Policy": "headscope.guard",
    "Report": "headscope.report",
    "read_json": "headscope.report",
    "HeadscopeError": "headscope.errors",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if not name.startswith("_") and importlib.util.find_spec(f"headscope.{name}"):
            return importlib.import_module(f"headscope.{name}")  # a module: headscope.api
        raise AttributeError(f"module 'headscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["__version__", *_EXPORTS]
