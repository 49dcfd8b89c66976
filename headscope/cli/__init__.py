"""Command line. Each command parses flags, calls one library verb, renders, exits.

Exit codes: `errors.EXIT_CODES` (0 ok, 1 check failed, 2 usage or input error, 3 internal
error; 129 hung up, 130 interrupted, 143 terminated): each signal unwinds like Ctrl-C, so
temporary files are removed. The `headscope` command enters through `headscope.__main__.run`,
which handles signals before this package is imported and leaves with the signal's code.
Data goes to stdout; progress and messages go to stderr. `HEADSCOPE_DEBUG=1` shows tracebacks.
This is the only package that imports click; torch is imported only by the commands that need
it.

The rooms: `plumbing` (the consoles, signals, error lines, progress, JSON output), `options`
(flag parsers and the option groups several commands share), `group` (the click group: one-line
usage errors, lazily built commands) and `verbs` (the commands themselves, in workflow order).
"""

from __future__ import annotations

import headscope.cli.verbs  # noqa: F401 - defining the commands registers them
from headscope.cli.group import commands, main

__all__ = ["commands", "main"]
