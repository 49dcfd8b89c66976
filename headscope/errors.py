"""Typed exceptions. Every message names the thing at fault and the remedy.

The CLI maps `HeadscopeError.exit_code` to the process exit status and prints `str(error)` as one
`Error:` line; nothing else in the library prints or exits.
"""

from __future__ import annotations

# Exit codes shared by the CLI and documented in README/docs.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
# A signal ends a command with 128 + its number, after the cleanup (cli.plumbing.handle_errors).
EXIT_HUNG_UP, EXIT_INTERRUPTED, EXIT_TERMINATED = 129, 130, 143

# The one list of exit codes: README.md and docs/cli.md state it as `exit_codes_text()` words
# (a test compares both), docs/findings.md as a table with these codes.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "ok"),
    (EXIT_CHECK_FAILED, "check failed its policy"),
    (EXIT_USAGE, "usage or input error"),
    (EXIT_INTERNAL, "internal error"),
    (EXIT_HUNG_UP, "hung up (SIGHUP)"),
    (EXIT_INTERRUPTED, "interrupted (SIGINT, Ctrl-C)"),
    (EXIT_TERMINATED, "terminated (SIGTERM)"),
)


def exit_codes_text() -> str:
    """The exit codes in words: "0 ok, 1 check failed its policy, ..."."""
    return ", ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is so that it unwinds like Ctrl-C: every
    `finally` of the library runs and removes its temporary files."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stopped_message(signum: int, *, started: bool = True) -> str:
    """The one line a signal ends a command with; `started`: a command was running (its
    temporary files have been removed), else it came before any work."""
    import signal

    if not started:
        name = "Interrupted" if signum == signal.SIGINT else \
            f"Stopped by {signal.Signals(signum).name}"
        return f"{name} before any work began; nothing was written."
    if signum == signal.SIGINT:
        return "Interrupted; nothing was left half-written."
    return (f"Stopped by {signal.Signals(signum).name}; temporary files removed, nothing was "
            "left half-written.")


class HeadscopeError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = EXIT_USAGE


class InputError(HeadscopeError):
    """Bad input from the user: a path, a flag value, a file's content."""


class CheckpointNotFoundError(InputError):
    def __init__(self, source: str, reason: str = "") -> None:
        self.source = source
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"Checkpoint {source!r} was not found{detail}; pass a local directory or a Hub id "
            "that is in the Hugging Face cache."
        )


class NotCachedError(InputError):
    def __init__(self, repo_id: str, revision: str | None) -> None:
        self.repo_id = repo_id
        self.revision = revision
        rev = f" at revision {revision!r}" if revision else ""
        flag = f" --revision {revision}" if revision else ""
        super().__init__(
            f"Model {repo_id!r}{rev} is not in the Hugging Face cache and the Hub cannot be "
            f"reached; download it where the network is available (hf download {repo_id}{flag}) "
            "or pass a local directory."
        )


class UnsupportedModelError(InputError):
    """The config names no masked-LM class, or model_type cannot be determined."""


class NoMLMHeadError(InputError):
    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source} has no trained MLM head: {reason}.")


class OutputExistsError(InputError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"Output directory {path} is not empty; pass --overwrite or choose another --out."
        )


class OutputWriteError(InputError):
    """An output location cannot be written (missing or read-only folder, disk full). Whatever
    was being written is removed; an older file at the same path is left as it was."""

    def __init__(self, path: str, reason: str, remedy: str | None = None) -> None:
        self.path = path
        self.reason = reason
        remedy = remedy or "nothing was written there; free some space or choose another path"
        super().__init__(f"Cannot write {path}: {reason}; {remedy}.")


class WeightFileError(InputError):
    """A weight file (or an index entry naming one) is damaged, unsafe, or lies outside its
    checkpoint folder; nothing read it beyond its header."""


class ConfigError(InputError):
    """config.json holds a value of the wrong type or one that disagrees with the weights."""


class PolicyError(InputError):
    """A policy file or flag is malformed (unknown key, wrong type)."""


class ReportError(InputError):
    """A saved report cannot be read (not JSON, wrong schema_version, missing fields)."""


class VerificationError(HeadscopeError):
    """A written checkpoint did not reload to the expected model; nothing was kept."""

    exit_code = EXIT_INTERNAL


class HeadscopeWarning(UserWarning):
    """Something optional failed and the work carried on (e.g. the last-inspection record could
    not be saved). The CLI shows it as one `Warning:` line on stderr."""


class ModelErrors(HeadscopeError):
    """Some models of a several-model call (a model-zoo scan) failed; nothing was reported.

    `failures` pairs each failing model with its error; the CLI prints one line per model and
    exits with the highest of their exit codes.
    """

    def __init__(self, failures) -> None:
        self.failures: tuple[tuple[str, HeadscopeError], ...] = tuple(failures)
        self.exit_code = max(err.exit_code for _, err in self.failures)
        super().__init__("; ".join(f"{source}: {err}" for source, err in self.failures))


def first_line(err: BaseException) -> str:
    """The first line of an error's text (its type's name when it has none), for messages that
    quote a library's error inside one line of headscope's."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
