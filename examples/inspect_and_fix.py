"""Inspect a checkpoint's MLM head, then write a rescaled copy: the Python API in ~30 lines.

    python examples/inspect_and_fix.py MODEL OUT [--k K] [--n-pairs N]

MODEL is a local folder or a Hub id in the Hugging Face cache (or set HEADSCOPE_EXAMPLE_MODEL).
Without --k the recommended k is used. The written folder loads with plain
`AutoModelForMaskedLM.from_pretrained(OUT)`.
"""

import argparse
import os

from headscope import api
from headscope.probe import ProbeConfig

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", nargs="?", default=os.environ.get("HEADSCOPE_EXAMPLE_MODEL"))
parser.add_argument("out")
parser.add_argument("--k", type=float, default=None)
parser.add_argument("--n-pairs", type=int, default=64)
args = parser.parse_args()
if args.model is None:
    parser.error("pass MODEL or set HEADSCOPE_EXAMPLE_MODEL")

# 1. Measure: head weight statistics, per-k probe statistics, findings, a recommended k.
probe = ProbeConfig(n_pairs=args.n_pairs)
report = api.inspect(args.model, probe_config=probe)
rec = report.recommendation
print(f"{report.model.source}: {report.model.family}, mean decoder row norm "
      f"{report.weights.row_norm_all.mean:.3f} over {report.weights.n_rows:,} rows")
for finding in report.findings:
    print(f"  {finding.code} {finding.severity}: {finding.message}")
print(f"recommended k = {rec.k:g} ({rec.rule} rule)")
at1 = next(s for s in report.per_k if s.k == 1)
print(f"  at k = 1: start loss {at1.start_loss:.3g}, active terms per passage "
      f"{at1.active_passage:.0f}, cosine of unrelated passages {at1.cosine_unrelated:.3f}")

# 2. Fix: rescale the projection by k, write safetensors, reload and compare, then rename.
k = args.k if args.k is not None else rec.k
outcome = api.fix(args.model, args.out, options=api.FixOptions(k=k, strategy="untie"),
                  probe_config=probe)
v = outcome.result.verification
print(outcome.note)
print(f"wrote {outcome.result.out}: {', '.join(outcome.result.files)}")
print(f"verified by {v.against}: max |logit error| {v.max_abs_logit_error:.2e} "
      f"(tolerance {v.logit_tolerance:.1e}); changed {', '.join(v.tensors_changed)}")
