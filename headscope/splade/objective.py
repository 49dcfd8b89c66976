"""The training objective both engines train, written once.

SPLADE's objective (docs/science.md): an in-batch contrastive ranking loss (InfoNCE at scale 1)
of each query against every positive of the batch and every hard negative, plus the FLOPS
regularisers of the queries and the passages weighted by λq and λd, each weight warmed up
quadratically over the first part of the steps. The open loop (`splade.train`) computes it with
`Objective.loss`; the sentence-transformers engine (`st_engine`) builds the library's form of the
same objective with `Objective.st_loss`, and both lay a batch out with `passage_texts` /
`dataset_columns`, which hold the one hard-negative rule: every pair of a batch carries the same
number of hard negatives, and the passages are the positives, then the first negatives of every
pair, then the second, and so on (negative-major). A new loss is added here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headscope.errors import InputError
from headscope.splade.data import Pair
from headscope.splade.losses import (
    flops,
    in_batch_scores,
    info_nce,
    regularizer_weight,
)

if TYPE_CHECKING:
    import torch


def hard_negatives(pairs: Sequence[Pair]) -> int:
    """How many hard negatives each pair carries: the same number for every pair (InputError
    otherwise, naming the counts found)."""
    counts = {len(p.negatives) for p in pairs}
    if len(counts) != 1:
        raise InputError(
            f"Pairs carry different numbers of hard negatives ({sorted(counts)}); give every "
            "pair the same number."
        )
    return counts.pop()


def passage_texts(pairs: Sequence[Pair]) -> list[str]:
    """The passages of a batch in the objective's order: the positives, then each pair's first
    negative, then each pair's second, ... (B * (1 + N) texts)."""
    n = hard_negatives(pairs)
    return [p.positive for p in pairs] + [p.negatives[i] for i in range(n) for p in pairs]


def dataset_columns(pairs: Sequence[Pair]) -> dict[str, list[str]]:
    """The pairs as sentence-transformers' columns: query, positive, negative_1..N."""
    n = hard_negatives(pairs)
    columns = {"query": [p.query for p in pairs], "positive": [p.positive for p in pairs]}
    for j in range(n):
        columns[f"negative_{j + 1}"] = [p.negatives[j] for p in pairs]
    return columns


@dataclass(frozen=True)
class Terms:
    """One step's objective and its parts (tensors; `loss` carries the graph)."""

    loss: torch.Tensor
    ranking: torch.Tensor
    flops_q: torch.Tensor
    flops_d: torch.Tensor
    scores: torch.Tensor  # (B, B * (1 + N)) query x passage scores
    weight_q: float
    weight_d: float


@dataclass(frozen=True)
class Objective:
    """The objective of a run of `steps` steps (from a `splade.train.TrainConfig`)."""

    lambda_q: float
    lambda_d: float
    steps: int
    warmup_ratio: float  # of the regularisers' weights (quadratic)

    @staticmethod
    def of(config: Any) -> Objective:
        return Objective(config.lambda_q, config.lambda_d, config.steps,
                         config.regularizer_warmup_ratio)

    def weights(self, step: int) -> tuple[float, float]:
        """(λq, λd) at `step`, warmed up."""
        return (regularizer_weight(step, self.steps, self.lambda_q, self.warmup_ratio),
                regularizer_weight(step, self.steps, self.lambda_d, self.warmup_ratio))

    def loss(self, q: torch.Tensor, d: torch.Tensor, step: int) -> Terms:
        """The objective at `step` of the queries' representations q (B, V) and the passages'
        d (B * (1 + N), V), laid out as `passage_texts` orders them."""
        weight_q, weight_d = self.weights(step)
        b, vocab_size = q.shape
        # passages are [positives (B), first negatives (B), ...]: (N * B, V) -> (B, N, V)
        negatives = d[b:].view(-1, b, vocab_size).transpose(0, 1) if d.shape[0] > b else None
        scores = in_batch_scores(q, d[:b], negatives)  # (B, B * (1 + N))
        ranking = info_nce(scores)
        flops_q, flops_d = flops(q), flops(d)
        loss = ranking + weight_q * flops_q + weight_d * flops_d
        return Terms(loss, ranking, flops_q, flops_d, scores, weight_q, weight_d)

    def st_loss(self, encoder: Any, gather_across_devices: bool) -> tuple[Any, list[Any]]:
        """The same objective in sentence-transformers: (the SpladeLoss, the callbacks that
        warm its regulariser weights up). The in-batch ranking loss is
        SparseMultipleNegativesRankingLoss at scale 1, over the columns `dataset_columns`
        gives; in-batch negatives are gathered across devices under torchrun."""
        from sentence_transformers.sparse_encoder.callbacks.splade_callbacks import (
            SpladeRegularizerWeightSchedulerCallback,
        )
        from sentence_transformers.sparse_encoder.losses import (
            SparseMultipleNegativesRankingLoss,
            SpladeLoss,
        )

        ranking = SparseMultipleNegativesRankingLoss(
            encoder, scale=1.0, gather_across_devices=gather_across_devices)
        loss = SpladeLoss(encoder, ranking, query_regularizer_weight=self.lambda_q,
                          document_regularizer_weight=self.lambda_d)
        return loss, [SpladeRegularizerWeightSchedulerCallback(loss,
                                                               warmup_ratio=self.warmup_ratio)]
