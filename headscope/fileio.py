"""Writing files safely. Every file headscope writes goes through here.

A file is written to a uniquely named temporary sibling (``.NAME.<random>.tmp``, same folder, so
the final rename never crosses file systems), flushed to disk (fsync), then renamed over the
destination in one step: a reader finds the old file or the new one, never a partial one. The
file gets the user's umask (it is created with mode 0o666, as ``open`` does; not mkstemp's
0o600). Any failure (disk full, read-only folder, an interrupt) removes the temporary file and
leaves an older file at the destination as it was; an ``OSError`` becomes `OutputWriteError`
(exit 2) naming the destination.

`sha256_file` is the one hash of a file's bytes (the assets' pins, the calibration evidence;
`digests` remembers it for weight files). `check_writable` and `check_writable_folder` let a
command refuse an unwritable destination before any slow work; `build_folder` builds a cached
folder (an asset, a simulation) in a temporary sibling and renames it into place (`build_once`:
unless a marker file inside says it is built); `read_json_object` is the one reader of the JSON
objects headscope reads from a checkpoint folder. Standard library only (no numpy, no torch):
every layer may use it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, cast

from headscope.errors import InputError, OutputWriteError, first_line

PathLike = str | os.PathLike[str]


def umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it: set, then restore at once
    os.umask(mask)
    return mask


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def fsync_dir(folder: PathLike) -> None:
    """Make a rename inside `folder` durable (best effort: not every platform can)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: PathLike) -> None:
    """Flush a written file's data to disk (errors raised: a full disk may only say so here)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: PathLike, data: bytes, *, sync: bool = True) -> Path:
    """Write `data` to `path` atomically (temporary sibling, fsync, rename). `sync=False` leaves
    out the two fsyncs, for a file inside a folder its writer flushes as a whole before renaming
    the folder into place: each of them waits for every write in flight on the file system."""
    path = Path(path)
    tmp = _temp_sibling(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o666)
    except OSError as err:
        raise OutputWriteError(str(path), _reason(err)) from err
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise OutputWriteError(str(path), _reason(err)) from err
        raise
    if sync:
        fsync_dir(path.parent)
    return path


def write_text(path: PathLike, text: str, *, sync: bool = True) -> Path:
    """Write `text` (UTF-8) to `path` atomically (see `write_bytes`)."""
    return write_bytes(path, text.encode("utf-8"), sync=sync)


class _Writer:
    """A text file being written through `atomic_open`: write errors name the destination."""

    def __init__(self, fh: IO[str], dest: Path) -> None:
        self._fh = fh
        self._dest = dest

    def write(self, text: str) -> int:
        try:
            return self._fh.write(text)
        except OSError as err:
            raise OutputWriteError(str(self._dest), _reason(err)) from err

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as err:
            raise OutputWriteError(str(self._dest), _reason(err)) from err


@contextmanager
def atomic_open(path: PathLike, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """A text file written as a stream (e.g. telemetry, one line per step) that appears at
    `path` only when the block completes; on any exception nothing is left and an older file
    at `path` is kept. The handle offers write() and flush() (typed IO[str] for the callers
    that take a file)."""
    path = Path(path)
    tmp = _temp_sibling(path)
    try:
        fh = open(tmp, "x", encoding=encoding)  # noqa: SIM115 - closed below
    except OSError as err:
        raise OutputWriteError(str(path), _reason(err)) from err
    try:
        with fh:
            yield cast(IO[str], _Writer(fh, path))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, OutputWriteError):
            raise OutputWriteError(str(path), _reason(err)) from err
        raise
    fsync_dir(path.parent)


def make_temp_dir(parent: PathLike, prefix: str) -> Path:
    """A new folder ``parent/<prefix><random>`` with the user's umask (mkdtemp makes 0o700)."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name {prefix}* in {parent}")


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: PathLike, b: PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE): every
    reader sees one or the other at each name, never neither. False, with nothing changed,
    where the platform or the file system cannot; an OSError for any other failure."""
    import ctypes
    import errno as errno_mod
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno_mod.ENOSYS, errno_mod.EINVAL, errno_mod.EOPNOTSUPP, errno_mod.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _probe(folder: Path) -> str | None:
    """Why a file cannot be created in `folder` (None: it can). Creates and removes a probe
    file: permission bits alone miss read-only mounts for root and special file systems."""
    probe = folder / f".headscope-probe-{secrets.token_hex(6)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        return f"folder {folder} is not writable ({_reason(err)})"
    os.close(fd)
    with suppress(OSError):
        os.unlink(probe)
    return None


_ELSEWHERE = "choose another path"


def _nearest_existing(folder: Path) -> Path:
    """`folder`, or its nearest ancestor that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _refuse_unwritable(path: Path, folder: Path) -> None:
    """Refuse `path` unless `folder` (an existing path) is a folder a file can be created in."""
    if not folder.is_dir():
        raise OutputWriteError(str(path), f"{folder} is not a folder", _ELSEWHERE)
    why = _probe(folder)
    if why:
        raise OutputWriteError(str(path), why, _ELSEWHERE)


