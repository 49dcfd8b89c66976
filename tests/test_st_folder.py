"""SparseEncoder folders in and out: `inspect`, `check` and `fix` read the masked LM of a
sentence-transformers folder wherever modules.json puts it (the folder's root, a sub-folder, the
document side of an inference-free Router), and `fix` writes the same layout back, so that
`SparseEncoder(out)` loads with the user's prompts, max length and pooling and encodes as
docs/rescale.md promises: every logit divided by k (bias divided too) before the pooling's
log1p(relu(.)). The reference is computed here from the source's own logits with transformers,
not through headscope."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from headscope.cli import main
from headscope.errors import InputError
from headscope.st_folder import find_mlm

pytest.importorskip("sentence_transformers.sparse_encoder")

PROMPTS = {"query": "query: ", "document": "passage: "}
MAX_LENGTH = 12  # not the tiny BERT's 64: the folder must carry it
TEXTS = ["the head of a model and its weights", "sparse term weights"]
K = 4.0
LAYOUTS = ("root", "sub-folder", "router")
MLM_FOLDER = {"root": "", "sub-folder": "0_MLMTransformer", "router": "document_0_Transformer"}
NOTE = {
    "root": "MLM module (the folder's root) of modules.json",
    "sub-folder": "MLM module 0_MLMTransformer of modules.json",
    "router": ("MLM module document_0_Transformer of modules.json, the Router's document "
               "route; its query route is a SparseStaticEmbedding, which has no MLM head "
               "(left as it is)"),
}


def _encoder(src: Path, layout: str):
    """A SparseEncoder on the tiny BERT with the user's settings: prompts, a max length, and
    (root, sub-folder) sum pooling with log1p_relu, none of them the defaults."""
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import (
        MLMTransformer,
        SparseStaticEmbedding,
        SpladePooling,
    )

    if layout == "router":  # inference-free SPLADE: queries by a weight per token
        doc = Transformer(str(src), transformer_task="fill-mask", max_seq_length=MAX_LENGTH)
        static = SparseStaticEmbedding(tokenizer=doc.tokenizer, frozen=False)
        with torch.no_grad():
            static.weight.copy_(torch.linspace(0.5, 2.0, static.weight.numel()))
        router = Router.for_query_document(query_modules=[static],
                                           document_modules=[doc, SpladePooling("max")])
        return SparseEncoder(modules=[router], device="cpu", prompts=PROMPTS)
    if layout == "sub-folder":  # as sentence-transformers 5 saved an MLMTransformer
        mlm = MLMTransformer(str(src), max_seq_length=MAX_LENGTH)
        mlm.save_in_root = False
    else:
        mlm = Transformer(str(src), transformer_task="fill-mask", max_seq_length=MAX_LENGTH)
    pooling = SpladePooling("sum", activation_function="log1p_relu")
    return SparseEncoder(modules=[mlm, pooling], device="cpu", prompts=PROMPTS,
                         default_prompt_name="query")


@pytest.fixture(scope="module")
def encoders(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """layout -> a saved SparseEncoder folder of that layout."""
    root = tmp_path_factory.mktemp("encoders")
    folders = {}
    for layout in LAYOUTS:
        _encoder(tiny_checkpoint("bert"), layout).save(str(root / layout))
        folders[layout] = root / layout
    assert (folders["sub-folder"] / "0_MLMTransformer" / "config.json").is_file()
    assert not (folders["router"] / "config.json").exists()
    return folders


@pytest.fixture(autouse=True)
def _private_cache(headscope_cache):
    return headscope_cache


def _fix(source: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["fix", str(source), "--out", str(out), "--k", f"{K:g}",
                                     "--scale-bias", *extra])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _promised(mlm: Path, prompt: str, activation: str, pooling: str) -> torch.Tensor:
    """docs/rescale.md's promise, from the source's own masked LM: logits / k, then the
    pooling's log1p(relu(.)) (twice for log1p_relu), max or sum over the text's tokens."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mlm))
    model = AutoModelForMaskedLM.from_pretrained(str(mlm)).eval()
    batch = tok([prompt + t for t in TEXTS], padding=True, truncation=True,
                max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits / K  # (B, T, V)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
    weights = torch.log1p(torch.relu(logits * mask))
    if activation == "log1p_relu":
        weights = torch.log1p(weights)
    return weights.amax(dim=1) if pooling == "max" else weights.sum(dim=1)  # (B, V)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fix_writes_the_same_sparse_encoder_layout(encoders, tmp_path, layout):
    from sentence_transformers.sparse_encoder import SparseEncoder

    src, out = encoders[layout], tmp_path / "fixed"
    result = _fix(src, out)
    assert result.exit_code == 0, result.stderr
    assert f"Fixed the {NOTE[layout]}; every other sentence-transformers file is kept" in \
        " ".join(result.stderr.split())

    before, after = _files(src), _files(out)
    assert set(after) == set(before) | {"headscope.json"}
    mlm = MLM_FOLDER[layout]
    for name, data in before.items():  # every sentence-transformers file kept byte for byte
        if name != "README.md" and not name.startswith(f"{mlm}/" if mlm else ""):
            assert after[name] == data, name
    card = (out / "README.md").read_text()  # the source's card kept, how to load it added
    assert card.startswith((src / "README.md").read_text().rstrip("\n"))
    assert 'model = SparseEncoder("path/to/this/folder")' in card
    record = json.loads((out / "headscope.json").read_text())
    assert record["module"] == mlm and record["source_path"] == str(src)
    assert set(record["files"]) == set(after)  # what a later --overwrite may replace

    fixed = SparseEncoder(str(out), device="cpu")
    assert fixed.prompts == PROMPTS and fixed.max_seq_length == MAX_LENGTH
    source_mlm = src / mlm if mlm else src
    if layout == "router":
        original = SparseEncoder(str(src), device="cpu")
        got = fixed.encode_document(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False)
        want = _promised(source_mlm, PROMPTS["document"], "relu", "max")
        # the query side (a weight per token, no MLM head) is the source's exactly
        assert torch.equal(
            fixed.encode_query(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False),
            original.encode_query(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False))
    else:
        pooling = fixed[1]
        assert (pooling.pooling_strategy, pooling.activation_function) == ("sum", "log1p_relu")
        assert fixed.default_prompt_name == "query"
        got = fixed.encode(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False)
        want = _promised(source_mlm, PROMPTS["query"], "log1p_relu", "sum")
    assert got.shape == want.shape == (2, 100)
    assert torch.allclose(got, want, atol=1e-5)
    # and it is not the undivided encoder: the rescale did something the check can see
    undivided = SparseEncoder(str(src), device="cpu")
    same = (undivided.encode_document if layout == "router" else undivided.encode)(
        TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False)
    assert not torch.allclose(same, want, atol=1e-3)


def test_inspect_and_check_read_the_mlm_module(encoders):
    """The weights-only report of the folder is the report of its MLM module's folder, and
    stderr says which module was read."""
    runner = CliRunner()
    src = encoders["sub-folder"]
    whole = runner.invoke(main, ["inspect", "--weights-only", str(src), "--json", "-"])
    alone = runner.invoke(main, ["inspect", "--weights-only", str(src / "0_MLMTransformer"),
                                 "--json", "-"])
    assert whole.exit_code == 0 and alone.exit_code == 0, (whole.stderr, alone.stderr)
    assert whole.stderr == f"{src}: reading the {NOTE['sub-folder']}.\n"
    assert alone.stderr == ""
    assert json.loads(whole.stdout)["weights"] == json.loads(alone.stdout)["weights"]

    check = runner.invoke(main, ["check", "--weights-only", str(encoders["router"])])
    assert check.exit_code == 0, check.stderr
    assert f"{encoders['router']}: reading the {NOTE['router']}." in \
        " ".join(check.stderr.split())


def test_a_modules_json_without_an_mlm_module_is_refused(encoders, tmp_path):
    src = tmp_path / "dense"
    shutil.copytree(encoders["root"], src)
    (src / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "",
         "type": "sentence_transformers.base.modules.transformer.Transformer"}]))
    (src / "sentence_bert_config.json").write_text(json.dumps(
        {"transformer_task": "feature-extraction"}))
    result = _fix(src, tmp_path / "out")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        f"Error: {src}/modules.json lists no masked-LM module (an MLMTransformer, or a "
        'Transformer with transformer_task "fill-mask"; its modules: Transformer); headscope '
        "measures an MLM head: pass the folder or Hub id of the masked LM.\n")
    assert not (tmp_path / "out").exists()


