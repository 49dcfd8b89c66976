"""The Hugging Face Hub over HTTP, beyond the cache: a model's head read by byte ranges, and a
fixed folder pushed.

`head_only(repo_id, revision)` serves `inspect --weights-only org/name` for a model that is not
in the cache: it fetches the small files (config.json, the tokenizer files, the shard index),
each safetensors header by an HTTP Range request, and then only the byte ranges of the tensors
`heads.read_head` reads, into a temporary folder whose weight files are sparse (full size on
paper, only those ranges on disk). `checkpoint.resolve` and `heads.read_head` then work on it
unchanged, so a model-zoo scan costs megabytes, not gigabytes. Nothing is added to the
Hugging Face cache (a partial snapshot there would later pass for a complete one). Within one
command (`session`, which the CLI opens), the listing and each small file are fetched once,
though both the line naming a sentence-transformers module (`module_note`) and the range read
ask for them.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from headscope.errors import CheckpointNotFoundError, InputError

if TYPE_CHECKING:
    from headscope.checkpoint import Checkpoint

# Small files fetched whole (as `checkpoint` downloads them), weight files excluded.
SMALL_FILES = ("*.json", "*.txt", "*.model")
SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on a header
MERGE_GAP = 64 * 1024  # ranges closer than this are fetched in one request

T = TypeVar("T")
_SESSION: ContextVar[dict[tuple, Any] | None] = ContextVar("headscope_remote", default=None)


def wants_ranges(source: str, revision: str | None) -> bool:
    """Whether `source` is a Hub id to read by ranges: not a local folder, not in the cache, and
    the Hub not switched off (HF_HUB_OFFLINE)."""
    from headscope import hub

    if Path(source).exists() or not hub.looks_like_hub_id(source) or hub.hub_offline():
        return False
    return hub.cached_snapshot(source, revision) is None


@contextmanager
def session() -> Iterator[None]:
    """One command's reads of the Hub: inside it, a repository's listing (per revision asked)
    and each whole file (per commit, whose contents never change) are fetched once, however
    many readers ask (the CLI's module line, then the range read of the same model). Outside
    a session nothing is remembered, so a long-lived process sees a branch move."""
    token = _SESSION.set({})
    try:
        yield
    finally:
        _SESSION.reset(token)


def _remembered(key: tuple, fetch: Callable[[], T]) -> T:
    """`fetch()`, or its value from earlier in this session."""
    memo = _SESSION.get()
    if memo is None:
        return fetch()
    if key not in memo:
        memo[key] = fetch()
    return memo[key]


def _listing(repo_id: str, revision: str | None) -> tuple[str, dict[str, int | None]]:
    """(commit, repository path -> size) of `repo_id` at `revision`: one request."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    return str(info.sha), {s.rfilename: s.size for s in (info.siblings or [])}


class _Reader:
    """One repository at one commit (its listing, `files`), read through huggingface_hub's
    session into the local folder `folder`; counts requests and bytes."""

    def __init__(self, repo_id: str, revision: str | None, folder: Path) -> None:
        self.repo_id = repo_id
        self.commit, self.files = _remembered(("listing", repo_id, revision),
                                              lambda: _listing(repo_id, revision))
        self.folder = folder
        self.bytes_read = 0
        self.requests = 0

    def get(self, filename: str, start: int | None = None, end: int | None = None) -> bytes:
        """The file (once per session), or its bytes start..end (inclusive) by a Range
        request."""
        if start is None:
            return _remembered(("file", self.repo_id, self.commit, filename),
                               lambda: self._get(filename, None, None))
        return self._get(filename, start, end)

    def _get(self, filename: str, start: int | None, end: int | None) -> bytes:
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

    def has(self, name: str) -> bool:
        """Whether the repository holds the file `name` (a relative POSIX path); when it does,
        the file is written whole into `folder` first (`st_folder.find_mlm` asks this)."""
        if name not in self.files:
            return False
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts:  # the Hub never lists such a path
            raise InputError(f"{self.repo_id} lists the file {name!r}, which is not a relative "
                             "path inside the repository; refusing it.")
        path = self.folder / pure
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.get(name))
        return True


def _weight_files(reader: _Reader, under: str = "") -> list[str]:
    """The safetensors files of the repository's folder `under` ("" the root), as repository
    paths in index order; [] when it has none."""
    prefix = f"{under}/" if under else ""
    files = reader.files
    if prefix + SAFETENSORS_INDEX in files:
        index = json.loads(reader.get(prefix + SAFETENSORS_INDEX))
        shards = [prefix + s for s in dict.fromkeys(index.get("weight_map", {}).values())]
        missing = [s for s in shards if s not in files]
        if missing:
            raise CheckpointNotFoundError(
                reader.repo_id, f"its {prefix}{SAFETENSORS_INDEX} names {missing[0]}, which "
                "the repository does not hold")
        return shards
    return [prefix + "model.safetensors"] if prefix + "model.safetensors" in files else []


def _small_files(files: dict[str, int | None], under: str) -> list[str]:
    """The small files (SMALL_FILES) directly inside the repository's folder `under`."""
    prefix = f"{under}/" if under else ""
    return [name for name in files if name.startswith(prefix)
            and "/" not in name[len(prefix):]
            and any(fnmatch.fnmatch(name[len(prefix):], p) for p in SMALL_FILES)]


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
    local folder of it is: modules.json and the module configs that find_mlm reads (no other
    module's files), then the MLM module's own small files and weights."""
    from headscope import checkpoint, heads, hub, st_folder

    folder = Path(tempfile.mkdtemp(prefix="headscope-remote-"))
    try:
        local = None
        with hub.hub_errors(repo_id, revision):
            reader = _Reader(repo_id, revision, folder)
            module = st_folder.find_mlm(folder, reader.has)
            under = module.path if module is not None else ""
            for name in _small_files(reader.files, under):  # config, tokenizer, index
                reader.has(name)
            shards = _weight_files(reader, under)
            if shards:
                for name in shards:
                    _sparse_copy_of_header(reader, name, reader.files.get(name), folder)
                local = checkpoint.resolve(str(folder))  # every header checked, no tensor read
                _fill(reader, local, heads.head_tensor_names(local), folder)
        yield None if local is None else replace(local, source=repo_id, revision=reader.commit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def module_note(repo_id: str, revision: str | None = None) -> str | None:
    """"ORG/NAME: reading the MLM module ... of modules.json." for a Hub repository that is not
    in the cache, from its modules.json and the module configs find_mlm reads (a few small
    files, read into a temporary folder and removed: nothing is cached; within a `session`,
    `head_only` of the same model reuses them); None when it has no modules.json."""
    from headscope import hub, st_folder

    folder = Path(tempfile.mkdtemp(prefix="headscope-remote-"))
    try:
        with hub.hub_errors(repo_id, revision):
            module = st_folder.find_mlm(folder, _Reader(repo_id, revision, folder).has)
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