def check_writable(path: PathLike, *, parents: bool = False) -> Path:
    """Refuse (OutputWriteError) a file destination that cannot be written: its folder is
    missing (allowed with `parents`: the nearest existing ancestor must be writable), not a
    folder or not writable, or the path is a folder. Nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise OutputWriteError(str(path), "it is a folder", "choose a file path")
    parent = _nearest_existing(path.parent) if parents else path.parent
    if not parent.exists():
        raise OutputWriteError(str(path), f"folder {parent} does not exist",
                               "create it or choose another path")
    _refuse_unwritable(path, parent)
    return path


def check_writable_folder(path: PathLike) -> Path:
    """Refuse (OutputWriteError) a folder destination (created with its missing parents, or
    replaced) whose nearest existing ancestor is not a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputWriteError(str(path), "it is a file", "choose a folder")
    _refuse_unwritable(path, _nearest_existing(path.parent))
    return path


def build_once(target: PathLike, marker: str, build: Callable[[Path], object]) -> Path:
    """The folder `target`, built on first use. When `target/marker` exists it is returned as
    it is; otherwise it is built (`build_folder`). `marker` is a file every finished build
    holds. An interrupted or failed build leaves nothing."""
    target = Path(target)
    if (target / marker).exists():
        return target
    return build_folder(target, build)


def build_folder(target: PathLike, build: Callable[[Path], object]) -> Path:
    """`build(tmp)` fills a new temporary sibling of `target` (the user's umask), which then
    replaces whatever stands at `target` (an older, unfinished folder) in one rename. An
    interrupted or failed build leaves nothing, and `target` as it was."""
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target.parent, f".{target.name}-")
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def sha256_file(path: PathLike) -> str:
    """The sha256 (hex) of a file's bytes, 16 MiB at a time: memory-mapped (no copy into the
    process; each piece's pages are dropped from the mapping once hashed, so the process does
    not grow by the file's size), or read where the file cannot be mapped (an empty file)."""
    import hashlib
    import mmap

    chunk = 1 << 24
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        try:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):
            while piece := fh.read(chunk):
                digest.update(piece)
            return digest.hexdigest()
    with mapped:
        for at in range(0, len(mapped), chunk):
            size = min(chunk, len(mapped) - at)
            with memoryview(mapped)[at : at + size] as view:
                digest.update(view)
            if hasattr(mmap, "MADV_DONTNEED"):
                mapped.madvise(mmap.MADV_DONTNEED, at, size)
    return digest.hexdigest()


def read_json_object(path: PathLike) -> dict:
    """The JSON object in `path`; InputError naming the file when it is unreadable, not JSON,
    nested too deeply or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(
            f"{path} is not readable JSON ({first_line(err)}); repair or replace the file."
        ) from err
    except RecursionError:
        raise InputError(
            f"{path} is JSON nested too deeply to read; repair or replace the file."
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a JSON object; repair or replace the file.")
    return data


__all__ = ["atomic_open", "build_folder", "build_once", "check_writable",
           "check_writable_folder", "exchange", "fsync_dir", "make_temp_dir", "read_json_object",
           "sha256_file", "umask", "write_bytes", "write_text"]
