"""The commands, in the order of a workflow: inspect, fix, demo, compare, report, then the
lazily built confirm, sweep and check. Each parses its flags, calls one library verb, renders
and exits."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace

import click

from headscope.api import FixOptions  # api.fixing alone: headscope.api imports on first use
from headscope.cli.group import lazy_command, main
from headscope.cli.options import (
    confirm_options_from,
    default_of,
    flag_given,
    load_options,
    load_opts,
    parse_bands,
    parse_ks,
    parse_weights,
    policy_flags,
    probe_config_from,
    probe_options,
    refuse_probe_flags_with_weights_only,
    training_options,
)
from headscope.cli.plumbing import (
    emit_json,
    handle_errors,
    json_lines,
    progress_bar,
    quiet_transformers,
    say_modules,
    stderr,
    stdout,
    writable,
)
from headscope.errors import EXIT_CHECK_FAILED, EXIT_OK
from headscope.recommend import RULES
from headscope.rescale import STRATEGIES
from headscope.simulate import WHERE

# check judges one model at a time against a policy: no --reference, so no reference rule.
CHECK_RULES = tuple(r for r in RULES if r != "reference")


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
@click.option("--rule", type=click.Choice(RULES), default="shipped",
              show_default=True, help="How k is chosen: shipped is the rule headscope's "
              "out-of-sample calibration chose (the bands while its verdict is pending; see "
              "docs/calibration.md); bands, paper and reference on request.")
@click.option("--reference", default=None, help="Checkpoint whose k=1 statistics to match.")
@click.option("--band", "band_specs", multiple=True, metavar="METRIC=LOW:HIGH",
              callback=lambda c, p, v: parse_bands(v),
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
        refuse_probe_flags_with_weights_only()
    options = api.InspectOptions(weights_only=weights_only, probe_file=probe_file, rule=rule,
                                 reference=reference)
    probe_config = probe_config_from(ks, n_pairs, batch_size, scale_bias)
    if fast:
        probe_config = (replace(fast_config(probe_config), n_pairs=n_pairs)
                        if flag_given("n_pairs") else fast_config(probe_config))
    load = load_opts(revision, dtype, device, trust_remote_code, weights_only)
    if len(models) > 1:
        reports = api.inspect_many(models, load_options=load, options=options)
        say_modules(models, revision)  # once every model was read (errors name their model)
    else:
        say_modules(models, revision)
        # Weights-only reports no progress (it reads a few tensors): no bar to import.
        with nullcontext() if weights_only else progress_bar() as progress:
            reports = (api.inspect(models[0], load_options=load, probe_config=probe_config,
                                   options=options, bands=band_specs, progress=progress),)
    if json_dest != "-":
        from headscope import render

        for rep in reports:
            stdout.print(render.report_view(rep))
    emit_json(report.dumps(reports[0]) if len(reports) == 1 else
               json_lines(report.to_dict(r) for r in reports), json_dest)
    if len(reports) == 1:  # recorded for `fix` only once every output was written
        api.remember_inspection(reports[0])


@main.command()
@click.argument("model", required=False)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (must be new or empty; see --overwrite).")
@click.option("--k", "k", type=float, default=None,
              help="Divisor of the head projection. Default: the recommended k.")
@click.option("--strategy", type=click.Choice(STRATEGIES),
              default=default_of(FixOptions, "strategy"), show_default=True,
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
              "sentence-transformers: SparseEncoder(OUT) then loads it. A SparseEncoder folder "
              "(modules.json) keeps its own layout without it: the flag then adds nothing.")
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
    A sentence-transformers folder (modules.json) is fixed at its MLM module and written back
    in its own layout, every other file kept, so SparseEncoder(OUT) loads as the source did.
    """
    from headscope import api, render

    writable(json_dest)
    options = api.FixOptions(k=k, strategy=strategy, scale_bias=scale_bias, dry_run=dry_run,
                             overwrite=overwrite, force=force, push_to_hub=push_to_hub,
                             sparse_encoder=sparse_encoder)
    with progress_bar() as progress:
        outcome = api.fix(model, out, options=options,
                          load_options=load_opts(revision, dtype, device, trust_remote_code),
                          probe_config=probe_config_from(None, n_pairs, None, None),
                          progress=progress)
    stderr.print(outcome.note, markup=False)
    if outcome.result is not None and outcome.result.skipped:
        stderr.print(f"Not copied from {outcome.source}: {'; '.join(outcome.result.skipped)}",
                     markup=False)
    if json_dest != "-" and outcome.needed:
        stdout.print(render.fix_view(outcome))
    emit_json(json.dumps(api.fix_summary(outcome), indent=2), json_dest)


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

    quiet_transformers()
    confirm_options = None
    if run_confirm:
        confirm_options = api.ConfirmOptions() if steps is None else api.ConfirmOptions(
            steps=steps)
    with progress_bar() as progress:
        outcome = api.demo(probe_config=probe_config_from(None, n_pairs, None, None), where=where,
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
    A SparseEncoder folder is read at its MLM module (a line on stderr names it).
    """
    from headscope import api, render

    writable(json_dest)
    models = [s for s in sources if not (s.endswith(".json") and os.path.isfile(s))]
    if models:
        quiet_transformers()
    say_modules(models, revision)
    with progress_bar() as progress:
        reports = api.compare(list(sources),
                              load_options=load_opts(revision, dtype, device,
                                                      trust_remote_code),
                              probe_config=probe_config_from(ks, n_pairs, batch_size, scale_bias),
                              options=api.InspectOptions(probe_file=probe_file),
                              progress=progress)
    labels = api.compare_labels(reports, sources)
    if json_dest != "-":
        stdout.print(render.compare_table(reports, labels))
        legend = render.finding_legend(reports)
        if legend is not None:
            stdout.print(legend)
    emit_json(json.dumps(api.compare_summary(reports, labels), indent=2), json_dest)


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


def _train(json_dest, kw: dict, verb: Callable, model: str) -> None:
    """confirm / sweep: refuse unwritable outputs, run `verb(options, progress)`, report."""
    writable(json_dest, kw.get("figure"))
    writable(kw.get("log"), parents=True)
    quiet_transformers()
    from headscope import api

    main_rank = api.is_main_process()
    if not main_rank:  # another rank of a torchrun / accelerate launch: rank 0 speaks for all
        from headscope.trainer_callback import quiet_other_ranks

        quiet_other_ranks()
    else:
        say_modules([model])  # confirm and sweep take no --revision: the Hub's main
    with progress_bar() if main_rank else nullcontext() as progress:
        outcome = verb(confirm_options_from(kw), progress)
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
    emit_json(json.dumps(api.training_summary(outcome), indent=2), json_dest)


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
            model, k=k, fixed=fixed, options=options, progress=progress), model)

    return confirm


@lazy_command("sweep")
def _sweep_command() -> click.Command:
    @click.command()
    @click.argument("model")
    @click.option("--k", "ks", default=None,
                  callback=lambda c, p, v: None if v is None else parse_ks(v),
                  help="Divisors to train, comma-separated [default: 1,2,4,8,16; with "
                  "--flops-weight: the recommended k].")
    @click.option("--flops-weight", "flops_weights", default=None, metavar="LIST",
                  callback=lambda c, p, v: None if v is None else parse_weights(v),
                  help="FLOPS weights λd to train at one k, comma-separated (λq = λd / 20, "
                  "the paper's ratio; the default λd is 0.001): one arm per weight.")
    @training_options
    @handle_errors
    def sweep(model, ks, flops_weights, json_dest, **kw):
        """The same short training for each k: loss curves like the paper's figure."""
        from headscope import api

        _train(json_dest, kw, lambda options, progress: api.sweep(
            model, ks, options=options, progress=progress, flops_weights=flops_weights),
               model)

    return sweep


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
    @click.option("--rule", type=click.Choice(CHECK_RULES), default="shipped",
                  show_default=True, help="How the checked k is chosen, as inspect --rule: "
                  "shipped (the calibration's verdict), bands (the probe's measured k: what "
                  "max_k guards best) or paper. Not with --report, whose rule is recorded.")
    @policy_flags
    @probe_options
    @click.option("--json", "json_dest", default=None, metavar="PATH|-",
                  help="Write the check result as JSON to PATH, or stdout with '-'. Several "
                  "MODELs: JSON Lines, one result per line.")
    @handle_errors
    def check(models, report_path, policy_path, weights_only, rule, probe_file, ks, n_pairs,
              batch_size, scale_bias, json_dest, **policy):
        """CI guard: exit 0 when MODEL (or --report) meets the policy, 1 when it does not.

        With --weights-only, several MODELs may be given (a model-zoo scan): one PASS/FAIL line per
        model on stderr; exit 1 when any fails, 2 when any cannot be read (naming it). A
        weights-only check refuses (exit 2) the keys it cannot judge: the per-k maxima,
        require_passing_k, and max_k when the weights-only k can differ from the full
        inspection's (the paper rule standing in for the bands; a constant rule, or --rule paper
        while the shipped verdict is not the bands, is judged).
        """
        from headscope import api

        writable(json_dest)
        if weights_only:
            refuse_probe_flags_with_weights_only()
        if report_path is not None and flag_given("rule"):  # even the default, said aloud
            from headscope.api.inspecting import refuse_rule_with_report

            refuse_rule_with_report(rule)
        overrides = {k: (tuple(v) if isinstance(v, tuple) else v) for k, v in policy.items()
                     if v is not None and v != ()}
        options = api.InspectOptions(weights_only=weights_only, probe_file=probe_file, rule=rule)
        if models:
            quiet_transformers(lazily=weights_only)
        if len(models) > 1 and report_path is None:
            outcomes = api.check_many(models, policy_path=policy_path, overrides=overrides,
                                      options=options)
            say_modules(models)  # once every model was read (errors name their model)
            for o in outcomes:
                failed = ", ".join(r.name for r in o.result.failed)
                stderr.print(f"PASS {o.report.model.source}" if o.result.passed
                             else f"FAIL {o.report.model.source} ({failed})", markup=False)
        else:
            say_modules(models)
            with nullcontext() if weights_only else progress_bar() as progress:
                probe_config = (probe_config_from(ks, n_pairs, batch_size, scale_bias) if models
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
        emit_json(json.dumps(payloads[0], indent=2) if len(payloads) == 1 else
                   json_lines(payloads), json_dest)
        sys.exit(EXIT_OK if all(o.result.passed for o in outcomes) else EXIT_CHECK_FAILED)

    return check

