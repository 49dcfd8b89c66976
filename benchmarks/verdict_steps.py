"""How many steps a confirm/sweep verdict needs, measured on the committed calibration runs.

Every run of `docs/calibration/runs/` (50 to 300 steps, its telemetry per step) is judged by the
training-signal detectors (`headscope.splade.detectors.verdict`, without the held-out metrics) on
its first n steps, for several n, and on all its steps. A prefix judged worse than the whole run
("degraded" or "collapsed" where the run ends "stable", say) is a false alarm: the verdict of a
run that short says more about its length than about the model. Prints, per n, how many runs
raise a false alarm and which detectors fire. Usage (no torch needed):

    python benchmarks/verdict_steps.py

A prefix is not quite a short run: in a run of n steps the learning-rate warm-up (10%) and the
FLOPS ramp (a third) are n-step long, in a prefix they are those of the longer run. So this
measures how long the detectors' windows need, on real curves; `detectors.MIN_VERDICT_STEPS`
is set from it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from headscope.splade.detectors import NOTE, verdict  # noqa: E402
from headscope.splade.telemetry import StepRecord  # noqa: E402

PREFIXES = (5, 8, 10, 12, 15, 20, 25, 30, 40, 50)
# Vocabulary sizes (the dense detector's denominator): the two models pretrained here have
# 8,192 tokens (models/*/config.json); the BERT-tiny conditions have BERT's 30,522.
VOCAB = {"modernbert-mini": 8192, "bert-mini-control": 8192}


def runs():
    for path in sorted((ROOT / "docs" / "calibration" / "runs").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("kind") != "run":
                continue
            t = row["telemetry"]
            records = [StepRecord(step=i, loss=t["loss"][i], ranking_loss=t["ranking_loss"][i],
                                  flops_q=0.0, flops_d=0.0, weight_q=0.0, weight_d=0.0,
                                  active_query=t["active_query"][i],
                                  active_passage=t["active_passage"][i],
                                  score_pos=t["score_pos"][i], score_neg=t["score_neg"][i],
                                  grad_norm=t["grad_norm"][i], lr=0.0, loss_finite=True,
                                  grad_finite=True)
                       for i in range(len(t["loss"]))]
            yield row["key"], VOCAB.get(row["condition"], 30522), records


def main() -> int:
    data = list(runs())
    print(f"{len(data)} committed runs, {min(len(r) for _, _, r in data)}-"
          f"{max(len(r) for _, _, r in data)} steps each")
    full = {key: verdict(records, vocab).status for key, vocab, records in data}
    print(f"whole runs: {dict(Counter(full.values()))}")
    print("A detector raises a false alarm on a prefix when it rates the prefix degraded or")
    print("collapsed and does not fire on the whole run.")
    print("first n steps | runs with a false alarm | false alarms by detector")
    for n in PREFIXES:
        alarms, fired = 0, Counter()
        for _key, vocab, records in data:
            if len(records) <= n:
                continue
            whole = {e.detector for e in verdict(records, vocab).evidence if e.severity != NOTE}
            false = {e.detector for e in verdict(records[:n], vocab).evidence
                     if e.severity != NOTE and e.detector not in whole}
            alarms += bool(false)
            fired.update(false)
        print(f"{n:>13} | {alarms:>3} of {len(data)} | {dict(sorted(fired.items())) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
