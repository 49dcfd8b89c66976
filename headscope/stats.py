"""Pure statistics of an MLM head and of its SPLADE representations (numpy only, no torch).

Two facts (docs/science.md, "Two facts that shape headscope") shape the probe statistics here:

- Dividing the head's projection by k maps a raw logit x to x_k = (x - b) / k + b (bias left
  undivided, the default) or to x / k (bias divided too). Both maps are monotone increasing in x
  for each vocabulary column, and so is log(1 + relu(.)). Max-pooling over tokens therefore
  commutes with them: pooling the raw logits once, (B, T, V) -> (B, V), and transforming the
  pooled values gives exactly the SPLADE representation the rescaled model would produce. One
  forward pass serves every candidate k.
- Per-token quantities (the share of positive logits, logit percentiles) do not pool. The caller
  counts positives exactly, using `positive_threshold`, at every k or at some of them (each count
  is a pass over all token logits), and hands over a uniform sample of raw token logits with
  their vocabulary ids. Percentiles are taken from the sample after the transform; the share of
  positive logits at a k that was not counted is estimated from a counted k plus the sampled
  share of logits that cross zero between the two (see `ProbeAccumulator`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headscope.errors import InputError

# Rows of the decoder processed at once when computing row norms in float64: bounds the temporary
# copy to about 4096 x E x 8 bytes (25 MB at E = 768) whatever the vocabulary size.
_ROW_CHUNK = 4096

# pyserini quantises SPLADE weights with a ceiling at 5; weights above it are clipped.
PYSERINI_CEILING = 5.0


@dataclass(frozen=True)
class Summary:
    mean: float  # arithmetic mean
    median: float  # 50th percentile
    p99: float  # 99th percentile
    max: float  # largest value
    min: float  # smallest value
    count: int  # number of values summarised


@dataclass(frozen=True)
class Histogram:
    """Counts of decoder row norms in shared bins, real-token rows and the others apart."""

    edges: tuple[float, ...]  # bin edges, ascending (bins + 1 values)
    real: tuple[int, ...]  # real-token rows per bin
    other: tuple[int, ...]  # rows beyond the tokenizer or placeholder tokens per bin


@dataclass(frozen=True)
class WeightStats:
    row_norm_all: Summary  # L2 norm of every decoder row; .mean is the paper's statistic
    row_norm_real: Summary  # over real-token rows only
    n_rows: int  # decoder rows (the head vocabulary V)
    n_real_rows: int  # rows of real tokens: id < len(tokenizer), not an [unused*] placeholder
    hidden_size: int  # decoder input width E
    bias_mean: float | None  # output bias mean; None without a bias
    bias_std: float | None  # output bias standard deviation
    norm_weight_l2: float | None  # head LayerNorm weight L2 norm
    norm_bias_l2: float | None  # None when the LayerNorm has no bias (ModernBERT)
    dense_spectral_norm: float | None  # largest singular value of the head dense weight
    row_norm_histogram: Histogram | None = None  # row norms in 40 shared bins


@dataclass(frozen=True)
class KStats:
    k: float  # the divisor of the projection
    logit_p01: float  # 1st percentile token logit at this k (reservoir sample)
    logit_p50: float  # median token logit at this k (reservoir sample)
    logit_p99: float  # 99th percentile token logit at this k
    frac_positive: float  # share of token x vocab logits > 0 (exact or estimated: next fields)
    term_weight_mean: float  # mean SPLADE weight over active passage terms
    term_weight_max: float  # largest SPLADE weight over passages
    share_above_5: float  # share of active passage weights > 5 (pyserini's ceiling)
    active_query: float  # mean active terms per query
    active_passage: float  # mean active terms per passage
    active_query_share: float  # active_query / V
    active_passage_share: float  # active_passage / V
    cosine_unrelated: float  # mean cosine between different passages of one batch
    score_pos: float  # mean q_i . d_i
    score_neg: float  # mean q_i . d_j, i != j
    start_loss: float  # mean in-batch InfoNCE on raw dot products, scale 1
    frac_positive_exact: bool = True  # True: counted over every token logit; False: estimated
    frac_positive_se: float = 0.0  # standard error of an estimated frac_positive; 0 when exact


# --------------------------------------------------------------------------------------------
# Metric registry and the one number format


@dataclass(frozen=True)
class Metric:
    """How one statistic is named and shown, wherever it is shown (terminal, HTML/Markdown,
    figures, check rules): every face reads its words and its format from here."""

    name: str  # the KStats field (or, for row_norm_mean, the WeightStats statistic)
    label: str  # words for sentences and figure labels: "start loss"
    column: str  # the document table header (HTML/Markdown): "active / query"
    short: str  # the terminal table header, kept narrow: "active q"
    unit: str  # "" (a plain number), "terms" (a count of vocabulary terms) or "share" (0-1)

    def format(self, x: float | None) -> str:
        """The value in this metric's unit: shares as percentages, the rest as `number`."""
        if x is None:
            return "-"
        return percent(x) if self.unit == "share" else number(x, 4)


