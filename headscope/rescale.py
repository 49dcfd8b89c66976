"""Divide the projection part of an MLM head's logits by k, in memory (docs/rescale.md).

For the BERT-like heads of docs/rescale.md ("Head layouts per family")

    logits = W_dec · LN(act(dense(h))) + b_dec          # (B, T, V)

and every strategy makes the projection part W_dec · LN(...) smaller by k:

- ``untie``: the decoder gets its own parameter W_dec / k; the input embeddings keep W_dec;
  ``config.tie_word_embeddings`` becomes False so that no loader re-ties them.
- ``tied``: the shared matrix (decoder *and* input embeddings) is divided by k. The encoder sees
  smaller token embeddings, so its hidden states drift: logits are only approximately
  (x - b) / k + b. Measure the drift (``save`` does) rather than assume it is zero.
- ``fold``: the head LayerNorm's weight and bias are divided by k. The LayerNorm's output feeds
  the decoder only, so the projection part is exactly divided by k and the tie is kept.

``scale_bias`` divides the output bias b_dec too (then logits are x / k, not (x - b) / k + b).

The maths lives in one place, :func:`rescaled_roles`, which works on the head's tensors by role
("decoder_weight", "bias", "norm_weight", "norm_bias", "embeddings"); :func:`rescale_model` applies
it to a live model and ``save`` applies it to tensors read straight from the checkpoint's files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from headscope.errors import InputError

if TYPE_CHECKING:
    import torch

    from headscope.heads import Head

STRATEGIES = ("untie", "tied", "fold")


@dataclass(frozen=True)
class RescaleSpec:
    """What to divide by k. Validated on construction (InputError)."""

    k: float
    strategy: str = "untie"
    scale_bias: bool = False

    def __post_init__(self) -> None:
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise InputError(f"k must be a number, got {k!r}; pass e.g. --k 8.")
        if not math.isfinite(k) or k <= 0:
            raise InputError(f"k must be a finite number > 0, got {k!r}; pass e.g. --k 8.")
        if self.strategy not in STRATEGIES:
            raise InputError(
                f"Unknown rescale strategy {self.strategy!r}; choose one of "
                f"{', '.join(STRATEGIES)}."
            )
        object.__setattr__(self, "k", float(k))
        object.__setattr__(self, "scale_bias", bool(self.scale_bias))

    def describe(self) -> str:
        """The arm this spec trains, as confirm and sweep describe it: "projection / 16 (untie,
        bias divided)"."""
        return (f"projection / {self.k:g} ({self.strategy}, bias "
                f"{'divided' if self.scale_bias else 'kept'})")


class Decision(Protocol):
    """A recommendation as one decision: k with its output-bias setting
    (`recommend.Recommendation`, the last inspection `fix` follows)."""

    @property
    def k(self) -> float | None: ...  # None: nothing recommended (refused here)

    @property
    def scale_bias(self) -> bool: ...


def recommended_spec(decision: Decision, strategy: str = "untie",
                     scale_bias: bool | None = None) -> RescaleSpec:
    """The recommendation applied: its k with its bias setting (a k recommended with the bias
    divided is applied with the bias divided; `scale_bias` True or False, as the user gave it,
    overrides it, None follows it), in `strategy`. fix, confirm and sweep --flops-weight apply
    a recommendation through this one function."""
    if decision.k is None:
        raise InputError("There is no recommended k to apply; pass --k K.")
    divide = decision.scale_bias if scale_bias is None else scale_bias
    return RescaleSpec(float(decision.k), strategy, bool(divide))


@dataclass(frozen=True)
class RescaleResult:
    """What `rescale_model` changed."""

    spec: RescaleSpec
    changed: tuple[str, ...]  # state_dict names whose values changed (tied aliases included)
    untied: bool  # the decoder was separated from the input embeddings by this call
    tied: bool  # the decoder shares storage with the input embeddings afterwards
    family: str  # head layout family ("bert", "modernbert", ...)


# --------------------------------------------------------------------------------------------
# maths on role tensors


