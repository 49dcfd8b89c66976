"""The sha256 of a weight file, read once per version of the file.

`fix` records the sha256 of every source weight file (provenance), and `inspect` records it
with the statistics a following `fix` may reuse. Hashing BERT-base's 440 MB costs about 0.4 s
of CPU, a quarter of all the CPU work of its `fix` (docs/benchmarks.md). A digest is therefore
remembered in headscope's cache, one small JSON file per file (``sha256/<device>-<inode>.json``),
beside the file's identity when it was read: device, inode, size, modification time and change
time, all in nanoseconds. A file whose identity is unchanged is not read again; any write to it,
any rename over it, any `touch` or `chmod`, changes its change time (which no user can set) and
it is read again.

A file changed within the clock's tick of its last change keeps the same change time, so a digest
is remembered only for a file whose last change is more than `SETTLED_NS` older than the reading
(git calls such index entries "racily clean" and re-reads them the same way); a file just written
is read every time until it has settled. A cache that cannot be read or written is passed over:
the digest is then computed, never guessed.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import suppress
from pathlib import Path

from headscope import fileio
from headscope.errors import OutputWriteError

# A digest is remembered only when the file's last change is this much older than the reading:
# longer than any file system's timestamp granularity (2 s on FAT).
SETTLED_NS = 3_000_000_000

_HEX = re.compile(r"[0-9a-f]{64}")
_ENTRY_MAX_BYTES = 4096  # an entry is about 150 bytes; anything larger is not one of ours


def folder() -> Path:
    """Where the digests are remembered: sha256/ in headscope's cache (HEADSCOPE_CACHE)."""
    from headscope.assets import cache_root

    return cache_root() / "sha256"


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _entry(st: os.stat_result) -> Path:
    return folder() / f"{st.st_dev}-{st.st_ino}.json"


def _remembered(entry: Path, identity: dict[str, int]) -> str | None:
    try:
        with entry.open("rb") as fh:
            raw = fh.read(_ENTRY_MAX_BYTES + 1)
        data = json.loads(raw) if len(raw) <= _ENTRY_MAX_BYTES else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in identity.items()):
        return None
    digest = data.get("sha256")
    return digest if isinstance(digest, str) and _HEX.fullmatch(digest) else None


def _remember(entry: Path, identity: dict[str, int], digest: str) -> None:
    with suppress(OSError, OutputWriteError):  # a cache: when it cannot be written, pass it by
        entry.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_text(entry, json.dumps({**identity, "sha256": digest}) + "\n", sync=False)


def sha256(path: fileio.PathLike) -> str:
    """The sha256 (hex) of the file at `path` (links followed): remembered when the file's
    identity is unchanged since it was last read, else read (and remembered once settled)."""
    before = os.stat(path)
    entry, identity = _entry(before), _identity(before)
    digest = _remembered(entry, identity)
    if digest is not None:
        return digest
    started = time.time_ns()
    digest = fileio.sha256_file(path)
    after = os.stat(path)
    settled = max(before.st_mtime_ns, before.st_ctime_ns) < started - SETTLED_NS
    if settled and (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino) and \
            _identity(after) == identity:
        _remember(entry, identity, digest)
    return digest


def file_hashes(paths) -> dict[str, str]:
    """{file name: sha256} of `paths` (a checkpoint's weight files)."""
    return {Path(p).name: sha256(p) for p in paths}
