"""save: written checkpoints reloaded independently here and compared with the source, tensor by
tensor and logit by logit; refusals word for word; nothing left behind on failure."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import torch
from safetensors import safe_open

import headscope.save.folder as folder
import headscope.save.plan as plan
import headscope.save.verify as verify
import headscope.save.writer as writer
from headscope import checkpoint, save
from headscope.errors import InputError, OutputExistsError, VerificationError
from headscope.heads import find_head
from headscope.rescale import RescaleSpec, expected_logits
from headscope.safetensors_file import read_safetensors_header
from headscope.save import FixResult, save_fixed
from tests.tiny_models import save_tiny

TEXTS = ["What is a sparse retriever?", "The head projects hidden states onto the vocabulary."]


def _load(path) -> checkpoint.LoadedModel:
    return checkpoint.load(checkpoint.resolve(str(path)))


def _stored(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder's safetensors files, by stored name."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


def _logits(model, tokenizer, texts=TEXTS):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    mask = enc["attention_mask"].bool()
    return out.logits[mask], out.hidden_states[-1][mask]  # (N, V), (N, H)


def _reload(path):
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(str(path), output_loading_info=True)
    assert info["missing_keys"] == set()
    return model.eval()


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir())


# ------------------------------------------------------------------- real BERT-tiny, 3 ways


@pytest.mark.parametrize("strategy", ["untie", "fold", "tied"])
def test_real_bert_tiny_roundtrip(bert_tiny, bert_tiny_dir, tmp_path, strategy):
    spec = RescaleSpec(16, strategy)
    out = tmp_path / "fixed"
    result = save_fixed(bert_tiny, spec, out, verify_texts=TEXTS,
                        stats_before={"row_norm_mean": 0.682}, stats_after={"row_norm_mean": 0.04})
    assert isinstance(result, FixResult) and not result.dry_run
    assert _siblings(out) == ["fixed"]  # no temporary folder left
    assert set(result.files) == {p.name for p in out.iterdir()}
    assert result.files == ("README.md", "config.json", "headscope.json", "model.safetensors",
                            "tokenizer.json", "tokenizer_config.json")

    # Tensors: unchanged ones byte-identical to the source file, changed ones as planned.
    src, dst = _stored(bert_tiny_dir), _stored(out)
    emb_name = "bert.embeddings.word_embeddings.weight"
    changed = {
        "untie": {"cls.predictions.decoder.weight"},
        "fold": {"cls.predictions.transform.LayerNorm.gamma",
                 "cls.predictions.transform.LayerNorm.beta"},
        "tied": {emb_name},
    }[strategy]
    for name, tensor in src.items():
        if name in changed:
            assert torch.equal(dst[name], tensor / 16), name
        else:
            assert torch.equal(dst[name], tensor), name
    # the trap: the decoder bias is written explicitly, equal to the head bias
    assert torch.equal(dst["cls.predictions.decoder.bias"], src["cls.predictions.bias"])
    if strategy == "untie":
        assert torch.equal(dst["cls.predictions.decoder.weight"], src[emb_name] / 16)
    else:
        assert "cls.predictions.decoder.weight" not in dst

    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is (strategy != "untie")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (bert_tiny_dir / name).read_bytes()

    prov = json.loads((out / "headscope.json").read_text())
    digest = hashlib.sha256((bert_tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    assert prov["source_files"] == {"model.safetensors": digest}
    assert (prov["k"], prov["strategy"], prov["scale_bias"]) == (16.0, strategy, False)
    assert prov["stats_before"] == {"row_norm_mean": 0.682}
    assert prov["headscope_version"] == "0.1.0"
    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "pt" and meta["headscope_k"] == "16.0"
    assert meta["headscope_strategy"] == strategy and meta["headscope_scale_bias"] == "false"

    # Logits of an independent reload against the original's transformed.
    fixed = _reload(out)
    logits, hidden = _logits(bert_tiny.model, bert_tiny.tokenizer)
    new_logits, new_hidden = _logits(fixed, bert_tiny.tokenizer)
    want = expected_logits(logits, bert_tiny.model.cls.predictions.bias, spec)
    v = result.verification
    if strategy == "tied":
        assert result.tied and fixed.cls.predictions.decoder.weight is \
            fixed.bert.embeddings.word_embeddings.weight
        assert v.hidden_drift > 0.1  # BERT's embedding LayerNorm sees smaller inputs
        assert v.hidden_drift == pytest.approx(float((new_hidden - hidden).abs().max()), rel=1e-4)
        assert v.reload_error == 0.0
    else:
        torch.testing.assert_close(new_logits, want, rtol=0, atol=1e-4)
        assert torch.equal(new_hidden, hidden)
        assert v.hidden_drift == 0.0 and v.max_abs_logit_error <= v.logit_tolerance
    assert v.tied is (strategy != "untie")
    assert set(v.tensors_changed) >= {n.replace("gamma", "weight").replace("beta", "bias")
                                      for n in changed}


def test_scale_bias_divides_both_bias_names(bert_tiny, bert_tiny_dir, tmp_path):
    spec = RescaleSpec(4, "untie", scale_bias=True)
    save_fixed(bert_tiny, spec, tmp_path / "o", verify_texts=TEXTS)
    src, dst = _stored(bert_tiny_dir), _stored(tmp_path / "o")
    for name in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        assert torch.equal(dst[name], src["cls.predictions.bias"] / 4)
    logits, _ = _logits(bert_tiny.model, bert_tiny.tokenizer)
    new, _ = _logits(_reload(tmp_path / "o"), bert_tiny.tokenizer)
    torch.testing.assert_close(new, logits / 4, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------- refusals


def test_refuses_non_empty_out(bert_tiny, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError) as err:
        save_fixed(bert_tiny, RescaleSpec(8), out, verify_texts=TEXTS)
    assert str(err.value) == (
        f"Output directory {out} is not empty; pass --overwrite or choose another --out."
    )
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_after_verification(bert_tiny, tmp_path):
    out = tmp_path / "taken"
    save_fixed(bert_tiny, RescaleSpec(2), out, verify_texts=TEXTS)
    first = _stored(out)["cls.predictions.decoder.weight"]
    save_fixed(bert_tiny, RescaleSpec(8), out, verify_texts=TEXTS, overwrite=True)
    assert json.loads((out / "headscope.json").read_text())["k"] == 8
    torch.testing.assert_close(_stored(out)["cls.predictions.decoder.weight"], first / 4,
                               rtol=0, atol=1e-7)
    assert _siblings(out) == ["taken"]


def test_empty_existing_out_is_used(bert_tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    save_fixed(bert_tiny, RescaleSpec(8, "fold"), tmp_path / "empty", verify_texts=TEXTS)
    assert (tmp_path / "empty" / "model.safetensors").is_file()


@pytest.mark.parametrize("where", [".", "sub/dir"])
def test_refuses_out_inside_source(tmp_path, where):
    src = save_tiny("bert", tmp_path / "src")
    loaded = _load(src)
    out = (src / where).resolve()
    with pytest.raises(InputError) as err:
        save_fixed(loaded, RescaleSpec(2), out, verify_texts=TEXTS, overwrite=True)
    assert str(err.value) == (
        f"Output directory {out} is the source checkpoint folder {src.resolve()} or inside it; "
        "choose an --out outside the source."
    )


def test_refuses_out_containing_source(tmp_path):
    src = save_tiny("bert", tmp_path / "a" / "src")
    with pytest.raises(InputError) as err:
        save_fixed(_load(src), RescaleSpec(2), tmp_path / "a", verify_texts=TEXTS,
                   overwrite=True)
    assert str(err.value) == (
        f"Output directory {(tmp_path / 'a').resolve()} contains the source checkpoint "
        f"{src.resolve()}; replacing it would delete the source; choose another --out."
    )


def test_refuses_empty_texts(bert_tiny, tmp_path):
    with pytest.raises(InputError) as err:
        save_fixed(bert_tiny, RescaleSpec(2), tmp_path / "o", verify_texts=[])
    assert str(err.value) == (
        "verify_texts must be a non-empty sequence of strings; the written model is checked on "
        "them."
    )


def test_refuses_non_json_stats(bert_tiny, tmp_path):
    with pytest.raises(InputError, match="stats_before must be JSON-serialisable"):
        save_fixed(bert_tiny, RescaleSpec(2), tmp_path / "o", verify_texts=TEXTS,
                   stats_before={"x": object()})
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- failures leave nothing


def test_model_changed_in_memory_fails_verification(tmp_path):
    src = save_tiny("bert", tmp_path / "src")
    loaded = _load(src)
    with torch.no_grad():
        loaded.model.bert.encoder.layer[0].output.LayerNorm.weight.add_(1.0)
    out = tmp_path / "taken"  # an earlier output of headscope's, which --overwrite may replace
    out.mkdir()
    (out / "keep.txt").write_text("old")
    (out / "headscope.json").write_text(json.dumps({"files": ["headscope.json", "keep.txt"]}))
    with pytest.raises(VerificationError) as err:
        save_fixed(loaded, RescaleSpec(2), out, verify_texts=TEXTS, overwrite=True)
    msg = str(err.value)
    assert msg.startswith("Tensor bert.encoder.layer.0.output.LayerNorm.weight of the checkpoint "
                          f"written to {tmp_path}")
    assert msg.endswith(
        "differs from the loaded source model although the rescale does not change it; nothing "
        "was kept. If the model was changed in memory after loading, save from the checkpoint "
        "as loaded."
    )
    assert (out / "keep.txt").read_text() == "old"  # the old folder survives
    assert _siblings(out) == ["src", "taken"]


def test_wrong_logits_fail_verification(bert_tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "expected_logits", lambda x, b, spec: x)  # forgets the rescale
    with pytest.raises(VerificationError, match=r"differ from the expected \(x - b\) / k \+ b"):
        save_fixed(bert_tiny, RescaleSpec(8), tmp_path / "o", verify_texts=TEXTS)
    assert _siblings(tmp_path / "o") == []


def _tamper_after_writing(monkeypatch, change):
    """Let save write each shard, then apply `change(path, tensors)` to the file (tensors: name ->
    safetensors_file.StoredTensor, absolute byte ranges)."""
    original = writer.write_safetensors

    def write(path, entries, metadata, on_bytes):
        size = original(path, entries, metadata, on_bytes)
        change(path, read_safetensors_header(path).tensors)
        return size

    monkeypatch.setattr(writer, "write_safetensors", write)


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("name, message", [
    ("bert.encoder.layer.1.attention.self.query.weight",
     "Tensor bert.encoder.layer.1.attention.self.query.weight of the checkpoint written to {tmp} "
     "does not hold the bytes of the source checkpoint although the rescale does not change it; "
     "nothing was kept."),
    ("cls.predictions.decoder.weight",
     "Tensor cls.predictions.decoder.weight of the checkpoint written to {tmp} does not hold the "
     "rescaled value planned for it; nothing was kept. Report this with the checkpoint's "
     "config.json."),
])
def test_a_corrupted_written_tensor_fails_verification(tmp_path, monkeypatch, name, message):
    """One flipped bit in one tensor of the written file, unchanged or rescaled, is caught by the
    byte comparison, before any reload."""
    src = save_tiny("bert", tmp_path / "src")
    loaded = _load(src)
    _tamper_after_writing(monkeypatch, lambda path, tensors: _flip_byte(
        path, tensors[name].end - 1))
    out = tmp_path / "o"
    with pytest.raises(VerificationError) as err:
        save_fixed(loaded, RescaleSpec(4), out, verify_texts=TEXTS)
    tmp = str(err.value).split("written to ", 1)[1].split(" ", 1)[0]
    assert str(err.value) == message.format(tmp=tmp)
    assert _siblings(out) == ["src"]


def test_a_dropped_tensor_fails_verification(tmp_path, monkeypatch):
    src = save_tiny("bert", tmp_path / "src")
    loaded = _load(src)
    original = writer.write_safetensors
    dropped = "bert.encoder.layer.0.output.dense.bias"

    def write(path, entries, metadata, on_bytes):
        return original(path, [e for e in entries if e.name != dropped], metadata, on_bytes)

    monkeypatch.setattr(writer, "write_safetensors", write)
    with pytest.raises(VerificationError) as err:
        save_fixed(loaded, RescaleSpec(4), tmp_path / "o", verify_texts=TEXTS)
    assert str(err.value).startswith(f"Tensor {dropped} of the checkpoint written to ")
    assert str(err.value).endswith(" is missing from model.safetensors or has the wrong dtype "
                                   "or shape; nothing was kept.")
    assert _siblings(tmp_path / "o") == ["src"]


def test_reload_with_a_missing_key_fails_verification(tmp_path, monkeypatch):
    """Past the byte checks, the reload itself must find every key (here the file check is
    bypassed to reach it)."""
    src = save_tiny("bert", tmp_path / "src")
    loaded = _load(src)
    original = writer.write_safetensors
    dropped = "bert.encoder.layer.0.output.dense.bias"

    def write(path, entries, metadata, on_bytes):
        return original(path, [e for e in entries if e.name != dropped], metadata, on_bytes)

    monkeypatch.setattr(writer, "write_safetensors", write)
    monkeypatch.setattr(verify, "verify_files", lambda tmp, plan, loaded, where: 0)
    with pytest.raises(VerificationError) as err:
        save_fixed(loaded, RescaleSpec(4), tmp_path / "o", verify_texts=TEXTS)
    assert str(err.value) == (
        f"Reloading the written checkpoint left {dropped} missing or mismatched (transformers "
        "would initialise them at random); nothing was kept.")
    assert _siblings(tmp_path / "o") == ["src"]


def test_keyboard_interrupt_leaves_nothing(bert_tiny, tmp_path, monkeypatch):
    def interrupted(path, loaded):
        assert (path / "model.safetensors").is_file()  # interrupted after writing
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "reload", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_fixed(bert_tiny, RescaleSpec(8), tmp_path / "deep" / "er" / "o", verify_texts=TEXTS)
    assert list(tmp_path.iterdir()) == []  # the parents it created are gone too


def test_dry_run_writes_nothing(bert_tiny, tmp_path):
    before = bert_tiny.model.cls.predictions.decoder.weight.detach().clone()
    result = save_fixed(bert_tiny, RescaleSpec(8), tmp_path / "o", verify_texts=TEXTS,
                        dry_run=True)
    assert result.dry_run and result.verification.against == "memory"
    assert "model.safetensors" in result.files
    assert result.verification.max_abs_logit_error <= result.verification.logit_tolerance
    assert list(tmp_path.iterdir()) == []
    assert torch.equal(bert_tiny.model.cls.predictions.decoder.weight, before)  # untouched


# ------------------------------------------------------------------ layouts and families


def test_sharded_source_keeps_its_shards(tmp_path):
    src = save_tiny("bert", tmp_path / "src", max_shard_size="20KB")
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 2
    loaded = _load(src)
    result = save_fixed(loaded, RescaleSpec(4), tmp_path / "out", verify_texts=TEXTS)
    out_index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert result.sharded and set(result.weight_files) == set(index.values())
    for name, shard in index.items():
        assert out_index["weight_map"][name] == shard  # every tensor stays in its shard
    assert "cls.predictions.decoder.weight" in out_index["weight_map"]
    assert out_index["metadata"]["headscope_strategy"] == "untie"
    _reload(tmp_path / "out")


def test_single_source_split_by_max_shard_size(tmp_path):
    src = save_tiny("bert", tmp_path / "src")
    loaded = _load(src)
    result = save_fixed(loaded, RescaleSpec(4, "fold"), tmp_path / "out", verify_texts=TEXTS,
                        max_shard_size=10_000)
    assert result.sharded and len(result.weight_files) > 2
    assert result.largest_shard_bytes <= 10_000 or len(result.weight_files) > 1
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    src_t, dst_t = _stored(src), _stored(tmp_path / "out")
    changed = {"cls.predictions.transform.LayerNorm.weight",
               "cls.predictions.transform.LayerNorm.bias"}
    for name, tensor in src_t.items():
        want = tensor / 4 if name in changed else tensor
        assert torch.equal(dst_t[name], want), name


OTHER = "weights in another format: they would ship the unfixed head beside the fixed one"


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_other_files_copied_weights_in_other_formats_skipped(tmp_path):
    src = save_tiny("bert", tmp_path / "src")
    (src / "README.md").write_text("# model card\n")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text("{}")
    (src / "onnx").mkdir()
    (src / "onnx" / "model.onnx").write_bytes(b"old weights")
    (src / "heads.pt").write_bytes(b"old head")
    (src / "tf_model.h5.index.json").write_text("{}")
    (src / ".gitattributes").write_text("*.bin lfs\n")
    result = save_fixed(_load(src), RescaleSpec(2), tmp_path / "out", verify_texts=TEXTS)
    out = tmp_path / "out"
    card = (out / "README.md").read_text()
    assert card.startswith("# model card\n\n## Rescaled by headscope\n")
    assert (out / "1_Pooling" / "config.json").read_text() == "{}"
    assert not (out / "onnx").exists() and not (out / ".gitattributes").exists()
    assert not (out / "heads.pt").exists()
    assert result.skipped == (
        ".gitattributes (hidden: fix copies no hidden file or folder)",
        f"heads.pt ({OTHER})",
        "onnx/model.onnx (weights in onnx/, a folder that is not the masked LM's (no "
        "modules.json says what it holds): they may be this model in another format or state, "
        "which would ship the unfixed head beside the fixed one, so onnx/ is left out whole; "
        "copy it yourself if they are not this model's)",
        "tf_model.h5.index.json (the index of weights in another format, which are not copied)",
    )


def test_a_sub_folder_holding_weights_is_left_out_whole_and_every_file_accounted_for(
        tmp_path):
    """A plain masked-LM folder (no modules.json): a sub-folder holding weights (a training
    checkpoint, a module no modules.json lists) is left out whole, not half copied; a sub-folder
    without weights is copied; every source file is in the output byte for byte, rewritten, or
    named with its reason."""
    src = save_tiny("bert", tmp_path / "src")
    extra = {
        "1_Pooling/config.json": b'{"pooling_mode_cls_token": true}',
        "2_Dense/config.json": b'{"in_features": 32}',
        "2_Dense/model.safetensors": (src / "model.safetensors").read_bytes()[:64],
        "checkpoint-500/config.json": (src / "config.json").read_bytes(),
        "checkpoint-500/model.safetensors": (src / "model.safetensors").read_bytes(),
        "checkpoint-500/optimizer.pt": b"optimizer state",
        "checkpoint-500/trainer_state.json": b"{}",
        "notes/usage.md": b"how to use it",
        ".git/HEAD": b"ref: refs/heads/main\n",
        ".git/objects/ab/cdef": b"object",
    }
    for name, data in extra.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    out = tmp_path / "out"
    result = save_fixed(_load(src), RescaleSpec(2), out, verify_texts=TEXTS)

    dense = "2_Dense/model.safetensors"
    ckpt = "checkpoint-500/model.safetensors"
    why = ("a folder that is not the masked LM's (no modules.json says what it holds): they may "
           "be this model in another format or state, which would ship the unfixed head beside "
           "the fixed one, so {0}/ is left out whole; copy it yourself if they are not this "
           "model's")
    assert result.skipped == (
        ".git/ (hidden: fix copies no hidden file or folder)",
        f"2_Dense/config.json (in 2_Dense/, which holds weights ({dense}) and is left out "
        "whole)",
        f"{dense} (weights in 2_Dense/, {why.format('2_Dense')})",
        f"checkpoint-500/config.json (in checkpoint-500/, which holds weights ({ckpt}) and is "
        "left out whole)",
        f"{ckpt} (weights in checkpoint-500/, {why.format('checkpoint-500')})",
        f"checkpoint-500/optimizer.pt (in checkpoint-500/, which holds weights ({ckpt}) and is "
        "left out whole)",
        f"checkpoint-500/trainer_state.json (in checkpoint-500/, which holds weights ({ckpt}) "
        "and is left out whole)",
    )
    source, written = _tree(src), _tree(out)
    for name in ("1_Pooling/config.json", "notes/usage.md", "tokenizer.json"):
        assert written[name] == source[name]
    left_out = ("2_Dense", "checkpoint-500", ".git")
    assert set(written) == {n for n in source if PurePosixPath(n).parts[0] not in left_out} | {
        "README.md", "headscope.json"}  # the card and the provenance are new
    named = {entry.split(" (", 1)[0].rstrip("/") for entry in result.skipped}
    for name in source:  # every file: copied, rewritten, or named (or its hidden folder)
        assert (name in written or name in named
                or PurePosixPath(name).parts[0] in named), name
    assert set(json.loads((out / "headscope.json").read_text())["files"]) == set(written)


CARD = """---
language: en
license: apache-2.0
tags:
- fill-mask
---

