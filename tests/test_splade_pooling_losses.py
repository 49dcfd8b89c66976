"""SPLADE pooling, FLOPS, contrastive loss and the regulariser warm-up: hand computations and
parity with sentence-transformers' implementations on identical tensors."""

from __future__ import annotations

import math

import pytest
import torch

from headscope.errors import InputError
from headscope.splade.losses import (
    flops,
    in_batch_scores,
    info_nce,
    positive_negative_means,
    regularizer_weight,
)
from headscope.splade.pooling import active_terms, splade_pool

st_sparse = pytest.importorskip("sentence_transformers.sparse_encoder")


def _st_pool(logits, mask, mode):
    from sentence_transformers.sparse_encoder.models import SpladePooling

    module = SpladePooling(pooling_strategy=mode)
    module.train()  # the autograd-safe (non in-place) path
    return module({"token_embeddings": logits, "attention_mask": mask})["sentence_embedding"]


def _random_logits(seed=0, b=3, t=5, v=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * 2  # about half positive
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    return logits, mask


# ---------------------------------------------------------------- pooling by hand


def test_max_pool_by_hand():
    logits = torch.tensor([[[1.0, -2.0, 0.5], [3.0, -1.0, -0.5], [9.0, 9.0, 9.0]]])  # (1, 3, 3)
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding and must not count
    w = splade_pool(logits, mask)
    expected = torch.tensor([[math.log(4.0), 0.0, math.log(1.5)]])
    torch.testing.assert_close(w, expected)
    assert active_terms(w).tolist() == [2.0]


def test_sum_pool_by_hand():
    logits = torch.tensor([[[1.0, -2.0], [3.0, 0.5], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    w = splade_pool(logits, mask, mode="sum")
    expected = torch.tensor([[math.log(2.0) + math.log(4.0), math.log(1.5)]])
    torch.testing.assert_close(w, expected)


def test_zero_ids_remove_terms():
    logits, mask = _random_logits()
    w = splade_pool(logits, mask, zero_ids=[0, 3, 3])
    ref = splade_pool(logits, mask)
    assert (w[:, [0, 3]] == 0).all()
    keep = [j for j in range(logits.shape[-1]) if j not in (0, 3)]
    torch.testing.assert_close(w[:, keep], ref[:, keep])


def test_pool_rejects_bad_input():
    logits, mask = _random_logits()
    with pytest.raises(InputError, match="Unknown SPLADE pooling mode 'mean'"):
        splade_pool(logits, mask, mode="mean")
    with pytest.raises(InputError, match=r"got \(3, 5, 11\) and \(3, 4\)"):
        splade_pool(logits, mask[:, :4])


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("mode", ["max", "sum"])
def test_pool_matches_sentence_transformers(mode):
    logits, mask = _random_logits(seed=1)
    ours_in = logits.clone().requires_grad_(True)
    theirs_in = logits.clone().requires_grad_(True)
    ours = splade_pool(ours_in, mask, mode=mode)
    theirs = _st_pool(theirs_in, mask, mode)
    torch.testing.assert_close(ours, theirs)
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2))
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad)


def test_flops_by_hand_and_parity():
    from sentence_transformers.sparse_encoder.losses import FlopsLoss

    w = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    # means per term: 2, 0, 1 -> 4 + 0 + 1
    assert flops(w).item() == pytest.approx(5.0)
    emb = torch.rand(6, 40, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(flops(emb), FlopsLoss(None).compute_loss_from_embeddings(emb))


def test_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    d = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    scores = in_batch_scores(q, d)  # [[1, 0], [2, 2]]
    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.0], [2.0, 2.0]]))
    expected = (-(1 - math.log(math.e + 1)) - (2 - math.log(2 * math.e**2))) / 2
    assert info_nce(scores).item() == pytest.approx(expected, rel=1e-6)
    assert positive_negative_means(scores) == pytest.approx((1.5, 1.0))


@pytest.mark.parametrize("n_neg", [0, 1, 2])
def test_contrastive_matches_sentence_transformers(n_neg):
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss

    g = torch.Generator().manual_seed(4)
    b, v = 4, 30
    q = torch.rand(b, v, generator=g) * 2
    pos = torch.rand(b, v, generator=g) * 2
    negs = [torch.rand(b, v, generator=g) * 2 for _ in range(n_neg)]
    stacked = torch.stack(negs, dim=1) if negs else None  # (B, N, V)
    ours = info_nce(in_batch_scores(q, pos, stacked))
    reference = SparseMultipleNegativesRankingLoss(None)  # scale 1, dot product: the defaults
    assert reference.scale == 1.0
    theirs = reference.compute_loss_from_embeddings([q, pos, *negs], None)
    torch.testing.assert_close(ours, theirs)


def test_scores_reject_mismatched_shapes():
    with pytest.raises(InputError, match=r"Queries \(2, 3\) and positives \(2, 4\)"):
        in_batch_scores(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(InputError, match=r"shape \(B, N, V\) with B=2; got \(3, 1, 3\)"):
        in_batch_scores(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 1, 3))


# ---------------------------------------------------------------- regulariser warm-up


def test_regularizer_weight_by_hand():
    # 9 steps: warm-up int(9 / 3) = 3 steps; weights 0, 1/9, 4/9 of the maximum, then the maximum
    assert [regularizer_weight(s, 9, 9.0) for s in range(5)] == pytest.approx(
        [0.0, 1.0, 4.0, 9.0, 9.0]
    )


@pytest.mark.parametrize("total", [1, 2, 7, 10, 150])
def test_regularizer_weight_matches_sentence_transformers_callback(total):
    from sentence_transformers.sparse_encoder.callbacks.splade_callbacks import (
        SpladeRegularizerWeightSchedulerCallback,
    )
    from sentence_transformers.sparse_encoder.losses import (
        SparseMultipleNegativesRankingLoss,
        SpladeLoss,
    )
    from transformers.trainer_callback import TrainerState

    loss = SpladeLoss(
        None,
        SparseMultipleNegativesRankingLoss(None),
        document_regularizer_weight=1e-3,
        query_regularizer_weight=5e-5,
    )
    callback = SpladeRegularizerWeightSchedulerCallback(loss)
    state = TrainerState(max_steps=total)
    callback.on_train_begin(None, state, None)
    for step in range(total):
        state.global_step = step  # the Trainer calls on_step_begin before the step counts
        callback.on_step_begin(None, state, None)
        assert regularizer_weight(step, total, 1e-3) == pytest.approx(
            loss.document_regularizer_weight, abs=0
        )
        assert regularizer_weight(step, total, 5e-5) == pytest.approx(
            loss.query_regularizer_weight, abs=0
        )
