"""Arms of confirm/sweep spread over several devices: a queue of arms, one worker process per
device, each training one arm at a time; results gathered in arm order.

Each worker is a spawned process bound to one device for its life, so arms on different devices
never share a random-number generator: every arm reseeds before training (as in
`headscope.splade.train.train_arms`), and its batches, dropout masks and results are those of
the sequential run. The step callback runs in the calling process after each arm finishes, on
that arm's records in order, so telemetry comes out as the sequential run writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from headscope.errors import InputError
from headscope.splade.data import EvalSplit, Pair
from headscope.splade.evaluate import EvalConfig
from headscope.splade.train import ArmResult, StepRecord, TrainConfig

_DEVICE: str | None = None  # the device of this worker process


def parse_devices(value: str) -> tuple[str, ...]:
    """"cuda:0,cuda:1" -> ("cuda:0", "cuda:1"); a device may repeat ("cpu,cpu")."""
    devices = tuple(d.strip() for d in value.split(",") if d.strip())
    if not devices:
        raise InputError(f"--devices {value!r} names no device; give e.g. cuda:0,cuda:1.")
    return devices


def _bind(devices) -> None:
    global _DEVICE
    _DEVICE = devices.get()


def _train_one(name: str, model: Any, tokenizer: Any, pairs: Sequence[Pair],
               eval_split: EvalSplit | None, config: TrainConfig,
               eval_config: EvalConfig | None, engine: str) -> ArmResult:
    from headscope.splade.train import train, train_arms

    assert _DEVICE is not None
    train_fn = train
    if engine == "st":
        from headscope.st_engine import train as train_fn  # type: ignore[assignment]
    config = replace(config, device=_DEVICE)
    eval_config = replace(eval_config, device=_DEVICE) if eval_config is not None else None
    return train_arms({name: (model, tokenizer)}, pairs, eval_split, config,
                      eval_config=eval_config, train_fn=train_fn)[name]


def train_arms_on_devices(
    arms: Mapping[str, tuple[object, object]],
    pairs: Sequence[Pair],
    eval_split: EvalSplit | None,
    configs: Mapping[str, TrainConfig],
    devices: Sequence[str],
    *,
    eval_config: EvalConfig | None = None,
    engine: str = "headscope",
    callback: Callable[[str, StepRecord], bool | None] | None = None,
    done: Callable[[str], None] | None = None,
) -> dict[str, ArmResult]:
    """Train every arm {name: (model, tokenizer)} with `configs[name]` on the first free device
    of `devices` (one arm per device at a time); the results in arm order. `done(name)` is
    called as each arm finishes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not devices:
        raise InputError("train_arms_on_devices needs at least one device.")
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    queue = context.Queue()
    for device in devices:
        queue.put(device)
    with ProcessPoolExecutor(max_workers=len(devices), mp_context=context,
                             initializer=_bind, initargs=(queue,)) as pool:
        futures = {name: pool.submit(_train_one, name, model, tokenizer, list(pairs),
                                     eval_split, configs[name], eval_config, engine)
                   for name, (model, tokenizer) in arms.items()}
        results = {}
        for name, future in futures.items():  # arm order
            results[name] = future.result()
            if callback is not None:
                for record in results[name].train.records:
                    callback(name, record)
            if done is not None:
                done(name)
    return results
