"""Where each encoder family keeps its MLM head, and finding it in a model or a checkpoint.

For BERT-like heads, logits = W_dec · LN(act(dense(h))) + b_dec (docs/rescale.md). A `HeadLayout`
names the modules of one family; `find_head` returns live handles into a loaded model (so that
rescaling them changes the model), `read_head` reads the same tensors straight from the files into
numpy without building the model (and, for safetensors, without torch). Both refuse a head that
the checkpoint does not store: statistics of a randomly initialised head would look real and mean
nothing.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope.errors import ConfigError, NoMLMHeadError, UnsupportedModelError

if TYPE_CHECKING:
    import torch

    from headscope.checkpoint import Checkpoint, LoadedModel

ROLES = (
    "decoder_weight",
    "bias",
    "dense_weight",
    "dense_bias",
    "norm_weight",
    "norm_bias",
    "embeddings",
)


@dataclass(frozen=True)
class HeadLayout:
    family: str  # "bert", "roberta", ..., "generic"
    model_types: tuple[str, ...]
    decoder: str | None  # module path of the projection (nn.Linear); None: deberta-v2
    # non-legacy, whose projection is the input embedding matrix
    bias: str | None  # parameter path of the output bias
    dense: str | None  # module path of the head's dense layer
    norm: str | None  # module path of the head's LayerNorm
    embeddings: str  # parameter path of the input word embeddings
    norm_has_bias: bool


LAYOUTS: tuple[HeadLayout, ...] = (
    HeadLayout(
        family="bert",
        model_types=("bert",),
        decoder="cls.predictions.decoder",
        bias="cls.predictions.bias",
        dense="cls.predictions.transform.dense",
        norm="cls.predictions.transform.LayerNorm",
        embeddings="bert.embeddings.word_embeddings.weight",
        norm_has_bias=True,
    ),
    HeadLayout(
        family="roberta",
        model_types=("roberta", "xlm-roberta", "camembert"),
        decoder="lm_head.decoder",
        bias="lm_head.bias",
        dense="lm_head.dense",
        norm="lm_head.layer_norm",
        embeddings="roberta.embeddings.word_embeddings.weight",
        norm_has_bias=True,
    ),
    HeadLayout(
        family="roberta-prelayernorm",  # RoBERTa with pre-norm blocks
        model_types=("roberta-prelayernorm",),
        decoder="lm_head.decoder",
        bias="lm_head.bias",
        dense="lm_head.dense",
        norm="lm_head.layer_norm",
        embeddings="roberta_prelayernorm.embeddings.word_embeddings.weight",
        norm_has_bias=True,
    ),
    HeadLayout(
        family="distilbert",
        model_types=("distilbert",),
        decoder="vocab_projector",
        bias="vocab_projector.bias",
        dense="vocab_transform",
        norm="vocab_layer_norm",
        embeddings="distilbert.embeddings.word_embeddings.weight",
        norm_has_bias=True,
    ),
    HeadLayout(
        family="albert",
        model_types=("albert",),
        decoder="predictions.decoder",
        bias="predictions.bias",
        dense="predictions.dense",  # hidden -> embedding_size
        norm="predictions.LayerNorm",
        embeddings="albert.embeddings.word_embeddings.weight",
        norm_has_bias=True,
    ),
    HeadLayout(
        family="electra",  # the generator; discriminators ship no MLM head
        model_types=("electra",),
        decoder="generator_lm_head",
        bias="generator_lm_head.bias",
        dense="generator_predictions.dense",
        norm="generator_predictions.LayerNorm",
        embeddings="electra.embeddings.word_embeddings.weight",
        norm_has_bias=True,
    ),
    HeadLayout(
        family="mpnet",
        model_types=("mpnet",),
        decoder="lm_head.decoder",
        bias="lm_head.bias",
        dense="lm_head.dense",
        norm="lm_head.layer_norm",
        embeddings="mpnet.embeddings.word_embeddings.weight",
        norm_has_bias=True,
    ),
    HeadLayout(
        family="deberta-v2-legacy",  # config.legacy true (transformers' default)
        model_types=("deberta-v2",),
        decoder="cls.predictions.decoder",
        bias="cls.predictions.bias",
        dense="cls.predictions.transform.dense",
        norm="cls.predictions.transform.LayerNorm",
        embeddings="deberta.embeddings.word_embeddings.weight",
        norm_has_bias=True,
    ),
    HeadLayout(
        family="deberta-v2",  # config.legacy false: logits = LN(...) @ E^T + b, no decoder
        model_types=("deberta-v2",),
        decoder=None,
        bias="lm_predictions.lm_head.bias",
        dense="lm_predictions.lm_head.dense",
        norm="lm_predictions.lm_head.LayerNorm",
        embeddings="deberta.embeddings.word_embeddings.weight",
        norm_has_bias=True,
    ),
    HeadLayout(
        family="modernbert",  # ModernBERT, Ettin, mmBERT
        model_types=("modernbert",),
        decoder="decoder",
        bias="decoder.bias",
        dense="head.dense",
        norm="head.norm",
        embeddings="model.embeddings.tok_embeddings.weight",
        norm_has_bias=False,
    ),
)

# Placeholder for model types the registry does not know: `find_head` fills the module names in
# from `get_output_embeddings()` / `get_input_embeddings()`.
GENERIC = HeadLayout(
    family="generic",
    model_types=(),
    decoder=None,
    bias=None,
    dense=None,
    norm=None,
    embeddings="",
    norm_has_bias=False,
)

_BY_FAMILY = {layout.family: layout for layout in LAYOUTS}


def layout_for(model_type: str, config: Any = None) -> HeadLayout:
    """The head layout of `model_type`; GENERIC for types the registry does not know.

    DeBERTa-v2 has two layouts, chosen by the config's `legacy` flag (a dict or a transformers
    config; transformers defaults it to true, and so does this function without a config).
    """
    if model_type == "deberta-v2":
        if isinstance(config, dict):
            legacy = config.get("legacy", True)
        else:
            legacy = getattr(config, "legacy", True)
        return _BY_FAMILY["deberta-v2-legacy" if legacy else "deberta-v2"]
    for layout in LAYOUTS:
        if model_type in layout.model_types:
            return layout
    return GENERIC


# --------------------------------------------------------------------------------------------
# live model


@dataclass
class Head:
    """Live handles into a loaded model's MLM head."""

    layout: HeadLayout
    decoder_weight: torch.Tensor  # (V, E) projection actually used for logits
    bias: torch.Tensor | None  # (V,)
    dense_weight: torch.Tensor | None  # (E, H)
    norm_weight: torch.Tensor | None  # (E,)
    norm_bias: torch.Tensor | None  # (E,)
    tied: bool  # decoder weight is the input embedding matrix (same storage)
    names: dict[str, str]  # role -> state_dict name (roles in ROLES; absent roles left out)


