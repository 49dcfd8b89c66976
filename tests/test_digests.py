"""The sha256 of weight files: fileio.sha256_file against hashlib, and digests' memory of it
(read once per version of a file, never trusted for a file that changed or had not settled)."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from headscope import digests, fileio


def _reference(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [0, 1, (1 << 24) - 1, (1 << 24) + 5, 2 * (1 << 24)])
def test_sha256_file_equals_hashlib_across_the_pieces(tmp_path, size):
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(size))
    assert fileio.sha256_file(path) == _reference(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("HEADSCOPE_CACHE", str(root))
    return root / "sha256"


@pytest.fixture
def reads(monkeypatch):
    """The paths digests actually read, in order."""
    seen: list[str] = []
    real = fileio.sha256_file

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(digests.fileio, "sha256_file", counting)
    return seen


def _settled_at_once(monkeypatch):
    # A file written by the test is a few milliseconds old; production waits SETTLED_NS.
    monkeypatch.setattr(digests, "SETTLED_NS", 0)


def test_an_unchanged_settled_file_is_read_once(tmp_path, cache, reads, monkeypatch):
    _settled_at_once(monkeypatch)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights" * 1000)
    first = digests.sha256(path)
    assert first == _reference(path)
    assert digests.sha256(path) == first
    assert reads == [str(path)]
    st = path.stat()
    entry = json.loads((cache / f"{st.st_dev}-{st.st_ino}.json").read_text())
    assert entry == {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                     "ctime_ns": st.st_ctime_ns, "sha256": first}


def test_a_rewrite_that_keeps_size_and_mtime_is_read_again(tmp_path, cache, reads, monkeypatch):
    _settled_at_once(monkeypatch)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"a" * 4096)
    st = path.stat()
    old = digests.sha256(path)
    time.sleep(0.05)  # past the coarse clock's tick, as production's SETTLED_NS is
    path.write_bytes(b"b" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime cannot be
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    new = digests.sha256(path)
    assert new == _reference(path) != old
    assert len(reads) == 2


def test_a_file_replaced_by_rename_is_read_again(tmp_path, cache, reads, monkeypatch):
    _settled_at_once(monkeypatch)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"one")
    assert digests.sha256(path) == _reference(path)
    other = tmp_path / "other"
    other.write_bytes(b"two")
    os.replace(other, path)
    assert digests.sha256(path) == _reference(path)
    assert len(reads) == 2


def test_a_file_that_has_not_settled_is_read_every_time_and_not_remembered(tmp_path, cache,
                                                                            reads):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"fresh")
    assert digests.sha256(path) == digests.sha256(path) == _reference(path)
    assert len(reads) == 2
    assert not cache.exists()


def test_a_file_changed_while_read_is_not_remembered(tmp_path, cache, monkeypatch):
    _settled_at_once(monkeypatch)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"before")

    def racing(p):
        digest = hashlib.sha256(b"before").hexdigest()
        time.sleep(0.05)
        path.write_bytes(b"after!")  # same size, written during the reading
        return digest

    monkeypatch.setattr(digests.fileio, "sha256_file", racing)
    digests.sha256(path)
    assert not cache.exists()


@pytest.mark.parametrize("content", [
    b"not json", b"[1, 2]", b'{"sha256": "abc"}',
    b" " * 5000,  # larger than any entry
])
def test_a_bad_entry_is_passed_over_and_replaced(tmp_path, cache, reads, monkeypatch, content):
    _settled_at_once(monkeypatch)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    st = path.stat()
    cache.mkdir(parents=True)
    entry = cache / f"{st.st_dev}-{st.st_ino}.json"
    entry.write_bytes(content)
    assert digests.sha256(path) == _reference(path)
    assert json.loads(entry.read_text())["sha256"] == _reference(path)
    assert len(reads) == 1


def test_an_entry_of_another_identity_is_not_used(tmp_path, cache, reads, monkeypatch):
    _settled_at_once(monkeypatch)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    st = path.stat()
    cache.mkdir(parents=True)
    wrong = {"size": st.st_size + 1, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
             "sha256": "0" * 64}
    (cache / f"{st.st_dev}-{st.st_ino}.json").write_text(json.dumps(wrong))
    assert digests.sha256(path) == _reference(path)
    assert len(reads) == 1


def test_an_unwritable_cache_still_gives_the_digest(tmp_path, monkeypatch, reads):
    _settled_at_once(monkeypatch)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("HEADSCOPE_CACHE", str(blocker))
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    assert digests.sha256(path) == digests.sha256(path) == _reference(path)
    assert len(reads) == 2
    assert blocker.read_text() == "a file where the cache folder would be"


def test_file_hashes_names_each_file(tmp_path, cache):
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for i, p in enumerate(files):
        p.write_bytes(bytes([i]) * 10)
    assert digests.file_hashes(files) == {p.name: _reference(p) for p in files}


def test_the_docs_state_the_settling_time():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"last changed more than {digests.SETTLED_NS / 1e9:g} seconds before" in readme
