"""The public verbs in process, without the CLI: inspect, fix, check, last_inspection, demo.

`fix` is checked the way a user would: the written folder is reloaded with plain
`AutoModelForMaskedLM.from_pretrained` and its logits compared with `rescale.expected_logits` of
the original's (untie, fold: exact; tied: equal to the in-memory rescaled model, whose encoder
sees the divided embeddings too).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import tiny_models
import torch

from headscope import api, report
from headscope.errors import InputError, NoMLMHeadError, PolicyError
from headscope.heads import find_head
from headscope.probe import ProbeConfig
from headscope.rescale import RescaleSpec, expected_logits, rescale_model

SMALL = ProbeConfig(n_pairs=4)  # control flow only
TEXTS = ["the model head scale term query passage", "a sparse dense weight row norm token text"]
LONG_POSITIONS = 192  # > the 128 tokens that probe passages and fix's verification texts use


@pytest.fixture(autouse=True)
def _private_cache(headscope_cache):
    """Every test here runs with conftest's private HEADSCOPE_CACHE."""
    return headscope_cache


def save_tiny_long(family: str, path: Path) -> Path:
    """A tiny checkpoint of `family` as tests/tiny_models.py builds it, but with room for
    LONG_POSITIONS tokens (the stock tiny models stop at 64 positions; see the xfail below)."""
    from transformers import AutoModelForMaskedLM

    config = tiny_models._config(family)
    config.max_position_embeddings = LONG_POSITIONS
    torch.manual_seed(tiny_models._seed(family))
    model = AutoModelForMaskedLM.from_config(config)
    gen = torch.Generator().manual_seed(tiny_models._seed(family) + 1)
    with torch.no_grad():  # non-trivial biases and LayerNorms, as build_tiny does
        seen: set[int] = set()
        for _, param in model.named_parameters():
            if param.data_ptr() not in seen:
                seen.add(param.data_ptr())
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
    model.eval().save_pretrained(str(path))
    tiny_models.write_tokenizer(Path(path))
    return Path(path)


@pytest.fixture(scope="module")
def tiny_long(tmp_path_factory):
    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            made[family] = save_tiny_long(family, tmp_path_factory.mktemp(f"long-{family}"))
        return made[family]

    return make


def _logits(folder: Path, texts=TEXTS):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForMaskedLM.from_pretrained(str(folder)).eval()
    enc = tok(list(texts), padding=True, return_tensors="pt")
    enc = {k: v for k, v in enc.items() if k != "token_type_ids" or model.config.model_type
           not in ("modernbert", "distilbert")}
    with torch.no_grad():
        return model(**enc).logits, model, enc


# --------------------------------------------------------------------------------------------
# inspect and the last-inspection memory


def test_inspect_real_bert_tiny(bert_tiny_dir, headscope_cache):
    rep = api.inspect(str(bert_tiny_dir), probe_config=SMALL)
    assert isinstance(rep, report.Report)
    assert rep.model.source == str(bert_tiny_dir)
    assert rep.model.family == "bert" and rep.model.tied and rep.model.head_loaded
    assert round(rep.weights.row_norm_all.mean, 3) == 0.682
    assert rep.weights.n_rows == 30522 and rep.weights.n_real_rows < 30522  # [unused*] excluded
    assert [s.k for s in rep.per_k] == [1, 2, 4, 8, 16, 32]
    assert rep.recommendation.k in rep.recommendation.passing
    assert rep.probe.n_pairs == 4
    # the English probe fits BERT's English vocabulary: no unknown token, no HS209
    assert rep.probe.unknown_token_share == 0.0
    assert "HS209" not in {f.code for f in rep.findings}
    jsonschema.Draft202012Validator(report.schema()).validate(json.loads(report.dumps(rep)))
    assert report.loads(report.dumps(rep)).weights == rep.weights
    assert not (headscope_cache / "last-inspect.json").exists()  # remember defaults to False


@pytest.mark.usefixtures("bands_default")
def test_inspect_weights_only_reads_the_files(bert_tiny_dir):
    rep = api.inspect(str(bert_tiny_dir), options=api.InspectOptions(weights_only=True))
    assert rep.model.weights_only and rep.per_k == () and rep.probe is None
    assert round(rep.weights.row_norm_all.mean, 3) == 0.682
    assert rep.recommendation.rule == "paper"


def test_inspect_real_albert(albert_dir):
    rep = api.inspect(str(albert_dir), options=api.InspectOptions(weights_only=True))
    assert rep.model.family == "albert"
    assert rep.weights.row_norm_all.mean == pytest.approx(1.3325, abs=1e-4)  # science.md: 1.332


