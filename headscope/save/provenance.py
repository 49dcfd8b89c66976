"""headscope.json, the provenance of a written checkpoint: its writer and its readers together.

It records what was written, from what (the source, its revision or its files' sha256), by which
strategy and k, how it verified, and every file written (what a later --overwrite may replace).
A fix of a fixed checkpoint keeps the previous record under "previous", so the ks of a chain
multiply (`fixed_k`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headscope import __version__
from headscope.errors import InputError
from headscope.save.background import in_background

if TYPE_CHECKING:
    from headscope.rescale import RescaleSpec
    from headscope.save.plan import Plan
    from headscope.save.verify import Verification

PROVENANCE_FILE = "headscope.json"


def hash_in_background(paths: Sequence[Path]) -> Callable[[], dict[str, str]]:
    """sha256 of `paths` on a thread (remembered ones are not read again, see `digests`):
    {file name: hex} when the returned function is called."""
    from headscope.digests import file_hashes

    return in_background(lambda: file_hashes(paths), "headscope-sha256")


def jsonable(value: Any, what: str) -> Any:
    if value is None:
        return None
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be JSON-serialisable (a dict of numbers and strings, or "
                         f"a dataclass of them): {err}.") from err


def read_provenance(folder: Path) -> Any:
    """The JSON value of `folder`'s headscope.json; None when it is missing or not JSON."""
    try:
        return json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fixed_k(folder: str) -> float:
    """The k a folder written by `fix` was rescaled by, from its provenance (headscope.json);
    a fix of a fixed checkpoint multiplies the ks of the chain."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{folder} has no {PROVENANCE_FILE}, so its k is unknown; pass a folder written by "
            "`headscope fix`, or rescale MODEL in memory with --k K instead of --fixed."
        ) from None
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); re-create {folder} with "
                         "`headscope fix`, or use --k K instead of --fixed.") from None
    k = 1.0
    entry = provenance
    while isinstance(entry, dict):
        value = entry.get("k")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InputError(f"{path} records no positive k ({value!r}); re-create {folder} "
                             "with `headscope fix`, or use --k K instead of --fixed.")
        k *= float(value)
        entry = entry.get("previous")
    return k


def provenance_record(ckpt, spec: RescaleSpec, plan: Plan, verification: Verification,
                source_files: dict[str, str] | None, before: Any, after: Any,
                files: Sequence[str]) -> dict[str, Any]:
    """headscope.json: what was written, from what, and how it verified."""
    previous = read_provenance(ckpt.root)
    record: dict[str, Any] = {
        "headscope_version": __version__,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "source": ckpt.source,
        "source_path": str(ckpt.root),
        "source_revision": ckpt.revision,
        "source_files": source_files,
        "model_type": ckpt.model_type,
        "k": spec.k,
        "strategy": spec.strategy,
        "scale_bias": spec.scale_bias,
        "tie_word_embeddings": plan.tied_out,
        "changed_tensors": list(verification.tensors_changed),
        "verification": asdict(verification),
        "stats_before": before,
        "stats_after": after,
        "previous": previous,
        "files": list(files),  # every file written: what a later --overwrite may replace
    }
    if ckpt.module is not None:  # a sentence-transformers folder: which module was fixed
        record["module"] = ckpt.module.path
    return record
