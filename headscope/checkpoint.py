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

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope import hub
from headscope.containment import check_contained, containment, weight_map
from headscope.errors import (
    CheckpointNotFoundError,
    ConfigError,
    InputError,
    UnsupportedModelError,
    WeightFileError,
    first_line,
)
from headscope.fileio import read_json_object
from headscope.safetensors_file import (
    TensorInfo,
    damaged_error,
    read_array,
    read_safetensors_header,
    safetensors_header,
)
from headscope.st_folder import MODULES_FILE, MlmModule, find_mlm
from headscope.vocabulary import TOKENIZER_FILES, Vocabulary, own_file, read_file
from headscope.vocabulary import check_files as check_tokenizer_files

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

DTYPES = ("float32", "bfloat16", "float16")

# Every other file headscope or transformers reads from a checkpoint folder (config and
# tokenizer), checked by `resolve` like the weight files: never read through a link out.
_READ_FILES = ("config.json", *TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json",
               "merges.txt", "chat_template.jinja", "chat_template.json")

# Tensor-name prefixes that identify a family when config.json says nothing. Checked in order;
# the first whose prefix some tensor name starts with wins.
_PREFIX_MODEL_TYPES: tuple[tuple[str, str], ...] = (
    ("model.embeddings.tok_embeddings.", "modernbert"),
    ("deberta.encoder.LayerNorm.", "deberta-v2"),
    ("deberta.", "deberta"),
    ("distilbert.", "distilbert"),
    ("roberta.", "roberta"),
    ("roberta_prelayernorm.", "roberta-prelayernorm"),
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
    module: MlmModule | None = None  # a sentence-transformers folder: its MLM module (`path`)

    @property
    def root(self) -> Path:
        """The folder the user named: the sentence-transformers folder, else `path`."""
        return self.module.root if self.module is not None else self.path


# --------------------------------------------------------------------------------------------
# resolve


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
            check_contained(folder, single, f"{folder / single}")  # a link out is refused
        if (folder / single).is_file():
            check_contained(folder, single, f"{folder / single}")
            return (folder / single,), fmt
    return None


# --------------------------------------------------------------------------------------------
# config.json


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
    elif hub.looks_like_hub_id(source):
        folder = hub.snapshot_folder(source, revision, lambda f: (
            (f / MODULES_FILE).is_file() or _find_weights(f) is not None))
        commit = folder.name
    else:
        raise CheckpointNotFoundError(
            source, "no such directory, and not a Hub id of the form org/name"
        )

    module = find_mlm(folder)  # a sentence-transformers folder: read its MLM module's folder
    folder = module.folder if module is not None else folder
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
    config = read_json_object(folder / "config.json")
    check_config(config, folder / "config.json")
    check_tokenizer_files(folder)  # seconds, not after a minute of model loading
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
        module=module,
    )
    if ckpt.model_type:
        return ckpt
    # Only a config without model_type needs the tensor names (cheap for safetensors).
    model_type = _infer_model_type(source, folder, config, tensor_names(ckpt))
    return replace(ckpt, model_type=model_type, config={**config, "model_type": model_type})


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
            f"Cannot read {path} ({first_line(err)}); the file is damaged or not a PyTorch "
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
                raise damaged_error(path, first_line(err)) from err
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
    return {n: read_array(infos[n]) for n in wanted}


def read_vocabulary(ckpt: Checkpoint, options: LoadOptions | None = None) -> Vocabulary | None:
    """The checkpoint's vocabulary; None when the folder has no tokenizer files.

    tokenizer.json and a bare vocab.txt are read without transformers (`vocabulary`); other
    formats (sentencepiece models, vocab.json with merges.txt) through it (`load_tokenizer`).
    """
    if not any((ckpt.path / f).is_file() for f in TOKENIZER_FILES):
        return None
    file_name = own_file(ckpt.path)
    if file_name is not None:
        return read_file(ckpt.path, file_name, ckpt.source)
    tokenizer = load_tokenizer(ckpt, options)
    if tokenizer is None:
        return None
    ids = list(range(len(tokenizer)))
    return Vocabulary(tokens=tuple(tokenizer.convert_ids_to_tokens(ids)),
                      all_special_ids=tuple(tokenizer.all_special_ids), file="transformers")


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
    if not any((ckpt.path / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    # AutoTokenizer picks the tokenizer class from config.json's model_type; when that key is
    # missing and headscope inferred the family, hand it the inferred family's config.
    extra = {}
    config_file = ckpt.path / "config.json"
    if (config_file.is_file() and not read_json_object(config_file).get("model_type")
            and ckpt.model_type in CONFIG_MAPPING):
        extra["config"] = _load_config(ckpt, options)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(ckpt.path), trust_remote_code=options.trust_remote_code, **extra
        )
    except Exception as err:
        # Only a missing package is fixed by installing one; a damaged file is named as such.
        missing = isinstance(err, ImportError) or "pip install" in str(err)
        raise InputError(
            f"The tokenizer of {ckpt.source} in {ckpt.path} cannot be loaded "
            f"({first_line(err)}); "
            + ("install the package it names." if missing else
               "repair or replace the tokenizer files.")
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
        f"({type(err).__name__}: {first_line(err)}); it ran only because of "
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
            f"({first_line(err)}); fix config.json."
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
            f"({first_line(err)}); fix config.json."
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
            f"A weight file of {ckpt.source} in {ckpt.path} is damaged ({first_line(err)}); "
            "re-download the checkpoint."
        ) from err
    except Exception as err:
        if remote:
            raise _remote_code_error(ckpt, err) from err
        if not isinstance(err, (OSError, ValueError, RuntimeError)):
            raise
        raise InputError(
            f"transformers could not load {ckpt.source} from {ckpt.path} ({first_line(err)}); "
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