# Every per-k statistic of KStats (and the paper's row norm) in one place. `short` keeps the
# terminal's per-k table within 120 columns; `abbrev` in BAND_ABBREV names a failed band there.
METRIC_REGISTRY: dict[str, Metric] = {m.name: m for m in (
    Metric("logit_p01", "token logit p01", "logit p01", "logit p01", ""),
    Metric("logit_p50", "logit median", "logit p50", "logit p50", ""),
    Metric("logit_p99", "token logit p99", "logit p99", "logit p99", ""),
    Metric("frac_positive", "positive logits", "positive logits", "pos. logits", "share"),
    Metric("term_weight_mean", "mean term weight", "weight mean", "weight mean", ""),
    Metric("term_weight_max", "max term weight", "weight max", "weight max", ""),
    Metric("share_above_5", "share of term weights above 5", "weights > 5", ">5", "share"),
    Metric("active_query", "active terms / query", "active / query", "active q", "terms"),
    Metric("active_passage", "active terms / passage", "active / passage", "active p", "terms"),
    Metric("active_query_share", "active query share", "query share", "q share", "share"),
    Metric("active_passage_share", "active passage share", "passage share", "p share", "share"),
    Metric("cosine_unrelated", "cosine between unrelated passages", "cosine unrelated",
           "cos unrel.", ""),
    Metric("score_pos", "q.d score (positive)", "score +", "score +", ""),
    Metric("score_neg", "q.d score (negative)", "score −", "score -", ""),
    Metric("start_loss", "start loss", "start loss", "start loss", ""),
    Metric("row_norm_mean", "mean decoder row norm", "row norm mean", "row norm", ""),
)}

# A failed band in the terminal's per-k table, in a word or two (the reasons spell it out).
BAND_ABBREV = {"active_passage_share": "active", "cosine_unrelated": "cos", "share_above_5": ">5",
               "start_loss": "loss", "term_weight_mean": "weight", "score_pos": "score"}


def number(x: float, digits: int = 4) -> str:
    """The one number format of headscope's messages, tables and figures.

    Thousands separators and no decimals from 1,000 up (12,000, never 1.2e+04); `digits`
    significant digits below (0.682, 279, 2.553); an exponent only under 0.001 (1.23e-04);
    'nan', 'inf' and '-inf' for what is not finite. The terminal's tables use 3 digits,
    sentences and documents 4.
    """
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax == 0:
        return "0"
    if ax < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def percent(x: float) -> str:
    """A share (0-1) as a percentage with 3 significant digits: 12.3%, 0.5%, 100%."""
    if not math.isfinite(x):
        return str(x)
    return f"{100 * x:.3g}%"


def k_text(k: float) -> str:
    """A candidate k as typed: 1, 16, 0.5."""
    return f"{k:g}"


# --------------------------------------------------------------------------------------------
# Weight statistics


