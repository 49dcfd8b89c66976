"""README.md of a written checkpoint: the source's model card, kept, plus what headscope did.

The original card's metadata block (the YAML between the leading `---` lines, which the Hub
reads) and its text are kept byte for byte; a section is appended that says what was changed:
headscope's version, k, the output bias, the strategy, the source and how it is identified (Hub
revision, or the sha256 of its weight files), the head's statistics before and after, how the
written model verified, and how to load it. A source without a card gets a card with that
section alone.
"""

from __future__ import annotations

import math
from typing import Any

CARD_FILE = "README.md"
SECTION = "## Rescaled by headscope"


def split_card(text: str) -> tuple[str, str]:
    """(metadata block with its `---` lines, the rest) of a model card; ("", text) without one."""
    if text.startswith("---\n") or text.startswith("---\r\n"):
        end = text.find("\n---", 4)
        if end != -1:
            stop = text.find("\n", end + 4)
            stop = len(text) if stop == -1 else stop + 1
            return text[:stop], text[stop:]
    return "", text


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "not measured"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _stat(stats: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(stats, dict):
            return None
        stats = stats.get(key)
    return stats


def _rows(provenance: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(statistic, before, after) of the head, from the provenance's stats."""
    k = float(provenance["k"])
    before = provenance.get("stats_before")
    after = provenance.get("stats_after")
    norm = _stat(before, "weights", "row_norm_all", "mean")
    # untie and tied divide the decoder rows; fold divides the LayerNorm before them instead.
    norm_after = None if norm is None else (norm if provenance["strategy"] == "fold" else norm / k)
    bias = _stat(before, "weights", "bias_mean")
    bias_after = None if bias is None else (bias / k if provenance["scale_bias"] else bias)
    rows = [("decoder row norm, mean", _number(norm), _number(norm_after)),
            ("output bias, mean", _number(bias), _number(bias_after))]
    for key, label in (("active_passage", "active terms per passage"),
                       ("term_weight_mean", "SPLADE term weight, mean"),
                       ("share_above_5", "share of passage weights above 5"),
                       ("start_loss", "in-batch loss at step 0")):
        rows.append((label, _number(_stat(before, "probe_at_k1", key)),
                     _number(_stat(after, "probe_predicted", key))))
    return rows


def _source_line(provenance: dict[str, Any]) -> str:
    source = provenance["source"]
    if provenance.get("source_revision"):
        return f"`{source}` at revision `{provenance['source_revision']}`"
    files = provenance.get("source_files") or {}
    hashes = ", ".join(f"`{name}` sha256 `{digest}`" for name, digest in sorted(files.items()))
    return f"`{source}` ({hashes})" if hashes else f"`{source}`"


def _verified(provenance: dict[str, Any], verification: dict[str, Any]) -> str:
    texts = _number(verification.get("n_texts"))
    changed = ", ".join(f"`{n}`" for n in provenance.get("changed_tensors") or []) or "none"
    if provenance["strategy"] == "tied":  # the input embeddings changed too: not (x - b) / k + b
        check = (f"the reloaded logits equal the rescaled model's in memory within "
                 f"{_number(verification.get('reload_error'))} on {texts} texts (`tied` divides "
                 "the input embeddings too, so they are not the source's logits divided by k)")
    else:
        check = (f"the reloaded logits are the source's divided as promised within "
                 f"{_number(verification.get('max_abs_logit_error'))} (tolerance "
                 f"{_number(verification.get('logit_tolerance'))}) on {texts} texts")
    return f"Verified by reloading: {check}; changed tensors: {changed}."


def headscope_section(provenance: dict[str, Any]) -> str:
    """The appended section, from the record written to headscope.json."""
    k = float(provenance["k"])
    bias = ("divided by k too" if provenance["scale_bias"] else "kept as it was")
    verification = provenance.get("verification") or {}
    lines = [
        SECTION,
        "",
        f"This checkpoint is {_source_line(provenance)} with its masked-LM head's projection "
        f"divided by k = {k:g} (strategy `{provenance['strategy']}`; output bias {bias}), "
        f"written by headscope {provenance['headscope_version']} on {provenance['created']}. "
        "Every other tensor is the source's, byte for byte; `headscope.json` holds the full "
        "record.",
        "",
        "| head statistic | before | after |",
        "|---|---|---|",
        *(f"| {name} | {a} | {b} |" for name, a, b in _rows(provenance)),
        "",
        "After: the row norm is the written decoder's; the probe statistics are predicted from "
        "the source's probe at k, not measured on the written files.",
        "",
        _verified(provenance, verification),
        "",
        "Load it as the source:",
        "",
        *_load_lines(provenance.get("module")),
        "",
    ]
    return "\n".join(lines)


def _load_lines(module: str | None) -> list[str]:
    """How to load the written folder: a SparseEncoder when the source was a
    sentence-transformers folder (its MLM module `module` fixed), else the masked LM."""
    if module is None:
        return ["```python", "from transformers import AutoModelForMaskedLM",
                'model = AutoModelForMaskedLM.from_pretrained("path/to/this/folder")', "```"]
    where = f"module `{module}`" if module else "module at the folder's root"
    return [f"(a SparseEncoder folder: the masked LM of its {where} was rescaled)", "",
            "```python", "from sentence_transformers import SparseEncoder",
            'model = SparseEncoder("path/to/this/folder")', "```"]


def model_card(source_card: str | None, provenance: dict[str, Any]) -> str:
    """The written README.md: the source card (metadata and text) kept, the section appended."""
    if not source_card:
        return f"# {provenance['source']}, rescaled by headscope\n\n" + \
            headscope_section(provenance)
    metadata, text = split_card(source_card)
    return metadata + text.rstrip("\n") + "\n\n" + headscope_section(provenance)
