"""Data readers (formats and their error messages), built-in datasets and retrieval metrics
against ir-measures."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from headscope.errors import InputError
from headscope.splade import data
from headscope.splade.data import EvalSplit, Pair
from headscope.splade.evaluate import mrr_at, ndcg_at, recall_at

# ---------------------------------------------------------------- JSONL pairs


def test_jsonl_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"query": "what is a list", "positive": "A list is mutable."}\n'
        "\n"
        '{"query": "q2", "positive": "p2", "negatives": ["n1", "n2"]}\n'
    )
    assert data.read_pairs_jsonl(path) == (
        Pair("what is a list", "A list is mutable."),
        Pair("q2", "p2", ("n1", "n2")),
    )


def test_jsonl_pairs_gzipped(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('{"query": "q", "positive": "p"}\n')
    assert data.read_pairs_jsonl(path) == (Pair("q", "p"),)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"query": "q", "positive": }',
            "{path}, line 2: not valid JSON (Expecting value); each line must be one object like "
            '{{"query": "...", "positive": "...", "negatives": ["..."]}}.',
        ),
        (
            '["q", "p"]',
            "{path}, line 2: expected a JSON object, found list; each line must be one object like "
            '{{"query": "...", "positive": "...", "negatives": ["..."]}}.',
        ),
        (
            '{"query": "q"}',
            "{path}, line 2: missing key 'positive'; each line must be one object like "
            '{{"query": "...", "positive": "...", "negatives": ["..."]}}.',
        ),
        (
            '{"query": "", "positive": "p"}',
            "{path}, line 2: 'query' must be a non-empty string, found ''.",
        ),
        (
            '{"query": "q", "positive": "p", "negatives": "n"}',
            "{path}, line 2: 'negatives' must be a list of non-empty strings; drop the key when "
            "there are none.",
        ),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "ok", "positive": "fine"}\n' + line + "\n")
    with pytest.raises(InputError) as info:
        data.read_pairs_jsonl(path)
    assert str(info.value) == message.format(path=path)


def test_jsonl_empty_and_missing(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(InputError) as info:
        data.read_pairs_jsonl(path)
    assert str(info.value) == (
        f'{path} holds no pairs; add lines like {{"query": "...", '
        '"positive": "...", "negatives": ["..."]}.'
    )
    with pytest.raises(InputError) as info:
        data.read_pairs_jsonl(tmp_path / "nope.jsonl")
    assert (
        str(info.value)
        == f"{tmp_path / 'nope.jsonl'} does not exist or is not a file; check the path."
    )


# ---------------------------------------------------------------- TSV triples


def test_tsv_triples(tmp_path):
    path = tmp_path / "triples.tsv"
    path.write_text("q1\tp1\tn1\nq2\tp2\tn2\n")
    assert data.read_triples_tsv(path) == (Pair("q1", "p1", ("n1",)), Pair("q2", "p2", ("n2",)))


def test_tsv_triples_wrong_field_count(tmp_path):
    path = tmp_path / "triples.tsv"
    path.write_text("q1\tp1\tn1\nq2 p2 n2\n")
    with pytest.raises(InputError) as info:
        data.read_triples_tsv(path)
    assert str(info.value) == (
        f"{path}, line 2: expected 3 non-empty tab-separated fields (query, positive, "
        "negative), found 1; fix the line or remove it."
    )


# ---------------------------------------------------------------- BEIR


def _beir(folder, qrels_lines):
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        json.dumps({"_id": "d1", "title": "Lists", "text": "Lists are mutable."})
        + "\n"
        + json.dumps({"_id": "d2", "text": "Tuples are not."})
        + "\n"
    )
    (folder / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "are lists mutable"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "unjudged"})
        + "\n"
    )
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(line + "\n" for line in qrels_lines)
    )


def test_beir_folder(tmp_path):
    _beir(tmp_path, ["q1\td1\t2", "q1\td2\t0"])
    split = data.read_beir(tmp_path, "test")
    assert split == EvalSplit(
        queries={"q1": "are lists mutable"},
        corpus={"d1": "Lists Lists are mutable.", "d2": "Tuples are not."},
        qrels={"q1": {"d1": 2, "d2": 0}},
    )
    (tmp_path / "qrels" / "train.tsv").write_text("q1\td1\t1\nq1\td2\t0\n")
    assert data.beir_pairs(tmp_path, "train") == (
        Pair("are lists mutable", "Lists Lists are mutable."),
    )


def test_beir_errors(tmp_path):
    _beir(tmp_path, ["q9\td1\t1"])
    with pytest.raises(InputError) as info:
        data.read_beir(tmp_path, "test")
    assert str(info.value) == (
        f"{tmp_path / 'qrels' / 'test.tsv'} judges query 'q9', which "
        "queries.jsonl lacks; remove the judgement or add the query."
    )
    with pytest.raises(InputError) as info:
        data.read_beir(tmp_path, "dev")
    assert str(info.value) == (
        f"BEIR folder {tmp_path} lacks qrels/dev.tsv; a BEIR folder holds "
        "corpus.jsonl, queries.jsonl and qrels/<split>.tsv."
    )
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\thigh\n")
    with pytest.raises(InputError) as info:
        data.read_beir(tmp_path, "test")
    assert str(info.value) == (
        f"{tmp_path / 'qrels' / 'test.tsv'}, line 1: score 'high' is not "
        "an integer; BEIR qrels grade relevance with integers."
    )


# ---------------------------------------------------------------- splits and dispatch


def test_split_pairs_is_stable_and_disjoint():
    pairs = [Pair(f"query {i}", f"passage {i}") for i in range(50)] + [Pair("query 3", "again")]
    train, held = data.split_pairs(pairs)
    assert len({p.query for p in held}) == 5
    assert not {p.query for p in train} & {p.query for p in held}
    assert len(train) + len(held) == 51
    assert set(data.split_pairs(list(reversed(pairs)))[1]) == set(held)  # order-independent


def test_pairs_to_eval():
    split = data.pairs_to_eval([Pair("a", "x", ("y",)), Pair("b", "y")], distractors=["z", "x"])
    assert split.queries == {"q0": "a", "q1": "b"}
    assert split.corpus == {"d0": "x", "d1": "y", "d2": "z"}
    assert split.qrels == {"q0": {"d0": 1}, "q1": {"d1": 1}}


def test_load_dataset_dispatch(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"query": f"q{i}", "positive": f"p{i}"}) + "\n" for i in range(20))
    )
    ds = data.load_dataset(path)
    assert len(ds.train) == 18 and len(ds.eval.queries) == 2
    with pytest.raises(InputError) as info:
        data.load_dataset(tmp_path / "pairs.csv")
    assert str(info.value) == (
        f"Cannot read training data {str(tmp_path / 'pairs.csv')!r}: use a built-in "
        "(stdlib-ict, boolq), a BEIR folder, a .jsonl file of pairs or a .tsv file of triples."
    )


# ---------------------------------------------------------------- built-ins


def test_stdlib_ict_is_deterministic_and_well_formed():
    ds = data.stdlib_ict()
    assert ds == data.stdlib_ict()
    assert len(ds.train) >= 200 and len(ds.eval.queries) >= 50
    for pair in ds.train[:50]:
        assert pair.query not in pair.positive  # the cloze sentence was removed
        assert len(pair.positive.split()) >= 5
    # every held-out query's relevant passage is in the corpus, with training distractors
    assert len(ds.eval.corpus) == len(ds.eval.queries) + len(ds.train)
    for qid, judged in ds.eval.qrels.items():
        (pid,) = judged
        assert ds.eval.queries[qid] not in ds.eval.corpus[pid]
    held = set(ds.eval.queries.values())
    assert not {p.query for p in ds.train} & held
    # no training paragraph (a distractor) contains a held-out query verbatim
    assert not any(q in p.positive or q == p.query for p in ds.train for q in held)


def test_stdlib_ict_splits_sentences_as_the_probe_does():
    """One sentence rule over pydoc_data.topics: every stdlib-ict pair is a prose paragraph
    split by the built-in probe's `split_sentences`, one sentence out as the query."""
    from headscope import probe

    cuts = set()
    for doc in probe.stdlib_topics():
        for paragraph in data._prose_paragraphs(doc):
            sentences = probe.split_sentences(paragraph)
            for i, sentence in enumerate(sentences):
                cuts.add((sentence, " ".join(sentences[:i] + sentences[i + 1:])))
    ds = data.stdlib_ict()
    assert {(p.query, p.positive) for p in ds.train} <= cuts
    held = {(ds.eval.queries[q], ds.eval.corpus[next(iter(j))]) for q, j in ds.eval.qrels.items()}
    assert held <= cuts and len(held) == len(ds.eval.queries)
    # "e.g. the" does not end a sentence, a quoted capital after a full stop does
    assert probe.split_sentences('Use e.g. the  manual. "True" is\n returned.') == [
        "Use e.g. the manual.", '"True" is returned.']


