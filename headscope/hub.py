"""The Hugging Face Hub side of `checkpoint.resolve`: where the cache is, whether the network
may be used, and a Hub id's snapshot folder (from the cache first, else downloaded).

The cache location and offline switch are read from the environment at call time
(`HF_HUB_CACHE`, `HF_HOME`, `HF_HUB_OFFLINE`), so tests can point them elsewhere. Nothing here
reads a weight; `checkpoint` checks what the snapshot holds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from headscope.errors import CheckpointNotFoundError, HeadscopeError, NotCachedError

# What the network path downloads: config, tokenizer, the model card (README.md, at the root
# and in any sub-folder such as a sentence-transformers module's, which `fix` keeps) and
# safetensors weights first; .bin weights only when the repository has no safetensors. A
# snapshot cached before the card was downloaded is still complete for every read (the card is
# only kept by `fix`, which then writes headscope's section alone).
_HUB_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors", "README.md", "*/README.md")
_HUB_BIN_PATTERNS = ("pytorch_model*.bin",)

# "org/name": one slash, Hub-legal characters, not a relative path like "./x" or "../x".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import time)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and ".." not in source


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` at `revision` in the local cache, or None."""
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    if _COMMIT.match(rev):
        commit = rev
    else:
        ref = repo_dir / "refs" / rev
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
        if not _COMMIT.match(commit):  # a ref names a commit hash, never a path
            raise CheckpointNotFoundError(
                repo_id, f"{ref} does not hold a commit hash; repair or delete the cached ref"
            )
    snapshot = repo_dir / "snapshots" / commit
    # A sentence-transformers model may keep its masked LM (config.json) in a sub-folder.
    if not ((snapshot / "config.json").is_file() or (snapshot / "modules.json").is_file()):
        return None
    return snapshot


def download_snapshot(repo_id: str, revision: str | None,
                      has_weights: Callable[[Path], bool]) -> Path:
    """Fetch config, tokenizer, model card and safetensors weights of `repo_id` into the cache,
    and its .bin weights when `has_weights` finds none in that; raise on any failure."""
    from huggingface_hub import snapshot_download

    cache = str(hub_cache_dir())
    folder = Path(
        snapshot_download(
            repo_id, revision=revision, cache_dir=cache, allow_patterns=list(_HUB_PATTERNS)
        )
    )
    if not has_weights(folder):
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache, allow_patterns=list(_HUB_BIN_PATTERNS)
            )
        )
    return folder


def snapshot_folder(repo_id: str, revision: str | None,
                    has_weights: Callable[[Path], bool]) -> Path:
    """The local snapshot folder of `repo_id` at `revision`: the cached one, else downloaded
    (not when offline). `has_weights(folder)`: whether a downloaded folder holds weights."""
    cached = cached_snapshot(repo_id, revision)
    if cached is not None:
        return cached
    if hub_offline():
        raise NotCachedError(repo_id, revision)
    with hub_errors(repo_id, revision):
        return download_snapshot(repo_id, revision, has_weights)


@contextmanager
def hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """huggingface_hub's errors as headscope's, one message each, for every path that talks to
    the Hub (the snapshot download here, the range reads and the push of `remote`): a gated or
    missing repository or revision is named; any other failure (connection refused, DNS, proxy,
    HTTP 5xx) is "not cached, and the Hub could not be reached". headscope's own errors pass."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError as err:
        raise CheckpointNotFoundError(
            repo_id, "the repository is gated: accept its terms on the Hub and log in"
        ) from err
    except RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(repo_id, "no such repository on the Hub") from err
    except RevisionNotFoundError as err:
        raise CheckpointNotFoundError(
            repo_id, f"the Hub has no revision {revision!r} for it"
        ) from err
    except HeadscopeError:
        raise
    except Exception as err:  # connection refused, DNS failure, proxy, HTTP 5xx...
        raise NotCachedError(repo_id, revision) from err


def cache_blobs(root: Path) -> Path | None:
    """The `blobs/` folder of the Hugging Face cache repository whose snapshot `root` is, or
    lies in (a sentence-transformers module's sub-folder of a snapshot).

    The cache stores each file once in `models--org--name/blobs/<hash>` and links it from
    `models--org--name/snapshots/<commit>/<path>`; None when `root` is not laid out like that.
    """
    for snapshot in (root, *root.parents):
        snapshots = snapshot.parent
        repo = snapshots.parent
        if snapshots.name == "snapshots" and repo.name.startswith("models--"):
            blobs = repo / "blobs"
            return blobs.resolve() if blobs.is_dir() else None
    return None
