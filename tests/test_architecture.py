"""docs/architecture.md checked against the code: every module is in the layer table, and no
module imports from a layer above its own (read from the source, function-level imports too).
The table's "imports torch?" column is checked by tests/test_weights_only.py, which imports every
module it marks "no" or "lazily" with torch and transformers blocked."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "headscope"

# Imports that break the layer rule on purpose, each with its reason.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def run_json(code: str, **kwargs):
    """Run `code` in a fresh interpreter on this checkout; what it prints, read as JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, **kwargs)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def table_rows() -> list[tuple[int, list[str], str]]:
    """(layer, modules, "imports torch?" cell) for each row of docs/architecture.md's layer
    table; "splade/detectors" is the module splade.detectors, "splade/" the package."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            names = [n.rstrip("/").replace("/", ".") for n in re.findall(r"`([a-z_/]+)`", cells[1])]
            rows.append((int(cells[0]), names, cells[3]))
    return rows


def torch_column() -> dict[str, str]:
    """Module -> its "imports torch?" cell. A cell of a row of several modules speaks of those
    it names ("`cli` lazily"); the others of that row import torch."""
    out: dict[str, str] = {}
    for _, names, cell in table_rows():
        named = [n for n in names if f"`{n}`" in cell]
        for name in names:
            out[name] = cell if not named or name in named else "yes"
    return out


def _layers() -> dict[str, int]:
    """Module (dotted, without 'headscope.') -> its layer."""
    return {name: layer for layer, names, _ in table_rows() for name in names}


def _modules() -> dict[str, Path]:
    """Every module of the package, dotted without 'headscope.', its package as its name."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts != ("__main__",):
            out[".".join(parts)] = path
    return out


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
    """A module's layer: its own row, else its package's row ("splade/ (the rest)")."""
    while module:
        if module in layers:
            return layers[module]
        module = module.rpartition(".")[0]
    return None


def _imports(path: Path) -> set[str]:
    """headscope modules `path` imports, at any depth, outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("headscope."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "headscope" or node.module.startswith("headscope.")):
            if node.module == "headscope":  # `from headscope import probe` (not __version__)
                found.update(f"headscope.{a.name}" for a in node.names
                             if (PACKAGE / a.name).is_dir()
                             or (PACKAGE / f"{a.name}.py").is_file())
            else:
                found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name.removeprefix("headscope.") for name in found}


def test_every_module_has_a_row_in_the_layer_table():
    layers = _layers()
    assert {"errors", "fileio", "stats", "recommend", "api", "cli", "splade"} <= set(layers)
    missing = sorted(m for m in _modules() if _layer_of(m, layers) is None)
    assert missing == [], f"modules missing from docs/architecture.md's table: {missing}"
    stale = sorted(m for m in layers if m not in _modules())
    assert stale == [], f"rows of docs/architecture.md naming no module: {stale}"


def test_no_module_imports_from_a_layer_above_its_own():
    layers = _layers()
    upward = []
    for module, path in _modules().items():
        if module == "":  # headscope/__init__: the lazy re-export surface, above every layer
            continue
        own = _layer_of(module, layers)
        for imported in _imports(path):
            theirs = _layer_of(imported, layers)
            assert theirs is not None, f"{module} imports {imported}, which has no layer"
            if theirs > own and (module.split(".")[0], imported) not in ALLOWED_UPWARD:
                upward.append(f"{module} (layer {own}) imports {imported} (layer {theirs})")
    assert upward == []


def test_the_rooms_of_save_import_only_the_rooms_listed_above_them():
    """Inside the save package the table's row order is the order of its rooms: each imports
    only rooms above it (background < provenance < card < plan < writer < verify < folder), and
    the package itself (`save_fixed`) composes them."""
    rooms = [n for _, names, _ in table_rows() for n in names if n.startswith("save.")]
    assert rooms == ["save.background", "save.provenance", "save.card", "save.plan",
                     "save.writer", "save.verify", "save.folder"]
    modules = _modules()
    assert sorted(m for m in modules if m.startswith("save.")) == sorted(rooms)
    for i, room in enumerate(rooms):
        inside = {m for m in _imports(modules[room]) if m == "save" or m.startswith("save.")}
        assert inside <= set(rooms[:i]), f"{room} imports {sorted(inside - set(rooms[:i]))}"
    assert {m for m in _imports(modules["save"]) if m.startswith("save.")} <= set(rooms)


def test_the_rooms_of_cli_import_only_the_rooms_before_them():
    """The cli package's rooms in docs/architecture.md's order (plumbing < options < group <
    verbs): each imports only rooms before it, and the package imports the group and the
    verbs (defining the commands registers them)."""
    rooms = ["cli.plumbing", "cli.options", "cli.group", "cli.verbs"]
    row = next(line for line in (ROOT / "docs" / "architecture.md").read_text(
        encoding="utf-8").splitlines() if "the `cli` package's rooms" in line)
    named = re.findall(r"`(plumbing|options|group|verbs)`", row)
    assert named == [r.removeprefix("cli.") for r in rooms]
    modules = _modules()
    assert sorted(m for m in modules if m.startswith("cli.")) == sorted(rooms)
    for i, room in enumerate(rooms):
        inside = {m for m in _imports(modules[room]) if m == "cli" or m.startswith("cli.")}
        assert inside <= set(rooms[:i]), f"{room} imports {sorted(inside - set(rooms[:i]))}"
    assert {m for m in _imports(modules["cli"]) if m.startswith("cli.")} == {
        "cli.group", "cli.verbs"}


MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 85  # "about 80": longer needs its reason in the docstring


def test_no_room_grows_into_a_hall():
    """No module over 800 lines; no function over about 80 unless its docstring says why
    ("Over 80 lines ...")."""
    too_long = []
    for module, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{module}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES and "Over 80 lines" not in (
                        ast.get_docstring(node) or ""):
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert too_long == []


def test_the_layer_rule_would_catch_an_upward_import(tmp_path):
    """The checker itself: a function-level import of a face from a core module is found, one
    under TYPE_CHECKING is not."""
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from headscope.api import Report\n"
                      "def f():\n    from headscope import render\n")
    assert _imports(source) == {"render"}
    assert _layer_of("render", _layers()) > _layer_of("stats", _layers())


def test_only_the_faces_import_click_rich_and_matplotlib():
    owners = {"click": {"cli"}, "rich": {"render", "cli"}, "matplotlib": {"plots"}}
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        for library, allowed in owners.items():
            if library in names:
                assert module.split(".")[0] in allowed, f"{module} imports {library}"