def summarize(values: np.ndarray) -> Summary:
    """Mean, median, 99th percentile (linear interpolation), max, min and count of `values`.

    Any shape is accepted and flattened. An empty array gives NaN statistics with count 0 (a
    checkpoint may have no rows of some kind); NaN values propagate.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()  # (N,)
    if flat.size == 0:
        nan = float("nan")
        return Summary(mean=nan, median=nan, p99=nan, max=nan, min=nan, count=0)
    return Summary(
        mean=float(flat.mean()),
        median=float(np.median(flat)),
        p99=float(np.percentile(flat, 99.0)),
        max=float(flat.max()),
        min=float(flat.min()),
        count=int(flat.size),
    )


def row_norms(matrix: np.ndarray) -> np.ndarray:
    """L2 norm of every row of a (V, E) matrix, accumulated in float64, chunked over rows."""
    m = np.asarray(matrix)
    if m.ndim != 2:
        raise InputError(
            f"row_norms() expects a 2-D (V, E) matrix, got shape {m.shape}; pass the decoder "
            "weight as rows = vocabulary."
        )
    out = np.empty(m.shape[0], dtype=np.float64)  # (V,)
    for start in range(0, m.shape[0], _ROW_CHUNK):
        block = m[start : start + _ROW_CHUNK]  # (C, E); einsum casts to float64 as it goes
        out[start : start + block.shape[0]] = np.sqrt(
            np.einsum("ve,ve->v", block, block, dtype=np.float64))  # (C,)
    return out


def _vector(name: str, value, length: int | None) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or (length is not None and arr.shape[0] != length):
        want = f"({length},)" if length is not None else "1-D"
        raise InputError(
            f"{name} has shape {arr.shape}, expected {want}; pass the tensor of the same head."
        )
    return arr


def spectral_norm(matrix: np.ndarray, rtol: float = 1e-14) -> float:
    """Largest singular value, by Lanczos iteration on the Gram matrix, in float64.

    Only the top singular value is needed. With the CPU shared, multithreaded BLAS/LAPACK
    calls stalled: a full SVD of a 768 x 768 head took 5 s, an 80 x 80 eigh 0.5 s, and scipy's
    ARPACK (plus importing scipy.sparse) most of a second. So the products here are
    `np.einsum` loops (no BLAS), the Lanczos vectors are fully reorthogonalised, and the
    iteration stops when the largest Ritz value (which rises monotonically to the answer) grew
    by less than `rtol` (relative) over 4 steps, or the Krylov space is exhausted (exact). A
    fixed start vector keeps the result deterministic; it agrees with the SVD to ~1e-15.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or 0 in m.shape:
        raise InputError(f"spectral_norm() expects a non-empty 2-D matrix, got shape {m.shape}.")
    if m.shape[0] < m.shape[1]:
        m = m.T  # (R, C), C <= R: iterate on the smaller Gram matrix m^T m (C, C)
    n = m.shape[1]
    basis = np.zeros((min(n, 64), n))  # (steps, C) Lanczos vectors, one per row; grows
    alpha, beta = np.zeros(n), np.zeros(n)
    q = np.random.default_rng(0).standard_normal(n)
    q /= np.sqrt(np.einsum("i,i->", q, q))
    theta = last = 0.0
    for j in range(n):
        if j == basis.shape[0]:
            basis = np.concatenate([basis, np.zeros((min(j, n - j), n))])
        basis[j] = q
        w = np.einsum("ri,r->i", m, np.einsum("ri,i->r", m, q))  # (C,) m^T m q
        alpha[j] = np.einsum("i,i->", w, q)
        done = basis[: j + 1]  # (j+1, C)
        for _ in range(2):  # full reorthogonalisation; twice is enough in floating point
            w -= np.einsum("ki,k->i", done, np.einsum("ki,i->k", done, w))
        beta[j] = np.sqrt(np.einsum("i,i->", w, w))
        exhausted = j == n - 1 or beta[j] <= 1e-13 * max(abs(alpha[j]), 1e-300)
        if exhausted or j % 4 == 3:
            # Tridiagonal T (j+1, j+1): alpha on the diagonal, beta beside it.
            t = np.diag(alpha[: j + 1]) + np.diag(beta[:j], 1) + np.diag(beta[:j], -1)
            theta = float(np.linalg.eigvalsh(t)[-1])
            if exhausted or theta - last <= rtol * theta:
                break
            last = theta
        q = w / beta[j]
    return float(np.sqrt(max(theta, 0.0)))


