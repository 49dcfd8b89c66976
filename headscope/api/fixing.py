"""The fix verb: write a rescaled checkpoint, verified by reloading; and the k a folder it wrote
was rescaled by."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from headscope.api.inspecting import (
    InspectOptions,
    Progress,
    inspect_head,
    inspect_loaded,
    probe_set,
)
from headscope.api.memory import last_inspection
from headscope.errors import InputError
from headscope.report import Report, to_dict

if TYPE_CHECKING:
    from headscope.api.memory import LastInspection
    from headscope.checkpoint import LoadOptions
    from headscope.probe import ProbeConfig
    from headscope.rescale import RescaleSpec
    from headscope.save import FixResult

# `fix` verifies the written checkpoint on this many built-in probe passages (each cut at
# save.verify.VERIFY_MAX_TOKENS tokens): one small batch, every logit compared.
VERIFY_PASSAGES = 2


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
    push_to_hub: str | None = None  # Hub repository ("org/name") to upload the written folder to
    sparse_encoder: bool = False  # also write the files of a sentence-transformers SparseEncoder


@dataclass(frozen=True)
class FixOutcome:
    source: str
    k: float
    k_from: str  # "--k" | "last inspection's recommendation" | "recommended by the ... rule"
    followed_last_inspection: bool  # MODEL was omitted: acted on the last `inspect`
    report: Report  # the original model's inspection (statistics before)
    result: FixResult | None  # None: the recommended k is 1, so nothing was written
    pushed: str | None = None  # the Hub commit URL of --push-to-hub; None: nothing pushed
    # A sentence-transformers folder: which module was fixed, and what of its layout was kept.
    layout_note: str | None = None

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
        if self.layout_note:
            note += f" {self.layout_note}"
        if self.result.cleaned:
            note += (" Removed the temporary folder(s) an interrupted run left: "
                     f"{', '.join(self.result.cleaned)}.")
        if self.pushed:
            note += f" Pushed to the Hub: {self.pushed}."
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


@dataclass
class _Choice:
    """What `fix` knows of the model and of (k, bias) before it loads anything: from the flags
    and, without MODEL, from the last inspection."""

    source: str
    k: float | None
    k_from: str
    scale_bias: bool | None
    load_options: LoadOptions
    # An explicit k with the bias switch left open: the recommendation is one decision (k,
    # bias), so when it divides the bias, fix must not silently keep it (the variant that
    # trains worst) or divide it unasked; it refuses and names both flags.
    open_bias: bool
    last: LastInspection | None = None
    weights_only_k: float | None = None  # a weights-only last inspection's k, not followed

    @property
    def decided(self) -> bool:
        """(k, bias) both known: no probe runs."""
        return self.k is not None and self.scale_bias is not None


def _choose(source: str | None, options: FixOptions, load_options: LoadOptions) -> _Choice:
    """The flags' (k, bias), completed by the last inspection when MODEL was omitted."""
    choice = _Choice(source=source or "", k=options.k, k_from="--k",
                     scale_bias=options.scale_bias, load_options=load_options,
                     open_bias=options.k is not None and options.scale_bias is None)
    if source is not None:
        return choice
    last = choice.last = last_inspection()
    choice.source = last.source
    choice.load_options = replace(load_options, revision=load_options.revision or last.revision)
    if last.weights_only and last.rule != "constant":
        # One answer per model: a weights-only inspection's k comes from the paper rule, and the
        # full inspection (which fix runs) may recommend another. A shipped constant is the same
        # k either way, and is followed.
        choice.weights_only_k = last.k
    elif last.k is not None:
        _follow(choice, last, options.strategy, "last inspection's recommendation")
    elif choice.open_bias:
        choice.scale_bias = False  # no recommendation to follow: the bias is kept
    return choice


def _follow_shipped_constant(choice: _Choice, ckpt, strategy: str) -> None:
    """When the default rule is a shipped constant, (k, bias) is known before the model loads,
    so no probe runs: the full inspection would recommend that same constant (less what a
    headscope fix already divided this head by)."""
    from headscope.api.inspecting import rescaled_by
    from headscope.recommend import recommend, resolve_rule

    if resolve_rule("shipped")[1] is None or not (choice.k is None or choice.open_bias):
        return
    rec = recommend((), rescaled=rescaled_by(ckpt))
    _follow(choice, rec, strategy, _recommended_by(rec.rule))


