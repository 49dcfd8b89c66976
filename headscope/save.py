"""Write a fixed checkpoint: temporary sibling folder, verify by reload, atomic rename, provenance.

The weights are written from the source checkpoint's *files*, not from the model in memory: every
tensor the rescale does not change is copied byte for byte, and only the head tensors the strategy
changes are recomputed, in the dtype they are stored in. Tensors keep the source file's order
(when that keeps each aligned to its element size), so a safetensors source's unchanged tensors
are copied as a few long byte ranges, in the kernel where it can (copy_file_range), never held in
memory. The output is always safetensors, sharded like the source when the source was sharded,
else split by `max_shard_size`.

Tied-weight traps handled here (docs/rescale.md, "Head layouts per family"):
- An untied decoder is written under its own name with ``tie_word_embeddings: false`` explicit in
  config.json, so that transformers 4.x does not re-tie it on load.
- Every name of the model's state dict is written explicitly (BERT's
  ``cls.predictions.decoder.bias`` included, which transformers 5 drops from an untied
  BertForMaskedLM and then initialises to zeros on reload). Only a decoder weight that stays tied
  is left out: every loader re-ties it to the input embeddings.

Verification, after writing (docs/rescale.md lists it for users):
- the written files, byte for byte (no reload needed): every header entry has the planned name,
  dtype and shape; every tensor the rescale does not change holds exactly the bytes of its source
  (the byte range in the source file, or the source tensor of a .bin checkpoint); every changed
  tensor holds exactly the bytes of its planned value;
- the loaded source model: each unchanged tensor in memory equals its source value (cast to the
  loaded dtype), so a model changed in memory after loading is refused;
- one reload with plain ``AutoModelForMaskedLM.from_pretrained``: no missing or mismatched keys;
  the tie state; each changed tensor as reloaded equals its planned value; and one forward pass
  on the verification texts: the logits equal `expected_logits` of the original's within dtype
  tolerance (for ``tied``: equal the in-memory rescaled model's, with the departure from
  `expected_logits` reported); last hidden states unchanged for untie and fold (drift reported
  for tied).
Comparing bytes with the source instead of comparing every reloaded tensor with the model in
memory reads each tensor once from each side and never materialises a second model's unchanged
tensors. A failure deletes the temporary folder and raises VerificationError; nothing is left
behind on any exception, KeyboardInterrupt included.

What does not depend on the main thread's work runs beside it on threads (`_in_background`): the
sha256 of the source files (provenance), the original's forward pass on the verification texts
(during the write), the flush of the weight files to disk and the reload with its forward pass
(both during the byte checks, which report first when they fail). Every file is flushed again,
with the folder, before the rename; threads running torch are waited for before leaving on a
failure (an interpreter exiting under a running forward pass aborts).
"""

from __future__ import annotations

import copy
import hashlib
import json
import mmap
import os
import shutil
import socket
import struct
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from headscope import __version__, fileio
from headscope.checkpoint import (
    SAFETENSORS_DTYPE_BITS,
    containment,
    read_bin,
    read_safetensors_header,
)
from headscope.errors import (
    InputError,
    OutputExistsError,
    OutputWriteError,
    VerificationError,
    WeightFileError,
)
from headscope.heads import find_head
from headscope.rescale import (
    RescaleSpec,
    check_applicable,
    expected_logits,
    rescale_model,
    rescaled_roles,
)

if TYPE_CHECKING:

    from headscope.checkpoint import LoadedModel
    from headscope.heads import Head

Progress = Callable[[str, int, int], None]  # (phase, done, total)
_T = TypeVar("_T")

PROVENANCE_FILE = "headscope.json"
# Inside a temporary folder while it is being written: who writes it (a killed run's folder is
# recognised by it and removed by the next run).
WRITING_MARKER = ".headscope-writing"
DEFAULT_MAX_SHARD_SIZE = 5_000_000_000  # bytes; transformers 4.x's default "5GB"
_COPY_CHUNK = 1 << 24  # 16 MiB per read when copying raw tensor bytes

# Files never copied from the source: weights in any format (they would ship the unfixed model
# beside the fixed one) and their indexes. config.json and headscope.json are rewritten.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx",
                    ".onnx_data", ".gguf", ".ot", ".tflite")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json",
                   "tf_model.h5.index.json", "flax_model.msgpack.index.json")

# safetensors dtype names <-> torch dtype attribute names
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Verification:
    """What was checked after writing (or, in a dry run, on the rescaled model in memory)."""

    against: str  # "reload" (AutoModelForMaskedLM.from_pretrained of the output) | "memory"
    n_texts: int
    max_abs_logit_error: float  # vs expected_logits(original logits)
    logit_tolerance: float
    hidden_drift: float  # max abs change of the last hidden states vs the original
    reload_error: float | None  # tied: reloaded logits vs the in-memory rescaled model's
    tensors_identical: int  # unchanged tensors checked byte-identical to the source
    tensors_changed: tuple[str, ...]  # state_dict names that changed, each equal to its plan
    tied: bool  # decoder shares storage with the input embeddings after reload


@dataclass(frozen=True)
class FixResult:
    out: Path
    spec: RescaleSpec
    dry_run: bool  # True: nothing was written; `files` lists what would have been
    files: tuple[str, ...]  # paths relative to `out`
    weight_files: tuple[str, ...]
    skipped: tuple[str, ...]  # source files not copied (weights in other formats)
    verification: Verification
    tied: bool  # tie state of the written checkpoint
    source_weight_bytes: int
    weight_bytes: int
    largest_shard_bytes: int
    sharded: bool
    cleaned: tuple[str, ...] = ()  # stale temporary folders of killed runs removed first