def test_find_mlm_refuses_two_mlm_modules_and_paths_out(encoders, tmp_path):
    src = tmp_path / "two"
    shutil.copytree(encoders["sub-folder"], src)
    shutil.copytree(src / "0_MLMTransformer", src / "2_MLMTransformer")
    modules = json.loads((src / "modules.json").read_text())
    (src / "modules.json").write_text(json.dumps(
        [*modules, {**modules[0], "idx": 2, "name": "2", "path": "2_MLMTransformer"}]))
    with pytest.raises(InputError) as err:
        find_mlm(src)
    assert str(err.value) == (
        f"{src}/modules.json lists 2 masked-LM modules (0_MLMTransformer, 2_MLMTransformer); "
        "headscope fixes one head at a time: pass one module's folder as MODEL, e.g. "
        f"{src}/0_MLMTransformer.")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"transformer_task": "fill-mask"}))
    (src / "0_MLMTransformer" / "sentence_bert_config.json").unlink()
    (src / "0_MLMTransformer" / "sentence_bert_config.json").symlink_to(outside)
    (src / "modules.json").write_text(json.dumps(
        [{**modules[0], "type": "sentence_transformers.models.Transformer"}]))
    with pytest.raises(InputError) as err:
        find_mlm(src)
    assert str(err.value) == (
        f"{src}/0_MLMTransformer/sentence_bert_config.json resolves to {outside}, outside the "
        "checkpoint folder; headscope reads a sentence-transformers folder's files only from "
        "inside it: refusing it (repair the folder or re-download it).")
    (src / "modules.json").write_text(json.dumps([{**modules[0], "path": "../elsewhere"}]))
    with pytest.raises(InputError) as err:
        find_mlm(src)
    assert str(err.value) == (
        f"{src}/modules.json names the module folder '../elsewhere', which is not a relative "
        f"path inside {src}; repair the file or re-download the model.")


