"""The measuring verbs: inspect (one model, several models weights-only), check (a policy
against an inspection or a saved report) and compare (several side by side)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from headscope import calibrated
from headscope.api.memory import remember_inspection
from headscope.errors import HeadscopeError, InputError, ModelErrors
from headscope.findings import (
    bias_finding,
    bias_note,
    diagnose,
    probe_fit_findings,
    serving_findings,
)
from headscope.recommend import (
    DEFAULT_BANDS,
    Band,
    Recommendation,
    bias_fallback,
    recommend,
    resolve_rule,
    weights_only_rule,
)
from headscope.report import ModelInfo, ProbeSummary, Report, make_report
from headscope.stats import WeightStats

if TYPE_CHECKING:
    from headscope.guard import CheckResult

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class InspectOptions:
    """What `inspect` measures. The CLI reads its defaults from here."""

    weights_only: bool = False
    probe_file: str | None = None
    rule: str = "shipped"  # one of recommend.RULES; "shipped": what the calibration chose
    reference: str | None = None  # checkpoint whose k=1 statistics the model should match
    # When some band is out of reach of every k with the output bias kept, also measure with
    # the bias divided and recommend that (with --scale-bias) when k then reaches more bands.
    bias_fallback: bool = True


def probe_set(probe_file: str | None, n_pairs: int):
    from headscope import probe

    if probe_file:
        return probe.load_probe_file(probe_file)
    return probe.builtin_probe(n_pairs)


def head_weight_stats(head, vocab) -> WeightStats:
    """`stats.weight_stats` of a loaded model's head (`heads.Head`), over `vocab.real_rows`."""
    from headscope import stats

    def np32(t):
        return None if t is None else t.detach().float().cpu().numpy()

    return stats.weight_stats(
        np32(head.decoder_weight),
        vocab.real_rows,
        bias=np32(head.bias),
        norm_weight=np32(head.norm_weight),
        norm_bias=np32(head.norm_bias),
        dense_weight=np32(head.dense_weight),
    )


def _model_info(ckpt, layout, vocab, weights: WeightStats, *, tied: bool, dtype: str,
                device: str, weights_only: bool, source: str | None = None) -> ModelInfo:
    from headscope.heads import found_by

    arch = (ckpt.config.get("architectures") or [None])[0]
    return ModelInfo(
        source=source or ckpt.source,
        revision=ckpt.revision,
        model_type=ckpt.model_type,
        family=layout.family,
        architecture=arch,
        dtype=dtype,
        device=device,
        n_rows=vocab.n_rows,
        n_tokenizer=vocab.n_tokenizer,
        hidden_size=weights.hidden_size,
        tied=tied,
        head_loaded=True,
        special_tokens=tuple(vocab.special_tokens),
        weights_only=weights_only,
        head_found_by=found_by(layout, weights_only=weights_only),
    )


def inspect_loaded(loaded, *, probe_config=None, options: InspectOptions = InspectOptions(),
                   bands: Sequence[Band] = DEFAULT_BANDS, reference_per_k=None,
                   source: str | None = None, progress: Progress | None = None,
                   head=None) -> Report:
    """Inspect a model already in memory (a `checkpoint.LoadedModel`). `head`: its
    `heads.find_head(loaded)` when the caller has it already (found here otherwise)."""
    from headscope import heads, probe, vocabulary

    probe_config = probe_config or probe.ProbeConfig()
    head = head if head is not None else heads.find_head(loaded)
    vocab = vocabulary.vocab_info(head.decoder_weight.shape[0], loaded.tokenizer)
    weights = head_weight_stats(head, vocab)
    if loaded.tokenizer is None:
        raise InputError(
            f"{loaded.checkpoint.source} has no tokenizer files, so probe statistics cannot be "
            "computed; add the tokenizer to the folder or pass --weights-only."
        )
    pset = probe_set(options.probe_file, probe_config.n_pairs)
    rule, constant = resolve_rule(options.rule)
    if constant is not None and constant.scale_bias and head.bias is not None:
        probe_config = replace(probe_config, scale_bias=True)  # measure the arm it recommends
    cb = (lambda done, total: progress("probe", done, total)) if progress else None
    result = probe.run_probe(loaded.model, loaded.tokenizer, head.bias, pset, probe_config, cb,
                             vocab_size=head.decoder_weight.shape[0])
    rec = recommend(result.per_k, rule=options.rule, bands=bands, weights=weights,
                    reference=reference_per_k, rescaled=rescaled_by(loaded.checkpoint))
    findings = diagnose(weights, result.per_k, vocab_fields(vocab, tied=head.tied), rec)
    if (rule == "bands" and options.bias_fallback and not probe_config.scale_bias
            and head.bias is not None):
        divided = _with_bias_divided(loaded, head, pset, probe_config, rec, weights, vocab,
                                     bands, progress)
        if divided is not None:
            result, rec, findings = divided
    unknown = probe.unknown_token_share(loaded.tokenizer, pset, probe_config)
    findings = findings + probe_fit_findings(unknown) + serving_findings(result.per_k, rec.k)
    info = _model_info(loaded.checkpoint, head.layout, vocab, weights, tied=head.tied,
                       dtype=loaded.options.dtype, device=loaded.options.device,
                       weights_only=False, source=source)
    return make_report(info, weights, probe=ProbeSummary.from_result(
                           result, unknown_token_share=unknown),
                       per_k=result.per_k, findings=findings, recommendation=rec,
                       evidence=calibrated.identify(loaded.checkpoint.weight_files))


