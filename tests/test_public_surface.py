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
    """Module -> its __all__: a literal list read from the source, else (made from a table, as
    headscope.api's) the imported module's."""
    out = {}
    for module, path in _modules().items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                if isinstance(node.value, ast.List) and all(
                        isinstance(e, ast.Constant) for e in node.value.elts):
                    out[module] = {e.value for e in node.value.elts}
                else:
                    out[module] = set(importlib.import_module(
                        "headscope." + module if module else "headscope").__all__)
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


def test_the_api_names_come_from_one_table():
    """headscope.api's lazy names: `_HOMES` is the table; __all__ is made from it, the type
    checker's imports under TYPE_CHECKING name exactly its names from exactly its submodules,
    and every verb `headscope` re-exports from api is one of them."""
    import headscope
    from headscope import api

    assert api.__all__ == sorted(api._HOMES)
    tree = ast.parse((PACKAGE / "api" / "__init__.py").read_text(encoding="utf-8"))
    typed = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                assert isinstance(child, ast.ImportFrom) and child.module
                typed.update({a.name: child.module.removeprefix("headscope.api.")
                              for a in child.names})
    assert typed == api._HOMES
    from_api = {n for n, home in headscope._EXPORTS.items() if home == "headscope.api"}
    assert from_api <= set(api._HOMES)
    for name in api.__all__:
        assert getattr(api, name) is getattr(
            importlib.import_module(f"headscope.api.{api._HOMES[name]}"), name)
