"""Read-side containment: every file headscope reads from a checkpoint folder lies inside it.

A downloaded checkpoint is data, not a set of instructions: an index or a symlink may name any
path. `containment` says why a name is not a regular file inside the folder (absolute, "..", a
link out, a device), allowing only a Hugging Face cache snapshot's links into its own repo's
blobs; `weight_map` reads an index with every entry checked. Never opens a weight.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from headscope import hub
from headscope.errors import WeightFileError
from headscope.fileio import read_json_object


def containment(folder: Path, name: str) -> str | None:
    """Why `name` (relative to the checkpoint folder) is not a file of the checkpoint, or None.

    A file of the checkpoint is a regular file reached through a relative path without `..`,
    that resolves (symlinks followed) inside `folder`, or, in a Hugging Face cache snapshot,
    to a blob of the same cache repository. Anything else (an absolute path, `..`, a link out
    of the folder, a device or FIFO) is refused, so a downloaded checkpoint cannot make
    headscope read, measure or copy another file. "missing" when nothing is there.
    Never opens the file.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        return "is not a file name"
    pure = PurePosixPath(name)
    if pure.is_absolute():
        return "is an absolute path"
    if ".." in pure.parts:
        return "climbs out of the folder with '..'"
    root = folder.resolve()
    try:
        real = (root / pure).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return "is a symlink loop"
    if not real.is_relative_to(root):
        blobs = hub.cache_blobs(root)
        if blobs is None or real.parent != blobs:
            return f"resolves to {real}, outside the checkpoint folder"
    if not real.exists():
        return "missing"
    if not real.is_file():
        return "is not a regular file"
    return None


def check_contained(folder: Path, name: str, what: str) -> None:
    reason = containment(folder, name)
    if reason is not None and reason != "missing":
        raise WeightFileError(
            f"{what} {reason}; headscope reads weights only from inside the checkpoint folder "
            f"{folder}: refusing it (repair the checkpoint or re-download it)."
        )


def weight_map(folder: Path, index: Path) -> dict[str, str]:
    """The index's `weight_map` (tensor name -> shard file name), every entry checked."""
    data = read_json_object(index)
    mapping = data.get("weight_map")
    if not isinstance(mapping, dict) or not mapping:
        raise WeightFileError(
            f'{index} has no "weight_map" object naming the shard of each tensor; repair the '
            "index or re-download the checkpoint."
        )
    for tensor, shard in mapping.items():
        if not isinstance(shard, str):
            raise WeightFileError(
                f"{index} maps {tensor!r} to {shard!r}, which is not a file name; repair the "
                "index or re-download the checkpoint."
            )
        check_contained(folder, shard, f"{index} maps {tensor!r} to {shard!r}, which")
    return mapping