def test_overwrite_replaces_only_what_headscope_wrote(encoders, tmp_path):
    src, out = encoders["sub-folder"], tmp_path / "fixed"
    assert _fix(src, out).exit_code == 0
    again = _fix(src, out, "--overwrite")
    assert again.exit_code == 0, again.stderr
    (out / "0_MLMTransformer" / "notes.txt").write_text("mine")
    written = _files(out)
    refused = _fix(src, out, "--overwrite")
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"Error: Output directory {out} holds files headscope did not write "
        "(0_MLMTransformer/notes.txt); --overwrite replaces only a folder headscope wrote, or "
        "an empty one; move them or choose another --out.\n")
    assert _files(out) == written


def test_sparse_encoder_flag_on_a_sparse_encoder_folder(encoders, tmp_path):
    """--sparse-encoder adds nothing to a SparseEncoder folder (the layout is kept, and the
    note says so); on another kind of sentence-transformers folder it is refused."""
    src = encoders["sub-folder"]
    plain, flagged = tmp_path / "plain", tmp_path / "flagged"
    assert _fix(src, plain).exit_code == 0
    result = _fix(src, flagged, "--sparse-encoder")
    assert result.exit_code == 0, result.stderr
    assert ("--sparse-encoder added nothing: the source is a SparseEncoder folder already."
            in " ".join(result.stderr.split()))
    assert set(_files(flagged)) == set(_files(plain))

    other = tmp_path / "other"
    shutil.copytree(src, other)
    config = json.loads((other / "config_sentence_transformers.json").read_text())
    (other / "config_sentence_transformers.json").write_text(
        json.dumps({**config, "model_type": "SentenceTransformer"}))
    refused = _fix(other, tmp_path / "out", "--sparse-encoder")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr == (
        f"Error: {other} is a sentence-transformers SentenceTransformer folder, whose layout "
        "fix keeps; --sparse-encoder cannot make it a SparseEncoder: drop --sparse-encoder, "
        f"or pass the masked LM's folder {other}/0_MLMTransformer to wrap it in a new one.\n")
    assert not (tmp_path / "out").exists()