def row_norm_histogram(norms: np.ndarray, real_rows: np.ndarray, bins: int = 40) -> Histogram:
    """Row norms (V,) binned once for all rows, counted for real-token rows and the others."""
    finite = np.isfinite(norms)  # (V,)
    edges = np.histogram_bin_edges(norms[finite], bins=bins) if finite.any() else np.arange(2.0)
    real, _ = np.histogram(norms[finite & real_rows], bins=edges)
    other, _ = np.histogram(norms[finite & ~real_rows], bins=edges)
    return Histogram(tuple(float(e) for e in edges), tuple(int(c) for c in real),
                     tuple(int(c) for c in other))


def weight_stats(
    decoder_weight: np.ndarray,
    real_rows: np.ndarray,
    bias: np.ndarray | None = None,
    norm_weight: np.ndarray | None = None,
    norm_bias: np.ndarray | None = None,
    dense_weight: np.ndarray | None = None,
) -> WeightStats:
    """Statistics of an MLM head's weights.

    decoder_weight: (V, E) projection; real_rows: bool (V,), rows of real tokens; bias: (V,)
    output bias; norm_weight, norm_bias: (E,) head LayerNorm; dense_weight: (E, H) head dense
    layer. Every input is anything `np.asarray` accepts; computations run in float64.
    """
    w = np.asarray(decoder_weight)
    if w.ndim != 2:
        raise InputError(
            f"decoder_weight has shape {w.shape}, expected (V, E); pass the head's projection "
            "matrix with one row per vocabulary entry."
        )
    n_rows, hidden = w.shape
    real = np.asarray(real_rows)
    if real.dtype != np.bool_ or real.shape != (n_rows,):
        raise InputError(
            f"real_rows must be a bool array of shape ({n_rows},), got {real.dtype} "
            f"{real.shape}; build it with vocabulary.vocab_info for this decoder."
        )
    norms = row_norms(w)  # (V,)
    b = _vector("bias", bias, n_rows)
    nw = _vector("norm_weight", norm_weight, hidden)
    nb = _vector("norm_bias", norm_bias, hidden)
    spectral = None
    if dense_weight is not None:
        d = np.asarray(dense_weight, dtype=np.float64)
        if d.ndim != 2 or d.shape[0] != hidden:
            raise InputError(
                f"dense_weight has shape {d.shape}, expected ({hidden}, H); pass the weight of "
                "the head's dense layer (out_features = decoder width)."
            )
        spectral = spectral_norm(d)
    return WeightStats(
        row_norm_all=summarize(norms),
        row_norm_real=summarize(norms[real]),
        n_rows=int(n_rows),
        n_real_rows=int(real.sum()),
        hidden_size=int(hidden),
        bias_mean=None if b is None else float(b.mean()),
        bias_std=None if b is None else float(b.std()),
        norm_weight_l2=None if nw is None else float(np.linalg.norm(nw)),
        norm_bias_l2=None if nb is None else float(np.linalg.norm(nb)),
        dense_spectral_norm=spectral,
        row_norm_histogram=row_norm_histogram(norms, real),
    )


# --------------------------------------------------------------------------------------------
# Logit transforms


def _check_k(k: float) -> float:
    kf = float(k)
    if not math.isfinite(kf) or kf <= 0:
        raise InputError(f"k = {k!r} is not a positive finite number; pass k > 0 (e.g. 8).")
    return kf


def transform_logits(
    x: np.ndarray, k: float, bias: np.ndarray | None, scale_bias: bool
) -> np.ndarray:
    """The logits after dividing the head's projection by k.

    (x - b) / k + b when the bias stays undivided (scale_bias False, the default), x / k when
    the bias is divided too or there is none. `bias` broadcasts against `x`: (V,) for (..., V)
    logits, or the bias gathered at the vocabulary ids of sampled values.
    """
    kf = _check_k(k)
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if bias is None or scale_bias:
        return arr / kf
    b = np.asarray(bias, dtype=arr.dtype)
    return (arr - b) / kf + b


