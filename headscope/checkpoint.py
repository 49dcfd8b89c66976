"""Resolve a checkpoint source to files on disk, read tensors from them, and load a masked LM.

A source is a local directory or a Hub id ("org/name"). Hub ids are looked up in the Hugging Face
cache first (`HF_HUB_CACHE`, `HF_HOME`, read at call time so tests can point them elsewhere); the
network is tried only when `HF_HUB_OFFLINE` is not set. Weights may be one or several safetensors
files or legacy `pytorch_model.bin` files. `resolve` reads config.json and the file listing only;
`read_tensors` reads the named tensors only; `load` instantiates the transformers model.

The weights-only path needs neither torch nor transformers for safetensors checkpoints:
`tensor_infos` takes each tensor's dtype, shape and byte range from `read_safetensors_header` (the
one parser and checker of safetensors headers, which `resolve` runs on every file), `read_arrays`
reads exactly the byte ranges of the named tensors into numpy, and `read_vocabulary` reads the
tokenizer with the `tokenizers` library (tokenizer.json) or from vocab.txt. Only `.bin` weights
and tokenizers in other formats fall back to torch and transformers.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope.errors import (
    CheckpointNotFoundError,
    ConfigError,
    InputError,
    NotCachedError,
    UnsupportedModelError,
    WeightFileError,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

DTYPES = ("float32", "bfloat16", "float16")

# Files whose presence means the folder ships a tokenizer.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
    "tokenizer.model",
)

# Every other file headscope or transformers reads from a checkpoint folder (config and
# tokenizer), checked by `resolve` like the weight files: never read through a link out.
_READ_FILES = ("config.json", *_TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json",
               "merges.txt", "chat_template.jinja", "chat_template.json")

# What the network path downloads: config, tokenizer and safetensors weights first; .bin weights
# only when the repository has no safetensors.
_HUB_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors")
_HUB_BIN_PATTERNS = ("pytorch_model*.bin",)

# "org/name": one slash, Hub-legal characters, not a relative path like "./x" or "../x".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

# Tensor-name prefixes that identify a family when config.json says nothing. Checked in order;
# the first whose prefix some tensor name starts with wins.
_PREFIX_MODEL_TYPES: tuple[tuple[str, str], ...] = (
    ("model.embeddings.tok_embeddings.", "modernbert"),
    ("deberta.encoder.LayerNorm.", "deberta-v2"),
    ("deberta.", "deberta"),
    ("distilbert.", "distilbert"),
    ("roberta.", "roberta"),
    ("albert.", "albert"),
    ("electra.", "electra"),
    ("mpnet.", "mpnet"),
    ("bert.", "bert"),
)


@dataclass(frozen=True)
class LoadOptions:
    revision: str | None = None
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N" | "mps"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint resolved on disk; nothing loaded."""

    source: str  # as the user gave it
    path: Path  # local folder (the snapshot folder for Hub ids)
    revision: str | None  # Hub commit hash of the snapshot, else None
    model_type: str  # from config.json, or inferred (architectures, tensor names)
    config: dict  # config.json as read (model_type filled in when inferred)
    weight_files: tuple[Path, ...]  # every shard, in index order
    weight_format: str  # "safetensors" | "bin"


