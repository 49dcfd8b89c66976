"""Conditions where k matters: the ModernBERT-matched simulation of the real BERT-tiny, the
ModernBERT-architecture checkpoint pretrained here (and its BERT control), and the registry that
hands them to calibration runs by name (scripts/conditions.py, research code beside the runner).

Pinned numbers were measured once with the code under test and are recorded in
docs/conditions.md; each test also checks them against an independent computation where one
exists (row norms by a plain loop, active terms from a fresh forward pass)."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headscope import assets, checkpoint, probe, simulate
from headscope.errors import InputError
from headscope.heads import find_head

TARGET_SHARE = 28051 / 50368  # ModernBERT-base, active terms per query at step 0
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load_conditions():
    spec = importlib.util.spec_from_file_location("conditions", SCRIPTS / "conditions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["conditions"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


conditions = _load_conditions()


@pytest.fixture(scope="module")
def queries() -> list[str]:
    return [p.query for p in probe.builtin_probe(256).pairs]


@pytest.fixture(scope="module")
def matched(bert_tiny, queries):
    """(model, tokenizer, info) of the ModernBERT-matched simulation."""
    model = copy.deepcopy(bert_tiny.model)
    info = conditions.make_modernbert_matched(model, bert_tiny.tokenizer, queries)
    return model, bert_tiny.tokenizer, info


def _active_per_text(model, tokenizer, texts, max_length):
    """Active terms per text from a plain forward pass: (N,) counts of max-pooled logits > 0."""
    counts = []
    for text in texts:
        enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]  # (T, V)
        counts.append(int((logits.max(dim=0).values > 0).sum()))
    return np.array(counts)


def test_matched_row_norm_is_modernbert_base(matched):
    model, _, info = matched
    w = find_head(model).decoder_weight.detach().double().numpy()  # (V, E)
    naive = np.mean([np.sqrt(sum(x * x for x in row)) for row in w[:2000]])
    assert np.linalg.norm(w, axis=1).mean() == pytest.approx(2.553, abs=1e-4)
    assert naive == pytest.approx(np.linalg.norm(w[:2000], axis=1).mean(), rel=1e-9)
    assert info.row_norm_after == pytest.approx(2.553, abs=1e-4)
    assert info.row_norm_before == pytest.approx(0.6819, abs=1e-4)  # the real BERT-tiny
    assert info.projection_scale == pytest.approx(2.553 / info.row_norm_before)
    # Untied: the input embeddings are the real model's.
    emb = model.get_input_embeddings().weight
    assert find_head(model).decoder_weight.data_ptr() != emb.data_ptr()
    assert float(emb.detach().norm(dim=1).mean()) == pytest.approx(0.6819, abs=1e-4)


def test_matched_density_is_half_the_vocabulary_per_query(matched, queries):
    model, tok, info = matched
    vocab = model.config.vocab_size
    full = _active_per_text(model, tok, queries, 32)  # unpadded: float noise moves a few terms
    assert full.mean() == pytest.approx(info.active_query_after, abs=0.05)
    assert abs(full.mean() / vocab - TARGET_SHARE) < 1e-3
    assert full.min() > 3000  # every query carries thousands of active terms, not just the mean
    assert info.active_query_before < 0.01 * vocab  # the real model is sparse


def test_matched_changes_only_the_head(matched, bert_tiny):
    model, _, info = matched
    assert set(info.changed) == {
        "cls.predictions.decoder.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight",
    }
    before = dict(bert_tiny.model.named_parameters())
    for name, p in model.named_parameters():
        if name not in info.changed and name in before:
            torch.testing.assert_close(p, before[name], rtol=0, atol=0)
    torch.testing.assert_close(model.cls.predictions.transform.LayerNorm.weight,
                               bert_tiny.model.cls.predictions.transform.LayerNorm.weight * 8.0)


def test_matched_is_labelled_and_refuses_twice(matched, queries):
    model, tok, info = matched
    entry = getattr(model.config, simulate.CONFIG_KEY)
    assert entry["simulation"] is True and entry["where"] == "modernbert-matched"
    assert entry["label"].startswith("SIMULATION, not a real checkpoint")
    assert simulate.is_simulation(model)
    with pytest.raises(InputError) as err:
        conditions.make_modernbert_matched(model, tok, queries[:4])
    assert str(err.value) == ("This model is already a headscope simulation; start from the "
                              "real checkpoint.")


def test_matched_options_validate():
    with pytest.raises(InputError) as err:
        conditions.MatchedOptions(active_query_share=1.0)
    assert str(err.value) == "active_query_share must be strictly between 0 and 1, got 1.0."
    with pytest.raises(InputError) as err:
        conditions.MatchedOptions(gain=0)
    assert str(err.value) == "gain must be a finite number > 0, got 0."


@pytest.mark.slow
def test_matched_start_loss_per_k(matched):
    """The probe's start loss: of order 1e3-1e4 at k = 1 and within the published 6e2-2e3 at
    k = 16; activity does not depend on k (the density lives in the projection)."""
    model, tok, _ = matched
    result = probe.run_probe(model, tok, find_head(model).bias, probe.builtin_probe(256),
                             probe.ProbeConfig(ks=(1, 8, 16)))
    by_k = {s.k: s for s in result.per_k}
    assert by_k[1.0].start_loss == pytest.approx(MATCHED_LOSS[1], rel=0.02)
    assert by_k[8.0].start_loss == pytest.approx(MATCHED_LOSS[8], rel=0.02)
    assert by_k[16.0].start_loss == pytest.approx(MATCHED_LOSS[16], rel=0.02)
    assert 600 <= by_k[16.0].start_loss <= 2000
    assert by_k[1.0].start_loss > 2 * by_k[8.0].start_loss > 2 * by_k[16.0].start_loss
    assert by_k[8.0].active_query == pytest.approx(by_k[1.0].active_query, rel=0.05)


MATCHED_LOSS = {1: 6312.6, 8: 2327.8, 16: 1368.8}  # measured once (docs/conditions.md)


# --------------------------------------------------------------------------------------------
# registry


def test_conditions_registry_names_aliases_and_labels():
    conds = conditions.CONDITIONS
    assert list(conds) == ["real-bert-tiny", "bias-dense", "projection-dense",
                           "modernbert-matched-sim", "modernbert-mini", "bert-mini-control",
                           "tied-scale-sim", "modernbert-pt128", "pt128-scaled-sim", "esm-pt128",
                           "modernbert-pt256", "pt128-bert-scale-sim"]
    assert conditions.ALIASES == {"bert-tiny": "real-bert-tiny",
                                  "bert-tiny-bias-sim": "bias-dense",
                                  "bert-tiny-projection-sim": "projection-dense"}
    for name, cond in conds.items():
        assert cond.name == name
        assert conditions.get(name) is cond
        assert cond.label.startswith("SIMULATION") == cond.simulation
    assert [c.name for c in conds.values() if c.simulation] == [
        "bias-dense", "projection-dense", "modernbert-matched-sim", "tied-scale-sim",
        "pt128-scaled-sim", "pt128-bert-scale-sim"]
    assert conditions.get("bert-tiny-bias-sim") is conds["bias-dense"]
    with pytest.raises(KeyError) as err:
        conditions.get("bert-base")
    assert err.value.args[0] == (
        "No calibration condition 'bert-base'; known: bert-mini-control, bert-tiny, "
        "bert-tiny-bias-sim, bert-tiny-projection-sim, bias-dense, esm-pt128, "
        "modernbert-matched-sim, "
        "modernbert-mini, modernbert-pt128, modernbert-pt256, projection-dense, "
        "pt128-bert-scale-sim, pt128-scaled-sim, real-bert-tiny, tied-scale-sim.")


def test_the_package_keeps_only_what_users_call():
    """The calibration's research code left the package: simulate keeps the dense variants."""
    for name in ("conditions", "Condition", "make_modernbert_matched", "MatchedOptions"):
        assert not hasattr(simulate, name), name
    assert callable(simulate.make_dense_variant)