# --------------------------------------------------------------------------------------------
# reading the source


@dataclass
class _Stored:
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
        dtype = getattr(torch, _ST_DTYPES[self.dtype])
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


def _torch_st_dtype(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    for st, torch_name in _ST_DTYPES.items():
        if torch_name == name:
            return st
    raise InputError(f"Tensors of dtype {name} cannot be written to safetensors by headscope; "
                     "convert the checkpoint to float32 first.")


def _read_source(ckpt) -> list[list[_Stored]]:
    """Every stored tensor, grouped by source file (in index order), in file order."""
    files: list[list[_Stored]] = []
    for path in ckpt.weight_files:
        if ckpt.weight_format == "safetensors":
            stored = [_Stored(key, path, t.dtype, t.shape, t.begin, t.end)
                      for key, t in read_safetensors_header(path).tensors.items()]
            files.append(sorted(stored, key=lambda s: s.begin))
        else:
            files.append([_Stored(key, path, _torch_st_dtype(tensor.dtype), tuple(tensor.shape),
                                  tensor=tensor) for key, tensor in read_bin(path).items()])
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _in_background(work: Callable[[], _T], name: str) -> Callable[[], _T]:
    """Start `work` on a thread; the returned function waits for it and returns its result, or
    raises its error. What runs there releases the GIL for most of its time (hashing, fsync,
    torch), so on two cores or more it overlaps with the main thread's writing and checking
    instead of adding to them."""
    import threading

    outcome: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as err:  # re-raised by the caller
            errors.append(err)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def result() -> _T:
        thread.join()
        if errors:
            raise errors[0]
        return outcome[0]

    return result


def _hash_in_background(paths: Sequence[Path]) -> Callable[[], dict[str, str]]:
    """sha256 of `paths` on a thread: {file name: hex} when the returned function is called."""
    return _in_background(lambda: {p.name: _sha256(p) for p in paths}, "headscope-sha256")


# --------------------------------------------------------------------------------------------
# the plan: which tensor goes where


@dataclass
class _Entry:
    name: str  # name written
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    stored: _Stored | None = None  # copy these bytes unchanged
    tensor: Any = None  # or write this tensor
    model_name: str | None = None  # the model state_dict name it loads into
    changed: bool = False  # the rescale changed it (`tensor` is its planned value)


@dataclass
class _Plan:
    shards: list[tuple[str, list[_Entry]]]  # (file name, entries)
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


def _stored_names(files: list[list[_Stored]], aliases: dict[str, list[str]], prefix: str
                  ) -> tuple[dict[str, str], dict[str, _Stored]]:
    """(stored key -> the model name it loads into, model name -> a stored tensor holding its
    value, tied aliases included)."""
    key_to_name: dict[str, str] = {}
    stored_of: dict[str, _Stored] = {}
    model_names = set(aliases)
    for stored_list in files:
        for s in stored_list:
            name = _model_name_for(s.key, model_names, prefix)
            if name is not None:
                key_to_name[s.key] = name
                for alias in aliases[name]:
                    stored_of.setdefault(alias, s)
    return key_to_name, stored_of


def _planned_values(head: Head, spec: RescaleSpec, stored_of: dict[str, _Stored],
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
           s: _Stored | None) -> _Entry:
    """What to write under `out_name`: the planned value, else the stored bytes, else (a name
    the files do not store) the model's own tensor."""
    if model_name in changed:
        t = changed[model_name]
        return _Entry(out_name, _torch_st_dtype(t.dtype), tuple(t.shape),
                      t.numel() * t.element_size(), tensor=t, model_name=model_name,
                      changed=True)
    if s is not None:
        return _Entry(out_name, s.dtype, s.shape, s.nbytes, stored=s, model_name=model_name)
    assert model_name is not None  # a stored key that maps to no model name has `s`
    t = model.state_dict()[model_name].detach().cpu()
    return _Entry(out_name, _torch_st_dtype(t.dtype), tuple(t.shape),
                  t.numel() * t.element_size(), tensor=t, model_name=model_name)


def _entry_groups(loaded: LoadedModel, head: Head, files: list[list[_Stored]],
                  aliases: dict[str, list[str]], key_to_name: dict[str, str],
                  stored_of: dict[str, _Stored], changed: dict[str, Any], skip: set[str]
                  ) -> list[list[_Entry]]:
    """One list of entries per source file, in its order; names the files do not store (a tied
    decoder, BERT's decoder bias) are written explicitly, next to the stored tensor they
    alias."""
    model = loaded.model
    groups: list[list[_Entry]] = []
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


def _shards(ckpt, groups: list[list[_Entry]], sharded_source: bool, max_shard_size: int
            ) -> list[tuple[str, list[_Entry]]]:
    """(file name, entries) of every output file: a sharded source keeps its shards; a single
    file is cut into shards of at most `max_shard_size` bytes (one file when all fit)."""
    if sharded_source:
        n = len(groups)
        return [(_shard_name(ckpt.weight_files[i], i, n, True), g) for i, g in enumerate(groups)]
    chunks: list[list[_Entry]] = [[]]
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


def _plan(loaded: LoadedModel, head: Head, spec: RescaleSpec, max_shard_size: int) -> _Plan:
    """What to write: every stored tensor (its bytes, or its rescaled value) grouped into
    output files."""
    ckpt = loaded.checkpoint
    files = _read_source(ckpt)
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
    return _Plan(shards=shards, sharded=len(shards) > 1 or sharded_source, changed=changed,
                 tied_out=tied_out, source_bytes=source_bytes)


# --------------------------------------------------------------------------------------------
# writing


def _tensor_bytes(t) -> memoryview:
    import torch

    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def _itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype (1 for sub-byte types): its alignment."""
    return max(1, SAFETENSORS_DTYPE_BITS[dtype] // 8)


def _layout(entries: list[_Entry]) -> list[_Entry]:
    """The order of `entries` in the data section. Their own order (the source file's, with
    tensors not stored there at the end) when it leaves every tensor aligned to its element
    size: the unchanged tensors then lie in the output as they lie in the source, and are
    copied in a few long runs. Otherwise, as safetensors itself orders them: by element size,
    largest first, then by name, which aligns every offset."""
    offset = 0
    for e in entries:
        if offset % _itemsize(e.dtype):
            return sorted(entries, key=lambda e: (-_itemsize(e.dtype), e.name))
        offset += e.nbytes
    return list(entries)


def _runs(ordered: list[_Entry]) -> list[tuple[Path, int, int] | _Entry]:
    """What to append, in order: (file, begin, end) byte ranges of the source, one per run of
    stored tensors that lie back to back there (in the order written), and the entries whose
    bytes come from memory (planned values, tensors of .bin sources, the model's own)."""
    runs: list[tuple[Path, int, int] | _Entry] = []
    for e in ordered:
        s = e.stored
        if s is None or s.tensor is not None:
            runs.append(e)
            continue
        last = runs[-1] if runs else None
        if isinstance(last, tuple) and last[0] == s.file and last[2] == s.begin:
            runs[-1] = (s.file, last[1], s.end)
        else:
            runs.append((s.file, s.begin, s.end))
    return runs


def _copy_range(file: Path, begin: int, end: int, out, on_bytes: Callable[[int], None]) -> None:
    """Append bytes [begin, end) of `file` to `out`: in the kernel (copy_file_range) where the
    platform has it, else through a buffer."""
    def ended() -> InputError:
        return InputError(f"{file} ended inside the tensor data at byte {offset}; re-download "
                          "the checkpoint.")

    offset = begin
    out.flush()
    with file.open("rb") as src:
        if hasattr(os, "copy_file_range"):
            try:
                while offset < end:
                    got = os.copy_file_range(src.fileno(), out.fileno(),
                                             min(end - offset, 1 << 30), offset)
                    if not got:
                        raise ended()
                    offset += got
                    on_bytes(got)
            except OSError:  # e.g. across file systems on old kernels: the buffer below
                pass
            out.seek(0, os.SEEK_END)
        src.seek(offset)
        chunk = bytearray(min(_COPY_CHUNK, end - offset))
        while offset < end:
            view = memoryview(chunk)[: min(end - offset, _COPY_CHUNK)]
            got = src.readinto(view)
            if not got:
                raise ended()
            out.write(view[:got])
            offset += got
            on_bytes(got)


def _write_safetensors(path: Path, entries: list[_Entry], metadata: dict[str, str],
                       on_bytes: Callable[[int], None]) -> int:
    """Stream `entries` into a safetensors file (in the order `_layout` gives); returns the file
    size. The caller flushes it to disk (`_write_checkpoint`, on a thread)."""
    ordered = _layout(entries)
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for e in ordered:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for run in _runs(ordered):
            if isinstance(run, tuple):
                _copy_range(*run, out, on_bytes)
            else:
                t = run.tensor if run.tensor is not None else run.stored.tensor  # type: ignore[union-attr]
                out.write(_tensor_bytes(t))
                on_bytes(run.nbytes)
    return 8 + len(raw) + offset


def _other_files(src: Path, replaced: set[str]) -> tuple[list[str], list[str]]:
    """(files to copy unchanged, files left out): every regular file of `src`, recursively,
    except dotfiles, config.json and headscope.json (both rewritten) and the `replaced` weight
    files and indexes. Left out: weight files in other formats, and links out of the
    checkpoint or special files (`checkpoint.containment`), which are never read."""
    copied, skipped = [], []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or (
                path.is_dir() and not path.is_symlink()):
            continue
        name = rel.as_posix()
        reason = containment(src, name)
        if reason is not None:
            reason = "points nowhere" if reason == "missing" else reason
            skipped.append(f"{name} ({'a link that ' if path.is_symlink() else ''}{reason})")
            continue
        if name in ("config.json", PROVENANCE_FILE) or name in replaced:
            continue
        if path.name in _WEIGHT_INDEXES or path.suffix in _WEIGHT_SUFFIXES:
            skipped.append(name)
            continue
        copied.append(name)
    return copied, skipped


def _jsonable(value: Any, what: str) -> Any:
    if value is None:
        return None
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be JSON-serialisable (a dict of numbers and strings, or "
                         f"a dataclass of them): {err}.") from err


# --------------------------------------------------------------------------------------------
# verification


@dataclass
class _Probe:
    inputs: dict[str, Any]
    logits: Any  # (B, T, V) float32
    hidden: Any  # (B, T, H) float32
    mask: Any  # (B, T) bool


def _encode(loaded: LoadedModel, texts: Sequence[str]) -> dict[str, Any]:
    import torch

    from headscope.splade.encode import tokenize

    if loaded.tokenizer is not None:
        return dict(tokenize(loaded.model, loaded.tokenizer, texts, 128))
    # Without a tokenizer: fixed pseudo-random ids, one row per text.
    gen = torch.Generator().manual_seed(0)
    vocab = int(loaded.model.config.vocab_size)
    ids = torch.randint(0, vocab, (len(texts), 32), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _forward(model, inputs: dict[str, Any]) -> _Probe:
    import torch

    from headscope.splade.encode import forward

    device = next(model.parameters()).device
    with torch.no_grad():
        out = forward(model, inputs, device, output_hidden_states=True)
    mask = inputs["attention_mask"].bool()
    return _Probe(inputs, out.logits.float().cpu(), out.hidden_states[-1].float().cpu(), mask)


def _max_abs(a, b, mask) -> float:
    diff = (a - b).abs()[mask]  # (N, ...) non-padding positions only
    return float(diff.max()) if diff.numel() else 0.0


def _tolerance(dtype, expected, mask) -> float:
    import torch

    scale = max(1.0, float(expected.abs()[mask].max())) if mask.any() else 1.0
    if dtype in (torch.float16, torch.bfloat16):
        return 8 * torch.finfo(dtype).eps * scale
    return 1e-5 * scale


_COMPARE_CHUNK = 1 << 24  # bytes compared at once


class _Ranges:
    """Byte ranges of files, memory-mapped read-only (no copy), as uint8 arrays. `release`
    drops the pages of a range from this process's mapping once compared (the page cache keeps
    them), so the process's resident memory does not grow by the files' size."""

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}

    def reader(self, path: Path, begin: int) -> Callable[[int, int], Any]:
        """(offset, size) -> uint8 array of the file's bytes at begin + offset."""
        import numpy as np

        if path not in self._maps:
            with path.open("rb") as fh:
                self._maps[path] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._maps[path]

        def read(offset: int, size: int):
            at = begin + offset
            size = max(0, min(size, len(mm) - at))
            return np.frombuffer(mm, dtype=np.uint8, count=size, offset=at)

        read.release = lambda offset, size: self._release(mm, begin + offset, size)  # type: ignore[attr-defined]
        return read

    @staticmethod
    def _release(mm: mmap.mmap, at: int, size: int) -> None:
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        first = -(-at // page) * page  # whole pages inside the range only
        last = (at + size) // page * page
        if last > first:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)

    def close(self) -> None:
        maps = list(self._maps.values())
        self._maps.clear()
        for mm in maps:
            try:
                mm.close()
            except BufferError:  # a view is still alive; the map closes when it goes
                pass


def _array_reader(arr) -> Callable[[int, int], Any]:
    return lambda offset, size: arr[offset : offset + size]


def _equal(a, b) -> bool:
    """Byte equality of two uint8 arrays, compared 8 bytes at a time."""
    import numpy as np

    if a.size != b.size:
        return False
    n = a.size - a.size % 8
    if n and not np.array_equal(a[:n].view(np.uint64), b[:n].view(np.uint64)):
        return False
    return bool(np.array_equal(a[n:], b[n:]))


def _first_difference(n: int, readers: Sequence[Callable[[int, int], Any]]) -> int | None:
    """Index of the first reader whose n bytes differ from readers[0]'s, else None; one pass,
    chunk by chunk (memory-bandwidth bound, far faster than hashing each side)."""
    for offset in range(0, n, _COMPARE_CHUNK):
        size = min(_COMPARE_CHUNK, n - offset)
        first = readers[0](offset, size)
        if first.size != size:
            return 1
        for i, read in enumerate(readers[1:], start=1):
            if not _equal(first, read(offset, size)):
                return i
        for read in readers:
            release = getattr(read, "release", None)
            if release is not None:
                release(offset, size)
    return None


def _bytes_of(t):
    """The raw bytes of a tensor as a uint8 numpy array (CPU, contiguous; a copy only when the
    tensor is not already so)."""
    import numpy as np

    return np.frombuffer(_tensor_bytes(t), dtype=np.uint8)


def _verify_files(tmp: Path, plan: _Plan, loaded: LoadedModel, where: str) -> int:
    """Byte-level checks of the written shards against the source and the plan, and of the model
    in memory against the source; returns the number of unchanged tensors checked identical.
    Each tensor's bytes are read once from the written file and once from the source, in the
    same pass."""
    import torch

    state = loaded.model.state_dict()
    ranges = _Ranges()
    identical = 0
    try:
        for shard, entries in plan.shards:
            path = tmp / shard
            try:
                header = read_safetensors_header(path).tensors
            except WeightFileError as err:
                raise VerificationError(f"{err} ({where}); nothing was kept.") from err
            for e in entries:
                info = header.get(e.name)
                if (info is None or info.dtype != e.dtype or info.shape != e.shape
                        or info.end - info.begin != e.nbytes):
                    raise VerificationError(
                        f"Tensor {e.name} of {where} is missing from {shard} or has the wrong "
                        f"dtype or shape; nothing was kept."
                    )
                readers = [ranges.reader(path, info.begin)]
                stored = e.stored
                value = e.tensor if e.tensor is not None else (
                    stored.tensor if stored is not None else None)
                if value is not None:  # planned, or a .bin source tensor, or the model's own
                    readers.append(_array_reader(_bytes_of(value)))
                else:
                    assert stored is not None
                    readers.append(ranges.reader(stored.file, stored.begin))
                # The model in memory must still be the checkpoint as stored: compared in the
                # same pass when it holds the stored bytes (same dtype, on the CPU).
                t = None
                if not e.changed and e.model_name is not None and stored is not None:
                    t = state[e.model_name].detach()
                    if t.device.type == "cpu" and _torch_st_dtype(t.dtype) == e.dtype:
                        readers.append(_array_reader(_bytes_of(t)))
                        t = None
                bad = _first_difference(e.nbytes, readers)
                if bad == 1 and e.changed:
                    raise VerificationError(
                        f"Tensor {e.model_name} of {where} does not hold the rescaled value "
                        "planned for it; nothing was kept. Report this with the checkpoint's "
                        "config.json."
                    )
                if bad == 1:
                    raise VerificationError(
                        f"Tensor {e.name} of {where} does not hold the bytes of the source "
                        "checkpoint although the rescale does not change it; nothing was kept."
                    )
                if t is not None and stored is not None:  # another dtype or device: by value
                    bad = None if torch.equal(stored.load().to(t.dtype), t.cpu()) else 2
                if bad == 2:
                    raise VerificationError(
                        f"Tensor {e.model_name} of {where} differs from the loaded source model "
                        "although the rescale does not change it; nothing was kept. If the model "
                        "was changed in memory after loading, save from the checkpoint as "
                        "loaded."
                    )
                if not e.changed:
                    identical += 1
    finally:
        ranges.close()
    return identical


def _verify(candidate, loaded: LoadedModel, head: Head, spec: RescaleSpec, plan: _Plan,
            reference: _Probe, memory_ref: _Probe | None, against: str,
            where: str, identical: int | None = None, fixed: _Probe | None = None
            ) -> Verification:
    """Tensors, tie state and one forward pass of `candidate`. `identical`: the count from
    `_verify_files`, whose byte checks replace comparing every unchanged tensor here (then only
    the changed tensors are compared). `fixed`: the candidate's forward pass on the reference
    inputs when the caller ran it already."""
    import torch

    model = loaded.model
    orig = model.state_dict()
    cand = candidate.state_dict()
    changed_seen, n_identical = [], 0
    for name, t in cand.items():
        if name not in orig:
            continue
        if identical is not None and name not in plan.changed:
            continue  # checked byte for byte in the files
        if name in plan.changed:
            want = plan.changed[name].to(device=t.device, dtype=t.dtype)
            # In memory the rescale ran on the loaded dtype, the plan on the stored one: a
            # float32 checkpoint loaded as bfloat16 may differ by one rounding step.
            same = torch.equal(t, want) if against == "reload" or t.dtype == plan.changed[
                name].dtype else torch.allclose(t.float(), want.float(),
                                                rtol=2 * torch.finfo(t.dtype).eps, atol=0)
            if not same:
                raise VerificationError(
                    f"Tensor {name} of {where} does not hold the rescaled value planned for it; "
                    "nothing was kept. Report this with the checkpoint's config.json."
                )
            changed_seen.append(name)
        else:
            if not torch.equal(t, orig[name].to(t.device)):
                raise VerificationError(
                    f"Tensor {name} of {where} differs from the loaded source model although "
                    "the rescale does not change it; nothing was kept. If the model was changed "
                    "in memory after loading, save from the checkpoint as loaded."
                )
            n_identical += 1
    after = find_head(candidate)
    if after.tied != plan.tied_out:
        state = "tied to" if after.tied else "separate from"
        raise VerificationError(
            f"After reloading {where} its decoder is {state} the input embeddings, but the "
            f"'{spec.strategy}' strategy should leave it {'tied' if plan.tied_out else 'untied'}; "
            "nothing was kept."
        )

    if fixed is None:
        fixed = _forward(candidate, reference.inputs)
    bias = head.bias.detach().float().cpu() if head.bias is not None else None
    want = expected_logits(reference.logits, bias, spec)  # (B, T, V)
    dtype = next(candidate.parameters()).dtype
    mask = reference.mask
    tol = _tolerance(dtype, want, mask)
    err = _max_abs(fixed.logits, want, mask)
    drift = _max_abs(fixed.hidden, reference.hidden, mask)
    reload_error = None
    if spec.strategy == "tied":
        assert memory_ref is not None
        reload_error = _max_abs(fixed.logits, memory_ref.logits, mask)
        if reload_error > tol:
            raise VerificationError(
                f"The logits of {where} differ from the in-memory tied rescale by up to "
                f"{reload_error:.3g} (tolerance {tol:.3g}); nothing was kept."
            )
    else:
        if err > tol:
            raise VerificationError(
                f"The logits of {where} differ from the expected (x - b) / k + b by up to "
                f"{err:.3g} (tolerance {tol:.3g}); nothing was kept."
            )
        hidden_tol = _tolerance(dtype, reference.hidden, mask)
        if drift > hidden_tol:
            raise VerificationError(
                f"The last hidden states of {where} moved by up to {drift:.3g} although the "
                f"'{spec.strategy}' strategy leaves the encoder untouched; nothing was kept."
            )
    return Verification(
        against=against,
        n_texts=int(mask.shape[0]),
        max_abs_logit_error=err,
        logit_tolerance=tol,
        hidden_drift=drift,
        reload_error=reload_error,
        tensors_identical=n_identical if identical is None else identical,
        tensors_changed=tuple(sorted(changed_seen)),
        tied=after.tied,
    )


def _reload(path: Path, loaded: LoadedModel):
    from transformers import AutoModelForMaskedLM

    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(path), output_loading_info=True, dtype=loaded.model.dtype,
            trust_remote_code=loaded.options.trust_remote_code,
        )
    except Exception as err:
        raise VerificationError(
            f"AutoModelForMaskedLM could not reload the written checkpoint ({err}); nothing "
            "was kept."
        ) from err
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(m) for m in info.get("mismatched_keys") or ())
    if missing or mismatched:
        listed = ", ".join(missing + mismatched)
        raise VerificationError(
            f"Reloading the written checkpoint left {listed} missing or mismatched (transformers "
            "would initialise them at random); nothing was kept."
        )
    return model.to(loaded.options.device).eval()