def _submodule(model, path: str | None):
    if path is None:
        return None
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _parameter(model, path: str | None):
    if not path:
        return None
    try:
        return model.get_parameter(path)
    except AttributeError:
        return None


def _same_storage(a, b) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    if a.is_meta or b.is_meta:  # no storage (a model built on the meta device): tied
        return a is b  # parameters are one Parameter object
    return a.data_ptr() == b.data_ptr()


def _layout_present(model, layout: HeadLayout) -> bool:
    modules = [layout.decoder, layout.dense, layout.norm]
    return all(_submodule(model, m) is not None for m in modules if m is not None) and (
        _parameter(model, layout.embeddings) is not None
    )


def _head_from_layout(model, layout: HeadLayout) -> Head:
    emb = model.get_parameter(layout.embeddings)  # (V, E)
    names = {"embeddings": layout.embeddings}
    if layout.decoder is not None:
        decoder = model.get_submodule(layout.decoder)
        decoder_weight = decoder.weight
        names["decoder_weight"] = f"{layout.decoder}.weight"
        # The decoder's own bias is the one added to the logits; transformers ties it to the
        # layout's bias parameter, whose name is the one checkpoints store.
        bias = decoder.bias
        named_bias = _parameter(model, layout.bias)
        if bias is None:
            bias = named_bias
            bias_name = layout.bias if named_bias is not None else None
        elif _same_storage(bias, named_bias):
            bias_name = layout.bias
        else:
            bias_name = f"{layout.decoder}.bias"
    else:
        decoder_weight = emb
        names["decoder_weight"] = layout.embeddings
        bias = _parameter(model, layout.bias)
        bias_name = layout.bias if bias is not None else None
    if bias_name is not None:
        names["bias"] = bias_name

    dense = _submodule(model, layout.dense)
    norm = _submodule(model, layout.norm)
    dense_weight = dense.weight if dense is not None else None
    norm_weight = getattr(norm, "weight", None) if norm is not None else None
    norm_bias = getattr(norm, "bias", None) if norm is not None else None
    if dense is not None:
        names["dense_weight"] = f"{layout.dense}.weight"
        if dense.bias is not None:
            names["dense_bias"] = f"{layout.dense}.bias"
    if norm_weight is not None:
        names["norm_weight"] = f"{layout.norm}.weight"
    if norm_bias is not None:
        names["norm_bias"] = f"{layout.norm}.bias"
    return Head(
        layout=layout,
        decoder_weight=decoder_weight,
        bias=bias,
        dense_weight=dense_weight,
        norm_weight=norm_weight,
        norm_bias=norm_bias,
        tied=_same_storage(decoder_weight, emb),
        names=names,
    )