def inspect_head(loaded, head) -> Report:
    """The head's weight statistics of a model in memory, no probe run (`fix` with k and the
    bias setting given): the weights-only report of the loaded model."""
    from headscope import heads, vocabulary

    vocab = vocabulary.vocab_info(head.decoder_weight.shape[0], loaded.tokenizer)
    weights = head_weight_stats(head, vocab)
    rec = recommend((), rule=weights_only_rule(), weights=weights,
                    rescaled=rescaled_by(loaded.checkpoint))
    findings = diagnose(weights, (), vocab_fields(vocab, tied=head.tied), rec)
    info = _model_info(loaded.checkpoint, head.layout, vocab, weights, tied=head.tied,
                       dtype=loaded.options.dtype, device=loaded.options.device,
                       weights_only=True)
    info = replace(info, head_found_by=heads.found_by(head.layout, weights_only=False))
    return make_report(info, weights, findings=findings, recommendation=rec)


def _with_bias_divided(loaded, head, pset, probe_config, rec, weights, vocab, bands,
                       progress: Progress | None):
    """The bias fallback (InspectOptions.bias_fallback; the policy is
    `recommend.bias_fallback`): once some band is out of reach of every k with the output bias
    kept, every logit tending to its bias as k grows, probe again with the bias divided too, and
    return (probe result, recommendation, findings) with the bias divided when k then reaches
    more bands (with HS208 saying why); None keeps the bias."""
    from headscope import probe

    measured = []

    def divided() -> Recommendation:
        cb = (lambda done, total: progress("probe (bias divided)", done, total)) if progress \
            else None
        measured.append(probe.run_probe(loaded.model, loaded.tokenizer, head.bias, pset,
                                        replace(probe_config, scale_bias=True), cb,
                                        vocab_size=head.decoder_weight.shape[0]))
        return recommend(measured[0].per_k, rule="bands", bands=bands, weights=weights)

    rec2 = bias_fallback(rec, divided)
    if rec2 is None:
        return None
    scaled = measured[0]
    chosen = replace(rec2, reasons=(bias_note(rec),) + rec2.reasons, scale_bias=True)
    findings = diagnose(weights, scaled.per_k, vocab_fields(vocab, tied=head.tied),
                        chosen) + (bias_finding(rec, rec2),)
    return scaled, chosen, findings


def rescaled_by(ckpt) -> float | None:
    """The k a headscope fix divided this checkpoint's head by (its headscope.json); None for
    a checkpoint headscope did not write, or whose record is unreadable."""
    from headscope.save.provenance import PROVENANCE_FILE, fixed_k

    root = getattr(ckpt, "root", None)
    if root is None or not (Path(root) / PROVENANCE_FILE).is_file():
        return None
    try:
        return fixed_k(str(root))
    except InputError:
        return None


