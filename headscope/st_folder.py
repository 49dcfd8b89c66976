"""A sentence-transformers folder (one with modules.json): which of its modules is the masked LM.

A SparseEncoder (SPLADE) keeps its masked LM as one module of modules.json: at the folder's root
(path ""), in a sub-folder (`0_MLMTransformer`, `0_Transformer`), or inside a Router, whose
router_config.json (config.json in older versions) names its sub-modules, each in a sub-folder
of the Router's own folder. An inference-free SPLADE model routes queries to a
SparseStaticEmbedding (a weight per token, no MLM head) and documents to the masked LM.

`find_mlm` reads those JSON files only (no torch, no weights) and returns the MLM module's
folder, which `checkpoint.resolve` then reads as the checkpoint, and the folders of the other
modules, which `fix` copies as they are. It asks for each file it reads through `has`, so a
reader that fetches files one by one (`remote`, over HTTP) fetches exactly those.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from headscope import hub
from headscope.containment import containment
from headscope.errors import InputError

MODULES_FILE = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
_ROUTER_CONFIGS = ("router_config.json", "config.json")
_FILL_MASK = "fill-mask"
_TRANSFORMER_CONFIG = "sentence_bert_config.json"

# has(rel): whether the folder holds the file `rel` (a POSIX path relative to the folder named),
# making it present there first when the reader fetches files on demand.
Has = Callable[[str], bool]


@dataclass(frozen=True)
class MlmModule:
    """The masked-LM module of a sentence-transformers folder."""

    root: Path  # the folder holding modules.json
    path: str  # the MLM module's folder relative to `root`, POSIX; "" for the root itself
    others: tuple[str, ...]  # the other modules' folders (relative), copied whole by fix
    route: str | None = None  # the Router's route holding the MLM ("document"), else None
    static_routes: tuple[str, ...] = ()  # routes through a SparseStaticEmbedding (no MLM head)

    @property
    def folder(self) -> Path:
        return self.root / self.path if self.path else self.root

    @property
    def description(self) -> str:
        """e.g. "MLM module 0_MLMTransformer of modules.json"."""
        where = self.path or "(the folder's root)"
        text = f"MLM module {where} of {MODULES_FILE}"
        if self.route is not None:
            text += f", the Router's {self.route} route"
        if self.static_routes:
            routes = " and ".join(self.static_routes)
            text += (f"; its {routes} route is a SparseStaticEmbedding, which has no MLM head "
                     "(left as it is)")
        return text


def _read(path: Path, root: Path) -> Any:
    """The JSON in `path`, a file inside `root` (never through a link out of it)."""
    reason = containment(root, path.relative_to(root).as_posix())
    if reason is not None:
        raise InputError(f"{path} {reason}; headscope reads a sentence-transformers folder's "
                         "files only from inside it: refusing it (repair the folder or "
                         "re-download it).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path} cannot be read as JSON ({err}); repair the "
                         f"sentence-transformers folder {root} or re-download it.") from err


def _relative(root: Path, path: Any, where: Path) -> str:
    """`path` of a module entry, checked: relative, no '..', a folder inside `root`."""
    pure = PurePosixPath(path) if isinstance(path, str) else None
    if pure is None or pure.is_absolute() or ".." in pure.parts:
        raise InputError(f"{where} names the module folder {path!r}, which is not a relative "
                         f"path inside {root}; repair the file or re-download the model.")
    rel = pure.as_posix() if path else ""
    if not (root / rel).resolve().is_relative_to(root.resolve()):
        raise InputError(f"{where} names the module folder {path!r}, which resolves outside "
                         f"{root}; repair the file or re-download the model.")
    return rel


def _inside(folder: str, name: str) -> str:
    """The file `name` of the module folder `folder` ("" the root), relative to the root."""
    return f"{folder}/{name}" if folder else name


def _is_mlm(rel: str, kind: str, root: Path, has: Has) -> bool:
    """An MLMTransformer, or a Transformer whose sentence_bert_config.json says fill-mask."""
    name = kind.rsplit(".", 1)[-1]
    if name == "MLMTransformer":
        return True
    if name != "Transformer" or not has(_inside(rel, _TRANSFORMER_CONFIG)):
        return False
    config = _read(root / _inside(rel, _TRANSFORMER_CONFIG), root)
    return isinstance(config, dict) and config.get("transformer_task") == _FILL_MASK


def _router_modules(root: Path, router: str, has: Has
                    ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(sub-module folder relative to root -> its type, route -> its sub-module folders)."""
    folder = root / router if router else root
    for name in _ROUTER_CONFIGS:
        if has(_inside(router, name)):
            config = _read(folder / name, root)
            break
    else:
        raise InputError(f"The Router module {router or '(root)'} of {root / MODULES_FILE} has "
                         f"no router_config.json; repair the folder or re-download the model.")
    types, structure = config.get("types"), config.get("structure")
    if not isinstance(types, dict) or not isinstance(structure, dict):
        raise InputError(f"{folder / name} has no 'types' and 'structure' objects; repair it "
                         "or re-download the model.")
    prefix = f"{router}/" if router else ""
    kinds = {prefix + _relative(folder, mid, folder / name): str(kind)
             for mid, kind in types.items()}
    routes = {str(route): [prefix + str(mid) for mid in ids]
              for route, ids in structure.items() if isinstance(ids, list)}
    return kinds, routes


