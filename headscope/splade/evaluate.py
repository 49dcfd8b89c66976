"""Retrieval evaluation of a SPLADE model on an `EvalSplit`, in bounded memory.

Texts are encoded batch by batch into term-weight vectors (pooling.splade_pool) and stored as
torch CSR matrices holding at most `max_terms` weights per text (the largest): memory is at most
n_texts * max_terms * 12 bytes whatever the model does. A trained SPLADE keeps 30-250 terms per
text, so the cap only bites on dense (collapsed) models; `RetrievalMetrics` says how many texts it
truncated. Scores are dot products, computed for chunks of queries against the whole corpus,
keeping each query's top 100.

Metrics follow trec_eval (and so ir-measures): nDCG@10 with gain = relevance grade and log2
discount, MRR@10 (reciprocal rank of the first relevant passage, 0 beyond rank 10) and Recall@100
(share of a query's relevant passages in its top 100). Ties in score are broken by passage id,
descending, as trec_eval does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from headscope.checkpoint import token_limit
from headscope.errors import InputError
from headscope.splade.data import EvalSplit
from headscope.splade.pooling import splade_pool

DEPTH = 100  # retrieved passages per query: enough for Recall@100


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 64
    max_query_length: int = 32
    max_passage_length: int = 128
    max_terms: int = 2048  # largest weights kept per encoded text
    query_chunk: int = 256  # queries scored at once against the corpus
    device: str = "cpu"


@dataclass(frozen=True)
class RetrievalMetrics:
    ndcg_at_10: float
    mrr_at_10: float
    recall_at_100: float
    n_queries: int
    n_passages: int
    active_query: float  # mean non-zero terms per query (before the max_terms cap)
    active_passage: float
    truncated_queries: int  # texts that had more than max_terms active terms
    truncated_passages: int
    # MRR@10 of each judged query, in the split's qrels order (paired comparisons of arms)
    mrr_per_query: tuple[float, ...] = ()


@dataclass(frozen=True)
class Encoded:
    matrix: torch.Tensor  # sparse CSR (N, V), float32
    active_mean: float
    truncated: int


@torch.no_grad()
def encode(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 64,
    max_terms: int = 2048,
    device: str = "cpu",
) -> Encoded:
    """SPLADE term weights of `texts` as a CSR matrix (N, V) keeping <= max_terms per row.

    Texts are batched in order of length (less padding, and the MLM head's (B, T, V) logits
    dominate the cost); rows come back in the order of `texts`."""
    if not texts:
        raise InputError("Nothing to encode: the list of texts is empty.")
    was_training = model.training
    model.eval()
    rows: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(texts)  # type: ignore[list-item]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    active_total = 0.0
    truncated = 0
    vocab = 0
    try:
        for start in range(0, len(order), batch_size):
            ids = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in ids],
                padding=True,
                truncation=True,
                max_length=token_limit(model, max_length),
                return_tensors="pt",
            )
            mask = batch["attention_mask"].to(device)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=mask
            ).logits  # (B, T, V)
            weights = splade_pool(logits, mask).float()  # (B, V)
            vocab = weights.shape[1]
            active = (weights > 0).sum(dim=1)  # (B,)
            active_total += active.sum().item()
            truncated += int((active > max_terms).sum().item())
            top_vals, top_cols = weights.topk(min(max_terms, vocab), dim=1)  # (B, k), descending
            for i, row_vals, row_cols, n in zip(
                ids, top_vals, top_cols, active.tolist(), strict=True
            ):
                n = min(n, top_vals.shape[1])
                keep = row_cols[:n].argsort()  # CSR wants sorted column indices per row
                rows[i] = (row_cols[:n][keep].cpu(), row_vals[:n][keep].cpu())
    finally:
        model.train(was_training)
    crow = torch.zeros(len(texts) + 1, dtype=torch.int64)
    crow[1:] = torch.tensor([len(c) for c, _ in rows]).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(
            crow,
            torch.cat([c for c, _ in rows]),
            torch.cat([v for _, v in rows]),
            size=(len(texts), vocab),
            check_invariants=False,
        )
    return Encoded(matrix, active_total / len(texts), truncated)


def search(
    queries: torch.Tensor, corpus: torch.Tensor, *, depth: int = DEPTH, query_chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`depth` passages per query by dot product: CSR (Q, V) x CSR (D, V) ->
    (scores (Q, k), passage indices (Q, k)), k = min(depth, D), best first."""
    k = min(depth, corpus.shape[0])
    all_scores, all_index = [], []
    for start in range(0, queries.shape[0], query_chunk):
        stop = min(start + query_chunk, queries.shape[0])
        chunk = _dense_rows(queries, start, stop)  # (q, V)
        scores = torch.sparse.mm(corpus, chunk.T).T  # (q, D)
        top_scores, top_index = scores.topk(k, dim=1)  # (q, k)
        all_scores.append(top_scores)
        all_index.append(top_index)
    return torch.cat(all_scores), torch.cat(all_index)


