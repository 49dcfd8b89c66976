"""The plan of a fixed checkpoint: which tensor goes to which output file, and with what bytes.

The weights are written from the source checkpoint's *files*, not from the model in memory: every
tensor the rescale does not change is copied byte for byte (a `Stored` byte range, or a .bin
source's tensor), and only the head tensors the strategy changes are recomputed, in the dtype
they are stored in. The output is always safetensors, sharded like the source when the source
was sharded, else split by `max_shard_size`.

Tied-weight traps handled here (docs/rescale.md, "Head layouts per family"): every name of the
model's state dict is written explicitly (BERT's ``cls.predictions.decoder.bias`` included,
which transformers 5 drops from an untied BertForMaskedLM and then initialises to zeros on
reload); only a decoder weight that stays tied is left out: every loader re-ties it to the input
embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from headscope.checkpoint import read_bin
from headscope.containment import containment
from headscope.errors import InputError
from headscope.rescale import RescaleSpec, rescaled_roles
from headscope.safetensors_file import DTYPES, dtype_named, read_safetensors_header
from headscope.save.provenance import PROVENANCE_FILE

if TYPE_CHECKING:
    from headscope.checkpoint import LoadedModel
    from headscope.heads import Head

# Files never copied from the source: weights in any format (they would ship the unfixed model
# beside the fixed one) and their indexes. config.json and headscope.json are rewritten.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx",
                    ".onnx_data", ".gguf", ".ot", ".tflite")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json",
                   "tf_model.h5.index.json", "flax_model.msgpack.index.json")


@dataclass
class Stored:
    """One tensor of the source checkpoint."""

    key: str  # name in the file
    file: Path
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    begin: int = 0  # absolute byte range in `file` (safetensors)
    end: int = 0
    tensor: Any = None  # the tensor itself (.bin sources)

    @property
    def nbytes(self) -> int:
        if self.tensor is not None:
            return self.tensor.numel() * self.tensor.element_size()
        return self.end - self.begin

    def load(self):
        """The tensor, read from the file (safetensors) or as loaded (.bin)."""
        import torch

        if self.tensor is not None:
            return self.tensor
        dtype = getattr(torch, DTYPES[self.dtype].name)
        raw = bytearray(self.end - self.begin)
        with self.file.open("rb") as fh:
            fh.seek(self.begin)
            if fh.readinto(raw) != len(raw):
                raise InputError(f"{self.file} ended inside tensor {self.key}; re-download the "
                                 "checkpoint.")
        if not raw:
            return torch.empty(self.shape, dtype=dtype)
        # The tensor owns `raw` (a writable bytearray): no second copy.
        return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(self.shape)


def stored_dtype(dtype) -> str:
    """The safetensors code of a torch dtype (InputError for one headscope does not write)."""
    name = str(dtype).removeprefix("torch.")
    found = dtype_named(name)
    if found is not None and found.torch:
        return found.code
    raise InputError(f"Tensors of dtype {name} cannot be written to safetensors by headscope; "
                     "convert the checkpoint to float32 first.")


def read_source(ckpt) -> list[list[Stored]]:
    """Every stored tensor, grouped by source file (in index order), in file order."""
    files: list[list[Stored]] = []
    for path in ckpt.weight_files:
        if ckpt.weight_format == "safetensors":
            stored = [Stored(key, path, t.dtype, t.shape, t.begin, t.end)
                      for key, t in read_safetensors_header(path).tensors.items()]
            files.append(sorted(stored, key=lambda s: s.begin))
        else:
            files.append([Stored(key, path, stored_dtype(tensor.dtype), tuple(tensor.shape),
                                  tensor=tensor) for key, tensor in read_bin(path).items()])
    return files


@dataclass
class Entry:
    name: str  # name written
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    stored: Stored | None = None  # copy these bytes unchanged
    tensor: Any = None  # or write this tensor
    model_name: str | None = None  # the model state_dict name it loads into
    changed: bool = False  # the rescale changed it (`tensor` is its planned value)


@dataclass
class Plan:
    shards: list[tuple[str, list[Entry]]]  # (file name, entries)
    sharded: bool
    changed: dict[str, Any]  # model state_dict name -> planned value (source dtype)
    tied_out: bool
    source_bytes: int
    file_of: dict[str, str] = field(default_factory=dict)  # stored key -> output file

    @property
    def weight_bytes(self) -> int:
        return sum(e.nbytes for _, entries in self.shards for e in entries)


def _model_name_for(key: str, model_names: set[str], prefix: str) -> str | None:
    """The model state_dict name a stored key loads into (legacy gamma/beta, base prefix)."""
    candidates = [key]
    if key.endswith(".gamma"):
        candidates.append(key[: -len(".gamma")] + ".weight")
    elif key.endswith(".beta"):
        candidates.append(key[: -len(".beta")] + ".bias")
    if prefix:
        candidates += [prefix + c for c in list(candidates)]
    for c in candidates:
        if c in model_names:
            return c
    return None


def _alias_groups(model) -> dict[str, list[str]]:
    """state_dict name -> every name sharing its tensor object (itself included)."""
    by_obj: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        by_obj.setdefault(id(t), []).append(name)
    return {n: names for names in by_obj.values() for n in names}


def _shard_name(source: Path, i: int, n: int, sharded_source: bool) -> str:
    if sharded_source and source.suffix == ".safetensors":
        return source.name
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _stored_names(files: list[list[Stored]], aliases: dict[str, list[str]], prefix: str
                  ) -> tuple[dict[str, str], dict[str, Stored]]:
    """(stored key -> the model name it loads into, model name -> a stored tensor holding its
    value, tied aliases included)."""
    key_to_name: dict[str, str] = {}
    stored_of: dict[str, Stored] = {}
    model_names = set(aliases)
    for stored_list in files:
        for s in stored_list:
            name = _model_name_for(s.key, model_names, prefix)
            if name is not None:
                key_to_name[s.key] = name
                for alias in aliases[name]:
                    stored_of.setdefault(alias, s)
    return key_to_name, stored_of


def _planned_values(head: Head, spec: RescaleSpec, stored_of: dict[str, Stored],
                    aliases: dict[str, list[str]], weight_format: str) -> dict[str, Any]:
    """model name -> new value of every tensor the rescale changes, computed from the stored
    values (so in the dtype they are stored in). Only the roles the strategy reads are loaded,
    each stored tensor once."""
    needed = {"untie": ("decoder_weight",), "tied": ("embeddings",),
              "fold": ("norm_weight", "norm_bias")}[spec.strategy]
    needed += ("bias",) if spec.scale_bias else ()
    roles: dict[str, Any] = {}
    keys: list[str] = []
    for role in needed:
        name = head.names.get(role)
        if name is not None and name in stored_of:
            roles[role] = stored_of[name].load()
            keys.append(stored_of[name].key)
    # The loaded values are private copies: divide them in place (no second copy of a V x E
    # matrix), unless two roles were read from the same stored tensor (then from .bin, shared).
    private = len(set(keys)) == len(keys) and weight_format == "safetensors"
    new = rescaled_roles(spec, roles, inplace=private)
    del roles
    changed: dict[str, Any] = {}
    for role, value in new.items():
        name = head.names[role]
        targets = [name] if (spec.strategy == "untie" and role == "decoder_weight") \
            else aliases.get(name, [name])
        for target in targets:
            changed[target] = value
    return changed


def _entry(model, changed: dict[str, Any], out_name: str, model_name: str | None,
           s: Stored | None) -> Entry:
    """What to write under `out_name`: the planned value, else the stored bytes, else (a name
    the files do not store) the model's own tensor."""
    if model_name in changed:
        t = changed[model_name]
        return Entry(out_name, stored_dtype(t.dtype), tuple(t.shape),
                      t.numel() * t.element_size(), tensor=t, model_name=model_name,
                      changed=True)
    if s is not None:
        return Entry(out_name, s.dtype, s.shape, s.nbytes, stored=s, model_name=model_name)
    assert model_name is not None  # a stored key that maps to no model name has `s`
    t = model.state_dict()[model_name].detach().cpu()
    return Entry(out_name, stored_dtype(t.dtype), tuple(t.shape),
                  t.numel() * t.element_size(), tensor=t, model_name=model_name)


