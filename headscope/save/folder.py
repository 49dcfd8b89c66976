"""The output folder's lifecycle: refuse a bad --out before any work, write into a temporary
sibling, remove what killed runs left, and rename the verified folder into place.

A temporary sibling (``.OUT.headscope-<random>``) holds a marker naming its writer while it is
written (`WRITING_MARKER`), so the next run recognises a killed run's folder and removes it.
An old output is replaced only when headscope wrote it (its headscope.json lists every file) or
it is empty, in one atomic exchange where the file system can. Nothing is left behind on any
exception, KeyboardInterrupt included (`staging`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headscope import __version__, fileio
from headscope.errors import InputError, OutputExistsError, OutputWriteError
from headscope.save.provenance import PROVENANCE_FILE, read_provenance

# Inside a temporary folder while it is being written: who writes it (a killed run's folder is
# recognised by it and removed by the next run).
WRITING_MARKER = ".headscope-writing"
_REPLACE_RULE = "--overwrite replaces only a folder headscope wrote, or an empty one"


def temp_prefix(out: Path) -> str:
    """Name prefix of the temporary siblings of `out` (being written, or an old one being
    deleted after the swap)."""
    return f".{out.name}.headscope-"


def _listing(folder: Path) -> tuple[set[str], set[str], list[str]]:
    """(files, folders, other entries: links, devices...) under `folder`, relative, POSIX."""
    files, folders, other = set(), set(), []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            other.append(rel)
        elif path.is_dir():
            folders.add(rel)
        elif path.is_file():
            files.add(rel)
        else:
            other.append(rel)
    return files, folders, other


def foreign_files(folder: Path) -> list[str] | None:
    """What in `folder` headscope did not write: None when it has no readable headscope.json
    listing its files, else the entries that list does not hold (empty: headscope's own)."""
    provenance = read_provenance(folder)
    listed = provenance.get("files") if isinstance(provenance, dict) else None
    if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
        return None
    wrote = set(listed) | {PROVENANCE_FILE}
    parents = {p.as_posix() for f in wrote for p in Path(f).parents if p.as_posix() != "."}
    files, folders, other = _listing(folder)
    return sorted(other + [f for f in files if f not in wrote] +
                  [d + "/" for d in folders if d not in parents])


def check_replaceable(out: Path) -> None:
    """Refuse (InputError) to replace a non-empty `out` that headscope did not write."""
    foreign = foreign_files(out)
    if foreign is None:
        raise InputError(
            f"Output directory {out} was not written by headscope (no {PROVENANCE_FILE} listing "
            f"its files); {_REPLACE_RULE}; choose another --out."
        )
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise InputError(
            f"Output directory {out} holds files headscope did not write ({shown}); "
            f"{_REPLACE_RULE}; move them or choose another --out."
        )


def check_out(source: Path, out: Path, overwrite: bool) -> None:
    """Refuse an `out` (resolved) that is, holds or sits inside the source, is or holds the
    working directory, is a file, is not writable, or is non-empty without `overwrite` (with
    it: not written by headscope). `api.fix` calls it before loading anything."""
    src = source.resolve()
    if out == src or src in out.parents:
        raise InputError(
            f"Output directory {out} is the source checkpoint folder {src} or inside it; "
            "choose an --out outside the source."
        )
    if out in src.parents:
        raise InputError(
            f"Output directory {out} contains the source checkpoint {src}; replacing it would "
            "delete the source; choose another --out."
        )
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise InputError(
            f"Output directory {out} is the working directory or contains it; choose a new "
            "folder for --out, e.g. --out ./fixed."
        )
    if out.exists() and not out.is_dir():
        raise InputError(f"Output path {out} is a file; choose a directory for --out.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(str(out))
        check_replaceable(out)
    fileio.check_writable_folder(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, another user's
    return True


def _is_stale(folder: Path) -> bool:
    """Whether a temporary sibling is recognisably headscope's and no longer in use: a
    folder being written whose writer is gone (its marker names a dead process of this host),
    or a complete headscope checkpoint left behind by a swap that was cut short."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    marker = folder / WRITING_MARKER
    if marker.is_file():
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
            pid, host = int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return host == socket.gethostname() and not _pid_alive(pid)
    return foreign_files(folder) == []


def _lock_holder(lock: Path) -> tuple[int, str] | None:
    """(pid, host) written in a lock file, or None when it cannot be read."""
    try:
        info = json.loads(lock.read_text(encoding="utf-8"))
        return int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold `out` for one run of fix, from before its slow work to its last exit path: a lock
    file beside it (``.OUT.headscope-lock``, naming this process and host) made with O_EXCL.
    A lock a live run holds refuses at once (InputError, exit 2); one whose process is gone
    (same host: the stale-folder rule) is removed and taken. Removed on every exit."""
    lock = out.parent / f"{temp_prefix(out)}lock"
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"headscope_version": __version__, "pid": os.getpid(),
                       "host": socket.gethostname(), "out": str(out)}) + "\n"
    taken = False  # set the moment the lock file is ours: a signal after it still removes it
    try:
        for _attempt in range(2):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                taken = True
            except FileExistsError:
                holder = _lock_holder(lock)
                if holder is not None and holder[1] == socket.gethostname() \
                        and not _pid_alive(holder[0]):
                    with suppress(FileNotFoundError):
                        lock.unlink()  # a killed run's lock
                    continue
                who = ("another headscope run" if holder is None else
                       f"headscope process {holder[0]} on {holder[1]}")
                raise InputError(
                    f"{out} is being written by {who} (lock {lock}); wait for it to finish or "
                    "choose another --out (delete the lock only if no headscope fix is "
                    "running).") from None
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            break
        else:
            raise InputError(f"Could not take the lock {lock} for {out}; try again.")
        yield
    finally:
        if taken:
            with suppress(OSError):
                lock.unlink()
        for folder in created:  # parents this run created, if still empty
            try:
                folder.rmdir()
            except OSError:
                break


def remove_stale(out: Path) -> tuple[str, ...]:
    """Remove the temporary siblings of `out` that killed runs left (see `_is_stale`). A
    headscope checkpoint set aside by an interrupted non-atomic swap is moved back to `out`
    when `out` is missing, not deleted."""
    removed = []
    prefix = temp_prefix(out)
    try:
        siblings = sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return ()
    for path in siblings:
        if not _is_stale(path):
            continue
        if path.name.startswith(prefix + "old-") and not out.exists():
            path.rename(out)  # the only copy of the previous output: put it back
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path.name)
    return tuple(removed)