def test_boolq_builtin():
    ds = data.boolq()
    assert len(ds.train) == 9427
    assert len(ds.eval.queries) == 3270
    assert ds.train[0].query == "do iran and afghanistan speak the same language?"
    assert ds.train[0].positive.startswith("Persian language -- Persian")
    assert ds.eval.queries["q0"] == "does ethanol take more energy make that produces?"
    assert ds.eval.corpus[next(iter(ds.eval.qrels["q0"]))].startswith("Ethanol fuel -- ")
    assert len(ds.eval.corpus) < 3270  # some validation questions share a passage
    small = data.boolq(max_eval_queries=100)
    assert len(small.eval.queries) == 100 and len(small.eval.corpus) <= 100


def test_sciq_builtin_is_real_and_evaluation_only():
    ds = data.load_eval("sciq")
    assert ds.train == () and ds.name == "sciq"
    # 1,000 validation questions, 887 of which come with a support passage.
    assert len(ds.eval.queries) == 887 and len(ds.eval.corpus) == 887
    assert ds.eval.queries["q1"] == (
        "What is an area of land called that is wet for all or part of the year?"
    )
    assert ds.eval.corpus[next(iter(ds.eval.qrels["q0"]))].startswith(
        "A frameshift mutation is a deletion or insertion of one or more nucleotides"
    )
    assert len(data.sciq(max_eval_queries=50).eval.queries) == 50
    with pytest.raises(InputError) as info:
        data.load_dataset("sciq")
    assert str(info.value) == (
        "sciq is an evaluation set only (it has no training split); train on another set and "
        "pass --eval-data sciq."
    )