def _naive_unknown_share(tokenizer, pset, config) -> float:
    unknown = total = 0
    for pair in pset.pairs[: config.n_pairs]:
        for text, limit in ((pair.query, config.max_query_length),
                            (pair.passage, config.max_passage_length)):
            tokens = tokenizer.tokenize(text)[:limit]
            total += len(tokens)
            unknown += sum(t == tokenizer.unk_token for t in tokens)
    return unknown / total


@pytest.mark.slow
def test_english_probe_on_the_real_chemistry_albert_is_flagged(albert_dir, tmp_path):
    from headscope import checkpoint, probe

    config = ProbeConfig(n_pairs=16)
    rep = api.inspect(str(albert_dir), probe_config=config)
    tokenizer = checkpoint.load_tokenizer(checkpoint.resolve(str(albert_dir)))
    assert len(tokenizer) == 591
    expected = _naive_unknown_share(tokenizer, probe.builtin_probe(16), config)
    assert 0.8 < expected < 0.95  # the English probe is mostly [UNK] under SMILES tokens
    assert rep.probe.unknown_token_share == pytest.approx(expected)
    (hs209,) = [f for f in rep.findings if f.code == "HS209"]
    assert (hs209.name, hs209.severity, hs209.threshold) == (
        "probe-vocabulary-mismatch", "warning", 0.05)
    assert hs209.value == pytest.approx(expected)
    assert hs209.message.startswith(f"{100 * expected:.3g}% of the probe's tokens are unknown "
                                    "to the model's tokenizer (above 5%)")
    assert "--probe FILE" in hs209.message
    jsonschema.Draft202012Validator(report.schema()).validate(json.loads(report.dumps(rep)))
    assert report.loads(report.dumps(rep)).probe == rep.probe
    # A probe in the model's own language (reaction SMILES) fits: no HS209.
    # Reactants -> product, written atom by atom as the model's vocabulary spells SMILES.
    reactions = [("C C ( = O ) O . O C C", "C C ( = O ) O C C . O"),
                 ("c 1 c c c c c 1 Br . O B ( O ) c 1 c c c c c 1",
                  "c 1 c c c ( - c 2 c c c c c 2 ) c c 1"),
                 ("C C O . C C ( = O ) Cl", "C C O C ( C ) = O"),
                 ("O c 1 c c c c c 1 . C I", "C O c 1 c c c c c 1")]
    smiles = tmp_path / "reactions.jsonl"
    smiles.write_text("".join(json.dumps({"query": q, "passage": p}) + "\n"
                              for q, p in reactions))
    fitted = api.inspect(str(albert_dir), probe_config=ProbeConfig(n_pairs=4),
                         options=api.InspectOptions(probe_file=str(smiles)))
    assert fitted.probe.unknown_token_share == 0.0
    assert "HS209" not in {f.code for f in fitted.findings}


def test_inspect_refuses_a_headless_model(tmp_path):
    path = tiny_models.save_headless_bert(tmp_path / "headless")
    with pytest.raises(NoMLMHeadError) as err:
        api.inspect(str(path))
    assert str(err.value).startswith(f"{path} has no trained MLM head: ")


def test_last_inspection_round_trip(tiny_long, headscope_cache):
    with pytest.raises(InputError) as err:
        api.last_inspection()
    assert str(err.value) == ("No model given and no earlier inspection to follow; pass MODEL, "
                              "or run `headscope inspect MODEL` first.")
    path = tiny_long("bert")
    rep = api.inspect(str(path), probe_config=SMALL, remember=True)
    last = api.last_inspection()
    assert (headscope_cache / "last-inspect.json").is_file()
    assert last.source == str(path)
    assert last.k == rep.recommendation.k and last.rule == rep.recommendation.rule
    assert last.revision is None and last.created == rep.created
    assert last.cwd == str(Path.cwd())


@pytest.mark.usefixtures("bands_default")
def test_fix_after_a_weights_only_inspection_follows_the_full_rule(tiny_long, tmp_path):
    """One answer per model: a weights-only inspection's k comes from the paper rule (k = 1 for
    a small head); `fix` without MODEL acts on that model with the full inspection's
    recommendation, and says so."""
    import dataclasses

    src = tiny_long("modernbert")
    wo = api.inspect(str(src), options=api.InspectOptions(weights_only=True), remember=True)
    assert wo.recommendation.rule == "paper" and wo.recommendation.k == 1
    assert api.last_inspection().weights_only
    config = dataclasses.replace(SMALL, ks=(2.0, 4.0, 8.0))  # a fix is then always needed
    full = api.inspect(str(src), probe_config=config)
    # fix measures k = 1 beside them (the provenance's statistics before the fix)
    outcome = api.fix(None, str(tmp_path / "fixed"), probe_config=config)
    assert outcome.followed_last_inspection and outcome.k == full.recommendation.k != 1
    assert outcome.k_from == (
        f"recommended by the {full.recommendation.rule} rule of the full inspection (the last "
        "inspection was weights-only: its paper rule gave k = 1, from the row norm alone)")
    assert outcome.result is not None