def test_condition_builds_matched_folder_once(tmp_path, matched, bert_tiny):
    model, tok, _ = matched
    folder = conditions.get("modernbert-matched-sim")(tmp_path)
    assert folder == tmp_path / "modernbert-matched-sim"
    config = json.loads((folder / "config.json").read_text())
    assert config[simulate.CONFIG_KEY]["simulation"] is True
    assert config["tie_word_embeddings"] is False
    again = checkpoint.load(checkpoint.resolve(str(folder)))
    enc = tok(["The import statement binds a name."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again.model(**enc).logits, model(**enc).logits)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert conditions.get("modernbert-matched-sim")(tmp_path) == folder  # reused
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_tied_scale_multiplies_the_tied_embeddings_only(tmp_path, bert_tiny):
    folder = conditions.get("tied-scale-sim")(tmp_path)
    sim = checkpoint.load(checkpoint.resolve(str(folder)))
    entry = json.loads((folder / "config.json").read_text())[simulate.CONFIG_KEY]
    assert entry["simulation"] is True and entry["where"] == "tied-scale"
    assert entry["label"].startswith("SIMULATION, not a real checkpoint")
    assert entry["changed"] == ["bert.embeddings.word_embeddings.weight",
                                "cls.predictions.decoder.weight"]
    head = find_head(sim.model)
    assert head.decoder_weight is sim.model.get_input_embeddings().weight  # still tied
    w = head.decoder_weight.detach().double().numpy()  # (V, E)
    naive = np.mean([np.sqrt(sum(x * x for x in row)) for row in w[:500]])
    assert naive == pytest.approx(np.linalg.norm(w[:500], axis=1).mean(), rel=1e-9)
    assert np.linalg.norm(w, axis=1).mean() == pytest.approx(2.553, abs=1e-4)
    original = bert_tiny.model.state_dict()
    scale = entry["projection_scale"]
    assert scale == pytest.approx(2.553 / 0.6819, rel=1e-3)
    for name, tensor in sim.model.state_dict().items():
        if name in entry["changed"]:
            torch.testing.assert_close(tensor, original[name] * scale)
        else:
            torch.testing.assert_close(tensor, original[name], rtol=0, atol=0)
    with pytest.raises(InputError) as err:
        conditions.make_tied_scale(sim.model)
    assert str(err.value) == ("This model is already a headscope simulation; start from the "
                              "real checkpoint.")


@pytest.mark.parametrize(("name", "row_norm"), [("pt128-scaled-sim", 2.553),
                                               ("pt128-bert-scale-sim", 0.682)])
def test_pt128_scaled_changes_the_head_scale_of_a_real_language_model(tmp_path, name, row_norm):
    """modernbert-pt128 with its tied embeddings multiplied to row norm 2.553 (ModernBERT-base's)
    or 0.682 (the real BERT-tiny's): every other tensor is the real one, and the encoder's last
    hidden states are unchanged up to the embedding LayerNorm's epsilon (it divides the scale
    out; measured: 5e-4 on hidden values up to 6), so only the logits' projection part moves."""
    folder = conditions.get(name)(tmp_path)
    sim = checkpoint.load(checkpoint.resolve(str(folder)))
    real = checkpoint.load(checkpoint.resolve(str(assets.local("modernbert-pt128"))))
    entry = json.loads((folder / "config.json").read_text())[simulate.CONFIG_KEY]
    assert entry["where"] == "tied-scale" and entry["simulation"] is True
    assert entry["changed"] == ["decoder.weight", "model.embeddings.tok_embeddings.weight"]
    w = find_head(sim.model).decoder_weight.detach().double().numpy()  # (V, E)
    assert np.linalg.norm(w, axis=1).mean() == pytest.approx(row_norm, abs=1e-4)
    scale = entry["projection_scale"]
    assert scale == pytest.approx(row_norm / 1.3198, rel=1e-3)
    original = real.model.state_dict()
    for name, tensor in sim.model.state_dict().items():
        if name in entry["changed"]:
            torch.testing.assert_close(tensor, original[name] * scale)
        else:
            torch.testing.assert_close(tensor, original[name], rtol=0, atol=0)
    enc = real.tokenizer(["the head of a masked language model", "scale"], padding=True,
                         return_tensors="pt")
    with torch.no_grad():
        h_real = real.model.model(**enc).last_hidden_state
        h_sim = sim.model.model(**enc).last_hidden_state
        torch.testing.assert_close(h_sim, h_real, atol=2e-3, rtol=0)
        bias = find_head(real.model).bias
        torch.testing.assert_close(sim.model(**enc).logits - bias,
                                   (real.model(**enc).logits - bias) * scale,
                                   atol=2e-2, rtol=0)


def test_real_conditions_are_the_assets(bert_tiny_dir, tmp_path):
    assert conditions.get("bert-tiny")(tmp_path) == bert_tiny_dir
    assert conditions.get("modernbert-mini")(tmp_path) == assets.local("modernbert-mini")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# the checkpoints pretrained here (scripts/pretrain_mlm.py)


def test_local_refuses_unknown_and_tampered(monkeypatch):
    with pytest.raises(InputError) as err:
        assets.local("modernbert-base")
    assert str(err.value) == ("Unknown local checkpoint 'modernbert-base'; known: "
                              "bert-mini-control, esm-pt128, modernbert-mini, modernbert-pt128, "
                              "modernbert-pt256.")
    real = assets.LOCAL["modernbert-mini"]
    monkeypatch.setitem(assets.LOCAL, "modernbert-mini",
                        assets.LocalAsset(real.name, real.folder, "0" * 64, real.rebuild,
                                          real.description))
    with pytest.raises(InputError) as err:
        assets.local("modernbert-mini")
    weights = assets.repo_root() / "models/modernbert-mini/model.safetensors"
    assert str(err.value) == (
        f"{weights} does not match its pinned sha256 {'0' * 64}; restore it with `git checkout "
        "-- models/modernbert-mini` or rebuild it with `python3 scripts/pretrain_mlm.py --arch "
        "modernbert --out models`.")


@pytest.mark.parametrize("name", ["modernbert-mini", "bert-mini-control", "modernbert-pt128",
                                  "esm-pt128", "modernbert-pt256"])
def test_pretrained_checkpoint_provenance(name):
    folder = assets.local(name)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["model.safetensors sha256"] == assets.LOCAL[name].sha256
    assert provenance["config"]["seed"] == 0
    rows = [json.loads(line) for line in (folder / "pretrain.jsonl").open()]
    assert rows[-1]["step"] == provenance["config"]["steps"]
    config = json.loads((folder / "config.json").read_text())
    assert not config.get(simulate.CONFIG_KEY)  # real, not a simulation
    assert config["model_type"] == {"bert": "bert", "esm": "esm"}.get(name.split("-")[0],
                                                                      "modernbert")
    # the architecture provenance records is the one the weights carry (pt256 doubles the width)
    assert [config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                "intermediate_size")] == [
        provenance["config"][k] for k in ("layers", "hidden", "heads", "intermediate")]


