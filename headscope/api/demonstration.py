"""The demo: the real BERT-tiny SPLADE beside its labelled simulation of a large head."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from headscope.api.inspecting import InspectOptions, Progress, inspect_loaded
from headscope.api.training import ConfirmOptions, TrainingOutcome, confirm
from headscope.report import Report

if TYPE_CHECKING:
    from headscope.simulate import SimulationInfo


@dataclass(frozen=True)
class TrainedEvidence:
    """What the calibration grid measured, by training, about the k recommended for the demo's
    real model (docs/calibration.md, real-bert-tiny: 3 seeds x 50 steps, trained on BoolQ,
    MRR@10 with a paired 95% bootstrap interval over 400 queries). A test checks these numbers
    against that page."""

    k: float = 4.0  # the recommended k the evidence is about (bias kept)
    gain_in_domain: float = 0.012  # MRR@10 at k minus at k = 1, evaluated on BoolQ
    gain_in_domain_interval: tuple[float, float] = (0.004, 0.022)
    mrr_k1_out_of_domain: float = 0.931  # evaluated on SciQ
    mrr_k_out_of_domain: float = 0.927
    diff_out_of_domain_interval: tuple[float, float] = (-0.002, 0.010)  # k = 1 minus k


@dataclass(frozen=True)
class DemoOutcome:
    labels: tuple[str, ...]
    reports: tuple[Report, ...]  # real model first, then the simulation
    simulation: SimulationInfo
    training: TrainingOutcome | None = None  # the simulation trained as is vs fixed (--confirm)
    model_path: str = ""  # the real model's local folder (the asset cache): a model to try next
    evidence: TrainedEvidence = TrainedEvidence()  # what training says of the real model's k


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
    # The demo shows what the probe measures: the bands rule's k, which the evidence below is
    # about (the default rule, a shipped constant, would give both models the same k).
    bands = InspectOptions(rule="bands")
    real = inspect_loaded(loaded, probe_config=probe_config, source=f"{DEMO_ASSET} (real)",
                          progress=progress, options=bands)
    variant = copy.copy(loaded)
    variant.model = copy.deepcopy(loaded.model)
    texts = [p.passage for p in probe.builtin_probe(probe_config.n_pairs).pairs]
    info = simulate.make_dense_variant(variant.model, loaded.tokenizer, texts, where=where)
    label = f"{DEMO_ASSET} SIMULATED dense ({where})"
    dense = inspect_loaded(variant, probe_config=probe_config, source=label, progress=progress,
                           options=bands)
    training = None
    if confirm_options is not None:
        rec = dense.recommendation
        assert rec is not None
        training = confirm(str(path), k=rec.k, progress=progress, options=replace(
            confirm_options, simulate=where, scale_bias=rec.scale_bias))
    return DemoOutcome(labels=(f"{DEMO_ASSET} (real)", label), reports=(real, dense),
                       simulation=info, training=training, model_path=str(path))


