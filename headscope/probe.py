"""Probe texts and the streaming forward passes that turn them into per-k statistics.

A probe set is a tuple of (query, passage) pairs. The built-in one is cut from the Python
reference manual shipped with the standard library (`pydoc_data.topics`), so it needs no download;
its text changes between Python versions, which is why every probe set records the sha256 of its
content. `run_probe` streams the pairs through a masked LM batch by batch: one forward pass for
the queries and one for the passages, then everything the statistics need (pooled logits, exact
positive counts, a small sample of token logits) is reduced on the model's device before the
batch's logits are dropped. `headscope.stats.ProbeAccumulator` does the rest.

What is exact and what is estimated: every statistic per text (active terms, term weights,
scores, cosine, start loss) is exact at every k, from the max-pooled (B, V) logits. Of the
per-token statistics, the logit percentiles come from a uniform sample of token logits, and the
share of positive logits is counted exactly at one k (k = 1 when it is a candidate) and estimated
at the others from that count and the sample (`KStats.frac_positive_exact` and
`frac_positive_se` say which and how precisely). With no bias, an all-zero bias, or the bias
divided too, one count serves every k and all are exact; `ProbeConfig.count_every_k` counts
every k exactly at the cost of one more pass over the logits per k.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headscope.errors import InputError
from headscope.stats import KStats, ProbeAccumulator, positive_threshold

if TYPE_CHECKING:
    import torch

PROBE_SET_VERSION = "stdlib-v1"
FILE_PROBE_VERSION = "file-v1"  # how queries are derived from the texts of a probe file

# Query derivation (inverse cloze): the query is the first sentence of a text, cut to at most
# this many words, and that sentence is removed from the passage.
QUERY_MAX_WORDS = 16
# Built-in set: passages of consecutive prose sentences; packing stops once a passage reaches
# _PASSAGE_TARGET words and never exceeds _PASSAGE_MAX; shorter than _PASSAGE_MIN is dropped.
_PASSAGE_MIN = 40
_PASSAGE_TARGET = 50
_PASSAGE_MAX = 150
_QUERY_MIN_WORDS = 4  # a shorter first sentence is a label, not a query ("Changed in 3.8.")
_QUERY_SENTENCE_MAX = 40  # longer "sentences" are run-on lists, not a query

# A sentence ends at . ! or ? followed by space and an upper-case letter, a quote or a bracket.
# "e.g. the" and "i.e. a" do not split (lower-case follows).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\u201c\u2018])")
_PLAIN_WORD = re.compile(r"[A-Za-z][a-z'\u2019-]*[,.;:]?")
_CODE_SYMBOLS = frozenset("=(){}[]<>_*#@%\\|")
_RULE_LINE = re.compile(r"[*=\-~^+#]+")  # section underlines
_LIST_OR_CODE_START = re.compile(r"(\* |- |\d+\. |\.\.\.)")


@dataclass(frozen=True)
class ProbePair:
    query: str
    passage: str


@dataclass(frozen=True)
class ProbeSet:
    name: str
    version: str
    pairs: tuple[ProbePair, ...]
    sha256: str  # content_sha256(pairs)


def content_sha256(pairs: Sequence[ProbePair]) -> str:
    """sha256 of the pairs written as JSONL, one {"passage", "query"} object per line (sorted
    keys, UTF-8, "\\n" after each line). Loading that JSONL with `load_probe_file` gives the same
    hash."""
    h = hashlib.sha256()
    for p in pairs:
        line = json.dumps(
            {"query": p.query, "passage": p.passage}, ensure_ascii=False, sort_keys=True
        )
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def unknown_token_share(tokenizer, probe: ProbeSet, config: ProbeConfig) -> float | None:
    """Share of the probe's tokens that the tokenizer maps to its unknown token.

    Queries and passages are tokenised as the probe runs them (cut at max_query_length and
    max_passage_length), without the special tokens the tokenizer adds around each text. None
    when the tokenizer has no unknown token (byte-level BPE represents every text) or the
    probe has no token.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return None
    pairs = probe.pairs[: config.n_pairs]
    total = unknown = 0
    for texts, max_length in (([p.query for p in pairs], config.max_query_length),
                              ([p.passage for p in pairs], config.max_passage_length)):
        if not texts:
            continue
        ids = tokenizer(texts, add_special_tokens=False, truncation=True,
                        max_length=max_length)["input_ids"]
        total += sum(len(row) for row in ids)
        unknown += sum(t == unk for row in ids for t in row)
    return unknown / total if total else None