def vocab_fields(vocab, *, tied: bool, head_loaded: bool = True) -> dict:
    """The vocabulary and head facts `diagnose` needs, as plain values."""
    return {
        "n_rows": vocab.n_rows,
        "n_tokenizer": vocab.n_tokenizer,
        "n_real_rows": int(vocab.real_rows.sum()),
        "tied": tied,
        "head_loaded": head_loaded,
    }


def inspect(source: str, *, load_options=None, probe_config=None,
            options: InspectOptions = InspectOptions(), bands: Sequence[Band] = DEFAULT_BANDS,
            progress: Progress | None = None, remember: bool = False) -> Report:
    """Load a masked-LM checkpoint, measure its head, recommend k.

    `remember=True` records the result so that a following `fix` without a model acts on it.
    """
    from headscope import checkpoint

    load_options = load_options or checkpoint.LoadOptions()
    if options.weights_only:
        _refuse_unused_with_weights_only(load_options, options)
        rule = "paper" if options.rule == "paper" else weights_only_rule()
        report = _inspect_remote_weights_only(source, load_options, rule) or \
            _inspect_weights_only(checkpoint.resolve(source, load_options.revision),
                                  load_options, rule=rule)
    else:
        ckpt = checkpoint.resolve(source, load_options.revision)
        if options.probe_file:
            probe_set(options.probe_file, 0)  # a bad probe file is refused before loading
        reference_per_k = None
        if options.rule == "reference" or options.reference:
            if not options.reference:
                raise InputError(
                    "--rule reference needs --reference CKPT (the checkpoint to match).")
            ref = inspect(options.reference, load_options=replace(load_options, revision=None),
                          probe_config=probe_config, options=InspectOptions(
                              probe_file=options.probe_file), bands=bands, progress=progress)
            reference_per_k = ref.per_k
            options = replace(options, rule="reference")
        if progress:
            progress("load", 0, 1)
        loaded = checkpoint.load(ckpt, load_options)
        if progress:
            progress("load", 1, 1)
        report = inspect_loaded(loaded, probe_config=probe_config, options=options, bands=bands,
                                reference_per_k=reference_per_k, progress=progress)
    if remember:
        from headscope.api.memory import weight_file_hashes

        # A full inspection's statistics may be reused by the `fix` that follows it, on the
        # same files only.
        hashes = None if options.weights_only else weight_file_hashes(ckpt)
        remember_inspection(report, hashes)
    return report


def _refuse_unused_with_weights_only(load_options, options: InspectOptions) -> None:
    """Weights-only reads tensors from the files: no model runs, no probe is read. A flag that
    would change neither is refused, not silently ignored."""
    unused = [flag for flag, given in (
        (f"--device {load_options.device}", load_options.device != "cpu"),
        (f"--dtype {load_options.dtype}", load_options.dtype != "float32"),
        (f"--probe {options.probe_file}", bool(options.probe_file)),
        ("--reference", bool(options.reference) or options.rule == "reference"),
    ) if given]
    if unused:
        raise InputError(
            f"{', '.join(unused)} has no effect with --weights-only, which reads the head "
            "tensors from the files as stored and runs no model; drop it, or drop "
            "--weights-only to measure on that device/dtype/probe."
        )


def _inspect_remote_weights_only(source: str, load_options, rule: str) -> Report | None:
    """Weights-only of a Hub model that is not in the cache: its headers and head tensors read
    by HTTP ranges (`remote.head_only`), nothing else downloaded; None when `source` is not
    such a model or has no safetensors weights (then it is downloaded as usual)."""
    from headscope import remote

    if not remote.wants_ranges(source, load_options.revision):
        return None
    with remote.head_only(source, load_options.revision) as ckpt:
        # The files are sparse (only the header and head byte ranges were fetched): not hashed.
        return None if ckpt is None else _inspect_weights_only(ckpt, load_options, rule=rule,
                                                               identify=False)


