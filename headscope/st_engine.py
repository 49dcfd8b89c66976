"""The `st` training engine: each arm of `confirm`/`sweep` trained by sentence-transformers'
`SparseEncoderTrainer`, observed by `HeadscopeCallback`.

Same model, data, loss and schedule as `headscope.splade.train`: the arm's masked LM becomes a
SparseEncoder (`Transformer(transformer_task="fill-mask")` + `SpladePooling("max")`), trained
with `SpladeLoss(SparseMultipleNegativesRankingLoss(scale=1))` and the λq/λd of `TrainConfig`
(warmed up quadratically over a third of training by sentence-transformers' scheduler callback),
AdamW with a linear schedule, clipping at 1.0, on exactly the batches `splade.train` would draw
(`batch_indices`, fed in order). Each step is probed by `HeadscopeCallback` (every step), whose
records feed the same collapse detectors; after training the weights go back into the arm's
model, which is then evaluated as usual.

Under `torchrun` / `accelerate launch` (DDP) the Trainer runs one process per device: each
global batch of `batch_size` pairs is split into `batch_size / world_size` per device, the
in-batch negatives are gathered across devices (`gather_across_devices=True`), so the ranking
loss is the single-process one; the FLOPS regulariser is each device's (the Trainer averages the
gradients), which differs from the single-process FLOPS of the whole batch by a few percent on
small batches. Only the main process writes or prints anything (`is_main_process`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from headscope.errors import InputError
from headscope.splade.data import EvalSplit, Pair
from headscope.splade.evaluate import EvalConfig
from headscope.splade.objective import Objective, dataset_columns
from headscope.splade.train import ArmResult, StepRecord, TrainConfig, TrainResult, batch_indices
from headscope.splade.train import train_arms as _train_arms

ENGINES = ("headscope", "st")


def world_size() -> int:
    """The number of processes of a torchrun / accelerate launch (1 when not distributed)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """False in every process of a distributed launch but rank 0 (RANK from torchrun or
    accelerate); True otherwise."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


def bind_device(device: str) -> None:
    """Make `device` this process's current CUDA device, so that the Trainer (which trains on
    the current device) and plain "cuda" mean it: under torchrun / accelerate launch "cuda" is
    the process's LOCAL_RANK device, else "cuda:N" is N. No-op for other devices."""
    if not device.startswith("cuda"):
        return
    import torch

    if device == "cuda" and world_size() > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    elif device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))


def _dataset(pairs: Sequence[Pair], config: TrainConfig):
    """The pairs of every step in order (steps * batch_size rows): query, positive,
    negative_1..N, as `splade.train` would draw them."""
    from datasets import Dataset

    order = [i for batch in batch_indices(len(pairs), config.steps, config.batch_size,
                                          config.seed) for i in batch]
    return Dataset.from_dict(dataset_columns([pairs[i] for i in order]))


def warmup_arguments(ratio: float, transformers_version: str | None = None) -> dict[str, Any]:
    """The learning-rate warm-up as a share of the steps, in the TrainingArguments field the
    installed transformers major reads as one: transformers 5 takes `warmup_steps` < 1 as a
    ratio (its `warmup_ratio` is deprecated); 4.x reads `warmup_steps` as a count of steps (0.1
    would mean no warm-up) and needs `warmup_ratio`."""
    if transformers_version is None:
        import transformers

        transformers_version = transformers.__version__
    major = int(transformers_version.split(".", 1)[0])
    return {"warmup_steps": ratio} if major >= 5 else {"warmup_ratio": ratio}