def split_sentences(text: str) -> list[str]:
    """Sentences of one text (whitespace collapsed)."""
    flat = " ".join(text.split())
    return [s for s in _SENTENCE_BREAK.split(flat) if s]


def derive_pair(text: str) -> ProbePair | None:
    """Inverse-cloze pair from one text: the query is its first sentence cut to QUERY_MAX_WORDS
    words, the passage is the rest of the text (the query sentence is removed, so a match must
    come from related terms rather than copied ones). None when the text has a single sentence."""
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return None
    query = " ".join(sentences[0].split()[:QUERY_MAX_WORDS])
    return ProbePair(query=query, passage=" ".join(sentences[1:]))


# --------------------------------------------------------------------------------------------
# Built-in probe set


def _prose(block: str) -> str | None:
    """The paragraph as one line of prose, or None when it looks like code, grammar, a heading
    or a list (any such line disqualifies the whole paragraph, so no text is spliced)."""
    lines = textwrap.dedent(block).strip("\n").split("\n")
    for line in lines:
        if (
            line[:1].isspace()  # indented relative to the paragraph: a code or grammar block
            or ">>>" in line
            or "::=" in line
            or _RULE_LINE.fullmatch(line.strip())
            or _LIST_OR_CODE_START.match(line)
        ):
            return None
    text = " ".join(" ".join(lines).split())
    tokens = text.split()
    if sum(ch in _CODE_SYMBOLS for ch in text) > 0.08 * len(text):
        return None
    if sum(bool(_PLAIN_WORD.fullmatch(t)) for t in tokens) < 0.5 * len(tokens):
        return None
    if not text.endswith((".", "!", "?", ":")):
        return None
    return text


def prose_blocks(doc: str) -> list[str | None]:
    """The paragraphs (blank-line separated) of one reference-manual topic, in order: each as
    one line of prose, or None where it looks like code, grammar, a heading or a list.

    With `split_sentences`, the one text recipe over `pydoc_data.topics`: the built-in probe
    packs runs of prose paragraphs into pairs, `splade.data.stdlib_ict` cuts one pair from each.
    """
    return [_prose(block) for block in re.split(r"\n[ \t]*\n", doc) if block.strip()]


def stdlib_topics() -> list[str]:
    """The topics of Python's reference manual (`pydoc_data.topics`), in the order of their
    names."""
    from pydoc_data.topics import topics  # reference-manual prose, part of the stdlib

    return [topics[name] for name in sorted(topics)]


def _topic_pairs(doc: str) -> list[ProbePair]:
    """Pairs from one topic: runs of consecutive prose paragraphs are split into sentences and
    packed greedily into query + passage windows."""
    runs: list[list[str]] = [[]]
    for text in prose_blocks(doc):
        if text is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].extend(split_sentences(text))
    pairs = []
    for sentences in runs:
        i = 0
        while i < len(sentences):
            q_words = sentences[i].split()
            if not _QUERY_MIN_WORDS <= len(q_words) <= _QUERY_SENTENCE_MAX:
                i += 1
                continue
            j, words = i + 1, 0
            while (
                j < len(sentences)
                and words < _PASSAGE_TARGET
                and words + len(sentences[j].split()) <= _PASSAGE_MAX
            ):
                words += len(sentences[j].split())
                j += 1
            if words >= _PASSAGE_MIN:
                pairs.append(
                    ProbePair(
                        query=" ".join(q_words[:QUERY_MAX_WORDS]),
                        passage=" ".join(sentences[i + 1 : j]),
                    )
                )
                i = j
            else:
                i += 1
    return pairs


