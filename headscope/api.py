"""The public verbs. Each composes the layers below it and holds no maths of its own.

    from headscope import api
    report = api.inspect("answerdotai/ModernBERT-base")
    outcome = api.fix("answerdotai/ModernBERT-base", out="./fixed")   # k from the recommendation
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from headscope.errors import HeadscopeError, InputError, ModelErrors
from headscope.recommend import (
    DEFAULT_BANDS,
    Band,
    diagnose,
    finding,
    prefer_divided_bias,
    probe_fit_findings,
    recommend,
    serving_findings,
    unreachable_bands,
)
from headscope.report import ModelInfo, ProbeSummary, Report, make_report, to_dict
from headscope.stats import WeightStats

if TYPE_CHECKING:
    from headscope.guard import CheckResult
    from headscope.save import FixResult
    from headscope.simulate import SimulationInfo

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class InspectOptions:
    """What `inspect` measures. The CLI reads its defaults from here."""

    weights_only: bool = False
    probe_file: str | None = None
    rule: str = "bands"  # "bands" | "paper" | "reference"
    reference: str | None = None  # checkpoint whose k=1 statistics the model should match
    # When some band is out of reach of every k with the output bias kept, also measure with
    # the bias divided and recommend that (with --scale-bias) when k then reaches more bands.
    bias_fallback: bool = True


def _probe_set(probe_file: str | None, n_pairs: int):
    from headscope import probe

    if probe_file:
        return probe.load_probe_file(probe_file)
    return probe.builtin_probe(n_pairs)


def _weight_stats(head, vocab) -> WeightStats:
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
    )


def inspect_loaded(loaded, *, probe_config=None, options: InspectOptions = InspectOptions(),
                   bands: Sequence[Band] = DEFAULT_BANDS, reference_per_k=None,
                   source: str | None = None, progress: Progress | None = None) -> Report:
    """Inspect a model already in memory (a `checkpoint.LoadedModel`)."""
    from headscope import heads, probe

    probe_config = probe_config or probe.ProbeConfig()
    head = heads.find_head(loaded)
    vocab = heads.vocab_info(head.decoder_weight.shape[0], loaded.tokenizer)
    weights = _weight_stats(head, vocab)
    if loaded.tokenizer is None:
        raise InputError(
            f"{loaded.checkpoint.source} has no tokenizer files, so probe statistics cannot be "
            "computed; add the tokenizer to the folder or pass --weights-only."
        )
    pset = _probe_set(options.probe_file, probe_config.n_pairs)
    cb = (lambda done, total: progress("probe", done, total)) if progress else None
    result = probe.run_probe(loaded.model, loaded.tokenizer, head.bias, pset, probe_config, cb)
    rec = recommend(result.per_k, rule=options.rule, bands=bands, weights=weights,
                    reference=reference_per_k)
    findings = diagnose(weights, result.per_k, vocab_fields(vocab, tied=head.tied), rec)
    if (options.rule == "bands" and options.bias_fallback and not probe_config.scale_bias
            and head.bias is not None
            and unreachable_bands(rec.verdicts, rec.bands)):
        # Some band is out of reach of every k with the bias kept. Every logit tends to its
        # bias as k grows, so a head whose activity lives in the bias needs the bias divided
        # too: measure that, and recommend it when k then reaches more bands.
        cb2 = (lambda done, total: progress("probe (bias divided)", done, total)) if progress \
            else None
        scaled = probe.run_probe(loaded.model, loaded.tokenizer, head.bias, pset,
                                 replace(probe_config, scale_bias=True), cb2)
        rec2 = recommend(scaled.per_k, rule="bands", bands=bands, weights=weights)
        if prefer_divided_bias(rec, rec2):
            result = scaled
            note = (f"With the output bias kept, no k brings "
                    f"{', '.join(b.metric for b in unreachable_bands(rec.verdicts, rec.bands))} "
                    f"into its band: the head's activity lives in its output bias. With the bias "
                    f"divided by k too, k reaches more bands; fix with --scale-bias.")
            rec = replace(rec2, reasons=(note,) + rec2.reasons, scale_bias=True)
            findings = diagnose(weights, scaled.per_k, vocab_fields(vocab, tied=head.tied),
                                rec) + (finding("HS208", note, rec2.k, None),)
    unknown = probe.unknown_token_share(loaded.tokenizer, pset, probe_config)
    findings = findings + probe_fit_findings(unknown) + serving_findings(result.per_k, rec.k)
    info = _model_info(loaded.checkpoint, head.layout, vocab, weights, tied=head.tied,
                       dtype=loaded.options.dtype, device=loaded.options.device,
                       weights_only=False, source=source)
    return make_report(info, weights, probe=ProbeSummary.from_result(
                           result, unknown_token_share=unknown),
                       per_k=result.per_k, findings=findings, recommendation=rec)


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
    ckpt = checkpoint.resolve(source, load_options.revision)
    if options.weights_only:
        _refuse_unused_with_weights_only(load_options, options)
        report = _inspect_weights_only(ckpt, load_options)
    else:
        if options.probe_file:
            _probe_set(options.probe_file, 0)  # a bad probe file is refused before loading
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
        remember_inspection(report)
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


def _inspect_weights_only(ckpt, load_options) -> Report:
    """Head tensors straight from the files: no model is instantiated, no probe is run, and for
    safetensors checkpoints neither torch nor transformers is imported."""
    from headscope import checkpoint, heads, stats

    head = heads.read_head(ckpt)
    vocab = heads.vocab_info(head.decoder_weight.shape[0],
                             checkpoint.read_vocabulary(ckpt, load_options))
    arrays = head.arrays
    weights = stats.weight_stats(arrays["decoder_weight"], vocab.real_rows,
                                 bias=arrays.get("bias"), norm_weight=arrays.get("norm_weight"),
                                 norm_bias=arrays.get("norm_bias"),
                                 dense_weight=arrays.get("dense_weight"))
    rec = recommend((), rule="paper", weights=weights)
    findings = diagnose(weights, (), vocab_fields(vocab, tied=head.tied), rec)
    info = _model_info(ckpt, head.layout, vocab, weights, tied=head.tied, dtype=head.dtype,
                       device="cpu", weights_only=True)
    return make_report(info, weights, findings=findings, recommendation=rec)


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
class FixOptions:
    """How `fix` rescales. The CLI reads its defaults from here.

    `untie` is the default: the paper's "rescale the projection", exact at step 0 and leaving
    the input embeddings alone. It stays the default until `confirm` measurements say otherwise.
    """

    k: float | None = None  # None: the recommended k
    strategy: str = "untie"  # "untie" | "tied" | "fold"
    scale_bias: bool | None = None  # divide the output bias too; None: as recommended (else no)
    dry_run: bool = False
    overwrite: bool = False
    # Write even when the recommended k is 1 (no rescale needed); an explicit k always writes.
    force: bool = False


@dataclass(frozen=True)
class FixOutcome:
    source: str
    k: float
    k_from: str  # "--k" | "recommendation" | "last inspection"
    followed_last_inspection: bool  # MODEL was omitted: acted on the last `inspect`
    report: Report  # the original model's inspection (statistics before)
    result: FixResult | None  # None: the recommended k is 1, so nothing was written

    @property
    def needed(self) -> bool:
        """Whether a fix was written (or, in a dry run, verified): False at a recommended k = 1."""
        return self.result is not None

    @property
    def note(self) -> str:
        if self.result is None:
            return (f"No fix needed: {self.source} is recommended k = 1 ({self.k_from}), so its "
                    "head is left as it is and nothing was written. Pass --k K to rescale it "
                    "anyway, or --force to write an unchanged copy.")
        if self.followed_last_inspection:
            note = (f"No MODEL given: acting on {self.source}, the model of the last "
                    f"`headscope inspect`, with k = {self.k:g} ({self.k_from}).")
        else:
            note = f"Fixing {self.source} with k = {self.k:g} ({self.k_from})."
        if self.result.cleaned:
            note += (" Removed the temporary folder(s) an interrupted run left: "
                     f"{', '.join(self.result.cleaned)}.")
        return note

    @property
    def changed_tensors(self) -> tuple[str, ...]:
        """Tensors whose values the fix changed. At k = 1 none did: dividing by 1 is exact, and
        an untied decoder is a new tensor holding the same values (see `new_tensors`)."""
        if self.result is None or self.k == 1:
            return ()
        return self.result.verification.tensors_changed

    @property
    def new_tensors(self) -> tuple[str, ...]:
        """Tensors written in their own right although their values did not change (a decoder
        untied at k = 1)."""
        if self.result is None or self.k != 1:
            return ()
        return self.result.verification.tensors_changed


def fix(source: str | None, out: str, *, options: FixOptions = FixOptions(), load_options=None,
        probe_config=None, progress: Progress | None = None) -> FixOutcome:
    """Write a corrected checkpoint of `source` to `out`, verified by reloading.

    `source=None` acts on the model of the last `inspect` (see `last_inspection`), with its
    recommended k unless `options.k` is given.
    """
    from headscope import checkpoint, probe, save
    from headscope.rescale import RescaleSpec

    load_options = load_options or checkpoint.LoadOptions()
    followed = source is None
    k, k_from, scale_bias = options.k, "--k", options.scale_bias
    # An explicit k with the bias switch left open: the recommendation is one decision (k,
    # bias), so when it divides the bias, fix must not silently keep it (the variant that
    # trains worst) or divide it unasked; it refuses and names both flags.
    open_bias = k is not None and scale_bias is None
    if followed:
        last = last_inspection()
        source = last.source
        load_options = replace(load_options, revision=load_options.revision or last.revision)
        if k is None and last.k is not None:
            k, k_from = last.k, "last inspection's recommendation"
            if scale_bias is None:
                scale_bias = last.scale_bias
        elif open_bias:
            if last.k is not None and last.scale_bias:
                _refuse_open_bias(source, last.k, float(options.k or 0.0))
            scale_bias = False  # the recommendation keeps the bias: so does this k
    assert source is not None
    probe_config = probe_config or probe.ProbeConfig()
    if k is not None:
        RescaleSpec(k, options.strategy, bool(scale_bias))  # validate before the slow part
        # With the bias switch open, measure the recommendation's full grid to learn it.
        ks = {1.0, float(k)} | (set(probe_config.ks) if scale_bias is None else set())
        probe_config = replace(probe_config, ks=tuple(sorted(ks)))
    probe_config = replace(probe_config, scale_bias=bool(scale_bias))
    ckpt = checkpoint.resolve(source, load_options.revision)
    save.check_out(ckpt.path, Path(out).resolve(), options.overwrite)  # before the slow part
    loaded = checkpoint.load(ckpt, load_options)
    # The bias-divided re-measurement may only replace the statistics when the bias switch is
    # still open (scale_bias None: follow the recommendation, or learn it to refuse).
    before = inspect_loaded(loaded, probe_config=probe_config, progress=progress,
                            options=InspectOptions(bias_fallback=scale_bias is None))
    if open_bias and scale_bias is None:
        assert before.recommendation is not None and k is not None
        if before.recommendation.scale_bias:
            _refuse_open_bias(source, before.recommendation.k, float(k))
        scale_bias = False  # the recommendation keeps the bias: so does this k
    if k is None:
        assert before.recommendation is not None
        k, k_from = before.recommendation.k, f"recommended by the {before.recommendation.rule} rule"
        if scale_bias is None:
            scale_bias = before.recommendation.scale_bias
    if k == 1 and k_from != "--k" and not options.force:
        return FixOutcome(source=source, k=1.0, k_from=k_from, followed_last_inspection=followed,
                          report=before, result=None)
    spec = RescaleSpec(float(k), options.strategy, bool(scale_bias))
    stats_before = next(s for s in before.per_k if s.k == 1.0)
    stats_after = next(s for s in before.per_k if s.k == spec.k)
    pset = _probe_set(None, 8)
    texts = [p.passage for p in pset.pairs]
    result = save.save_fixed(loaded, spec, out, overwrite=options.overwrite,
                             dry_run=options.dry_run, verify_texts=texts,
                             stats_before=to_dict({"weights": before.weights,
                                                   "probe_at_k1": stats_before}),
                             stats_after=to_dict({"probe_predicted": stats_after}),
                             progress=progress)
    return FixOutcome(source=source, k=spec.k, k_from=k_from, followed_last_inspection=followed,
                      report=before, result=result)


def _refuse_open_bias(source: str, rec_k: float, k: float) -> None:
    raise InputError(
        f"The recommendation for {source} divides the output bias too (k = {rec_k:g} with "
        f"--scale-bias); with --k {k:g}, say which: --scale-bias (bias divided by k too, as "
        "recommended) or --no-scale-bias (projection only)."
    )


# The version of every JSON summary below (fix, training, check, compare); each has a JSON
# Schema shipped in headscope/schema/ (see `json_schema`) and documented in docs/json.md.
SUMMARY_SCHEMA_VERSION = 1
SUMMARY_KINDS = ("fix", "training", "check", "compare")


def json_schema(kind: str) -> dict:
    """The shipped JSON Schema (draft 2020-12) of a verb's JSON output: "report" (inspect),
    "fix", "training" (confirm and sweep), "check" or "compare"."""
    from importlib import resources

    if kind not in ("report",) + SUMMARY_KINDS:
        raise InputError(f"No JSON schema named {kind!r}; the schemas are report, "
                         f"{', '.join(SUMMARY_KINDS)}.")
    text = resources.files("headscope").joinpath(f"schema/{kind}.schema.json").read_text("utf-8")
    return json.loads(text)


def fix_summary(outcome: FixOutcome) -> dict:
    """The JSON form of a fix: what was written, with which k and why, and how it verified.
    `written` is False when no fix was needed (recommended k = 1) or in a dry run."""
    r = outcome.result
    summary = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "source": outcome.source,
        "k": outcome.k,
        "k_from": outcome.k_from,
        "followed_last_inspection": outcome.followed_last_inspection,
        "needed": outcome.needed,
        "written": r is not None and not r.dry_run,
        "note": outcome.note,
        "strategy": None if r is None else r.spec.strategy,
        "scale_bias": None if r is None else r.spec.scale_bias,
        "out": None if r is None else str(r.out),
        "dry_run": None if r is None else r.dry_run,
        "files": [] if r is None else list(r.files),
        "tied": None if r is None else r.tied,
        "changed_tensors": list(outcome.changed_tensors),
        "new_tensors": list(outcome.new_tensors),
        "verification": None if r is None else r.verification,
    }
    return to_dict(summary)


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
    policy = guard.load_policy(policy_path, overrides, search_dir)
    if report_path is not None:
        rep = report_mod.read_json(report_path)
    else:
        assert source is not None
        rep = inspect(source, load_options=load_options, probe_config=probe_config,
                      options=options, progress=progress)
    return CheckOutcome(rep, guard.evaluate(rep, policy))


def check_summary(outcome: CheckOutcome) -> dict:
    """The JSON form of a check: the policy, each rule's threshold and measurement, pass/fail."""
    return to_dict({"schema_version": SUMMARY_SCHEMA_VERSION,
                       "source": outcome.report.model.source, **outcome.result.to_dict()})