def _module_name(model, module) -> str | None:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    return None


def _sibling_bias(model, decoder_name: str, vocab: int):
    """(bias, its name) of a head that keeps its output bias beside a bias-free decoder, as a
    parameter `bias` of one vocabulary entry per row of the decoder's parent module (ESM's
    `lm_head.bias`, added to `decoder(x)`); (None, None) when there is none."""
    parent_name = decoder_name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    bias = parent._parameters.get("bias") if hasattr(parent, "_parameters") else None
    if bias is None or tuple(bias.shape) != (vocab,):
        return None, None
    return bias, f"{parent_name}.bias" if parent_name else "bias"


def _generic_head(model, source: str, model_type: str) -> Head:
    out = model.get_output_embeddings()
    if out is None or getattr(out, "weight", None) is None:
        name = type(model).__name__
        advice = ("its logits do not come from one vocabulary projection that headscope can "
                  "measure and divide" if name.endswith("ForMaskedLM")
                  else "load it with its masked-LM class")
        raise NoMLMHeadError(
            source, f"{name} has no output embeddings (get_output_embeddings() returned None); "
            f"{advice}",
        )
    inp = model.get_input_embeddings()
    decoder_name = _module_name(model, out)
    emb_name = _module_name(model, inp) if inp is not None else None
    if decoder_name is None:
        raise NoMLMHeadError(
            source, f"the output embeddings of {type(model).__name__} are not a submodule of it"
        )
    names = {"decoder_weight": f"{decoder_name}.weight"}
    bias = getattr(out, "bias", None)
    if bias is not None:
        names["bias"] = f"{decoder_name}.bias"
    else:
        bias, bias_name = _sibling_bias(model, decoder_name, out.weight.shape[0])
        if bias_name is not None:
            names["bias"] = bias_name
    if emb_name is not None:
        names["embeddings"] = f"{emb_name}.weight"
    layout = HeadLayout(
        family="generic",
        model_types=(model_type,),
        decoder=decoder_name,
        bias=names.get("bias"),
        dense=None,
        norm=None,
        embeddings=names.get("embeddings", ""),
        norm_has_bias=False,
    )
    emb = inp.weight if inp is not None else None
    return Head(
        layout=layout,
        decoder_weight=out.weight,
        bias=bias,
        dense_weight=None,
        norm_weight=None,
        norm_bias=None,
        tied=_same_storage(out.weight, emb),
        names=names,
    )


def _listing(names: list[str], limit: int = 3) -> str:
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


