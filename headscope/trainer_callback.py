"""headscope telemetry inside a sentence-transformers `SparseEncoderTrainer` run.

`HeadscopeCallback` is a `transformers.TrainerCallback`. Every `every_n_steps` optimisation steps
it encodes a small fixed probe batch (queries and passages given at construction) with the model
in eval mode under `torch.inference_mode`, measures what `headscope.splade.train` records for its
own loop (active terms per query and passage, mean positive and negative dot products, FLOPS,
plus the term-weight scale), joins the Trainer's logged loss, gradient norm and learning rate,
and keeps a `ProbeRecord` per probe step. The records feed the same collapse detectors as
headscope's own training (`HeadscopeCallback.verdict`), go into the Trainer's logs under
``headscope/...`` keys (so wandb or tensorboard plot them), and optionally into a JSONL file
written with `headscope.splade.telemetry.TelemetryWriter`.

    from sentence_transformers.sparse_encoder import SparseEncoder, SparseEncoderTrainer
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer
    from headscope.probe import builtin_probe
    from headscope.trainer_callback import HeadscopeCallback

    encoder = SparseEncoder(modules=[Transformer("path/to/masked-lm",
                                                 transformer_task="fill-mask"),
                                     SpladePooling("max")])
    callback = HeadscopeCallback.from_probe(builtin_probe(16), every_n_steps=10,
                                            stop_on_collapse=True, jsonl="telemetry.jsonl")
    trainer = SparseEncoderTrainer(model=encoder, args=args, train_dataset=train, loss=loss)
    callback.attach(trainer)   # runs before wandb/tensorboard's on_log, so they see our keys
    trainer.train()
    callback.verdict().status  # "stable" | "degraded" | "collapsed"

`stop_on_collapse=True` stops training only when collapse evidence persists: the detectors
must find the model collapsed at `stop_patience` consecutive probes (default 3), each probe
with evidence of its own (non-finite values in that probe's record, or dense / dead collapse
judged on the median of the last probes up to it). One bad probe never stops a run. When it
stops, `callback.stop_reason` says why, and the same sentence is logged as a warning on the
``headscope.trainer_callback`` logger.

Rescaling a SparseEncoder needs no helper of its own: `headscope.rescale.rescale_model` takes a
SparseEncoder (it finds the masked LM inside) and changes it in place. Rescale before
`trainer.train()`: ``untie`` gives the decoder a new Parameter, which an optimizer created
earlier would not hold.

    from headscope.rescale import RescaleSpec, rescale_model

    rescale_model(encoder, RescaleSpec(k=8, strategy="untie", scale_bias=False))

Multi-GPU (DDP, FSDP, DeepSpeed): every rank runs the probe, so a sharded model can gather its
parameters, then keeps the main process's statistics (broadcast at every probe step, by every
rank), so records and verdicts are the same on every rank; the loss, its components and the
gradient norm come from the Trainer's logs, which it already averages over the ranks. Only the
main process (`state.is_world_process_zero`) writes the JSONL file. With `stop_on_collapse` the
main process's verdict is broadcast, so every rank stops at the same step. Under torchrun on
CPU pass `use_cpu=True` to the training arguments (else every process trains the whole data
alone), `ddp_find_unused_parameters=bool(unused_parameters(encoder))` (DDP then skips its search
after every backward when every parameter is used), and call `quiet_other_ranks()` first, so
that only rank 0 prints (docs/integrations.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from headscope.errors import InputError
from headscope.splade.detectors import COLLAPSED, Evidence, Thresholds, Verdict, non_finite, verdict
from headscope.splade.losses import flops, positive_negative_means
from headscope.splade.pooling import active_terms
from headscope.splade.telemetry import ProbeRecord, TelemetryWriter

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from headscope.probe import ProbePair, ProbeSet
    from headscope.splade.evaluate import RetrievalMetrics


@dataclass(frozen=True)
class CallbackConfig:
    every_n_steps: int = 10  # probe after optimisation steps 10, 20, ... (state.global_step)
    # Stop training (control.should_training_stop) once the detectors find the model collapsed
    # at `stop_patience` consecutive probes, each with evidence of its own; see the module doc.
    stop_on_collapse: bool = False
    stop_patience: int = 3
    thresholds: Thresholds = Thresholds()  # of the collapse detectors
    # Make the Trainer log at every probe step, so that each record carries the loss of that
    # step and its statistics reach the Trainer's logs. False keeps your logging_steps: records
    # at steps without a log then carry NaN losses and stay out of the Trainer's logs.
    force_log: bool = True
    batch_size: int = 32  # encoding batch size of the probe
    log_prefix: str = "headscope/"  # key prefix in the Trainer's logs

    def __post_init__(self) -> None:
        for name in ("every_n_steps", "batch_size", "stop_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"CallbackConfig.{name} must be an integer >= 1, got {value!r}.")
        if not isinstance(self.thresholds, Thresholds):
            raise InputError(
                "CallbackConfig.thresholds must be a headscope.splade.detectors.Thresholds, got "
                f"{type(self.thresholds).__name__}."
            )


@dataclass(frozen=True)
class ProbeStats:
    """What one pass over the probe batch measures (term weights w = SPLADE pooling output)."""

    vocab_size: int  # V, the width of the term-weight vectors
    active_query: float  # mean non-zero terms per query
    active_passage: float  # mean non-zero terms per passage
    term_weight_mean: float  # mean weight of the active passage terms (NaN when none is active)
    term_weight_max: float  # largest passage weight (NaN when none is active)
    score_pos: float  # mean q_i . d_i
    score_neg: float  # mean q_i . d_j, i != j
    flops_q: float  # unweighted FLOPS of the probe queries, sum_j (mean_i w_ij)^2
    flops_d: float  # unweighted FLOPS of the probe passages


# Statistics added to the Trainer's logs, under CallbackConfig.log_prefix.
LOGGED_FIELDS = ("active_query", "active_passage", "term_weight_mean", "term_weight_max",
                 "score_pos", "score_neg", "flops_q", "flops_d")


# ------------------------------------------------------------------------------- measuring


def probe_stats(queries: torch.Tensor, passages: torch.Tensor) -> ProbeStats:
    """Statistics of term weights of queries (B, V) and their positive passages (B, V)."""
    if queries.dim() != 2 or queries.shape != passages.shape or queries.shape[0] < 1:
        raise InputError(
            f"Probe term weights must be two (B, V) tensors of one shape with B >= 1; got "
            f"{tuple(queries.shape)} and {tuple(passages.shape)}."
        )
    q = queries.detach().float()  # (B, V)
    d = passages.detach().float()  # (B, V)
    active = d[d > 0]  # (n_active,) weights of every active passage term
    scores = q @ d.T  # (B, B): row i, column j = q_i . d_j
    score_pos, score_neg = positive_negative_means(scores)
    return ProbeStats(
        vocab_size=int(q.shape[1]),
        active_query=active_terms(q).mean().item(),
        active_passage=active_terms(d).mean().item(),
        term_weight_mean=active.mean().item() if active.numel() else math.nan,
        term_weight_max=active.max().item() if active.numel() else math.nan,
        score_pos=score_pos,
        score_neg=score_neg,
        flops_q=flops(q).item(),
        flops_d=flops(d).item(),
    )


def measure(model: Any, queries: Sequence[str], passages: Sequence[str],
            batch_size: int = 32) -> ProbeStats:
    """Encode the probe with a SparseEncoder (`encode_query` / `encode_document`, so prompts and
    Router tasks apply) in eval mode under inference_mode, and measure it.

    The raw representation is measured: the model's `max_active_dims` pruning is switched off
    for the call. The model's train/eval mode and `max_active_dims` are restored afterwards.
    """
    if not (hasattr(model, "encode_query") and hasattr(model, "encode_document")):
        raise InputError(
            f"HeadscopeCallback needs a sentence-transformers SparseEncoder, got "
            f"{type(model).__name__}; train with SparseEncoderTrainer."
        )
    was_training = model.training
    prunes = hasattr(model, "max_active_dims")
    max_active_dims = getattr(model, "max_active_dims", None)
    kwargs = dict(batch_size=batch_size, convert_to_tensor=True, convert_to_sparse_tensor=False,
                  show_progress_bar=False)
    try:
        if prunes:
            model.max_active_dims = None
        model.eval()
        with torch.inference_mode():
            q = model.encode_query(list(queries), **kwargs)  # (B, V)
            d = model.encode_document(list(passages), **kwargs)  # (B, V)
            return probe_stats(q, d)
    finally:
        if prunes:
            model.max_active_dims = max_active_dims
        model.train(was_training)


def _logged(logs: Mapping[str, Any], key: str) -> float | None:
    """logs[key] as a float; None when absent or not a number."""
    value = logs.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def make_record(step: int, stats: ProbeStats, logs: Mapping[str, Any]) -> ProbeRecord:
    """The record of probe step `step` from its statistics and the Trainer's logs of that step
    ({} when it logged nothing); see `ProbeRecord` for where each field comes from."""
    loss = _logged(logs, "loss")
    ranking = _logged(logs, "base_loss")
    grad_norm = _logged(logs, "grad_norm")

    def nan_if_none(value: float | None) -> float:
        return math.nan if value is None else value

    return ProbeRecord(
        step=step,
        loss=nan_if_none(loss),
        ranking_loss=nan_if_none(ranking if ranking is not None else loss),
        flops_q=stats.flops_q,
        flops_d=stats.flops_d,
        weight_q=nan_if_none(_logged(logs, "query_regularizer_weight")),
        weight_d=nan_if_none(_logged(logs, "document_regularizer_weight")),
        active_query=stats.active_query,
        active_passage=stats.active_passage,
        score_pos=stats.score_pos,
        score_neg=stats.score_neg,
        grad_norm=nan_if_none(grad_norm),
        lr=nan_if_none(_logged(logs, "learning_rate")),
        loss_finite=loss is None or math.isfinite(loss),
        grad_finite=grad_norm is None or math.isfinite(grad_norm),
        term_weight_mean=stats.term_weight_mean,
        term_weight_max=stats.term_weight_max,
    )


def quiet_other_ranks() -> bool:
    """In every process of a torchrun / accelerate launch but the main one, switch off what the
    libraries print: transformers', sentence-transformers', accelerate's and datasets' log
    messages below errors, their progress bars (tqdm too) and Python warnings. Errors and
    tracebacks still show. Returns whether this is the main process (which is left alone);
    call it first, before the model is loaded."""
    import os
    import warnings

    from headscope.st_engine import is_main_process

    if is_main_process():
        return True
    os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it on import: for the bars of later imports
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:  # bars of modules imported already: tqdm's default becomes disabled (an explicit
        from functools import partialmethod  # disable=False still wins)

        import tqdm

        tqdm.std.tqdm.__init__ = partialmethod(tqdm.std.tqdm.__init__,  # type: ignore[method-assign]
                                               disable=True)
    except ImportError:
        pass
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    warnings.simplefilter("ignore")
    for name in ("transformers", "sentence_transformers", "accelerate", "datasets",
                 "huggingface_hub", "headscope"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return False


def unused_parameters(model: Any, texts: Sequence[str] = ("a query", "a passage")
                      ) -> tuple[str, ...]:
    """Names of the trainable parameters of a SparseEncoder that its output does not reach: one
    forward and backward pass over `texts` in train mode (SPLADE pooling works in place in eval
    mode) under a forked random state (dropout draws leave the run's unchanged), the gradients
    and the mode restored afterwards. Empty: DDP can run with
    `ddp_find_unused_parameters=False` (no search of the graph after every backward); otherwise
    it needs True, or those parameters frozen."""
    if not hasattr(model, "preprocess") and not hasattr(model, "tokenize"):
        raise InputError(
            f"unused_parameters needs a sentence-transformers SparseEncoder, got "
            f"{type(model).__name__}."
        )
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    saved = [p.grad for _, p in params]
    was_training = model.training
    prepare = getattr(model, "preprocess", None) or model.tokenize
    device = next(model.parameters()).device
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        model.train()
        for _, p in params:
            p.grad = None
        features = prepare(list(texts))
        features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
        with torch.random.fork_rng(devices=cuda):
            model(features)["sentence_embedding"].sum().backward()
        return tuple(name for name, p in params if p.grad is None)
    finally:
        for (_, p), grad in zip(params, saved, strict=True):
            p.grad = grad
        model.train(was_training)


def _main_process_has(value: Any) -> Any:
    """`value` as the main process has it, on every rank (a broadcast when distributed; every
    rank must call this at the same point, as the Trainer's events guarantee)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def _main_process_says(flag: bool) -> bool:
    """`flag` as the main process has it, on every rank."""
    return bool(_main_process_has(flag))


# ------------------------------------------------------------------------------- the callback


class HeadscopeCallback(TrainerCallback):
    """Probe a SparseEncoder every `every_n_steps` steps of a Trainer run; see the module doc.

    `config` holds the options; keyword `options` override its fields
    (``HeadscopeCallback(q, p, every_n_steps=2)``). `jsonl` names a telemetry file, written by
    the main process one record per line; an existing non-empty file is refused unless
    `overwrite` is True. Records accumulate across `trainer.train()` calls.
    """

    def __init__(self, queries: Sequence[str], passages: Sequence[str],
                 config: CallbackConfig | None = None, *, jsonl: str | Path | None = None,
                 overwrite: bool = False, **options: Any) -> None:
        super().__init__()
        config = config if config is not None else CallbackConfig()
        if options:
            known = {f.name for f in fields(CallbackConfig)}
            unknown = sorted(set(options) - known)
            if unknown:
                raise InputError(
                    f"Unknown HeadscopeCallback option(s) {', '.join(unknown)}; the options are "
                    f"{', '.join(sorted(known))}."
                )
            config = replace(config, **options)
        self.config = config
        self.queries = tuple(queries)
        self.passages = tuple(passages)
        if len(self.queries) != len(self.passages) or len(self.queries) < 2:
            raise InputError(
                f"The probe needs as many queries as passages (query i's positive is passage i), "
                f"at least 2 for in-batch negatives; got {len(self.queries)} queries and "
                f"{len(self.passages)} passages."
            )
        if not all(isinstance(t, str) for t in self.queries + self.passages):
            raise InputError("Probe queries and passages must be strings.")
        self.jsonl = Path(jsonl) if jsonl is not None else None
        if self.jsonl is not None:
            if not self.jsonl.parent.is_dir():
                raise InputError(
                    f"The folder of the telemetry file {self.jsonl} does not exist; create it "
                    "or choose another jsonl path."
                )
            if self.jsonl.exists() and self.jsonl.stat().st_size > 0 and not overwrite:
                raise InputError(
                    f"Telemetry file {self.jsonl} already exists; pass overwrite=True or choose "
                    "another jsonl path."
                )
        self.records: list[ProbeRecord] = []
        self.vocab_size: int | None = None
        self.stopped_at: int | None = None  # the step whose verdict stopped training
        self.stop_reason: str | None = None  # why, in one sentence (also logged)
        self._streak: list[tuple[int, tuple[Evidence, ...]]] = []  # consecutive collapsed probes
        self._pending: tuple[int, ProbeStats] | None = None  # measured, waiting for on_log
        self._fh: IO[str] | None = None
        self._writer: TelemetryWriter | None = None
        self._written = False  # the file was created by this callback (later runs append)

    @classmethod
    def from_probe(cls, probe: ProbeSet | Sequence[ProbePair],
                   config: CallbackConfig | None = None, **kwargs: Any) -> HeadscopeCallback:
        """A callback probing the pairs of a `ProbeSet` (e.g. `builtin_probe(16)`)."""
        pairs = probe.pairs if hasattr(probe, "pairs") else tuple(probe)
        return cls([p.query for p in pairs], [p.passage for p in pairs], config, **kwargs)

    def attach(self, trainer: Any) -> HeadscopeCallback:
        """Add this callback to `trainer` (moving it if already there) right after the Trainer's
        flow callback and sentence-transformers' regulariser scheduler, before reporting
        integrations (wandb, tensorboard, ...) and user callbacks: their `on_log` then sees
        the ``headscope/...`` keys. A callback passed as `callbacks=[...]` runs after the
        reporting integrations, which then miss those keys."""
        from transformers.trainer_callback import DefaultFlowCallback

        leading: tuple[type, ...] = (DefaultFlowCallback,)
        try:
            from sentence_transformers.sparse_encoder.callbacks.splade_callbacks import (
                SpladeRegularizerWeightSchedulerCallback,
            )

            leading += (SpladeRegularizerWeightSchedulerCallback,)
        except ImportError:  # an older sentence-transformers layout: the flow callback only
            pass
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [c for c in callbacks if c is not self]
        index = 0
        while index < len(callbacks) and isinstance(callbacks[index], leading):
            index += 1
        callbacks.insert(index, self)
        return self

    def verdict(self, metrics: RetrievalMetrics | None = None) -> Verdict:
        """The collapse detectors of `headscope.splade.detectors` over the records so far."""
        return verdict(self.records, self.vocab_size or 0, metrics, self.config.thresholds)

    # --------------------------------------------------------------- Trainer events

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, model: Any = None, **kwargs: Any) -> TrainerControl:
        self._flush(state, control)  # a probe whose step never logged
        if state.global_step % self.config.every_n_steps != 0:
            return control
        if model is None:
            raise InputError("The Trainer passed no model to HeadscopeCallback.on_step_end.")
        # Every rank probes (a sharded model gathers its parameters in the forward pass), then
        # keeps the main process's statistics, so that records and verdicts agree on every rank.
        stats = _main_process_has(
            measure(model, self.queries, self.passages, self.config.batch_size))
        self.vocab_size = stats.vocab_size
        self._pending = (state.global_step, stats)
        if self.config.force_log:
            control.should_log = True  # DefaultFlowCallback, which ran before us, may not have
        if not control.should_log:
            self._flush(state, control)
        return control

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> TrainerControl:
        if self._pending is None or self._pending[0] != state.global_step or logs is None:
            return control
        record = self._flush(state, control, logs)
        if record is None:
            return control
        added = {f"{self.config.log_prefix}{name}": getattr(record, name)
                 for name in LOGGED_FIELDS}
        logs.update(added)
        # Trainer.log copied `logs` into log_history before calling us: complete that copy too.
        history = state.log_history
        if history and history[-1].get("step") == state.global_step:
            history[-1].update(added)
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> TrainerControl:
        self._flush(state, control)
        self.close()
        return control

    def close(self) -> None:
        """Close the telemetry file (on_train_end does; a later run appends to it)."""
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._writer = None

    # --------------------------------------------------------------- internals

    def _flush(self, state: TrainerState, control: TrainerControl,
               logs: Mapping[str, Any] | None = None) -> ProbeRecord | None:
        """Turn the pending probe into a record (keep, write, judge) and return it; None when
        no probe is pending."""
        if self._pending is None:
            return None
        step, stats = self._pending
        self._pending = None
        record = make_record(step, stats, logs or {})
        self.records.append(record)
        if state.is_world_process_zero and self.jsonl is not None:
            self._write(record)
        if self.config.stop_on_collapse:
            evidence = self._collapse_now(record)
            self._streak = self._streak + [(step, evidence)] if evidence else []
            persists = len(self._streak) >= self.config.stop_patience
            if _main_process_says(persists):
                control.should_training_stop = True
                if self.stopped_at is None:
                    self.stopped_at = step
                    self.stop_reason = self._why()
                    logger.warning(self.stop_reason)
        return record

    def _collapse_now(self, record: ProbeRecord) -> tuple[Evidence, ...]:
        """Collapse evidence of the latest probe itself: non-finite values in its record, or a
        collapsing detector (dense / dead collapse over the last probes) dated at its step."""
        th = self.config.thresholds
        found = [e for e in self.verdict().evidence
                 if e.severity == COLLAPSED and e.step == record.step]
        own = non_finite([record], th)
        if own is not None and not any(e.detector == own.detector for e in found):
            found.append(own)
        return tuple(found)

    def _why(self) -> str:
        steps = ", ".join(str(step) for step, _ in self._streak)
        latest = "; ".join(e.message for e in self._streak[-1][1]) if self._streak else ""
        return (f"headscope stopped training at step {self.stopped_at}: collapse evidence at "
                f"{len(self._streak)} consecutive probes (steps {steps}; stop_patience = "
                f"{self.config.stop_patience}). Latest: {latest}.")

    def _write(self, record: ProbeRecord) -> None:
        if self._writer is None:
            assert self.jsonl is not None
            self._fh = open(self.jsonl, "a" if self._written else "w", encoding="utf-8")
            self._writer = TelemetryWriter(self._fh)  # we own the handle: close() closes it
            self._written = True
        self._writer(record)