def positive_threshold(
    k: float, bias: np.ndarray | None, scale_bias: bool, vocab_size: int
) -> np.ndarray:
    """(V,) thresholds t with transform_logits(x, k) > 0 exactly when x > t (real arithmetic).

    x / k > 0 iff x > 0; (x - b) / k + b > 0 iff x > b * (1 - k). Only an undivided bias makes
    the threshold, and so the set of active terms, depend on k.
    """
    kf = _check_k(k)
    if bias is None or scale_bias:
        return np.zeros(vocab_size, dtype=np.float64)
    b = _vector("bias", bias, vocab_size)
    assert b is not None
    return b * (1.0 - kf)  # (V,)


def splade_weights(pooled_logits: np.ndarray) -> np.ndarray:
    """SPLADE term weights log(1 + relu(x)), elementwise."""
    arr = np.asarray(pooled_logits)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return np.log1p(np.maximum(arr, 0.0))


def _logsumexp_rows(s: np.ndarray) -> np.ndarray:
    """Numerically stable log(sum(exp(s), axis=1)) of a (B, B) matrix -> (B,)."""
    m = s.max(axis=1, keepdims=True)  # (B, 1)
    return (m + np.log(np.exp(s - m).sum(axis=1, keepdims=True)))[:, 0]  # (B,)