# The bar a model pretrained here meets before it becomes a condition (issue: held-out MLM
# accuracy of at least 0.30), judged on every held-out block (`pretrain_mlm.py --evaluate`).
MLM_ACCURACY_BAR = 0.30


@pytest.mark.parametrize("name", ["modernbert-pt128", "esm-pt128", "modernbert-pt256"])
def test_pretrained_condition_meets_the_accuracy_bar_on_every_held_out_block(name):
    """heldout.json measures the committed weights (same sha256) on all held-out blocks, more
    than pretraining tracked; the last tracked accuracy agrees with it within sampling noise."""
    folder = assets.local(name)
    held = json.loads((folder / "heldout.json").read_text())
    assert held["model.safetensors sha256"] == assets.LOCAL[name].sha256
    assert held["held_out_blocks"] > json.loads(
        (folder / "provenance.json").read_text())["config"]["eval_blocks"]
    assert held["mlm_accuracy"] >= MLM_ACCURACY_BAR
    last = [json.loads(line) for line in (folder / "pretrain.jsonl").open()][-1]
    assert abs(last["mlm_accuracy"] - held["mlm_accuracy"]) < 0.06
    assert held["row_norm_mean"] == pytest.approx(last["row_norm_mean"], rel=1e-6)


def test_modernbert_mini_head_is_modernbert_style():
    """Tied decoder with a bias, LayerNorm without bias; row norm by a plain loop over rows."""
    ckpt = checkpoint.resolve(str(assets.local("modernbert-mini")))
    assert ckpt.model_type == "modernbert"
    names = set(checkpoint.tensor_names(ckpt))
    assert "decoder.bias" in names and "head.norm.bias" not in names
    assert "decoder.weight" not in names  # tied to model.embeddings.tok_embeddings
    emb = checkpoint.read_tensors(ckpt, ["model.embeddings.tok_embeddings.weight"])
    w = emb["model.embeddings.tok_embeddings.weight"].double().numpy()  # (V, E)
    naive = sum(np.sqrt(sum(float(x) * float(x) for x in row)) for row in w) / len(w)
    assert naive == pytest.approx(MINI_ROW_NORM, abs=1e-4)


