"""Train a model and its rescaled version side by side and read the verdicts: `confirm` in Python.

    python examples/confirm_short.py MODEL [--k K] [--steps N] [--simulate bias|projection]

MODEL is a local folder or a Hub id in the Hugging Face cache (or set HEADSCOPE_EXAMPLE_MODEL).
The default data, `stdlib-ict`, needs no download. `--simulate` first turns MODEL into a labelled
dense-regime simulation (docs/demonstration.md), which is where rescaling matters.
"""

import argparse
import os

from headscope import api

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", nargs="?", default=os.environ.get("HEADSCOPE_EXAMPLE_MODEL"))
parser.add_argument("--k", type=float, default=16.0)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--simulate", choices=["bias", "projection"], default=None)
args = parser.parse_args()
if args.model is None:
    parser.error("pass MODEL or set HEADSCOPE_EXAMPLE_MODEL")

options = api.ConfirmOptions(steps=args.steps, batch_size=8, max_eval_queries=40,
                             simulate=args.simulate, log="confirm.jsonl")
outcome = api.confirm(args.model, k=args.k, options=options)
if outcome.simulation:
    print(outcome.simulation)
for arm in outcome.arms:
    print(f"{arm.name}: {arm.status}; loss {arm.start_loss:.3g} -> {arm.end_loss:.3g}, "
          f"max grad norm {arm.max_grad_norm:.3g}, MRR@10 {arm.mrr_at_10:.3f}")
    for line in arm.evidence:
        print(f"  - {line}")
print(f"telemetry: {outcome.log}")