@pytest.mark.usefixtures("bands_default")
def test_check_refuses_what_weights_only_cannot_judge(tiny_long, tmp_path):
    src = str(tiny_long("bert"))
    wo = api.InspectOptions(weights_only=True)
    with pytest.raises(InputError) as err:
        api.check(src, overrides={"max_k": 1.0}, options=wo)
    assert str(err.value) == (
        "--weights-only cannot judge max_k (max_k: the report is weights-only, and its paper "
        "rule (k from the decoder row norm alone) can differ from the k the full inspection "
        "recommends); drop --weights-only to measure them, or leave them out of the policy for "
        "this check.")
    with pytest.raises(InputError) as err:
        api.check_many([src], overrides={"max_start_loss": 5.0, "max_k": 4.0}, options=wo)
    assert str(err.value).startswith(
        "--weights-only cannot judge max_k, max_start_loss (they need the probe's statistics, "
        "and max_k: the report is weights-only")
    saved = tmp_path / "wo.json"
    from headscope import report as report_mod

    report_mod.write_json(api.inspect(src, options=wo), saved)
    with pytest.raises(InputError) as err:
        api.check(report_path=str(saved), overrides={"require_passing_k": True})
    assert str(err.value) == (
        f"{saved}, a weights-only report, cannot judge require_passing_k (they need the "
        "probe's statistics); check a report of `headscope inspect` without --weights-only, or "
        "leave them out of the policy for this check.")
    assert api.check(src, overrides={"max_row_norm": 8.0}, options=wo).result.passed


def test_last_inspection_unreadable(headscope_cache):
    state = headscope_cache / "last-inspect.json"
    state.write_text("{not json")
    with pytest.raises(InputError) as err:
        api.last_inspection()
    assert str(err.value).startswith(f"The record of the last inspection ({state}) is unreadable (")
    assert str(err.value).endswith("); pass MODEL explicitly or run `headscope inspect MODEL` "
                                   "again.")


# --------------------------------------------------------------------------------------------
# fix


CASES = [
    ("bert", "untie", False),
    ("bert", "tied", False),
    ("bert", "fold", False),
    ("modernbert", "untie", False),
    ("modernbert", "tied", False),
    ("modernbert", "fold", False),
    ("albert", "fold", True),
    ("distilbert", "untie", False),
]


def test_fix_with_k_and_the_bias_given_runs_no_probe(tiny_checkpoint, tmp_path, monkeypatch):
    """With (k, bias) decided, fix measures nothing by probe: the verification is the writer's
    (bytes against the source and the plan, one reload and forward pass) and the provenance
    records the head's weight statistics, measured on the loaded model."""
    from headscope import probe

    def no_probe(*args, **kwargs):
        raise AssertionError("fix ran the probe")

    monkeypatch.setattr(probe, "run_probe", no_probe)
    src = tiny_checkpoint("bert")
    out = tmp_path / "fixed"
    outcome = api.fix(str(src), str(out), options=api.FixOptions(k=4, scale_bias=False))
    record = json.loads((out / "headscope.json").read_text())
    weights = api.inspect(str(src), options=api.InspectOptions(weights_only=True)).weights
    assert record["stats_before"]["weights"]["row_norm_all"]["mean"] == pytest.approx(
        weights.row_norm_all.mean, rel=1e-6)
    assert record["stats_before"]["probe_at_k1"] is None
    assert record["stats_after"] == {"probe_predicted": None}
    assert outcome.result.verification.against == "reload"
    assert outcome.result.verification.max_abs_logit_error <= \
        outcome.result.verification.logit_tolerance
    assert "| active terms per passage | not measured | not measured |" in \
        (out / "README.md").read_text()


@pytest.mark.parametrize("family,strategy,scale_bias", CASES,
                         ids=[f"{f}-{s}{'-bias' if b else ''}" for f, s, b in CASES])
