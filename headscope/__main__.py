"""The `headscope` command (the console script and `python -m headscope`).

Signals are handled from this module's first statement, before the CLI and its dependencies are
imported (about a second): SIGTERM, SIGHUP and Ctrl-C then raise `Terminated` in the main thread at
the first moment no frame of torch's is on its stack (`interrupts`), so a signal at any moment ends
the command with one line and 128 + its number (`errors.EXIT_CODES`). While a command runs,
`cli.plumbing.handle_errors` handles it (cleanup, then its line); a signal that comes before
(importing, parsing the flags) says that nothing was written. Either way the process then leaves
with `os._exit` once its output is flushed: the cleanup has run, and a normal interpreter exit
would destroy native thread pools (torch's) that may still be running, which aborts the process
(std::terminate, SIGABRT) instead of giving the documented code. Only the interpreter's own
start-up, before this module runs, is outside this (a few hundredths of a second). Once a command
has finished, the signals are ignored, and one still waiting for torch to return is dropped: the
work is done, and its exit code stands.
"""

from __future__ import annotations

import os
import signal
import sys

from headscope import interrupts
from headscope.errors import (
    EXIT_HUNG_UP,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    stopped_message,
)

_SIGNAL_EXITS = (EXIT_HUNG_UP, EXIT_INTERRUPTED, EXIT_TERMINATED)


def run() -> None:
    """Run the CLI with signals handled from the start (see the module docstring)."""
    interrupts.install()
    try:
        from headscope.cli import main

        main()
    except KeyboardInterrupt as exc:  # before a command ran: importing, parsing the flags
        signum = getattr(exc, "signum", signal.SIGINT)
        sys.stderr.write(stopped_message(signum, started=False) + "\n")
        _leave(128 + int(signum))
    except SystemExit as exc:
        if exc.code in _SIGNAL_EXITS:  # a command stopped by a signal, its cleanup done
            _leave(int(exc.code))  # type: ignore[arg-type]
        _finished()
        raise
    _finished()


def _finished() -> None:
    """The command is over (its outputs written, its code known): a signal now would only
    interrupt the interpreter's teardown, where raising aborts the process (std::terminate
    under torch's threads). It is ignored: the work it would stop is done."""
    interrupts.ignore()


def _leave(code: int) -> None:
    """Flush what was printed, then end the process without the interpreter's teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
