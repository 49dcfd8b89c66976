"""Serving checks against the engines' documented limits (HS303, HS304) and the half-precision
range check (HS305, HS306): hand cases, and the precision bound on the real BERT-tiny."""

from __future__ import annotations

import math

import pytest
import torch

from headscope.findings import (
    _spacing,
    engine_findings,
    precision_findings,
)


def test_pgvector_limits_on_hand_counts():
    assert engine_findings(999.0, 4.0) == ()
    assert engine_findings(float("nan"), 4.0) == ()
    (hnsw,) = engine_findings(1500.0, 4.0)
    assert (hnsw.code, hnsw.severity, hnsw.value, hnsw.threshold) == ("HS303", "warning",
                                                                      1500.0, 1000)
    assert hnsw.message == (
        "At k = 4 before training, passages have 1,500 non-zero terms on average: a pgvector "
        "HNSW index accepts sparsevecs with at most 1,000 non-zero elements, so most passages "
        "could not be indexed (exact search still works); use a larger k, or keep only each "
        "passage's 1,000 largest weights.")
    (rejected,) = engine_findings(20000.0, 1.0, stage="after training")
    assert rejected.code == "HS304" and rejected.severity == "error"
    assert rejected.message.startswith(
        "At k = 1 after training, passages have 20,000 non-zero terms on average: pgvector's "
        "sparsevec type rejects vectors with more than 16,000 non-zero elements")


@pytest.mark.parametrize("x", [0.3, 1.0, 3.0, 11.5, 100.0, 400.0, 65000.0])
def test_spacing_is_the_real_bfloat16_and_float16_spacing(x):
    for dtype, bits in ((torch.bfloat16, 8), (torch.float16, 11)):
        value = torch.tensor(x, dtype=torch.float32).to(dtype)
        step = _spacing(float(value), bits)
        assert float((value.float() + step).to(dtype)) == float(value) + step
        assert float((value.float() + step / 4).to(dtype)) == float(value)


def test_float16_overflow_on_hand_logits():
    big = math.log1p(70000.0)  # the largest weight of a logit of 70000
    (overflow, coarse) = precision_findings(big, 0.01, -5.0, 1.0)
    assert overflow.code == "HS305" and overflow.value == pytest.approx(70000.0)
    assert overflow.message == (
        "At k = 1 logits reach 70,000, beyond float16's largest value 65504: a float16 forward "
        "pass gives inf, then NaN losses and weights; encode and train in bfloat16 or float32, "
        "or use a larger k.")
    assert coarse.code == "HS306" and coarse.message.endswith("encode in float32.")
    # a very negative logit overflows too, whatever the weights
    assert [f.code for f in precision_findings(1.0, 1.0, -1e5, 2.0)] == ["HS305"]
    assert precision_findings(float("nan"), 1.0, -1.0, 1.0) == ()


def test_bfloat16_blur_on_hand_logits():
    top = 3.0  # weight log(4) = 1.386; bf16 spaces logits near 3 by 1/64
    (coarse,) = precision_findings(math.log1p(top), 0.1, -2.0, 8.0)
    assert coarse.code == "HS306"
    assert coarse.value == pytest.approx((1 / 64) / 3)  # the largest step in [2, 4)
    assert coarse.threshold == pytest.approx(0.001)
    assert coarse.message == (
        "At k = 8 bfloat16 (8 significant bits) spaces logits near the largest (3) 0.01562 "
        "apart, so term weights there move in steps of 0.005208, more than 1% of the mean "
        "weight 0.1: weights closer than that collapse; encode in float16 or float32.")
    assert precision_findings(math.log1p(top), 1.0, -2.0, 8.0) == ()  # 1% of 1.0 > 0.0052


def test_reported_step_bounds_real_bfloat16_rounding_on_bert_tiny(bert_tiny_dir):
    """Weights of the real BERT-tiny from bfloat16-rounded logits differ from float32 ones near
    the top by at most the step HS306 reports."""
    from headscope import checkpoint
    from headscope.probe import builtin_probe
    from headscope.splade.pooling import splade_pool

    loaded = checkpoint.load(checkpoint.resolve(str(bert_tiny_dir)))
    texts = [p.passage for p in builtin_probe(8).pairs]
    enc = loaded.tokenizer(texts, padding=True, truncation=True, max_length=64,
                           return_tensors="pt")
    with torch.inference_mode():
        logits = loaded.model(**enc).logits.float()  # (B, T, V)
    w32 = splade_pool(logits, enc["attention_mask"])  # (B, V)
    w16 = splade_pool(logits.to(torch.bfloat16).float(), enc["attention_mask"])
    top = float(torch.expm1(w32.max()))
    low = 2.0 ** math.floor(math.log2(top))  # the top logit's binade [low, 2 low)
    step = _spacing(top, 8) / (1 + low)
    near_top = w32 >= math.log1p(low)
    assert near_top.any()
    assert float((w16 - w32).abs()[near_top].max()) <= step / 2 + 1e-6
    found = precision_findings(float(w32.max()), float(w32[w32 > 0].mean()),
                               float(logits.min()), 1.0)
    assert "HS305" not in [f.code for f in found]  # BERT-tiny's logits fit float16


def test_after_training_counts_name_the_arm():
    (found,) = engine_findings(1200.0, float("nan"), stage="after training (arm fixed)")
    assert found.message.startswith(
        "After training (arm fixed), passages have 1,200 non-zero terms on average: a pgvector "
        "HNSW index accepts")
    (found,) = engine_findings(1200.0, 8.0, stage="after training (arm k=8)")
    assert found.message.startswith("At k = 8 after training (arm k=8), passages have 1,200")