def _inspect_weights_only(ckpt, load_options, rule: str = "paper",
                          identify: bool = True) -> Report:
    """Head tensors straight from the files: no model is instantiated, no probe is run, and for
    safetensors checkpoints neither torch nor transformers is imported. `rule`: "paper" or
    what `weights_only_rule` says; `identify`: look the weight file up among the calibration
    conditions (`calibrated.identify`)."""
    from headscope import checkpoint, heads, stats, vocabulary

    head = heads.read_head(ckpt)
    vocab = vocabulary.vocab_info(head.decoder_weight.shape[0],
                             checkpoint.read_vocabulary(ckpt, load_options))
    arrays = head.arrays
    weights = stats.weight_stats(arrays["decoder_weight"], vocab.real_rows,
                                 bias=arrays.get("bias"), norm_weight=arrays.get("norm_weight"),
                                 norm_bias=arrays.get("norm_bias"),
                                 dense_weight=arrays.get("dense_weight"))
    rec = recommend((), rule=rule, weights=weights, rescaled=rescaled_by(ckpt))
    findings = diagnose(weights, (), vocab_fields(vocab, tied=head.tied), rec)
    info = _model_info(ckpt, head.layout, vocab, weights, tied=head.tied, dtype=head.dtype,
                       device="cpu", weights_only=True)
    return make_report(info, weights, findings=findings, recommendation=rec,
                       evidence=calibrated.identify(ckpt.weight_files) if identify else None)


def _each_model(sources: Sequence[str], verb: Callable) -> tuple:
    """`verb(source)` for every source, in order. A model that fails does not stop the others:
    ModelErrors then names every failing model, and nothing is returned."""
    if not sources:
        raise InputError("Pass at least one MODEL.")
    results, failures = [], []
    for source in sources:
        try:
            results.append(verb(source))
        except HeadscopeError as err:
            failures.append((source, err))
    if failures:
        raise ModelErrors(failures)
    return tuple(results)


def inspect_many(sources: Sequence[str], *, load_options=None,
                 options: InspectOptions = InspectOptions(weights_only=True)
                 ) -> tuple[Report, ...]:
    """Weights-only reports of several checkpoints (a model-zoo scan), in the order given.

    Every model is read before anything is returned; when some cannot be, ModelErrors names
    each with its error. A full inspection (probe) of several models is refused: use `compare`.
    """
    if not options.weights_only:
        raise InputError(
            f"{len(sources)} MODELs given without --weights-only; several models are inspected "
            "only from their weights (a full inspection loads each one and runs the probe): pass "
            "--weights-only, or inspect one MODEL at a time."
        )
    return _each_model(sources, lambda source: inspect(source, load_options=load_options,
                                                       options=options))



@dataclass(frozen=True)
class CheckOutcome:
    report: Report
    result: CheckResult


def check(source: str | None = None, *, report_path: str | None = None,
          policy_path: str | None = None, overrides: dict | None = None,
          search_dir: str | None = None, load_options=None, probe_config=None,
          options: InspectOptions = InspectOptions(),
          progress: Progress | None = None) -> CheckOutcome:
    """Evaluate a policy against a fresh inspection of `source`, or a saved report.

    With `report_path` nothing imports torch, so CI can re-check saved reports anywhere.
    """
    from headscope import guard
    from headscope import report as report_mod

    if (source is None) == (report_path is None):
        raise InputError("Pass either MODEL or --report R.json to check, not both or neither.")
    if report_path is not None and options.rule != InspectOptions.rule:
        refuse_rule_with_report(options.rule)
    policy = guard.load_policy(policy_path, overrides, search_dir)
    if report_path is not None:
        rep = report_mod.read_json(report_path)
        if rep.model.weights_only:
            refuse_weights_only_policy(policy, f"{report_path}, a weights-only report,",
                                       "check a report of `headscope inspect` without "
                                       "--weights-only", rule=(rep.recommendation.rule if
                                                               rep.recommendation else "paper"))
    else:
        assert source is not None
        if options.weights_only:
            refuse_weights_only_policy(policy, "--weights-only", "drop --weights-only to measure "
                                       "them", rule=options.rule)
        rep = inspect(source, load_options=load_options, probe_config=probe_config,
                      options=options, progress=progress)
    return CheckOutcome(rep, guard.evaluate(rep, policy))


def refuse_rule_with_report(rule: str) -> None:
    """InputError: a saved report's recommendation was made by the rule it records; another
    rule asked of `check --report` would change nothing, so it is refused, not ignored."""
    raise InputError(f"--rule {rule} has no effect with --report, whose recommendation was made "
                     "by the rule recorded in the report; drop --rule, or check the model itself "
                     f"(headscope check MODEL --rule {rule}).")