def _pair_key(pair: ProbePair) -> str:
    return hashlib.sha256(f"{pair.query}\n{pair.passage}".encode()).hexdigest()


def builtin_candidates() -> tuple[ProbePair, ...]:
    """Every pair the built-in recipe yields on this Python, deduplicated, in hash order.

    Ordering by the sha256 of each pair interleaves topics (a batch holds unrelated texts) and
    makes builtin_probe(n) a prefix of builtin_probe(m) for n < m.
    """
    seen: dict[str, ProbePair] = {}
    for doc in stdlib_topics():
        for pair in _topic_pairs(doc):
            seen.setdefault(_pair_key(pair), pair)
    return tuple(seen[key] for key in sorted(seen))


def builtin_probe(n_pairs: int = 256) -> ProbeSet:
    """The built-in probe set "stdlib-v1": n_pairs inverse-cloze pairs from Python's reference
    manual (pydoc_data.topics), deterministic for a given Python version.

    Recipe: each topic is split into paragraphs; paragraphs that look like code, grammar,
    headings or lists are skipped; consecutive prose paragraphs are split into sentences; a
    sentence of 4-40 words becomes the query (cut to 16 words) and the following sentences, packed
    until 50 words (never over 150, at least 40), the passage. The query sentence is not part of
    the passage. Pairs are ordered by their sha256 and the first n_pairs are taken.
    """
    if int(n_pairs) < 1:
        raise InputError(f"n_pairs = {n_pairs!r} must be at least 1; pass e.g. 256.")
    candidates = builtin_candidates()
    if n_pairs > len(candidates):
        raise InputError(
            f"The built-in probe set has {len(candidates)} pairs on this Python, fewer than the "
            f"{n_pairs} requested; ask for at most {len(candidates)} or pass a probe file."
        )
    pairs = candidates[:n_pairs]
    return ProbeSet(
        name="builtin", version=PROBE_SET_VERSION, pairs=pairs, sha256=content_sha256(pairs)
    )


# --------------------------------------------------------------------------------------------
# Probe files


def _file_error(path: Path, line_no: int, problem: str) -> InputError:
    return InputError(f"Probe file {path}, line {line_no}: {problem}.")


def _pair_from_text(path: Path, line_no: int, text: str) -> ProbePair:
    pair = derive_pair(text)
    if pair is None:
        raise _file_error(
            path,
            line_no,
            "the text has a single sentence, so no query can be cut from it; give at least two "
            'sentences per text, or use JSONL with {"query": ..., "passage": ...}',
        )
    return pair