def check_many(sources: Sequence[str], *, policy_path: str | None = None,
               overrides: dict | None = None, search_dir: str | None = None, load_options=None,
               options: InspectOptions = InspectOptions(weights_only=True)
               ) -> tuple[CheckOutcome, ...]:
    """One policy against the weights-only reports of several checkpoints, in the order given
    (`inspect_many`: ModelErrors names every model that cannot be read)."""
    from headscope import guard

    policy = guard.load_policy(policy_path, overrides, search_dir)
    reports = inspect_many(sources, load_options=load_options, options=options)
    return tuple(CheckOutcome(rep, guard.evaluate(rep, policy)) for rep in reports)


@dataclass(frozen=True)
class DemoOutcome:
    labels: tuple[str, ...]
    reports: tuple[Report, ...]  # real model first, then the simulation
    simulation: SimulationInfo
    training: TrainingOutcome | None = None  # the simulation trained as is vs fixed (--confirm)


DEMO_ASSET = "bert-tiny-splade"


def demo(*, probe_config=None, where: str = "bias", confirm_options: ConfirmOptions | None = None,
         progress: Progress | None = None) -> DemoOutcome:
    """The real BERT-tiny SPLADE (from a pinned PyPI wheel) against its simulated large-head
    ("dense regime") variant, inspected side by side. Needs no model hub.

    With `confirm_options`, the simulation is then trained as is and fixed as recommended (its
    k, and the bias switch it recommends), side by side on the same batches.
    """
    import copy

    from headscope import assets, checkpoint, probe, simulate

    probe_config = probe_config or probe.ProbeConfig()
    path = assets.fetch(DEMO_ASSET, progress=(lambda msg: progress(msg, 0, 1)) if progress
                        else None)
    loaded = checkpoint.load(checkpoint.resolve(str(path)))
    real = inspect_loaded(loaded, probe_config=probe_config, source=f"{DEMO_ASSET} (real)",
                          progress=progress)
    variant = copy.copy(loaded)
    variant.model = copy.deepcopy(loaded.model)
    texts = [p.passage for p in probe.builtin_probe(probe_config.n_pairs).pairs]
    info = simulate.make_dense_variant(variant.model, loaded.tokenizer, texts, where=where)
    label = f"{DEMO_ASSET} SIMULATED dense ({where})"
    dense = inspect_loaded(variant, probe_config=probe_config, source=label, progress=progress)
    training = None
    if confirm_options is not None:
        rec = dense.recommendation
        assert rec is not None
        training = confirm(str(path), k=rec.k, progress=progress, options=replace(
            confirm_options, simulate=where, scale_bias=rec.scale_bias))
    return DemoOutcome(labels=(f"{DEMO_ASSET} (real)", label), reports=(real, dense),
                       simulation=info, training=training)


