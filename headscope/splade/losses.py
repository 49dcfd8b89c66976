"""SPLADE training objective, one function per part.

- `in_batch_scores` + `info_nce`: contrastive loss on raw dot products (scale 1), every query
  against every positive in the batch plus every hard negative (sentence-transformers'
  `SparseMultipleNegativesRankingLoss` with its defaults).
- `flops`: the FLOPS regulariser sum_j (mean_over_batch w_j)^2 (`FlopsLoss`).
- `regularizer_weight`: the quadratic warm-up of a regulariser's weight
  (`SpladeRegularizerWeightSchedulerCallback` with its defaults).

Defaults of the sentence-transformers MS MARCO recipe (train_splade_msmarco_mnrl.py) are
collected in the constants below; `TrainConfig` reads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from headscope.errors import InputError

# sentence-transformers examples/sparse_encoder/training/ms_marco/train_splade_msmarco_mnrl.py
DEFAULT_LAMBDA_Q = 5e-5
DEFAULT_LAMBDA_D = 1e-3
DEFAULT_LR = 2e-5
DEFAULT_WARMUP_RATIO = 0.1
# SpladeRegularizerWeightSchedulerCallback: weights reach their maximum after a third of training.
REGULARIZER_WARMUP_RATIO = 1 / 3


def in_batch_scores(
    queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None
) -> torch.Tensor:
    """Dot-product scores of every query against every candidate passage.

    queries (B, V), positives (B, V), negatives (B, N, V) or None -> scores (B, B * (1 + N)).
    Columns are [positives of queries 0..B-1, first negatives of queries 0..B-1, ...], so the
    positive of query i sits in column i, as in sentence-transformers.
    """
    if queries.shape != positives.shape:
        raise InputError(
            f"Queries {tuple(queries.shape)} and positives {tuple(positives.shape)} must have the "
            "same shape (B, V)."
        )
    candidates = [positives]
    if negatives is not None:
        if negatives.dim() != 3 or negatives.shape[0] != queries.shape[0]:
            raise InputError(
                f"Hard negatives must have shape (B, N, V) with B={queries.shape[0]}; got "
                f"{tuple(negatives.shape)}."
            )
        candidates.extend(negatives.unbind(dim=1))  # N tensors of (B, V)
    docs = torch.cat(candidates, dim=0)  # (B * (1 + N), V)
    return queries @ docs.T  # (B, B * (1 + N))


def info_nce(scores: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each row of `scores` (B, C) with its positive in column i."""
    labels = torch.arange(scores.shape[0], device=scores.device)  # (B,)
    return F.cross_entropy(scores, labels)


def positive_negative_means(scores: torch.Tensor) -> tuple[float, float]:
    """Mean positive score (column i of row i) and mean of every other entry of (B, C)."""
    b, c = scores.shape
    with torch.no_grad():
        positive = scores.diagonal()  # (B,)
        negatives_sum = scores.sum() - positive.sum()
        n_negatives = b * c - b
        mean_neg = (negatives_sum / n_negatives).item() if n_negatives else float("nan")
        return positive.mean().item(), mean_neg


def flops(weights: torch.Tensor) -> torch.Tensor:
    """FLOPS regulariser of term weights (B, V): sum_j (mean_b w_bj)^2, a scalar."""
    return weights.mean(dim=0).pow(2).sum()


def regularizer_weight(
    step: int, total_steps: int, max_weight: float, warmup_ratio: float = REGULARIZER_WARMUP_RATIO
) -> float:
    """Weight of a regulariser before optimisation step `step` (0-based) of `total_steps`.

    max_weight * (step / warmup)^2 while step < warmup, then max_weight, where
    warmup = max(1, int(total_steps * warmup_ratio)): the first step trains without regulariser.
    """
    warmup = max(1, int(total_steps * warmup_ratio))
    if step >= warmup:
        return max_weight
    return max_weight * (step / warmup) ** 2