def test_fix_each_strategy_reloads_with_the_expected_logits(tiny_long, tmp_path, family,
                                                            strategy, scale_bias):
    src = tiny_long(family)
    out = tmp_path / "fixed"
    options = api.FixOptions(k=4, strategy=strategy, scale_bias=scale_bias)
    outcome = api.fix(str(src), str(out), options=options, probe_config=SMALL)

    assert outcome.k == 4.0 and outcome.k_from == "--k"
    assert not outcome.followed_last_inspection
    assert outcome.note == f"Fixing {src} with k = 4 (--k)."
    assert outcome.result.out == out.resolve() and not outcome.result.dry_run
    assert sorted(outcome.result.files) == sorted(p.name for p in out.iterdir())
    # k and the bias setting given: no probe; the head's weight statistics are recorded.
    assert outcome.report.per_k == () and outcome.report.model.weights_only
    summary = api.fix_summary(outcome)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["strategy"] == strategy and summary["scale_bias"] is scale_bias

    x, original, enc = _logits(src)
    y, fixed, _ = _logits(out)
    spec = RescaleSpec(4, strategy, scale_bias)
    head = find_head(original)
    expected = expected_logits(x, head.bias, spec)
    config = json.loads((out / "config.json").read_text())
    if strategy == "tied":
        # the encoder sees the divided embeddings too: compare with the rescaled model in memory
        memory = copy.deepcopy(original)
        rescale_model(memory, spec)
        with torch.no_grad():
            assert torch.allclose(y, memory(**enc).logits, atol=1e-5)
        assert config.get("tie_word_embeddings", True) is True
        assert find_head(fixed).tied
    else:
        assert torch.allclose(y, expected, atol=1e-5, rtol=1e-5)
        assert config["tie_word_embeddings"] is (strategy == "fold")
        assert find_head(fixed).tied is (strategy == "fold")
    assert not torch.allclose(y, x, atol=1e-3)
    if scale_bias:
        assert torch.allclose(y, x / 4, atol=1e-5)


def test_fix_discovers_the_loaded_models_head_once(tiny_long, tmp_path, monkeypatch):
    """The inspection before the fix and the writer share one discovery of the loaded model's
    head; the others are in other models (the rescaled copy written, the reloaded checkpoint)."""
    from headscope import checkpoint, heads, save

    found, loads, depth = [], [], [0]
    real_find, real_load = heads.find_head, checkpoint.load

    def counting(model, *args, **kwargs):
        if not depth[0]:  # find_head(loaded) calls itself on loaded.model: one discovery
            found.append(model)
        depth[0] += 1
        try:
            return real_find(model, *args, **kwargs)
        finally:
            depth[0] -= 1

    def loading(*args, **kwargs):
        loads.append(real_load(*args, **kwargs))
        return loads[-1]

    monkeypatch.setattr(heads, "find_head", counting)
    monkeypatch.setattr(save, "find_head", counting)
    monkeypatch.setattr(save.verify, "find_head", counting)
    monkeypatch.setattr(checkpoint, "load", loading)
    outcome = api.fix(str(tiny_long("bert")), str(tmp_path / "fixed"),
                      options=api.FixOptions(k=4), probe_config=SMALL)
    assert outcome.result.verification.against == "reload"
    (loaded,) = loads
    assert sum(m is loaded or m is loaded.model for m in found) == 1
    assert len(found) >= 2  # the reloaded fixed checkpoint is checked on its own


def test_fix_dry_run_and_refusals(tiny_long, tmp_path):
    src = tiny_long("bert")
    out = tmp_path / "fixed"
    outcome = api.fix(str(src), str(out), options=api.FixOptions(k=2, dry_run=True),
                      probe_config=SMALL)
    assert outcome.result.dry_run and outcome.result.verification.against == "memory"
    assert not out.exists()
    out.mkdir()
    (out / "x").write_text("keep")
    with pytest.raises(InputError) as err:
        api.fix(str(src), str(out), options=api.FixOptions(k=2), probe_config=SMALL)
    assert str(err.value) == (f"Output directory {out.resolve()} is not empty; pass --overwrite "
                              "or choose another --out.")
    assert [p.name for p in out.iterdir()] == ["x"]
    with pytest.raises(InputError) as err:  # --overwrite replaces only what headscope wrote
        api.fix(str(src), str(out), options=api.FixOptions(k=2, overwrite=True),
                probe_config=SMALL)
    assert str(err.value).startswith(f"Output directory {out.resolve()} was not written by "
                                     "headscope")
    assert [p.name for p in out.iterdir()] == ["x"]
    (out / "x").unlink()
    api.fix(str(src), str(out), options=api.FixOptions(k=2), probe_config=SMALL)  # empty: used
    outcome = api.fix(str(src), str(out), options=api.FixOptions(k=4, overwrite=True),
                      probe_config=SMALL)
    assert json.loads((out / "headscope.json").read_text())["k"] == 4
    with pytest.raises(InputError) as err:
        api.fix(str(src), str(tmp_path / "y"), options=api.FixOptions(k=2, strategy="nope"))
    assert str(err.value) == "Unknown rescale strategy 'nope'; choose one of untie, tied, fold."
    assert not (tmp_path / "y").exists()


