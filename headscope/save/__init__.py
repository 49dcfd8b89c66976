"""Write a fixed checkpoint: plan, write into a temporary sibling, verify, rename into place.

`save_fixed` composes the rooms of this package, each with one job:

- `plan`: which tensor goes to which output file, and with what bytes (unchanged tensors are
  copied from the source files byte for byte, changed ones recomputed in their stored dtype);
- `writer`: the byte-exact safetensors writer and the other files of the output folder;
- `verify`: the written bytes against the source and the plan, one reload and forward pass;
- `folder`: the output folder's lifecycle (refusals, temporary sibling, stale folders of killed
  runs, the atomic rename, what --overwrite may replace);
- `provenance`: headscope.json, written and read;
- `card`: README.md, the source's model card kept with a section on what headscope did;
- `background`: the work that runs on threads beside the main thread (the source files' sha256,
  the original's forward pass during the write, the flush of the weight files and the reload
  during the byte checks, which report first when they fail).

Nothing is left behind on failure, KeyboardInterrupt included.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headscope import fileio
from headscope.containment import containment
from headscope.errors import InputError
from headscope.heads import find_head
from headscope.rescale import RescaleSpec, check_applicable, rescale_model
from headscope.save.background import Progress, in_background
from headscope.save.card import CARD_FILE, model_card
from headscope.save.folder import (
    WRITING_MARKER,
    check_out,
    check_replaceable,
    foreign_files,
    out_lock,
    staging,
)
from headscope.save.plan import Plan, make_plan, mlm_folder, other_files
from headscope.save.provenance import (
    PROVENANCE_FILE,
    fixed_k,
    hash_in_background,
    jsonable,
    provenance_record,
    read_provenance,
)
from headscope.save.verify import (
    Probe,
    Verification,
    encode_texts,
    forward_pass,
    verify_model,
    verify_written,
)
from headscope.save.writer import INDEX, write_checkpoint

if TYPE_CHECKING:
    from headscope.checkpoint import LoadedModel
    from headscope.heads import Head

DEFAULT_MAX_SHARD_SIZE = 5_000_000_000  # bytes; transformers 4.x's default "5GB"

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "PROVENANCE_FILE",
    "WRITING_MARKER",
    "FixResult",
    "Progress",
    "Verification",
    "check_out",
    "check_replaceable",
    "fixed_k",
    "foreign_files",
    "out_lock",
    "read_provenance",
    "save_fixed",
]


@dataclass(frozen=True)
class FixResult:
    out: Path
    spec: RescaleSpec
    dry_run: bool  # True: nothing was written; `files` lists what would have been
    files: tuple[str, ...]  # paths relative to `out`
    weight_files: tuple[str, ...]
    skipped: tuple[str, ...]  # source files not copied (weights in other formats)
    verification: Verification
    tied: bool  # tie state of the written checkpoint
    source_weight_bytes: int
    weight_bytes: int
    largest_shard_bytes: int
    sharded: bool
    cleaned: tuple[str, ...] = ()  # stale temporary folders of killed runs removed first


def _check_arguments(loaded: LoadedModel, spec: RescaleSpec, verify_texts: Sequence[str],
                     max_shard_size: int) -> None:
    from headscope.simulate import is_simulation

    if not isinstance(spec, RescaleSpec):
        raise InputError(f"spec must be a RescaleSpec, got {type(spec).__name__}.")
    if isinstance(verify_texts, str) or not verify_texts:
        raise InputError("verify_texts must be a non-empty sequence of strings; the written "
                         "model is checked on them.")
    if max_shard_size < 1:
        raise InputError(f"max_shard_size must be >= 1 byte, got {max_shard_size!r}.")
    if is_simulation(loaded.model):
        raise InputError(
            "The loaded model is an in-memory headscope simulation; save_fixed writes from the "
            f"checkpoint files of {loaded.checkpoint.source}, which do not hold it."
        )


def _references(loaded: LoadedModel, spec: RescaleSpec, inputs: dict[str, Any], in_memory: bool
                ) -> tuple[Probe, Probe | None, Any]:
    """The original's outputs on the verification inputs, and (`in_memory`, or the tied
    strategy) the in-memory rescaled model's, with that model."""
    reference = forward_pass(loaded.model, inputs)
    if not (in_memory or spec.strategy == "tied"):
        return reference, None, None
    memory_model = copy.deepcopy(loaded.model)
    rescale_model(memory_model, spec)
    return reference, forward_pass(memory_model, inputs), memory_model


