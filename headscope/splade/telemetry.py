"""Training telemetry: the step record, its JSONL writer and its one reader (no torch).

A telemetry file holds one JSON object per line: the fields of a `StepRecord` (or of its
subclass `ProbeRecord`, which `HeadscopeCallback` measures) plus the run keys its writer was
given (`arm`, `run`, `k`), which name the run a line belongs to. JSON has no NaN or Infinity:
every non-finite float is written as ``null`` and read back as NaN (files from headscope 0.1,
which wrote the strings "nan", "inf" and "-inf", still read). The writer sanitises every field,
record and run keys alike: numpy scalars and arrays become plain numbers and lists, nested
mappings and sequences are walked, paths become strings.

This module imports neither torch nor numpy, so the collapse detectors, the figures and the
HTML report read telemetry without them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from headscope.errors import InputError


@dataclass(frozen=True)
class StepRecord:
    step: int  # 0-based optimisation step
    loss: float  # ranking_loss + weight_q * flops_q + weight_d * flops_d
    ranking_loss: float
    flops_q: float  # unweighted FLOPS of the query batch
    flops_d: float  # unweighted FLOPS of the passages (positives and negatives)
    weight_q: float  # regulariser weights at this step (quadratic warm-up)
    weight_d: float
    active_query: float  # mean non-zero terms per query
    active_passage: float  # mean non-zero terms per passage
    score_pos: float  # mean q_i . d_i
    score_neg: float  # mean over every other candidate column
    grad_norm: float  # total gradient L2 norm before clipping
    lr: float  # learning rate used by this step
    loss_finite: bool
    grad_finite: bool


@dataclass(frozen=True)
class ProbeRecord(StepRecord):
    """A `StepRecord` measured by `headscope.trainer_callback.HeadscopeCallback`, plus the
    term-weight scale.

    The inherited fields mean what they mean in `headscope.splade.train`, except:

    - step: the Trainer's `state.global_step` after the update (the probe sees the model that
      the next training step will use, as a `train` record's statistics do).
    - loss, grad_norm, lr: the Trainer's logged "loss" (mean since its previous log),
      "grad_norm" and "learning_rate" at this step; NaN when it logged nothing at this step.
    - ranking_loss: the logged "base_loss" (SpladeLoss's ranking part), else "loss" (a loss
      without components); NaN when not logged.
    - weight_q, weight_d: the logged "query_regularizer_weight" / "document_regularizer_weight"
      (SpladeRegularizerWeightSchedulerCallback); NaN when absent.
    - flops_q, flops_d, active_*, score_*: measured on the probe batch, not the training batch.
    - loss_finite, grad_finite: False only when a logged value is not finite (True when nothing
      was logged). The Trainer's default `logging_nan_inf_filter=True` replaces a non-finite
      step loss before logging it: set it to False to let the non_finite detector see one.
    """

    term_weight_mean: float  # mean weight of the active probe passage terms (NaN: none active)
    term_weight_max: float  # largest probe passage weight (NaN: none active)


# Keys a writer's caller adds to every line to name the run, in label order.
RUN_KEYS = ("arm", "run", "k")

_STEP_FIELDS = {f.name: f.type for f in fields(StepRecord)}
_PROBE_ONLY = tuple(f.name for f in fields(ProbeRecord) if f.name not in _STEP_FIELDS)


# ------------------------------------------------------------------------------- writing


def sanitize(value: Any, where: str = "value") -> Any:
    """`value` as plain JSON: non-finite floats -> None, numpy (or torch) scalars -> Python
    numbers, arrays -> lists, mappings and sequences walked, paths -> strings. Anything else
    is refused with an InputError naming `where`."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): sanitize(v, f"{where}.{k}") for k, v in value.items()}
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy/torch scalars and arrays
        return sanitize(value.tolist(), where)
    if isinstance(value, Sequence) or isinstance(value, (set, frozenset)):
        return [sanitize(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise InputError(
        f"Telemetry field {where} is a {type(value).__name__}, which JSON cannot hold; pass "
        "numbers, strings, booleans, lists or mappings."
    )


class TelemetryWriter:
    """A callback that appends each StepRecord as one JSON object per line. Run keys (e.g.
    ``arm="fixed", k=8``) are written into every line; they may not reuse a record field's name.
    Every field is sanitised (see `sanitize`). Use as a context manager, or call close()."""

    def __init__(self, target: str | os.PathLike[str] | IO[str], **run: Any) -> None:
        clash = sorted(set(run) & (set(_STEP_FIELDS) | set(_PROBE_ONLY)))
        if clash:
            raise InputError(
                f"Telemetry run key(s) {', '.join(clash)} would overwrite record fields; "
                "name the run with other keys (e.g. arm=..., k=...)."
            )
        self._run = sanitize(run, "run")
        self._own = isinstance(target, (str, os.PathLike))
        self._fh: IO[str] = (
            open(target, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
            if isinstance(target, (str, os.PathLike))
            else target
        )

    def __call__(self, record: StepRecord) -> None:
        row = {**self._run, **sanitize(asdict(record), "record")}
        self._fh.write(json.dumps(row, allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------- reading


def run_label(keys: Mapping[str, Any], default: str) -> str:
    """The label of a run from its keys, e.g. "fixed, k = 16"; `default` when it has none."""
    parts = []
    for key in RUN_KEYS:
        if key in keys:
            value = keys[key]
            if key == "k" and isinstance(value, (int, float)) and not isinstance(value, bool):
                parts.append(f"k = {value:g}")
            elif key == "k" and value is None:
                parts.append("k = ?")
            else:
                parts.append(str(value))
    return ", ".join(parts) if parts else default


def _number(value: Any, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):  # headscope 0.1 files
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field {name} is {value!r}, not a number")
    return float(value)


def _record(row: Mapping[str, Any]) -> StepRecord:
    missing = [name for name in _STEP_FIELDS if name not in row]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    values: dict[str, Any] = {}
    for name, kind in _STEP_FIELDS.items():
        value = row[name]
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"field {name} is {value!r}, not true or false")
            values[name] = value
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"field {name} is {value!r}, not an integer")
            values[name] = value
        else:
            values[name] = _number(value, name)
    if all(name in row for name in _PROBE_ONLY):
        values.update({name: _number(row[name], name) for name in _PROBE_ONLY})
        return ProbeRecord(**values)
    return StepRecord(**values)


def read_telemetry(path: str | os.PathLike[str]) -> dict[str, tuple[StepRecord, ...]]:
    """A telemetry JSONL file as {run label: records in file order}.

    Lines are grouped by their run keys (`arm`, `run`, `k`; label e.g. "fixed, k = 16"), so
    arms that share a file stay apart; lines without any go under the file's stem. A line that
    carries `ProbeRecord`'s fields reads back as a `ProbeRecord`; other extra keys are ignored.
    A file that is missing, empty or not telemetry is refused with the line at fault.
    """
    p = Path(path)
    try:
        fh = open(p, encoding="utf-8")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputError(
            f"Telemetry file {p} does not exist; pass the JSONL written by headscope confirm "
            "or sweep --log (or HeadscopeCallback's jsonl)."
        ) from None
    runs: dict[str, list[StepRecord]] = {}
    with fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("expected a JSON object per line")
                record = _record(row)
            except (json.JSONDecodeError, ValueError, TypeError, RecursionError) as err:
                if isinstance(err, RecursionError):
                    reason = "nested too deeply"
                else:
                    reason = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
                raise InputError(
                    f"{p}, line {number}: not a headscope telemetry record ({reason}); the file "
                    "must come from TelemetryWriter (headscope confirm or sweep --log)."
                ) from None
            runs.setdefault(run_label(row, p.stem), []).append(record)
    if not runs:
        raise InputError(f"Telemetry file {p} holds no records; was the training run started?")
    return {label: tuple(records) for label, records in runs.items()}


__all__ = [
    "RUN_KEYS",
    "ProbeRecord",
    "StepRecord",
    "TelemetryWriter",
    "read_telemetry",
    "run_label",
    "sanitize",
]
