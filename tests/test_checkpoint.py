"""headscope.checkpoint: resolving sources, reading tensors, loading masked LMs.

Tiny checkpoints are built from configs (tests/tiny_models.py); the Hub path is exercised with a
hand-built cache folder, never the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_models
import torch
from safetensors.torch import load_file, save_file

from headscope import checkpoint as ck
from headscope import hub
from headscope.checkpoint import Checkpoint, LoadOptions
from headscope.errors import (
    CheckpointNotFoundError,
    InputError,
    NotCachedError,
    UnsupportedModelError,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _assert_state_equal(model, reference) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


# --------------------------------------------------------------------------------------------
# local folders


def test_resolve_local_folder(tiny_checkpoint):
    folder = tiny_checkpoint("bert")
    got = ck.resolve(str(folder))
    assert got == Checkpoint(
        source=str(folder),
        path=folder.resolve(),
        revision=None,
        model_type="bert",
        config=json.loads((folder / "config.json").read_text()),
        weight_files=(folder.resolve() / "model.safetensors",),
        weight_format="safetensors",
    )


def test_missing_path_is_refused(tmp_path):
    source = str(tmp_path / "no-such-model")
    with pytest.raises(CheckpointNotFoundError) as err:
        ck.resolve(source)
    assert str(err.value) == (
        f"Checkpoint {source!r} was not found (no such directory, and not a Hub id of the form "
        "org/name); pass a local directory or a Hub id that is in the Hugging Face cache."
    )


def test_file_instead_of_folder_is_refused(tiny_checkpoint):
    source = str(tiny_checkpoint("bert") / "model.safetensors")
    with pytest.raises(CheckpointNotFoundError) as err:
        ck.resolve(source)
    assert str(err.value) == (
        f"Checkpoint {source!r} was not found (it is a file; pass the folder that holds "
        "config.json); pass a local directory or a Hub id that is in the Hugging Face cache."
    )


def test_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointNotFoundError) as err:
        ck.resolve(str(tmp_path))
    assert str(err.value) == (
        f"Checkpoint {str(tmp_path)!r} was not found ({tmp_path.resolve()} holds no "
        "model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
        "pytorch_model.bin.index.json); pass a local directory or a Hub id that is in the "
        "Hugging Face cache."
    )


def test_revision_with_local_folder_is_refused(tiny_checkpoint):
    folder = str(tiny_checkpoint("bert"))
    with pytest.raises(InputError) as err:
        ck.resolve(folder, revision="main")
    assert str(err.value) == (
        f"A revision ('main') applies only to Hub ids, but {folder} is a local directory; drop "
        "the revision or pass a Hub id."
    )


def test_load_tiny_model_matches_reference(tiny_checkpoint):
    loaded = ck.load(ck.resolve(str(tiny_checkpoint("bert"))))
    assert type(loaded.model).__name__ == "BertForMaskedLM"
    assert not loaded.model.training
    assert loaded.missing_keys == frozenset()
    assert loaded.options == LoadOptions()
    assert len(loaded.tokenizer) == tiny_models.N_TOKENS
    _assert_state_equal(loaded.model, tiny_models.build_tiny("bert"))


def test_missing_keys_come_from_transformers(tmp_path):
    folder = tiny_models.save_headless_bert(tmp_path / "headless")
    loaded = ck.load(ck.resolve(str(folder)))
    assert {
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
    } <= loaded.missing_keys
    assert not any(k.startswith("bert.") for k in loaded.missing_keys)


def test_tokenizer_is_none_without_tokenizer_files(tmp_path):
    folder = tiny_models.save_tiny("bert", tmp_path / "m", with_tokenizer=False)
    loaded = ck.load(ck.resolve(str(folder)))
    assert loaded.tokenizer is None


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype(tiny_checkpoint, dtype):
    loaded = ck.load(ck.resolve(str(tiny_checkpoint("bert"))), LoadOptions(dtype=dtype))
    want = getattr(torch, dtype)
    assert {p.dtype for p in loaded.model.parameters()} == {want}
    ref = tiny_models.build_tiny("bert").state_dict()["bert.embeddings.word_embeddings.weight"]
    got = loaded.model.get_input_embeddings().weight
    assert torch.equal(got, ref.to(want))


def test_bad_dtype_and_device(tiny_checkpoint):
    resolved = ck.resolve(str(tiny_checkpoint("bert")))
    with pytest.raises(InputError) as err:
        ck.load(resolved, LoadOptions(dtype="int8"))
    assert str(err.value) == "Unknown dtype 'int8'; choose one of float32, bfloat16, float16."
    with pytest.raises(InputError) as err:
        ck.load(resolved, LoadOptions(device="tpu:0"))
    assert str(err.value) == "Unknown device 'tpu:0'; use cpu, cuda, cuda:N or mps."


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(tiny_checkpoint):
    resolved = ck.resolve(str(tiny_checkpoint("bert")))
    with pytest.raises(InputError) as err:
        ck.load(resolved, LoadOptions(device="cuda"))
    assert str(err.value) == "Device 'cuda' is not available (no CUDA GPU); use --device cpu."


# --------------------------------------------------------------------------------------------
# weight formats


def test_sharded_safetensors(tmp_path):
    folder = tiny_models.save_tiny("bert", tmp_path / "m", max_shard_size="20KB")
    resolved = ck.resolve(str(folder))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    assert resolved.weight_format == "safetensors"
    assert resolved.weight_files == tuple(folder.resolve() / s for s in shards)

    # Reference: every tensor of every shard, read with safetensors directly.
    stored: dict[str, torch.Tensor] = {}
    for shard in shards:
        stored.update(load_file(str(folder / shard)))
    assert sorted(ck.tensor_names(resolved)) == sorted(stored)
    picked = [
        "cls.predictions.bias",
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.1.output.dense.weight",
    ]
    assert len({index["weight_map"][n] for n in picked}) > 1  # spans shards
    got = ck.read_tensors(resolved, picked)
    assert list(got) == picked
    for name in picked:
        assert torch.equal(got[name], stored[name])

    loaded = ck.load(resolved)
    _assert_state_equal(loaded.model, tiny_models.build_tiny("bert"))


@pytest.mark.parametrize(("shards", "legacy_format"), [(1, True), (3, False)])
def test_bin_weights(tmp_path, shards, legacy_format):
    folder = tiny_models.save_tiny_bin("roberta", tmp_path / "m", shards, legacy_format)
    resolved = ck.resolve(str(folder))
    assert resolved.weight_format == "bin"
    if shards == 1:
        assert resolved.weight_files == (folder.resolve() / "pytorch_model.bin",)
    else:
        assert resolved.weight_files == tuple(
            folder.resolve() / f"pytorch_model-{i:05d}-of-00003.bin" for i in (1, 2, 3)
        )
    reference = tiny_models.build_tiny("roberta").state_dict()
    assert sorted(ck.tensor_names(resolved)) == sorted(reference)
    picked = ["lm_head.dense.weight", "roberta.embeddings.word_embeddings.weight"]
    got = ck.read_tensors(resolved, picked)
    assert list(got) == picked
    for name in picked:
        assert torch.equal(got[name], reference[name])
    loaded = ck.load(resolved)
    _assert_state_equal(loaded.model, tiny_models.build_tiny("roberta"))


def test_read_tensors_reads_only_the_named(tiny_checkpoint):
    resolved = ck.resolve(str(tiny_checkpoint("modernbert")))
    got = ck.read_tensors(resolved, ["head.norm.weight"])
    assert list(got) == ["head.norm.weight"]
    want = tiny_models.build_tiny("modernbert").state_dict()["head.norm.weight"]
    assert torch.equal(got["head.norm.weight"], want)


def test_read_tensors_unknown_name(tiny_checkpoint):
    folder = str(tiny_checkpoint("bert"))
    with pytest.raises(InputError) as err:
        ck.read_tensors(ck.resolve(folder), ["cls.predictions.bias", "no.such.tensor"])
    assert str(err.value) == (
        f"Checkpoint {folder} stores no tensor named no.such.tensor; list the stored names with "
        "headscope.checkpoint.tensor_names()."
    )


# --------------------------------------------------------------------------------------------
# model_type inference and unsupported models


def _drop_from_config(folder: Path, *keys: str) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for key in keys:
        cfg.pop(key, None)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_model_type_from_architectures(tmp_path):
    folder = tiny_models.save_tiny("bert", tmp_path / "m")
    _drop_from_config(folder, "model_type")
    resolved = ck.resolve(str(folder))
    assert resolved.model_type == "bert"
    assert resolved.config["model_type"] == "bert"
    assert "model_type" not in json.loads((folder / "config.json").read_text())
    loaded = ck.load(resolved)
    assert type(loaded.model).__name__ == "BertForMaskedLM"
    _assert_state_equal(loaded.model, tiny_models.build_tiny("bert"))


@pytest.mark.parametrize(
    ("family", "want", "cls"),
    [
        ("modernbert", "modernbert", "ModernBertForMaskedLM"),
        ("distilbert", "distilbert", "DistilBertForMaskedLM"),
    ],
)
def test_model_type_from_tensor_names(tmp_path, family, want, cls):
    folder = tiny_models.save_tiny(family, tmp_path / "m")
    _drop_from_config(folder, "model_type", "architectures")
    resolved = ck.resolve(str(folder))
    assert resolved.model_type == want
    loaded = ck.load(resolved)
    assert type(loaded.model).__name__ == cls
    # The config class of the inferred type read the file: sizes come from config.json.
    assert loaded.model.config.vocab_size == tiny_models.build_tiny(family).config.vocab_size
    _assert_state_equal(loaded.model, tiny_models.build_tiny(family))


def test_model_type_undeterminable(tmp_path):
    save_file({"foo.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"hidden_size": 2}')
    with pytest.raises(UnsupportedModelError) as err:
        ck.resolve(str(tmp_path))
    assert str(err.value) == (
        f"Cannot tell the model type of {tmp_path}: {tmp_path.resolve() / 'config.json'} has no "
        '"model_type", its "architectures" name no class transformers knows, and its tensor '
        'names match no known family; add "model_type" (e.g. "bert") to config.json.'
    )


def test_model_type_without_masked_lm_class(tmp_path):
    import transformers

    save_file({"wte.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_embd": 2}')
    resolved = ck.resolve(str(tmp_path))
    with pytest.raises(UnsupportedModelError) as err:
        ck.load(resolved)
    assert str(err.value) == (
        f"model_type 'gpt2' of {tmp_path} has no masked-LM class in transformers "
        f"{transformers.__version__} (AutoModelForMaskedLM); headscope needs an encoder with an "
        "MLM head."
    )


# --------------------------------------------------------------------------------------------
# Hub ids and the cache


def _fake_cache(root: Path, repo_id: str, source: Path, branches: dict[str, str]) -> Path:
    """Lay out `source`'s files as huggingface_hub caches them; returns the repo folder."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    for branch, commit in branches.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
        snapshot = repo / "snapshots" / commit
        if not snapshot.exists():
            shutil.copytree(source, snapshot)
    return repo


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """A clean Hugging Face environment rooted in tmp: offline, empty cache."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return monkeypatch


def test_hub_id_from_cache(hub_env, tmp_path, tiny_checkpoint):
    cache = tmp_path / "hub"
    _fake_cache(
        cache, "acme/tiny-bert", tiny_checkpoint("bert"), {"main": COMMIT, "dev": OTHER_COMMIT}
    )
    hub_env.setenv("HF_HUB_CACHE", str(cache))

    resolved = ck.resolve("acme/tiny-bert")
    snapshot = cache / "models--acme--tiny-bert" / "snapshots" / COMMIT
    assert resolved.source == "acme/tiny-bert"
    assert resolved.path == snapshot
    assert resolved.revision == COMMIT
    assert resolved.weight_files == (snapshot / "model.safetensors",)
    assert resolved.model_type == "bert"

    assert ck.resolve("acme/tiny-bert", revision="dev").revision == OTHER_COMMIT
    by_hash = ck.resolve("acme/tiny-bert", revision=OTHER_COMMIT)
    assert by_hash.path == cache / "models--acme--tiny-bert" / "snapshots" / OTHER_COMMIT

    loaded = ck.load(resolved)
    _assert_state_equal(loaded.model, tiny_models.build_tiny("bert"))
    assert len(loaded.tokenizer) == tiny_models.N_TOKENS


def test_hub_cache_under_hf_home(hub_env, tmp_path, tiny_checkpoint):
    _fake_cache(
        tmp_path / "home" / "hub", "acme/tiny-mb", tiny_checkpoint("modernbert"), {"main": COMMIT}
    )
    hub_env.setenv("HF_HOME", str(tmp_path / "home"))
    assert ck.resolve("acme/tiny-mb").path == (
        tmp_path / "home" / "hub" / "models--acme--tiny-mb" / "snapshots" / COMMIT
    )


def test_hub_id_not_cached_offline(hub_env, tmp_path):
    hub_env.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))

    def no_network(*args, **kwargs):
        raise AssertionError("offline mode must not reach for the network")

    hub_env.setattr(hub, "download_snapshot", no_network)
    with pytest.raises(NotCachedError) as err:
        ck.resolve("acme/absent", revision="v2")
    assert str(err.value) == (
        "Model 'acme/absent' at revision 'v2' is not in the Hugging Face cache and the Hub "
        "cannot be reached; download it where the network is available (hf download "
        "acme/absent --revision v2) or pass a local directory."
    )


def test_hub_id_network_failure(hub_env, tmp_path):
    hub_env.delenv("HF_HUB_OFFLINE")
    hub_env.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    calls = []

    def unreachable(repo_id, revision, has_weights):
        calls.append((repo_id, revision))
        raise ConnectionError("no route to host")

    hub_env.setattr(hub, "download_snapshot", unreachable)
    with pytest.raises(NotCachedError) as err:
        ck.resolve("acme/absent")
    assert calls == [("acme/absent", None)]
    assert str(err.value) == (
        "Model 'acme/absent' is not in the Hugging Face cache and the Hub cannot be reached; "
        "download it where the network is available (hf download acme/absent) or "
        "pass a local directory."
    )


def test_cache_is_tried_before_network(hub_env, tmp_path, tiny_checkpoint):
    hub_env.delenv("HF_HUB_OFFLINE")
    cache = tmp_path / "hub"
    _fake_cache(cache, "acme/tiny-bert", tiny_checkpoint("bert"), {"main": COMMIT})
    hub_env.setenv("HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("a cached snapshot must not trigger a download")

    hub_env.setattr(hub, "download_snapshot", no_network)
    assert ck.resolve("acme/tiny-bert").revision == COMMIT


def test_hub_id_shape():
    assert hub.looks_like_hub_id("answerdotai/ModernBERT-base")
    assert hub.looks_like_hub_id("naver/splade_v2.max")
    for not_id in ("bert-base-uncased", "./x/y", "a/b/c", "../up", "/abs/path", "a/.."):
        assert not hub.looks_like_hub_id(not_id), not_id


# --------------------------------------------------------------------------------------------
# real checkpoints


def test_real_bert_tiny(bert_tiny_dir):
    resolved = ck.resolve(str(bert_tiny_dir))
    assert resolved.model_type == "bert"
    assert resolved.weight_format == "safetensors"
    names = ck.tensor_names(resolved)
    # Legacy LayerNorm names in the file; transformers maps them on load.
    assert "cls.predictions.transform.LayerNorm.gamma" in names
    assert "cls.predictions.transform.LayerNorm.weight" not in names
    loaded = ck.load(resolved)
    assert loaded.missing_keys == frozenset()
    stored = ck.read_tensors(
        resolved,
        ["cls.predictions.transform.LayerNorm.gamma", "cls.predictions.transform.LayerNorm.beta"],
    )
    head_norm = loaded.model.cls.predictions.transform.LayerNorm
    assert torch.equal(head_norm.weight, stored["cls.predictions.transform.LayerNorm.gamma"])
    assert torch.equal(head_norm.bias, stored["cls.predictions.transform.LayerNorm.beta"])
    assert len(loaded.tokenizer) == 30522


def test_real_albert_legacy_bin(albert_dir):
    resolved = ck.resolve(str(albert_dir))
    assert resolved.weight_format == "bin"
    assert resolved.weight_files == (albert_dir.resolve() / "pytorch_model.bin",)
    names = ck.tensor_names(resolved)
    assert {"albert.pooler.weight", "predictions.decoder.weight"} <= set(names)
    got = ck.read_tensors(resolved, ["predictions.decoder.weight", "predictions.bias"])
    assert tuple(got["predictions.decoder.weight"].shape) == (591, 128)
    assert got["predictions.decoder.weight"].device.type == "cpu"  # stored on CUDA
    loaded = ck.load(resolved)
    assert type(loaded.model).__name__ == "AlbertForMaskedLM"
    assert loaded.missing_keys == frozenset()  # the pooler keys are unexpected, not missing
    assert torch.equal(loaded.model.predictions.decoder.weight, got["predictions.decoder.weight"])
    # The folder's tokenizer_config.json is empty and there is no sentencepiece model:
    # AutoTokenizer alone would give 5 special tokens; vocab.txt holds the real 591.
    assert len(loaded.tokenizer) == 591
    assert loaded.tokenizer.convert_ids_to_tokens([16, 17]) == ["C", "("]
    # SMILES are cased ("c" aromatic, "C" aliphatic): the fallback keeps case.
    assert loaded.tokenizer.tokenize("C ( c") == ["C", "(", "c"]


def test_token_limit_caps_at_the_position_table():
    from types import SimpleNamespace

    from headscope.checkpoint import token_limit

    bert = SimpleNamespace(model_type="bert", max_position_embeddings=64, pad_token_id=0)
    assert token_limit(bert, 128) == 64
    assert token_limit(bert, 32) == 32
    # RoBERTa's positions start after the padding index: 514 - (1 + 1) = 512 usable tokens.
    roberta = SimpleNamespace(model_type="roberta", max_position_embeddings=514, pad_token_id=1)
    assert token_limit(roberta, 1024) == 512
    assert token_limit(SimpleNamespace(model_type="x"), 77) == 77  # no table: unchanged


def test_tokenizer_of_a_config_without_model_type_follows_the_inferred_family(tmp_path):
    # Only vocab.txt: AutoTokenizer cannot tell the tokenizer class without the config's
    # model_type and used to fail with "install sentencepiece"; the tensor names say BERT.
    folder = tiny_models.save_tiny("bert", tmp_path / "m")
    _drop_from_config(folder, "model_type", "architectures")
    for name in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    resolved = ck.resolve(str(folder))
    assert resolved.model_type == "bert"
    tokenizer = ck.load_tokenizer(resolved)
    assert len(tokenizer) == tiny_models.N_TOKENS
    assert tokenizer.unk_token == "[UNK]" and tokenizer.cls_token == "[CLS]"
    reference = ck.load_tokenizer(ck.resolve(str(tiny_models.save_tiny("bert", tmp_path / "r"))))
    text = " ".join(tiny_models.vocab_tokens()[-6:]) + " unseenword"
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    loaded = ck.load(resolved)
    assert type(loaded.model).__name__ == "BertForMaskedLM"
    assert loaded.tokenizer is not None and len(loaded.tokenizer) == tiny_models.N_TOKENS