def install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the verified `tmp` to `out`. An old `out` is swapped with `tmp` in one atomic step
    where the file system can (renameat2 RENAME_EXCHANGE), else set aside, replaced and put
    back on failure; it is deleted only once the new folder is in place."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.rename(tmp, out)  # replaces an empty folder in one step (POSIX)
        return
    if not overwrite:
        raise OutputExistsError(str(out))
    check_replaceable(out)  # again: it may have changed while the model was verified
    if fileio.exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return
    backup = out.with_name(f"{temp_prefix(out)}old-{uuid.uuid4().hex[:8]}")
    out.rename(backup)
    try:
        tmp.rename(out)
    except BaseException:
        backup.rename(out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file of `folder`, and the folders, to disk before it is renamed into place."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            fileio.fsync_file(path)
        elif path.is_dir():
            fileio.fsync_dir(path)
    fileio.fsync_dir(folder)


@dataclass
class Staging:
    """The temporary sibling a checkpoint is written into (`staging`)."""

    out: Path
    source: Path
    tmp: Path | None = None
    cleaned: tuple[str, ...] = ()  # stale temporary folders of killed runs removed first
    # threads running torch: joined before the folder is removed after a failure (an
    # interpreter exiting under a running forward pass aborts)
    pending: list[Callable[[], Any]] = field(default_factory=list)
    installed: bool = False

    def install(self, overwrite: bool) -> None:
        """Flush every file and folder to disk, then rename the folder into place."""
        assert self.tmp is not None
        fsync_tree(self.tmp)
        install(self.tmp, self.out, overwrite)
        self.installed = True
        with suppress(OSError):
            (self.out / WRITING_MARKER).unlink()


@contextmanager
def staging(out: Path, source: Path) -> Iterator[Staging]:
    """A fresh temporary sibling of `out` (stale ones of killed runs removed first), marked as
    being written by this process. Until `Staging.install`, any exception removes it, and the
    parents of `out` this call created; an OSError becomes OutputWriteError naming `out` (exit
    2), unless it concerns the source folder."""
    stage = Staging(out, source)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage.cleaned = remove_stale(out)
        stage.tmp = fileio.make_temp_dir(out.parent, temp_prefix(out))
        fileio.write_text(stage.tmp / WRITING_MARKER, json.dumps(
            {"headscope_version": __version__, "pid": os.getpid(), "host": socket.gethostname(),
             "out": str(out)}) + "\n")
        yield stage
    except OSError as err:
        # Disk full, a read-only or vanished folder: the user's problem, named (exit 2); the
        # finally below removes what was written.
        if isinstance(err, OutputWriteError) or (
                err.filename is not None and Path(os.fsdecode(err.filename)).is_relative_to(
                    source.resolve())):
            raise
        raise OutputWriteError(str(out), err.strerror or str(err)) from err
    finally:
        if not stage.installed:
            for join in stage.pending:
                # A forward pass still running on a thread when the interpreter exits aborts
                # it (std::terminate): wait for it, a fraction of a second, before leaving.
                with suppress(BaseException):
                    join()
            if stage.tmp is not None:
                shutil.rmtree(stage.tmp, ignore_errors=True)
            for folder in created:  # parents this call created, if still empty
                try:
                    folder.rmdir()
                except OSError:
                    break