def check_applicable(spec: RescaleSpec, *, family: str, has_decoder: bool, tied: bool,
                     has_norm: bool) -> None:
    """Raise InputError when `spec.strategy` cannot be applied to this head."""
    if spec.strategy == "untie" and not has_decoder:
        raise InputError(
            f"Strategy 'untie' needs a separate decoder module, but the {family} head projects "
            "with its input embedding matrix (no decoder tensor); use --strategy fold or "
            "--strategy tied."
        )
    if spec.strategy == "tied" and not tied:
        raise InputError(
            f"Strategy 'tied' divides the matrix shared by the decoder and the input embeddings, "
            f"but this {family} model's decoder is not tied to its embeddings; use --strategy "
            "untie (it divides the decoder alone, the same function at step 0)."
        )
    if spec.strategy == "fold" and not has_norm:
        raise InputError(
            f"Strategy 'fold' divides the head LayerNorm, but the {family} head has no "
            "LayerNorm before its decoder; use --strategy untie."
        )


def _div(t: torch.Tensor, k: float, inplace: bool = False) -> torch.Tensor:
    """t / k computed in float32 (or float64 for float64 tensors), returned in t's dtype.

    `inplace` overwrites t (which must be a tensor nobody else holds), converting half-precision
    tensors in row blocks so that peak memory stays near t's own size.
    """
    import torch

    work = torch.float64 if t.dtype == torch.float64 else torch.float32
    if not inplace:
        return (t.detach().to(work) / k).to(t.dtype)
    with torch.no_grad():
        if t.dtype == work:
            return t.div_(k)
        rows = t.view(t.shape[0], -1) if t.dim() else t.view(1)  # (R, C)
        step = max(1, (1 << 22) // max(1, rows[0].numel()))  # ~4M elements per block
        for i in range(0, rows.shape[0], step):
            rows[i:i + step] = rows[i:i + step].to(work) / k
    return t


def rescaled_roles(spec: RescaleSpec, roles: Mapping[str, torch.Tensor | None], *,
                   inplace: bool = False) -> dict[str, Any]:
    """New values of the head tensors `spec` changes, by role; roles it leaves alone are absent.

    `roles` maps "decoder_weight", "bias", "norm_weight", "norm_bias", "embeddings" to the current
    tensors (None or absent where the head has no such tensor). For ``tied`` the result holds the
    divided shared matrix under both "embeddings" and "decoder_weight". With `inplace` the
    given tensors are overwritten (for private copies, e.g. read from a file): each role's tensor
    must then be a distinct object that nothing else uses.
    """
    k = spec.k
    out: dict[str, Any] = {}
    if spec.strategy == "untie":
        out["decoder_weight"] = _div(_need(roles, "decoder_weight"), k, inplace)
    elif spec.strategy == "tied":
        shared = roles.get("embeddings")
        shared = shared if shared is not None else _need(roles, "decoder_weight")
        out["embeddings"] = _div(shared, k, inplace)
        out["decoder_weight"] = out["embeddings"]
    else:  # fold: LN(x) = w * n(x) + beta, so (w / k, beta / k) gives LN(x) / k exactly
        out["norm_weight"] = _div(_need(roles, "norm_weight"), k, inplace)
        if roles.get("norm_bias") is not None:
            out["norm_bias"] = _div(roles["norm_bias"], k, inplace)  # type: ignore[arg-type]
    if spec.scale_bias and roles.get("bias") is not None:
        out["bias"] = _div(roles["bias"], k, inplace)  # type: ignore[arg-type]
    return out


def _need(roles: Mapping[str, Any], role: str):
    t = roles.get(role)
    if t is None:
        raise InputError(f"The head has no {role.replace('_', ' ')} tensor, which this "
                         "strategy needs; use another --strategy.")
    return t


def expected_logits(logits: torch.Tensor, bias: torch.Tensor | None,
                    spec: RescaleSpec) -> torch.Tensor:
    """The logits the fixed model must output, from the original model's `logits` (..., V).

    untie and fold: exactly (x - b) / k + b, or x / k with scale_bias (up to rounding).
    tied: the same formula is only an approximation, because dividing the shared matrix also
    divides the input embeddings and moves the encoder's hidden states; `save` reports how far.
    Computed and returned in float32 (float64 inputs stay float64).
    """
    import torch

    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.detach().to(work)
    if spec.scale_bias or bias is None:
        return x / spec.k
    b = bias.detach().to(device=x.device, dtype=work)  # (V,), broadcast over (..., V)
    return (x - b) / spec.k + b


# --------------------------------------------------------------------------------------------
# applying to a live model


def unwrap_mlm(model: Any) -> Any:
    """The transformers masked LM inside `model` (itself, or a SparseEncoder's first module)."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return model
    named = getattr(model, "named_modules", None)
    if named is not None:
        for _, module in named():
            if isinstance(module, PreTrainedModel):
                return module  # pre-order: the outermost *ForMaskedLM comes first
    raise InputError(
        f"{type(model).__name__} holds no transformers model; pass a *ForMaskedLM or a "
        "sentence-transformers SparseEncoder built on one."
    )


def _aliases(model: Any, target: Any) -> list[str]:
    """Every parameter/buffer name of `model` that refers to the tensor object `target`."""
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is target]
    names += [n for n, b in model.named_buffers(remove_duplicate=False) if b is target]
    return names


def _set_tie_flag(model: Any, tied: bool) -> None:
    """Record the tie state in the config and in transformers 5's tie mapping, so that neither
    a later `tie_weights()` nor `save_pretrained` re-ties (or drops) the decoder."""
    model.config.tie_word_embeddings = tied
    text_config = getattr(model.config, "get_text_config", None)
    if text_config is not None:
        sub = text_config(decoder=True)
        if sub is not model.config and hasattr(sub, "tie_word_embeddings"):
            sub.tie_word_embeddings = tied
    if hasattr(model, "get_expanded_tied_weights_keys"):  # transformers >= 5
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


def rescale_model(model: Any, spec: RescaleSpec, head: Head | None = None) -> RescaleResult:
    """Apply `spec` to `model` in place: a transformers *ForMaskedLM or a SparseEncoder.

    `head` (from `heads.find_head`) saves the discovery; it must describe this model. For
    ``untie`` the decoder gets new Parameters (weight W / k, and its own copy of the output bias,
    so that `save_pretrained` writes both bias names instead of dropping the decoder's; the
    family's bias Parameter the logits then no longer read is frozen, requires_grad False); all
    other strategies divide the existing Parameters in place, tied aliases included.
    """
    import torch

    if not isinstance(spec, RescaleSpec):
        raise InputError(f"spec must be a RescaleSpec, got {type(spec).__name__}.")
    mlm = unwrap_mlm(model)
    if head is None:
        from headscope.heads import find_head

        head = find_head(mlm)
    layout = head.layout
    check_applicable(spec, family=layout.family, has_decoder=layout.decoder is not None,
                     tied=head.tied, has_norm=head.norm_weight is not None)
    roles = {
        "decoder_weight": head.decoder_weight,
        "bias": head.bias,
        "norm_weight": head.norm_weight,
        "norm_bias": head.norm_bias,
        "embeddings": mlm.get_input_embeddings().weight,
    }
    new = rescaled_roles(spec, roles)
    changed: list[str] = []
    untied = False
    with torch.no_grad():
        if spec.strategy == "untie":
            decoder = mlm.get_submodule(layout.decoder)
            untied = head.tied
            decoder.weight = torch.nn.Parameter(new["decoder_weight"],
                                                requires_grad=decoder.weight.requires_grad)
            changed.append(f"{layout.decoder}.weight")
            if getattr(decoder, "bias", None) is not None:
                old_bias = decoder.bias
                value = new.get("bias", old_bias.detach()).clone()
                decoder.bias = torch.nn.Parameter(value, requires_grad=old_bias.requires_grad)
                if "bias" in new:
                    changed.append(f"{layout.decoder}.bias")
            _set_tie_flag(mlm, False)
            for role in ("bias",):  # the bias outside the decoder (BERT's cls.predictions.bias)
                if roles[role] is not None and roles[role] is not decoder.bias:
                    if role in new:
                        roles[role].copy_(new[role])
                        changed += [n for n in _aliases(mlm, roles[role]) if n not in changed]
                    # The logits no longer read it (the decoder's own copy makes them): frozen,
                    # so that training (DDP) finds every trainable parameter used.
                    roles[role].requires_grad_(False)
        else:
            for role, value in new.items():
                target = roles[role]
                if role == "decoder_weight" and spec.strategy == "tied":
                    continue  # the same Parameter as "embeddings"
                target.copy_(value)
                changed += [n for n in _aliases(mlm, target) if n not in changed]
    # untie gave the decoder a Parameter of its own; the others divided Parameters in place,
    # which leaves the tie as it was.
    tied = False if spec.strategy == "untie" else head.tied
    return RescaleResult(spec=spec, changed=tuple(sorted(changed)), untied=untied,
                         tied=tied, family=layout.family)
