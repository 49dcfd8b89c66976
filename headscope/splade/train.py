"""Short, instrumented SPLADE training, written out in the open and observed through a callback.

One step: tokenize a batch, zero_grad, forward queries and passages, pool, loss (in-batch InfoNCE
+ warmed-up FLOPS on queries and passages), backward, clip, optimizer step, scheduler step. Each
step produces a frozen `StepRecord` (headscope.splade.telemetry, which also writes and reads them
as JSONL); `train` hands it to `callback` (which may return True to stop) and keeps all of them in
`TrainResult`. `train_arms` trains several models on exactly the same
batches with the same seed and evaluates each on the held-out split.

Optimiser and schedule follow sentence-transformers' SparseEncoderTrainer (Hugging Face Trainer
defaults): AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), linear warm-up over
ceil(warmup_ratio * steps) steps then linear decay to 0, gradient clipping at norm 1.0. A step
whose loss or gradient is not finite is recorded and its update skipped, so one bad batch cannot
poison the weights.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from headscope.checkpoint import token_limit
from headscope.errors import InputError
from headscope.splade.data import EvalSplit, Pair
from headscope.splade.encode import splade_encode, tokenize
from headscope.splade.evaluate import EvalConfig, RetrievalMetrics, evaluate
from headscope.splade.losses import (
    DEFAULT_LAMBDA_D,
    DEFAULT_LAMBDA_Q,
    DEFAULT_LR,
    DEFAULT_WARMUP_RATIO,
    REGULARIZER_WARMUP_RATIO,
    positive_negative_means,
)
from headscope.splade.objective import Objective, passage_texts
from headscope.splade.pooling import active_terms
from headscope.splade.telemetry import StepRecord


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 150
    batch_size: int = 16
    lr: float = DEFAULT_LR
    warmup_ratio: float = DEFAULT_WARMUP_RATIO  # of the learning rate
    lambda_q: float = DEFAULT_LAMBDA_Q
    lambda_d: float = DEFAULT_LAMBDA_D
    regularizer_warmup_ratio: float = REGULARIZER_WARMUP_RATIO  # quadratic ramp of lambda_q/d
    max_query_length: int = 32
    max_passage_length: int = 128
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_query_length", "max_passage_length"):
            if getattr(self, name) < 1:
                raise InputError(
                    f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}."
                )
        if self.batch_size < 2:
            raise InputError(
                "TrainConfig.batch_size must be at least 2: the contrastive loss "
                "needs in-batch negatives."
            )
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise InputError(f"TrainConfig.lr must be a finite number > 0, got {self.lr}.")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(
                f"TrainConfig.warmup_ratio must lie in [0, 1), got {self.warmup_ratio}."
            )


@dataclass(frozen=True)
class TrainResult:
    config: TrainConfig
    records: tuple[StepRecord, ...]
    vocab_size: int
    n_pairs: int
    wall_s: float
    stopped_early: bool = False


Callback = Callable[[StepRecord], "bool | None"]


# ---------------------------------------------------------------- parts of a step


def batch_indices(n_pairs: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Pair indices of every step: shuffled epochs (numpy, seeded), incomplete tails dropped."""
    if n_pairs < batch_size:
        raise InputError(
            f"{n_pairs} training pairs are fewer than one batch of {batch_size}; "
            "lower batch_size or provide more pairs."
        )
    rng = np.random.default_rng(seed)
    per_epoch = n_pairs // batch_size
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = rng.permutation(n_pairs)
        for b in range(per_epoch):
            batches.append(order[b * batch_size : (b + 1) * batch_size].tolist())
    return batches[:steps]