def _modules(root: Path, has: Has) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Every module folder (relative) -> its type, Router sub-modules included; the routes."""
    entries = _read(root / MODULES_FILE, root)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(f"{root / MODULES_FILE} is not a list of modules; repair it or "
                         "re-download the model.")
    kinds: dict[str, str] = {}
    routes: dict[str, list[str]] = {}
    for entry in entries:
        rel = _relative(root, entry.get("path", ""), root / MODULES_FILE)
        kind = str(entry.get("type", ""))
        if kind.rsplit(".", 1)[-1] in ("Router", "Asym"):
            sub_kinds, sub_routes = _router_modules(root, rel, has)
            kinds.update(sub_kinds)
            routes.update(sub_routes)
            if rel:
                kinds[rel] = kind
        else:
            kinds[rel] = kind
    return kinds, routes


def find_mlm(root: Path, has: Has | None = None) -> MlmModule | None:
    """The MLM module of the sentence-transformers folder `root`; None without modules.json.
    Refuses (InputError) a modules.json with no MLM module, or with more than one.

    `has(rel)` is asked for each file read, in turn (modules.json, then a Router's
    router_config.json, then a Transformer's sentence_bert_config.json; the other modules'
    files never), before it is read; by default, whether it is a file under `root`."""
    if has is None:
        has = lambda rel: (root / rel).is_file()  # noqa: E731
    if not has(MODULES_FILE):
        return None
    kinds, routes = _modules(root, has)
    mlms = [rel for rel, kind in kinds.items() if _is_mlm(rel, kind, root, has)]
    if not mlms:
        shown = ", ".join(sorted({k.rsplit(".", 1)[-1] for k in kinds.values()})) or "none"
        raise InputError(
            f"{root / MODULES_FILE} lists no masked-LM module (an MLMTransformer, or a "
            f"Transformer with transformer_task \"{_FILL_MASK}\"; its modules: {shown}); "
            "headscope measures an MLM head: pass the folder or Hub id of the masked LM.")
    if len(mlms) > 1:
        raise InputError(
            f"{root / MODULES_FILE} lists {len(mlms)} masked-LM modules ({', '.join(mlms)}); "
            "headscope fixes one head at a time: pass one module's folder as MODEL, e.g. "
            f"{root / mlms[0]}.")
    (mlm,) = mlms
    route = next((r for r, ids in routes.items() if mlm in ids), None)
    static = tuple(r for r, ids in routes.items() if r != route and any(
        kinds.get(i, "").endswith("SparseStaticEmbedding") for i in ids))
    # Folders beside the MLM's (not the MLM's, nor one holding it: a root Router's is "").
    others = tuple(sorted(rel for rel in kinds if rel and rel != mlm
                          and not PurePosixPath(mlm).is_relative_to(rel)))
    return MlmModule(root=root, path=mlm, others=others, route=route, static_routes=static)


def module_note(source: str, revision: str | None = None) -> str | None:
    """"SOURCE: reading the MLM module ... of modules.json." for a local sentence-transformers
    folder or a cached Hub snapshot of one; None for anything else (nothing is downloaded)."""
    local = Path(source).expanduser()
    if local.is_dir():
        folder: Path | None = local
    elif hub.looks_like_hub_id(source):
        folder = hub.cached_snapshot(source, revision)
    else:
        folder = None
    module = find_mlm(folder) if folder is not None else None
    return None if module is None else f"{source}: reading the {module.description}."
