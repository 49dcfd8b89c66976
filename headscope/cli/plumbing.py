"""What every command shares at run time: the two consoles (made on first use), SIGTERM/SIGHUP
as interrupts, library warnings and errors as one stderr line each with the documented exit
code, the progress display, and JSON written to stdout or a file."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from headscope import interrupts
from headscope.errors import (
    EXIT_INTERNAL,
    HeadscopeError,
    HeadscopeWarning,
    ModelErrors,
    stopped_message,
)

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """A rich Console made on first use: importing rich costs more than a whole weights-only
    `inspect --json -` run spends in its own code, and that run prints through click alone."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


# Piped or redirected, rich would fall back to 80 columns and cut table cells ("-6.…"); give
# data a fixed, wide width unless a terminal or COLUMNS says otherwise (decided at import, as
# when the Console was made here).
stdout = _LazyConsole(soft_wrap=False,
                      width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
# Messages are whole lines: never wrapped (a path cut in two cannot be copied), never
# highlighted.
stderr = _LazyConsole(stderr=True, soft_wrap=True, highlight=False)



@contextmanager
def signals_as_interrupts():
    """Within the block, SIGTERM, SIGHUP and Ctrl-C raise `Terminated` in the main thread where
    raising is safe (`interrupts`); a second one is ignored so that the cleanup can finish, and
    one still waiting when the block ends is dropped (the command's work is done)."""
    previous = interrupts.install()
    try:
        yield
    finally:
        interrupts.restore(previous)


@contextmanager
def warnings_as_lines():
    """The library's HeadscopeWarnings as one `Warning:` line each on stderr (each text once);
    other warnings as Python shows them."""
    with warnings.catch_warnings():
        warnings.simplefilter("once", HeadscopeWarning)
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, HeadscopeWarning):
                stderr.print(f"Warning: {message}", markup=False, highlight=False)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        yield


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Say how the command was stopped; the exit status for it (128 + the signal number)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    stderr.print(stopped_message(signum), markup=False)
    return 128 + int(signum)


def one_line(text: str) -> str:
    """A message as one line: a multi-line exception text would break the one-line contract
    (and scripts that read stderr line by line)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def handle_errors(fn: Callable) -> Callable:
    """Map library errors to one `Error:` line and the documented exit code; SIGTERM and SIGHUP
    end a command like Ctrl-C. A command is one `remote.session`: what it reads from the Hub
    over HTTP, it fetches once."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from headscope import remote

        try:
            with signals_as_interrupts(), warnings_as_lines(), remote.session():
                return fn(*args, **kwargs)
        except HeadscopeError as exc:
            if os.environ.get("HEADSCOPE_DEBUG"):
                traceback.print_exc()
            # Several models (a zoo scan): one line per failing model, naming it.
            lines = ([f"{source}: {err}" for source, err in exc.failures]
                     if isinstance(exc, ModelErrors) else [str(exc)])
            for line in lines:
                stderr.print(f"Error: {one_line(line)}", markup=False, highlight=False,
                             soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            sys.exit(_interrupted(exc))
        except click.exceptions.ClickException:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("HEADSCOPE_DEBUG"):
                traceback.print_exc()
            stderr.print(f"Internal error: {type(exc).__name__}: {one_line(str(exc))} (set "
                         "HEADSCOPE_DEBUG=1 for the traceback, and please report it)",
                         markup=False, soft_wrap=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


@contextmanager
def progress_bar():
    """Progress on stderr, fed by the library's (phase, done, total) callback: a rich bar with
    the time left on a terminal, else plain lines (render.ProgressLines: after 2 quiet seconds,
    every 10% or 5 s, with the time left)."""
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from headscope.render import ProgressLines

    if not stderr.is_terminal:
        lines = ProgressLines()

        def plain(phase: str, done: int, total: int) -> None:
            line = lines.update(phase, done, total, time.monotonic())
            if line is not None:
                stderr.print(line, markup=False, highlight=False, soft_wrap=True)

        yield plain
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                   console=stderr.get(), transient=True)
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    with bar:
        yield update


def emit_json(payload: str, dest: str | None) -> None:
    """JSON to stdout ("-") or to a file (atomically), ending in exactly one newline."""
    payload = payload.rstrip("\n")
    if dest == "-":
        click.echo(payload)
    elif dest:
        from headscope import fileio

        fileio.write_text(dest, payload + "\n")
        stderr.print(f"JSON written to {dest}", markup=False)


def writable(*paths: str | None, parents: bool = False) -> None:
    """Refuse, before any slow work, an output file that could not be written ("-", stdout,
    and None are skipped). `parents`: missing folders will be created."""
    from headscope import fileio

    for path in paths:
        if path and path != "-":
            fileio.check_writable(path, parents=parents)


# Flags that only the probe or the bands rule read: weights-only runs neither (its k follows the


def say_modules(sources, revision: str | None = None) -> None:
    """One stderr line for each sentence-transformers folder among `sources`: which of its
    modules headscope reads (the masked LM). A Hub id that is not in the cache is asked over
    HTTP (its modules.json and module configs only)."""
    from headscope import remote
    from headscope.st_folder import module_note

    for source in sources:
        note = module_note(source, revision)
        if note is None and remote.wants_ranges(source, revision):
            note = remote.module_note(source, revision)
        if note is not None:
            stderr.print(note, markup=False, highlight=False)


def json_lines(documents) -> str:
    """Several JSON documents, one per line (JSON Lines), in the order given."""
    return "\n".join(json.dumps(d, allow_nan=False) for d in documents)



def quiet_transformers(lazily: bool = False) -> None:
    """The CLI owns the terminal: keep transformers' load reports and bars off it (only in
    commands that load a model: `check --report` must not import transformers).

    `lazily`: for paths that rarely need transformers (weights-only mode reads safetensors and
    tokenizer.json without it): set its verbosity for the case it gets imported, without
    importing it."""
    if os.environ.get("HEADSCOPE_DEBUG"):
        return
    if lazily:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # check --report runs without torch/transformers
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