# --------------------------------------------------------------------------------------------
# output folder

_REPLACE_RULE = "--overwrite replaces only a folder headscope wrote, or an empty one"


def _temp_prefix(out: Path) -> str:
    """Name prefix of the temporary siblings of `out` (being written, or an old one being
    deleted after the swap)."""
    return f".{out.name}.headscope-"


def _listing(folder: Path) -> tuple[set[str], set[str], list[str]]:
    """(files, folders, other entries: links, devices...) under `folder`, relative, POSIX."""
    files, folders, other = set(), set(), []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            other.append(rel)
        elif path.is_dir():
            folders.add(rel)
        elif path.is_file():
            files.add(rel)
        else:
            other.append(rel)
    return files, folders, other


def foreign_files(folder: Path) -> list[str] | None:
    """What in `folder` headscope did not write: None when it has no readable headscope.json
    listing its files, else the entries that list does not hold (empty: headscope's own)."""
    try:
        provenance = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    listed = provenance.get("files") if isinstance(provenance, dict) else None
    if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
        return None
    wrote = set(listed) | {PROVENANCE_FILE}
    parents = {p.as_posix() for f in wrote for p in Path(f).parents if p.as_posix() != "."}
    files, folders, other = _listing(folder)
    return sorted(other + [f for f in files if f not in wrote] +
                  [d + "/" for d in folders if d not in parents])