# --------------------------------------------------------------------------------------------
# resolve


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import time)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and ".." not in source


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` at `revision` in the local cache, or None."""
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    if _COMMIT.match(rev):
        commit = rev
    else:
        ref = repo_dir / "refs" / rev
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
        if not _COMMIT.match(commit):  # a ref names a commit hash, never a path
            raise CheckpointNotFoundError(
                repo_id, f"{ref} does not hold a commit hash; repair or delete the cached ref"
            )
    snapshot = repo_dir / "snapshots" / commit
    if not (snapshot / "config.json").is_file():
        return None
    return snapshot


def _download_snapshot(repo_id: str, revision: str | None) -> Path:
    """Fetch config, tokenizer and weights of `repo_id` into the cache; raise on any failure."""
    from huggingface_hub import snapshot_download

    cache = str(hub_cache_dir())
    folder = Path(
        snapshot_download(
            repo_id, revision=revision, cache_dir=cache, allow_patterns=list(_HUB_PATTERNS)
        )
    )
    if _find_weights(folder) is None:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache, allow_patterns=list(_HUB_BIN_PATTERNS)
            )
        )
    return folder


def _resolve_hub(repo_id: str, revision: str | None) -> Path:
    snapshot = _cached_snapshot(repo_id, revision)
    if snapshot is not None:
        return snapshot
    if hub_offline():
        raise NotCachedError(repo_id, revision)
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return _download_snapshot(repo_id, revision)
    except GatedRepoError as err:
        raise CheckpointNotFoundError(
            repo_id, "the repository is gated: accept its terms on the Hub and log in"
        ) from err
    except RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(repo_id, "no such repository on the Hub") from err
    except RevisionNotFoundError as err:
        raise CheckpointNotFoundError(
            repo_id, f"the Hub has no revision {revision!r} for it"
        ) from err
    except Exception as err:  # connection refused, DNS failure, proxy, HTTP 5xx...
        raise NotCachedError(repo_id, revision) from err


def _find_weights(folder: Path) -> tuple[tuple[Path, ...], str] | None:
    """Weight files of `folder` in load order and their format, or None when there are none.

    Every file named by an index is checked to lie inside `folder` (see `containment`) before
    anything opens it; a missing one is left for `resolve` to report.
    """
    for index_name, single, fmt in (
        (SAFETENSORS_INDEX, SAFETENSORS_SINGLE, "safetensors"),
        (BIN_INDEX, BIN_SINGLE, "bin"),
    ):
        index = folder / index_name
        if index.is_file():
            shards: list[str] = []
            for shard in weight_map(folder, index).values():
                if shard not in shards:
                    shards.append(shard)
            return tuple(folder / s for s in sorted(shards)), fmt
        if (folder / single).is_symlink():
            _check_contained(folder, single, f"{folder / single}")  # a link out is refused
        if (folder / single).is_file():
            _check_contained(folder, single, f"{folder / single}")
            return (folder / single,), fmt
    return None


# --------------------------------------------------------------------------------------------
# containment: every file read as a weight lies inside the checkpoint folder


def _hub_blobs(root: Path) -> Path | None:
    """The `blobs/` folder of the Hugging Face cache repository whose snapshot `root` is.

    The cache stores each file once in `models--org--name/blobs/<hash>` and links it from
    `models--org--name/snapshots/<commit>/<name>`; None when `root` is not laid out like that.
    """
    snapshots = root.parent
    repo = snapshots.parent
    if snapshots.name != "snapshots" or not repo.name.startswith("models--"):
        return None
    blobs = repo / "blobs"
    return blobs.resolve() if blobs.is_dir() else None


def containment(folder: Path, name: str) -> str | None:
    """Why `name` (relative to the checkpoint folder) is not a file of the checkpoint, or None.

    A file of the checkpoint is a regular file reached through a relative path without `..`,
    that resolves (symlinks followed) inside `folder`, or, in a Hugging Face cache snapshot,
    to a blob of the same cache repository. Anything else (an absolute path, `..`, a link out
    of the folder, a device or FIFO) is refused, so a downloaded checkpoint cannot make
    headscope read, measure or copy another file. "missing" when nothing is there.
    Never opens the file.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        return "is not a file name"
    pure = PurePosixPath(name)
    if pure.is_absolute():
        return "is an absolute path"
    if ".." in pure.parts:
        return "climbs out of the folder with '..'"
    root = folder.resolve()
    try:
        real = (root / pure).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return "is a symlink loop"
    if not real.is_relative_to(root):
        blobs = _hub_blobs(root)
        if blobs is None or real.parent != blobs:
            return f"resolves to {real}, outside the checkpoint folder"
    if not real.exists():
        return "missing"
    if not real.is_file():
        return "is not a regular file"
    return None


def _check_contained(folder: Path, name: str, what: str) -> None:
    reason = containment(folder, name)
    if reason is not None and reason != "missing":
        raise WeightFileError(
            f"{what} {reason}; headscope reads weights only from inside the checkpoint folder "
            f"{folder}: refusing it (repair the checkpoint or re-download it)."
        )


def weight_map(folder: Path, index: Path) -> dict[str, str]:
    """The index's `weight_map` (tensor name -> shard file name), every entry checked."""
    data = _read_json(index)
    mapping = data.get("weight_map")
    if not isinstance(mapping, dict) or not mapping:
        raise WeightFileError(
            f'{index} has no "weight_map" object naming the shard of each tensor; repair the '
            "index or re-download the checkpoint."
        )
    for tensor, shard in mapping.items():
        if not isinstance(shard, str):
            raise WeightFileError(
                f"{index} maps {tensor!r} to {shard!r}, which is not a file name; repair the "
                "index or re-download the checkpoint."
            )
        _check_contained(folder, shard, f"{index} maps {tensor!r} to {shard!r}, which")
    return mapping


# --------------------------------------------------------------------------------------------
# safetensors headers, read and checked without torch

# Bits per element of every dtype the safetensors format defines (its Rust reader's list).
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# The safetensors reader refuses larger headers too.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as a safetensors header describes it."""

    dtype: str  # safetensors dtype name, e.g. "F32"
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of the first byte in the file
    end: int  # absolute byte offset past the last byte


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, StoredTensor]  # in file order
    metadata: dict[str, str]  # "__metadata__"
    data_start: int  # 8 + header length


def _damaged(path: Path, problem: str) -> WeightFileError:
    return WeightFileError(
        f"{path} is not a valid safetensors file: {problem}; re-download it, or convert the "
        "checkpoint again from a copy you trust."
    )


def _dims(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        return None
    return tuple(value)


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read and check the header of a safetensors file, reading no tensor data (no torch).

    Checks what the format requires (as its reader does): an 8-byte little-endian header
    length within the file, a UTF-8 JSON object, known dtypes, shapes of non-negative integers,
    byte ranges that match dtype x shape and tile the data section exactly (no gap, no
    overlap, nothing past the end). Raises WeightFileError naming the file and the fault.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _damaged(path, f"it holds {len(head)} bytes, fewer than the 8 of a header "
                               "length")
            n = int.from_bytes(head, "little")
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise _damaged(path, f"its header length ({n} bytes) runs past the end of the "
                               f"{size}-byte file")
            raw = fh.read(n)
    except OSError as err:
        raise WeightFileError(f"{path} cannot be read ({err.strerror}); check the file.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _damaged(path, f"its header is not UTF-8 (byte {err.start})") from None
    try:
        data = json.loads(text, parse_constant=lambda c: float("nan"))
    except (ValueError, RecursionError) as err:
        raise _damaged(path, f"its header is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise _damaged(path, "its header is not a JSON object")
    metadata = data.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise _damaged(path, "its __metadata__ is not an object of strings")
    data_start = 8 + n
    data_size = size - data_start
    items: list[tuple[str, StoredTensor]] = []
    for name, info in data.items():
        if not isinstance(info, dict):
            raise _damaged(path, f"tensor {name!r} is described by {type(info).__name__}, "
                           "not an object")
        dtype = info.get("dtype")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
            raise _damaged(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        shape = _dims(info.get("shape"))
        if shape is None:
            raise _damaged(path, f"tensor {name!r} has shape {info.get('shape')!r}, not a list "
                           "of non-negative integers")
        offsets = _dims(info.get("data_offsets"))
        if offsets is None or len(offsets) != 2 or offsets[1] < offsets[0]:
            raise _damaged(path, f"tensor {name!r} has data_offsets "
                           f"{info.get('data_offsets')!r}, not [begin, end] with begin <= end")
        bits = math.prod(shape) * SAFETENSORS_DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            raise _damaged(path, f"tensor {name!r} ({dtype}, shape {list(shape)}) needs "
                           f"{bits / 8:g} bytes but its data_offsets span "
                           f"{offsets[1] - offsets[0]}")
        items.append((name, StoredTensor(dtype, shape, data_start + offsets[0],
                                         data_start + offsets[1])))
    items.sort(key=lambda kv: (kv[1].begin, kv[1].end))
    cursor = data_start
    for name, t in items:
        if t.begin != cursor:
            what = "overlaps the tensor before it" if t.begin < cursor else "leaves a gap"
            raise _damaged(path, f"tensor {name!r} {what} (data_offsets "
                           f"[{t.begin - data_start}, {t.end - data_start}])")
        cursor = t.end
    if cursor != size:
        if cursor > size:
            problem = (f"its tensors need {cursor - data_start} bytes of data but the file "
                       f"holds {data_size} (truncated)")
        else:
            problem = f"{size - cursor} bytes after the last tensor are not described"
        raise _damaged(path, problem)
    return SafetensorsHeader(path=path, tensors=dict(items), metadata=dict(metadata),
                             data_start=data_start)


def check_config(config: dict, path: Path) -> None:
    """Refuse config.json values of the wrong type in the fields headscope and transformers
    read before anything else (no torch): sizes must be positive integers."""
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigError(f'{path}: "model_type" is {model_type!r}, not a string; fix config.json.')
    archs = config.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and all(isinstance(a, str) for a in archs)
    ):
        raise ConfigError(
            f'{path}: "architectures" is {archs!r}, not a list of class names; fix config.json.'
        )
    for key in ("tie_word_embeddings", "legacy"):
        value = config.get(key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f'{path}: "{key}" is {value!r}, not true or false; fix config.json.')
    for key in SIZE_FIELDS:
        if key not in config:
            continue
        value = config[key]
        low = 0 if key == "type_vocab_size" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            kind = "a non-negative" if low == 0 else "a positive"
            raise ConfigError(
                f'{path}: "{key}" is {value!r}, but it must be {kind} integer; fix config.json '
                "(it must agree with the stored tensors)."
            )


# Config fields that size tensors; `check_config` wants them to be integers.
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "embedding_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "type_vocab_size",
    "dim",
    "hidden_dim",
    "n_layers",
    "n_heads",
)


def fields_with_value(config: dict, value: int) -> list[str]:
    """The config.json fields (of SIZE_FIELDS) equal to `value`: the likely cause of a tensor
    dimension of that size."""
    return [k for k in SIZE_FIELDS if config.get(k) == value and not isinstance(config[k], bool)]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(
            f"{path} is not readable JSON ({_first_line(err)}); repair or replace the file."
        ) from err
    except RecursionError:
        raise InputError(
            f"{path} is JSON nested too deeply to read; repair or replace the file."
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a JSON object; repair or replace the file.")
    return data


def _architecture_model_types() -> dict[str, str]:
    """Class name -> model_type, over transformers' auto mappings (BertForMaskedLM -> bert)."""
    from transformers.models.auto import modeling_auto

    out: dict[str, str] = {}
    for attr in dir(modeling_auto):
        if not attr.endswith("_MAPPING_NAMES"):
            continue
        mapping = getattr(modeling_auto, attr)
        if not isinstance(mapping, dict):
            continue
        for model_type, names in mapping.items():
            for name in (names,) if isinstance(names, str) else tuple(names):
                out.setdefault(name, model_type)
    return out


def _model_type_from_names(names: list[str]) -> str | None:
    for prefix, model_type in _PREFIX_MODEL_TYPES:
        if any(n.startswith(prefix) for n in names):
            return model_type
    return None


def _infer_model_type(source: str, folder: Path, config: dict, names: list[str]) -> str:
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type
    try:
        by_class = _architecture_model_types()
    except ImportError:  # weights-only mode without transformers: the tensor names still tell
        by_class = {}
    for arch in config.get("architectures") or ():
        if arch in by_class:
            return by_class[arch]
    inferred = _model_type_from_names(names)
    if inferred is not None:
        return inferred
    raise UnsupportedModelError(
        f'Cannot tell the model type of {source}: {folder / "config.json"} has no "model_type", '
        'its "architectures" name no class transformers knows, and its tensor names match no '
        'known family; add "model_type" (e.g. "bert") to config.json.'
    )


def resolve(source: str, revision: str | None = None) -> Checkpoint:
    """Find `source` on disk (local folder or Hub cache) and describe it without loading."""
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise CheckpointNotFoundError(
                source, "it is a file; pass the folder that holds config.json"
            )
        if revision is not None:
            raise InputError(
                f"A revision ({revision!r}) applies only to Hub ids, but {source} is a local "
                "directory; drop the revision or pass a Hub id."
            )
        folder, commit = local.resolve(), None
    elif looks_like_hub_id(source):
        folder = _resolve_hub(source, revision)
        commit = folder.name
    else:
        raise CheckpointNotFoundError(
            source, "no such directory, and not a Hub id of the form org/name"
        )

    for name in _READ_FILES:
        reason = containment(folder, name)
        if reason is not None and reason != "missing":
            raise InputError(
                f"{folder / name} {reason}; headscope reads a checkpoint's config and tokenizer "
                "only from inside its folder: refusing it (repair the checkpoint or re-download "
                "it)."
            )
    if not (folder / "config.json").is_file():
        raise CheckpointNotFoundError(source, f"{folder} has no config.json")
    config = _read_json(folder / "config.json")
    check_config(config, folder / "config.json")
    found = _find_weights(folder)
    if found is None:
        raise CheckpointNotFoundError(
            source,
            f"{folder} holds no {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, {BIN_SINGLE} or "
            f"{BIN_INDEX}",
        )
    weight_files, weight_format = found
    for shard in weight_files:
        if not shard.is_file():
            raise CheckpointNotFoundError(
                source, f"shard {shard.name} listed in its index is missing"
            )
        if weight_format == "safetensors":
            read_safetensors_header(shard)  # a damaged file is refused before anything reads it

    ckpt = Checkpoint(
        source=source,
        path=folder,
        revision=commit,
        model_type=str(config.get("model_type") or ""),
        config=config,
        weight_files=weight_files,
        weight_format=weight_format,
    )
    if ckpt.model_type:
        return ckpt
    # Only a config without model_type needs the tensor names (cheap for safetensors).
    model_type = _infer_model_type(source, folder, config, tensor_names(ckpt))
    return Checkpoint(
        source=source,
        path=folder,
        revision=commit,
        model_type=model_type,
        config={**config, "model_type": model_type},
        weight_files=weight_files,
        weight_format=weight_format,
    )


# --------------------------------------------------------------------------------------------
# tensors


def _index(ckpt: Checkpoint) -> dict[str, str] | None:
    """The index's weight_map (tensor name -> shard file name), or None for a single file."""
    name = SAFETENSORS_INDEX if ckpt.weight_format == "safetensors" else BIN_INDEX
    index = ckpt.path / name
    if not index.is_file():
        return None
    return dict(weight_map(ckpt.path, index))


def unsafe_pickle_error(path: Path, err: BaseException) -> WeightFileError:
    """The refusal of a pickle that PyTorch's restricted loader blocked: it names something to
    import and call, which is how a pickle runs code. Never advises loading it unrestricted."""
    match = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = match.group(1) if match else "Python objects"
    return WeightFileError(
        f"{path} is a pickle that would import and call {what} when loaded (PyTorch's safe "
        "loader blocked it): the file contains code, so headscope will not load it; convert "
        "the checkpoint to safetensors from a copy you trust, or ask its publisher for one."
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_bin(path: Path) -> dict[str, torch.Tensor]:
    """A whole .bin state dict on CPU; memory-mapped when the file's format allows it.

    The one reader of .bin weights (checkpoint and save): torch's restricted unpickler only
    (code in the file is refused with `unsafe_pickle_error`), WeightFileError for a damaged file
    or anything but a dict of named tensors."""
    import pickle

    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # Files written before torch 1.6's zipfile format cannot be memory-mapped.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise unsafe_pickle_error(path, err) from err
    except Exception as err:
        raise WeightFileError(
            f"Cannot read {path} ({_first_line(err)}); the file is damaged or not a PyTorch "
            "state dict: re-download it."
        ) from err
    if not isinstance(state, dict):
        raise WeightFileError(
            f"{path} holds a {type(state).__name__}, not a state dict of named tensors; pass a "
            "checkpoint saved with save_pretrained."
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightFileError(
                f"{path} stores {key!r} as a {type(value).__name__}, not a tensor; pass a "
                "checkpoint saved with save_pretrained."
            )
    return state


def tensor_names(ckpt: Checkpoint) -> list[str]:
    """Every tensor name stored in the checkpoint, without reading the tensors (safetensors)."""
    weight_map = _index(ckpt)
    if weight_map is not None:
        return list(weight_map)
    path = ckpt.weight_files[0]
    if ckpt.weight_format == "safetensors":
        return list(read_safetensors_header(path).tensors)
    return list(read_bin(path))


def stored_shapes(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    """Tensor name -> stored shape over every weight file: from the headers for safetensors
    (no torch, no tensor data), from the loaded state dict for .bin."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in ckpt.weight_files:
        if ckpt.weight_format == "safetensors":
            shapes.update({n: t.shape for n, t in read_safetensors_header(path).tensors.items()})
        else:
            shapes.update({n: tuple(t.shape) for n, t in read_bin(path).items()})
    return shapes


def read_tensors(ckpt: Checkpoint, names) -> dict[str, torch.Tensor]:
    """Read only the tensors `names` from the checkpoint's files, on CPU, as stored."""
    wanted = list(dict.fromkeys(names))
    weight_map = _index(ckpt)
    by_file: dict[Path, list[str]] = {}
    if weight_map is not None:
        absent = [n for n in wanted if n not in weight_map]
        if absent:
            raise _absent_error(ckpt, absent)
        for n in wanted:
            by_file.setdefault(ckpt.path / weight_map[n], []).append(n)
    else:
        by_file[ckpt.weight_files[0]] = wanted

    out: dict[str, torch.Tensor] = {}
    for path, file_names in by_file.items():
        if ckpt.weight_format == "safetensors":
            from safetensors import SafetensorError, safe_open

            read_safetensors_header(path)  # refuse a damaged file with a precise message
            try:
                with safe_open(str(path), framework="pt", device="cpu") as fh:
                    stored = set(fh.keys())
                    absent = [n for n in file_names if n not in stored]
                    if absent:
                        raise _absent_error(ckpt, absent)
                    for n in file_names:
                        out[n] = fh.get_tensor(n)
            except (SafetensorError, TypeError) as err:  # e.g. a dtype torch cannot hold
                raise _damaged(path, _first_line(err)) from err
        else:
            state = read_bin(path)
            absent = [n for n in file_names if n not in state]
            if absent:
                raise _absent_error(ckpt, absent)
            for n in file_names:
                out[n] = state[n]
            del state
    return {n: out[n] for n in wanted}


def _absent_error(ckpt: Checkpoint, absent: list[str]) -> InputError:
    return InputError(
        f"Checkpoint {ckpt.source} stores no tensor named {', '.join(absent)}; list the stored "
        "names with headscope.checkpoint.tensor_names()."
    )


# --------------------------------------------------------------------------------------------
# tensors as numpy arrays, without torch (the weights-only path)

# safetensors dtype code -> torch's name for it (what reports say).
_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
# dtype name -> numpy dtype of the stored bytes (safetensors is little-endian). numpy has no
# bfloat16: its 16 bits are read as uint16 and widened to float32 on reading.
_STORED_NUMPY = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "bfloat16": "<u2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "?",
}


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: its dtype, shape and where its bytes lie; nothing loaded."""

    name: str
    file: Path  # the weight file (shard) holding it
    dtype: str  # torch's name: "float32", "bfloat16", "float16", ... (safetensors code if unknown)
    shape: tuple[int, ...]
    start: int | None  # absolute byte range of its data in `file`; None for .bin files
    end: int | None


def safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file as `TensorInfo`s (dtype under torch's name).

    A view of `read_safetensors_header`, the one parser and checker of safetensors headers:
    a damaged file is refused there (WeightFileError naming the file and the fault).
    """
    path = Path(path)
    header = read_safetensors_header(path)
    return {name: TensorInfo(name, path, _SAFETENSORS_DTYPES.get(t.dtype, t.dtype), t.shape,
                             t.begin, t.end)
            for name, t in header.tensors.items()}


def _require_torch_for_bin(ckpt: Checkpoint) -> None:
    """`.bin` weights are PyTorch pickles: only torch reads them."""
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise InputError(
            f"{ckpt.source} stores its weights as {ckpt.weight_files[0].name} (a PyTorch "
            "pickle), which only torch can read; install torch, or convert the checkpoint to "
            "safetensors."
        ) from err


def tensor_infos(ckpt: Checkpoint) -> dict[str, TensorInfo]:
    """Every stored tensor's dtype, shape and place. Reads only the headers for safetensors;
    `.bin` files are opened with torch (memory-mapped where their format allows it)."""
    if ckpt.weight_format != "safetensors":
        _require_torch_for_bin(ckpt)
    out: dict[str, TensorInfo] = {}
    for path in ckpt.weight_files:
        if ckpt.weight_format == "safetensors":
            out.update(safetensors_header(path))
        else:
            for name, tensor in read_bin(path).items():
                dtype = str(tensor.dtype).replace("torch.", "")
                out[name] = TensorInfo(name, path, dtype, tuple(tensor.shape), None, None)
    return out


def _read_safetensors_array(info: TensorInfo) -> np.ndarray:
    """One tensor's bytes as a read-only numpy array mapped from the file (no copy; pages come
    from the page cache as they are touched). bfloat16 is widened to a float32 copy."""
    if info.dtype not in _STORED_NUMPY or info.start is None:
        raise InputError(
            f"Tensor {info.name} in {info.file} has dtype {info.dtype}, which headscope cannot "
            f"read without torch; supported: {', '.join(_STORED_NUMPY)}."
        )
    stored = np.dtype(_STORED_NUMPY[info.dtype])
    count = math.prod(info.shape)
    if count == 0:
        return np.zeros(info.shape, dtype=np.float32 if info.dtype == "bfloat16" else stored)
    # read_safetensors_header checked that the byte range lies inside the file and
    # matches dtype x shape.
    data = np.memmap(info.file, dtype=stored, mode="r", offset=info.start,
                     shape=(count,)).view(np.ndarray)  # (count,)
    if info.dtype == "bfloat16":
        # A bfloat16 is the upper half of a float32: shifting its bits up 16 is exact.
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data.reshape(info.shape)


def read_arrays(ckpt: Checkpoint, names, infos: dict[str, TensorInfo] | None = None
                ) -> dict[str, np.ndarray]:
    """Read only the tensors `names` as numpy arrays, in their stored dtype (bfloat16, which
    numpy lacks, widened exactly to float32).

    Safetensors files are read without torch: only each tensor's byte range is read. `.bin`
    files go through torch. `infos` (from `tensor_infos`) saves parsing the headers again.
    """
    wanted = list(dict.fromkeys(names))
    if ckpt.weight_format != "safetensors":
        _require_torch_for_bin(ckpt)
        out = {}
        for name, tensor in read_tensors(ckpt, wanted).items():
            if str(tensor.dtype) == "torch.bfloat16":
                tensor = tensor.float()
            out[name] = tensor.numpy()
        return out
    infos = tensor_infos(ckpt) if infos is None else infos
    absent = [n for n in wanted if n not in infos]
    if absent:
        raise _absent_error(ckpt, absent)
    return {n: _read_safetensors_array(infos[n]) for n in wanted}


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's vocabulary read from its files, as `heads.vocab_info` needs it.

    It answers the three questions vocab_info asks a transformers tokenizer (`len`,
    `convert_ids_to_tokens`, `all_special_ids`), without transformers.
    """

    tokens: tuple[str | None, ...]  # id -> token, over len(tokenizer) ids (None: an id without one)
    all_special_ids: tuple[int, ...]
    file: str  # what was read: "tokenizer.json", "vocab.txt", or "transformers"

    def __len__(self) -> int:
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids) -> list[str | None]:
        return [self.tokens[int(i)] for i in ids]


# transformers' named special tokens, in the order it adds those missing from the vocabulary.
_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")
# BertTokenizer's defaults, which a bare vocab.txt gets (as in load_tokenizer's fallback).
_WORDPIECE_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                       "cls_token": "[CLS]", "mask_token": "[MASK]"}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _special_tokens(folder: Path, wordpiece: bool) -> dict[str, str]:
    """Special token -> the attribute naming it ("unk_token", ..., "extra"), in the order
    transformers adds those missing from the vocabulary: the named ones, then the extra ones.

    tokenizer_config.json wins over special_tokens_map.json for a named token. A BERT-style
    (WordPiece) tokenizer gets BertTokenizer's defaults for the named tokens neither file sets;
    other tokenizer classes' built-in defaults are not known here (their files name their
    specials in practice).
    """
    named: dict[str, str] = {}
    extra: list[str] = []
    for file_name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / file_name
        if not path.is_file():
            continue
        data = _read_json(path)
        if file_name == "tokenizer_config.json" and str(data.get("tokenizer_class", "")) in (
                "BertTokenizer", "BertTokenizerFast"):
            wordpiece = True
        for attr in _SPECIAL_ATTRIBUTES:
            token = _token_text(data.get(attr))
            if token is not None:
                named.setdefault(attr, token)
        for key in ("extra_special_tokens", "additional_special_tokens"):
            values = data.get(key) or []
            for value in values.values() if isinstance(values, dict) else values:
                text = _token_text(value)
                if text is not None and text not in extra:
                    extra.append(text)
    if wordpiece:
        named = {**_WORDPIECE_SPECIALS, **named}
    out: dict[str, str] = {}
    for attr in _SPECIAL_ATTRIBUTES:
        if attr in named:
            out.setdefault(named[attr], attr)
    for token in extra:
        out.setdefault(token, "extra")
    return out


def read_vocabulary(ckpt: Checkpoint, options: LoadOptions | None = None) -> Vocabulary | None:
    """The checkpoint's vocabulary; None when the folder has no tokenizer files.

    tokenizer.json is read with the `tokenizers` library and a bare vocab.txt as a WordPiece
    vocabulary (one token per line, as BertTokenizer reads it), neither importing transformers.
    Special tokens come from tokenizer_config.json and special_tokens_map.json; those missing
    from the vocabulary are appended, as transformers does. Other formats (sentencepiece models,
    vocab.json with merges.txt) are read through transformers (`load_tokenizer`).
    """
    folder = ckpt.path
    present = {f for f in _TOKENIZER_FILES if (folder / f).is_file()}
    if not present:
        return None
    from_json = "tokenizer.json" in present
    # vocab.txt is the whole tokenizer only beside no model file of another kind.
    wordpiece = "vocab.txt" in present and present <= {"vocab.txt", "tokenizer_config.json"}
    if not from_json and not wordpiece:
        tokenizer = load_tokenizer(ckpt, options)
        if tokenizer is None:
            return None
        ids = list(range(len(tokenizer)))
        return Vocabulary(tokens=tuple(tokenizer.convert_ids_to_tokens(ids)),
                          all_special_ids=tuple(tokenizer.all_special_ids), file="transformers")
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    specials = _special_tokens(folder, wordpiece=not from_json)
    file_name = "tokenizer.json" if from_json else "vocab.txt"
    try:
        if from_json:
            tok = Tokenizer.from_file(str(folder / file_name))
        else:
            # As BertTokenizer's load_vocab: line i is the token of id i (a repeated token keeps
            # its last id).
            lines = (folder / file_name).read_text(encoding="utf-8").split("\n")
            if lines[-1] == "":
                lines.pop()  # the newline ending the last line starts no token
            vocab = {token: index for index, token in enumerate(lines)}
            unk = next((t for t, attr in specials.items() if attr == "unk_token"), "[UNK]")
            tok = Tokenizer(WordPiece(vocab, unk_token=unk))
    except Exception as err:  # tokenizers raises plain Exceptions on malformed files
        raise InputError(
            f"The tokenizer of {ckpt.source} in {folder} cannot be read ({err}); repair or "
            "replace its tokenizer files."
        ) from err
    missing = [t for t in specials if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    n = tok.get_vocab_size(with_added_tokens=True)
    if n <= len(specials):
        raise InputError(
            f"The tokenizer of {ckpt.source} in {folder} holds only special tokens; add its "
            "vocabulary files (tokenizer.json, vocab.txt, ...) to the folder or remove the "
            "tokenizer files."
        )
    special_ids = [tok.token_to_id(t) for t in specials]
    return Vocabulary(tokens=tuple(tok.id_to_token(i) for i in range(n)),
                      all_special_ids=tuple(i for i in special_ids if i is not None),
                      file=file_name)


# --------------------------------------------------------------------------------------------
# load


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    model: PreTrainedModel  # *ForMaskedLM, eval mode, on options.device/dtype
    tokenizer: PreTrainedTokenizerBase | None
    missing_keys: frozenset[str]  # what transformers newly initialised
    options: LoadOptions


def _torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise InputError(f"Unknown dtype {name!r}; choose one of {', '.join(DTYPES)}.")
    return getattr(torch, name)


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise InputError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"Device {device!r} is not available (no CUDA GPU); use --device cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(
            f"Device {device!r} is not available ({torch.cuda.device_count()} CUDA GPU(s)); "
            "pick a lower index."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"Device {device!r} is not available (no MPS); use --device cpu.")


def _has_remote_mlm(config: dict) -> bool:
    auto_map = config.get("auto_map") or {}
    return isinstance(auto_map, dict) and "AutoModelForMaskedLM" in auto_map


def _load_config(ckpt: Checkpoint, options: LoadOptions):
    """The transformers config, built with the (possibly inferred) model_type."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if options.trust_remote_code and ckpt.config.get("auto_map"):
        return AutoConfig.from_pretrained(str(ckpt.path), trust_remote_code=True)
    if ckpt.model_type not in CONFIG_MAPPING:
        import transformers

        raise UnsupportedModelError(
            f"model_type {ckpt.model_type!r} of {ckpt.source} is not known to transformers "
            f"{transformers.__version__}; upgrade transformers, or pass --trust-remote-code if "
            "the checkpoint ships its own modelling code."
        )
    # The config class of the model_type reads config.json even when it lacks "model_type".
    return CONFIG_MAPPING[ckpt.model_type].from_pretrained(str(ckpt.path))


def load_tokenizer(ckpt: Checkpoint, options: LoadOptions | None = None):
    """The checkpoint's tokenizer, None when the folder has no tokenizer files."""
    options = options or LoadOptions()
    if not any((ckpt.path / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    # AutoTokenizer picks the tokenizer class from config.json's model_type; when that key is
    # missing and headscope inferred the family, hand it the inferred family's config.
    extra = {}
    config_file = ckpt.path / "config.json"
    if (config_file.is_file() and not _read_json(config_file).get("model_type")
            and ckpt.model_type in CONFIG_MAPPING):
        extra["config"] = _load_config(ckpt, options)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(ckpt.path), trust_remote_code=options.trust_remote_code, **extra
        )
    except Exception as err:
        raise InputError(
            f"The tokenizer of {ckpt.source} in {ckpt.path} cannot be loaded "
            f"({_first_line(err)}); install the package it needs (e.g. sentencepiece) or remove "
            "the broken tokenizer files."
        ) from err
    if len(tokenizer) > len(set(tokenizer.all_special_tokens)):
        return tokenizer
    # AutoTokenizer picked the model type's tokenizer class, found none of its files and built
    # one holding only the special tokens (real case: an ALBERT shipping a BERT-style vocab.txt
    # and an empty tokenizer_config.json). A WordPiece vocab.txt is then the tokenizer.
    vocab_file = ckpt.path / "vocab.txt"
    if vocab_file.is_file():
        return _wordpiece_tokenizer(ckpt.path)
    raise InputError(
        f"The tokenizer of {ckpt.source} in {ckpt.path} holds only special tokens; add its "
        "vocabulary files (tokenizer.json, vocab.txt, ...) to the folder or remove the tokenizer "
        "files."
    )


def _wordpiece_tokenizer(folder: Path):
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # lazy export

    tokens = [t for t in (folder / "vocab.txt").read_text(encoding="utf-8").splitlines() if t]
    # Lower-case input only when the vocabulary has no upper-case entries besides "[CLS]"-style
    # specials (SMILES vocabularies tell "c" from "C").
    cased = any(t != t.lower() for t in tokens if not (t.startswith("[") and t.endswith("]")))
    return BertTokenizerFast.from_pretrained(str(folder), do_lower_case=not cased)


def _remote_modules(config: dict) -> str:
    auto_map = config.get("auto_map") or {}
    refs = auto_map.values() if isinstance(auto_map, dict) else ()
    names = {str(r).split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs if isinstance(r, str)}
    return ", ".join(sorted(names)) or "its Python files"


def _remote_code_error(ckpt: Checkpoint, err: BaseException) -> InputError:
    return InputError(
        f"The code shipped with {ckpt.source} ({_remote_modules(ckpt.config)}) failed "
        f"({type(err).__name__}: {_first_line(err)}); it ran only because of "
        "--trust-remote-code: fix that code or ask the checkpoint's authors."
    )


def _stored_name(name: str, prefix: str, stored: dict) -> str | None:
    """The name under which the checkpoint stores the model's tensor `name`, or None: as is,
    with legacy LayerNorm gamma/beta, or without the base-model prefix (bare encoders)."""
    legacy = re.sub(r"\.weight$", ".gamma", re.sub(r"\.bias$", ".beta", name))
    for candidate in (name, legacy):
        for c in (candidate, candidate.removeprefix(prefix)):
            if c in stored:
                return c
    return None


def check_against_weights(ckpt: Checkpoint, config: Any) -> None:
    """Refuse a config.json that shapes some tensor differently from the checkpoint's files,
    naming the tensor and the config field, before transformers allocates anything: the model
    is built on the meta device (no memory) and its shapes compared with the stored ones."""
    import torch
    from transformers import AutoModelForMaskedLM

    try:
        with torch.device("meta"):
            model = AutoModelForMaskedLM.from_config(config)
    except Exception as err:
        raise ConfigError(
            f"{ckpt.path / 'config.json'} does not describe a valid {ckpt.model_type} model "
            f"({_first_line(err)}); fix config.json."
        ) from err
    stored = stored_shapes(ckpt)
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    for name, tensor in model.state_dict().items():
        found = _stored_name(name, prefix, stored)
        if found is None:
            continue  # transformers reports what it has to initialise (heads.find_head)
        want, have = tuple(tensor.shape), stored[found]
        if want != have:
            raise ConfigError(shape_mismatch(ckpt, found, have, want))


def shape_mismatch(ckpt: Checkpoint, name: str, have: tuple[int, ...],
                   want: tuple[int, ...]) -> str:
    """The message for a stored tensor whose shape config.json contradicts (no torch)."""
    fields: list[str] = []
    if len(want) == len(have):
        for w, h in zip(want, have, strict=True):
            if w != h:
                fields += [f for f in fields_with_value(ckpt.config, w) if f not in fields]
    cause = (f"config.json's {' and '.join(f'{f} = {ckpt.config[f]}' for f in fields)} makes "
             f"it {list(want)}" if fields else f"config.json makes it {list(want)}")
    return (
        f"{ckpt.path / 'config.json'} disagrees with the weights: tensor {name} is stored with "
        f"shape {list(have)}, but {cause}; make config.json match the stored tensors (or "
        "re-download both)."
    )


def load(ckpt: Checkpoint, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Instantiate the checkpoint as a transformers masked LM (eval mode) with its tokenizer."""
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    dtype = _torch_dtype(options.dtype)
    _check_device(options.device)
    remote = options.trust_remote_code and _has_remote_mlm(ckpt.config)
    if ckpt.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not remote:
        import transformers

        hint = (
            "; it ships its own code: pass --trust-remote-code"
            if _has_remote_mlm(ckpt.config)
            else ""
        )
        raise UnsupportedModelError(
            f"model_type {ckpt.model_type!r} of {ckpt.source} has no masked-LM class in "
            f"transformers {transformers.__version__} (AutoModelForMaskedLM){hint}; headscope "
            "needs an encoder with an MLM head."
        )
    remote_config = options.trust_remote_code and bool(ckpt.config.get("auto_map"))
    try:
        config = _load_config(ckpt, options)
    except InputError:
        raise
    except Exception as err:
        if remote_config:
            raise _remote_code_error(ckpt, err) from err
        raise ConfigError(
            f"{ckpt.path / 'config.json'} is not a valid {ckpt.model_type} config "
            f"({_first_line(err)}); fix config.json."
        ) from err
    if not remote:
        check_against_weights(ckpt, config)
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(ckpt.path),
            config=config,
            dtype=dtype,
            trust_remote_code=options.trust_remote_code,
            output_loading_info=True,
        )
    except pickle.UnpicklingError as err:
        raise unsafe_pickle_error(ckpt.weight_files[0], err) from err
    except SafetensorError as err:
        raise WeightFileError(
            f"A weight file of {ckpt.source} in {ckpt.path} is damaged ({_first_line(err)}); "
            "re-download the checkpoint."
        ) from err
    except Exception as err:
        if remote:
            raise _remote_code_error(ckpt, err) from err
        if not isinstance(err, (OSError, ValueError, RuntimeError)):
            raise
        raise InputError(
            f"transformers could not load {ckpt.source} from {ckpt.path} ({_first_line(err)}); "
            "check that the weights match config.json."
        ) from err
    model = model.to(options.device).eval()
    return LoadedModel(
        checkpoint=ckpt,
        model=model,
        tokenizer=load_tokenizer(ckpt, options),
        missing_keys=frozenset(info.get("missing_keys") or ()),
        options=options,
    )


# Families whose position ids start after the padding index (RoBERTa's create_position_ids).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet", "roberta-prelayernorm",
                     "xlm-roberta-xl", "longformer"}


def token_limit(model_or_config: Any, requested: int) -> int:
    """`requested`, capped at the number of tokens the model's position table can embed.

    Every tokeniser call passes an explicit max_length (which overrides the tokenizer's own
    model_max_length), so the cap has to be applied here: a BERT with 64 positions would
    otherwise crash on a 128-token probe passage.
    """
    config = getattr(model_or_config, "config", model_or_config)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return requested
    if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return max(1, min(requested, limit))