def _recommended_by(rule: str) -> str:
    """Where a followed recommendation's k came from, in the words fix prints."""
    return f"recommended by the {'shipped constant' if rule == 'constant' else rule} rule"


def _measured_ks(choice: _Choice, probe_config: ProbeConfig) -> ProbeConfig:
    """The probe's ks: k = 1 always (the provenance records the statistics before the fix),
    the chosen k, and with the bias switch open the recommendation's full grid to learn it."""
    if choice.k is not None:
        ks = {float(choice.k)} | (set(probe_config.ks) if choice.scale_bias is None else set())
        probe_config = replace(probe_config, ks=tuple(sorted(ks)))
    return replace(probe_config, scale_bias=bool(choice.scale_bias),
                   ks=tuple(sorted({1.0, *probe_config.ks})))


def _follow(choice: _Choice, rec, strategy: str, k_from: str) -> None:
    """Complete `choice` from a recommendation `rec` (its k and bias setting: a Recommendation or
    the last inspection): with no k given, take both; with a k given and the bias switch open,
    refuse when `rec` divides the bias, else keep the bias as it does."""
    from headscope.rescale import recommended_spec

    if choice.k is None:
        applied = recommended_spec(rec, strategy, choice.scale_bias)
        choice.k, choice.scale_bias, choice.k_from = applied.k, applied.scale_bias, k_from
    elif choice.open_bias and choice.scale_bias is None:
        if rec.scale_bias:
            _refuse_open_bias(choice.source, rec.k, float(choice.k))
        choice.scale_bias = False  # the recommendation keeps the bias: so does this k


def _apply_recommendation(choice: _Choice, before: Report, strategy: str) -> None:
    """After the inspection, follow its recommendation where the choice is still open."""
    if choice.decided:
        return
    rec = before.recommendation
    assert rec is not None
    k_from = _recommended_by(rec.rule)
    if choice.weights_only_k is not None:
        k_from += (f" of the full inspection (the last inspection was weights-only: its paper "
                   f"rule gave k = {choice.weights_only_k:g}, from the row norm alone)")
    _follow(choice, rec, strategy, k_from)


def _recorded_statistics(before: Report, choice: _Choice, ckpt, spec: RescaleSpec) -> tuple:
    """(weights, probe at k = 1, probe predicted at the fix's k) for the provenance: this run's
    inspection, or, when it ran no probe, the last inspection's where it probed these very
    files."""
    stats_before = next((s for s in before.per_k if s.k == 1.0), None)  # None: not probed
    stats_after = next((s for s in before.per_k if s.k == spec.k), None)
    weights = to_dict(before.weights)
    last = choice.last
    if not before.per_k and last is not None and _same_source(last, ckpt):
        weights = last.weights
        stats_before = next((s for s in last.per_k or () if s["k"] == 1.0), None)
        if spec.scale_bias == last.scale_bias:  # measured with this bias setting
            stats_after = next((s for s in last.per_k or () if s["k"] == spec.k), None)
    return weights, stats_before, stats_after


