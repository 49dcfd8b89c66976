"""The instrumented training loop, arms on identical batches, telemetry, retrieval evaluation on a
model, and the collapse detectors on synthetic step records."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from headscope.errors import InputError
from headscope.splade import detectors
from headscope.splade.data import Pair, pairs_to_eval
from headscope.splade.detectors import Thresholds, verdict
from headscope.splade.evaluate import (
    EvalConfig,
    RetrievalMetrics,
    encode,
    evaluate,
    mrr_at,
    ndcg_at,
    recall_at,
)
from headscope.splade.train import (
    StepRecord,
    TrainConfig,
    batch_indices,
    lr_factor,
    train,
    train_arms,
)

SHORT = TrainConfig(
    steps=3, batch_size=4, max_query_length=8, max_passage_length=16, lr=1e-3, seed=7
)

PAIRS = tuple(
    Pair(q, p)
    for q, p in [
        ("what is a list", "A list is a mutable sequence of items."),
        ("what is a tuple", "A tuple is an immutable sequence."),
        ("how do dicts work", "A dictionary maps hashable keys to values."),
        ("what is a set", "A set is an unordered collection of distinct objects."),
        ("what does yield do", "A yield expression suspends a generator function."),
        ("what is a lambda", "A lambda creates a small anonymous function."),
        ("what raises KeyError", "A missing dictionary key raises KeyError."),
        ("what is a class", "A class bundles data and the functions that act on it."),
    ]
)


@pytest.fixture(scope="module")
def tokenizer(bert_tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bert_tiny_dir)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """A random BertForMaskedLM (hidden 32, one layer) over the real BERT-tiny vocabulary."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertForMaskedLM(config).eval()


# ---------------------------------------------------------------- parts


def test_batch_indices_are_seeded_epochs():
    batches = batch_indices(10, steps=5, batch_size=4, seed=3)
    assert [len(b) for b in batches] == [4] * 5
    assert batches == batch_indices(10, steps=5, batch_size=4, seed=3)
    assert batches != batch_indices(10, steps=5, batch_size=4, seed=4)
    assert len(set(batches[0] + batches[1])) == 8  # within an epoch, no pair repeats
    with pytest.raises(InputError, match="3 training pairs are fewer than one batch of 4"):
        batch_indices(3, steps=1, batch_size=4, seed=0)


def test_lr_schedule_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = get_linear_schedule_with_warmup(
        opt, num_warmup_steps=math.ceil(0.1 * 25), num_training_steps=25
    )
    for step in range(25):
        assert lr_factor(step, 25, 0.1) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_config_validates():
    with pytest.raises(InputError, match="batch_size must be at least 2"):
        TrainConfig(batch_size=1)


# ---------------------------------------------------------------- training


def test_short_training_records_every_step(tiny_model, tokenizer):
    model = copy.deepcopy(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    result = train(model, tokenizer, PAIRS, SHORT, callback=seen.append)
    assert list(result.records) == seen
    assert [r.step for r in result.records] == [0, 1, 2]
    assert result.vocab_size == len(tokenizer) and result.n_pairs == len(PAIRS)
    first, second, last = result.records
    # quadratic warm-up over int(3 / 3) = 1 step: no regulariser on the first step
    assert (first.weight_q, first.weight_d) == (0.0, 0.0)
    assert (last.weight_q, last.weight_d) == (SHORT.lambda_q, SHORT.lambda_d)
    # lr: warm-up ceil(0.3) = 1 step, then linear decay
    assert [r.lr for r in result.records] == pytest.approx([0.0, 1e-3, 5e-4])
    for r in result.records:
        assert r.loss_finite and r.grad_finite and r.grad_norm > 0
        assert r.loss == pytest.approx(
            r.ranking_loss + r.weight_q * r.flops_q + r.weight_d * r.flops_d, rel=1e-5
        )
        assert 0 < r.active_query <= len(tokenizer) and 0 < r.active_passage <= len(tokenizer)
        assert r.ranking_loss > 0 and r.flops_q > 0 and r.flops_d > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training did not update any parameter"
    assert not model.training


def test_hard_negatives_and_early_stop(tiny_model, tokenizer):
    pairs = [Pair(p.query, p.positive, (PAIRS[(i + 1) % 8].positive,)) for i, p in enumerate(PAIRS)]
    result = train(
        copy.deepcopy(tiny_model), tokenizer, pairs, SHORT, callback=lambda record: record.step == 1
    )
    assert result.stopped_early and len(result.records) == 2
    mixed = pairs[:3] + list(PAIRS[3:])
    with pytest.raises(InputError, match="different numbers of hard negatives"):
        train(copy.deepcopy(tiny_model), tokenizer, mixed, dataclasses.replace(SHORT, batch_size=8))


def test_non_finite_step_is_recorded_and_skipped(tiny_model, tokenizer):
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.cls.predictions.bias[5] = float("nan")
    before = model.bert.embeddings.word_embeddings.weight.clone()
    result = train(model, tokenizer, PAIRS, SHORT)
    assert not any(r.loss_finite for r in result.records)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, before)
    assert verdict(result.records, result.vocab_size).status == "collapsed"