def compare(sources: Sequence[str], *, load_options=None, probe_config=None,
            progress: Progress | None = None) -> tuple[Report, ...]:
    """Reports for several checkpoints or saved JSON reports, in the order given.

    A source that is an existing `.json` file is read as a saved report (no torch needed for
    it); anything else is inspected. Compare reports made with the same probe: each report
    records its probe's sha256.
    """
    from headscope import report as report_mod

    if not sources:
        raise InputError("compare needs at least one MODEL or saved report.")
    reports = []
    for source in sources:
        if source.endswith(".json") and Path(source).is_file():
            reports.append(report_mod.read_json(source))
        else:
            reports.append(inspect(source, load_options=load_options,
                                   probe_config=probe_config, progress=progress))
    return tuple(reports)


def compare_summary(reports: Sequence[Report], labels: Sequence[str]) -> dict:
    """The JSON form of a comparison: each model's key statistics under its column label."""
    from headscope.report import key_statistics

    return to_dict({"schema_version": SUMMARY_SCHEMA_VERSION,
                       "models": [{"label": label, **key_statistics(r)}
                                  for r, label in zip(reports, labels, strict=True)]})


def compare_labels(reports: Sequence[Report]) -> tuple[str, ...]:
    """Column labels for `compare`: each model's folder name, made unique. Reports of one source
    differ by "weights only" / "probe" (a full and a weights-only report of one model), then
    by their position (#1, #2, ...)."""
    base = [os.path.basename(r.model.source.rstrip("/")) or r.model.source for r in reports]
    labels = list(base)
    for i, r in enumerate(reports):
        if base.count(base[i]) > 1:
            labels[i] = f"{base[i]} ({'weights only' if r.model.weights_only else 'probe'})"
    for i in range(len(labels)):
        if labels.count(labels[i]) > 1:
            same = [j for j, lab in enumerate(labels) if lab == labels[i]]
            for n, j in enumerate(same, start=1):
                labels[j] = f"{labels[j]} #{n}"
    return tuple(labels)