def fix(source: str | None, out: str, *, options: FixOptions = FixOptions(), load_options=None,
        probe_config=None, progress: Progress | None = None) -> FixOutcome:
    """Write a corrected checkpoint of `source` to `out`, verified by reloading.

    `source=None` acts on the model of the last `inspect` (see `last_inspection`), with its
    recommended k unless `options.k` is given.
    """
    from headscope import checkpoint, heads, probe, save
    from headscope.rescale import RescaleSpec

    choice = _choose(source, options, load_options or checkpoint.LoadOptions())
    if options.push_to_hub is not None:
        from headscope import remote

        remote.check_push(options.push_to_hub, dry_run=options.dry_run)  # before any work
    if choice.k is not None:
        RescaleSpec(choice.k, options.strategy, bool(choice.scale_bias))  # before the slow part
    probe_config = _measured_ks(choice, probe_config or probe.ProbeConfig())
    ckpt = checkpoint.resolve(choice.source, choice.load_options.revision)
    if source is not None:
        _follow_shipped_constant(choice, ckpt, options.strategy)
    save.check_out(ckpt.root, Path(out).resolve(), options.overwrite)  # before the slow part
    layout_note = _layout_note(ckpt, options.sparse_encoder)  # refuses before the slow part
    # One run per --out: a second one refuses here, before loading (a dry run writes nothing).
    with nullcontext() if options.dry_run else save.out_lock(Path(out).resolve()):
        loaded = checkpoint.load(ckpt, choice.load_options)
        head = heads.find_head(loaded)  # once: the inspection and the writer share it
        if choice.decided:
            # No probe: the writer verifies the output by its bytes against the source and one
            # reload and forward pass; the head's weight statistics are recorded.
            before = inspect_head(loaded, head)
        else:
            # The bias-divided re-measurement may replace the statistics only while the bias
            # switch is open (follow the recommendation, or learn it to refuse).
            before = inspect_loaded(loaded, probe_config=probe_config, progress=progress, head=head,
                                    options=InspectOptions(bias_fallback=choice.scale_bias is None))
        _apply_recommendation(choice, before, options.strategy)
        assert choice.k is not None
        if choice.k == 1 and choice.k_from != "--k" and not options.force:
            return FixOutcome(source=choice.source, k=1.0, k_from=choice.k_from,
                              followed_last_inspection=source is None, report=before,
                              result=None)
        spec = RescaleSpec(float(choice.k), options.strategy, bool(choice.scale_bias))
        weights, stats_before, stats_after = _recorded_statistics(before, choice, ckpt, spec)
        extra = None
        if options.sparse_encoder and ckpt.module is None:
            from headscope.sparse_layout import sparse_encoder_files

            extra = sparse_encoder_files(ckpt.path)
        texts = [p.passage for p in probe_set(None, VERIFY_PASSAGES).pairs]
        result = save.save_fixed(loaded, spec, out, head=head, overwrite=options.overwrite,
                                 dry_run=options.dry_run, verify_texts=texts,
                                 stats_before=to_dict({"weights": weights,
                                                       "probe_at_k1": stats_before}),
                                 stats_after=to_dict({"probe_predicted": stats_after}),
                                 progress=progress, extra_files=extra)
    pushed = None
    if options.push_to_hub is not None:
        from headscope import remote

        bias = "bias divided" if spec.scale_bias else "bias kept"
        pushed = remote.push_folder(
            result.out, options.push_to_hub,
            commit_message=f"headscope fix of {choice.source}: k = {spec.k:g}, {bias}, "
                           f"{spec.strategy}")
    return FixOutcome(source=choice.source, k=spec.k, k_from=choice.k_from,
                      followed_last_inspection=source is None, report=before, result=result,
                      pushed=pushed, layout_note=layout_note)


def _layout_note(ckpt, sparse_encoder: bool) -> str | None:
    """What the note says of a sentence-transformers source (the module fixed, the layout
    kept); --sparse-encoder checked against the source first."""
    if sparse_encoder:
        from headscope.sparse_layout import check_sparse_encoder_source

        check_sparse_encoder_source(ckpt)
    if ckpt.module is None:
        return None
    note = (f"Fixed the {ckpt.module.description}; every other sentence-transformers file is "
            "kept, so SparseEncoder(out) loads with the source's settings.")
    if sparse_encoder:
        note += " --sparse-encoder added nothing: the source is a SparseEncoder folder already."
    return note


def _same_source(last, ckpt) -> bool:
    """Whether the remembered full inspection measured exactly these files: the same Hub
    revision, or the same sha256 of every weight file."""
    from headscope.api.memory import weight_file_hashes

    if last.weights_only or not last.per_k or last.weights is None:
        return False
    if ckpt.revision:
        return last.revision == ckpt.revision
    return last.source_files is not None and last.source_files == weight_file_hashes(ckpt)


def _refuse_open_bias(source: str, rec_k: float, k: float) -> None:
    raise InputError(
        f"The recommendation for {source} divides the output bias too (k = {rec_k:g} with "
        f"--scale-bias); with --k {k:g}, say which: --scale-bias (bias divided by k too, as "
        "recommended) or --no-scale-bias (projection only)."
    )


# The version of every JSON summary below (fix, training, check, compare); each has a JSON
# Schema shipped in headscope/schema/ (see `json_schema`) and documented in docs/json.md.
def fixed_folder_k(folder: str) -> float:
    """The k a folder written by `fix` was rescaled by, from its provenance (headscope.json);
    a fix of a fixed checkpoint multiplies the ks of the chain (`save.provenance.fixed_k`)."""
    from headscope.save.provenance import fixed_k

    return fixed_k(folder)