def _dense_rows(matrix: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop of a CSR matrix as a dense (stop - start, V) tensor."""
    crow = matrix.crow_indices()
    lo, hi = int(crow[start]), int(crow[stop])
    dense = torch.zeros(stop - start, matrix.shape[1])
    counts = crow[start + 1 : stop + 1] - crow[start:stop]  # (rows,)
    rows = torch.repeat_interleave(torch.arange(stop - start), counts)  # (nnz,)
    dense[rows, matrix.col_indices()[lo:hi]] = matrix.values()[lo:hi]
    return dense


Run = Mapping[str, Mapping[str, float]]  # query id -> passage id -> score
Qrels = Mapping[str, Mapping[str, int]]


def _ranked(scores: Mapping[str, float]) -> list[str]:
    # trec_eval order: score descending, then passage id descending.
    return [d for d, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def ndcg_at(run: Run, qrels: Qrels, k: int = 10) -> dict[str, float]:
    out = {}
    for qid, judged in qrels.items():
        ranking = _ranked(run.get(qid, {}))[:k]
        dcg = sum(
            judged.get(d, 0) / math.log2(i + 2)
            for i, d in enumerate(ranking)
            if judged.get(d, 0) > 0
        )
        ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        out[qid] = dcg / idcg if idcg > 0 else 0.0
    return out


def mrr_at(run: Run, qrels: Qrels, k: int = 10) -> dict[str, float]:
    out = {}
    for qid, judged in qrels.items():
        ranking = _ranked(run.get(qid, {}))[:k]
        out[qid] = next((1.0 / (i + 1) for i, d in enumerate(ranking) if judged.get(d, 0) > 0), 0.0)
    return out


def recall_at(run: Run, qrels: Qrels, k: int = 100) -> dict[str, float]:
    out = {}
    for qid, judged in qrels.items():
        relevant = {d for d, g in judged.items() if g > 0}
        ranking = set(_ranked(run.get(qid, {}))[:k])
        out[qid] = len(relevant & ranking) / len(relevant) if relevant else 0.0
    return out


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def evaluate(
    model,
    tokenizer,
    split: EvalSplit,
    config: EvalConfig = EvalConfig(),
    progress: Callable[[str], None] | None = None,
) -> RetrievalMetrics:
    """Encode `split`'s corpus and queries, retrieve, and score the run against its qrels."""
    if not split.qrels or not split.corpus:
        raise InputError(
            "The evaluation split has no judged queries or no passages; provide qrels and a corpus."
        )
    qids = [q for q in split.qrels if q in split.queries]
    pids = list(split.corpus)
    if progress:
        progress(f"encoding {len(pids)} passages")
    docs = encode(
        model,
        tokenizer,
        [split.corpus[p] for p in pids],
        max_length=config.max_passage_length,
        batch_size=config.batch_size,
        max_terms=config.max_terms,
        device=config.device,
    )
    if progress:
        progress(f"encoding {len(qids)} queries")
    queries = encode(
        model,
        tokenizer,
        [split.queries[q] for q in qids],
        max_length=config.max_query_length,
        batch_size=config.batch_size,
        max_terms=config.max_terms,
        device=config.device,
    )
    scores, index = search(queries.matrix, docs.matrix, query_chunk=config.query_chunk)
    run = {
        qid: {
            pids[j]: s
            for j, s in zip(row_index.tolist(), row_scores.tolist(), strict=True)
            if s > 0
        }
        for qid, row_scores, row_index in zip(qids, scores, index, strict=True)
    }
    qrels = {q: split.qrels[q] for q in qids}
    mrr = mrr_at(run, qrels, 10)
    return RetrievalMetrics(
        ndcg_at_10=_mean(ndcg_at(run, qrels, 10)),
        mrr_at_10=_mean(mrr),
        recall_at_100=_mean(recall_at(run, qrels, 100)),
        n_queries=len(qids),
        n_passages=len(pids),
        active_query=queries.active_mean,
        active_passage=docs.active_mean,
        truncated_queries=queries.truncated,
        truncated_passages=docs.truncated,
        mrr_per_query=tuple(mrr[q] for q in qids),
    )