def write_report_documents(report_path: str, *, html: str | None = None, md: str | None = None,
                           confirm_log: Sequence[str] = ()) -> tuple[Path, ...]:
    """Render a saved JSON report as a self-contained HTML and/or Markdown document."""
    from headscope import export
    from headscope import report as report_mod

    if not html and not md:
        raise InputError("Pass --html OUT.html and/or --md OUT.md to say what to write.")
    rep = report_mod.read_json(report_path)
    return export.write_report(rep, html=html, md=md, confirm_log=list(confirm_log) or None)


# --- confirm and sweep: short SPLADE trainings side by side ---------------------------------

@dataclass(frozen=True)
class ConfirmOptions:
    """What `confirm` and `sweep` train on and how. The CLI reads its defaults from here.

    The defaults keep a two-arm run of BERT-tiny to a few minutes on 2 CPU cores: 100 steps of
    batch 16 with passages cut to 64 tokens, evaluated on the zero-download `stdlib-ict` split.
    """

    data: str = "stdlib-ict"  # built-in name ("stdlib-ict", "boolq"), BEIR folder, JSONL or TSV
    steps: int = 100
    batch_size: int = 16
    lr: float = 2e-5
    max_query_length: int = 32
    max_passage_length: int = 64
    seed: int = 0
    device: str = "cpu"
    max_eval_queries: int | None = 300
    eval_data: str | None = None  # evaluate on this set instead of data's held-out split
    strategy: str = "untie"
    scale_bias: bool = False
    simulate: str | None = None  # derive a dense-regime variant of MODEL first (labelled)
    log: str | None = None  # telemetry JSONL (one object per step and arm)
    figure: str | None = None  # PNG/SVG of the training curves
    # "headscope": the open training loop of headscope.splade.train; "st": sentence-transformers'
    # SparseEncoderTrainer with HeadscopeCallback (runs under torchrun / accelerate launch).
    engine: str = "headscope"
    # Comma-separated devices ("cuda:0,cuda:1"): arms train in parallel, one per device at a
    # time, each in its own process; None trains them one after another on `device`.
    devices: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ("headscope", "st"):
            raise InputError(f"Unknown engine {self.engine!r}; choose headscope or st.")
        if self.devices is not None:
            from headscope.scheduler import parse_devices

            parse_devices(self.devices)

    def train_config(self):
        from headscope.splade.train import TrainConfig

        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           max_query_length=self.max_query_length,
                           max_passage_length=self.max_passage_length, seed=self.seed,
                           device=self.device)