def test_fix_without_arguments_reuses_the_last_inspections_statistics(tiny_long, tmp_path,
                                                                       monkeypatch):
    """`fix --out DIR` after `inspect MODEL` probes nothing: the statistics it records are the
    inspection's, as long as the weight files are the ones inspected (their sha256); once a
    weight file changes they are not reused (and the probe is still not run: k and the bias
    setting are the inspection's)."""
    import dataclasses
    import shutil

    from headscope import probe
    from headscope.report import to_dict

    src = tmp_path / "src"
    shutil.copytree(tiny_long("bert"), src)
    rep = api.inspect(str(src), probe_config=dataclasses.replace(SMALL, ks=(1.0, 2.0, 4.0)),
                      remember=True)
    monkeypatch.setattr(probe, "run_probe", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("fix ran the probe")))
    k, bias = 4.0, rep.recommendation.scale_bias  # a k of the inspection's grid
    again = api.FixOptions(k=k, scale_bias=bias)
    api.fix(None, str(tmp_path / "fixed"), options=again)
    record = json.loads((tmp_path / "fixed" / "headscope.json").read_text())
    by_k = {s.k: json.loads(json.dumps(to_dict(s))) for s in rep.per_k}
    assert record["k"] == k
    assert record["stats_before"]["weights"] == json.loads(json.dumps(to_dict(rep.weights)))
    assert record["stats_before"]["probe_at_k1"] == by_k[1.0]
    assert record["stats_after"] == {"probe_predicted": by_k[k]}

    # The same folder with other weights: the statistics are not those files'.
    weights = src / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(4)  # the last value of the last tensor
    weights.write_bytes(bytes(data))
    api.fix(None, str(tmp_path / "fixed-2"), options=again)
    record = json.loads((tmp_path / "fixed-2" / "headscope.json").read_text())
    assert record["stats_before"]["probe_at_k1"] is None
    assert record["stats_after"] == {"probe_predicted": None}


def test_fix_verifies_on_a_small_batch(tiny_long, tmp_path, monkeypatch):
    """`fix` checks the written checkpoint on VERIFY_PASSAGES built-in probe passages cut at
    VERIFY_MAX_TOKENS tokens (a model with room for more), and says how many it used."""
    from headscope import save
    from headscope.api.fixing import VERIFY_PASSAGES
    from headscope.save.verify import VERIFY_MAX_TOKENS

    shapes = []
    real = save.encode_texts

    def recording(loaded, texts):
        inputs = real(loaded, texts)
        shapes.append(tuple(inputs["input_ids"].shape))
        return inputs

    monkeypatch.setattr(save, "encode_texts", recording)
    outcome = api.fix(str(tiny_long("bert")), str(tmp_path / "fixed"),
                      options=api.FixOptions(k=4.0, scale_bias=False))
    assert (VERIFY_PASSAGES, VERIFY_MAX_TOKENS) == (2, 64)
    assert shapes == [(2, 64)]  # the passages are longer than 64 tokens: cut there
    assert outcome.result.verification.n_texts == 2
    assert json.loads((tmp_path / "fixed" / "headscope.json").read_text())[
        "verification"]["n_texts"] == 2