def _check_trained(head: Head, missing: frozenset[str], source: str) -> None:
    """Refuse a head whose tensors transformers reports as newly initialised."""
    # A tied decoder is legitimately absent from the file: it is the embeddings.
    skip = {"embeddings", "decoder_weight"} if head.tied else {"embeddings"}
    own = [head.names[r] for r in ROLES if r in head.names and r not in skip]
    new = [n for n in own if n in missing]
    if head.tied and head.names.get("embeddings") in missing:
        new.append(head.names["embeddings"])
    if not new:
        return
    if own and all(n in missing for n in own):
        reason = (
            f"the checkpoint stores none of its {head.layout.family} head tensors "
            f"({_listing(own)}), so transformers initialised them at random; pass a checkpoint "
            "saved with its masked-LM head"
        )
    else:
        reason = (
            f"transformers newly initialised head tensor(s) {_listing(new)}, so the head is "
            "partly random; pass a checkpoint whose whole head was trained"
        )
    raise NoMLMHeadError(source, reason)


def find_head(
    model: Any,
    model_type: str | None = None,
    *,
    missing_keys: Collection[str] = frozenset(),
    source: str | None = None,
) -> Head:
    """Live handles to the MLM head of `model`; NoMLMHeadError when absent or newly initialised.

    model: a transformers masked LM (or a `checkpoint.LoadedModel`, which supplies the three
    others: its checkpoint's model type and source, and the keys transformers initialised).
    model_type: the family's model type (default: the config's); missing_keys: the state_dict
    names transformers newly initialised on loading (a head among them is refused); source:
    how messages name the model (default: the config's name or path, else the class name).
    """
    if hasattr(model, "checkpoint") and hasattr(model, "missing_keys"):  # a LoadedModel
        loaded: LoadedModel = model
        return find_head(loaded.model, loaded.checkpoint.model_type,
                         missing_keys=loaded.missing_keys, source=loaded.checkpoint.source)
    config = model.config
    if model_type is None:
        model_type = str(getattr(config, "model_type", "") or "")
    if source is None:
        source = getattr(config, "_name_or_path", "") or type(model).__name__
    layout = layout_for(model_type, config)
    if layout.family != "generic" and _layout_present(model, layout):
        head = _head_from_layout(model, layout)
    else:
        head = _generic_head(model, source, model_type)
    _check_trained(head, frozenset(missing_keys), source)
    return head


# --------------------------------------------------------------------------------------------
# weights only


def _candidates(name: str, role: str, base_prefix: str) -> list[str]:
    """Names a tensor may be stored under: as is, legacy gamma/beta, without the base prefix."""
    out = [name]
    if role in ("norm_weight", "norm_bias"):
        out.append(re.sub(r"\.weight$", ".gamma", re.sub(r"\.bias$", ".beta", name)))
    if base_prefix and name.startswith(base_prefix):
        # Bare encoders saved by transformers 4.x omit the base-model prefix ("bert.").
        out += [c[len(base_prefix) :] for c in list(out)]
    return out


@dataclass(frozen=True)
class StoredHead:
    """An MLM head as its checkpoint stores it, read from the files without building the model."""

    layout: HeadLayout
    arrays: dict[str, np.ndarray]  # role -> array (roles of ROLES the checkpoint has; a tied
    # decoder that is not stored is the embeddings array). Stored dtype; bfloat16 -> float32.
    names: dict[str, str]  # role -> stored tensor name ("decoder_weight" of a tied decoder that
    # is not stored: the embeddings' name)
    tied: bool  # the decoder is the input embeddings (not stored, or stored equal)
    dtype: str  # stored dtype of the decoder weight: "float32", "bfloat16", "float16", ...
    found_by: str = "layout"  # how the head's tensor names were found: HEAD_FOUND_BY

    @property
    def decoder_weight(self) -> np.ndarray:  # (V, E)
        return self.arrays["decoder_weight"]


