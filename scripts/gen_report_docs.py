"""Generate docs/report.md: every field of the JSON report, from the dataclasses that define it.

Each field's description is the comment that follows it in the source, so the page cannot drift
from the code (tests/test_docs.py regenerates it and compares). Usage:

    python scripts/gen_report_docs.py           # write docs/report.md
    python scripts/gen_report_docs.py --check   # exit 1 when docs/report.md is stale
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import fields
from pathlib import Path

from headscope import calibrated, findings, recommend, report, stats

OUT = Path(__file__).resolve().parent.parent / "docs" / "report.md"

# (JSON path, dataclass), in the order a reader meets them.
SECTIONS = (
    ("report (top level)", report.Report),
    ("model", report.ModelInfo),
    ("weights", stats.WeightStats),
    ("weights.row_norm_all, weights.row_norm_real", stats.Summary),
    ("probe", report.ProbeSummary),
    ("per_k[]", stats.KStats),
    ("findings[]", findings.Finding),
    ("recommendation", recommend.Recommendation),
    ("recommendation.verdicts[]", recommend.KVerdict),
    ("recommendation.bands[]", recommend.Band),
    ("weights.row_norm_histogram", stats.Histogram),
    ("evidence", calibrated.ModelEvidence),
    ("evidence.domains[]", calibrated.DomainEvidence),
    ("evidence.domains[].tied[]", calibrated.TiedArm),
)

INTRO = """# The JSON report

`headscope inspect --json PATH|-` writes one JSON object, validated in the tests against the
JSON Schema shipped in the package (`headscope/schema/report.schema.json`, loaded by
`headscope.report.schema()`). `schema_version` is an integer; a reader refuses a version it does
not know. JSON has no NaN or infinity: a non-finite number is written as `null`. Finding codes
and the bands are documented in [findings.md](findings.md).

**A report cannot be edited into a pass.** Every number with a range (the "range" column below)
is checked by the schema and by the reader (`headscope check --report` among them, without
torch): a value outside it is refused, exit 2, naming the field. The last field,
`content_sha256`, is the sha256 of the rest of the document as JSON with sorted keys and no
spaces (UTF-8): re-indenting a report keeps it, and a report whose content no longer matches it
is refused as "edited after it was written". It guards against edits and damage, not against
forgery (whoever edits a report can recompute it; not move a number out of its range).
`schema_version` 2 introduced both; a report of schema_version 1 is refused with the advice to
re-create it, since nothing in it can tell whether it was edited.

Units: norms, logits, term weights and scores are in the model's own logit units (a SPLADE
term weight is `log(1 + relu(logit))`); shares are fractions in [0, 1]; active-term counts are
means per text; losses are natural-log cross-entropies (in-batch InfoNCE on raw dot products,
scale 1, over the probe's batch: chance level `ln(batch_size)`).

This page is generated from the dataclasses by `scripts/gen_report_docs.py`; edit the field
comments in the code, not this page.
"""


def field_comments(cls: type) -> dict[str, str]:
    """`name: type  # comment` lines of a dataclass body -> {name: comment}."""
    comments: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]+?(?:\s+#\s*(.*))?$", line)
        if m and m.group(2):
            comments[m.group(1)] = m.group(2).strip()
    return comments


def render() -> str:
    parts = [INTRO]
    for path, cls in SECTIONS:
        notes = field_comments(cls)
        parts.append(f"## `{path}`\n")
        doc = inspect.getdoc(cls)
        if doc and not doc.startswith(cls.__name__ + "("):
            parts.append(doc.split("\n\n")[0].replace("\n", " ") + "\n")
        parts.append("| field | type | range | meaning |\n|---|---|---|---|")
        ranges = report.RANGES.get(cls, {})
        for f in fields(cls):
            kind = str(f.type).replace("|", "\\|")
            rng = ranges.get(f.name)
            shown = "—" if rng is None else rng.text(integer=kind.startswith(("int", "tuple[int")))
            parts.append(f"| `{f.name}` | `{kind}` | {shown} | {notes.get(f.name, '')} |")
        if cls is report.Report:
            parts.append(f"| `{report.HASH_FIELD}` | `str` | — | sha256 (hex) of the rest of the "
                         "document, canonical JSON (above); in the JSON form only |")
        parts.append("")
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python scripts/gen_report_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