def test_arms_share_batches_and_seed(tiny_model, tokenizer):
    arms = {
        "original": (copy.deepcopy(tiny_model), tokenizer),
        "copy": (copy.deepcopy(tiny_model), tokenizer),
    }
    split = pairs_to_eval(PAIRS[:4])
    steps = []
    results = train_arms(arms, PAIRS, split, SHORT, callback=lambda n, r: steps.append(n))
    assert steps == ["original"] * 3 + ["copy"] * 3
    a, b = results["original"], results["copy"]
    assert a.train.records == b.train.records  # identical models, batches and dropout masks
    assert a.metrics == b.metrics and a.metrics.n_queries == 4
    for (name, pa), pb in zip(
        arms["original"][0].named_parameters(), arms["copy"][0].parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
    # a different seed gives a different run
    other = train(copy.deepcopy(tiny_model), tokenizer, PAIRS, dataclasses.replace(SHORT, seed=8))
    assert other.records != a.train.records


# ---------------------------------------------------------------- evaluation on a model


def test_encode_matches_pooling_and_caps_terms(tiny_model, tokenizer):
    from headscope.splade.pooling import splade_pool

    texts = [p.positive for p in PAIRS[:5]]
    enc = encode(tiny_model, tokenizer, texts, max_length=16, batch_size=2, max_terms=50_000)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        logits = tiny_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    expected = splade_pool(logits, batch["attention_mask"])
    torch.testing.assert_close(enc.matrix.to_dense(), expected, rtol=1e-5, atol=1e-5)
    assert enc.truncated == 0
    capped = encode(tiny_model, tokenizer, texts, max_length=16, batch_size=2, max_terms=10)
    dense = capped.matrix.to_dense()
    assert ((dense > 0).sum(dim=1) <= 10).all()
    assert capped.truncated == int(((expected > 0).sum(dim=1) > 10).sum())
    # the kept terms are the largest ones
    torch.testing.assert_close(dense.max(dim=1).values, expected.max(dim=1).values)


def test_evaluate_matches_brute_force_and_ir_measures(tiny_model, tokenizer):
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import RR, R, nDCG

    split = pairs_to_eval(PAIRS)
    metrics = evaluate(
        tiny_model,
        tokenizer,
        split,
        EvalConfig(batch_size=3, max_query_length=8, max_passage_length=16),
    )
    q = encode(tiny_model, tokenizer, list(split.queries.values()), max_length=8).matrix
    d = encode(tiny_model, tokenizer, list(split.corpus.values()), max_length=16).matrix
    scores = q.to_dense() @ d.to_dense().T  # (Q, D)
    run = {
        qid: {pid: float(s) for pid, s in zip(split.corpus, row, strict=True) if s > 0}
        for qid, row in zip(split.queries, scores, strict=True)
    }
    agg = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10, R @ 100], split.qrels, run)
    assert metrics.ndcg_at_10 == pytest.approx(agg[nDCG @ 10])
    assert metrics.mrr_at_10 == pytest.approx(agg[RR @ 10])
    assert metrics.recall_at_100 == pytest.approx(agg[R @ 100])
    assert metrics.ndcg_at_10 == pytest.approx(sum(ndcg_at(run, split.qrels).values()) / 8)
    assert metrics.mrr_at_10 == pytest.approx(sum(mrr_at(run, split.qrels).values()) / 8)
    assert metrics.recall_at_100 == pytest.approx(sum(recall_at(run, split.qrels).values()) / 8)
    assert (metrics.n_queries, metrics.n_passages) == (8, 8)


