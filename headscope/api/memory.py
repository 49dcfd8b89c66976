"""The "last inspected" memory: `headscope fix --out DIR` without MODEL follows the last
`inspect` made in the same directory (see `last_inspection`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from headscope.errors import InputError
from headscope.report import Report


def state_file() -> Path:
    """Where the last inspection is recorded: last-inspect.json in headscope's cache."""
    from headscope.assets import cache_root

    return cache_root() / "last-inspect.json"


@dataclass(frozen=True)
class LastInspection:
    source: str
    revision: str | None
    k: float | None
    rule: str | None
    scale_bias: bool
    created: str
    cwd: str
    # A weights-only inspection's k comes from the paper rule; `fix` does not follow it (older
    # records lack the field: they were full inspections or said so in `rule`).
    weights_only: bool = False
    # What a following `fix` may reuse instead of probing again, and the sha256 of the weight
    # files it was measured on (None for a Hub snapshot, named by `revision`): the head's weight
    # statistics and the per-k probe statistics, as JSON.
    source_files: dict[str, str] | None = None
    weights: dict | None = None
    per_k: list | None = None


# A remembered inspection is followed only from the directory it was made in, and for this long.
LAST_INSPECTION_MAX_AGE_HOURS = 24


def weight_file_hashes(ckpt) -> dict[str, str] | None:
    """sha256 of the checkpoint's weight files by name (remembered ones are not read again,
    see `digests`); None for a Hub snapshot (its revision names it)."""
    if ckpt.revision:
        return None
    from headscope.digests import file_hashes

    return file_hashes(ckpt.weight_files)


def remember_inspection(report: Report, source_files: dict[str, str] | None = None) -> None:
    """Record `report` for a following `fix` without MODEL, with its statistics and the
    `source_files` hashes they were measured on. The record is a convenience: when it cannot be
    written (an unwritable HEADSCOPE_CACHE) a HeadscopeWarning says so and nothing is raised."""
    import warnings

    from headscope import fileio
    from headscope.errors import HeadscopeWarning, OutputWriteError
    from headscope.report import to_dict

    rec = report.recommendation
    state = LastInspection(source=report.model.source, revision=report.model.revision,
                           k=rec.k if rec else None, rule=rec.rule if rec else None,
                           scale_bias=rec.scale_bias if rec else False,
                           created=report.created, cwd=os.getcwd(),
                           weights_only=report.model.weights_only,
                           source_files=source_files, weights=to_dict(report.weights),
                           per_k=to_dict(report.per_k))
    path = state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_text(path, json.dumps(state.__dict__) + "\n")
    except (OSError, OutputWriteError) as exc:
        reason = exc.reason if isinstance(exc, OutputWriteError) else (exc.strerror or str(exc))
        warnings.warn(HeadscopeWarning(
            f"could not record this inspection in {path} ({reason}); the report is complete, "
            "but `headscope fix` without MODEL will not follow it (pass MODEL, or set "
            "HEADSCOPE_CACHE to a writable folder)."), stacklevel=2)


def last_inspection() -> LastInspection:
    """The remembered inspection, if it was made in the current working directory less than
    LAST_INSPECTION_MAX_AGE_HOURS ago; else InputError saying to pass MODEL."""
    from datetime import datetime, timezone

    path = state_file()
    if not path.exists():
        raise InputError(
            "No model given and no earlier inspection to follow; pass MODEL, or run "
            "`headscope inspect MODEL` first."
        )
    try:
        last = LastInspection(**json.loads(path.read_text(encoding="utf-8")))
        created = datetime.fromisoformat(last.created.replace("Z", "+00:00"))
        if created.tzinfo is None:
            raise ValueError(f"created {last.created!r} has no time zone")
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(
            f"The record of the last inspection ({path}) is unreadable ({exc}); pass MODEL "
            "explicitly or run `headscope inspect MODEL` again."
        ) from exc
    here = os.getcwd()
    if os.path.realpath(last.cwd) != os.path.realpath(here):
        raise InputError(
            f"The last `headscope inspect` ({last.source}) was run in {last.cwd}, not in this "
            "directory; pass MODEL to say which checkpoint to fix."
        )
    age_h = (datetime.now(timezone.utc) - created).total_seconds() / 3600
    if not -0.1 <= age_h <= LAST_INSPECTION_MAX_AGE_HOURS:
        when = "dated in the future" if age_h < 0 else f"{age_h:.0f} hours old"
        raise InputError(
            f"The last `headscope inspect` ({last.source}) is {when} (it is followed for "
            f"{LAST_INSPECTION_MAX_AGE_HOURS} hours); pass MODEL, or run `headscope inspect "
            "MODEL` again."
        )
    return last