def _stored_head_names(ckpt: Checkpoint, layout: HeadLayout, stored: set[str]) -> dict[str, str]:
    """role -> stored tensor name of the head of `layout` among `stored`; refuses a head the
    files lack (transformers would initialise it at random)."""
    base_prefix = layout.embeddings.split(".", 1)[0] + "."
    wanted: dict[str, str] = {"embeddings": layout.embeddings}
    if layout.decoder is not None:
        wanted["decoder_weight"] = f"{layout.decoder}.weight"
    if layout.bias is not None:
        wanted["bias"] = layout.bias
    if layout.dense is not None:
        wanted["dense_weight"] = f"{layout.dense}.weight"
        wanted["dense_bias"] = f"{layout.dense}.bias"
    if layout.norm is not None:
        wanted["norm_weight"] = f"{layout.norm}.weight"
        wanted["norm_bias"] = f"{layout.norm}.bias"

    found: dict[str, str] = {}  # role -> stored name
    for role, name in wanted.items():
        for candidate in _candidates(name, role, base_prefix):
            if candidate in stored:
                found[role] = candidate
                break
    tie_flag = bool(ckpt.config.get("tie_word_embeddings", True))
    if layout.decoder is not None:
        decoder_bias = f"{layout.decoder}.bias"
        if decoder_bias != layout.bias and not tie_flag:
            # With tie_word_embeddings false transformers also unties the decoder bias from the
            # layout's bias parameter (bert, roberta, albert, ...): the decoder's own bias then
            # makes the logits.
            wanted["bias"] = decoder_bias
            found.pop("bias", None)
            if decoder_bias in stored:
                found["bias"] = decoder_bias
        elif "bias" not in found and decoder_bias in stored:
            found["bias"] = decoder_bias  # stored only under the decoder

    source = ckpt.source
    if "embeddings" not in found:
        raise NoMLMHeadError(
            source,
            f"the checkpoint stores no input embeddings {layout.embeddings}, so it is not a "
            f"{layout.family} checkpoint; check model_type in config.json",
        )
    head_roles = [r for r in wanted if r not in ("embeddings", "decoder_weight")]
    if not any(r in found for r in head_roles):
        raise NoMLMHeadError(
            source,
            f"the checkpoint stores none of its {layout.family} head tensors "
            f"({_listing([wanted[r] for r in head_roles])}), so transformers would initialise "
            "them at random; pass a checkpoint saved with its masked-LM head",
        )
    if layout.decoder is not None and "decoder_weight" not in found and not tie_flag:
        raise NoMLMHeadError(
            source,
            f"the checkpoint stores no decoder {wanted['decoder_weight']} and config.json sets "
            "tie_word_embeddings false, so transformers would initialise it at random; set it "
            "true if the decoder is meant to be the input embeddings",
        )
    # Biases are optional only where the family's config can switch them off (ModernBERT).
    required = ["dense_weight", "norm_weight"]
    if layout.family != "modernbert":
        required += ["bias", "dense_bias"] + (["norm_bias"] if layout.norm_has_bias else [])
    absent = [wanted[r] for r in required if r not in found]
    if absent:
        raise NoMLMHeadError(
            source,
            f"the checkpoint lacks head tensor(s) {_listing(absent)}, which transformers would "
            "initialise at random; pass a checkpoint whose whole head was trained",
        )
    return found


@dataclass(frozen=True)
class _Located:
    """Where the head's tensors are stored, from the headers alone (no tensor read)."""

    layout: HeadLayout
    found: dict[str, str]  # role -> stored name
    infos: dict[str, Any]  # stored name -> checkpoint.TensorInfo
    tied: bool | None  # known from the model (meta-model); None: decided from the arrays
    found_by: str


def _locate(ckpt: Checkpoint) -> _Located:
    from headscope.checkpoint import tensor_infos

    layout = layout_for(ckpt.model_type, ckpt.config)
    if layout.family == "generic":
        return _locate_by_meta_model(ckpt)
    infos = tensor_infos(ckpt)
    found = _stored_head_names(ckpt, layout, set(infos))
    check_head_shapes(ckpt, layout, found, {name: info.shape for name, info in infos.items()})
    return _Located(layout, found, infos, None, "layout")


def head_tensor_names(ckpt: Checkpoint) -> tuple[str, ...]:
    """The stored tensors `read_head` reads, from the headers alone (what a ranged download of
    a remote checkpoint must fetch); the same refusals as `read_head`."""
    return tuple(sorted(set(_locate(ckpt).found.values())))


