"""headscope.interrupts: a signal raises only where no C++ may stand between the main thread's
Python frames (never inside torch's Python code); otherwise it waits and is delivered again
once the main thread is out of it."""

from __future__ import annotations

import signal
import sys
import textwrap
import time

import pytest
import torch

from headscope import interrupts
from headscope.errors import Terminated

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


def test_frames_inside_torch_are_native_callbacks_others_are_not(tmp_path, monkeypatch):
    assert not interrupts.in_native_callbacks(sys._getframe())
    assert not interrupts.in_native_callbacks(None)

    @torch.no_grad()  # torch's Python (utils/_contextlib) calls this function
    def under_torch() -> bool:
        return interrupts.in_native_callbacks(sys._getframe())

    assert under_torch()
    # Two frames deeper, in plain code: still inside torch's call.
    assert torch.no_grad()(lambda: (lambda: interrupts.in_native_callbacks(sys._getframe()))())()

    (tmp_path / "being_imported.py").write_text(textwrap.dedent("""
        import sys
        from headscope import interrupts
        SEEN = interrupts.in_native_callbacks(sys._getframe())
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import being_imported  # type: ignore[import-not-found]

    assert being_imported.SEEN is False  # an import outside torch raises like any code


def test_a_signal_inside_torch_is_raised_once_the_main_thread_is_out_of_it():
    """Handled inside a function torch called: nothing raised there (it runs to its end);
    raised as Terminated with the first signal's number once the main thread is back in plain
    code, by a redelivered real signal (it wakes the sleep); later signals are ignored."""
    previous = interrupts.install()
    reached: list[str] = []
    try:
        @torch.no_grad()
        def busy() -> str:
            interrupts.handler(signal.SIGHUP, sys._getframe())
            interrupts.handler(signal.SIGTERM, sys._getframe())  # a second one: the first counts
            start = time.monotonic()
            while time.monotonic() - start < 0.3:  # many redelivery periods, inside torch
                pass
            return "returned"

        with pytest.raises(Terminated) as raised:
            reached.append(busy())
            start = time.monotonic()
            time.sleep(30)
        assert time.monotonic() - start < 5
        assert reached == ["returned"]
        assert raised.value.signum == signal.SIGHUP
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in interrupts.HANDLED)
        interrupts.handler(signal.SIGTERM, sys._getframe())  # after the raise: ignored
    finally:
        interrupts.restore(previous)
    assert {s: signal.getsignal(s) for s in previous} == previous


def test_a_signal_in_plain_code_raises_at_once():
    previous = interrupts.install()
    try:
        with pytest.raises(Terminated) as raised:
            interrupts.handler(signal.SIGTERM, sys._getframe())
        assert raised.value.signum == signal.SIGTERM
    finally:
        interrupts.restore(previous)


@pytest.mark.parametrize("end", ["restore", "ignore"])
def test_a_signal_still_waiting_when_the_command_ends_is_dropped(end):
    """The command's work ended inside torch with a signal pending: its end (the CLI's
    `restore` as the command returns, the entry point's `ignore`) drops it, so it is never
    raised afterwards as a stop of work that finished."""
    outer = {s: signal.getsignal(s) for s in interrupts.HANDLED}
    previous = interrupts.install()
    try:
        torch.no_grad()(lambda: interrupts.handler(signal.SIGHUP, sys._getframe()))()
        if end == "restore":
            interrupts.restore({s: interrupts.handler for s in interrupts.HANDLED})
            interrupts.handler(signal.SIGTERM, sys._getframe())  # arriving after: ignored
        else:
            interrupts.ignore()
            assert all(signal.getsignal(s) is signal.SIG_IGN for s in interrupts.HANDLED)
        time.sleep(50 * interrupts.RETRY_S)  # a redelivery would raise here
    finally:
        interrupts.restore(previous)
    assert {s: signal.getsignal(s) for s in interrupts.HANDLED} == outer


def test_a_signal_while_click_parses_reaches_the_entry_point_with_its_number(monkeypatch):
    """Raised while click resolves the command (outside the command's own handling), the
    signal is not click's "Aborted." and exit 1: it goes on to the entry point, which says
    that nothing was written and leaves with 128 + its number."""
    import headscope.cli.group as group

    def resolving(self, ctx, name):
        raise Terminated(signal.SIGHUP)

    monkeypatch.setattr(group.OneLineErrors, "get_command", resolving)
    with pytest.raises(Terminated) as raised:
        group.main.main(["fix"], prog_name="headscope")
    assert raised.value.signum == signal.SIGHUP

    def interrupted(self, ctx, name):
        raise EOFError

    monkeypatch.setattr(group.OneLineErrors, "get_command", interrupted)  # click's own Abort
    with pytest.raises(SystemExit) as left:
        group.main.main(["fix"], prog_name="headscope")
    assert left.value.code == 1


def test_a_command_started_while_a_signal_waits_still_gets_it():
    """A signal that came while the entry point imported torch (before the command) is still
    raised once the command's handler is installed and the stack is clear."""
    previous = interrupts.install()
    try:
        torch.no_grad()(lambda: interrupts.handler(signal.SIGTERM, sys._getframe()))()
        inner = interrupts.install()  # the command's handler, as the CLI installs it
        interrupts.restore({})  # a command run off the main thread installed nothing: no effect
        with pytest.raises(Terminated) as raised:
            time.sleep(30)
        assert raised.value.signum == signal.SIGTERM
        interrupts.restore(inner)
    finally:
        interrupts.restore(previous)