def test_inspect_then_fix_reads_each_weight_file_once(tiny_long, tmp_path, monkeypatch):
    """The sha256 that `inspect` records is remembered (headscope.digests): the `fix` without
    MODEL that follows matches the files and writes its provenance without reading them again;
    once a file is rewritten, the next fix reads it and records its new hash."""
    import dataclasses
    import hashlib
    import shutil
    import time

    from headscope import digests, fileio

    monkeypatch.setattr(digests, "SETTLED_NS", 0)  # the copy below is milliseconds old
    reads: list[str] = []
    real = fileio.sha256_file
    monkeypatch.setattr(digests.fileio, "sha256_file",
                        lambda path: (reads.append(Path(path).name), real(path))[1])
    src = tmp_path / "src"
    shutil.copytree(tiny_long("bert"), src)
    weights = src / "model.safetensors"
    rep = api.inspect(str(src), probe_config=dataclasses.replace(SMALL, ks=(1.0, 2.0, 4.0)),
                      remember=True)
    assert reads == ["model.safetensors"]
    options = api.FixOptions(k=4.0, scale_bias=rep.recommendation.scale_bias)
    api.fix(None, str(tmp_path / "fixed"), options=options)
    assert reads == ["model.safetensors"]  # matched and recorded without a second reading
    record = json.loads((tmp_path / "fixed" / "headscope.json").read_text())
    assert record["source_files"] == {
        "model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert record["stats_before"]["probe_at_k1"] is not None  # the inspection's, reused

    time.sleep(0.05)  # past the clock's tick, as production's SETTLED_NS is
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(4)
    weights.write_bytes(bytes(data))
    api.fix(None, str(tmp_path / "fixed-2"), options=options)
    assert reads == ["model.safetensors", "model.safetensors"]  # read once more, then known
    record = json.loads((tmp_path / "fixed-2" / "headscope.json").read_text())
    assert record["source_files"] == {"model.safetensors": hashlib.sha256(data).hexdigest()}
    assert record["stats_before"]["probe_at_k1"] is None  # not the files inspected


@pytest.mark.usefixtures("bands_default")
def test_fix_follows_the_last_inspection(tiny_long, tmp_path):
    import dataclasses

    src = tiny_long("modernbert")
    # candidates without 1, so that the recommendation asks for a fix
    rep = api.inspect(str(src), probe_config=dataclasses.replace(SMALL, ks=(2.0, 4.0, 8.0)),
                      remember=True)
    k = rep.recommendation.k
    assert k != 1
    outcome = api.fix(None, str(tmp_path / "fixed"), probe_config=SMALL)
    assert outcome.source == str(src) and outcome.followed_last_inspection
    assert outcome.k == k and outcome.k_from == "last inspection's recommendation"
    assert outcome.note == (f"No MODEL given: acting on {src}, the model of the last `headscope "
                            f"inspect`, with k = {k:g} (last inspection's recommendation).")
    # an explicit k wins over the recommendation
    outcome = api.fix(None, str(tmp_path / "fixed-2"), options=api.FixOptions(k=3),
                      probe_config=SMALL)
    assert outcome.k == 3 and outcome.k_from == "--k"
    # a last inspection that recommended k = 1: no fix needed, nothing written
    rep = api.inspect(str(src), probe_config=dataclasses.replace(SMALL, ks=(1.0,)),
                      remember=True)
    assert rep.recommendation.k == 1
    outcome = api.fix(None, str(tmp_path / "fixed-3"), probe_config=SMALL)
    assert not outcome.needed and outcome.result is None and outcome.k == 1
    assert outcome.note.startswith(f"No fix needed: {src} is recommended k = 1 (last "
                                   "inspection's recommendation), so its head is left as it is")
    assert not (tmp_path / "fixed-3").exists()


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_fix_and_inspect_on_a_model_with_few_positions(tiny_checkpoint, tmp_path, family):
    # The stock tiny models embed 64 positions (roberta: 64 - pad offset 2 = 62 tokens), fewer
    # than the 128-token probe passages and verification texts: both must be cut to fit.
    src = str(tiny_checkpoint(family))
    report = api.inspect(src, probe_config=ProbeConfig(n_pairs=4, max_passage_length=128))
    assert len(report.per_k) == 6
    outcome = api.fix(src, str(tmp_path / "fixed"), options=api.FixOptions(k=2),
                      probe_config=ProbeConfig(n_pairs=4, max_passage_length=128))
    assert outcome.result.verification.max_abs_logit_error <= (
        outcome.result.verification.logit_tolerance)


# --------------------------------------------------------------------------------------------
# check


def test_check_model_and_saved_report(tiny_long, tmp_path):
    src = tiny_long("bert")
    outcome = api.check(str(src), probe_config=SMALL, overrides={"max_row_norm": 1e-3})
    assert not outcome.result.passed
    assert [r.name for r in outcome.result.failed] == ["max_row_norm"]
    assert outcome.report.model.source == str(src)
    saved = tmp_path / "r.json"
    report.write_json(outcome.report, saved)
    again = api.check(report_path=str(saved), overrides={"max_row_norm": 100.0})
    assert again.result.passed
    assert again.report.weights == outcome.report.weights
    assert again.result.policy.source == "flags"
    rule = {r.name: r for r in again.result.rules}["max_row_norm"]
    assert rule.measured == outcome.report.weights.row_norm_all.mean and rule.threshold == 100.0


def test_check_policy_file_and_errors(bert_tiny_dir, tmp_path):
    saved = tmp_path / "r.json"
    report.write_json(api.inspect(str(bert_tiny_dir),
                                  options=api.InspectOptions(weights_only=True)), saved)
    policy = tmp_path / "headscope.toml"
    policy.write_text("max_row_norm = 0.5\n")
    outcome = api.check(report_path=str(saved), policy_path=str(policy))
    assert not outcome.result.passed and outcome.result.policy.source == str(policy)
    policy.write_text("max_rownorm = 0.5\n")
    with pytest.raises(PolicyError) as err:
        api.check(report_path=str(saved), policy_path=str(policy))
    assert str(err.value).startswith(f"Unknown policy key 'max_rownorm' in {policy}; valid keys: ")
    with pytest.raises(InputError) as err:
        api.check()
    assert str(err.value) == "Pass either MODEL or --report R.json to check, not both or neither."


# --------------------------------------------------------------------------------------------
# demo


def test_demo_real_and_simulated(bert_tiny_dir):
    outcome = api.demo(probe_config=SMALL)
    assert outcome.labels == ("bert-tiny-splade (real)", "bert-tiny-splade SIMULATED dense (bias)")
    real, dense = outcome.reports
    assert real.model.source == outcome.labels[0] and dense.model.source == outcome.labels[1]
    assert round(real.weights.row_norm_all.mean, 3) == 0.682
    # the bias variant moves the bias, not the projection
    assert dense.weights.row_norm_all == real.weights.row_norm_all
    assert dense.weights.bias_mean > real.weights.bias_mean
    at1 = {r.model.source: next(s for s in r.per_k if s.k == 1) for r in outcome.reports}
    assert at1[outcome.labels[1]].frac_positive > 10 * at1[outcome.labels[0]].frac_positive
    assert outcome.simulation.where == "bias"
    assert outcome.simulation.frac_positive_after > outcome.simulation.frac_positive_before


def test_every_verb_has_a_shipped_json_schema():
    for kind in ("report", "fix", "training", "check", "compare"):
        schema = api.json_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["properties"]["schema_version"] == {"const": 2 if kind == "report" else 1}
        assert "schema_version" in schema["required"]
    assert api.json_schema("report") == report.schema()
    with pytest.raises(InputError) as err:
        api.json_schema("sweep")
    assert str(err.value) == ("No JSON schema named 'sweep'; the schemas are report, fix, "
                              "training, check, compare.")


# --------------------------------------------------------------------------------------------
# fix --k on a head whose recommendation divides the bias


@pytest.fixture(scope="module")
def bias_dense(tmp_path_factory) -> Path:
    """A tiny BERT whose activity lives in its output bias (every bias +200): with the bias
    kept no k brings its weights into their bands, so the recommendation divides it too."""
    model = tiny_models.build_tiny("bert")
    with torch.no_grad():
        model.cls.predictions.bias.fill_(200.0)
    path = tmp_path_factory.mktemp("bias-dense")
    model.save_pretrained(str(path))
    tiny_models.write_tokenizer(path)
    return path


FEW_SHORT = ProbeConfig(n_pairs=4, max_passage_length=48)


@pytest.mark.usefixtures("bands_default")
def test_fix_with_k_refuses_to_guess_the_bias_when_the_recommendation_divides_it(bias_dense,
                                                                                   tmp_path):
    rec = api.inspect(str(bias_dense), probe_config=FEW_SHORT).recommendation
    assert rec.scale_bias and rec.k == 32
    out = tmp_path / "fixed"
    with pytest.raises(InputError) as err:
        api.fix(str(bias_dense), str(out), options=api.FixOptions(k=4), probe_config=FEW_SHORT)
    assert str(err.value) == (
        f"The recommendation for {bias_dense} divides the output bias too (k = 32 with "
        "--scale-bias); with --k 4, say which: --scale-bias (bias divided by k too, as "
        "recommended) or --no-scale-bias (projection only).")
    assert not out.exists()
    # Either explicit choice is obeyed.
    for choice in (True, False):
        outcome = api.fix(str(bias_dense), str(tmp_path / f"fixed-{choice}"),
                          options=api.FixOptions(k=4, scale_bias=choice), probe_config=FEW_SHORT)
        assert outcome.result.spec == RescaleSpec(4.0, "untie", choice)
    # Without --k the recommendation is followed whole: k and the divided bias.
    outcome = api.fix(str(bias_dense), str(tmp_path / "as-recommended"), probe_config=FEW_SHORT)
    assert outcome.result.spec == RescaleSpec(32.0, "untie", True)


@pytest.mark.usefixtures("bands_default")
def test_fix_with_k_after_an_inspection_that_divides_the_bias_refuses_too(bias_dense, tmp_path):
    api.inspect(str(bias_dense), probe_config=FEW_SHORT, remember=True)
    with pytest.raises(InputError) as err:
        api.fix(None, str(tmp_path / "fixed"), options=api.FixOptions(k=8),
                probe_config=FEW_SHORT)
    assert str(err.value).startswith(
        f"The recommendation for {bias_dense} divides the output bias too (k = 32 with "
        "--scale-bias); with --k 8, say which:")
    assert not (tmp_path / "fixed").exists()


@pytest.mark.usefixtures("bands_default")
def test_fix_with_k_on_a_bias_keeping_recommendation_keeps_the_bias(tiny_long, tmp_path):
    src = tiny_long("bert")
    assert not api.inspect(str(src), probe_config=SMALL).recommendation.scale_bias
    outcome = api.fix(str(src), str(tmp_path / "fixed"), options=api.FixOptions(k=2),
                      probe_config=SMALL)
    assert outcome.result.spec == RescaleSpec(2.0, "untie", False)
    # the before/after statistics come from the bias-kept measurement, at k = 1 and k = 2
    assert {1.0, 2.0} <= {s.k for s in outcome.report.per_k}
    assert not outcome.report.probe.scale_bias


@pytest.mark.usefixtures("bands_default")
def test_confirm_without_k_trains_the_whole_recommendation(bias_dense, tmp_path):
    # The recommendation divides the bias: confirm's fixed arm must be trained that way too.
    from headscope.probe import builtin_probe

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": p.query, "positive": p.passage}) + "\n"
                             for p in builtin_probe(24).pairs))
    outcome = api.confirm(str(bias_dense), options=api.ConfirmOptions(
        data=str(pairs), steps=2, batch_size=4, max_passage_length=32, max_eval_queries=8))
    fixed = outcome.arms[1]
    assert fixed.k == 32.0
    assert fixed.description == "projection / 32 (untie, bias divided)"
    assert outcome.config.scale_bias is True


