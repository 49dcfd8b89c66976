"""simulate: the dense-regime variants of the real BERT-tiny (median logit 0, dense activity),
checked against an exact median computed here; scale-only against expected_logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headscope.errors import InputError
from headscope.heads import find_head
from headscope.rescale import RescaleSpec, expected_logits
from headscope.simulate import (
    CONFIG_KEY,
    DenseVariant,
    is_simulation,
    make_dense_variant,
    measure_activity,
)
from tests.tiny_models import build_tiny, save_tiny


@pytest.fixture(scope="module")
def passages() -> list[str]:
    from headscope import probe

    return [p.passage for p in probe.builtin_probe(8).pairs]


@pytest.fixture()
def bert_tiny(bert_tiny_dir):
    from headscope import checkpoint

    return checkpoint.load(checkpoint.resolve(str(bert_tiny_dir)))


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = save_tiny("bert", tmp_path_factory.mktemp("tiny-bert"))
    return AutoTokenizer.from_pretrained(str(path))


def _all_logits(model, tokenizer, texts) -> np.ndarray:
    """Every (token, vocab) logit of the non-padding tokens, exactly: (N * V,)."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits  # (B, T, V)
    return logits[enc["attention_mask"].bool()].reshape(-1).numpy()


def test_bias_variant_is_dense_with_median_zero(bert_tiny, passages):
    model, tok = bert_tiny.model, bert_tiny.tokenizer
    bias_before = model.cls.predictions.bias.detach().clone()
    info = make_dense_variant(model, tok, passages, where="bias")
    vocab = model.config.vocab_size
    assert abs(info.median_after) < 1e-3
    assert abs(float(np.median(_all_logits(model, tok, passages)))) < 0.05  # exact median
    assert info.median_before < -3  # the real model is sparse: mostly negative logits
    assert info.active_before < 0.02 * vocab
    assert info.active_after > 0.6 * vocab  # planning measured 24.7k of 30.5k per passage
    assert 0.45 < info.frac_positive_after < 0.55
    assert info.shift == pytest.approx(-info.median_before)
    torch.testing.assert_close(model.cls.predictions.bias, bias_before + info.shift)
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert set(info.changed) == {"cls.predictions.bias", "cls.predictions.decoder.bias"}
    entry = getattr(model.config, CONFIG_KEY)
    assert entry["simulation"] is True and entry["where"] == "bias"
    assert entry["label"].startswith("SIMULATION, not a real checkpoint")
    assert is_simulation(model) and is_simulation(model.config.to_dict())


def test_projection_variant_moves_layernorm_bias_only(bert_tiny, passages):
    model, tok = bert_tiny.model, bert_tiny.tokenizer
    head = find_head(model)
    bias = head.bias.detach().clone()
    decoder = head.decoder_weight.detach().clone()
    beta = head.norm_bias.detach().clone()
    info = make_dense_variant(model, tok, passages, where="projection")
    assert abs(info.median_after) < 1e-3
    assert abs(float(np.median(_all_logits(model, tok, passages)))) < 0.05
    assert info.active_after > 0.6 * model.config.vocab_size
    assert torch.equal(head.bias, bias) and torch.equal(head.decoder_weight, decoder)
    moved = head.norm_bias.detach() - beta  # (E,) = delta * u, u the unit mean decoder row
    u = decoder.mean(dim=0) / decoder.mean(dim=0).norm()
    torch.testing.assert_close(moved, info.shift * u, rtol=1e-4, atol=1e-5)
    assert info.changed == ("cls.predictions.transform.LayerNorm.bias",)


def test_projection_density_is_divided_by_rescale(bert_tiny, passages):
    """The point of 'projection': every strategy's k divides the simulated density too."""
    from headscope.rescale import rescale_model

    model, tok = bert_tiny.model, bert_tiny.tokenizer
    texts = passages[:4]
    make_dense_variant(model, tok, texts, where="projection")
    logits = _all_logits(model, tok, texts)
    rescale_model(model, RescaleSpec(16, "fold", scale_bias=True))
    after = measure_activity(model, tok, texts)
    assert after.median_logit == pytest.approx(float(np.median(logits)) / 16, abs=0.01)


def test_scale_only_multiplies_projection(tiny_tokenizer):
    model = build_tiny("bert")
    texts = ["the model head", "sparse query terms and dense passage weights"]
    enc = tiny_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    bias = model.cls.predictions.bias.detach().clone()
    info = make_dense_variant(model, tiny_tokenizer, texts, where="scale-only", scale=16)
    assert info.scale == 16 and info.shift == 0
    with torch.no_grad():
        scaled = model(**enc).logits
    want = expected_logits(logits, bias, RescaleSpec(1 / 16))  # (x - b) * 16 + b
    torch.testing.assert_close(scaled, want, rtol=1e-5, atol=1e-4)


def test_bias_variant_on_tiny_modernbert(tiny_tokenizer):
    model = build_tiny("modernbert")
    texts = ["the model head is a layer", "a sparse query ."]
    info = make_dense_variant(model, tiny_tokenizer, texts, where="bias")
    assert abs(info.median_after) < 1e-4
    assert info.changed == ("decoder.bias",)


def test_projection_needs_layernorm_bias(tiny_tokenizer):
    with pytest.raises(InputError) as err:
        make_dense_variant(build_tiny("modernbert"), tiny_tokenizer, ["a b"], where="projection")
    assert str(err.value) == (
        "where='projection' shifts the head LayerNorm's bias, but the modernbert head has none; "
        "use where='bias'."
    )


def test_refuses_second_simulation(tiny_tokenizer):
    model = build_tiny("bert")
    make_dense_variant(model, tiny_tokenizer, ["the head"], where="bias")
    with pytest.raises(InputError) as err:
        make_dense_variant(model, tiny_tokenizer, ["the head"], where="bias")
    assert str(err.value) == (
        "This model is already a headscope simulation (bias); start from the real checkpoint."
    )


def test_bad_options(tiny_tokenizer):
    with pytest.raises(InputError) as err:
        DenseVariant(where="everywhere")
    assert str(err.value) == (
        "Unknown dense variant 'everywhere'; choose one of bias, projection, scale-only."
    )
    with pytest.raises(InputError) as err:
        make_dense_variant(build_tiny("bert"), tiny_tokenizer, [], where="bias")
    assert str(err.value) == (
        "texts must be a non-empty sequence of strings; pass probe passages."
    )
    assert not is_simulation(build_tiny("bert"))
