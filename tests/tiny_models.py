"""Tiny masked LMs of every head family, built from configs (no download), and checkpoint folders.

Every family gets hidden size 32, one or two layers and a vocabulary of 100 rows, matched by a
100-token WordPiece tokenizer; ModernBERT is padded like the real one (128 rows, 100 tokens), so
28 of its decoder rows lie beyond the tokenizer. Weights are seeded per family: building the same
family twice gives the same tensors.

Helpers for the refusal cases write a headless `BertModel` checkpoint (as a sentence-embedding
model ships) and a BERT masked LM whose head tensors were stripped from the file.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

N_TOKENS = 100  # tokenizer length
VOCAB = 100  # decoder rows of every family but ModernBERT
MODERNBERT_VOCAB = 128  # padded past the tokenizer, like ModernBERT's 50,368 rows
N_UNUSED = 5  # "[unused0]".."[unused4]" placeholders at ids 5..9
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4

FAMILIES = (
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "roberta-prelayernorm",
    "distilbert",
    "albert",
    "electra",
    "mpnet",
    "deberta-v2-legacy",
    "deberta-v2",
    "modernbert",
)

# Specials in every config point inside the tiny vocabulary.
_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
_SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


def vocab_tokens() -> list[str]:
    """The tiny tokenizer's vocabulary, in id order (length N_TOKENS)."""
    unused = [f"[unused{i}]" for i in range(N_UNUSED)]
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = (
        "the an of and to in is was for on with as by model head scale term query passage "
        "sparse dense weight row norm token text word vocab layer train loss score mask fix "
        "bias rank data test tiny real . , ? !"
    ).split()
    pieces = "##s ##ed ##ing ##er ##ly ##e ##a ##n ##t ##r".split()
    tokens = list(SPECIALS) + unused + letters + words + pieces
    tokens += [f"w{i}" for i in range(N_TOKENS - len(tokens))]
    assert len(tokens) == N_TOKENS and len(set(tokens)) == N_TOKENS
    return tokens


def _config(family: str):
    from transformers import (
        AlbertConfig,
        BertConfig,
        CamembertConfig,
        DebertaV2Config,
        DistilBertConfig,
        ElectraConfig,
        ModernBertConfig,
        MPNetConfig,
        RobertaConfig,
        RobertaPreLayerNormConfig,
        XLMRobertaConfig,
    )

    if family == "bert":
        return BertConfig(vocab_size=VOCAB, **_SMALL, **_IDS)
    if family == "roberta":
        return RobertaConfig(vocab_size=VOCAB, **_SMALL, **_IDS)
    if family == "xlm-roberta":
        return XLMRobertaConfig(vocab_size=VOCAB, **_SMALL, **_IDS)
    if family == "camembert":
        return CamembertConfig(vocab_size=VOCAB, **_SMALL, **_IDS)
    if family == "roberta-prelayernorm":
        return RobertaPreLayerNormConfig(vocab_size=VOCAB, **_SMALL, **_IDS)
    if family == "distilbert":
        return DistilBertConfig(
            vocab_size=VOCAB,
            dim=32,
            n_layers=1,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    if family == "albert":
        # embedding 16 != hidden 32, as in the real ALBERT (128 != 256)
        return AlbertConfig(vocab_size=VOCAB, embedding_size=16, **_SMALL, **_IDS)
    if family == "electra":
        return ElectraConfig(vocab_size=VOCAB, embedding_size=16, **_SMALL, **_IDS)
    if family == "mpnet":
        return MPNetConfig(vocab_size=VOCAB, **_SMALL, **_IDS)
    if family in ("deberta-v2", "deberta-v2-legacy"):
        return DebertaV2Config(
            vocab_size=VOCAB, legacy=family == "deberta-v2-legacy", **_SMALL, **_IDS
        )
    if family == "modernbert":
        return ModernBertConfig(
            vocab_size=MODERNBERT_VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            global_attn_every_n_layers=2,
            local_attention=16,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
        )
    raise ValueError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")


def _seed(family: str) -> int:
    return zlib.crc32(family.encode())


def build_tiny(family: str):
    """A tiny *ForMaskedLM of `family`, deterministic weights, eval mode."""
    from transformers import AutoModelForMaskedLM

    config = _config(family)
    torch.manual_seed(_seed(family))
    model = AutoModelForMaskedLM.from_config(config)
    # Give every bias and LayerNorm a non-trivial value so that a role mix-up shows in tests
    # (fresh models have zero biases and unit LayerNorm weights, which all look alike).
    gen = torch.Generator().manual_seed(_seed(family) + 1)
    with torch.no_grad():
        seen: set[int] = set()
        for _, param in model.named_parameters():
            if param.data_ptr() in seen:
                continue
            seen.add(param.data_ptr())
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model.eval()


def write_tokenizer(path: Path) -> None:
    """Write a 100-token WordPiece tokenizer (BertTokenizer, fast backend) into `path`."""
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab_tokens()) + "\n")
    # from_pretrained reads vocab.txt under transformers 4.x and 5.x alike (the constructor's
    # argument was renamed from vocab_file to vocab).
    tok = BertTokenizerFast.from_pretrained(str(path), do_lower_case=True)
    assert len(tok) == N_TOKENS
    tok.save_pretrained(str(path))