def check_replaceable(out: Path) -> None:
    """Refuse (InputError) to replace a non-empty `out` that headscope did not write."""
    foreign = foreign_files(out)
    if foreign is None:
        raise InputError(
            f"Output directory {out} was not written by headscope (no {PROVENANCE_FILE} listing "
            f"its files); {_REPLACE_RULE}; choose another --out."
        )
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise InputError(
            f"Output directory {out} holds files headscope did not write ({shown}); "
            f"{_REPLACE_RULE}; move them or choose another --out."
        )


def check_out(source: Path, out: Path, overwrite: bool) -> None:
    """Refuse an `out` (resolved) that is, holds or sits inside the source, is or holds the
    working directory, is a file, is not writable, or is non-empty without `overwrite` (with
    it: not written by headscope). `api.fix` calls it before loading anything."""
    src = source.resolve()
    if out == src or src in out.parents:
        raise InputError(
            f"Output directory {out} is the source checkpoint folder {src} or inside it; "
            "choose an --out outside the source."
        )
    if out in src.parents:
        raise InputError(
            f"Output directory {out} contains the source checkpoint {src}; replacing it would "
            "delete the source; choose another --out."
        )
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise InputError(
            f"Output directory {out} is the working directory or contains it; choose a new "
            "folder for --out, e.g. --out ./fixed."
        )
    if out.exists() and not out.is_dir():
        raise InputError(f"Output path {out} is a file; choose a directory for --out.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(str(out))
        check_replaceable(out)
    fileio.check_writable_folder(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, another user's
    return True


def _is_stale(folder: Path) -> bool:
    """Whether a temporary sibling is recognisably headscope's and no longer in use: a
    folder being written whose writer is gone (its marker names a dead process of this host),
    or a complete headscope checkpoint left behind by a swap that was cut short."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    marker = folder / WRITING_MARKER
    if marker.is_file():
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
            pid, host = int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return host == socket.gethostname() and not _pid_alive(pid)
    return foreign_files(folder) == []


def _remove_stale(out: Path) -> tuple[str, ...]:
    """Remove the temporary siblings of `out` that killed runs left (see `_is_stale`). A
    headscope checkpoint set aside by an interrupted non-atomic swap is moved back to `out`
    when `out` is missing, not deleted."""
    removed = []
    prefix = _temp_prefix(out)
    try:
        siblings = sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return ()
    for path in siblings:
        if not _is_stale(path):
            continue
        if path.name.startswith(prefix + "old-") and not out.exists():
            path.rename(out)  # the only copy of the previous output: put it back
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path.name)
    return tuple(removed)


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the verified `tmp` to `out`. An old `out` is swapped with `tmp` in one atomic step
    where the file system can (renameat2 RENAME_EXCHANGE), else set aside, replaced and put
    back on failure; it is deleted only once the new folder is in place."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.rename(tmp, out)  # replaces an empty folder in one step (POSIX)
        return
    if not overwrite:
        raise OutputExistsError(str(out))
    check_replaceable(out)  # again: it may have changed while the model was verified
    if fileio.exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return
    backup = out.with_name(f"{_temp_prefix(out)}old-{uuid.uuid4().hex[:8]}")
    out.rename(backup)
    try:
        tmp.rename(out)
    except BaseException:
        backup.rename(out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of `folder`, and the folders, to disk before it is renamed into place."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            fileio.fsync_file(path)
        elif path.is_dir():
            fileio.fsync_dir(path)
    fileio.fsync_dir(folder)


# --------------------------------------------------------------------------------------------
# the verb


def _check_arguments(loaded: LoadedModel, spec: RescaleSpec, verify_texts: Sequence[str],
                     max_shard_size: int) -> None:
    from headscope.simulate import is_simulation

    if not isinstance(spec, RescaleSpec):
        raise InputError(f"spec must be a RescaleSpec, got {type(spec).__name__}.")
    if isinstance(verify_texts, str) or not verify_texts:
        raise InputError("verify_texts must be a non-empty sequence of strings; the written "
                         "model is checked on them.")
    if max_shard_size < 1:
        raise InputError(f"max_shard_size must be >= 1 byte, got {max_shard_size!r}.")
    if is_simulation(loaded.model):
        raise InputError(
            "The loaded model is an in-memory headscope simulation; save_fixed writes from the "
            f"checkpoint files of {loaded.checkpoint.source}, which do not hold it."
        )


_INDEX = "model.safetensors.index.json"


def _metadata(ckpt, spec: RescaleSpec, plan: _Plan) -> dict[str, str]:
    """The safetensors metadata of every written shard (and of the index)."""
    return {
        "format": "pt",
        "headscope_version": __version__,
        "headscope_source": ckpt.source,
        "headscope_k": repr(spec.k),
        "headscope_strategy": spec.strategy,
        "headscope_scale_bias": "true" if spec.scale_bias else "false",
        "headscope_tie_word_embeddings": "true" if plan.tied_out else "false",
    }


def _write_checkpoint(tmp: Path, ckpt, spec: RescaleSpec, plan: _Plan, copied: Sequence[str],
                      report: Progress) -> Callable[[], None]:
    """The weights (and their index when sharded), config.json and the copied files, in `tmp`.
    The weight files are flushed to disk on a thread while the caller verifies them; the
    returned function waits for that flush (and raises its error: a full disk may only tell
    then)."""
    metadata = _metadata(ckpt, spec, plan)
    total = plan.weight_bytes
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        report("write", done, total)

    weight_map: dict[str, str] = {}
    for name, entries in plan.shards:
        _write_safetensors(tmp / name, entries, metadata, on_bytes)
        weight_map.update({e.name: name for e in entries})

    def flush() -> None:
        for name, _ in plan.shards:
            fileio.fsync_file(tmp / name)

    flushed = _in_background(flush, "headscope-fsync")
    if plan.sharded:
        index = {"metadata": {"total_size": total, **metadata},
                 "weight_map": dict(sorted(weight_map.items()))}
        fileio.write_text(tmp / _INDEX, json.dumps(index, indent=2) + "\n", sync=False)
    config = dict(ckpt.config)
    config["tie_word_embeddings"] = plan.tied_out
    fileio.write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n",
                     sync=False)
    for name in copied:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt.path / name, tmp / name)
    return flushed


def _verify_written(tmp: Path, loaded: LoadedModel, head: Head, spec: RescaleSpec, plan: _Plan,
                    inputs: dict[str, Any],
                    references: Callable[[], tuple[_Probe, _Probe | None, Any]],
                    pending: list[Callable[[], Any]], report: Progress) -> Verification:
    """The files in `tmp` byte for byte against the source and the plan, and, at the same time
    on a thread, a reload of them and one forward pass; then the reloaded model's changed
    tensors, tie state and logits against the expected ones. The byte checks, when they fail,
    say so first. `pending` gets the thread's join (the caller waits for it on failure)."""
    report("verify", 0, 3)
    where = f"the checkpoint written to {tmp}"

    def reload_and_run() -> tuple[Any, _Probe]:
        candidate = _reload(tmp, loaded)
        return candidate, _forward(candidate, inputs)

    reloaded = _in_background(reload_and_run, "headscope-reload")
    pending.append(reloaded)
    identical = _verify_files(tmp, plan, loaded, where)
    report("verify", 1, 3)
    reference, memory_ref, memory_model = references()
    del memory_model
    candidate, fixed = reloaded()
    report("verify", 2, 3)
    verification = _verify(candidate, loaded, head, spec, plan, reference, memory_ref,
                           "reload", where, identical=identical, fixed=fixed)
    del candidate
    report("verify", 3, 3)
    return verification


def _provenance(ckpt, spec: RescaleSpec, plan: _Plan, verification: Verification,
                source_files: dict[str, str] | None, before: Any, after: Any,
                files: Sequence[str]) -> dict[str, Any]:
    """headscope.json: what was written, from what, and how it verified."""
    previous = None
    if (ckpt.path / PROVENANCE_FILE).is_file():
        try:
            previous = json.loads((ckpt.path / PROVENANCE_FILE).read_text())
        except ValueError:
            previous = None
    return {
        "headscope_version": __version__,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "source": ckpt.source,
        "source_path": str(ckpt.path),
        "source_revision": ckpt.revision,
        "source_files": source_files,
        "model_type": ckpt.model_type,
        "k": spec.k,
        "strategy": spec.strategy,
        "scale_bias": spec.scale_bias,
        "tie_word_embeddings": plan.tied_out,
        "changed_tensors": list(verification.tensors_changed),
        "verification": asdict(verification),
        "stats_before": before,
        "stats_after": after,
        "previous": previous,
        "files": list(files),  # every file written: what a later --overwrite may replace
    }


def save_fixed(
    loaded: LoadedModel,
    spec: RescaleSpec,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    dry_run: bool = False,
    verify_texts: Sequence[str],
    stats_before: Any = None,
    stats_after: Any = None,
    progress: Progress | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    head: Head | None = None,
) -> FixResult:
    """Write `loaded`'s checkpoint rescaled by `spec` to `out` and verify it by reloading.

    `loaded.model` is not modified. With `dry_run` the rescale is applied to a copy in memory and
    verified there; nothing is written. `stats_before`/`stats_after` (dicts or dataclasses of
    JSON values) are stored in headscope.json. `head`: `heads.find_head(loaded)` when the
    caller has it already (found here otherwise).

    Steps: plan every output tensor; write into a temporary sibling of `out`; check the written
    bytes against the source and the plan, then reload and compare one forward pass; write the
    provenance; rename into place. Nothing is left behind on failure.
    """
    _check_arguments(loaded, spec, verify_texts, max_shard_size)
    ckpt = loaded.checkpoint
    out = Path(out).expanduser().resolve()
    check_out(ckpt.path, out, overwrite)
    before = _jsonable(stats_before, "stats_before")
    after = _jsonable(stats_after, "stats_after")
    report = progress or (lambda phase, done, total: None)

    head = head if head is not None else find_head(loaded)
    check_applicable(spec, family=head.layout.family, has_decoder=head.layout.decoder is not None,
                     tied=head.tied, has_norm=head.norm_weight is not None)
    # A Hub snapshot is named by its commit; a local folder by its files' hashes (provenance).
    source_hashes = None if (dry_run or ckpt.revision) else _hash_in_background(ckpt.weight_files)
    plan = _plan(loaded, head, spec, max_shard_size)
    inputs = _encode(loaded, verify_texts)
    replaced = {p.name for p in ckpt.weight_files} | {_INDEX, "pytorch_model.bin.index.json"}
    copied, skipped = _other_files(ckpt.path, replaced)
    weight_names = tuple(name for name, _ in plan.shards)
    files = sorted({*weight_names, *([_INDEX] if plan.sharded else []), "config.json",
                    PROVENANCE_FILE, *copied})
    largest = max(sum(e.nbytes for e in entries) for _, entries in plan.shards)

    def references() -> tuple[_Probe, _Probe | None, Any]:
        """The original's outputs on the texts, and the in-memory rescaled model's (dry run,
        tied) with that model."""
        reference = _forward(loaded.model, inputs)
        if not (dry_run or spec.strategy == "tied"):
            return reference, None, None
        memory_model = copy.deepcopy(loaded.model)
        rescale_model(memory_model, spec)
        return reference, _forward(memory_model, inputs), memory_model

    cleaned: tuple[str, ...] = ()

    def result(verification: Verification) -> FixResult:
        return FixResult(out=out, spec=spec, dry_run=dry_run, files=tuple(files),
                         weight_files=weight_names, skipped=tuple(skipped),
                         verification=verification, tied=plan.tied_out,
                         source_weight_bytes=plan.source_bytes, weight_bytes=plan.weight_bytes,
                         largest_shard_bytes=largest, sharded=plan.sharded, cleaned=cleaned)

    if dry_run:
        report("verify", 0, 1)
        reference, memory_ref, memory_model = references()
        verification = _verify(memory_model, loaded, head, spec, plan, reference, memory_ref,
                               "memory", "the rescaled model in memory")
        report("verify", 1, 1)
        return result(verification)

    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    installed = False
    tmp: Path | None = None
    pending: list[Callable[[], Any]] = []  # threads running torch, joined before leaving
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        cleaned = _remove_stale(out)
        tmp = fileio.make_temp_dir(out.parent, _temp_prefix(out))
        fileio.write_text(tmp / WRITING_MARKER, json.dumps(
            {"headscope_version": __version__, "pid": os.getpid(), "host": socket.gethostname(),
             "out": str(out)}) + "\n")
        # The original's outputs on the verification texts, computed while the files are
        # written (they do not depend on them).
        referenced = _in_background(references, "headscope-reference")
        pending.append(referenced)
        flushed = _write_checkpoint(tmp, ckpt, spec, plan, copied, report)

        verification = _verify_written(tmp, loaded, head, spec, plan, inputs, referenced,
                                       pending, report)
        provenance = _provenance(ckpt, spec, plan, verification,
                                 None if source_hashes is None else source_hashes(),
                                 before, after, files)
        fileio.write_text(tmp / PROVENANCE_FILE, json.dumps(provenance, indent=2) + "\n",
                         sync=False)
        flushed()
        _fsync_tree(tmp)
        _install(tmp, out, overwrite)
        installed = True
        with suppress(OSError):
            (out / WRITING_MARKER).unlink()
    except OSError as err:
        # Disk full, a read-only or vanished folder: the user's problem, named (exit 2); the
        # finally below removes what was written.
        if isinstance(err, OutputWriteError) or (
                err.filename is not None and Path(os.fsdecode(err.filename)).is_relative_to(
                    ckpt.path.resolve())):
            raise
        raise OutputWriteError(str(out), err.strerror or str(err)) from err
    finally:
        if not installed:
            for join in pending:
                # A forward pass still running on a thread when the interpreter exits aborts
                # it (std::terminate): wait for it, a fraction of a second, before leaving.
                with suppress(BaseException):
                    join()
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for folder in created:  # parents this call created, if still empty
                try:
                    folder.rmdir()
                except OSError:
                    break
    return result(verification)
