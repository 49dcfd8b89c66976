"""Rescale an MLM head in memory, without writing a checkpoint (e.g. right before training).

    python examples/in_process_rescale.py MODEL [--k K] [--strategy untie|tied|fold]

MODEL is a local folder (or set HEADSCOPE_EXAMPLE_MODEL). The model is loaded with plain
transformers, divided by k with `headscope.rescale.rescale_model`, and its logits are checked
against what the rescale promises: (x - b) / k + b, with b the output bias (untie and fold are
exact; tied also shrinks the input embeddings, so it is only close). The same call accepts a
sentence-transformers `SparseEncoder` built on a masked LM.
"""

import argparse
import os

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from headscope.heads import find_head
from headscope.rescale import RescaleSpec, expected_logits, rescale_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", nargs="?", default=os.environ.get("HEADSCOPE_EXAMPLE_MODEL"))
parser.add_argument("--k", type=float, default=8.0)
parser.add_argument("--strategy", choices=("untie", "tied", "fold"), default="untie")
args = parser.parse_args()
if args.model is None:
    parser.error("pass MODEL or set HEADSCOPE_EXAMPLE_MODEL")

tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForMaskedLM.from_pretrained(args.model).eval()
batch = tokenizer(["what does the mlm head of a sparse retriever do?",
                   "SPLADE pools log(1 + relu(logits)) over the tokens of a text."],
                  padding=True, return_tensors="pt")

with torch.no_grad():
    before = model(**batch).logits  # (B, T, V)
bias = find_head(model).bias.detach().clone()  # (V,) the output bias, not divided by default

spec = RescaleSpec(k=args.k, strategy=args.strategy)
result = rescale_model(model, spec)  # in place
print(f"k = {spec.k:g}, strategy {spec.strategy}: changed {', '.join(result.changed)}; "
      f"decoder {'tied to' if result.tied else 'untied from'} the input embeddings")

with torch.no_grad():
    after = model(**batch).logits  # (B, T, V)
error = (after - expected_logits(before, bias, spec)).abs().max().item()
print(f"max |logit - ((x - b) / k + b)| = {error:.2e}")
tolerance = 1e-4 if spec.strategy != "tied" else float("inf")
if error > tolerance:
    raise SystemExit(f"the rescaled logits are off by {error:.2e} (tolerance {tolerance:g})")
