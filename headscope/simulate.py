"""Labelled simulations of a real checkpoint: the dense-regime variants `confirm --simulate` and
`compare --simulate` build (`make_dense_variant`), and the mark every simulation carries.

The calibration conditions (the ModernBERT-matched regime among them) are research code and live
beside the runner, in scripts/conditions.py (docs/conditions.md).

No ModernBERT or Ettin weights are available offline, but their reported step-0 state can be
reproduced from a real small BERT: what makes an untrained SPLADE collapse is not the size of the
logits alone but that most of them are positive, so relu keeps nearly every vocabulary term
active. Three variants, each applied in place and each marked in the config
(`config.headscope_simulation`) so that it is never mistaken for a real checkpoint:

- ``bias``: add one constant c to the decoder's output bias so that the median token logit over
  the given texts becomes 0 (the variant measured while planning). The density then lives in the
  bias, which a rescale with ``scale_bias=False`` does *not* divide: dividing the projection by k
  leaves the model dense.
- ``projection``: put the density in the projection path instead. The head LayerNorm's bias beta
  feeds the decoder linearly: logits = W (n * gamma + beta) + b, so beta += delta * u adds
  delta * (W u)_j to logit j of every token. u is the unit mean decoder row, the direction that
  maximises the mean shift over the vocabulary for a given |delta| (for unit u, mean_j W_j . u =
  mean(W) . u), so it raises logits broadly; delta is then chosen so that the median token logit
  is 0. Every rescale strategy divides this shift by k along with the rest of the projection.
- ``scale-only``: multiply the projection by `scale` (16 by default) and nothing else. Measured
  while planning: short SPLADE training on BERT-tiny was unharmed, because its logits are mostly
  negative and relu keeps it sparse at any scale.

The median is estimated from a uniform random sample of token x vocabulary logits (exact when
there are fewer than `sample_size` of them); the share of positive logits and the active terms per
text are exact. Logits are streamed batch by batch and never all held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from headscope.checkpoint import token_limit
from headscope.errors import InputError
from headscope.heads import find_head
from headscope.rescale import RescaleSpec, rescale_model, unwrap_mlm

WHERE = ("bias", "projection", "scale-only")
CONFIG_KEY = "headscope_simulation"


@dataclass(frozen=True)
class DenseVariant:
    """Where the simulated density lives, and how it is measured."""

    where: str = "bias"  # one of WHERE
    target_median: float = 0.0  # median token logit after the shift (bias, projection)
    scale: float = 16.0  # projection multiplier (scale-only)
    batch_size: int = 8
    max_length: int = 128
    sample_size: int = 1 << 18  # token x vocab logits sampled for the median
    seed: int = 0

    def __post_init__(self) -> None:
        if self.where not in WHERE:
            raise InputError(
                f"Unknown dense variant {self.where!r}; choose one of {', '.join(WHERE)}."
            )
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise InputError(f"scale must be a finite number > 0, got {self.scale!r}.")
        if not math.isfinite(self.target_median):
            raise InputError(f"target_median must be finite, got {self.target_median!r}.")
        for name in ("batch_size", "max_length", "sample_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)!r}.")


@dataclass(frozen=True)
class Activity:
    """Token logits and SPLADE activity of a model on a set of texts."""

    median_logit: float  # over every (token, vocab) logit of the texts (sampled estimate)
    frac_positive: float  # exact share of (token, vocab) logits > 0
    active_mean: float  # mean active terms per text (max-pooled logit > 0)
    n_texts: int
    n_tokens: int  # non-padding tokens
    vocab_size: int


@dataclass(frozen=True)
class SimulationInfo:
    """What `make_dense_variant` did. `shift` is c for "bias", delta for "projection"."""

    where: str
    shift: float
    scale: float  # 1.0 except for "scale-only"
    median_before: float
    median_after: float
    frac_positive_before: float
    frac_positive_after: float
    active_before: float  # mean active terms per text
    active_after: float
    vocab_size: int
    n_texts: int
    n_tokens: int
    changed: tuple[str, ...]  # state_dict names whose values changed
    label: str  # the sentence stored in the config

    def config_entry(self) -> dict[str, Any]:
        """The JSON-able record written to `config.headscope_simulation`."""
        return asdict(self) | {"changed": list(self.changed), "simulation": True}


# --------------------------------------------------------------------------------------------
# measurement


class _Sampler:
    """A fixed-size uniform sample of (value, vocab id) pairs from a stream of (N, V) blocks."""

    def __init__(self, total: int, size: int, seed: int) -> None:
        import torch

        self.rate = min(1.0, size / max(total, 1))
        self.gen = torch.Generator().manual_seed(seed)
        self.values: list[Any] = []
        self.vocab_ids: list[Any] = []

    def add(self, block) -> None:  # block: (N, V) float32 logits of real tokens
        import torch

        n, v = block.shape
        flat = block.reshape(-1)  # (N * V,)
        if self.rate >= 1.0:
            idx = torch.arange(flat.numel())
        else:
            count = max(1, int(round(self.rate * flat.numel())))
            idx = torch.randint(0, flat.numel(), (count,), generator=self.gen)
        self.values.append(flat[idx].clone())
        self.vocab_ids.append(idx % v)

    def result(self):
        import torch

        return torch.cat(self.values), torch.cat(self.vocab_ids)


def _median(values) -> float:
    """The median of a 1-D tensor (mean of the two middle values for an even count)."""
    import torch

    n = values.numel()
    lower = torch.kthvalue(values, (n + 1) // 2).values
    upper = torch.kthvalue(values, n // 2 + 1).values
    return float((lower.double() + upper.double()) / 2)


def _encode_all(mlm, tokenizer, texts: Sequence[str], variant: DenseVariant):
    from headscope.splade.encode import tokenize

    return [
        tokenize(mlm, tokenizer, texts[i:i + variant.batch_size], variant.max_length)
        for i in range(0, len(texts), variant.batch_size)
    ]


def _measure(mlm, batches, variant: DenseVariant):
    """Stream the texts through `mlm`; return (Activity, sampled logits, their vocab ids)."""
    import torch

    from headscope.splade.encode import forward
    from headscope.splade.pooling import max_logits

    device = next(mlm.parameters()).device
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    vocab = int(mlm.config.vocab_size)
    sampler = _Sampler(n_tokens * vocab, variant.sample_size, variant.seed)
    positive = 0
    active: list[float] = []
    with torch.no_grad():
        for enc in batches:
            logits = forward(mlm, enc, device).logits.float()  # (B, T, V)
            mask = enc["attention_mask"].to(device).bool()  # (B, T)
            real = logits[mask]  # (N, V) logits of non-padding tokens
            positive += int((real > 0).sum())
            sampler.add(real.cpu())
            pooled = max_logits(logits, mask)  # (B, V)
            active += (pooled > 0).sum(dim=1).float().tolist()
            del logits, real, pooled
    values, ids = sampler.result()
    activity = Activity(
        median_logit=_median(values),
        frac_positive=positive / max(n_tokens * vocab, 1),
        active_mean=sum(active) / max(len(active), 1),
        n_texts=len(active),
        n_tokens=n_tokens,
        vocab_size=vocab,
    )
    return activity, values, ids


def measure_activity(model, tokenizer, texts: Sequence[str],
                     variant: DenseVariant = DenseVariant()) -> Activity:
    """Median token logit, share of positive logits and active terms per text of `model`."""
    check_texts(tokenizer, texts)
    mlm = unwrap_mlm(model)
    return _measure(mlm, _encode_all(mlm, tokenizer, texts, variant), variant)[0]


def check_texts(tokenizer, texts: Sequence[str]) -> None:
    if tokenizer is None:
        raise InputError("A tokenizer is needed to run the probe texts; load the checkpoint "
                         "with its tokenizer files.")
    if isinstance(texts, str) or not texts:
        raise InputError("texts must be a non-empty sequence of strings; pass probe passages.")


# --------------------------------------------------------------------------------------------
# the shift along a direction


def _solve_delta(values, slopes, target: float) -> float:
    """delta with median(values + delta * slopes) = target, by bisection (the median is
    continuous in delta, so a sign change brackets a solution)."""

    values, slopes = values.double(), slopes.double()

    def f(delta: float) -> float:
        return _median(values + delta * slopes) - target

    f0 = f(0.0)
    if f0 == 0:
        return 0.0
    sign = 1.0 if f0 < 0 else -1.0
    hi = 1.0
    while f(sign * hi) * f0 > 0:
        hi *= 2.0
        if hi > 1e12:
            raise InputError(
                "No shift along the mean decoder row brings the median logit to "
                f"{target}: fewer than half of the vocabulary rows point along it; use "
                "where='bias'."
            )
    lo = 0.0
    for _ in range(60):  # hi - lo shrinks by 2^60: below float32 resolution of any delta
        mid = (lo + hi) / 2
        if f(sign * mid) * f0 > 0:
            lo = mid
        else:
            hi = mid
    return sign * hi


def make_dense_variant(model, tokenizer, texts: Sequence[str], where: str = "bias",
                       **options: Any) -> SimulationInfo:
    """Turn `model` (a *ForMaskedLM or SparseEncoder) into a labelled dense-regime simulation,
    in place. `options` are the other fields of `DenseVariant`."""
    import torch

    variant = DenseVariant(where=where, **options)
    if tokenizer is None:  # a SparseEncoder carries its own
        tokenizer = getattr(model, "tokenizer", None)
    check_texts(tokenizer, texts)
    mlm = unwrap_mlm(model)
    config = mlm.config
    previous = getattr(config, CONFIG_KEY, None)
    if previous:
        kind = previous.get("where") if isinstance(previous, dict) else previous
        raise InputError(
            f"This model is already a headscope simulation ({kind}); start from the real "
            "checkpoint."
        )
    source = getattr(config, "_name_or_path", "") or type(mlm).__name__
    head = find_head(mlm)
    variant = replace(variant, max_length=token_limit(mlm, variant.max_length))
    batches = _encode_all(mlm, tokenizer, texts, variant)
    before, values, ids = _measure(mlm, batches, variant)

    shift, scale = 0.0, 1.0
    changed: tuple[str, ...]
    with torch.no_grad():
        if where == "bias":
            if head.bias is None:
                raise InputError(
                    f"The {head.layout.family} head has no output bias to shift; use "
                    "where='projection'."
                )
            shift = variant.target_median - before.median_logit
            head.bias.add_(shift)  # tied bias aliases (BERT's decoder.bias) share storage
            changed = tuple(n for n, p in mlm.named_parameters(remove_duplicate=False)
                            if p is head.bias)
        elif where == "projection":
            if head.norm_bias is None:
                raise InputError(
                    f"where='projection' shifts the head LayerNorm's bias, but the "
                    f"{head.layout.family} head has none; use where='bias'."
                )
            w = head.decoder_weight.detach().float()  # (V, E)
            u = w.mean(dim=0)
            u = u / u.norm()  # (E,) unit mean decoder row
            slopes = (w @ u)[ids]  # (S,) d logit / d delta at each sampled (token, vocab) pair
            shift = _solve_delta(values, slopes, variant.target_median)
            head.norm_bias.add_((shift * u).to(head.norm_bias.dtype))
            changed = (head.names["norm_bias"],)
        else:
            scale = variant.scale
            strategy = "fold" if head.norm_weight is not None else "untie"
            result = rescale_model(mlm, RescaleSpec(1.0 / scale, strategy), head=head)
            changed = result.changed

    after = _measure(mlm, batches, variant)[0]
    label = (
        f"SIMULATION, not a real checkpoint: headscope.simulate '{where}' variant of {source} "
        "(docs/demonstration.md)"
    )
    info = SimulationInfo(
        where=where,
        shift=float(shift),
        scale=float(scale),
        median_before=before.median_logit,
        median_after=after.median_logit,
        frac_positive_before=before.frac_positive,
        frac_positive_after=after.frac_positive,
        active_before=before.active_mean,
        active_after=after.active_mean,
        vocab_size=before.vocab_size,
        n_texts=before.n_texts,
        n_tokens=before.n_tokens,
        changed=tuple(changed),
        label=label,
    )
    setattr(config, CONFIG_KEY, info.config_entry())
    return info


def is_simulation(model) -> bool:
    """Whether `model` (or a config / config dict) carries the simulation mark."""
    if isinstance(model, dict) or not hasattr(model, "named_modules"):
        config = model  # a config dict or a transformers config
    else:
        config = unwrap_mlm(model).config
    if isinstance(config, dict):
        return bool(config.get(CONFIG_KEY))
    return bool(getattr(config, CONFIG_KEY, None))