def read_head(ckpt: Checkpoint) -> StoredHead:
    """Read the head tensors from the checkpoint's files without building the model.

    Needs neither torch nor transformers for safetensors checkpoints: the headers give the
    names, and only the head's byte ranges are read (`checkpoint.read_arrays`). `.bin`
    checkpoints are read with torch. Legacy gamma/beta names and bare encoders saved without
    the base-model prefix are handled; a head the files lack is refused (NoMLMHeadError).
    A family outside the layout table is named by a model built on the meta device
    (`found_by` "meta-model"; torch and transformers imported, no weight allocated).
    """
    from headscope.checkpoint import read_arrays

    loc = _locate(ckpt)
    found = dict(loc.found)
    arrays = read_arrays(ckpt, sorted(set(found.values())), loc.infos)
    out = {role: arrays[name] for role, name in found.items()}
    if loc.tied or "decoder_weight" not in out:
        # the meta model ties them, or deberta-v2 (no decoder), or a tied decoder not stored
        out["decoder_weight"] = out["embeddings"]
        found["decoder_weight"] = found["embeddings"]
        tied = True
    elif loc.tied is None:
        dec, emb = out["decoder_weight"], out["embeddings"]  # (V, E) each
        tie_flag = bool(ckpt.config.get("tie_word_embeddings", True))
        tied = tie_flag and dec.shape == emb.shape and bool(np.array_equal(dec, emb))
    else:
        tied = False
    return StoredHead(layout=loc.layout, arrays=out, names=found, tied=tied,
                      dtype=loc.infos[found["decoder_weight"]].dtype, found_by=loc.found_by)


# How the head's tensors were named (report field model.head_found_by):
HEAD_FOUND_BY = {
    "layout": "headscope's layout table for the family (no model built)",
    "output-embeddings": "the loaded model's output embeddings (a family outside the table)",
    "meta-model": "the output embeddings of a model built from config.json on the meta device, "
                  "which allocates no weights (weights-only, a family outside the table)",
}


def found_by(layout: HeadLayout, *, weights_only: bool) -> str:
    """The HEAD_FOUND_BY key of a head of `layout` found by the full load or weights-only."""
    if layout.family != "generic":
        return "layout"
    return "meta-model" if weights_only else "output-embeddings"


def _meta_model(ckpt: Checkpoint):
    """The checkpoint's masked LM built from config.json on the meta device: every module and
    parameter name and shape, no memory for the weights (and none of them read)."""
    import torch
    import transformers
    from transformers import AutoModelForMaskedLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if ckpt.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise UnsupportedModelError(
            f"model_type {ckpt.model_type!r} of {ckpt.source} has no masked-LM class in "
            f"transformers {transformers.__version__} (AutoModelForMaskedLM), so its head "
            "cannot be named; headscope needs an encoder with an MLM head."
        )
    try:
        config = CONFIG_MAPPING[ckpt.model_type].from_dict(dict(ckpt.config))
        with torch.device("meta"):
            return AutoModelForMaskedLM.from_config(config)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"{ckpt.path / 'config.json'} does not describe a valid {ckpt.model_type} model "
            f"({first}); fix config.json."
        ) from err


