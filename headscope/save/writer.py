"""The byte-exact safetensors writer: a plan's entries streamed into files.

Tensors keep the source file's order (when that keeps each aligned to its element size), so a
safetensors source's unchanged tensors are copied as a few long byte ranges, in the kernel where
it can (copy_file_range), never held in memory. `write_checkpoint` writes every file of the
output folder: the weights (flushed to disk on a thread), their index when sharded, config.json
(with ``tie_word_embeddings`` explicit, so that transformers 4.x does not re-tie an untied
decoder on load) and the source's other files.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headscope import __version__, fileio
from headscope.errors import InputError
from headscope.safetensors_file import SAFETENSORS_DTYPE_BITS
from headscope.save.background import Progress, in_background
from headscope.save.plan import Entry, Plan, mlm_folder

if TYPE_CHECKING:
    from headscope.rescale import RescaleSpec

_COPY_CHUNK = 1 << 24  # 16 MiB per read when copying raw tensor bytes
INDEX = "model.safetensors.index.json"


def tensor_bytes(t) -> memoryview:
    import torch

    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def _itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype (1 for sub-byte types): its alignment."""
    return max(1, SAFETENSORS_DTYPE_BITS[dtype] // 8)


def layout(entries: list[Entry]) -> list[Entry]:
    """The order of `entries` in the data section. Their own order (the source file's, with
    tensors not stored there at the end) when it leaves every tensor aligned to its element
    size: the unchanged tensors then lie in the output as they lie in the source, and are
    copied in a few long runs. Otherwise, as safetensors itself orders them: by element size,
    largest first, then by name, which aligns every offset."""
    offset = 0
    for e in entries:
        if offset % _itemsize(e.dtype):
            return sorted(entries, key=lambda e: (-_itemsize(e.dtype), e.name))
        offset += e.nbytes
    return list(entries)


def _runs(ordered: list[Entry]) -> list[tuple[Path, int, int] | Entry]:
    """What to append, in order: (file, begin, end) byte ranges of the source, one per run of
    stored tensors that lie back to back there (in the order written), and the entries whose
    bytes come from memory (planned values, tensors of .bin sources, the model's own)."""
    runs: list[tuple[Path, int, int] | Entry] = []
    for e in ordered:
        s = e.stored
        if s is None or s.tensor is not None:
            runs.append(e)
            continue
        last = runs[-1] if runs else None
        if isinstance(last, tuple) and last[0] == s.file and last[2] == s.begin:
            runs[-1] = (s.file, last[1], s.end)
        else:
            runs.append((s.file, s.begin, s.end))
    return runs


def copy_range(file: Path, begin: int, end: int, out, on_bytes: Callable[[int], None]) -> None:
    """Append bytes [begin, end) of `file` to `out`: in the kernel (copy_file_range) where the
    platform has it, else through a buffer."""
    def ended() -> InputError:
        return InputError(f"{file} ended inside the tensor data at byte {offset}; re-download "
                          "the checkpoint.")

    offset = begin
    out.flush()
    with file.open("rb") as src:
        if hasattr(os, "copy_file_range"):
            try:
                while offset < end:
                    got = os.copy_file_range(src.fileno(), out.fileno(),
                                             min(end - offset, 1 << 30), offset)
                    if not got:
                        raise ended()
                    offset += got
                    on_bytes(got)
            except OSError:  # e.g. across file systems on old kernels: the buffer below
                pass
            out.seek(0, os.SEEK_END)
        src.seek(offset)
        chunk = bytearray(min(_COPY_CHUNK, end - offset))
        while offset < end:
            view = memoryview(chunk)[: min(end - offset, _COPY_CHUNK)]
            got = src.readinto(view)
            if not got:
                raise ended()
            out.write(view[:got])
            offset += got
            on_bytes(got)


def write_safetensors(path: Path, entries: list[Entry], metadata: dict[str, str],
                       on_bytes: Callable[[int], None]) -> int:
    """Stream `entries` into a safetensors file (in the order `layout` gives); returns the file
    size. The caller flushes it to disk (`write_checkpoint`, on a thread)."""
    ordered = layout(entries)
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for e in ordered:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for run in _runs(ordered):
            if isinstance(run, tuple):
                copy_range(*run, out, on_bytes)
            else:
                t = run.tensor if run.tensor is not None else run.stored.tensor  # type: ignore[union-attr]
                out.write(tensor_bytes(t))
                on_bytes(run.nbytes)
    return 8 + len(raw) + offset


def shard_metadata(ckpt, spec: RescaleSpec, plan: Plan) -> dict[str, str]:
    """The safetensors metadata of every written shard (and of the index)."""
    return {
        "format": "pt",
        "headscope_version": __version__,
        "headscope_source": ckpt.source,
        "headscope_k": repr(spec.k),
        "headscope_strategy": spec.strategy,
        "headscope_scale_bias": "true" if spec.scale_bias else "false",
        "headscope_tie_word_embeddings": "true" if plan.tied_out else "false",
    }


def write_checkpoint(tmp: Path, ckpt, spec: RescaleSpec, plan: Plan, copied: Sequence[str],
                      report: Progress) -> Callable[[], None]:
    """The weights (and their index when sharded), config.json and the copied files, in `tmp`:
    the masked LM's files in its folder there (`mlm_folder`), the copied ones (named relative
    to the source folder, `ckpt.root`) where they were. The weight files are flushed to disk on
    a thread while the caller verifies them; the returned function waits for that flush (and
    raises its error: a full disk may only tell then)."""
    metadata = shard_metadata(ckpt, spec, plan)
    root, tmp = tmp, tmp / mlm_folder(ckpt)
    tmp.mkdir(exist_ok=True)
    total = plan.weight_bytes
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        report("write", done, total)

    weight_map: dict[str, str] = {}
    for name, entries in plan.shards:
        write_safetensors(tmp / name, entries, metadata, on_bytes)
        weight_map.update({e.name: name for e in entries})

    def flush() -> None:
        for name, _ in plan.shards:
            fileio.fsync_file(tmp / name)

    flushed = in_background(flush, "headscope-fsync")
    if plan.sharded:
        index = {"metadata": {"total_size": total, **metadata},
                 "weight_map": dict(sorted(weight_map.items()))}
        fileio.write_text(tmp / INDEX, json.dumps(index, indent=2) + "\n", sync=False)
    config = dict(ckpt.config)
    config["tie_word_embeddings"] = plan.tied_out
    fileio.write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n",
                     sync=False)
    for name in copied:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt.root / name, root / name)
    return flushed