@dataclass(frozen=True)
class ArmOutcome:
    name: str  # "original", "fixed", "k=8", ...
    description: str  # what the arm's model is
    k: float
    status: str  # "stable" | "degraded" | "collapsed"
    evidence: tuple[str, ...]  # the detectors' messages
    start_loss: float
    end_loss: float  # median of the last 10 steps
    max_grad_norm: float
    active_query_end: float
    active_passage_end: float
    ndcg_at_10: float | None
    mrr_at_10: float | None
    recall_at_100: float | None
    # The metrics above are exact (dot products over all terms). Texts with more active terms
    # than the serving cap (EvalConfig.serving_terms): only the serving figure below prunes them.
    truncated_queries: int = 0
    truncated_passages: int = 0
    # The same arm evaluated before training (step 0, zero-shot).
    zero_shot_ndcg_at_10: float | None = None
    zero_shot_mrr_at_10: float | None = None
    # A separate serving figure: each text pruned to its serving_terms largest weights.
    serving_terms: int | None = None
    serving_mrr_at_10: float | None = None
    # The cross-arm judgement (splade.detectors.judge_arms): mean paired per-query MRR@10
    # difference to the best arm trained alongside (0 for the best), and its interval.
    mrr_vs_best: float | None = None
    mrr_vs_best_interval: tuple[float, float] | None = None


@dataclass(frozen=True)
class TrainingOutcome:
    source: str
    simulation: str | None  # the simulation's label when MODEL was turned into a dense variant
    data: str
    config: ConfirmOptions
    arms: tuple[ArmOutcome, ...]
    log: str | None
    figure: str | None
    records: dict  # arm name -> tuple[StepRecord, ...] (for plots; not serialised)
    eval_data: str | None = None  # the evaluation set's name when it is not data's own split
    eval_queries: int = 0  # held-out queries every arm was evaluated on
    eval_passages: int = 0  # passages they were ranked against
    # What serving engines would refuse of each trained arm's passages (HS303/HS304, from the
    # active passage terms over its last 10 steps).
    findings: tuple = ()


def is_main_process() -> bool:
    """False in every process of a torchrun / accelerate launch but rank 0: they train but
    neither write nor print."""
    from headscope.st_engine import is_main_process as main

    return main()


def _base_model(source: str, options: ConfirmOptions, load_options, progress):
    """Load MODEL and, when asked, turn it into its labelled dense-regime simulation."""
    from headscope import checkpoint, probe, simulate
    from headscope.st_engine import bind_device

    bind_device(options.device)  # under torchrun: "cuda" is this process's own GPU
    load_options = load_options or checkpoint.LoadOptions(device=options.device)
    loaded = checkpoint.load(checkpoint.resolve(source, load_options.revision), load_options)
    if loaded.tokenizer is None:
        raise InputError(f"{source} has no tokenizer files; training needs one.")
    label = None
    if options.simulate:
        texts = [p.passage for p in probe.builtin_probe(64).pairs]
        label = simulate.make_dense_variant(loaded.model, loaded.tokenizer, texts,
                                            where=options.simulate).label
    return loaded, label


def _rescaled_copy(model, k: float, options: ConfirmOptions):
    import copy

    from headscope.rescale import RescaleSpec, rescale_model

    clone = copy.deepcopy(model)
    # Even at k = 1: with `untie` every arm then has its own decoder, so a sweep's k = 1 arm
    # trains the same parameterisation as the others (a tied k = 1 arm confounded the two).
    rescale_model(clone, RescaleSpec(k, options.strategy, options.scale_bias))
    return clone


def _summarise_arm(name, description, k, result, vocab_size) -> ArmOutcome:
    import statistics

    from headscope.splade.detectors import NOTE, verdict

    records = result.train.records
    v = verdict(records, vocab_size, result.metrics)
    tail = records[-10:]
    m, before = result.metrics, result.metrics_before
    serving = m.serving if m else None
    return ArmOutcome(
        name=name, description=description, k=k, status=v.status,
        evidence=tuple(("note: " if e.severity == NOTE else "") + e.message for e in v.evidence),
        start_loss=records[0].loss, end_loss=statistics.median(r.loss for r in tail),
        max_grad_norm=max(r.grad_norm for r in records),
        active_query_end=statistics.mean(r.active_query for r in tail),
        active_passage_end=statistics.mean(r.active_passage for r in tail),
        ndcg_at_10=m.ndcg_at_10 if m else None, mrr_at_10=m.mrr_at_10 if m else None,
        recall_at_100=m.recall_at_100 if m else None,
        truncated_queries=m.truncated_queries if m else 0,
        truncated_passages=m.truncated_passages if m else 0,
        zero_shot_ndcg_at_10=before.ndcg_at_10 if before else None,
        zero_shot_mrr_at_10=before.mrr_at_10 if before else None,
        serving_terms=serving.pruned_terms if serving else None,
        serving_mrr_at_10=serving.mrr_at_10 if serving else None)


