"""`headscope fix` stopped by a signal at spread moments: how many runs end as documented.

A signal must end `fix` with 128 + its number, one line, and nothing left beside `--out`,
whenever it comes. Rare failures (an abort when the signal lands inside Python code that
torch's C++ called) need hundreds of runs to see, too many for the test suite: this runs N
fixes of the real BERT-tiny (k = 4, a 4-pair probe), each signalled (SIGHUP and SIGTERM in
turn) at moment i * STEP modulo SPAN seconds after its lock file appears (imports, loading,
the probe, the write, the verification), optionally with a busy process on every core but one,
and counts the outcomes:

- stopped: 128 + the signal, the documented last line, nothing left beside --out;
- finished: it ended (exit 0, its folder complete) before the signal was sent or while it
  exited (then the signal is ignored);
- wrong: anything else (an abort, a traceback, a leftover), printed in full.

With --import-torch it measures the failure itself, side by side: N fresh interpreters each
import torch and transformers' masked-LM class (what every command that loads a model does
first) and get SIGTERM at a spread moment of that import, half with `headscope.interrupts`
installed and half with a handler that raises wherever the main thread is (the one before
it), in turn; it counts the runs of each that end with 143 and the ones that abort.

    python benchmarks/bench_signals.py [--runs 200] [--step 0.031] [--span 1.5] [--load]
    python benchmarks/bench_signals.py --import-torch [--runs 400] [--span 3.0] [--load]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _busy() -> None:
    while True:
        pass


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


# A child for --import-torch: its handler, then the import, then a wait the signal ends.
_CHILD = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from headscope import interrupts
from headscope.errors import Terminated

def anywhere(signum, frame):
    for sig in interrupts.HANDLED:
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)

if sys.argv[1] == "interrupts":
    interrupts.install()
else:
    signal.signal(signal.SIGTERM, anywhere)
print("ready", flush=True)
try:
    import torch
    from transformers import AutoModelForMaskedLM
    time.sleep(60)
except Terminated:
    os._exit(143)
"""


def _import_torch(args) -> int:
    """The --import-torch comparison (see the module docstring)."""
    arms = ("interrupts", "anywhere")
    counts = {arm: {"143": 0, "aborted": 0, "other": 0} for arm in arms}
    child = _CHILD.format(root=str(ROOT))
    for run in range(args.runs):
        arm = arms[run % 2]
        delay = ((run // 2) * args.step) % args.span
        proc = subprocess.Popen([sys.executable, "-c", child, arm], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=_default_signals)
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready": the handler is installed
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _stdout, stderr = proc.communicate(timeout=300)
        outcome = ("143" if proc.returncode == 143 else
                   "aborted" if proc.returncode == -signal.SIGABRT else "other")
        counts[arm][outcome] += 1
        if outcome != "143":
            print(f"run {run} ({arm}, {delay:.3f} s): exit {proc.returncode}\n"
                  f"{stderr[-2000:]}", flush=True)
    for arm in arms:
        print(f"{arm}: {args.runs // 2} imports signalled 0-{args.span} s in: "
              + ", ".join(f"{n} {name}" for name, n in counts[arm].items()))
    return 0


def _fixes(args) -> int:
    """The signalled fixes (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    from headscope import assets
    from headscope.errors import stopped_message

    source = str(assets.fetch("bert-tiny-splade"))
    counts = {"stopped": 0, "finished": 0, "wrong": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            sig = (signal.SIGHUP, signal.SIGTERM)[run % 2]
            parent = Path(tmp) / f"run{run}"
            parent.mkdir()
            proc = subprocess.Popen(
                [sys.executable, "-m", "headscope", "fix", source, "--k", "4", "--n-pairs",
                 "4", "--out", str(parent / "fixed")], cwd=ROOT, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_signals)
            while proc.poll() is None and not any(parent.glob(".fixed.headscope-*")):
                time.sleep(0.002)
            delay = (run * args.step) % args.span
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(sig)
            _stdout, stderr = proc.communicate(timeout=300)
            left = sorted(p.name for p in parent.iterdir())
            if proc.returncode == 0 and left == ["fixed"] and \
                    (parent / "fixed" / "headscope.json").is_file():
                outcome = "finished"
            elif proc.returncode == 128 + sig and not left and \
                    stderr.splitlines()[-1:] == [stopped_message(sig)] and \
                    "Traceback" not in stderr and "terminate called" not in stderr:
                outcome = "stopped"
            else:
                outcome = "wrong"
                print(f"run {run}: {sig.name} after {delay:.3f} s: exit {proc.returncode}, "
                      f"left {left}\n{stderr}", flush=True)
            counts[outcome] += 1
    print(f"{args.runs} fixes, signalled 0-{args.span} s after the lock appeared "
          f"(step {args.step} s){', other cores busy' if args.load else ''}: "
          + ", ".join(f"{n} {name}" for name, n in counts.items()))
    return 1 if counts["wrong"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--step", type=float, default=0.031)
    parser.add_argument("--span", type=float, default=1.5)
    parser.add_argument("--load", action="store_true",
                        help="keep all cores but one busy (timings of a loaded CI machine)")
    parser.add_argument("--import-torch", action="store_true",
                        help="compare the two handlers on signals during torch's import")
    args = parser.parse_args()

    hogs = [multiprocessing.Process(target=_busy, daemon=True)
            for _ in range(max(0, (os.cpu_count() or 1) - 1) if args.load else 0)]
    for hog in hogs:
        hog.start()
    try:
        return _import_torch(args) if args.import_torch else _fixes(args)
    finally:
        for hog in hogs:
            hog.terminate()


if __name__ == "__main__":
    sys.exit(main())