def test_sciq_reader_skips_unconditioned_copies_and_empty_support(tmp_path):
    def line(doc_id, question, support):
        return json.dumps({"doc_id": doc_id, "doc": {"question": question, "support": support}})

    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join([
        line(1, "Q one?", "Support one."), line(0, "Q zero?", "Support zero."),
        line(2, "Q two?", " "), line(1_000_001, "Q one?", "Support one."),
        line(0, "Q zero?", "Support zero."),  # one request per answer choice: same doc again
    ]) + "\n")
    assert data._sciq_pairs(path) == [Pair("Q zero?", "Support zero."),
                                      Pair("Q one?", "Support one.")]
    path.write_text(json.dumps({"doc_id": 3, "doc": {"question": "Q?"}}) + "\n")
    with pytest.raises(InputError) as info:
        data._sciq_pairs(path)
    assert str(info.value) == (
        f"{path}, line 1: not an oe-eval SciQ request (expected doc_id, doc.question and "
        "doc.support); the cached asset is damaged: delete its folder and fetch it again."
    )


def test_load_eval_reads_a_beir_folder_without_a_train_split(tmp_path):
    _beir(tmp_path, ["q1\td1\t2", "q2\td2\t1"])
    ds = data.load_eval(tmp_path)
    assert ds.train == ()
    assert ds.eval == data.read_beir(tmp_path, "test")
    assert list(data.load_eval(tmp_path, max_eval_queries=1).eval.qrels) == ["q1"]
    # ...but it cannot train: say so, and say how to use it.
    with pytest.raises(InputError) as info:
        data.load_dataset(tmp_path)
    assert str(info.value) == (
        f"BEIR folder {tmp_path} has no qrels/train.tsv, so it cannot train; train on another "
        "set and pass this folder as --eval-data."
    )


def test_load_eval_pairs_file_and_builtins(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(
        json.dumps({"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{i}"]}) + "\n"
        for i in range(4)))
    ds = data.load_eval(path)
    assert ds.train == () and len(ds.eval.queries) == 4 and len(ds.eval.corpus) == 8
    ict = data.load_eval("stdlib-ict")
    assert ict.train == () and ict.eval == data.stdlib_ict().eval
    with pytest.raises(InputError) as info:
        data.load_eval(tmp_path / "x.csv")
    assert str(info.value) == (
        f"Cannot read evaluation data {str(tmp_path / 'x.csv')!r}: use a built-in (stdlib-ict, "
        "boolq, sciq), a BEIR folder, a .jsonl file of pairs or a .tsv file of triples."
    )


# ---------------------------------------------------------------- metrics vs ir-measures


RUN = {
    "q1": {"a": 3.0, "b": 2.5, "c": 2.0, "d": 1.0, "e": 0.5},
    "q2": {"a": 0.95, "b": 1.0, "x": 0.9, "y": 0.1},
    "q3": {f"p{i:03d}": 200.0 - i for i in range(150)},
    "q4": {"z": 1.0},
}
QRELS = {
    "q1": {"c": 2, "e": 1, "f": 1, "a": 0},
    "q2": {"a": 1},
    "q3": {"p005": 1, "p050": 2, "p120": 1},
    "q4": {"nothing": 1},
}


def test_metrics_match_ir_measures():
    # No ties: ir-measures' providers break them differently (nDCG by id descending, as trec_eval
    # does; RR@10 by id ascending).
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import RR, R, nDCG

    expected = {}
    for metric in ir_measures.iter_calc([nDCG @ 10, RR @ 10, R @ 100], QRELS, RUN):
        expected[(str(metric.measure), metric.query_id)] = metric.value
    for name, ours in (
        ("nDCG@10", ndcg_at(RUN, QRELS, 10)),
        ("RR@10", mrr_at(RUN, QRELS, 10)),
        ("R@100", recall_at(RUN, QRELS, 100)),
    ):
        for qid in QRELS:
            assert ours[qid] == pytest.approx(expected[(name, qid)], abs=1e-9), (name, qid)


def test_metrics_by_hand():
    assert mrr_at(RUN, QRELS)["q1"] == pytest.approx(1 / 3)
    assert mrr_at(RUN, QRELS)["q2"] == pytest.approx(1 / 2)
    tie = {"q": {"a": 1.0, "b": 1.0}}  # trec_eval order: id descending, so "b" ranks first
    assert mrr_at(tie, {"q": {"a": 1}})["q"] == pytest.approx(1 / 2)
    assert ndcg_at(tie, {"q": {"a": 1}})["q"] == pytest.approx(1 / math.log2(3))
    assert recall_at(RUN, QRELS)["q3"] == pytest.approx(2 / 3)  # p120 is beyond rank 100