def test_a_cached_hub_snapshot_is_read_at_its_mlm_module(encoders, tmp_path, monkeypatch):
    """A Hub id whose cached snapshot keeps its masked LM in a sub-folder (no config.json at
    the top) is found in the cache, offline, and read at that module."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--splade"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(encoders["sub-folder"], repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(main, ["inspect", "--weights-only", "acme/splade", "--json", "-"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"acme/splade: reading the {NOTE['sub-folder']}.\n"
    assert json.loads(result.stdout)["model"]["revision"] == commit


def test_a_cached_snapshot_is_named_at_the_revision_asked_for(encoders, tmp_path, monkeypatch):
    """Two cached commits whose modules.json differ: --revision picks the line (and the read)
    of its own commit, main the other."""
    main_commit, other = "1" * 40, "2" * 40
    repo = tmp_path / "hub" / "models--acme--splade"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(main_commit)
    shutil.copytree(encoders["sub-folder"], repo / "snapshots" / main_commit)
    shutil.copytree(encoders["router"], repo / "snapshots" / other)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for args, layout, commit in (((), "sub-folder", main_commit),
                                 (("--revision", other), "router", other)):
        result = CliRunner().invoke(main, ["inspect", "--weights-only", "acme/splade", *args,
                                           "--json", "-"])
        assert result.exit_code == 0, result.stderr
        assert " ".join(result.stderr.split()) == f"acme/splade: reading the {NOTE[layout]}."
        assert json.loads(result.stdout)["model"]["revision"] == commit


def test_compare_says_which_module_it_read(encoders, tmp_path):
    """One stderr line per SparseEncoder source, in the order given; none for a plain masked
    LM or a saved report; the columns are the MLM modules' statistics."""
    runner = CliRunner()
    sub, router = encoders["sub-folder"], encoders["router"]
    plain = sub / "0_MLMTransformer"
    saved = tmp_path / "plain.json"
    inspected = runner.invoke(main, ["inspect", str(plain), "--n-pairs", "8", "--json",
                                     str(saved)])
    assert inspected.exit_code == 0, inspected.stderr
    result = runner.invoke(main, ["compare", str(sub), str(saved), str(router), str(plain),
                                  "--n-pairs", "8", "--json", "-"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (f"{sub}: reading the {NOTE['sub-folder']}.\n"
                             f"{router}: reading the {NOTE['router']}.\n")
    models = json.loads(result.stdout)["models"]
    assert [m["label"] for m in models] == ["sub-folder", "plain.json", "router",
                                            "0_MLMTransformer"]
    stats = [{k: v for k, v in m.items() if k not in ("label", "source")} for m in models]
    assert stats[0] == stats[1] == stats[2] == stats[3]  # one masked LM, read four ways


def test_an_export_beside_the_modules_is_left_out_and_named(encoders, tmp_path):
    """An onnx/ export in a SparseEncoder folder (as Hub repositories ship them) is not a
    module of modules.json: left out whole, with its reason on the "Not copied" line; the
    modules are written as they always are."""
    src = tmp_path / "with-onnx"
    shutil.copytree(encoders["sub-folder"], src)
    (src / "onnx").mkdir()
    (src / "onnx" / "model.onnx").write_bytes(b"the unfixed model")
    (src / "onnx" / "config.json").write_text("{}")
    out = tmp_path / "out"
    result = _fix(src, out, "--json", "-")
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stderr.split("\n") if x.startswith("Not copied"))
    assert line == (
        f"Not copied from {src}: onnx/config.json (in onnx/, which holds weights "
        "(onnx/model.onnx) and is left out whole); onnx/model.onnx (weights in onnx/, a folder "
        "that is not a module of modules.json: they may be this model in another format or "
        "state, which would ship the unfixed head beside the fixed one, so onnx/ is left out "
        "whole; copy it yourself if they are not this model's)")
    written, plain = _files(out), _files(encoders["sub-folder"])
    assert not (out / "onnx").exists()
    assert written["1_SpladePooling/config.json"] == plain["1_SpladePooling/config.json"]
    without = tmp_path / "out-without-onnx"
    assert _fix(encoders["sub-folder"], without).exit_code == 0
    assert set(written) == set(_files(without))  # the same files as without the export