def _names_on_loading(model, stored: Collection[str]) -> dict[str, str]:
    """model name -> stored name, as transformers renames stored tensors when it loads them
    (its conversion mapping: legacy names, moved prefixes, renamed heads). Names a converter
    merges or splits are left out, and so is everything under a transformers without the
    mapping (4.x), where the stored names are the model's."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )
    except ImportError:
        return {}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta_state = model.state_dict()
    out: dict[str, str] = {}
    for name in stored:
        renamed, converted = rename_source_key(name, renamings, converters,
                                               model.base_model_prefix, meta_state)
        if converted is None:
            out.setdefault(renamed, name)
    return out


def _locate_by_meta_model(ckpt: Checkpoint) -> _Located:
    """`_locate` for a family outside the layout table: `find_head` on the model built on the
    meta device names the head's tensors (as the full load finds them). Imports torch and
    transformers; allocates no weights."""
    from headscope.checkpoint import shape_mismatch, tensor_infos

    model = _meta_model(ckpt)
    head = find_head(model, ckpt.model_type, source=ckpt.source)
    infos = tensor_infos(ckpt)
    aliases: dict[int, list[str]] = {}  # tied parameters: every name of one Parameter
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    base_prefix = f"{getattr(model, 'base_model_prefix', '')}."
    renamed = _names_on_loading(model, infos)
    found: dict[str, str] = {}  # role -> stored name
    for role, name in head.names.items():
        if head.tied and role == "decoder_weight":
            continue  # the decoder is the input embeddings, whatever the files store for it
        param = model.get_parameter(name)
        for alias in [name] + [a for a in aliases[id(param)] if a != name]:
            stored = renamed.get(alias) or next(
                (c for c in _candidates(alias, role, base_prefix) if c in infos), None)
            if stored is not None:
                found[role] = stored
                want = tuple(param.shape)
                if tuple(infos[stored].shape) != want:
                    raise ConfigError(shape_mismatch(ckpt, stored, tuple(infos[stored].shape),
                                                     want))
                break
    own = [r for r in head.names if r != "embeddings" and not (head.tied and r == "decoder_weight")]
    new = [head.names[r] for r in own if r not in found]
    if head.tied and "embeddings" not in found:
        new.append(head.names["embeddings"])
    if new:
        reason = (
            f"the checkpoint stores none of its generic head tensors ({_listing(new)}), so "
            "transformers would initialise them at random; pass a checkpoint saved with its "
            "masked-LM head"
            if all(head.names[r] in new for r in own) else
            f"the checkpoint lacks head tensor(s) {_listing(new)}, which transformers would "
            "initialise at random; pass a checkpoint whose whole head was trained"
        )
        raise NoMLMHeadError(ckpt.source, reason)
    return _Located(head.layout, found, infos, head.tied, "meta-model")


def _width_fields(layout: HeadLayout, config: dict) -> tuple[str, str, str]:
    """(field of the embedding width, field of the head's width, field of the encoder's
    hidden size) in config.json for `layout`, as transformers sizes the tensors."""
    family = layout.family
    if family == "distilbert":
        return "dim", "dim", "dim"
    if family in ("albert", "electra"):
        return "embedding_size", "embedding_size", "hidden_size"
    if family.startswith("deberta-v2"):
        emb = "embedding_size" if "embedding_size" in config else "hidden_size"
        return emb, emb if family == "deberta-v2-legacy" else "hidden_size", "hidden_size"
    return "hidden_size", "hidden_size", "hidden_size"


def check_head_shapes(ckpt: Checkpoint, layout: HeadLayout, found: dict[str, str],
                      shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse head tensors whose stored shapes config.json contradicts (no torch).

    `found` maps roles to stored names, `shapes` stored names to shapes (from the safetensors
    headers). A size config.json does not set is taken from the stored embeddings, so the head
    tensors must still agree with each other.
    """
    from headscope.checkpoint import shape_mismatch

    config = ckpt.config
    emb_field, head_field, hidden_field = _width_fields(layout, config)
    emb_shape = shapes[found["embeddings"]]

    def size(field: str, fallback: int | None) -> int | None:
        value = config.get(field)
        return value if isinstance(value, int) and not isinstance(value, bool) else fallback

    n_rows = size("vocab_size", emb_shape[0] if len(emb_shape) == 2 else None)
    emb_width = size(emb_field, emb_shape[-1] if len(emb_shape) == 2 else None)
    head_width = size(head_field, emb_width)
    hidden = size(hidden_field, None)
    expected = {
        "embeddings": (n_rows, emb_width),
        "decoder_weight": (n_rows, head_width),
        "bias": (n_rows,),
        "dense_weight": (head_width, hidden),
        "dense_bias": (head_width,),
        "norm_weight": (head_width,),
        "norm_bias": (head_width,),
    }
    for role in ("embeddings",) + tuple(r for r in ROLES if r != "embeddings"):
        if role not in found:
            continue
        have = shapes[found[role]]
        want = expected[role]
        if len(have) != len(want) or any(w is not None and w != h
                                         for w, h in zip(want, have, strict=False)):
            full = tuple(h if w is None else w for w, h in zip(want, have, strict=False))
            if len(have) != len(want):
                full = tuple(w if w is not None else -1 for w in want)
            raise ConfigError(shape_mismatch(ckpt, found[role], have, full))