# Measured once with `headscope inspect models/modernbert-mini` (docs/conditions.md).
MINI_ROW_NORM = 0.365094
MINI_PER_K = {1.0: (6626.17, 585.847), 4.0: (6145.76, 75.5703), 16.0: (4001.35, 4.18305)}
MINI_RECOMMENDATION = (8.0, False)  # k, bias divided (its best arm in docs/calibration.md)


@pytest.fixture(scope="module")
def mini_report():
    from headscope import api

    return api.inspect(str(assets.local("modernbert-mini")),
                       options=api.InspectOptions(rule="bands"))


@pytest.mark.usefixtures("bands_default")
def test_modernbert_mini_inspect_pins_statistics_and_recommendation(mini_report):
    rep = mini_report
    assert rep.model.model_type == "modernbert"
    assert rep.weights.row_norm_all.mean == pytest.approx(MINI_ROW_NORM, abs=1e-4)
    assert rep.model.tied is True
    assert rep.weights.norm_bias_l2 is None  # ModernBERT's head LayerNorm has no bias
    by_k = {s.k: s for s in rep.per_k}
    for k, (active_q, loss) in MINI_PER_K.items():
        assert by_k[k].active_query == pytest.approx(active_q, rel=1e-3)
        assert by_k[k].start_loss == pytest.approx(loss, rel=1e-3)
    assert (rep.recommendation.k, rep.recommendation.scale_bias) == MINI_RECOMMENDATION