# A masked LM

Trained on things.
"""


def test_the_model_card_keeps_the_source_card_and_says_what_was_done(tmp_path):
    """README.md: the source's metadata block and text byte for byte, then a section with the
    version, k, bias, strategy, source and its hash, the head statistics before and after,
    the verification and how to load it, all from headscope.json."""
    from headscope import __version__

    src = save_tiny("bert", tmp_path / "src")
    (src / "README.md").write_text(CARD)
    loaded = _load(src)
    head = find_head(loaded)
    norm = float(head.decoder_weight.detach().norm(dim=1).mean())
    before = {"weights": {"row_norm_all": {"mean": norm}, "bias_mean": 0.25},
              "probe_at_k1": {"active_passage": 80.0, "term_weight_mean": 1.5,
                              "share_above_5": 0.0, "start_loss": 3.0}}
    after = {"probe_predicted": {"active_passage": 20.0, "term_weight_mean": 0.5,
                                 "share_above_5": 0.0, "start_loss": 2.0}}
    save_fixed(loaded, RescaleSpec(4, "untie", scale_bias=True), tmp_path / "out",
               verify_texts=TEXTS, stats_before=before, stats_after=after)
    out = tmp_path / "out"
    card = (out / "README.md").read_text()
    record = json.loads((out / "headscope.json").read_text())
    assert card.startswith(CARD.rstrip("\n") + "\n\n## Rescaled by headscope\n")
    digest = record["source_files"]["model.safetensors"]
    assert (f"This checkpoint is `{src}` (`model.safetensors` sha256 `{digest}`) with its "
            "masked-LM head's projection divided by k = 4 (strategy `untie`; output bias divided "
            f"by k too), written by headscope {__version__} on {record['created']}.") in card
    assert f"| decoder row norm, mean | {norm:.4g} | {norm / 4:.4g} |" in card
    assert "| output bias, mean | 0.25 | 0.0625 |" in card
    assert "| active terms per passage | 80 | 20 |" in card
    assert "| in-batch loss at step 0 | 3 | 2 |" in card
    v = record["verification"]
    assert (f"the reloaded logits are the source's divided as promised within "
            f"{v['max_abs_logit_error']:.4g} (tolerance {v['logit_tolerance']:.4g}) on "
            f"{v['n_texts']} texts; changed tensors: `cls.predictions.bias`, "
            "`cls.predictions.decoder.bias`, `cls.predictions.decoder.weight`.") in card
    assert "AutoModelForMaskedLM.from_pretrained(" in card
    # headscope's own measurement of the written decoder agrees with the card's "after"
    fixed = find_head(_load(out))
    assert float(fixed.decoder_weight.detach().norm(dim=1).mean()) == pytest.approx(norm / 4,
                                                                                    rel=1e-5)


def test_a_source_without_a_card_gets_one(tmp_path):
    src = save_tiny("roberta", tmp_path / "src")
    save_fixed(_load(src), RescaleSpec(2, "fold"), tmp_path / "out", verify_texts=TEXTS)
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith(f"# {src}, rescaled by headscope\n\n## Rescaled by headscope\n")
    assert "| decoder row norm, mean | not measured | not measured |" in card


def test_legacy_bin_source(tmp_path):
    """A pytorch_model.bin checkpoint (shared decoder/embedding storage in the file)."""
    from tests.tiny_models import build_tiny, write_tokenizer

    src = tmp_path / "src"
    model = build_tiny("bert")
    model.config.save_pretrained(str(src))
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    write_tokenizer(src)
    loaded = _load(src)
    assert loaded.checkpoint.weight_format == "bin"
    for strategy in ("untie", "tied"):
        out = tmp_path / strategy
        save_fixed(loaded, RescaleSpec(2, strategy), out, verify_texts=TEXTS)
        assert [p.name for p in out.glob("*.bin")] == []
        logits, _ = _logits(loaded.model, loaded.tokenizer)
        new, _ = _logits(_reload(out), loaded.tokenizer)
        if strategy == "untie":
            want = expected_logits(logits, loaded.model.cls.predictions.bias, RescaleSpec(2))
            torch.testing.assert_close(new, want, rtol=0, atol=1e-5)


def test_real_albert_bin(albert_dir, tmp_path):
    loaded = _load(albert_dir)
    result = save_fixed(loaded, RescaleSpec(8, "fold"), tmp_path / "o",
                        verify_texts=["CCO.O=C=O>>CC(=O)O"])
    assert result.verification.max_abs_logit_error <= result.verification.logit_tolerance
    assert "vocab.txt" in result.files


@pytest.mark.parametrize("strategy", ["untie", "fold", "tied"])
def test_tiny_modernbert(tmp_path, strategy):
    src = save_tiny("modernbert", tmp_path / "src")
    loaded = _load(src)
    result = save_fixed(loaded, RescaleSpec(8, strategy), tmp_path / "out", verify_texts=TEXTS)
    dst = _stored(tmp_path / "out")
    if strategy == "fold":
        assert result.verification.tensors_changed == ("head.norm.weight",)
        assert "head.norm.bias" not in dst
    logits, _ = _logits(loaded.model, loaded.tokenizer)
    new, _ = _logits(_reload(tmp_path / "out"), loaded.tokenizer)
    if strategy != "tied":
        want = expected_logits(logits, loaded.model.decoder.bias, RescaleSpec(8))
        torch.testing.assert_close(new, want, rtol=0, atol=1e-5)


def test_stats_dataclass_is_stored(tmp_path):
    @dataclass(frozen=True)
    class Stats:
        mean: float

    src = save_tiny("bert", tmp_path / "src")
    save_fixed(_load(src), RescaleSpec(2), tmp_path / "o", verify_texts=TEXTS,
               stats_before=Stats(1.5))
    assert json.loads((tmp_path / "o" / "headscope.json").read_text())["stats_before"] == {
        "mean": 1.5
    }


def test_progress_reports_bytes(tmp_path):
    src = save_tiny("bert", tmp_path / "src")
    seen = []
    result = save_fixed(_load(src), RescaleSpec(2), tmp_path / "o", verify_texts=TEXTS,
                        progress=lambda phase, done, total: seen.append((phase, done, total)))
    writes = [s for s in seen if s[0] == "write"]
    assert writes[-1][1] == writes[-1][2] == result.weight_bytes
    assert [s for s in seen if s[0] == "verify"] == [("verify", i, 3) for i in range(4)]
    shutil.rmtree(tmp_path / "o")


def test_copy_without_copy_file_range_is_identical(tmp_path, monkeypatch):
    import os

    src = save_tiny("bert", tmp_path / "src")
    loaded = _load(src)
    save_fixed(loaded, RescaleSpec(4), tmp_path / "kernel", verify_texts=TEXTS)
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    save_fixed(loaded, RescaleSpec(4), tmp_path / "buffered", verify_texts=TEXTS)
    assert (tmp_path / "kernel" / "model.safetensors").read_bytes() == (
        tmp_path / "buffered" / "model.safetensors").read_bytes()


def test_bfloat16_load_keeps_float32_files(tmp_path):
    src = save_tiny("bert", tmp_path / "src")
    loaded = checkpoint.load(checkpoint.resolve(str(src)), checkpoint.LoadOptions(dtype="bfloat16"))
    result = save_fixed(loaded, RescaleSpec(3), tmp_path / "o", verify_texts=TEXTS)
    dst, src_t = _stored(tmp_path / "o"), _stored(src)
    assert dst["cls.predictions.decoder.weight"].dtype == torch.float32
    assert torch.equal(dst["cls.predictions.decoder.weight"],
                       src_t["bert.embeddings.word_embeddings.weight"] / 3)
    v = result.verification
    assert 0 < v.logit_tolerance and v.max_abs_logit_error <= v.logit_tolerance


def test_head_passed_down_is_not_discovered_again(bert_tiny, tmp_path, monkeypatch):
    """With the caller's head, save_fixed discovers a head only in the model it reloaded."""
    from headscope import heads

    seen = []

    def counting(model, *args, **kwargs):
        seen.append(model)
        return heads.find_head(model, *args, **kwargs)

    monkeypatch.setattr(save, "find_head", counting)  # save_fixed's own discovery
    monkeypatch.setattr(verify, "find_head", counting)  # the reloaded model's
    head = heads.find_head(bert_tiny)
    result = save_fixed(bert_tiny, RescaleSpec(4, "untie"), tmp_path / "fixed",
                        verify_texts=TEXTS, head=head)
    assert result.verification.against == "reload"
    assert len(seen) == 1 and seen[0] is not bert_tiny and seen[0] is not bert_tiny.model
    seen.clear()
    save_fixed(bert_tiny, RescaleSpec(4, "untie"), tmp_path / "dry", verify_texts=TEXTS,
               dry_run=True)
    assert seen[0] is bert_tiny  # found here when not given