def tokenize_batch(tokenizer, pairs: Sequence[Pair], config: TrainConfig) -> dict:
    """Tokenized queries and passages, in the objective's order (`objective.passage_texts`:
    the positives, then each pair's negatives)."""
    # The lengths are already capped at the model's position table (train does that once).
    queries = tokenize(None, tokenizer, [p.query for p in pairs], config.max_query_length)
    passages = tokenize(None, tokenizer, passage_texts(pairs), config.max_passage_length)
    return {"queries": queries, "passages": passages}


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Linear warm-up over ceil(warmup_ratio * total) steps, then linear decay to 0 (HF)."""
    warmup = math.ceil(total * warmup_ratio)
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- the loop


def train(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    config: TrainConfig = TrainConfig(),
    callback: Callback | None = None,
) -> TrainResult:
    """Train `model` (a *ForMaskedLM, in place) on `pairs` for `config.steps` steps."""
    batches = batch_indices(len(pairs), config.steps, config.batch_size, config.seed)
    _seed_everything(config.seed)  # dropout masks
    model.to(config.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.steps, config.warmup_ratio)
    )
    records: list[StepRecord] = []
    vocab_size = 0
    stopped = False
    # Tokenise no longer than the model's position table allows.
    lengths = replace(config, max_query_length=token_limit(model, config.max_query_length),
                      max_passage_length=token_limit(model, config.max_passage_length))
    objective = Objective.of(config)
    start = time.perf_counter()
    for step, indices in enumerate(batches):
        batch = tokenize_batch(tokenizer, [pairs[i] for i in indices], lengths)
        lr = optimizer.param_groups[0]["lr"]

        optimizer.zero_grad(set_to_none=True)
        q = splade_encode(model, batch["queries"], config.device)  # (B, V)
        d = splade_encode(model, batch["passages"], config.device)  # (B * (1 + N), V)
        vocab_size = q.shape[1]
        terms = objective.loss(q, d, step)
        loss = terms.loss
        loss_finite = bool(torch.isfinite(loss))
        if loss_finite:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
        else:
            grad_norm = float("nan")
        grad_finite = math.isfinite(grad_norm)
        if loss_finite and grad_finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A skipped update still advances the schedule; torch warns about that order.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()

        score_pos, score_neg = positive_negative_means(terms.scores)
        record = StepRecord(
            step=step,
            loss=loss.item(),
            ranking_loss=terms.ranking.item(),
            flops_q=terms.flops_q.item(),
            flops_d=terms.flops_d.item(),
            weight_q=terms.weight_q,
            weight_d=terms.weight_d,
            active_query=active_terms(q).mean().item(),
            active_passage=active_terms(d).mean().item(),
            score_pos=score_pos,
            score_neg=score_neg,
            grad_norm=grad_norm,
            lr=lr,
            loss_finite=loss_finite,
            grad_finite=grad_finite,
        )
        records.append(record)
        if callback is not None and callback(record):
            stopped = True
            break
    model.eval()
    return TrainResult(
        config, tuple(records), vocab_size, len(pairs), time.perf_counter() - start, stopped
    )


@dataclass(frozen=True)
class ArmResult:
    name: str
    train: TrainResult
    metrics: RetrievalMetrics | None  # None when no eval split was given
    metrics_before: RetrievalMetrics | None = field(default=None)


def train_arms(
    arms: Mapping[str, tuple[object, object]],
    pairs: Sequence[Pair],
    eval_split: EvalSplit | None,
    config: TrainConfig = TrainConfig(),
    *,
    eval_config: EvalConfig | None = None,
    eval_before: bool = False,
    callback: Callable[[str, StepRecord], bool | None] | None = None,
    train_fn: Callable[..., TrainResult] | None = None,
) -> dict[str, ArmResult]:
    """Train every arm {name: (model, tokenizer)} on the same batches with the same seed (each
    arm reseeds, so dropout masks match too), then evaluate it on `eval_split`. `train_fn`
    (default `train`) trains one arm with `train`'s signature (another engine)."""
    if not arms:
        raise InputError("train_arms needs at least one arm {name: (model, tokenizer)}.")
    eval_config = eval_config or EvalConfig(
        max_query_length=config.max_query_length,
        max_passage_length=config.max_passage_length,
        device=config.device,
    )
    results = {}
    for name, (model, tokenizer) in arms.items():
        before = (
            evaluate(model, tokenizer, eval_split, eval_config)
            if eval_before and eval_split is not None
            else None
        )
        arm_callback = (lambda rec, _n=name: callback(_n, rec)) if callback else None
        result = (train_fn or train)(model, tokenizer, pairs, config, arm_callback)
        metrics = evaluate(model, tokenizer, eval_split, eval_config) if eval_split else None
        results[name] = ArmResult(name, result, metrics, before)
    return results