def _entry_groups(loaded: LoadedModel, head: Head, files: list[list[Stored]],
                  aliases: dict[str, list[str]], key_to_name: dict[str, str],
                  stored_of: dict[str, Stored], changed: dict[str, Any], skip: set[str]
                  ) -> list[list[Entry]]:
    """One list of entries per source file, in its order; names the files do not store (a tied
    decoder, BERT's decoder bias) are written explicitly, next to the stored tensor they
    alias."""
    model = loaded.model
    groups: list[list[Entry]] = []
    covered: set[str] = set()
    home: dict[str, int] = {}  # model name -> index of the group its stored value lives in
    for gi, stored_list in enumerate(files):
        entries = []
        for s in stored_list:
            name = key_to_name.get(s.key)
            if name is not None:
                covered.add(name)
                for alias in aliases[name]:
                    home.setdefault(alias, gi)
            if name in skip:
                continue
            entries.append(_entry(model, changed, s.key, name, s))
        groups.append(entries)
    fallback = home.get(head.names.get("embeddings", ""), len(groups) - 1)
    for name in sorted(set(aliases) - covered - skip):
        groups[home.get(name, fallback)].append(
            _entry(model, changed, name, name, stored_of.get(name)))
    return groups


def _shards(ckpt, groups: list[list[Entry]], sharded_source: bool, max_shard_size: int
            ) -> list[tuple[str, list[Entry]]]:
    """(file name, entries) of every output file: a sharded source keeps its shards; a single
    file is cut into shards of at most `max_shard_size` bytes (one file when all fit)."""
    if sharded_source:
        n = len(groups)
        return [(_shard_name(ckpt.weight_files[i], i, n, True), g) for i, g in enumerate(groups)]
    chunks: list[list[Entry]] = [[]]
    size = 0
    for e in (e for g in groups for e in g):
        if chunks[-1] and size + e.nbytes > max_shard_size:
            chunks.append([])
            size = 0
        chunks[-1].append(e)
        size += e.nbytes
    if len(chunks) == 1:
        return [("model.safetensors", chunks[0])]
    n = len(chunks)
    return [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", c) for i, c in enumerate(chunks)]


def make_plan(loaded: LoadedModel, head: Head, spec: RescaleSpec, max_shard_size: int) -> Plan:
    """What to write: every stored tensor (its bytes, or its rescaled value) grouped into
    output files."""
    ckpt = loaded.checkpoint
    files = read_source(ckpt)
    aliases = _alias_groups(loaded.model)
    prefix = (getattr(loaded.model, "base_model_prefix", "") or "")
    key_to_name, stored_of = _stored_names(files, aliases, prefix + "." if prefix else "")
    changed = _planned_values(head, spec, stored_of, aliases, ckpt.weight_format)

    tied_out = head.tied and spec.strategy != "untie"
    skip = set()
    dec_name = head.names.get("decoder_weight")
    if tied_out and dec_name and dec_name != head.names.get("embeddings"):
        skip.add(dec_name)  # every loader re-ties it to the input embeddings
    groups = _entry_groups(loaded, head, files, aliases, key_to_name, stored_of, changed, skip)

    sharded_source = len(files) > 1 or (ckpt.path / (
        "model.safetensors.index.json" if ckpt.weight_format == "safetensors"
        else "pytorch_model.bin.index.json")).is_file()
    shards = _shards(ckpt, groups, sharded_source, max_shard_size)
    source_bytes = sum(p.stat().st_size for p in ckpt.weight_files)
    return Plan(shards=shards, sharded=len(shards) > 1 or sharded_source, changed=changed,
                 tied_out=tied_out, source_bytes=source_bytes)


def mlm_folder(ckpt) -> str:
    """The masked LM's folder relative to the folder the user named ("" unless a
    sentence-transformers folder keeps it in a sub-folder): where its files are written."""
    return ckpt.module.path if ckpt.module is not None else ""


def _is_weights(name: str) -> bool:
    """A weight file in any format, or an index of one."""
    pure = PurePosixPath(name)
    return pure.name in _WEIGHT_INDEXES or pure.suffix in _WEIGHT_SUFFIXES


def _weight_folders(names: Sequence[str], mlm: str) -> dict[str, str]:
    """Top-level sub-folder -> the first weight file in it, for each that holds weights and is
    not (nor holds) the masked LM's folder `mlm`. `names`: the candidate files (kept modules
    already taken out)."""
    own = PurePosixPath(mlm).parts[0] if mlm else None
    folders: dict[str, str] = {}
    for name in names:
        parts = PurePosixPath(name).parts
        if len(parts) > 1 and parts[0] != own and _is_weights(name):
            folders.setdefault(parts[0], name)
    return folders


def _hidden(rel: PurePosixPath, path: Path) -> tuple[str, str] | None:
    """(name, "name (why)") of a hidden file or folder (a dot name: .git, .gitattributes, a
    tool's .cache) that is the first hidden part of its path; None for anything else. The
    files inside a hidden folder are left out with it, without a line each."""
    first = next((i for i, part in enumerate(rel.parts) if part.startswith(".")), None)
    if first is None or first != len(rel.parts) - 1:
        return None
    folder = "/" if path.is_dir() and not path.is_symlink() else ""
    return rel.as_posix(), f"{rel.as_posix()}{folder} (hidden: fix copies no hidden file or folder)"


def _skip_reason(name: str, weight_folders: dict[str, str], st_folder: bool) -> str | None:
    """Why the file `name` (no link, not rewritten, not in a kept module) is not copied, or
    None: it is copied."""
    top = PurePosixPath(name).parts[0]
    if top in weight_folders and top != name:
        first = weight_folders[top]
        if name != first:
            return f"in {top}/, which holds weights ({first}) and is left out whole"
        what = ("is not a module of modules.json" if st_folder else
                "is not the masked LM's (no modules.json says what it holds)")
        return (f"weights in {top}/, a folder that {what}: they may be this model in another "
                "format or state, which would ship the unfixed head beside the fixed one, so "
                f"{top}/ is left out whole; copy it yourself if they are not this model's")
    if PurePosixPath(name).name in _WEIGHT_INDEXES:
        return "the index of weights in another format, which are not copied"
    if PurePosixPath(name).suffix in _WEIGHT_SUFFIXES:
        return "weights in another format: they would ship the unfixed head beside the fixed one"
    return None


def other_files(src: Path, replaced: set[str], *, mlm: str = "", keep: Sequence[str] = ()
                ) -> tuple[list[str], list[str]]:
    """(files to copy unchanged, files left out, each "name (why)"): every regular file of
    `src`, recursively, except the masked LM's config.json (in the folder `mlm`, relative) and
    headscope.json (both rewritten) and the `replaced` files (the weights and indexes written
    anew, README.md). Every other file is copied, or listed with its reason:

    - weights in other formats and their indexes (they would ship the unfixed head beside the
      fixed one), except inside the `keep` folders (a sentence-transformers folder's other
      modules, whose weights are not the head's);
    - a top-level sub-folder holding weights that is neither the masked LM's nor a kept module
      (an `onnx/` export, a `checkpoint-500/`, a module no modules.json lists), left out whole:
      headscope cannot tell its weights from a copy of the unfixed model, and half of such a
      folder would be of no use;
    - hidden files and folders (one line for a hidden folder, not one per file in it);
    - links out of the checkpoint and special files (`containment`), which are never read."""
    rewritten = {f"{mlm}/config.json" if mlm else "config.json", PROVENANCE_FILE}
    copied, candidates = [], []
    skipped: list[tuple[str, str]] = []  # (name, "name (why)"), listed in name order
    for path in sorted(src.rglob("*")):
        rel = PurePosixPath(path.relative_to(src).as_posix())
        hidden = _hidden(rel, path)
        if hidden is not None:
            skipped.append(hidden)
        if any(part.startswith(".") for part in rel.parts) or (
                path.is_dir() and not path.is_symlink()):
            continue
        name = rel.as_posix()
        reason = containment(src, name)
        if reason is not None:
            reason = "points nowhere" if reason == "missing" else reason
            link = "a link that " if path.is_symlink() else ""
            skipped.append((name, f"{name} ({link}{reason})"))
        elif name not in rewritten and name not in replaced:
            candidates.append(name)
    kept = [n for n in candidates if any(PurePosixPath(n).is_relative_to(f) for f in keep)]
    rest = [n for n in candidates if n not in set(kept)]
    weight_folders = _weight_folders(rest, mlm)
    st_folder = (src / "modules.json").is_file()
    for name in rest:
        why = _skip_reason(name, weight_folders, st_folder)
        if why is None:
            copied.append(name)
        else:
            skipped.append((name, f"{name} ({why})"))
    return sorted([*kept, *copied]), [text for _, text in sorted(skipped)]