def _dataset(options: ConfirmOptions):
    """The training data and the evaluation set (data's own held-out split unless
    `options.eval_data` names another), read (and so validated) before any model is loaded, as
    are the training options."""
    from headscope.splade import data as splade_data

    options.train_config()
    dataset = splade_data.load_dataset(options.data, max_eval_queries=options.max_eval_queries)
    evalset = (splade_data.load_eval(options.eval_data, max_eval_queries=options.max_eval_queries)
               if options.eval_data else dataset)
    return dataset, evalset


def _train_side_by_side(source, label, arms: dict, descriptions: dict, ks: dict,
                        options: ConfirmOptions, progress, datasets,
                        configs: dict | None = None) -> TrainingOutcome:
    """Train every arm on the same batches, log telemetry, judge each, draw the curves.

    Progress goes to `progress` twice per step: the arm's own phase ("arm 2/3: fixed", steps of
    that arm) and the whole run ("all arms", steps of every arm), so a face can show an ETA
    for both. `configs` gives an arm its own TrainConfig (default: the options')."""
    from contextlib import ExitStack

    from headscope import fileio, st_engine
    from headscope.splade.telemetry import TelemetryWriter
    from headscope.splade.train import train_arms

    dataset, evalset = datasets
    train_all = st_engine.train_arms if options.engine == "st" else train_arms
    main = st_engine.is_main_process()  # under torchrun / accelerate, only rank 0 writes
    config = options.train_config()
    total = config.steps * len(arms)
    phases = {name: f"arm {i}/{len(arms)}: {name}" for i, name in enumerate(arms, start=1)}
    done = {name: 0 for name in arms}
    with ExitStack() as stack:
        writers = {}
        if options.log and main:
            Path(options.log).parent.mkdir(parents=True, exist_ok=True)
            # Appears complete when training ends; an interrupted run leaves no partial log.
            fh = stack.enter_context(fileio.atomic_open(options.log))
            writers = {name: TelemetryWriter(fh, arm=name, k=ks[name]) for name in arms}

        def on_step(arm: str, record) -> None:
            if arm in writers:
                writers[arm](record)
            done[arm] += 1
            if progress and main:
                progress(phases[arm], done[arm], config.steps)
                progress("all arms", sum(done.values()), total)

        if options.devices:  # one worker process per device, one arm each at a time
            from headscope.scheduler import parse_devices, train_arms_on_devices

            if st_engine.world_size() > 1:
                raise InputError("--devices spreads arms over devices in one launch; under "
                                 "torchrun or accelerate launch leave it out.")
            results = train_arms_on_devices(
                arms, dataset.train, evalset.eval, configs or {name: config for name in arms},
                parse_devices(options.devices), engine=options.engine, callback=on_step)
        elif configs is None:
            results = train_all(arms, dataset.train, evalset.eval, config, eval_before=True,
                                callback=on_step)
        else:  # one arm at a time with its own config (each arm reseeds: the same batches)
            results = {}
            for name, arm in arms.items():
                results.update(train_all({name: arm}, dataset.train, evalset.eval,
                                         configs[name], eval_before=True, callback=on_step))
    vocab = {name: model.config.vocab_size for name, (model, _tok) in arms.items()}
    outcomes = _judge_arms(tuple(_summarise_arm(name, descriptions[name], ks[name],
                                                results[name], vocab[name]) for name in arms),
                           {name: results[name].metrics for name in arms})
    records = {name: tuple(results[name].train.records) for name in arms}
    figure = None
    if options.figure and main:
        from headscope import plots

        title = f"{source}" + (" (simulated dense regime)" if label else "")
        plots.save_figure(plots.training_figure(records, title), options.figure)
        figure = options.figure
    from headscope.recommend import engine_findings

    served = tuple(f for a in outcomes for f in engine_findings(
        a.active_passage_end, a.k, stage=f"after training (arm {a.name})"))
    return TrainingOutcome(source=source, simulation=label, data=dataset.name, config=options,
                           arms=outcomes, log=options.log, figure=figure, records=records,
                           eval_data=evalset.name if options.eval_data else None,
                           eval_queries=len(evalset.eval.queries) if evalset.eval else 0,
                           eval_passages=len(evalset.eval.corpus) if evalset.eval else 0,
                           findings=served)


def fixed_folder_k(folder: str) -> float:
    """The k a folder written by `fix` was rescaled by, from its provenance (headscope.json);
    a fix of a fixed checkpoint multiplies the ks of the chain."""
    from headscope.save import PROVENANCE_FILE

    path = Path(folder) / PROVENANCE_FILE
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{folder} has no {PROVENANCE_FILE}, so its k is unknown; pass a folder written by "
            "`headscope fix`, or rescale MODEL in memory with --k K instead of --fixed."
        ) from None
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); re-create {folder} with "
                         "`headscope fix`, or use --k K instead of --fixed.") from None
    k = 1.0
    entry = provenance
    while isinstance(entry, dict):
        value = entry.get("k")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InputError(f"{path} records no positive k ({value!r}); re-create {folder} "
                             "with `headscope fix`, or use --k K instead of --fixed.")
        k *= float(value)
        entry = entry.get("previous")
    return k


