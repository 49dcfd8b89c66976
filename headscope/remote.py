"""The Hugging Face Hub over HTTP, beyond the cache: a model's head read by byte ranges, and a
fixed folder pushed.

`head_only(repo_id, revision)` serves `inspect --weights-only org/name` for a model that is not
in the cache: it fetches the small files (config.json, the tokenizer files, the shard index),
each safetensors header by an HTTP Range request, and then only the byte ranges of the tensors
`heads.read_head` reads, into a temporary folder whose weight files are sparse (full size on
paper, only those ranges on disk). `checkpoint.resolve` and `heads.read_head` then work on it
unchanged, so a model-zoo scan costs megabytes, not gigabytes. Nothing is added to the
Hugging Face cache (a partial snapshot there would later pass for a complete one).

`push_folder(folder, repo_id)` uploads a folder `fix` wrote, with huggingface_hub's
`create_repo` + `upload_folder` (one commit). `check_push` refuses, before any work, what could
not be pushed.

Both talk to the endpoint huggingface_hub is configured with (`HF_ENDPOINT`) with its token.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from headscope.errors import CheckpointNotFoundError, InputError

if TYPE_CHECKING:
    from headscope.checkpoint import Checkpoint
    from headscope.st_folder import MlmModule

# Small files fetched whole (as `checkpoint` downloads them), weight files excluded.
SMALL_FILES = ("*.json", "*.txt", "*.model")
SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on a header
MERGE_GAP = 64 * 1024  # ranges closer than this are fetched in one request


def wants_ranges(source: str, revision: str | None) -> bool:
    """Whether `source` is a Hub id to read by ranges: not a local folder, not in the cache, and
    the Hub not switched off (HF_HUB_OFFLINE)."""
    from headscope import hub

    if Path(source).exists() or not hub.looks_like_hub_id(source) or hub.hub_offline():
        return False
    return hub.cached_snapshot(source, revision) is None


class _Reader:
    """GETs of one repository at one commit through huggingface_hub's session; counts bytes."""

    def __init__(self, repo_id: str, commit: str) -> None:
        self.repo_id = repo_id
        self.commit = commit
        self.bytes_read = 0
        self.requests = 0

    def get(self, filename: str, start: int | None = None, end: int | None = None) -> bytes:
        """The file, or its bytes start..end (inclusive) by a Range request."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        headers = build_hf_headers()
        if start is not None:
            headers["Range"] = f"bytes={start}-{end}"
        url = hf_hub_url(self.repo_id, filename, revision=self.commit)
        response = get_session().get(url, headers=headers, follow_redirects=True)
        hf_raise_for_status(response)
        body = response.content
        self.requests += 1
        self.bytes_read += len(body)
        if start is not None and end is not None and response.status_code != 206:
            body = body[start:end + 1]  # the server ignored the range and sent it all
        return body


def _weight_files(repo_id: str, files: dict[str, int | None], reader: _Reader,
                  under: str = "") -> list[str]:
    """The safetensors files of the repository's folder `under` ("" the root), as repository
    paths in index order; [] when it has none."""
    prefix = f"{under}/" if under else ""
    if prefix + SAFETENSORS_INDEX in files:
        index = json.loads(reader.get(prefix + SAFETENSORS_INDEX))
        shards = [prefix + s for s in dict.fromkeys(index.get("weight_map", {}).values())]
        missing = [s for s in shards if s not in files]
        if missing:
            raise CheckpointNotFoundError(
                repo_id, f"its {prefix}{SAFETENSORS_INDEX} names {missing[0]}, which the "
                "repository does not hold")
        return shards
    return [prefix + "model.safetensors"] if prefix + "model.safetensors" in files else []


def _fetch(reader: _Reader, name: str, folder: Path) -> None:
    """Write the repository file `name` (a relative POSIX path) whole into `folder`."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:  # the Hub never lists such a path
        raise InputError(f"{reader.repo_id} lists the file {name!r}, which is not a relative "
                         "path inside the repository; refusing it.")
    path = folder / pure
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(reader.get(name))


def _small_files(files: dict[str, int | None], under: str) -> list[str]:
    """The small files (SMALL_FILES) directly inside the repository's folder `under`."""
    prefix = f"{under}/" if under else ""
    return [name for name in files if name.startswith(prefix)
            and "/" not in name[len(prefix):]
            and any(fnmatch.fnmatch(name[len(prefix):], p) for p in SMALL_FILES)]


def _find_module(reader: _Reader, files: dict[str, int | None],
                 folder: Path) -> MlmModule | None:
    """The MLM module of a sentence-transformers repository, from its modules.json and its
    modules' configs (fetched into `folder` unless there already); None without modules.json."""
    from headscope import st_folder

    if st_folder.MODULES_FILE not in files:
        return None
    for name in files:
        if (name == st_folder.MODULES_FILE or PurePosixPath(name).name in
                st_folder.MODULE_CONFIGS) and not (folder / name).is_file():
            _fetch(reader, name, folder)
    return st_folder.find_mlm(folder)


