"""What headscope's own calibration measured, shipped with the package (`data/calibration.json`,
written by the calibration report from its committed training runs).

Two things `inspect` shows from it:

- how often each rule's k landed inside the tied-with-best set (the arms whose paired bootstrap
  interval to the best arm's MRR@10 reaches zero) on the conditions registered before they ran,
  in domain and out of domain, and the decision rule's verdict once there are enough of them
  (`counts_sentence`);
- for a checkpoint that is itself a calibration condition (known by its weight file's sha256,
  hashed only when the size matches one), the arms its own grid could not separate from the
  best (`identify`, `ModelEvidence`).

Standard library only: the weights-only path reads it without numpy or torch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headscope import fileio

DATA_FILE = Path(__file__).resolve().parent / "data" / "calibration.json"
BANDS_RULE = "bands (shipped)"  # the fitted rule's name in the counts
PAPER_RULE = "paper"


@dataclass(frozen=True)
class TiedArm:
    k: float  # the projection's divisor
    scale_bias: bool  # the output bias divided by k too


@dataclass(frozen=True)
class DomainEvidence:
    domain: str  # "in": evaluated on the set it trained on; "out": on another set
    train: str  # the training set, e.g. "boolq"
    eval: str  # the evaluation set, e.g. "sciq"
    steps: int  # SPLADE training steps of each run
    seeds: int  # seeds per arm
    tied: tuple[TiedArm, ...]  # arms the bootstrap cannot separate from the best, by k

    def holds(self, k: float, scale_bias: bool) -> bool:
        """Whether the arm (k, bias setting) is in the tied-with-best set (at k = 1 the bias
        setting changes nothing)."""
        return any(a.k == k and (a.scale_bias == scale_bias or k == 1) for a in self.tied)


@dataclass(frozen=True)
class ModelEvidence:
    """A checkpoint that is one of the calibration conditions, and what its grid measured."""

    condition: str  # the condition's name on the calibration page
    block: str  # "fitted" (it shaped the bands: in sample) or "pre-registered"
    domains: tuple[DomainEvidence, ...]  # each judged domain of its grid, in first


@dataclass(frozen=True)
class ShippedRule:
    """The rule `inspect` applies by default: the decision rule's verdict on the conditions
    registered before they ran, or the bands while that verdict is pending."""

    rule: str  # "bands" | "paper" | "constant"
    k: float | None = None  # the constant's k (rule "constant")
    scale_bias: bool = False  # the constant divides the output bias too


@functools.cache
def _data() -> dict[str, Any]:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def shipped_rule() -> ShippedRule:
    """The default rule: what the shipped evidence's verdict chose (`ships`), else the bands."""
    ships = _data().get("ships")
    if ships is None:
        return ShippedRule("bands")
    k = ships.get("k")
    return ShippedRule(ships["rule"], None if k is None else float(k),
                       bool(ships.get("scale_bias", False)))


def judged_row_norms() -> tuple[float, float] | None:
    """(lowest, highest) mean decoder row norm of the complete pre-registered conditions: the
    range of heads the counts and the verdict speak for; None before any is complete."""
    norms = _data().get("row_norms") or []
    return (min(norms), max(norms)) if norms else None


def identify(weight_files: Sequence[Path]) -> ModelEvidence | None:
    """The calibration evidence of a checkpoint whose one weight file is a condition's (same
    size, then same sha256); None for any other checkpoint. Files of another size are not read."""
    if len(weight_files) != 1:
        return None
    path = Path(weight_files[0])
    try:
        size = path.stat().st_size
    except OSError:
        return None
    models = [m for m in _data()["models"] if m["weights_bytes"] == size]
    if not models:
        return None
    digest = fileio.sha256_file(path)
    for m in models:
        if m["weights_sha256"] == digest:
            return ModelEvidence(
                condition=m["condition"], block=m["block"],
                domains=tuple(DomainEvidence(
                    domain=d["domain"], train=d["train"], eval=d["eval"], steps=d["steps"],
                    seeds=d["seeds"],
                    tied=tuple(TiedArm(float(a["k"]), bool(a["scale_bias"])) for a in d["tied"]))
                    for d in m["domains"]))
    return None