# ---------------------------------------------------------------- detectors


def _record(step, **over) -> StepRecord:
    base = dict(
        step=step,
        loss=2.0,
        ranking_loss=2.0,
        flops_q=1.0,
        flops_d=1.0,
        weight_q=0.0,
        weight_d=0.0,
        active_query=40.0,
        active_passage=200.0,
        score_pos=10.0,
        score_neg=2.0,
        grad_norm=1.0,
        lr=1e-5,
        loss_finite=True,
        grad_finite=True,
    )
    base.update(over)
    return StepRecord(**base)


def _healthy(n=40):
    """A run whose loss falls from 2.0 to about 0.2."""
    return [_record(s, loss=2.0 * 0.94**s, ranking_loss=2.0 * 0.94**s) for s in range(n)]


def _metrics(mrr):
    return RetrievalMetrics(mrr, mrr, mrr, 10, 10, 40.0, 200.0, 0, 0)


def test_healthy_run_is_stable():
    v = verdict(_healthy(), vocab_size=30522, metrics=_metrics(0.8))
    assert v == detectors.Verdict("stable", ())


def _replace(records, step, **over):
    records = list(records)
    records[step] = dataclasses.replace(records[step], **over)
    return records


@pytest.mark.parametrize(
    ("name", "records", "metrics", "status", "step"),
    [
        (
            "non_finite",
            _replace(_healthy(), 12, grad_norm=float("inf"), grad_finite=False),
            None,
            "collapsed",
            12,
        ),
        (
            "loss_spike",  # persistent: three steps above the limit
            _replace(_replace(_replace(_healthy(), 20, loss=50.0), 21, loss=40.0), 22, loss=30.0),
            None,
            "degraded",
            20,
        ),
        (
            "dense_collapse",
            [dataclasses.replace(r, active_passage=29000.0) for r in _healthy()],
            None,
            "collapsed",
            39,
        ),
        (
            "dead_collapse",
            [dataclasses.replace(r, active_query=0.0) for r in _healthy()],
            None,
            "collapsed",
            39,
        ),
        ("score_explosion", _replace(_healthy(), 3, score_pos=2e4), None, "degraded", 3),
        (
            "no_learning",
            [_record(s, ranking_loss=1.0 + 0.001 * s) for s in range(40)],
            None,
            "degraded",
            None,
        ),
        ("eval_near_zero", _healthy(), _metrics(0.01), "collapsed", None),
    ],
)
def test_each_detector_fires(name, records, metrics, status, step):
    v = verdict(records, vocab_size=30522, metrics=metrics)
    assert v.status == status
    assert [e.detector for e in v.evidence] == [name]
    (evidence,) = v.evidence
    assert evidence.step == step and evidence.severity == status


def test_detectors_do_not_fire_at_their_margins():
    th = Thresholds()
    healthy = _healthy()
    # a dense start that training repairs is not a dense collapse
    repaired = [
        dataclasses.replace(r, active_passage=29000.0) if r.step < 10 else r for r in healthy
    ]
    assert detectors.dense_collapse(repaired, th, 30522) is None
    # a bump below the spike factor is not a spike
    assert detectors.loss_spike(_replace(healthy, 20, loss=3.5 * 2.0 * 0.94**19), th) is None
    # small absolute blips of an already low loss are not spikes
    low = [_record(s, loss=0.05) for s in range(30)]
    assert detectors.loss_spike(_replace(low, 25, loss=0.5), th) is None
    assert detectors.score_explosion(_replace(healthy, 3, score_pos=999.0), th) is None
    assert detectors.dead_collapse(_replace(healthy, 39, active_query=0.0), th) is None
    assert detectors.eval_near_zero(_metrics(0.05), th) is None
    assert detectors.eval_near_zero(None, th) is None
    assert detectors.no_learning(healthy, th) is None
    # an already trained model whose loss starts and stays low has nothing left to learn
    settled = [_record(s, ranking_loss=0.3 + 0.001 * s) for s in range(40)]
    assert detectors.no_learning(settled, th) is None


def test_worst_severity_wins():
    records = _replace(_healthy(), 5, score_pos=5e3)
    v = verdict(records, 30522, metrics=_metrics(0.0))
    assert v.status == "collapsed"
    assert {e.detector for e in v.evidence} == {"score_explosion", "eval_near_zero"}