def refuse_weights_only_policy(policy, what: str, remedy: str, *, rule: str) -> None:
    """InputError when `policy` asks what a weights-only report by `rule` cannot judge (before
    any model is read): a check passes or fails on what it measured, never on another rule's k."""
    from headscope import guard

    keys = guard.weights_only_conflicts(policy, rule)
    if not keys:
        return
    why = (f"max_k: {guard.WEIGHTS_ONLY_K}" if keys == ("max_k",) else
           "they need the probe's statistics" + (f", and max_k: {guard.WEIGHTS_ONLY_K}"
                                                 if "max_k" in keys else ""))
    raise InputError(f"{what} cannot judge {', '.join(keys)} ({why}); {remedy}, or leave them "
                     "out of the policy for this check.")



def check_many(sources: Sequence[str], *, policy_path: str | None = None,
               overrides: dict | None = None, search_dir: str | None = None, load_options=None,
               options: InspectOptions = InspectOptions(weights_only=True)
               ) -> tuple[CheckOutcome, ...]:
    """One policy against the weights-only reports of several checkpoints, in the order given
    (`inspect_many`: ModelErrors names every model that cannot be read)."""
    from headscope import guard

    policy = guard.load_policy(policy_path, overrides, search_dir)
    if options.weights_only:
        refuse_weights_only_policy(policy, "--weights-only", "drop --weights-only to measure "
                                   "them", rule=options.rule)
    reports = inspect_many(sources, load_options=load_options, options=options)
    return tuple(CheckOutcome(rep, guard.evaluate(rep, policy)) for rep in reports)


def compare(sources: Sequence[str], *, load_options=None, probe_config=None,
            options: InspectOptions = InspectOptions(),
            progress: Progress | None = None) -> tuple[Report, ...]:
    """Reports for several checkpoints or saved JSON reports, in the order given.

    A source that is an existing `.json` file is read as a saved report (no torch needed for
    it); anything else is inspected with `options` (its probe file, rule...). Compare reports
    made with the same probe: each report records its probe's sha256.
    """
    from headscope import report as report_mod

    if not sources:
        raise InputError("compare needs at least one MODEL or saved report.")
    reports = []
    for source in sources:
        if is_saved_report(source):
            reports.append(report_mod.read_json(source))
        else:
            reports.append(inspect(source, load_options=load_options,
                                   probe_config=probe_config, options=options,
                                   progress=progress))
    return tuple(reports)


def is_saved_report(source: str) -> bool:
    """Whether `compare` reads SOURCE as a saved report: an existing `.json` file."""
    return source.endswith(".json") and Path(source).is_file()


def compare_labels(reports: Sequence[Report],
                   sources: Sequence[str] | None = None) -> tuple[str, ...]:
    """Column labels for `compare`, made unique: a saved report among `sources` (the SOURCEs
    given, in the order of `reports`) is named by its file name (by its path as given when two
    files share a name), a model by its folder name. Labels of one model differ by "weights
    only" / "probe" (a full and a weights-only report of one model), then by their position
    (#1, #2, ...)."""
    files = [s if is_saved_report(s) else None for s in sources or ()]
    files += [None] * (len(reports) - len(files))
    base = [os.path.basename(f) if f else
            os.path.basename(r.model.source.rstrip("/")) or r.model.source
            for f, r in zip(files, reports, strict=True)]
    labels = list(base)
    for i, r in enumerate(reports):
        same = [j for j, b in enumerate(base) if b == base[i]]
        if len(same) == 1:
            continue
        f = files[i]
        if f is None:
            labels[i] = f"{base[i]} ({'weights only' if r.model.weights_only else 'probe'})"
        elif len({files[j] for j in same}) > 1:  # different files of one name
            labels[i] = f
    for i in range(len(labels)):
        if labels.count(labels[i]) > 1:
            same = [j for j, lab in enumerate(labels) if lab == labels[i]]
            for n, j in enumerate(same, start=1):
                labels[j] = f"{labels[j]} #{n}"
    return tuple(labels)


