"""rescale: the fixed model's logits against the original's transformed, on tiny models of every
family (built from configs) and on the real BERT-tiny; SparseEncoder term weights."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from headscope.errors import InputError
from headscope.heads import find_head
from headscope.rescale import (
    STRATEGIES,
    RescaleSpec,
    expected_logits,
    rescale_model,
)
from tests.tiny_models import FAMILIES, build_tiny, save_tiny

TEXTS = ["the model head is a dense layer", "sparse query terms and passage weights ."]


def _inputs(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = min(model.config.vocab_size, 100)
    ids = torch.randint(5, n, (2, 9), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _run(model, inputs):
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


def _assert_close(actual, expected):
    tol = 1e-5 * max(1.0, float(expected.abs().max()))
    err = float((actual.float() - expected.float()).abs().max())
    assert err <= tol, f"max abs error {err} > {tol}"


# ------------------------------------------------------------------------------------- spec


@pytest.mark.parametrize("k", [0, -2, float("nan"), float("inf")])
def test_spec_rejects_bad_k(k):
    with pytest.raises(InputError) as err:
        RescaleSpec(k)
    assert str(err.value) == f"k must be a finite number > 0, got {k!r}; pass e.g. --k 8."


@pytest.mark.parametrize("k", ["8", True, None])
def test_spec_rejects_non_numbers(k):
    with pytest.raises(InputError) as err:
        RescaleSpec(k)
    assert str(err.value) == f"k must be a number, got {k!r}; pass e.g. --k 8."


def test_spec_rejects_unknown_strategy():
    with pytest.raises(InputError) as err:
        RescaleSpec(8, strategy="shrink")
    assert str(err.value) == (
        "Unknown rescale strategy 'shrink'; choose one of untie, tied, fold."
    )


def test_spec_normalises():
    spec = RescaleSpec(8)
    assert spec == RescaleSpec(8.0, "untie", False)
    assert isinstance(spec.k, float)
    assert STRATEGIES == ("untie", "tied", "fold")


def test_recommended_spec_applies_k_with_its_bias_setting():
    from headscope.recommend import Recommendation
    from headscope.rescale import recommended_spec

    divided = Recommendation(k=16.0, rule="bands", reasons=(), passing=(), scale_bias=True)
    kept = Recommendation(k=4.0, rule="bands", reasons=(), passing=(), scale_bias=False)
    assert recommended_spec(divided) == RescaleSpec(16.0, "untie", True)
    assert recommended_spec(kept, "fold") == RescaleSpec(4.0, "fold", False)
    # the user's explicit bias switch wins; None follows the recommendation
    assert recommended_spec(divided, scale_bias=False) == RescaleSpec(16.0, "untie", False)
    assert recommended_spec(kept, scale_bias=True) == RescaleSpec(4.0, "untie", True)
    with pytest.raises(InputError) as err:
        recommended_spec(SimpleNamespace(k=None, scale_bias=False))
    assert str(err.value) == "There is no recommended k to apply; pass --k K."


def test_a_spec_describes_its_arm():
    assert RescaleSpec(16.0, "untie", True).describe() == "projection / 16 (untie, bias divided)"
    assert RescaleSpec(0.5, "fold").describe() == "projection / 0.5 (fold, bias kept)"


def test_expected_logits_formula():
    x = torch.tensor([[1.0, -3.0, 5.0]])
    b = torch.tensor([0.5, 1.0, -1.0])
    assert torch.allclose(expected_logits(x, b, RescaleSpec(2)),
                          torch.tensor([[0.75, -1.0, 2.0]]))
    assert torch.allclose(expected_logits(x, b, RescaleSpec(2, scale_bias=True)), x / 2)
    assert torch.allclose(expected_logits(x, None, RescaleSpec(4)), x / 4)


# ------------------------------------------------------------------ every family, untie/fold


def _exact_cases():
    for family in FAMILIES:
        for strategy in ("untie", "fold"):
            # the bias switch is family-independent maths: two families suffice
            for scale_bias in (False, True) if family in ("bert", "modernbert") else (False,):
                yield family, strategy, scale_bias


@pytest.mark.parametrize("family,strategy,scale_bias", list(_exact_cases()))
def test_untie_and_fold_divide_projection_exactly(family, strategy, scale_bias):
    model = build_tiny(family)
    head = find_head(model)
    spec = RescaleSpec(4.0, strategy, scale_bias)
    inputs = _inputs(model)
    logits, hidden = _run(model, inputs)
    bias = None if head.bias is None else head.bias.detach().clone()
    emb_before = model.get_input_embeddings().weight.detach().clone()
    if strategy == "untie" and head.layout.decoder is None:
        with pytest.raises(InputError) as err:
            rescale_model(model, spec)
        assert str(err.value) == (
            "Strategy 'untie' needs a separate decoder module, but the deberta-v2 head projects "
            "with its input embedding matrix (no decoder tensor); use --strategy fold or "
            "--strategy tied."
        )
        return
    result = rescale_model(model, spec)
    fixed_logits, fixed_hidden = _run(model, inputs)
    _assert_close(fixed_logits, expected_logits(logits, bias, spec))
    assert torch.equal(fixed_hidden, hidden)  # the encoder is untouched
    assert torch.equal(model.get_input_embeddings().weight, emb_before)
    assert result.changed and result.spec == spec
    assert result.tied is find_head(model).tied  # what a fresh discovery sees
    if strategy == "untie":
        assert result.tied is False and model.config.tie_word_embeddings is False
        after = find_head(model)
        assert after.decoder_weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
        # transformers must not re-tie it when asked to tie again
        model.tie_weights()
        _assert_close(_run(model, inputs)[0], expected_logits(logits, bias, spec))
    else:
        assert result.tied == head.tied and result.untied is False


def test_fold_modernbert_divides_weight_only():
    model = build_tiny("modernbert")
    head = find_head(model)
    assert head.norm_bias is None
    w = head.norm_weight.detach().clone()
    result = rescale_model(model, RescaleSpec(8, "fold"))
    assert result.changed == ("head.norm.weight",)
    assert torch.equal(model.head.norm.weight, w / 8)
    assert result.tied is True


def test_fold_without_layernorm_refuses():
    model = build_tiny("bert")
    head = find_head(model)
    head.norm_weight = None  # as the generic layout reports a head without a LayerNorm
    with pytest.raises(InputError) as err:
        rescale_model(model, RescaleSpec(8, "fold"), head=head)
    assert str(err.value) == (
        "Strategy 'fold' divides the head LayerNorm, but the bert head has no LayerNorm before "
        "its decoder; use --strategy untie."
    )


def test_tied_divides_shared_matrix():
    model = build_tiny("bert")
    emb = model.get_input_embeddings().weight.detach().clone()
    bias = model.cls.predictions.bias.detach().clone()
    result = rescale_model(model, RescaleSpec(16, "tied"))
    assert result.tied and not result.untied and model.config.tie_word_embeddings is True
    assert torch.equal(model.get_input_embeddings().weight, emb / 16)
    assert model.cls.predictions.decoder.weight is model.get_input_embeddings().weight
    assert torch.equal(model.cls.predictions.bias, bias)  # no scale_bias
    assert set(result.changed) == {
        "bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"
    }


def test_tied_refuses_untied_model():
    model = build_tiny("bert")
    rescale_model(model, RescaleSpec(2, "untie"))
    with pytest.raises(InputError) as err:
        rescale_model(model, RescaleSpec(2, "tied"))
    assert str(err.value) == (
        "Strategy 'tied' divides the matrix shared by the decoder and the input embeddings, but "
        "this bert model's decoder is not tied to its embeddings; use --strategy untie (it "
        "divides the decoder alone, the same function at step 0)."
    )


def test_untie_survives_save_pretrained_roundtrip(tmp_path):
    """The transformers 5 trap: a shared decoder bias is dropped by save_pretrained."""
    from transformers import AutoModelForMaskedLM

    model = build_tiny("bert")
    inputs = _inputs(model)
    spec = RescaleSpec(4)
    bias = model.cls.predictions.bias.detach().clone()
    logits, _ = _run(model, inputs)
    rescale_model(model, spec)
    model.save_pretrained(str(tmp_path))
    reloaded, info = AutoModelForMaskedLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert info["missing_keys"] == set()
    _assert_close(_run(reloaded.eval(), inputs)[0], expected_logits(logits, bias, spec))


def test_bf16_model_keeps_dtype():
    model = build_tiny("bert").to(torch.bfloat16)
    w = model.cls.predictions.decoder.weight.detach().clone()
    rescale_model(model, RescaleSpec(3))
    dec = model.cls.predictions.decoder.weight
    assert dec.dtype == torch.bfloat16
    assert torch.equal(dec, (w.float() / 3).to(torch.bfloat16))


# ------------------------------------------------------------------------- real BERT-tiny


@pytest.mark.parametrize("strategy", ["untie", "fold"])
def test_real_bert_tiny(bert_tiny_dir, strategy):
    from headscope import checkpoint, heads

    loaded = checkpoint.load(checkpoint.resolve(str(bert_tiny_dir)))
    head = heads.find_head(loaded)
    assert head.tied
    enc = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    logits, hidden = _run(loaded.model, dict(enc))
    bias = head.bias.detach().clone()
    spec = RescaleSpec(16, strategy)
    result = rescale_model(loaded.model, spec, head=head)
    fixed, fixed_hidden = _run(loaded.model, dict(enc))
    _assert_close(fixed, expected_logits(logits, bias, spec))
    assert torch.equal(fixed_hidden, hidden)
    assert result.untied is (strategy == "untie")


# ------------------------------------------------------------------------- SparseEncoder


def _sparse_encoder(path, activation):
    from sentence_transformers.models import Transformer
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.models import SpladePooling

    mlm = Transformer(str(path), transformer_task="fill-mask")
    pool = SpladePooling(pooling_strategy="max", activation_function=activation)
    return SparseEncoder(modules=[mlm, pool], device="cpu")


def _encode(encoder, texts):
    with torch.no_grad():
        return encoder.encode(texts, convert_to_tensor=True).to_dense()  # (B, V)


def test_sparse_encoder_weights_scale_by_k(tmp_path):
    encoder = _sparse_encoder(save_tiny("bert", tmp_path / "bert"), "relu")
    before = _encode(encoder, TEXTS)
    assert (before > 0).any()
    result = rescale_model(encoder, RescaleSpec(4, "untie", scale_bias=True))
    assert result.untied
    # SPLADE weights are log1p(relu(x)), max-pooled; relu(x / k) = relu(x) / k and max-pooling
    # commutes with the monotone map, so w_after = log1p(expm1(w_before) / k).
    _assert_close(_encode(encoder, TEXTS), torch.log1p(torch.expm1(before) / 4))


def test_sparse_encoder_weights_follow_expected_logits(tmp_path):
    encoder = _sparse_encoder(save_tiny("bert", tmp_path / "bert"), "relu")
    mlm = encoder[0].auto_model
    enc = encoder.tokenize(TEXTS)
    with torch.no_grad():
        logits = mlm(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits  # (B, T, V)
    bias = mlm.cls.predictions.bias.detach().clone()
    spec = RescaleSpec(8, "fold")
    rescale_model(encoder, spec)
    x = expected_logits(logits, bias, spec)  # (B, T, V)
    x = x.masked_fill(enc["attention_mask"][..., None] == 0, float("-inf"))
    want = torch.log1p(torch.relu(x.max(dim=1).values))  # (B, V)
    _assert_close(_encode(encoder, TEXTS), want)


def test_non_model_rejected():
    with pytest.raises(InputError) as err:
        rescale_model(object(), RescaleSpec(2))
    assert str(err.value) == (
        "object holds no transformers model; pass a *ForMaskedLM or a sentence-transformers "
        "SparseEncoder built on one."
    )


def test_deepcopy_then_rescale_leaves_original():
    model = build_tiny("roberta")
    fixed = copy.deepcopy(model)
    rescale_model(fixed, RescaleSpec(2, "tied"))
    assert not torch.equal(fixed.get_input_embeddings().weight,
                           model.get_input_embeddings().weight)
