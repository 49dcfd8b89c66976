"""Texts -> a masked LM's vocabulary logits -> SPLADE term weights: the one way headscope encodes.

    tokenize(model, tokenizer, texts, max_length)   padded, truncated tensors
    model_inputs(model, batch, device)              the tokenizer outputs that reach the model
    forward(model, batch, device)                   the model's output; .logits is (B, T, V)
    splade_encode(model, batch, device)             term weights (B, V): splade_pool of the logits

One rule decides what reaches the model (`MODEL_INPUTS`): input_ids, attention_mask, and
token_type_ids, each only when the tokenizer returned it and the model's forward accepts it. A
BERT tokenizer's token_type_ids (all 0 for one text, which is also what BERT assumes without
them) reach a BERT; they never reach a forward without that argument, such as ModernBERT's.

The probe, the short trainer, the evaluator, the verifier of a written checkpoint and the
simulations all go through here. The probe and the simulations reduce the (B, T, V) logits
themselves (per-token counts and samples), so they call `forward`; the trainer and the evaluator
want the pooled weights and call `splade_encode`. `HeadscopeCallback` is the exception by
design: it measures a sentence-transformers SparseEncoder through its own `encode_query` /
`encode_document`, so that the model's prompts, router and pooling apply as they do in training.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from headscope.checkpoint import token_limit
from headscope.splade.pooling import splade_pool

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    """`texts` padded to the longest and truncated to `max_length` tokens, capped at what the
    model's position table can embed (`checkpoint.token_limit`; model None: `max_length` is
    already capped); PyTorch tensors."""
    return tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=token_limit(model, max_length),
        return_tensors="pt",
    )


def model_inputs(
    model: Any, batch: Mapping[str, torch.Tensor], device: Any = None
) -> dict[str, torch.Tensor]:
    """The tokenizer outputs that reach `model` (`MODEL_INPUTS` its forward accepts), moved to
    `device` (left where they are when None)."""
    accepted = inspect.signature(model.forward).parameters
    return {
        key: batch[key] if device is None else batch[key].to(device)
        for key in MODEL_INPUTS
        if key in batch and key in accepted
    }


def forward(model: Any, batch: Mapping[str, torch.Tensor], device: Any = None,
            **options: Any) -> Any:
    """The model's output on a tokenised batch; `.logits` is (B, T, V) in the model's dtype.
    `options` go to the forward as they are (e.g. output_hidden_states=True)."""
    return model(**model_inputs(model, batch, device), **options)


def splade_encode(model: Any, batch: Mapping[str, torch.Tensor], device: Any = None
                  ) -> torch.Tensor:
    """SPLADE term weights (B, V) of a tokenised batch: max over the tokens the attention mask
    keeps of log1p(relu(logits)), in the model's dtype, with gradients when enabled."""
    logits = forward(model, batch, device).logits  # (B, T, V)
    mask = batch["attention_mask"] if device is None else batch["attention_mask"].to(device)
    return splade_pool(logits, mask)  # (B, V)