def confirm(source: str, *, k: float | None = None, fixed: str | None = None,
            options: ConfirmOptions = ConfirmOptions(), load_options=None,
            progress: Progress | None = None) -> TrainingOutcome:
    """Train the original and the fixed model side by side on the same batches.

    The fixed arm is `fixed` (a folder written by `fix`), or MODEL rescaled in memory by `k`
    (default: the recommendation of a quick inspection, k and bias setting together).
    """
    from headscope import checkpoint

    if fixed is not None and k is not None:
        raise InputError("Pass either --fixed DIR or --k K to confirm, not both.")
    datasets = _dataset(options)
    fixed_ckpt = checkpoint.resolve(fixed) if fixed is not None else None
    k_fixed = fixed_folder_k(fixed) if fixed is not None else None  # before the slow part
    loaded, label = _base_model(source, options, load_options, progress)
    base = loaded.model
    if fixed_ckpt is not None:
        assert k_fixed is not None
        fixed_loaded = checkpoint.load(fixed_ckpt, checkpoint.LoadOptions(
            device=options.device))
        fixed_model, k_used = fixed_loaded.model, k_fixed
        fixed_desc = f"{fixed} (written by fix, k = {k_fixed:g})"
    else:
        if k is None:
            from headscope import probe

            rep = inspect_loaded(loaded, probe_config=probe.ProbeConfig(
                n_pairs=64, scale_bias=options.scale_bias), progress=progress)
            assert rep.recommendation is not None
            k = rep.recommendation.k
            # The recommendation is one decision: a k recommended with the bias divided is
            # trained with the bias divided.
            if rep.recommendation.scale_bias:
                options = replace(options, scale_bias=True)
        fixed_model = _rescaled_copy(base, k, options)
        k_used = k
        fixed_desc = (f"projection / {k:g} ({options.strategy}, bias "
                      f"{'divided' if options.scale_bias else 'kept'})")
    arms = {"original": (base, loaded.tokenizer), "fixed": (fixed_model, loaded.tokenizer)}
    outcome = _train_side_by_side(source, label, arms,
                                  {"original": label or "as loaded", "fixed": fixed_desc},
                                  {"original": 1.0, "fixed": k_used}, options, progress,
                                  datasets)
    return outcome


def _judge_arms(arms: tuple[ArmOutcome, ...], metrics: dict) -> tuple[ArmOutcome, ...]:
    """Apply the cross-arm judgement (its rule lives in splade.detectors) to every arm: one
    that evaluates worse than the best arm beyond its interval is flagged, and a verdict the
    metrics contradict says so."""
    import numpy as np

    from headscope.splade.detectors import judge_arms, judged_status

    per_query = {name: np.asarray(m.mrr_per_query) for name, m in metrics.items()
                 if m is not None and len(m.mrr_per_query) >= 2}
    if len(per_query) < 2:
        return arms
    judged = judge_arms(per_query)
    out = []
    for arm in arms:
        j = judged.get(arm.name)
        if j is None:
            out.append(arm)
            continue
        status, note = judged_status(arm.status, j)
        out.append(replace(arm, status=status, evidence=arm.evidence + ((note,) if note else ()),
                           mrr_vs_best=j.diff, mrr_vs_best_interval=(j.low, j.high)))
    return tuple(out)


def sweep(source: str, ks: Sequence[float] | None = None, *,
          options: ConfirmOptions = ConfirmOptions(), load_options=None,
          progress: Progress | None = None,
          flops_weights: Sequence[float] | None = None) -> TrainingOutcome:
    """The same short training for each k (the shape of the paper's loss-curve figure).

    With `flops_weights`, one arm per FLOPS weight λd instead (λq = λd / 20, the paper's
    ratio), all at one k: the only k in `ks`, or the recommended k when `ks` is None."""
    if flops_weights:
        return _flops_sweep(source, ks, flops_weights, options, load_options, progress)
    ks = DEFAULT_SWEEP_KS if ks is None else ks
    if not ks or any(not (k > 0) for k in ks):
        raise InputError(f"sweep needs positive k values, got {list(ks)!r}.")
    datasets = _dataset(options)
    loaded, label = _base_model(source, options, load_options, progress)
    arms, desc, kmap = {}, {}, {}
    for k in ks:
        name = f"k={k:g}"
        arms[name] = (_rescaled_copy(loaded.model, float(k), options), loaded.tokenizer)
        desc[name] = (f"projection / {k:g} ({options.strategy}, bias "
                      f"{'divided' if options.scale_bias else 'kept'})")
        kmap[name] = float(k)
    return _train_side_by_side(source, label, arms, desc, kmap, options, progress, datasets)


DEFAULT_SWEEP_KS = (1.0, 2.0, 4.0, 8.0, 16.0)