def test_inspect_deberta_v2_without_a_decoder_counts_the_whole_vocabulary(tiny_checkpoint):
    """transformers' DeBERTa-v2 head without the legacy decoder reports its dense layer as the
    output embeddings (32 rows here); the probe takes the vocabulary from the head headscope
    found (100 rows), and its counts at k = 4 match a direct computation over the same passages
    ((x - b) / 4 + b, max-pooled over the passage's tokens, counted where above 0)."""
    import torch

    from headscope import checkpoint, heads, probe
    from headscope.rescale import RescaleSpec, expected_logits
    from headscope.splade.encode import forward, tokenize

    loaded = checkpoint.load(checkpoint.resolve(str(tiny_checkpoint("deberta-v2"))))
    assert loaded.model.get_output_embeddings().weight.shape[0] != 100  # the quirk
    config = ProbeConfig(n_pairs=8, batch_size=4)
    report = api.inspect_loaded(loaded, probe_config=config)
    assert report.recommendation is not None
    at4 = next(s for s in report.per_k if s.k == 4)
    passages = [p.passage for p in probe.builtin_probe(8).pairs]
    batch = tokenize(loaded.model, loaded.tokenizer, passages, config.max_passage_length)
    with torch.no_grad():
        logits = forward(loaded.model, batch).logits.float()  # (B, T, V)
    assert logits.shape[-1] == 100
    bias = heads.find_head(loaded).bias.detach().float()
    moved = expected_logits(logits, bias, RescaleSpec(4))
    moved[~batch["attention_mask"].bool()] = float("-inf")
    active = (moved.amax(dim=1) > 0).sum(dim=1).float()  # (B,)
    assert 0 < active.mean().item() < 100  # neither none nor all: the count can tell
    assert at4.active_passage == pytest.approx(active.mean().item())
    assert at4.active_passage_share == pytest.approx(active.mean().item() / 100)


