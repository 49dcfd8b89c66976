"""The training objective both engines share (headscope.splade.objective): the hard-negative
rule and batch layout, the loss by hand, and the warm-up argument each transformers major reads
as a ratio."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch

from headscope.errors import InputError
from headscope.splade.data import Pair
from headscope.splade.objective import (
    Objective,
    dataset_columns,
    hard_negatives,
    passage_texts,
)
from headscope.splade.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TF4_PYTHON = ROOT / ".venv-tf4" / "bin" / "python"

PAIRS = [Pair("q0", "p0", ("n0a", "n0b")), Pair("q1", "p1", ("n1a", "n1b"))]


def test_passages_are_the_positives_then_the_negatives_negative_major():
    assert passage_texts(PAIRS) == ["p0", "p1", "n0a", "n1a", "n0b", "n1b"]
    assert dataset_columns(PAIRS) == {"query": ["q0", "q1"], "positive": ["p0", "p1"],
                                      "negative_1": ["n0a", "n1a"],
                                      "negative_2": ["n0b", "n1b"]}
    assert hard_negatives([Pair("q", "p")]) == 0


def test_pairs_with_different_numbers_of_negatives_are_refused_by_both_layouts():
    mixed = [Pair("q0", "p0", ("n",)), Pair("q1", "p1")]
    message = ("Pairs carry different numbers of hard negatives ([0, 1]); give every pair the "
               "same number.")
    for layout in (passage_texts, dataset_columns):
        with pytest.raises(InputError) as err:
            layout(mixed)
        assert str(err.value) == message


def test_the_objective_by_hand():
    """B = 2 queries, one hard negative each, V = 3: InfoNCE over [positives, negatives] plus
    the warmed-up FLOPS terms, computed here with plain loops."""
    q = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0],    # positives of q0, q1
                      [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])   # negatives of q0, q1
    objective = Objective(lambda_q=0.5, lambda_d=0.25, steps=9, warmup_ratio=1 / 3)
    step = 1  # inside the quadratic warm-up of 3 steps: weight * (1 / 3) ** 2
    terms = objective.loss(q, d, step)
    ranking = 0.0
    for i in range(2):
        row = [sum(q[i, v] * d[j, v] for v in range(3)).item() for j in range(4)]
        ranking += -(row[i] - math.log(sum(math.exp(s) for s in row))) / 2
    flops_q = sum((q[:, v].mean().item()) ** 2 for v in range(3))
    flops_d = sum((d[:, v].mean().item()) ** 2 for v in range(3))
    weight_q, weight_d = 0.5 * (1 / 3) ** 2, 0.25 * (1 / 3) ** 2
    assert (terms.weight_q, terms.weight_d) == pytest.approx((weight_q, weight_d))
    assert terms.ranking.item() == pytest.approx(ranking, rel=1e-6)
    assert terms.loss.item() == pytest.approx(ranking + weight_q * flops_q + weight_d * flops_d,
                                              rel=1e-6)
    assert Objective.of(TrainConfig(steps=9)).steps == 9


def test_warmup_is_passed_as_each_transformers_major_reads_a_ratio():
    from headscope.st_engine import warmup_arguments

    assert warmup_arguments(0.1, "5.0.0") == {"warmup_steps": 0.1}
    assert warmup_arguments(0.1, "4.57.1") == {"warmup_ratio": 0.1}


def test_the_installed_transformers_warms_up_a_tenth_of_the_steps(tmp_path):
    import transformers

    from headscope.st_engine import warmup_arguments

    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                          **warmup_arguments(0.1))
    assert args.get_warmup_steps(100) == 10


CHILD = r'''
import dataclasses, sys, types, transformers
sys.path.insert(0, sys.argv[1])
from headscope.st_engine import warmup_arguments
# transformers 4.57's own TrainingArguments.get_warmup_steps on the fields it reads (building the
# arguments would set up devices through accelerate, which this interpreter lacks)
T = transformers.TrainingArguments
fields = {f.name: f.default for f in dataclasses.fields(T) if f.name.startswith("warmup_")}
def warmup(**given):
    return T.get_warmup_steps(types.SimpleNamespace(**{**fields, **given}), 100)
print(transformers.__version__, warmup(**warmup_arguments(0.1)), warmup(warmup_steps=0.1))
'''


@pytest.mark.slow
@pytest.mark.skipif(not TF4_PYTHON.exists(),
                    reason=f"{TF4_PYTHON} is absent; create it with `bash scripts/tf4-venv.sh`")
def test_transformers_4_warms_up_a_tenth_of_the_steps():
    """Under transformers 4.57 the warm-up goes as warmup_ratio; passed as warmup_steps, as
    transformers 5 wants it, it would be 0.1 of a step (the negative control)."""
    run = subprocess.run([str(TF4_PYTHON), "-c", CHILD, str(ROOT)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    version, given, as_steps = run.stdout.split()
    assert version.startswith("4.57.")
    assert int(given) == 10
    assert float(as_steps) < 1