def _pair_from_json(path: Path, line_no: int, line: str) -> ProbePair:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _file_error(path, line_no, f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise _file_error(path, line_no, "JSON nested too deeply to read") from None
    if not isinstance(obj, dict):
        raise _file_error(
            path, line_no, 'expected a JSON object with "text" or "query" and "passage"'
        )
    if "query" in obj or "passage" in obj:
        query, passage = obj.get("query"), obj.get("passage")
        if not (isinstance(query, str) and query.strip()) or not (
            isinstance(passage, str) and passage.strip()
        ):
            raise _file_error(path, line_no, '"query" and "passage" must both be non-empty strings')
        return ProbePair(query=" ".join(query.split()), passage=" ".join(passage.split()))
    text = obj.get("text")
    if not (isinstance(text, str) and text.strip()):
        raise _file_error(
            path, line_no, 'expected a non-empty string under "text", or "query" and "passage"'
        )
    return _pair_from_text(path, line_no, text)


def load_probe_file(path: str | Path) -> ProbeSet:
    """A probe set from a file: JSONL when the name ends in .jsonl or the first non-blank line
    starts with "{", otherwise plain text with one text per line. JSONL lines hold {"text": ...}
    (the pair is derived as for plain text) or {"query": ..., "passage": ...}. Blank lines are
    ignored. Plain texts become inverse-cloze pairs (`derive_pair`); a text with one sentence is
    an error. The set is named after the path, versioned "file-v1", hashed with content_sha256.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"Probe file {p} does not exist; pass an existing file.") from None
    except OSError as exc:
        raise InputError(f"Probe file {p} cannot be read ({exc.strerror}).") from None
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise _file_error(p, line_no, "not valid UTF-8; save the file as UTF-8") from None
    lines = [(i + 1, line) for i, line in enumerate(content.splitlines()) if line.strip()]
    if not lines:
        raise InputError(
            f'Probe file {p} is empty; put one text per line, or JSONL with "text" or '
            '"query" and "passage".'
        )
    jsonl = p.suffix.lower() == ".jsonl" or lines[0][1].lstrip().startswith("{")
    if jsonl:
        pairs = tuple(_pair_from_json(p, n, line) for n, line in lines)
    else:
        pairs = tuple(_pair_from_text(p, n, line) for n, line in lines)
    return ProbeSet(
        name=str(p), version=FILE_PROBE_VERSION, pairs=pairs, sha256=content_sha256(pairs)
    )


# --------------------------------------------------------------------------------------------
# Streaming probe


@dataclass(frozen=True)
class ProbeConfig:
    ks: tuple[float, ...] = (1, 2, 4, 8, 16, 32)
    n_pairs: int = 256  # pairs probed: the first n_pairs of the probe set (all when fewer)
    batch_size: int = 16
    max_query_length: int = 32
    max_passage_length: int = 128
    scale_bias: bool = False  # whether the output bias is divided by k too
    sample_size: int = 65536  # token logits kept for the percentiles
    seed: int = 0
    # Count positive token logits exactly at every k (one pass over the (B, T, V) logits per
    # distinct threshold) instead of at one k, estimating the others from the token sample.
    count_every_k: bool = False


# `inspect --fast`: a quarter of the default pairs and passages cut at half the default length,
# about a sixth of the tokens. Still 4 full batches of 16 (the start loss is an in-batch loss, so
# the batch size is kept), and the passages keep their opening, where the inverse-cloze query
# came from. On every model of the test suite (the real BERT-tiny, its three simulations, the
# tiny models of each family) the recommendation equals the default probe's (a test checks it).
FAST_N_PAIRS = 64
FAST_MAX_PASSAGE_LENGTH = 64


def fast_config(config: ProbeConfig | None = None) -> ProbeConfig:
    """`config` (default ProbeConfig()) with the fast mode's pair count and passage length."""
    from dataclasses import replace

    return replace(config or ProbeConfig(), n_pairs=FAST_N_PAIRS,
                   max_passage_length=FAST_MAX_PASSAGE_LENGTH)


@dataclass(frozen=True)
class ProbeResult:
    probe_name: str
    probe_version: str
    probe_sha256: str  # content_sha256 of the pairs actually probed
    n_pairs: int  # pairs actually probed
    config: ProbeConfig
    per_k: tuple[KStats, ...]


def _validate(config: ProbeConfig, probe: ProbeSet) -> None:
    if not probe.pairs:
        raise InputError(f"Probe set {probe.name!r} has no pairs; pass a non-empty probe set.")
    for name in ("n_pairs", "batch_size", "max_query_length", "max_passage_length"):
        if int(getattr(config, name)) < 1:
            raise InputError(f"ProbeConfig.{name} = {getattr(config, name)!r} must be >= 1.")
    if not config.ks or any(not (math.isfinite(float(k)) and float(k) >= 1) for k in config.ks):
        raise InputError(f"ProbeConfig.ks = {config.ks!r} must be finite numbers >= 1 (k divides "
                         "the head).")


def samples_per_token(config: ProbeConfig, n_pairs: int, vocab_size: int) -> int:
    """Vocabulary entries sampled (uniformly, with replacement) per token under the mask.

    A constant rate per token makes the stream a uniform sample of all token x vocab logits
    whatever the batch sizes; it is sized so that texts filling half their maximum length yield
    about sample_size values, which the accumulator's reservoir trims to sample_size.
    """
    if config.sample_size == 0:
        return 0
    capacity = n_pairs * (config.max_query_length + config.max_passage_length)  # tokens, at most
    return int(min(vocab_size, max(1, math.ceil(2 * config.sample_size / capacity))))


@dataclass
class _TokenReduction:
    pooled: np.ndarray  # (B, V) raw logits max-pooled over tokens under the mask, float32
    positive: np.ndarray  # (K,) int64, token logits above each counted k's threshold
    total: int  # tokens under the mask x V
    sample_values: np.ndarray  # (N * s,)
    sample_ids: np.ndarray  # (N * s,)


class _Reducer:
    """Reduces one batch of logits, on their device, to what the statistics need.

    thresholds: (U, V) float32 thresholds counted (one row per distinct threshold of the counted
    k); unique_rows: (K,) row of `thresholds` for each k, -1 for a k that is not counted.

    Cost per batch beyond the forward pass: one max-pooling pass and one comparison pass per
    counted threshold over the (B, T, V) logits. On the CPU both run in numpy on a view of the
    logits (3-6x faster than torch's amax and gt for this shape on a few cores), and the boolean
    buffer for the comparisons is kept across batches; a text's comparison covers only the
    columns whose pooled max is above the threshold when they are under a quarter of the
    vocabulary (a sparse head), since no other column has a token above it.
    """

    def __init__(
        self,
        thresholds: np.ndarray,
        unique_rows: np.ndarray,
        n_samples: int,
        generator: torch.Generator,
    ) -> None:
        self.thresholds = thresholds
        self.unique_rows = unique_rows
        self.n_samples = n_samples
        self.generator = generator
        # A threshold that is 0 for every column is compared as a scalar (twice as fast).
        self._scalar = [not row.any() for row in thresholds]
        self._torch_thresholds: torch.Tensor | None = None
        self._buffer: np.ndarray | None = None

    def _reduce_numpy(self, x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """CPU: (pooled (B, V), counts per threshold) text by text over the rows under the mask
        only, so padding is neither pooled nor counted nor overwritten."""
        n_b, _, vocab_size = x.shape
        pooled = np.full((n_b, vocab_size), -np.inf, dtype=x.dtype)  # (B, V)
        counts = [0] * self.thresholds.shape[0]
        for b in range(n_b):
            idx = np.flatnonzero(valid[b])  # (T_b,) positions under the mask
            if idx.size == 0:
                continue
            if idx[-1] - idx[0] + 1 == idx.size:  # one run (right or left padding): a view
                rows = x[b, idx[0] : idx[-1] + 1]  # (T_b, V)
            else:
                rows = x[b, idx]  # (T_b, V), a copy
            np.max(rows, axis=0, out=pooled[b])  # (T_b, V) -> (V,)
            for u, row in enumerate(self.thresholds):
                threshold = 0.0 if self._scalar[u] else row
                # Only a column whose max is above its threshold has a token above it: for a
                # sparse head, compare those columns alone (the same count, a fraction of
                # the pass).
                active = np.flatnonzero(pooled[b] > threshold)  # (A,)
                if active.size * 4 < vocab_size:
                    counts[u] += int(np.count_nonzero(
                        rows[:, active] > (threshold if self._scalar[u] else row[active])))
                    continue
                if self._buffer is None or self._buffer.size < rows.size:
                    self._buffer = np.empty(x.shape[1] * vocab_size, dtype=bool)
                above = self._buffer[: rows.size].reshape(rows.shape)  # (T_b, V) bool
                np.greater(rows, threshold, out=above)
                counts[u] += int(np.count_nonzero(above))
        return pooled, counts

    def _counts_torch(self, flat: torch.Tensor) -> list[int]:
        import torch

        if self._torch_thresholds is None or self._torch_thresholds.device != flat.device:
            self._torch_thresholds = torch.from_numpy(self.thresholds).to(flat.device)
        return [int(torch.count_nonzero(flat > self._torch_thresholds[u]))
                for u in range(self.thresholds.shape[0])]

    def __call__(self, logits: torch.Tensor, mask: torch.Tensor) -> _TokenReduction:
        """logits: (B, T, V) float32, on a GPU overwritten in place (padding positions become
        -inf); mask: (B, T)."""
        import torch

        vocab_size = logits.shape[-1]
        valid = mask.bool()  # (B, T)
        flat = logits.view(-1, vocab_size)  # (B*T, V)
        n_valid = int(valid.sum())
        # Uniform sample of token logits: n_samples vocabulary ids per token under the mask,
        # drawn on the CPU generator so that the sample does not depend on the device.
        token_rows = valid.view(-1).nonzero().squeeze(1)  # (N,) rows of `flat`
        vocab_ids = torch.randint(
            vocab_size, (n_valid * self.n_samples,), generator=self.generator
        ).to(flat.device)  # (N * s,)
        rows = token_rows.repeat_interleave(self.n_samples)  # (N * s,)
        sample = flat[rows, vocab_ids].cpu().numpy()  # (N * s,)
        # Positive counts per counted threshold over exactly the tokens under the mask.
        if logits.device.type == "cpu":
            pooled, counts = self._reduce_numpy(logits.numpy(), valid.numpy())
        else:
            # Padding rows become -inf: never the max, never above a finite threshold.
            # Indexing by position writes only the padded rows.
            logits[(~valid).nonzero(as_tuple=True)] = float("-inf")
            pooled = logits.amax(dim=1).cpu().numpy()  # (B, T, V) -> (B, V)
            counts = self._counts_torch(flat)
        positive = np.array([counts[r] if r >= 0 else 0 for r in self.unique_rows],
                            dtype=np.int64)  # (K,)
        return _TokenReduction(pooled, positive, n_valid * vocab_size, sample,
                               vocab_ids.cpu().numpy())


def counted_ks(ks: Sequence[float], bias: np.ndarray | None, scale_bias: bool,
               count_every_k: bool) -> tuple[bool, ...]:
    """Which k get an exact positive count: all of them when their thresholds coincide (no
    bias, an all-zero bias, or the bias divided too) or when asked; else only k = 1 (the model
    as it is), or the first k when 1 is not a candidate."""
    if count_every_k or bias is None or scale_bias or not np.any(bias) or len(ks) == 1:
        return tuple(True for _ in ks)
    at = [float(k) for k in ks].index(1.0) if 1.0 in [float(k) for k in ks] else 0
    return tuple(i == at for i in range(len(ks)))


def _forward(model, tokenizer, texts: list[str], max_length: int, device: torch.device):
    """Float32 logits (B, T, V) of `texts` and their attention mask (B, T), on `device`."""
    import torch

    from headscope.splade.encode import forward, tokenize

    batch = tokenize(model, tokenizer, texts, max_length)
    logits = forward(model, batch, device).logits  # (B, T, V)
    if logits.dtype != torch.float32:
        logits = logits.float()  # thresholds and pooling in float32 for half-precision models
    return logits, batch["attention_mask"].to(device)  # (B, T, V), (B, T)


def run_probe(
    model,
    tokenizer,
    bias: torch.Tensor | None,
    probe: ProbeSet,
    config: ProbeConfig,
    progress: Callable[[int, int], None] | None = None,
    vocab_size: int | None = None,
) -> ProbeResult:
    """Per-k statistics of `model` on the probe set, from one forward pass per batch.

    model: a transformers *ForMaskedLM (put in eval mode for the run, its mode restored after);
    bias: the head's output bias (V,) or None, which decides how each k moves the logits (see
    stats.transform_logits); progress(done_pairs, total_pairs) is called once with 0 before the
    first batch and after each batch; vocab_size: the rows of the head's projection (the
    logits' last dimension; `heads.find_head(...).decoder_weight.shape[0]`), by default the
    output embeddings' rows, which a DeBERTa-v2 head without a decoder does not report
    (transformers returns its dense layer).
    Queries and passages are tokenised separately (max_query_length, max_passage_length);
    everything is reduced on the model's device and only (B, V) arrays and small samples reach
    numpy, so memory does not grow with the number of pairs. (Over 80 lines with this docstring:
    one streaming loop whose running sums and samples stay local to it.)
    """
    import torch

    _validate(config, probe)
    pairs = probe.pairs[: config.n_pairs]
    n_total = len(pairs)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        raise InputError("The model has no parameters; pass a loaded masked LM.") from None
    if vocab_size is None:
        out_emb = model.get_output_embeddings()
        vocab_size = int(out_emb.weight.shape[0] if out_emb is not None
                         else model.config.vocab_size)
    bias_np = None
    if bias is not None:
        bias_np = bias.detach().to("cpu", torch.float64).numpy()  # (V,)
        if bias_np.shape != (vocab_size,):
            raise InputError(
                f"The output bias has shape {tuple(bias_np.shape)} but the model has {vocab_size} "
                "vocabulary rows; pass the bias of this model's MLM head."
            )
    counted = counted_ks(config.ks, bias_np, config.scale_bias, config.count_every_k)
    # Thresholds equal across k (no bias, or a bias divided too) are compared once.
    unique: list[np.ndarray] = []
    unique_rows = np.full(len(config.ks), -1, dtype=np.int64)  # (K,)
    for i, k in enumerate(config.ks):
        if not counted[i]:
            continue
        row = positive_threshold(k, bias_np, config.scale_bias, vocab_size).astype(np.float32)
        same = [u for u, r in enumerate(unique) if np.array_equal(r, row)]
        if not same:
            unique.append(row)
        unique_rows[i] = same[0] if same else len(unique) - 1
    n_samples = samples_per_token(config, n_total, vocab_size)
    reduce = _Reducer(
        np.stack(unique), unique_rows, n_samples, torch.Generator().manual_seed(config.seed)
    )  # (U, V) thresholds
    acc = ProbeAccumulator(
        config.ks, bias_np, config.scale_bias, vocab_size, config.sample_size, config.seed
    )
    was_training = model.training
    model.eval()
    if progress is not None:
        progress(0, n_total)  # the phase starts now: its elapsed time and ETA count from here
    try:
        with torch.inference_mode():
            for start in range(0, n_total, config.batch_size):
                batch = pairs[start : start + config.batch_size]
                pooled = []
                for texts, max_len in (
                    ([p.query for p in batch], config.max_query_length),
                    ([p.passage for p in batch], config.max_passage_length),
                ):
                    logits, mask = _forward(model, tokenizer, texts, max_len, device)
                    if logits.shape[-1] != vocab_size:
                        raise InputError(
                            f"The model returned {logits.shape[-1]} logits per token but its "
                            f"output embedding has {vocab_size} rows; pass a standard masked LM."
                        )
                    red = reduce(logits, mask)
                    del logits  # the batch's (B, T, V) logits are not kept
                    acc.add_token_counts(red.positive, red.total, counted)
                    acc.add_token_sample(red.sample_values, red.sample_ids)
                    pooled.append(red.pooled)  # (B, V)
                acc.add_batch(pooled[0], pooled[1])
                if progress is not None:
                    progress(start + len(batch), n_total)
    finally:
        model.train(was_training)
    used_sha = probe.sha256 if n_total == len(probe.pairs) else content_sha256(pairs)
    return ProbeResult(
        probe_name=probe.name,
        probe_version=probe.version,
        probe_sha256=used_sha,
        n_pairs=n_total,
        config=config,
        per_k=acc.result(),
    )