def test_fix_writes_a_sparse_encoder_folder(tiny_checkpoint, tmp_path):
    """--sparse-encoder: SparseEncoder(out) loads the fixed masked LM with SpladePooling('max'),
    and encodes as the same encoder built by hand on the fixed folder; the source's encoder
    differs by the rescale (its MLM logits are the source's with the projection divided)."""
    pytest.importorskip("sentence_transformers.sparse_encoder")
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    src = tiny_checkpoint("bert")
    out = tmp_path / "fixed"
    outcome = api.fix(str(src), str(out),
                      options=api.FixOptions(k=4, scale_bias=True, sparse_encoder=True))
    for name in ("modules.json", "config_sentence_transformers.json",
                 "sentence_bert_config.json", "1_SpladePooling/config.json"):
        assert name in outcome.result.files and (out / name).is_file()
    record = json.loads((out / "headscope.json").read_text())
    assert "modules.json" in record["files"]  # what a later --overwrite may replace
    texts = ["the head of a model", "sparse term weights"]
    loaded = SparseEncoder(str(out), device="cpu")
    by_hand = SparseEncoder(modules=[Transformer(str(out), transformer_task="fill-mask"),
                                     SpladePooling("max")], device="cpu")
    source = SparseEncoder(modules=[Transformer(str(src), transformer_task="fill-mask"),
                                    SpladePooling("max")], device="cpu")
    a = loaded.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    b = by_hand.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    c = source.encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False)
    assert torch.equal(a, b)
    # bias divided too: every logit is the source's / 4, so the weights are log1p(relu(x / 4))
    assert torch.allclose(torch.log1p(torch.expm1(a) * 4), c, atol=1e-4)

    # Fixing that folder again keeps its layout: --sparse-encoder adds nothing, and says so.
    again = api.fix(str(out), str(tmp_path / "again"),
                    options=api.FixOptions(k=2, scale_bias=False, sparse_encoder=True))
    assert again.note.endswith("--sparse-encoder added nothing: the source is a SparseEncoder "
                               "folder already.")
    assert {n for n in again.result.files} == {n for n in outcome.result.files}
    assert (tmp_path / "again" / "1_SpladePooling" / "config.json").read_bytes() == \
        (out / "1_SpladePooling" / "config.json").read_bytes()