def save_tiny(family: str, path: Path, with_tokenizer: bool = True, **save_kwargs) -> Path:
    """Write a tiny checkpoint folder of `family` (safetensors unless save_kwargs say otherwise)."""
    path = Path(path)
    model = build_tiny(family)
    model.save_pretrained(str(path), **save_kwargs)
    if with_tokenizer:
        write_tokenizer(path)
    return path


def save_headless_bert(path: Path) -> Path:
    """A `BertModel` checkpoint (no MLM head at all), like a sentence-embedding model."""
    from transformers import BertModel

    path = Path(path)
    torch.manual_seed(_seed("headless"))
    BertModel(_config("bert")).save_pretrained(str(path))
    write_tokenizer(path)
    return path


def save_bert_without_head(path: Path, strip: str = "cls.") -> Path:
    """A BertForMaskedLM checkpoint whose tensors named `strip`* were removed from the file.

    The default strips the whole head; "cls.predictions.transform.dense." strips part of it.
    """
    path = save_tiny("bert", path)
    weights = path / "model.safetensors"
    tensors = {k: v for k, v in load_file(str(weights)).items() if not k.startswith(strip)}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return path


def save_electra_discriminator(path: Path) -> Path:
    """An ELECTRA discriminator (ElectraForPreTraining): an encoder with no MLM head."""
    from transformers import ElectraForPreTraining

    path = Path(path)
    torch.manual_seed(_seed("electra-discriminator"))
    ElectraForPreTraining(_config("electra")).save_pretrained(str(path))
    write_tokenizer(path)
    return path


def save_deberta_v3_style(path: Path) -> Path:
    """A DeBERTa-v2 checkpoint whose config omits "legacy", as DeBERTa-v3 configs do.

    transformers then builds the legacy head (cls.predictions.*), which the files do not hold:
    its head is newly initialised.
    """
    path = save_tiny("deberta-v2", path)
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("legacy", None)
    cfg_file.write_text(json.dumps(cfg, indent=2))
    return path


def save_tiny_bin(family: str, path: Path, shards: int = 1, legacy_format: bool = False) -> Path:
    """A tiny checkpoint with pytorch_model.bin weights, sharded with an index when shards > 1.

    legacy_format writes torch's pre-1.6 (non-zip) format, which cannot be memory-mapped.
    """
    path = Path(path)
    save_tiny(family, path)
    (path / "model.safetensors").unlink()
    state = {k: v.clone().contiguous() for k, v in build_tiny(family).state_dict().items()}
    names = list(state)
    if shards == 1:
        torch.save(
            state, path / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy_format
        )
        return path
    weight_map: dict[str, str] = {}
    size = (len(names) + shards - 1) // shards
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i * size : (i + 1) * size]}
        torch.save(part, path / file, _use_new_zipfile_serialization=not legacy_format)
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return path