def _unit_rows(w: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row stays zero, so its cosine with anything is 0.

    Each row is first divided by its largest magnitude so that squaring tiny weights cannot
    underflow (which would push a cosine above 1).
    """
    peak = np.abs(w).max(axis=1, keepdims=True)  # (B, 1)
    scaled = np.divide(w, peak, out=np.zeros_like(w), where=peak > 0)  # (B, V), max |.| = 1
    norms = np.sqrt(np.einsum("bv,bv->b", scaled, scaled))[:, None]  # (B, 1)
    return np.divide(scaled, norms, out=np.zeros_like(w), where=norms > 0)  # (B, V)


# --------------------------------------------------------------------------------------------
# Streaming probe statistics


class ProbeAccumulator:
    """Per-k probe statistics, accumulated batch by batch in memory independent of the stream.

    Feed it, per batch of B query-passage pairs, the RAW pooled logits (max over the tokens under
    the attention mask, no k applied) with `add_batch`; exact per-k positive counts of token logits
    with `add_token_counts`; and uniform samples of raw token logits with their vocabulary ids with
    `add_token_sample`. `result()` gives one `KStats` per k, in the order of `ks`.

    Definitions (all over the whole stream; sums and counts are kept, never the arrays):
    - term weights: over active passage entries (weight > 0); 0.0 when no entry is active.
    - active terms: entries with weight > 0, averaged over queries / passages.
    - cosine_unrelated: mean over every ordered pair (i, j), i != j, of passages in the same batch
      (pair-weighted across batches). The cosine of an all-zero vector with anything is 0.
    - score_pos: mean of q_i . d_i over all pairs; score_neg: mean of q_i . d_j, i != j, over all
      such pairs of a batch (pair-weighted across batches).
    - start_loss: per batch, the mean over i of the cross-entropy of softmax_j(q_i . d_j) against
      target j = i (scale 1, stable logsumexp); averaged over batches.
    - Batches of one pair have no off-diagonal pairs: they count towards the term weights, active
      terms and score_pos, and are skipped for cosine_unrelated, score_neg and start_loss (whose
      cross-entropy would be identically 0). If no batch has two pairs, those three are NaN.
    - Percentiles come from a bottom-k reservoir (each sampled value gets a uniform random key, the
      `sample_size` smallest keys are kept): a uniform sample without replacement of everything
      passed to `add_token_sample`. NaN when nothing was sampled. frac_positive is NaN when
      `add_token_counts` was never called.
    - frac_positive is exact at every k whose positives were counted (`add_token_counts` with
      `counted`, default all). At any other k it is estimated with the difference estimator
      p_k = p_c + mean over the sample of (1[x_k > 0] - 1[x_c > 0]), c the first counted k: the
      exact share at c plus the sampled share of logits that cross zero between c and k. It is
      unbiased (the sample is uniform), its standard error (frac_positive_se) is the sample
      standard deviation of that difference over sqrt(sample size), and it is much smaller than
      a plain sampled share's when few logits cross zero between the two k. NaN without a sample.
    """

    def __init__(
        self,
        ks: Sequence[float],
        bias: np.ndarray | None,
        scale_bias: bool,
        vocab_size: int,
        sample_size: int = 65536,
        seed: int = 0,
    ) -> None:
        if len(ks) == 0:
            raise InputError("ProbeAccumulator got no candidate k; pass at least one, e.g. (1,).")
        if int(vocab_size) <= 0:
            raise InputError(f"vocab_size = {vocab_size!r} must be a positive integer.")
        if int(sample_size) < 0:
            raise InputError(f"sample_size = {sample_size!r} must be >= 0 (0 disables it).")
        self.ks = tuple(_check_k(k) for k in ks)
        self.vocab_size = int(vocab_size)
        self.bias = _vector("bias", bias, self.vocab_size)
        self.scale_bias = bool(scale_bias)
        self.sample_size = int(sample_size)
        self._rng = np.random.default_rng(seed)
        n_k = len(self.ks)
        # Token level.
        self._positive = np.zeros(n_k, dtype=np.int64)  # (K,)
        self._counted: np.ndarray | None = None  # (K,) bool, which k were counted; fixed
        self._token_total = 0
        self._sample_values = np.empty(0, dtype=np.float64)  # (S,) S <= sample_size
        self._sample_ids = np.empty(0, dtype=np.int64)  # (S,)
        self._sample_keys = np.empty(0, dtype=np.float64)  # (S,)
        # Pooled level; one slot per k. Only columns that are active at some k can contribute
        # to any pooled statistic: above the smallest threshold over k (see add_batch).
        # The floor is lowered by a relative 1e-9 so that rounding in the transform can never
        # make a column active that the floor left out.
        floor = np.stack([positive_threshold(k, self.bias, self.scale_bias, self.vocab_size)
                          for k in self.ks]).min(axis=0)  # (K, V) -> (V,)
        self._floor = floor - 1e-9 * (np.abs(floor) + 1e-30)
        self._n_queries = 0
        self._n_passages = 0
        self._n_batches = 0
        self._n_neg_batches = 0  # batches with B >= 2
        self._n_offdiag = 0  # sum over those batches of B * (B - 1)
        self._active_q = np.zeros(n_k)  # sum of active terms over queries
        self._active_d = np.zeros(n_k)
        self._weight_sum = np.zeros(n_k)  # sum of active passage weights
        self._weight_max = np.zeros(n_k)
        self._above_5 = np.zeros(n_k)  # count of active passage weights > 5
        self._cos_sum = np.zeros(n_k)
        self._pos_sum = np.zeros(n_k)
        self._neg_sum = np.zeros(n_k)
        self._loss_sum = np.zeros(n_k)  # sum over batches of the per-batch mean loss

    # -- token level ---------------------------------------------------------------------------

    def add_token_counts(
        self, positive: np.ndarray, total: int, counted: Sequence[bool] | None = None
    ) -> None:
        """positive: (K,) number of token logits > 0 after the rescale, per k; total: number of
        token x vocabulary logits they were counted over (tokens under the attention mask x V);
        counted: (K,) which k were counted (default all; the others' entries are ignored and
        their share is estimated from the token sample). Every call must count the same k."""
        pos = np.asarray(positive)
        if pos.shape != (len(self.ks),):
            raise InputError(
                f"positive counts have shape {pos.shape}, expected ({len(self.ks)},): one per k."
            )
        mask = np.ones(len(self.ks), dtype=bool) if counted is None else np.asarray(
            counted, dtype=bool)
        if mask.shape != pos.shape or not mask.any():
            raise InputError(
                f"counted = {list(mask.ravel())} must hold one flag per k, at least one True."
            )
        if self._counted is not None and not np.array_equal(mask, self._counted):
            raise InputError(
                "add_token_counts was called with different counted k than before; count the "
                "same k in every batch."
            )
        self._counted = mask
        pos = np.where(mask, pos, 0)
        if int(total) < 0 or np.any(pos < 0) or np.any(pos > int(total)):
            raise InputError(
                f"positive counts {pos.tolist()} are not within [0, total = {total}]; count "
                "logits over the same tokens as total."
            )
        self._positive += pos.astype(np.int64)
        self._token_total += int(total)

    def add_token_sample(self, values: np.ndarray, vocab_ids: np.ndarray) -> None:
        """values: (N,) raw token logits; vocab_ids: (N,) their vocabulary columns."""
        vals = np.asarray(values, dtype=np.float64).ravel()  # (N,)
        ids = np.asarray(vocab_ids).ravel()  # (N,)
        if vals.shape != ids.shape:
            raise InputError(
                f"token sample has {vals.size} values but {ids.size} vocab ids; pass one id per "
                "value."
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise InputError(
                f"token sample vocab ids must lie in [0, {self.vocab_size}); got "
                f"[{ids.min()}, {ids.max()}]."
            )
        if self.sample_size == 0 or vals.size == 0:
            return
        keys = self._rng.random(vals.size)  # (N,) uniform keys for bottom-k sampling
        all_keys = np.concatenate([self._sample_keys, keys])  # (S + N,)
        all_vals = np.concatenate([self._sample_values, vals])
        all_ids = np.concatenate([self._sample_ids, ids.astype(np.int64)])
        if all_keys.size > self.sample_size:
            keep = np.argpartition(all_keys, self.sample_size - 1)[: self.sample_size]  # (S,)
            all_keys, all_vals, all_ids = all_keys[keep], all_vals[keep], all_ids[keep]
        self._sample_keys, self._sample_values, self._sample_ids = all_keys, all_vals, all_ids

    # -- pooled level --------------------------------------------------------------------------

    def add_batch(self, pooled_q: np.ndarray, pooled_d: np.ndarray) -> None:
        """pooled_q, pooled_d: (B, V) raw pooled logits of B queries and their B passages."""
        q_raw = np.asarray(pooled_q, dtype=np.float64)
        d_raw = np.asarray(pooled_d, dtype=np.float64)
        if q_raw.ndim != 2 or q_raw.shape != d_raw.shape or q_raw.shape[1] != self.vocab_size:
            raise InputError(
                f"pooled logits have shapes {q_raw.shape} (queries) and {d_raw.shape} "
                f"(passages), expected two equal (B, {self.vocab_size}) arrays; pool the raw "
                "logits of B query-passage pairs over tokens first."
            )
        n = q_raw.shape[0]
        if n == 0:
            return
        self._n_queries += n
        self._n_passages += n
        self._n_batches += 1
        has_pairs = n >= 2
        if has_pairs:
            self._n_neg_batches += 1
            self._n_offdiag += n * (n - 1)
        offdiag = ~np.eye(n, dtype=bool)  # (B, B)
        # Columns no text of the batch activates at any k add zeros to every statistic: keep the
        # others only, (B, V) -> (B, C). A sparse head keeps a few percent of the columns.
        floor = self._floor
        cols = np.flatnonzero(((q_raw > floor) | (d_raw > floor)).any(axis=0))  # (C,)
        if cols.size == 0:
            cols = np.zeros(1, dtype=np.intp)  # one inactive column keeps the shapes (B, 1)
        bias = self.bias
        if cols.size < self.vocab_size:
            q_raw, d_raw = q_raw[:, cols], d_raw[:, cols]  # (B, C)
            bias = None if bias is None else bias[cols]  # (C,)
        for i, k in enumerate(self.ks):
            wq = self._weights(q_raw, k, bias, self.scale_bias)  # (B, C)
            wd = self._weights(d_raw, k, bias, self.scale_bias)  # (B, C)
            active_d = wd > 0  # (B, C)
            self._active_q[i] += np.count_nonzero(wq > 0)
            self._active_d[i] += np.count_nonzero(active_d)
            active_w = wd[active_d]  # (A,)
            if active_w.size:
                self._weight_sum[i] += active_w.sum()
                self._weight_max[i] = max(self._weight_max[i], float(active_w.max()))
                self._above_5[i] += np.count_nonzero(active_w > PYSERINI_CEILING)
            scores = wq @ wd.T  # (B, B): scores[i, j] = q_i . d_j
            self._pos_sum[i] += np.trace(scores)
            if not has_pairs:
                continue
            self._neg_sum[i] += scores[offdiag].sum()
            unit = _unit_rows(wd)  # (B, C)
            cos = unit @ unit.T  # (B, B)
            self._cos_sum[i] += cos[offdiag].sum()
            ce = _logsumexp_rows(scores) - np.diag(scores)  # (B,) cross-entropy, target i
            self._loss_sum[i] += ce.mean()

    @staticmethod
    def _weights(raw: np.ndarray, k: float, bias: np.ndarray | None, scale_bias: bool
                 ) -> np.ndarray:
        """splade_weights(transform_logits(raw, k, bias, scale_bias)), the same arithmetic in
        one buffer: (B, C) -> (B, C)."""
        if bias is None or scale_bias:
            w = raw / k
        else:
            w = raw - bias
            w /= k
            w += bias
        np.maximum(w, 0.0, out=w)
        return np.log1p(w, out=w)

    # -- result --------------------------------------------------------------------------------

    def _frac_positive(self, i: int) -> tuple[float, bool, float]:
        """(share, exact, standard error) of token logits > 0 at the i-th k."""
        nan = float("nan")
        if self._counted is None or not self._token_total:
            return nan, True, 0.0
        if self._counted[i]:
            return float(self._positive[i] / self._token_total), True, 0.0
        c = int(np.flatnonzero(self._counted)[0])
        n = self._sample_values.size
        if n == 0:
            return nan, False, nan
        ids = self._sample_ids
        x = self._sample_values  # (S,) raw token logits
        pos_k = x > positive_threshold(self.ks[i], self.bias, self.scale_bias, self.vocab_size)[ids]
        pos_c = x > positive_threshold(self.ks[c], self.bias, self.scale_bias, self.vocab_size)[ids]
        diff = pos_k.astype(np.float64) - pos_c  # (S,) in {-1, 0, 1}
        exact_c = self._positive[c] / self._token_total
        est = float(np.clip(exact_c + diff.mean(), 0.0, 1.0))
        se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else nan
        return est, False, se

    def _percentiles(self, k: float) -> tuple[float, float, float]:
        if self._sample_values.size == 0:
            nan = float("nan")
            return nan, nan, nan
        b = None if self.bias is None else self.bias[self._sample_ids]  # (S,)
        x = transform_logits(self._sample_values, k, b, self.scale_bias)  # (S,)
        p01, p50, p99 = np.percentile(x, [1.0, 50.0, 99.0])
        return float(p01), float(p50), float(p99)

    def result(self) -> tuple[KStats, ...]:
        """One KStats per k, in the order given. Raises InputError before any batch was added."""
        if self._n_batches == 0:
            raise InputError(
                "ProbeAccumulator.result() called before any add_batch(); feed at least one "
                "batch of pooled query and passage logits."
            )
        nan = float("nan")
        out = []
        for i, k in enumerate(self.ks):
            p01, p50, p99 = self._percentiles(k)
            frac, exact, se = self._frac_positive(i)
            n_active = self._active_d[i]
            aq = self._active_q[i] / self._n_queries
            ad = n_active / self._n_passages
            neg = self._n_neg_batches > 0
            out.append(
                KStats(
                    k=k,
                    logit_p01=p01,
                    logit_p50=p50,
                    logit_p99=p99,
                    frac_positive=frac,
                    term_weight_mean=float(self._weight_sum[i] / n_active) if n_active else 0.0,
                    term_weight_max=float(self._weight_max[i]),
                    share_above_5=float(self._above_5[i] / n_active) if n_active else 0.0,
                    active_query=float(aq),
                    active_passage=float(ad),
                    active_query_share=float(aq / self.vocab_size),
                    active_passage_share=float(ad / self.vocab_size),
                    # A mean of cosines of unit rows: at most 1 but for rounding.
                    cosine_unrelated=(min(1.0, float(self._cos_sum[i] / self._n_offdiag))
                                      if neg else nan),
                    score_pos=float(self._pos_sum[i] / self._n_queries),
                    score_neg=float(self._neg_sum[i] / self._n_offdiag) if neg else nan,
                    start_loss=float(self._loss_sum[i] / self._n_neg_batches) if neg else nan,
                    frac_positive_exact=exact,
                    frac_positive_se=se,
                )
            )
        return tuple(out)