@pytest.mark.usefixtures("bands_default")
def test_modernbert_mini_fix_reloads_with_expected_logits(mini_report, tmp_path):
    from transformers import AutoModelForMaskedLM

    from headscope import api
    from headscope.rescale import RescaleSpec, expected_logits

    folder = assets.local("modernbert-mini")
    out = api.fix(str(folder), str(tmp_path / "fixed"))
    k, scale_bias = MINI_RECOMMENDATION
    assert (out.k, out.result.spec.scale_bias) == (k, scale_bias)
    original = checkpoint.load(checkpoint.resolve(str(folder)))
    fixed = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "fixed")).eval()
    enc = original.tokenizer(["The import statement binds a name in the local namespace."],
                             return_tensors="pt")
    with torch.no_grad():
        before = original.model(**enc).logits
        after = fixed(**enc).logits
    bias = find_head(original.model).bias
    spec = RescaleSpec(k, "untie", scale_bias)
    torch.testing.assert_close(after, expected_logits(before, bias, spec), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_pretrain_script_is_deterministic(tmp_path):
    """Two tiny runs of scripts/pretrain_mlm.py (stdlib text only) write identical weights, and
    the recorded sha256 is the file's."""
    import hashlib
    import subprocess
    import sys

    script = assets.repo_root() / "scripts" / "pretrain_mlm.py"
    args = ["--arch", "modernbert", "--no-boolq", "--layers", "1", "--hidden", "32", "--heads",
            "2", "--intermediate", "64", "--vocab", "512", "--steps", "3", "--batch", "4",
            "--eval-every", "3", "--eval-blocks", "4"]
    digests = []
    for run in ("a", "b"):
        subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path / run)],
                       check=True, capture_output=True)
        folder = tmp_path / run / "modernbert-mini"
        provenance = json.loads((folder / "provenance.json").read_text())
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        assert provenance["model.safetensors sha256"] == digest
        rows = [json.loads(line) for line in (folder / "pretrain.jsonl").open()]
        assert [r["step"] for r in rows] == [0, 3]
        digests.append(digest)
    assert digests[0] == digests[1]


