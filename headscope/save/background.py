"""Work that runs beside the main thread while a checkpoint is written and verified.

What does not depend on the main thread's work runs on a thread: the sha256 of the source files
(provenance), the original's forward pass on the verification texts (during the write), the
flush of the weight files to disk and the reload with its forward pass (both during the byte
checks). What runs there releases the GIL for most of its time (hashing, fsync, torch), so on two
cores or more it overlaps with the main thread instead of adding to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

Progress = Callable[[str, int, int], None]  # (phase, done, total)
_T = TypeVar("_T")


def in_background(work: Callable[[], _T], name: str) -> Callable[[], _T]:
    """Start `work` on a thread; the returned function waits for it and returns its result, or
    raises its error."""
    import threading

    outcome: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as err:  # re-raised by the caller
            errors.append(err)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def result() -> _T:
        thread.join()
        if errors:
            raise errors[0]
        return outcome[0]

    return result