def _source_card(folder: Path) -> str | None:
    """The source's README.md, when it is a readable text file inside the folder."""
    if containment(folder, CARD_FILE) is not None:
        return None
    try:
        return (folder / CARD_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class _Names:
    """The output's files, relative to the folder the user named."""

    copied: list[str]  # copied unchanged from the source
    skipped: list[str]  # left out, each "name (why)"
    weight_files: list[str]
    files: list[str]  # everything written, headscope.json and README.md included


def _names(ckpt, plan: Plan, extra_files: dict[str, bytes]) -> _Names:
    """What the output holds. A sentence-transformers folder keeps its masked LM in the
    folder `mlm_folder(ckpt)`, whose files are written anew; its other modules' folders are
    copied whole (their weights are not the head's)."""
    mlm = mlm_folder(ckpt)
    inside = (lambda name: f"{mlm}/{name}") if mlm else (lambda name: name)
    replaced = {inside(name) for name in (*(p.name for p in ckpt.weight_files), INDEX,
                                          "pytorch_model.bin.index.json")}
    copied, skipped = other_files(ckpt.root, replaced | {CARD_FILE}, mlm=mlm,
                                  keep=ckpt.module.others if ckpt.module else ())
    copied = [name for name in copied if name not in extra_files]
    weight_files = [inside(name) for name, _ in plan.shards]
    files = sorted({*weight_files, *([inside(INDEX)] if plan.sharded else []),
                    inside("config.json"), PROVENANCE_FILE, CARD_FILE, *copied, *extra_files})
    return _Names(copied, skipped, weight_files, files)


def _result(out: Path, spec: RescaleSpec, weight_files: Sequence[str], plan: Plan,
            files: Sequence[str], skipped: Sequence[str], verification: Verification,
            dry_run: bool, cleaned: tuple[str, ...]) -> FixResult:
    return FixResult(out=out, spec=spec, dry_run=dry_run, files=tuple(files),
                     weight_files=tuple(weight_files), skipped=tuple(skipped),
                     verification=verification, tied=plan.tied_out,
                     source_weight_bytes=plan.source_bytes, weight_bytes=plan.weight_bytes,
                     largest_shard_bytes=max(sum(e.nbytes for e in entries)
                                             for _, entries in plan.shards),
                     sharded=plan.sharded, cleaned=cleaned)


def save_fixed(
    loaded: LoadedModel,
    spec: RescaleSpec,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    dry_run: bool = False,
    verify_texts: Sequence[str],
    stats_before: Any = None,
    stats_after: Any = None,
    progress: Progress | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    head: Head | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> FixResult:
    """Write `loaded`'s checkpoint rescaled by `spec` to `out` and verify it by reloading.

    `loaded.model` is not modified. With `dry_run` the rescale is applied to a copy in memory and
    verified there; nothing is written. `stats_before`/`stats_after` (dicts or dataclasses of
    JSON values) are stored in headscope.json. `head`: `heads.find_head(loaded)` when the
    caller has it already (found here otherwise). `extra_files` (relative path -> bytes) are
    written beside them (a SparseEncoder's layout files) and listed with the others.

    Steps: plan every output tensor; write into a temporary sibling of `out`; check the written
    bytes against the source and the plan, then reload and compare one forward pass; write the
    provenance; rename into place. Nothing is left behind on failure.
    """
    _check_arguments(loaded, spec, verify_texts, max_shard_size)
    ckpt = loaded.checkpoint
    out = Path(out).expanduser().resolve()
    check_out(ckpt.root, out, overwrite)
    before = jsonable(stats_before, "stats_before")
    after = jsonable(stats_after, "stats_after")
    report = progress or (lambda phase, done, total: None)

    head = head if head is not None else find_head(loaded)
    check_applicable(spec, family=head.layout.family, has_decoder=head.layout.decoder is not None,
                     tied=head.tied, has_norm=head.norm_weight is not None)
    # A Hub snapshot is named by its commit; a local folder by its files' hashes (provenance).
    source_hashes = None if (dry_run or ckpt.revision) else hash_in_background(ckpt.weight_files)
    plan = make_plan(loaded, head, spec, max_shard_size)
    inputs = encode_texts(loaded, verify_texts)
    extra_files = dict(extra_files or {})
    names = _names(ckpt, plan, extra_files)
    copied, skipped, weight_files, files = (names.copied, names.skipped, names.weight_files,
                                            names.files)
    mlm = mlm_folder(ckpt)

    def references() -> tuple[Probe, Probe | None, Any]:
        return _references(loaded, spec, inputs, dry_run)

    if dry_run:
        report("verify", 0, 1)
        reference, memory_ref, memory_model = references()
        verification = verify_model(memory_model, loaded, head, spec, plan, reference,
                                    memory_ref, "memory", "the rescaled model in memory")
        report("verify", 1, 1)
        return _result(out, spec, weight_files, plan, files, skipped, verification, dry_run,
                       ())

    with staging(out, ckpt.root) as stage:
        assert stage.tmp is not None
        # The original's outputs on the verification texts, computed while the files are
        # written (they do not depend on them).
        referenced = in_background(references, "headscope-reference")
        stage.pending.append(referenced)
        flushed = write_checkpoint(stage.tmp, ckpt, spec, plan, copied, report)
        verification = verify_written(stage.tmp / mlm, loaded, head, spec, plan, inputs,
                                      referenced, stage.pending, report)
        provenance = provenance_record(ckpt, spec, plan, verification,
                                       None if source_hashes is None else source_hashes(),
                                       before, after, files)
        fileio.write_text(stage.tmp / PROVENANCE_FILE, json.dumps(provenance, indent=2) + "\n",
                          sync=False)
        fileio.write_text(stage.tmp / CARD_FILE, model_card(_source_card(ckpt.root), provenance),
                          sync=False)
        for name, data in extra_files.items():
            (stage.tmp / name).parent.mkdir(parents=True, exist_ok=True)
            fileio.write_bytes(stage.tmp / name, data, sync=False)
        flushed()
        stage.install(overwrite)
    return _result(out, spec, weight_files, plan, files, skipped, verification, dry_run,
                   stage.cleaned)
