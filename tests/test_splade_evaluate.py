"""Exact retrieval evaluation: every term counts; pruning is only a separate serving figure."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from headscope.splade import evaluate as ev
from headscope.splade.data import EvalSplit
from headscope.splade.evaluate import EvalConfig, evaluate, mrr_at, ndcg_at, recall_at


class TableTokenizer:
    """Texts are space-separated token ids ("3 7")."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        rows = [[int(t) for t in text.split()][:max_length] for text in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.int64)
        mask = torch.zeros(len(rows), width, dtype=torch.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class TableModel(torch.nn.Module):
    """Token id t has the fixed vocabulary logits table[t]: SPLADE weights are known by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.config = SimpleNamespace()

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def _logit(weight: float) -> float:
    """The logit whose SPLADE weight log1p(relu(x)) is `weight`."""
    return math.expm1(weight)


def test_pruning_changes_the_ranking_only_in_the_serving_figure():
    # Token 0 is the query: weights (2, 1, 0, 0). Passage "a" (token 1): (0, 3, 0, 0), exact
    # score 1 * 3 = 3. Passage "b" (token 2): (1, 0, 0, 0), exact score 2 * 1 = 2. Exact: a
    # first. Pruned to 1 term the query keeps only term 0: a scores 0, b scores 2.
    table = torch.full((3, 4), -1.0)
    table[0, 0], table[0, 1] = _logit(2.0), _logit(1.0)
    table[1, 1] = _logit(3.0)
    table[2, 0] = _logit(1.0)
    split = EvalSplit({"q": "0"}, {"a": "1", "b": "2"}, {"q": {"a": 1}})
    metrics = evaluate(TableModel(table), TableTokenizer(), split, EvalConfig(serving_terms=1))
    assert metrics.mrr_at_10 == 1.0
    assert metrics.per_query_mrr == {"q": 1.0}
    assert metrics.per_query_ndcg == {"q": 1.0}
    assert metrics.serving is not None
    assert metrics.serving.label == "pruned to 1 terms (serving)"
    assert metrics.serving.mrr_at_10 == 0.0  # a is no longer retrieved at all
    assert metrics.serving.recall_at_100 == 0.0
    assert (metrics.truncated_queries, metrics.truncated_passages) == (1, 0)
    assert (metrics.active_query, metrics.active_passage) == (2.0, 1.0)
    # Without a serving cap there is no serving figure and nothing is counted as truncated.
    exact_only = evaluate(TableModel(table), TableTokenizer(), split,
                          EvalConfig(serving_terms=None))
    assert exact_only.serving is None and exact_only.truncated_queries == 0
    assert exact_only.mrr_at_10 == 1.0


def _naive_run(q_weights, d_weights, qids, pids, depth):
    run = {}
    for qid, q in zip(qids, q_weights, strict=True):
        scores = {}
        for pid, d in zip(pids, d_weights, strict=True):
            s = sum(float(q[j]) * float(d[j]) for j in range(len(q)))  # every term
            if s > 0:
                scores[pid] = s
        best = sorted(scores.items(), key=lambda it: (it[1], it[0]), reverse=True)[:depth]
        run[qid] = dict(best)
    return run


@pytest.mark.parametrize("depth", [100, 5])
def test_matches_a_naive_loop_over_all_terms(monkeypatch, depth):
    monkeypatch.setattr(ev, "DEPTH", depth)  # 5: the streamed top-k merge must keep the best
    g = torch.Generator().manual_seed(0)
    vocab, n_tokens = 60, 40
    table = torch.randn(n_tokens, vocab, generator=g) + 0.5  # dense: most logits positive
    texts = [" ".join(str(int(t)) for t in torch.randint(0, n_tokens, (n,), generator=g))
             for n in (1, 2, 3, 4, 5, 2, 3) * 6]
    queries = {f"q{i}": texts[i] for i in range(12)}
    corpus = {f"d{i:02d}": texts[12 + i] for i in range(30)}
    qrels = {f"q{i}": {f"d{(3 * i) % 30:02d}": 1, f"d{(3 * i + 7) % 30:02d}": 2}
             for i in range(12)}
    split = EvalSplit(queries, corpus, qrels)
    model, tok = TableModel(table), TableTokenizer()
    metrics = evaluate(model, tok, split, EvalConfig(batch_size=4, serving_terms=None))

    def weights(text):
        ids = [int(t) for t in text.split()]
        return torch.log1p(torch.relu(table[ids].amax(dim=0)))

    qids, pids = list(queries), list(corpus)
    run = _naive_run([weights(queries[q]) for q in qids], [weights(corpus[p]) for p in pids],
                     qids, pids, depth)
    ref_mrr, ref_ndcg = mrr_at(run, qrels), ndcg_at(run, qrels)
    assert metrics.per_query_mrr == pytest.approx(ref_mrr)
    assert metrics.per_query_ndcg == pytest.approx(ref_ndcg)
    assert metrics.mrr_at_10 == pytest.approx(sum(ref_mrr.values()) / 12)
    assert metrics.recall_at_100 == pytest.approx(sum(recall_at(run, qrels).values()) / 12)
    assert metrics.active_passage > vocab / 2  # dense: pruning would have mattered
    assert (metrics.n_queries, metrics.n_passages) == (12, 30)


def test_serving_figure_matches_a_naive_pruned_loop():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(20, 30, generator=g) + 0.3
    queries = {f"q{i}": f"{i} {i + 1}" for i in range(8)}
    corpus = {f"d{i}": f"{i} {(i * 7) % 20}" for i in range(20)}
    qrels = {f"q{i}": {f"d{(i + 1) % 20}": 1} for i in range(8)}
    split = EvalSplit(queries, corpus, qrels)
    metrics = evaluate(TableModel(table), TableTokenizer(), split,
                       EvalConfig(batch_size=3, serving_terms=4))

    def pruned(text):
        w = torch.log1p(torch.relu(table[[int(t) for t in text.split()]].amax(dim=0)))
        keep = w.topk(4).indices
        out = torch.zeros_like(w)
        out[keep] = w[keep]
        return out

    run = _naive_run([pruned(t) for t in queries.values()], [pruned(t) for t in corpus.values()],
                     list(queries), list(corpus), 100)
    assert metrics.serving is not None
    assert metrics.serving.mrr_at_10 == pytest.approx(sum(mrr_at(run, qrels).values()) / 8)
    assert metrics.serving.ndcg_at_10 == pytest.approx(sum(ndcg_at(run, qrels).values()) / 8)


def test_serving_terms_must_be_positive():
    from headscope.errors import InputError

    with pytest.raises(InputError) as err:
        EvalConfig(serving_terms=0)
    assert str(err.value) == "EvalConfig.serving_terms must be at least 1 (or None), got 0."