def _sparse_copy_of_header(reader: _Reader, name: str, size: int | None, folder: Path) -> None:
    """Write `name` into `folder` as its 8-byte length, its header, and a hole up to its size."""
    (length,) = struct.unpack("<Q", reader.get(name, 0, 7))
    if length > MAX_HEADER:
        raise InputError(f"The safetensors header of {name} in {reader.repo_id} claims "
                         f"{length:,} bytes, more than safetensors allows; the file is damaged.")
    header = reader.get(name, 8, 8 + length - 1)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", length) + header)
        if size is not None:
            fh.truncate(size)  # a hole: no disk used until a range is written into it


def _fill(reader: _Reader, ckpt: Checkpoint, names: tuple[str, ...], folder: Path) -> None:
    """Fetch the byte ranges of tensors `names` into the sparse files, merged where close."""
    from headscope import checkpoint

    infos = checkpoint.tensor_infos(ckpt)
    by_file: dict[Path, list[tuple[int, int]]] = {}
    for name in names:
        info = infos[name]
        assert info.start is not None and info.end is not None  # safetensors
        by_file.setdefault(info.file, []).append((info.start, info.end))
    for file, ranges in by_file.items():
        merged: list[list[int]] = []
        for start, end in sorted(ranges):
            if merged and start - merged[-1][1] <= MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        rel = file.relative_to(folder).as_posix()  # the repository path
        with open(folder / rel, "r+b") as fh:
            for start, end in merged:
                if end > start:
                    fh.seek(start)
                    fh.write(reader.get(rel, start, end - 1))


@contextmanager
def head_only(repo_id: str, revision: str | None = None) -> Iterator[Checkpoint | None]:
    """The remote checkpoint with only what `heads.read_head` reads, in a temporary folder
    removed afterwards (source and revision are the Hub's); None when the masked LM has no
    safetensors weights (a pickled .bin is read whole: the caller downloads it instead).

    A sentence-transformers repository is read at its MLM module (`st_folder.find_mlm`) as a
    local folder of it is: modules.json and the modules' configs, then the module's own files."""
    from huggingface_hub import HfApi

    from headscope import checkpoint, heads, hub

    folder = Path(tempfile.mkdtemp(prefix="headscope-remote-"))
    try:
        local = None
        with hub.hub_errors(repo_id, revision):
            info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
            commit = str(info.sha)
            files = {s.rfilename: s.size for s in (info.siblings or [])}
            reader = _Reader(repo_id, commit)
            for name in _small_files(files, ""):
                _fetch(reader, name, folder)
            module = _find_module(reader, files, folder)
            if module is not None and module.path:  # the masked LM's own config, tokenizer
                for name in _small_files(files, module.path):
                    if not (folder / name).is_file():
                        _fetch(reader, name, folder)
            shards = _weight_files(repo_id, files, reader, module.path if module else "")
            if shards:
                for name in shards:
                    _sparse_copy_of_header(reader, name, files.get(name), folder)
                local = checkpoint.resolve(str(folder))  # every header checked, no tensor read
                _fill(reader, local, heads.head_tensor_names(local), folder)
        yield None if local is None else replace(local, source=repo_id, revision=commit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def module_note(repo_id: str, revision: str | None = None) -> str | None:
    """"ORG/NAME: reading the MLM module ... of modules.json." for a Hub repository that is not
    in the cache, from its modules.json and module configs (a few small files, read into a
    temporary folder and removed: nothing is cached); None when it has no modules.json."""
    from huggingface_hub import HfApi

    from headscope import hub

    folder = Path(tempfile.mkdtemp(prefix="headscope-remote-"))
    try:
        with hub.hub_errors(repo_id, revision):
            info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
            files = {s.rfilename: s.size for s in (info.siblings or [])}
            module = _find_module(_Reader(repo_id, str(info.sha)), files, folder)
        return None if module is None else f"{repo_id}: reading the {module.description}."
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------ push


def check_push(repo_id: str, *, dry_run: bool) -> None:
    """Refuse a push that cannot happen, before any work: a dry run, a malformed id, the Hub
    switched off, no token."""
    from headscope import hub

    if dry_run:
        raise InputError("--push-to-hub uploads the folder fix writes, and --dry-run writes "
                         "none; drop one of them.")
    if not hub.looks_like_hub_id(repo_id):
        raise InputError(f"--push-to-hub {repo_id!r} is not a Hub repository id of the form "
                         "org/name; pass one such as my-org/my-model-fixed.")
    if hub.hub_offline():
        raise InputError(f"--push-to-hub {repo_id} needs the Hub, but HF_HUB_OFFLINE is set; "
                         "unset it, or drop --push-to-hub and upload the folder later.")
    from huggingface_hub import get_token

    if not get_token():
        raise InputError(f"--push-to-hub {repo_id} needs a Hub token with write access: log in "
                         "with `hf auth login` or set HF_TOKEN.")


def push_folder(folder: Path, repo_id: str, *, commit_message: str) -> str:
    """Upload every file of `folder` to `repo_id` (created if absent) as one commit; the commit's
    URL. The Hub applies a commit whole or not at all."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                 commit_message=commit_message)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(
            f"The Hub refused the push to {repo_id} ({first}); the fixed model is in {folder}: "
            f"check that your token may write to {repo_id}, then upload it with "
            f"`hf upload {repo_id} {folder}`."
        ) from err
    return str(info.commit_url)