def _flops_sweep(source: str, ks: Sequence[float] | None, weights: Sequence[float],
                 options: ConfirmOptions, load_options, progress) -> TrainingOutcome:
    """One arm per FLOPS weight at one k (see `sweep`)."""
    from headscope.splade.losses import DEFAULT_LAMBDA_D, DEFAULT_LAMBDA_Q

    if any(not (w >= 0) or not math.isfinite(w) for w in weights):
        raise InputError(f"--flops-weight needs finite weights >= 0, got {list(weights)!r}.")
    if ks is not None and len(ks) != 1:
        raise InputError("--flops-weight trains every weight at one k: give a single --k, or "
                         "none for the recommended k.")
    datasets = _dataset(options)
    loaded, label = _base_model(source, options, load_options, progress)
    if ks is None:
        from headscope import probe

        rep = inspect_loaded(loaded, probe_config=probe.ProbeConfig(
            n_pairs=64, scale_bias=options.scale_bias), progress=progress)
        assert rep.recommendation is not None
        k = rep.recommendation.k
    else:
        k = float(ks[0])
    if not k > 0:
        raise InputError(f"sweep needs a positive k, got {k!r}.")
    ratio = DEFAULT_LAMBDA_Q / DEFAULT_LAMBDA_D
    arms, desc, kmap, configs = {}, {}, {}, {}
    for w in weights:
        name = f"λd={w:g}"
        arms[name] = (_rescaled_copy(loaded.model, k, options), loaded.tokenizer)
        desc[name] = (f"projection / {k:g}, λq={w * ratio:g} λd={w:g}")
        kmap[name] = k
        configs[name] = replace(options.train_config(), lambda_d=float(w),
                                lambda_q=float(w) * ratio)
    return _train_side_by_side(source, label, arms, desc, kmap, options, progress, datasets,
                               configs)


def training_summary(outcome: TrainingOutcome) -> dict:
    """The JSON form of a confirm or sweep run (telemetry stays in the JSONL log). `evaluated`
    says how many held-out queries and passages each arm was scored on."""
    return to_dict({
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "source": outcome.source,
        "simulation": outcome.simulation,
        "data": outcome.data,
        "eval_data": outcome.eval_data,
        "options": outcome.config,
        "evaluated": {"queries": outcome.eval_queries, "passages": outcome.eval_passages},
        "log": outcome.log,
        "figure": outcome.figure,
        "arms": [to_dict(a) for a in outcome.arms],
        "findings": [to_dict(f) for f in outcome.findings],
    })


# --- the "last inspected" memory, so that `headscope fix --out DIR` follows an `inspect` -------

def _state_file() -> Path:
    from headscope.assets import cache_root

    return cache_root() / "last-inspect.json"


@dataclass(frozen=True)
class LastInspection:
    source: str
    revision: str | None
    k: float | None
    rule: str | None
    scale_bias: bool
    created: str
    cwd: str


# A remembered inspection is followed only from the directory it was made in, and for this long.
LAST_INSPECTION_MAX_AGE_HOURS = 24


def remember_inspection(report: Report) -> None:
    """Record `report` for a following `fix` without MODEL. The record is a convenience: when
    it cannot be written (an unwritable HEADSCOPE_CACHE) a HeadscopeWarning says so and
    nothing is raised."""
    import warnings

    from headscope import fileio
    from headscope.errors import HeadscopeWarning, OutputWriteError

    rec = report.recommendation
    state = LastInspection(source=report.model.source, revision=report.model.revision,
                           k=rec.k if rec else None, rule=rec.rule if rec else None,
                           scale_bias=rec.scale_bias if rec else False,
                           created=report.created, cwd=os.getcwd())
    path = _state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.write_text(path, json.dumps(state.__dict__, indent=2) + "\n")
    except (OSError, OutputWriteError) as exc:
        reason = exc.reason if isinstance(exc, OutputWriteError) else (exc.strerror or str(exc))
        warnings.warn(HeadscopeWarning(
            f"could not record this inspection in {path} ({reason}); the report is complete, "
            "but `headscope fix` without MODEL will not follow it (pass MODEL, or set "
            "HEADSCOPE_CACHE to a writable folder)."), stacklevel=2)


def last_inspection() -> LastInspection:
    """The remembered inspection, if it was made in the current working directory less than
    LAST_INSPECTION_MAX_AGE_HOURS ago; else InputError saying to pass MODEL."""
    from datetime import datetime, timezone

    path = _state_file()
    if not path.exists():
        raise InputError(
            "No model given and no earlier inspection to follow; pass MODEL, or run "
            "`headscope inspect MODEL` first."
        )
    try:
        last = LastInspection(**json.loads(path.read_text(encoding="utf-8")))
        created = datetime.fromisoformat(last.created.replace("Z", "+00:00"))
        if created.tzinfo is None:
            raise ValueError(f"created {last.created!r} has no time zone")
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(
            f"The record of the last inspection ({path}) is unreadable ({exc}); pass MODEL "
            "explicitly or run `headscope inspect MODEL` again."
        ) from exc
    here = os.getcwd()
    if os.path.realpath(last.cwd) != os.path.realpath(here):
        raise InputError(
            f"The last `headscope inspect` ({last.source}) was run in {last.cwd}, not in this "
            "directory; pass MODEL to say which checkpoint to fix."
        )
    age_h = (datetime.now(timezone.utc) - created).total_seconds() / 3600
    if not -0.1 <= age_h <= LAST_INSPECTION_MAX_AGE_HOURS:
        when = "dated in the future" if age_h < 0 else f"{age_h:.0f} hours old"
        raise InputError(
            f"The last `headscope inspect` ({last.source}) is {when} (it is followed for "
            f"{LAST_INSPECTION_MAX_AGE_HOURS} hours); pass MODEL, or run `headscope inspect "
            "MODEL` again."
        )
    return last


__all__ = [
    "LastInspection",
    "inspect",
    "inspect_loaded",
    "inspect_many",
    "last_inspection",
    "remember_inspection",
    "InspectOptions",
    "FixOptions",
    "ConfirmOptions",
    "fix",
    "check",
    "check_many",
    "confirm",
    "sweep",
    "compare",
    "compare_labels",
    "compare_summary",
    "check_summary",
    "demo",
    "fix_summary",
    "fixed_folder_k",
    "json_schema",
    "training_summary",
    "write_report_documents",
]
