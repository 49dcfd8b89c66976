"""The weights-only path without torch: safetensors headers and byte ranges read into numpy, the
vocabulary read with the `tokenizers` library, the CLI run with torch and transformers blocked
(statistics compared with the torch path's), several models in one call, and the torch-free
module list of docs/architecture.md checked against reality.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import tiny_models
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from headscope import api, heads, vocabulary
from headscope import checkpoint as ck
from headscope import report as report_mod
from headscope.cli import main
from headscope.errors import InputError, WeightFileError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The "last inspection" memory goes to a private cache; no pyproject.toml policy around."""
    cache = tmp_path / "headscope-cache"
    cache.mkdir()
    monkeypatch.setenv("HEADSCOPE_CACHE", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


def _folder_with(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> ck.Checkpoint:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    save_file(tensors, str(folder / "model.safetensors"))
    return ck.resolve(str(folder))


# --------------------------------------------------------------------------------------------
# tensors without torch


def test_read_arrays_matches_torch_for_every_dtype(tmp_path):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(7, 5, generator=gen) * 3
    tensors = {
        "f32": base,
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "f64": base.double(),
        "i64": torch.arange(12).reshape(3, 4),
        "u8": torch.arange(6, dtype=torch.uint8),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    resolved = _folder_with(tmp_path, tensors)
    infos = ck.tensor_infos(resolved)
    assert {n: (i.dtype, i.shape) for n, i in infos.items()} == {
        n: (str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in tensors.items()
    }
    got = ck.read_arrays(resolved, list(tensors))
    assert list(got) == list(tensors)
    for name, tensor in tensors.items():
        want = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        assert np.array_equal(got[name], want), name
    # bfloat16 widened bit-exactly: every value survives the round trip back to bfloat16.
    assert torch.equal(torch.from_numpy(got["bf16"].copy()).bfloat16(), tensors["bf16"])


def test_read_arrays_across_shards_and_from_bin(tmp_path):
    folder = tiny_models.save_tiny("bert", tmp_path / "m", max_shard_size="20KB")
    resolved = ck.resolve(str(folder))
    stored: dict[str, torch.Tensor] = {}
    for shard in resolved.weight_files:
        stored.update(load_file(str(shard)))
    assert set(ck.tensor_infos(resolved)) == set(stored)
    picked = ["cls.predictions.bias", "bert.embeddings.word_embeddings.weight",
              "bert.encoder.layer.1.output.dense.weight"]
    got = ck.read_arrays(resolved, picked)
    for name in picked:
        assert np.array_equal(got[name], stored[name].numpy()), name

    binary = ck.resolve(str(tiny_models.save_tiny_bin("roberta", tmp_path / "b", 2, False)))
    reference = tiny_models.build_tiny("roberta").state_dict()
    got = ck.read_arrays(binary, ["lm_head.dense.weight", "lm_head.bias"])
    for name, array in got.items():
        assert np.array_equal(array, reference[name].numpy()), name


def test_read_arrays_unknown_name(tiny_checkpoint):
    folder = str(tiny_checkpoint("bert"))
    with pytest.raises(InputError) as err:
        ck.read_arrays(ck.resolve(folder), ["cls.predictions.bias", "no.such.tensor"])
    assert str(err.value) == (
        f"Checkpoint {folder} stores no tensor named no.such.tensor; list the stored names with "
        "headscope.checkpoint.tensor_names()."
    )


def _write_raw(path: Path, header: bytes, body: bytes = b"", length: int | None = None) -> None:
    size = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + header + body)


def _damaged(path: Path, problem: str) -> str:
    """safety-read's refusal of a damaged safetensors file (checkpoint.read_safetensors_header,
    the one header parser, which `safetensors_header` and `tensor_infos` are views of)."""
    return (f"{path} is not a valid safetensors file: {problem}; re-download it, or convert the "
            "checkpoint again from a copy you trust.")


@pytest.mark.parametrize(("raw", "problem"), [
    (b"\x01\x02", "it holds 2 bytes, fewer than the 8 of a header length"),
    (struct.pack("<Q", 10_000) + b"{}",
     "its header length (10000 bytes) runs past the end of the 10-byte file"),
    (struct.pack("<Q", 4) + b"{{{{", "its header is not JSON (Expecting property name enclosed "
                                     "in double quotes: line 1 column 2 (char 1))"),
    (struct.pack("<Q", 2) + b"[]", "its header is not a JSON object"),
    # a header cut in the middle is not JSON either
    (struct.pack("<Q", 17) + b'{"w": {"dtype": 1',
     "its header is not JSON (Expecting ',' delimiter: line 1 column 18 (char 17))"),
])
def test_malformed_safetensors_headers(tmp_path, raw, problem):
    path = tmp_path / "model.safetensors"
    path.write_bytes(raw)
    with pytest.raises(WeightFileError) as err:
        ck.safetensors_header(path)
    assert str(err.value) == _damaged(path, problem)


def test_safetensors_entries_are_checked_against_the_file(tmp_path):
    path = tmp_path / "model.safetensors"

    def refused(entry: dict, body: bytes) -> str:
        _write_raw(path, json.dumps({"w": entry}).encode(), body)
        with pytest.raises(WeightFileError) as err:
            ck.safetensors_header(path)
        return str(err.value)

    assert refused({"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}, bytes(8)) == _damaged(
        path, "tensor 'w' (F32, shape [2]) needs 8 bytes but its data_offsets span 16")
    assert refused({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, bytes(8)) == _damaged(
        path, "tensor 'w' (F32, shape [3]) needs 12 bytes but its data_offsets span 8")
    assert refused({"dtype": "F32", "shape": [2]}, bytes(8)) == _damaged(
        path, "tensor 'w' has data_offsets None, not [begin, end] with begin <= end")
    # Bytes claimed past the end of the file: never memory-mapped.
    assert refused({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, bytes(4)) == _damaged(
        path, "its tensors need 8 bytes of data but the file holds 4 (truncated)")
    # A dtype numpy cannot hold is listed (under the one name headscope gives it: torch's, as
    # save writes it), and refused only when read.
    _write_raw(path, json.dumps({"w": {"dtype": "F8_E4M3", "shape": [4],
                                       "data_offsets": [0, 4]}}).encode(), bytes(4))
    info = ck.safetensors_header(path)["w"]
    assert (info.dtype, info.shape, info.end - info.start) == ("float8_e4m3fn", (4,), 4)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(InputError) as err:
        ck.read_arrays(ck.resolve(str(tmp_path)), ["w"])
    assert str(err.value) == (
        f"Tensor w in {path} has dtype float8_e4m3fn, which headscope cannot read without torch; "
        "supported: float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, bool."
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_read_head_of_a_half_precision_checkpoint(tmp_path, dtype):
    model = tiny_models.build_tiny("modernbert").to(getattr(torch, dtype))
    model.save_pretrained(str(tmp_path / "m"))
    stored = heads.read_head(ck.resolve(str(tmp_path / "m")))
    assert stored.dtype == dtype
    state = model.state_dict()
    for role, array in stored.arrays.items():
        want = state[stored.names[role]]
        assert np.array_equal(array, want.float().numpy() if dtype == "bfloat16"
                              else want.numpy()), role


# --------------------------------------------------------------------------------------------
# the vocabulary without transformers


def _same_vocabulary(folder: Path) -> ck.Vocabulary:
    """read_vocabulary agrees with the transformers tokenizer on every id and every special."""
    resolved = ck.resolve(str(folder))
    vocab = ck.read_vocabulary(resolved)
    tokenizer = ck.load_tokenizer(resolved)
    assert vocab is not None and tokenizer is not None
    assert len(vocab) == len(tokenizer)
    ids = list(range(len(tokenizer)))
    assert vocab.convert_ids_to_tokens(ids) == tokenizer.convert_ids_to_tokens(ids)
    assert sorted(set(vocab.all_special_ids)) == sorted(set(tokenizer.all_special_ids))
    n_rows = len(tokenizer) + 7
    ours, theirs = vocabulary.vocab_info(n_rows, vocab), vocabulary.vocab_info(n_rows, tokenizer)
    assert (ours.n_tokenizer, ours.special_ids, ours.special_tokens) == (
        theirs.n_tokenizer, theirs.special_ids, theirs.special_tokens)
    assert np.array_equal(ours.real_rows, theirs.real_rows)
    return vocab


def test_vocabulary_of_the_real_checkpoints(bert_tiny_dir, albert_dir):
    assert _same_vocabulary(bert_tiny_dir).file == "tokenizer.json"
    # The real ALBERT ships a BERT-style vocab.txt and an empty tokenizer_config.json.
    albert = _same_vocabulary(albert_dir)
    assert (albert.file, len(albert)) == ("vocab.txt", 591)


def test_vocabulary_of_the_tiny_tokenizer_and_its_variants(tmp_path):
    folder = tmp_path / "t"
    tiny_models.write_tokenizer(folder)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    assert _same_vocabulary(folder).file == "tokenizer.json"
    # Special tokens the vocabulary lacks are appended, named ones first, as transformers does.
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["mask_token"] = "[NEWMASK]"
    config["additional_special_tokens"] = ["[E1]", "a"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    vocab = _same_vocabulary(folder)
    assert (len(vocab), vocab.tokens[100:]) == (102, ("[NEWMASK]", "[E1]"))
    # vocab.txt alone (repeated tokens keep their last id, like BertTokenizer's reader).
    (folder / "tokenizer.json").unlink()
    assert _same_vocabulary(folder).file == "vocab.txt"
    lines = (folder / "vocab.txt").read_text().splitlines()
    (folder / "vocab.txt").write_text("\n".join(lines + ["w1", "extra"]) + "\n")
    assert len(_same_vocabulary(folder)) == 101 + 2  # [NEWMASK] and [E1] appended again


def test_vocabulary_falls_back_to_transformers_for_other_formats(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    folder = tmp_path / "bpe"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "roberta"}')
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "c", "ab", "abc", "<mask>"]
    bpe = BPE({t: i for i, t in enumerate(tokens)}, [("a", "b"), ("ab", "c")], unk_token="<unk>")
    Tokenizer(bpe).model.save(str(folder))  # vocab.json + merges.txt
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "RobertaTokenizer"}')
    assert _same_vocabulary(folder).file == "transformers"


def test_no_tokenizer_files_no_vocabulary(tmp_path):
    folder = tiny_models.save_tiny("bert", tmp_path / "m", with_tokenizer=False)
    assert ck.read_vocabulary(ck.resolve(str(folder))) is None


# --------------------------------------------------------------------------------------------
# the CLI with torch and transformers blocked, against the torch path


def _run_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a child where importing torch or transformers raises ImportError."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "from headscope.cli import main; main()")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _torch_path(folder: Path) -> tuple[dict, dict]:
    """Weight statistics and model facts through the loaded model (torch, transformers)."""
    loaded = ck.load(ck.resolve(str(folder)))
    head = heads.find_head(loaded)
    vocab = vocabulary.vocab_info(head.decoder_weight.shape[0], loaded.tokenizer)
    weights = report_mod.to_dict(api.inspecting.head_weight_stats(head, vocab))
    facts = {"family": head.layout.family, "n_rows": vocab.n_rows,
             "n_tokenizer": vocab.n_tokenizer, "hidden_size": head.decoder_weight.shape[1],
             "tied": head.tied, "special_tokens": list(vocab.special_tokens),
             "dtype": str(head.decoder_weight.dtype).removeprefix("torch.")}
    return weights, facts


def _assert_close(got, want, path="weights"):
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            _assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), path
    else:
        assert got == want, path


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory) -> Path:
    return tiny_models.save_tiny("modernbert", tmp_path_factory.mktemp("w") / "modernbert")


def test_inspect_and_check_weights_only_without_torch(bert_tiny_dir, modernbert_dir, tmp_path):
    models = [bert_tiny_dir, modernbert_dir]
    references = [_torch_path(m) for m in models]
    for model, (weights, facts) in zip(models, references, strict=True):
        run = _run_without_torch(["inspect", str(model), "--weights-only", "--json", "-"],
                                 tmp_path)
        assert run.returncode == 0, run.stderr
        payload = json.loads(run.stdout)
        _assert_close(payload["weights"], weights)
        assert {k: payload["model"][k] for k in facts} == facts
        assert payload["model"]["weights_only"] is True

    # One model over the row-norm limit, one under: exit 1, one line per model on stderr.
    means = [weights["row_norm_all"]["mean"] for weights, _ in references]
    limit = sum(means) / 2
    run = _run_without_torch(["check", "--weights-only", *map(str, models), "--max-row-norm",
                              str(limit), "--json", "-"], tmp_path)
    assert run.returncode == 1, run.stderr
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["source"] for r in results] == [str(m) for m in models]
    bigger = means[0] > limit
    assert [r["passed"] for r in results] == [not bigger, bigger]
    for result, (weights, _) in zip(results, references, strict=True):
        rule = next(r for r in result["rules"] if r["name"] == "max_row_norm")
        assert rule["measured"] == pytest.approx(weights["row_norm_all"]["mean"], rel=1e-9)
    verdict = {True: "PASS {}", False: "FAIL {} (max_row_norm)"}
    assert run.stderr.splitlines() == [verdict[r["passed"]].format(r["source"]) for r in results]


def test_bin_weights_without_torch_say_what_to_do(tmp_path):
    folder = tiny_models.save_tiny_bin("bert", tmp_path / "m")
    run = _run_without_torch(["inspect", str(folder), "--weights-only"], tmp_path)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr == (
        f"Error: {folder} stores its weights as pytorch_model.bin (a PyTorch pickle), which "
        "only torch can read; install torch, or convert the checkpoint to safetensors.\n")


def test_safety_refusals_hold_without_torch(tiny_checkpoint, tmp_path):
    """The torch-free weights-only path keeps the read-side refusals: a config.json that
    contradicts the stored head (checked by read_head on the header shapes) and a truncated
    safetensors file are each exit 2 and one line, with torch and transformers blocked."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("bert"), folder)
    config = json.loads((folder / "config.json").read_text())
    hidden = config["hidden_size"]
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": hidden + 8}))
    run = _run_without_torch(["inspect", str(folder), "--weights-only"], tmp_path)
    assert (run.returncode, run.stdout) == (2, "")
    emb = "bert.embeddings.word_embeddings.weight"
    rows = config["vocab_size"]
    assert run.stderr == (
        f"Error: {folder / 'config.json'} disagrees with the weights: tensor {emb} is stored "
        f"with shape {[rows, hidden]}, but config.json's hidden_size = {hidden + 8} makes it "
        f"{[rows, hidden + 8]}; make config.json match the stored tensors (or re-download "
        "both).\n")

    (folder / "config.json").write_text(json.dumps(config))
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as fh:
        fh.truncate(size - 4)
    run = _run_without_torch(["inspect", str(folder), "--weights-only"], tmp_path)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith(f"Error: {weights} is not a valid safetensors file: its tensors "
                                 "need ")
    assert run.stderr.endswith(f"but the file holds {size - 4 - 8 - _header_length(weights)} "
                               "(truncated); re-download it, or convert the checkpoint again "
                               "from a copy you trust.\n")


def _header_length(path: Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_config_without_model_type_without_transformers(tmp_path):
    """The model type then comes from the tensor names (transformers' class table is absent)."""
    folder = tiny_models.save_without_model_type("modernbert", tmp_path / "m",
                                                 keep_architectures=True)
    run = _run_without_torch(["inspect", str(folder), "--weights-only", "--json", "-"], tmp_path)
    assert run.returncode == 0, run.stderr
    model = json.loads(run.stdout)["model"]
    assert (model["model_type"], model["family"]) == ("modernbert", "modernbert")


# --------------------------------------------------------------------------------------------
# several models in one call


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_inspect_several_models_writes_json_lines(runner, bert_tiny_dir, modernbert_dir,
                                                  tmp_path):
    models = [str(bert_tiny_dir), str(modernbert_dir), str(bert_tiny_dir)]
    result = runner.invoke(main, ["inspect", "--weights-only", *models, "--json", "-"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    schema = json.loads((ROOT / "headscope" / "schema" / "report.schema.json").read_text())
    for line, model in zip(lines, models, strict=True):
        doc = json.loads(line)
        jsonschema.validate(doc, schema)
        alone = runner.invoke(main, ["inspect", "--weights-only", model, "--json", "-"])
        single = json.loads(alone.stdout)
        for d in (doc, single):
            d.pop("created")
            d.pop("content_sha256")  # it hashes the creation time too
        assert doc == single
    # To a file, the same lines; without --json, one table per model.
    out = tmp_path / "zoo.jsonl"
    result = runner.invoke(main, ["inspect", "--weights-only", *models[:2], "--json", str(out)])
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["model"]["source"] for line in out.read_text().splitlines()] == (
        models[:2])
    assert result.stdout.count("(weights only)") == 2


def test_several_models_name_every_bad_one_and_write_nothing(runner, bert_tiny_dir, tmp_path):
    headless = tiny_models.save_headless_bert(tmp_path / "headless")
    missing = tmp_path / "missing"
    for command in (["inspect"], ["check"]):
        result = runner.invoke(main, [*command, "--weights-only", str(bert_tiny_dir),
                                      str(missing), str(headless), "--json", "-"])
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"Error: {missing}: Checkpoint '{missing}' was not found (no such directory, and "
            "not a Hub id of the form org/name); pass a local directory or a Hub id that is in "
            "the Hugging Face cache.",
            f"Error: {headless}: {headless} has no trained MLM head: the checkpoint stores none "
            "of its bert head tensors (cls.predictions.bias, cls.predictions.transform.dense."
            "weight, cls.predictions.transform.dense.bias and 2 more), so transformers would "
            "initialise them at random; pass a checkpoint saved with its masked-LM head.",
        ]


@pytest.mark.parametrize("command", ["inspect", "check"])
def test_several_models_need_weights_only(runner, bert_tiny_dir, command):
    result = runner.invoke(main, [command, str(bert_tiny_dir), str(bert_tiny_dir)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "Error: 2 MODELs given without --weights-only; several models are inspected only from "
        "their weights (a full inspection loads each one and runs the probe): pass "
        "--weights-only, or inspect one MODEL at a time.\n")


def test_check_several_models_all_passing(runner, bert_tiny_dir, modernbert_dir):
    result = runner.invoke(main, ["check", "--weights-only", str(bert_tiny_dir),
                                  str(modernbert_dir)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [f"PASS {bert_tiny_dir}", f"PASS {modernbert_dir}"]
    assert result.stdout.count("headscope check: ") == 2


@pytest.mark.usefixtures("bands_default")
def test_one_answer_per_model_on_the_real_bert_tiny(runner, bert_tiny_dir):
    """The real BERT-tiny gets k = 1 from the weights-only form (paper rule) and k = 4 from the
    full inspection (bands rule, tests/test_recommend_real.py): a weights-only check must not
    pass `max_k = 1` when the full check fails it, so it refuses the key (exit 2) before
    reading any model; a key it can judge still passes."""
    result = runner.invoke(main, ["inspect", "--weights-only", "--json", "-", str(bert_tiny_dir)])
    assert result.exit_code == 0, result.stderr
    rec = json.loads(result.stdout)["recommendation"]
    assert (rec["rule"], rec["k"]) == ("paper", 1.0)
    result = runner.invoke(main, ["check", "--weights-only", str(bert_tiny_dir), "--max-k", "1"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "Error: --weights-only cannot judge max_k (max_k: the report is weights-only, and its "
        "paper rule (k from the decoder row norm alone) can differ from the k the full "
        "inspection recommends); drop --weights-only to measure them, or leave them out of the "
        "policy for this check.\n")
    result = runner.invoke(main, ["check", "--weights-only", str(bert_tiny_dir),
                                  "--max-row-norm", "1"])
    assert result.exit_code == 0, result.stderr
    # The paper rule asked for by name is still the stand-in while the bands are the default.
    result = runner.invoke(main, ["check", "--weights-only", "--rule", "paper",
                                  str(bert_tiny_dir), "--max-k", "1"])
    assert result.exit_code == 2 and result.stderr.startswith(
        "Error: --weights-only cannot judge max_k (max_k: the report is weights-only")


def _constant_verdict(monkeypatch):
    """The shipped evidence with a constant verdict (k = 16, bias kept), in process."""
    from headscope import calibrated

    data = dict(calibrated._data(), ships={"rule": "constant", "k": 16.0, "scale_bias": False},
                verdict="k = 16, bias kept")
    monkeypatch.setattr(calibrated, "_data", lambda: data)


def test_check_rule_paper_one_answer_weights_only_and_full(runner, bert_tiny_dir, monkeypatch):
    """Under a shipped verdict that is a constant, `check --rule paper` asks for the paper rule
    by name: the weights-only form reads the same row norm the full inspection does, so it
    judges max_k, and both forms give the real BERT-tiny (row norm 0.682, below 1.5) k = 1."""
    _constant_verdict(monkeypatch)
    checked = {}
    for form in (["--weights-only"], ["--n-pairs", "16"]):
        result = runner.invoke(main, ["check", *form, "--rule", "paper", str(bert_tiny_dir),
                                      "--max-k", "1", "--json", "-"])
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["passed"] and summary["k"] == 1.0
        checked[form[0]] = [(r["measured"], r["passed"]) for r in summary["rules"]
                            if r["name"] == "max_k"]
    assert checked["--weights-only"] == checked["--n-pairs"] == [(1.0, True)]
    # Under the default rule (the shipped k = 16, bias kept) the same policy fails, both forms.
    result = runner.invoke(main, ["check", "--weights-only", str(bert_tiny_dir), "--max-k", "1"])
    assert result.exit_code == 1, result.stderr


def test_check_rule_refusals(runner, bert_tiny_dir, tmp_path, monkeypatch):
    _constant_verdict(monkeypatch)
    result = runner.invoke(main, ["check", "--weights-only", "--rule", "bands",
                                  str(bert_tiny_dir), "--max-row-norm", "1"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "Error: --rule bands has no effect with --weights-only, which runs no probe and "
        "recommends k by the shipped rule from the weights; drop it, or drop --weights-only to "
        "run the probe.\n")
    saved = tmp_path / "r.json"
    result = runner.invoke(main, ["inspect", "--weights-only", str(bert_tiny_dir), "--json",
                                  str(saved)])
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(main, ["check", "--report", str(saved), "--rule", "paper",
                                  "--max-row-norm", "1"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        "Error: --rule paper has no effect with --report, whose recommendation was made by the "
        "rule recorded in the report; drop --rule, or check the model itself (headscope check "
        "MODEL --rule paper).\n")
    result = runner.invoke(main, ["check", "--rule", "reference", str(bert_tiny_dir)])
    assert result.exit_code == 2 and "'reference' is not one of 'shipped', 'bands', 'paper'" \
        in result.stderr
    # The weights-only report of the shipped constant is judged on max_k from its file too.
    result = runner.invoke(main, ["check", "--report", str(saved), "--max-k", "16", "--json",
                                  "-"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["k"] == 16.0


# --------------------------------------------------------------------------------------------
# the torch-free module list of docs/architecture.md


def _architecture_torch_column() -> dict[str, str]:
    """Module -> its "imports torch?" cell, from the layer table of docs/architecture.md."""
    from test_architecture import torch_column

    return torch_column()


def test_torch_free_modules_of_the_architecture_import_without_torch():
    column = _architecture_torch_column()
    assert {"checkpoint", "heads", "stats", "cli", "api"} <= set(column)
    torch_free = sorted(m for m, cell in column.items()
                        if cell.startswith("no") or "lazily" in cell)
    assert {"errors", "stats", "report", "checkpoint", "heads", "api", "cli"} <= set(torch_free)
    code = ("import importlib, json, sys\n"
            "sys.modules['torch'] = None\nsys.modules['transformers'] = None\n"
            f"for m in {torch_free!r}:\n    importlib.import_module('headscope.' + m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'matplotlib') and sys.modules[m] is not None)))\n")
    from test_architecture import run_json

    assert run_json(code) == []
    # The cells say which readers stay torch-free; the test above runs them end to end.
    assert "read_head" in column["heads"] and "read_arrays" in column["checkpoint"]


def test_weights_only_imports_neither_torch_nor_transformers(tmp_path, modernbert_dir):
    """In a normal environment (torch installed), the weights-only CLI still never imports it."""
    model = tmp_path / "m"
    shutil.copytree(modernbert_dir, model)
    code = ("import json, sys, contextlib, io\nfrom headscope.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
            f"    main([{'inspect'!r}, {str(model)!r}, '--weights-only', '--json', '-'])\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'matplotlib', 'scipy'))))\n")
    from test_architecture import run_json

    assert run_json(code, cwd=tmp_path) == []


def test_weights_only_inspect_imports_only_what_it_uses(tmp_path, modernbert_dir):
    """The CLI imports each command's modules when it runs: a weights-only `inspect --json -`
    imports neither rich (nothing is drawn), nor the policy, training, demo or rendering
    modules (the flags of `check`, `confirm` and `sweep` take their defaults from them), and a
    table still comes out when asked for."""
    code = ("import json, sys, contextlib, io\nfrom headscope.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
            f"    main(['inspect', {str(modernbert_dir)!r}, '--weights-only', '--json', '-'])\n"
            "json.loads(out.getvalue())\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'rich' or m in "
            "('headscope.guard', 'headscope.api.training', 'headscope.api.demonstration', "
            "'headscope.api.summaries', 'headscope.render', 'tomllib'))))\n")
    from test_architecture import run_json

    assert run_json(code, cwd=tmp_path) == []


def test_commands_built_on_first_use_are_the_same_commands(runner):
    """`check`, `confirm` and `sweep` are built when first used (a lazy click group); the group
    lists every command in the order they are defined, and each lazily built one is built once."""
    from headscope.cli import commands
    from headscope.cli import main as group

    names = ["inspect", "fix", "demo", "compare", "report", "confirm", "sweep", "check"]
    assert group.defined() == names and group.list_commands(None) == sorted(names)  # type: ignore
    check = group.get_command(None, "check")  # type: ignore[arg-type]
    assert check is not None and group.get_command(None, "check") is check  # type: ignore[arg-type]
    assert commands()["check"] is check and list(commands()) == names
    assert check.name == "check" and "--max-row-norm" in {o for p in check.params for o in p.opts}
    assert group.get_command(None, "nothing") is None  # type: ignore[arg-type]
    listing = runner.invoke(group, ["--help"]).stdout
    for name in names:
        assert f"  {name} " in listing
    result = runner.invoke(group, ["chek"])
    assert result.exit_code == 2
    assert "Did you mean 'check'?" in result.stderr


def test_api_names_resolve_lazily_and_demo_stays_the_verb():
    """headscope.api imports each submodule on first use of one of its names; loading the
    submodule `api.demonstration` first leaves `api.demo` the verb."""
    code = ("import json, sys\nimport headscope.api.demonstration\nfrom headscope import api\n"
            "from headscope.api.demonstration import demo\n"
            "first = sorted(m for m in sys.modules if m.startswith('headscope.api.'))\n"
            "ok = [api.demo is demo, callable(api.demo), api.FixOptions.__module__,\n"
            "      api.ArmSummary.__module__]\n"
            "try:\n    api.nothing\nexcept AttributeError as e:\n    ok.append(str(e))\n"
            "print(json.dumps([first, ok]))\n")
    from test_architecture import run_json

    first, ok = run_json(code)
    assert "headscope.api.summaries" not in first
    assert ok == [True, True, "headscope.api.fixing", "headscope.api.training",
                  "module 'headscope.api' has no attribute 'nothing'"]


def test_api_check_of_a_saved_report_refuses_another_rule(tmp_path, bert_tiny_dir):
    """The API says what the CLI says: a rule asked of a saved report is refused, not ignored
    (the report's k was made by the rule it records)."""
    saved = tmp_path / "r.json"
    report_mod.write_json(api.inspect(str(bert_tiny_dir),
                                      options=api.InspectOptions(weights_only=True)), saved)
    with pytest.raises(InputError) as err:
        api.check(report_path=str(saved), overrides={"max_row_norm": 1.0},
                  options=api.InspectOptions(rule="paper"))
    assert str(err.value) == (
        "--rule paper has no effect with --report, whose recommendation was made by the rule "
        "recorded in the report; drop --rule, or check the model itself (headscope check MODEL "
        "--rule paper).")
    checked = api.check(report_path=str(saved), overrides={"max_row_norm": 1.0})
    assert checked.report.model.source == str(bert_tiny_dir)