def _load_pretrain():
    spec = importlib.util.spec_from_file_location("pretrain_mlm", SCRIPTS / "pretrain_mlm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_mlm"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arch", ["modernbert", "bert", "roberta-pre", "esm"])
def test_pretrain_loss_is_the_models_own_masked_lm_loss(arch):
    """The script's head-on-masked-positions loss equals each architecture's own forward loss
    with labels, and head_tensors are the parameters that make its logits."""
    pretrain = _load_pretrain()
    cfg = pretrain.PretrainConfig(arch=arch, layers=1, hidden=32, heads=2, intermediate=64,
                                  vocab=256, dropout=0.0)
    model = pretrain.build_model(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 256, (2, 16), generator=gen)
    inputs, labels = pretrain.mask_tokens(ids, 0.3, 256, gen)
    with torch.no_grad():
        ours = pretrain.masked_loss(model, inputs, labels)
        theirs = model(input_ids=inputs, labels=labels).loss
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        weight, bias = pretrain.head_tensors(model)
        head = find_head(model)
        assert weight is head.decoder_weight and bias is head.bias
        assert weight is model.get_output_embeddings().weight
        before = model(input_ids=inputs).logits
        bias.add_(1.0)  # the bias evaluate() reports is the one the logits carry
        torch.testing.assert_close(model(input_ids=inputs).logits - before,
                                   torch.ones_like(before))
    expected = {"modernbert": "ModernBertForMaskedLM", "bert": "BertForMaskedLM",
                "roberta-pre": "RobertaPreLayerNormForMaskedLM", "esm": "EsmForMaskedLM"}[arch]
    assert type(model).__name__ == expected


def test_pretrain_plot_labels_each_run_and_takes_a_title(tmp_path):
    """`--plot` draws one line per folder in every panel, labelled by the folder (a run without
    provenance.json says where it stopped), under the title given."""
    pretrain = _load_pretrain()
    keys = ("mlm_accuracy", "row_norm_mean", "bias_mean", "positive_share", "active_share",
            "logit_p50", "logit_p99")
    for name, steps, done in (("wide", (0, 250, 500), True), ("narrow", (0, 250), False)):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"step": s, **{k: s / 1000 for k in keys}} for s in steps]
        (folder / "pretrain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if done:
            (folder / "provenance.json").write_text("{}")
    fig = pretrain.plot([tmp_path / "wide", tmp_path / "narrow"], tmp_path / "f.png",
                        "Width at one recipe")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.get_suptitle() == "Width at one recipe"
    for ax in fig.axes:
        assert [len(line.get_xdata()) for line in ax.get_lines()] == [3, 2]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["wide", "narrow (stopped: step 250)"]