def save_without_model_type(family: str, path: Path, keep_architectures: bool) -> Path:
    """A tiny checkpoint whose config.json lacks model_type (and maybe architectures)."""
    path = save_tiny(family, path)
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("model_type", None)
    if not keep_architectures:
        cfg.pop("architectures", None)
    cfg_file.write_text(json.dumps(cfg, indent=2))
    return path


# --------------------------------------------------------------------------------------------
# every family of transformers' masked-LM table

# Sizes set on any config that has the field (and on its text/vision sub-configs).
_ANY_SMALL = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=64, vocab_size=VOCAB, embedding_size=16, d_model=32,
    encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
    encoder_ffn_dim=64, decoder_ffn_dim=64, emb_dim=32, n_layers=1, n_heads=2,
    num_key_value_heads=2, head_dim=16, **_IDS,
)
# Families whose configs need more than the common sizes to build small.
_ANY_EXTRA: dict[str, dict] = {
    "funnel": dict(block_sizes=[1], block_repeats=[1], num_decoder_layers=1, d_head=16,
                   d_inner=64, n_head=2),
    "luke": dict(entity_vocab_size=10, entity_emb_size=16),
    "perceiver": dict(num_latents=8, d_latents=32, num_blocks=1, num_self_attends_per_block=1,
                      num_self_attention_heads=2, num_cross_attention_heads=2),
    "reformer": dict(axial_pos_embds_dim=(16, 16), axial_pos_shape=(8, 8),
                     attention_head_size=16, feed_forward_size=64, attn_layers=["local"],
                     local_attn_chunk_length=8, is_decoder=False),
    "squeezebert": dict(embedding_size=32),
}


def masked_lm_families() -> tuple[str, ...]:
    """Every model type of the installed transformers' masked-LM table (AutoModelForMaskedLM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return tuple(MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def _shrink(config, extra: dict) -> None:
    from transformers import PretrainedConfig

    present = config.to_dict()
    for key, value in {**_ANY_SMALL, **extra}.items():
        if key in present:
            setattr(config, key, value)
    for sub in ("text_config", "vision_config"):
        inner = getattr(config, sub, None)
        if isinstance(inner, PretrainedConfig):
            _shrink(inner, {})
            layers = getattr(inner, "layer_types", None)
            if layers:
                inner.layer_types = list(layers)[: inner.num_hidden_layers]


def any_config(model_type: str):
    """A small config of any masked-LM model type: the type's defaults with the sizes shrunk."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    extra = _ANY_EXTRA.get(model_type, {})
    # Sizes that the config validates together (blocks, per-layer types) are given at
    # construction; per-layer types are then derived from the new number of layers.
    first = {k: v for k, v in extra.items() if k in ("block_sizes", "block_repeats")}
    if "layer_types" in CONFIG_MAPPING[model_type]().to_dict():
        first.update(layer_types=None, num_hidden_layers=_ANY_SMALL["num_hidden_layers"])
    config = CONFIG_MAPPING[model_type](**first)
    _shrink(config, extra)
    return config


def save_any(model_type: str, path: Path) -> Path:
    """A tiny checkpoint of any masked-LM model type, weights seeded by the type, every
    parameter nudged off its initial value (as `build_tiny` does), with the 100-token tokenizer."""
    from transformers import AutoModelForMaskedLM

    path = Path(path)
    torch.manual_seed(_seed(model_type))
    model = AutoModelForMaskedLM.from_config(any_config(model_type))
    gen = torch.Generator().manual_seed(_seed(model_type) + 1)
    with torch.no_grad():
        for param in model.parameters():  # each tied Parameter once
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    model.save_pretrained(str(path))
    write_tokenizer(path)
    return path
