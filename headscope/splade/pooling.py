"""SPLADE pooling: vocabulary logits of every token -> one non-negative weight per term.

    w_j = max_t log(1 + relu(logit[t, j]))      over the tokens t the attention mask keeps

log1p(relu(.)) is monotone, so the max over tokens can be taken on the raw logits first and the
activation applied to the pooled (B, V) tensor only: the same values and gradients as
sentence-transformers' `SpladePooling` (which activates the full (B, T, V) tensor), at a fraction
of the memory traffic.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from headscope.errors import InputError

POOLING_MODES = ("max", "sum")


def splade_pool(
    logits: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mode: str = "max",
    zero_ids: Iterable[int] | None = None,
) -> torch.Tensor:
    """Pool MLM logits (B, T, V) under an attention mask (B, T) into term weights (B, V).

    mode: "max" (SPLADE v2 and later) or "sum" (the original SPLADE).
    zero_ids: vocabulary ids whose output weight is forced to 0 (e.g. the tokenizer's special
    tokens, so that [CLS] or [SEP] never become index terms).
    """
    if mode not in POOLING_MODES:
        raise InputError(f"Unknown SPLADE pooling mode {mode!r}; use one of {POOLING_MODES}.")
    if logits.dim() != 3 or attention_mask.shape != logits.shape[:2]:
        raise InputError(
            f"SPLADE pooling needs logits (B, T, V) and an attention mask (B, T); got "
            f"{tuple(logits.shape)} and {tuple(attention_mask.shape)}."
        )
    if mode == "max":
        # relu maps an all-masked row (-inf) to 0.
        weights = torch.log1p(torch.relu(max_logits(logits, attention_mask)))  # (B, V)
    else:
        keep = attention_mask.bool().unsqueeze(-1)  # (B, T, 1)
        weights = (torch.log1p(torch.relu(logits)) * keep).sum(dim=1)  # (B, V)
    if zero_ids is not None:
        ids = sorted(set(int(i) for i in zero_ids))
        if ids:
            column_keep = torch.ones(weights.shape[-1], dtype=weights.dtype, device=weights.device)
            column_keep[ids] = 0
            weights = weights * column_keep  # (B, V)
    return weights


def max_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw logits (B, T, V) max-pooled over the tokens the mask (B, T) keeps: (B, V).

    A masked token becomes -inf so it never wins the max (an all-masked row stays -inf). Because
    log1p(relu(.)) is monotone, splade weights are log1p(relu()) of this; the simulations work on
    the raw pooled logits directly.
    """
    keep = attention_mask.bool().unsqueeze(-1)  # (B, T, 1)
    return logits.masked_fill(~keep, float("-inf")).amax(dim=1)  # (B, V)


def active_terms(weights: torch.Tensor) -> torch.Tensor:
    """Number of non-zero term weights per row: (B, V) -> (B,) float."""
    return (weights > 0).sum(dim=-1).to(torch.float32)