def _count(rule: str) -> str:
    got = _data()["counts"][rule]
    return (f"{got['in'][0]} of {got['in'][1]} in domain, {got['out'][0]} of {got['out'][1]} out "
            "of domain")


def _best_constant() -> str:
    """The constant rule with the most landings inside (in + out), the simpler on a tie (the
    counts list constants from the simplest)."""
    counts = _data()["counts"]
    constants = [r for r in counts if r.startswith("k = ")]
    return max(constants, key=lambda r: (counts[r]["in"][0] + counts[r]["out"][0],
                                         -constants.index(r)))


def counts_sentence() -> str:
    """How each rule fared on the conditions registered before they ran, and the verdict."""
    data = _data()
    if not data["complete"]:
        return "No condition registered before its runs is complete yet."
    best = _best_constant()
    n = data["complete"]
    text = (f"On the {n} calibration condition{'s' if n != 1 else ''} registered before "
            "they ran, "
            f"the bands' k landed among the arms that trained as well as the best "
            f"{_count(BANDS_RULE)}; the paper's rule {_count(PAPER_RULE)}; the best "
            f"constant ({best}) {_count(best)}.")
    if data["verdict"] is None:
        return text + (f" The decision rule needs {data['needed']} such conditions: its "
                       "verdict is pending.")
    return text + (f" The decision rule, written before those runs, chose "
                   f"{rule_in_words(data['verdict'])} as the default.")


def rule_in_words(rule: str) -> str:
    """A rule's name in the counts as a sentence names it: the fitted rule's label
    ("bands (shipped)") reads as "the bands rule"; the others ("paper", "k = 16, bias kept")
    as they are."""
    return "the bands rule" if rule == BANDS_RULE else rule


def _arms(tied: tuple[TiedArm, ...]) -> str:
    """'k = 32 or 64 (bias divided)', 'k = 8 or 16 (bias kept), k = 32 (bias divided)'."""
    def ks(arms: list[TiedArm]) -> str:
        return " or ".join(f"{a.k:g}" for a in arms)

    ones = [a for a in tied if a.k == 1]
    kept = [a for a in tied if a.k != 1 and not a.scale_bias]
    divided = [a for a in tied if a.k != 1 and a.scale_bias]
    parts = (["k = 1"] if ones else []) + [f"k = {ks(group)} (bias {name})" for group, name
                                           in ((kept, "kept"), (divided, "divided")) if group]
    return ", ".join(parts)


def model_sentences(evidence: ModelEvidence, k: float | None, scale_bias: bool) -> list[str]:
    """What the model's own calibration grid says, and where the recommendation (k, bias
    setting; k None: no recommendation) lies against it."""
    kind = ("a condition the bands were fitted on, so in sample" if evidence.block == "fitted"
            else "registered before its runs")
    out = [f"This checkpoint is the calibration condition {evidence.condition} ({kind})."]
    for d in evidence.domains:
        where = "in domain" if d.domain == "in" else "out of domain"
        line = (f"Trained on {d.train} ({d.seeds} seeds x {d.steps} steps), evaluated {where} "
                f"on {d.eval}: the evidence cannot separate {_arms(d.tied)}")
        if k is not None:
            chosen = "k = 1" if k == 1 else (
                f"k = {k:g} (bias {'divided' if scale_bias else 'kept'})")
            line += (f"; the recommended {chosen} is "
                     f"{'inside' if d.holds(k, scale_bias) else 'outside'} that set")
        out.append(line + ".")
    return out


__all__ = ["DATA_FILE", "DomainEvidence", "ModelEvidence", "ShippedRule", "TiedArm",
           "counts_sentence", "identify", "judged_row_norms", "model_sentences", "rule_in_words",
           "shipped_rule"]
