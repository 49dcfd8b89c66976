"""The public surface: the verbs and their options reachable from `headscope` (lazily, so
`import headscope` stays torch-free), and every `__all__` listing what other modules import."""

from __future__ import annotations

import ast
import importlib

from test_architecture import PACKAGE, ROOT, _modules, run_json


def test_headscope_reaches_the_verbs_and_options_without_importing_torch():
    import headscope

    for name in headscope.__all__:
        if name == "__version__":
            continue
        home = headscope._EXPORTS[name]
        assert getattr(headscope, name) is getattr(importlib.import_module(home), name)
    assert set(headscope.__all__) <= set(dir(headscope))
    code = ("import json, sys\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n"
            "import headscope\n"
            "light = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch')\n"
            "               and sys.modules[m] is not None)\n"
            "verbs = [headscope.inspect, headscope.check, headscope.InspectOptions,\n"
            "         headscope.FixOptions, headscope.ConfirmOptions, headscope.Policy]\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', "
            "'transformers') and sys.modules[m] is not None)\n"
            "assert headscope.guard.Policy is headscope.Policy  # modules, on first use too\n"
            "try:\n    headscope.nothing\nexcept AttributeError as e:\n    missing = str(e)\n"
            "print(json.dumps([light, heavy, missing]))\n")
    light, heavy, missing = run_json(code)
    assert light == [] and heavy == []
    assert missing == "module 'headscope' has no attribute 'nothing'"


def _all_lists() -> dict[str, set[str]]:
    out = {}
    for module, path in _modules().items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                if isinstance(node.value, ast.List) and all(
                        isinstance(e, ast.Constant) for e in node.value.elts):
                    out[module] = {e.value for e in node.value.elts}
    return out


def test_every_all_lists_what_other_modules_import_and_nothing_else():
    alls = _all_lists()
    assert {"api", "guard", "recommend", "report", "plots", "export"} <= set(alls)
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"),
               *(ROOT / "scripts").glob("*.py")]
    unlisted = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                module = node.module.removeprefix("headscope.")
                if node.module.startswith("headscope.") and module in alls:
                    unlisted |= {f"{module}.{a.name}" for a in node.names
                                 if not a.name.startswith("_") and a.name not in alls[module]}
    assert sorted(unlisted) == []
    for module, names in alls.items():
        mod = importlib.import_module("headscope." + module if module else "headscope")
        assert [n for n in sorted(names) if not hasattr(mod, n)] == [], module


def test_names_that_moved_stay_importable_from_their_old_home():
    from headscope import api, export

    assert api.write_report_documents is export.write_report_documents
    assert api.ArmOutcome is api.ArmSummary
    for name in api.__all__:
        assert getattr(api, name) is not None
