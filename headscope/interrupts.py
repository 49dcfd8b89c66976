"""SIGTERM, SIGHUP and Ctrl-C raise in the main thread at a moment where raising is safe.

Python runs a signal handler between two bytecodes of the main thread, wherever that thread is,
and Ctrl-C stops a program by raising there. That is unsafe when the bytecode belongs to Python
code that torch's C++ called: an import that torch's extension runs while it initialises, a
function mode, an operator written in Python. The exception then crosses C++ that cannot carry
it and the process aborts (std::terminate, SIGABRT) instead of cleaning up. Seen in `fix`: a
SIGTERM during the import of `torch.distributed` (1 of 69 signals sent in the first 1.5 s of
a fix on a loaded machine), a SIGHUP on the CI machine (`python_error`). Or the code it lands in
swallows it: 4 of 150 SIGTERMs sent during torch's import were raised inside `typing` code that
the import ran, lost there, and the process went on to exit 0
(`benchmarks/bench_signals.py --import-torch`).

So the handler raises `errors.Terminated` only when no frame of the main thread's stack belongs
to torch (its imports included). Otherwise the signal waits: a thread looks at the main
thread's stack every `RETRY_S` and, once it is clear, sends the signal again, which the handler
judges anew. A signal so waits at most until the call into torch (a forward pass, a model's
loading, its import) returns; in a training loop, until the step's forward and backward
passes are done.

The first signal is the one raised; the ones after it are ignored so that the cleanup can
finish.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

from headscope.errors import Terminated

# Ctrl-C too: KeyboardInterrupt raised inside torch's callbacks aborts the same way.
HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, name))
RETRY_S = 0.002

# Packages whose Python code torch's C++ calls back into (functorch ships with torch). An
# import of torch or of one of its modules runs under a frame of torch's own (its __init__).
_NATIVE_PACKAGES = ("torch", "functorch")

_pending: int | None = None  # a signal waiting for a safe moment
_over = False  # the command is unwinding, or has ended: later signals are ignored
_redelivering: threading.Thread | None = None


def install() -> dict[int, object]:
    """Handle the signals with `handler` from now on (the main thread only: Python runs
    handlers there); a signal still waiting (it came before, inside torch) stays pending.
    Returns the previous handlers (for `restore`); {} outside the main thread."""
    global _over
    if threading.current_thread() is not threading.main_thread():
        return {}
    _over = False
    return {sig: signal.signal(sig, handler) for sig in HANDLED}


def restore(previous: dict[int, object]) -> None:
    """The command is over: a signal still waiting is dropped (the work it would stop is done,
    and raising now would report a stop of work that finished), `handler` ignores the ones
    after it, and the handlers `install` returned are put back."""
    global _pending, _over
    if not previous:  # `install` outside the main thread: nothing was installed
        return
    _pending, _over = None, True
    for sig, old in previous.items():
        signal.signal(sig, old)  # type: ignore[arg-type]


def ignore() -> None:
    """From now on the signals are ignored (the process is over: its outputs are written and
    its exit code is known); a pending one is dropped."""
    global _pending, _over
    _pending, _over = None, True
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN)


def handler(signum: int, frame: FrameType | None) -> None:
    """Raise `Terminated` for the first signal now if the main thread's stack is clear of
    torch, else leave it pending and make sure it is delivered again."""
    global _pending
    if _over:  # the command is unwinding or has ended (a signal sent again arriving late)
        return
    first = _pending if _pending is not None else signum
    if in_native_callbacks(frame):
        _pending = first
        _redeliver_soon()
        return
    ignore()  # a second signal waits: the first one's unwinding finishes
    raise Terminated(first)


def in_native_callbacks(frame: FrameType | None) -> bool:
    """Whether any frame from `frame` outwards runs torch's Python code (its imports
    included), where C++ may be between a frame and its caller."""
    roots = _native_roots()
    if not roots:
        return False
    while frame is not None:
        if frame.f_code.co_filename.startswith(roots):
            return True
        frame = frame.f_back
    return False


def _native_roots() -> tuple[str, ...]:
    """The folders of the packages in `_NATIVE_PACKAGES` that are imported (or being
    imported); read from sys.modules, nothing imported."""
    roots = []
    for name in _NATIVE_PACKAGES:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            roots.append(os.path.dirname(path) + os.sep)
    return tuple(roots)


def _redeliver_soon() -> None:
    """Start the thread that delivers the pending signal again, unless it runs."""
    global _redelivering
    if _redelivering is not None and _redelivering.is_alive():
        return
    _redelivering = threading.Thread(target=_redeliver, name="headscope-signal", daemon=True)
    _redelivering.start()


def _redeliver() -> None:
    """Every RETRY_S while a signal is pending: when the main thread's stack is clear, send it
    the signal again (a real one wakes a blocking call, a thread's join; the handler judges
    the stack again when it runs)."""
    import time

    main = threading.main_thread().ident
    assert main is not None
    while _pending is not None:
        time.sleep(RETRY_S)
        signum = _pending
        frame = sys._current_frames().get(main)
        if signum is None or frame is None or in_native_callbacks(frame):
            continue
        del frame
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(main, signum)
        else:  # Windows: runs the handler at the main thread's next bytecode
            import _thread

            _thread.interrupt_main(signal.Signals(signum))