# --------------------------------------------------------------------------------------------
# the streaming write: source order, long copy runs, flushed before the rename


def _data_section(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return header, raw[8 + n:]


def test_unchanged_tensors_keep_the_source_layout_and_copy_in_one_run(tmp_path, monkeypatch):
    """untie of a tied BERT: every stored tensor is unchanged, so the written data section
    begins with the source's, byte for byte and at the same offsets, copied in one run; what
    the source does not store follows it: BERT's decoder bias, written explicitly (a second run:
    the bytes of cls.predictions.bias, which it aliases), and the untied decoder."""
    src = save_tiny("bert", tmp_path / "src")
    runs = []
    original = writer.copy_range

    def counting(file, begin, end, out, on_bytes):
        runs.append((Path(file).name, begin, end))
        return original(file, begin, end, out, on_bytes)

    monkeypatch.setattr(writer, "copy_range", counting)
    save_fixed(_load(src), RescaleSpec(4, "untie"), tmp_path / "o", verify_texts=TEXTS)
    src_header, src_data = _data_section(src / "model.safetensors")
    out_header, out_data = _data_section(tmp_path / "o" / "model.safetensors")
    assert out_data[:len(src_data)] == src_data
    for name, info in src_header.items():
        assert out_header[name]["data_offsets"] == info["data_offsets"], name
    added = sorted((i["data_offsets"], n) for n, i in out_header.items() if n not in src_header)
    assert [n for _, n in added] == ["cls.predictions.decoder.bias",
                                     "cls.predictions.decoder.weight"]
    assert added[0][0][0] == len(src_data) and added[1][0][0] == added[0][0][1]
    src_start = (src / "model.safetensors").stat().st_size - len(src_data)
    bias = src_header["cls.predictions.bias"]["data_offsets"]  # the decoder bias is its alias
    assert runs == [("model.safetensors", src_start, src_start + len(src_data)),
                    ("model.safetensors", src_start + bias[0], src_start + bias[1])]


def test_a_changed_tensor_splits_the_copy_runs_in_place(tmp_path, monkeypatch):
    """fold changes the head's LayerNorm: it is written from memory in its source slot, and the
    unchanged bytes on either side of it are copied in long runs."""
    src = save_tiny("bert", tmp_path / "src")
    runs = []
    original = writer.copy_range
    monkeypatch.setattr(writer, "copy_range", lambda file, begin, end, out, on_bytes: (
        runs.append((begin, end)), original(file, begin, end, out, on_bytes)))
    save_fixed(_load(src), RescaleSpec(4, "fold"), tmp_path / "o", verify_texts=TEXTS)
    src_header, src_data = _data_section(src / "model.safetensors")
    out_header, _ = _data_section(tmp_path / "o" / "model.safetensors")
    for name, info in src_header.items():
        assert out_header[name]["data_offsets"] == info["data_offsets"], name
    start = (src / "model.safetensors").stat().st_size - len(src_data)
    expected: list[tuple[int, int]] = []  # the unchanged ranges, merged where back to back
    for begin, end in sorted(i["data_offsets"] for n, i in src_header.items()
                             if not n.startswith("cls.predictions.transform.LayerNorm.")):
        if expected and expected[-1][1] == start + begin:
            expected[-1] = (expected[-1][0], start + end)
        else:
            expected.append((start + begin, start + end))
    bias = src_header["cls.predictions.bias"]["data_offsets"]  # the decoder bias, its alias
    assert runs == expected + [(start + bias[0], start + bias[1])]
    assert 2 <= len(expected) <= 3  # the LayerNorm's two tensors cut the data once or twice


def _entry(name: str, dtype: str, nbytes: int) -> plan.Entry:
    return plan.Entry(name, dtype, (nbytes,), nbytes)


def test_layout_keeps_an_aligned_order_and_sorts_a_misaligned_one():
    aligned = [_entry("b", "F32", 8), _entry("a", "F16", 2), _entry("c", "U8", 3)]
    assert [e.name for e in writer.layout(aligned)] == ["b", "a", "c"]
    # An odd-sized byte tensor first would put the float32 one at offset 3.
    misaligned = [_entry("z", "U8", 3), _entry("y", "F32", 4), _entry("x", "F16", 2)]
    assert [e.name for e in writer.layout(misaligned)] == ["y", "x", "z"]


def test_a_copy_that_fails_midway_finishes_through_the_buffer(tmp_path, monkeypatch):
    """copy_file_range refusing after a first chunk (as across some file systems): the rest is
    read and written, and the file is the same as a kernel copy."""
    import errno
    import os

    src = save_tiny("bert", tmp_path / "src")
    loaded = _load(src)
    save_fixed(loaded, RescaleSpec(4), tmp_path / "kernel", verify_texts=TEXTS)
    real = os.copy_file_range
    calls = []

    def flaky(src_fd, dst_fd, count, offset_src=None, *args):
        calls.append(count)
        if len(calls) > 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src_fd, dst_fd, min(count, 1000), offset_src, *args)

    monkeypatch.setattr(os, "copy_file_range", flaky)
    save_fixed(loaded, RescaleSpec(4), tmp_path / "mixed", verify_texts=TEXTS)
    assert len(calls) >= 2
    assert (tmp_path / "kernel" / "model.safetensors").read_bytes() == (
        tmp_path / "mixed" / "model.safetensors").read_bytes()


def test_every_written_file_is_flushed_before_the_rename(bert_tiny, tmp_path, monkeypatch):
    """The weight files are flushed on a thread, the small files with the folder: every file
    and the folder itself reach the disk before the folder is renamed into place."""
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    seen_at_install = []
    real_install = folder.install

    def install(tmp, out, overwrite):
        seen_at_install.extend(synced)
        files = {str(p) for p in tmp.rglob("*") if p.is_file()}
        assert files, "nothing to install"
        missing = files - set(seen_at_install)
        assert not missing, f"not flushed before the rename: {sorted(missing)}"
        assert str(tmp) in seen_at_install
        return real_install(tmp, out, overwrite)

    monkeypatch.setattr(folder, "install", install)
    save_fixed(bert_tiny, RescaleSpec(4), tmp_path / "o", verify_texts=TEXTS)
    assert seen_at_install

