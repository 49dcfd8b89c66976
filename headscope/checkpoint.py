"""Resolve a checkpoint source to files on disk, read tensors from them, and load a masked LM.

A source is a local directory or a Hub id ("org/name"). Hub ids are looked up in the Hugging Face
cache first (`HF_HUB_CACHE`, `HF_HOME`, read at call time so tests can point them elsewhere); the
network is tried only when `HF_HUB_OFFLINE` is not set. Weights may be one or several safetensors
files or legacy `pytorch_model.bin` files. `resolve` reads config.json and the file listing only;
`read_tensors` reads the named tensors only; `load` instantiates the transformers model.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headscope.errors import (
    CheckpointNotFoundError,
    InputError,
    NotCachedError,
    UnsupportedModelError,
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
    """Weight files of `folder` in load order and their format, or None when there are none."""
    for index_name, single, fmt in (
        (SAFETENSORS_INDEX, SAFETENSORS_SINGLE, "safetensors"),
        (BIN_INDEX, BIN_SINGLE, "bin"),
    ):
        index = folder / index_name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map", {})
            shards: list[str] = []
            for shard in weight_map.values():
                if shard not in shards:
                    shards.append(shard)
            return tuple(folder / s for s in sorted(shards)), fmt
        if (folder / single).is_file():
            return (folder / single,), fmt
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(
            f"{path} is not readable JSON ({err}); repair or replace the file."
        ) from err
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
    by_class = _architecture_model_types()
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

    if not (folder / "config.json").is_file():
        raise CheckpointNotFoundError(source, f"{folder} has no config.json")
    config = _read_json(folder / "config.json")
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
    return dict(_read_json(index).get("weight_map", {}))


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A whole .bin state dict on CPU; memory-mapped when the file's format allows it."""
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # Files written before torch 1.6's zipfile format cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(
            f"Cannot read {path} ({err}); the file is damaged or not a PyTorch state dict."
        ) from err


def tensor_names(ckpt: Checkpoint) -> list[str]:
    """Every tensor name stored in the checkpoint, without reading the tensors (safetensors)."""
    weight_map = _index(ckpt)
    if weight_map is not None:
        return list(weight_map)
    path = ckpt.weight_files[0]
    if ckpt.weight_format == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return list(fh.keys())
    return list(_load_bin(path))


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
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as fh:
                stored = set(fh.keys())
                absent = [n for n in file_names if n not in stored]
                if absent:
                    raise _absent_error(ckpt, absent)
                for n in file_names:
                    out[n] = fh.get_tensor(n)
        else:
            state = _load_bin(path)
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

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(ckpt.path), trust_remote_code=options.trust_remote_code
        )
    except Exception as err:
        raise InputError(
            f"The tokenizer of {ckpt.source} in {ckpt.path} cannot be loaded ({err}); install the "
            "package it needs (e.g. sentencepiece) or remove the broken tokenizer files."
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


def load(ckpt: Checkpoint, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Instantiate the checkpoint as a transformers masked LM (eval mode) with its tokenizer."""
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
    config = _load_config(ckpt, options)
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(ckpt.path),
            config=config,
            dtype=dtype,
            trust_remote_code=options.trust_remote_code,
            output_loading_info=True,
        )
    except (OSError, ValueError) as err:
        raise InputError(
            f"transformers could not load {ckpt.source} from {ckpt.path} ({err}); check that "
            "the weights match config.json."
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
