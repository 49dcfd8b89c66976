"""The one encode path: which tokenizer outputs reach the model, the position cap, and the
pooled weights against a naive text-by-text loop."""

from __future__ import annotations

import pytest
import torch

from headscope import checkpoint
from headscope.splade.encode import forward, model_inputs, splade_encode, tokenize
from headscope.splade.pooling import max_logits

TEXTS = ["the model head is a dense layer", "sparse query terms", "a"]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    made = {}

    def get(family):
        if family not in made:
            made[family] = checkpoint.load(checkpoint.resolve(str(tiny_checkpoint(family))))
        return made[family]

    return get


def test_token_type_ids_reach_only_a_forward_that_takes_them(loaded):
    bert, modern = loaded("bert"), loaded("modernbert")
    batch = tokenize(bert.model, bert.tokenizer, TEXTS, 32)
    assert set(batch) >= {"input_ids", "attention_mask", "token_type_ids"}
    assert set(model_inputs(bert.model, batch)) == {"input_ids", "attention_mask",
                                                   "token_type_ids"}
    # A BERT tokenizer (the tiny ModernBERT shares its vocabulary) returns token_type_ids:
    # ModernBERT's forward has no such argument, so they stay behind.
    batch = tokenize(modern.model, bert.tokenizer, TEXTS, 32)
    assert "token_type_ids" in batch
    assert set(model_inputs(modern.model, batch)) == {"input_ids", "attention_mask"}
    assert forward(modern.model, batch).logits.shape[:2] == batch["input_ids"].shape


def test_tokenize_caps_at_the_position_table(loaded):
    bert = loaded("bert")  # 64 positions
    long_text = " ".join(["token"] * 300)
    assert tokenize(bert.model, bert.tokenizer, [long_text], 1000)["input_ids"].shape == (1, 64)
    assert tokenize(bert.model, bert.tokenizer, [long_text], 10)["input_ids"].shape == (1, 10)
    # model None: the length is taken as already capped
    assert tokenize(None, bert.tokenizer, [long_text], 100)["input_ids"].shape == (1, 100)


@pytest.mark.parametrize("family", ["bert", "roberta", "modernbert"])
def test_splade_encode_matches_a_text_by_text_loop(loaded, family):
    got = loaded(family)
    with torch.no_grad():
        weights = splade_encode(got.model, tokenize(got.model, got.tokenizer, TEXTS, 32))
        for i, text in enumerate(TEXTS):
            ids = got.tokenizer(text, return_tensors="pt")["input_ids"]  # (1, T), no padding
            logits = got.model(input_ids=ids).logits[0]  # (T, V)
            want = torch.stack([torch.log1p(torch.relu(logits[t])) for t in range(len(logits))]
                               ).max(dim=0).values  # (V,)
            torch.testing.assert_close(weights[i], want, atol=1e-5, rtol=1e-5)


def test_max_logits_by_hand():
    logits = torch.tensor([[[1.0, -2.0], [3.0, -1.0], [9.0, 9.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    assert max_logits(logits, mask).tolist() == [[3.0, -1.0]]
    assert max_logits(logits, torch.zeros(1, 3)).tolist() == [[float("-inf")] * 2]