def _in_order(dataset, batch_size: int, drop_last: bool, **_: Any):
    """A batch sampler that keeps the dataset's order (it already is the shuffled order)."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler

    return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size,
                               drop_last=drop_last)


def _encoder(folder: str, config: TrainConfig):
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    try:
        from sentence_transformers.base.modules import Transformer

        first = Transformer(folder, transformer_task="fill-mask",
                            max_seq_length=config.max_passage_length)
    except (ImportError, TypeError):  # sentence-transformers 5.x
        from sentence_transformers.sparse_encoder.modules import MLMTransformer

        first = MLMTransformer(folder, max_seq_length=config.max_passage_length)
    return SparseEncoder(modules=[first, SpladePooling("max")], device=config.device)


def _write_folder(model, tokenizer, folder: str) -> None:
    """What sentence-transformers loads a module from, written by every rank (transformers'
    save_pretrained writes on rank 0 only once a process group exists)."""
    from safetensors.torch import save_model

    model.config.to_json_file(os.path.join(folder, "config.json"))
    save_model(model, os.path.join(folder, "model.safetensors"))
    tokenizer.save_pretrained(folder)


def train(model, tokenizer, pairs: Sequence[Pair], config: TrainConfig | None = None,
          callback: Callable[[StepRecord], bool | None] | None = None, *,
          probe: Sequence[tuple[str, str]] | None = None) -> TrainResult:
    """Train `model` (a *ForMaskedLM, in place) with SparseEncoderTrainer; see the module doc.

    `probe` are the (query, passage) pairs HeadscopeCallback measures every step (default:
    headscope's built-in 16). `callback` sees each record, on every rank; True stops."""
    import time

    from sentence_transformers.sparse_encoder import (
        SparseEncoderTrainer,
        SparseEncoderTrainingArguments,
    )
    from transformers.trainer_callback import PrinterCallback

    from headscope.checkpoint import token_limit
    from headscope.trainer_callback import unused_parameters

    config = config or TrainConfig()
    ranks = world_size()
    if config.batch_size % ranks:
        raise InputError(
            f"--batch-size {config.batch_size} does not split over {ranks} processes; give a "
            f"multiple of {ranks}."
        )
    if probe is None:
        from headscope.probe import builtin_probe

        probe = [(p.query, p.passage) for p in builtin_probe(16).pairs]
    bind_device(config.device)
    dataset = _dataset(pairs, config)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="headscope-st-") as folder:
        _write_folder(model, tokenizer, folder)
        encoder = _encoder(folder, config)
        encoder[0].model = model  # train the arm's own model, in place (tied or untied)
        encoder.to(config.device)
        encoder.tokenizer.model_max_length = token_limit(model, config.max_passage_length)
        loss, warm_up = Objective.of(config).st_loss(encoder, gather_across_devices=ranks > 1)
        args = SparseEncoderTrainingArguments(
            output_dir=os.path.join(folder, "trainer"), max_steps=config.steps,
            per_device_train_batch_size=config.batch_size // ranks, learning_rate=config.lr,
            **warmup_arguments(config.warmup_ratio), weight_decay=config.weight_decay,
            max_grad_norm=config.grad_clip, lr_scheduler_type="linear", seed=config.seed,
            data_seed=config.seed, logging_steps=1, save_strategy="no", report_to="none",
            disable_tqdm=True, use_cpu=config.device == "cpu", dataloader_drop_last=True,
            logging_nan_inf_filter=False, batch_sampler=_in_order,
            # Without the search for unused parameters after every backward when none is.
            ddp_find_unused_parameters=ranks > 1 and bool(unused_parameters(encoder)),
        )
        relay = _Relay([q for q, _ in probe], [p for _, p in probe], callback,
                       every_n_steps=1)
        trainer = SparseEncoderTrainer(
            model=encoder, args=args, train_dataset=dataset, loss=loss,
            callbacks=warm_up)
        trainer.remove_callback(PrinterCallback)  # the library prints nothing
        relay.attach(trainer)
        trainer.train()
    model.to(config.device)
    model.eval()
    return TrainResult(config, tuple(relay.records), relay.vocab_size or 0, len(pairs),
                       time.perf_counter() - start, relay.stopped_at is not None
                       or relay.stopped_by_callback)


def _relay_class():
    from headscope.trainer_callback import HeadscopeCallback

    class Relay(HeadscopeCallback):
        """HeadscopeCallback that hands each new record to a step callback."""

        def __init__(self, queries, passages, step_callback, **options) -> None:
            super().__init__(queries, passages, **options)
            self.step_callback = step_callback
            self.stopped_by_callback = False

        def _flush(self, state, control, logs=None):
            record = super()._flush(state, control, logs)
            if record is not None and self.step_callback is not None:
                if self.step_callback(record):
                    self.stopped_by_callback = True
                    control.should_training_stop = True
            return record

    return Relay


def _Relay(queries, passages, step_callback, **options):  # noqa: N802 - a class factory
    return _relay_class()(queries, passages, step_callback, **options)


def train_arms(arms: Mapping[str, tuple[object, object]], pairs: Sequence[Pair],
               eval_split: EvalSplit | None, config: TrainConfig | None = None, *,
               eval_config: EvalConfig | None = None, eval_before: bool = False,
               callback: Callable[[str, StepRecord], bool | None] | None = None,
               ) -> dict[str, ArmResult]:
    """`splade.train.train_arms` with each arm trained by `train` above."""
    return _train_arms(arms, pairs, eval_split, config or TrainConfig(), eval_config=eval_config,
                       eval_before=eval_before, callback=callback, train_fn=train)
