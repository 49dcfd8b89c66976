"""Hostile and damaged input on the read side: every one is refused with exit 2 and one
`Error:` line naming the file (and the tensor, field or index entry) at fault, before anything
reads what it should not, and nothing is written.

Checkpoints are copies of the tiny BERT of tests/tiny_models.py, edited byte by byte; the
commands run in-process through click's CliRunner.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import click
import pytest
import tiny_models
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from headscope import api, safetensors_file
from headscope import checkpoint as ck
from headscope.cli import commands, main
from headscope.recommend import weights_only_rule

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private HEADSCOPE_CACHE, transformers module cache and working directory, so that
    "nothing written" can be checked by listing them."""
    for name in ("cache", "modules", "work"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


@pytest.fixture
def bert(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny BERT checkpoint, free to damage."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("bert"), folder)
    return folder


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"")
            for p in sorted(path.rglob("*"))}


def invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def assert_refused(result, message: str | None = None, *, contains: str | None = None) -> None:
    """Exit 2, nothing on stdout, one `Error:` line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.endswith("\n")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    if message is not None:
        assert result.stderr == f"Error: {message}\n"
    if contains is not None:
        assert contains in result.stderr, result.stderr


def assert_nothing_written(isolated: Path) -> None:
    assert tree(isolated / "cache") == {}
    assert tree(isolated / "work") == {}


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_with_header(path: Path, header: dict | bytes, data: bytes) -> None:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)


def set_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def shard(folder: Path, index_name: str = ck.SAFETENSORS_INDEX,
          shard_name: str = "model-00001-of-00001.safetensors") -> list[str]:
    """Turn the single weight file into a one-shard indexed checkpoint; the tensor names."""
    (folder / "model.safetensors").rename(folder / shard_name)
    names = list(load_file(str(folder / shard_name)))
    write_index(folder, {n: shard_name for n in names}, index_name)
    return names


def write_index(folder: Path, weight_map, index_name: str = ck.SAFETENSORS_INDEX) -> None:
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _escape(folder: Path) -> str:
    return (f"; headscope reads weights only from inside the checkpoint folder {folder}: "
            "refusing it (repair the checkpoint or re-download it).")


# --------------------------------------------------------------------------------------------
# item 3: every weight file named by an index lies inside the checkpoint folder


@pytest.fixture
def other(tiny_checkpoint, tmp_path) -> Path:
    """Another checkpoint beside the one under test (a file an index must not reach)."""
    folder = tmp_path / "other"
    shutil.copytree(tiny_checkpoint("bert"), folder)
    return folder


ESCAPES = {
    "parent": ("../other/model.safetensors", "climbs out of the folder with '..'"),
    "inner parent": ("sub/../../other/model.safetensors", "climbs out of the folder with '..'"),
    "absolute": ("{other}/model.safetensors", "is an absolute path"),
    "etc passwd": ("/etc/passwd", "is an absolute path"),
    "empty": ("", "is not a file name"),
    "nul byte": ("model\x00.safetensors", "is not a file name"),
}


@pytest.mark.parametrize("index_name", [ck.SAFETENSORS_INDEX, ck.BIN_INDEX])
@pytest.mark.parametrize("case", list(ESCAPES))
@pytest.mark.parametrize("weights_only", [True, False])
def test_index_entry_outside_the_folder_is_refused(bert, other, isolated, case, index_name,
                                                   weights_only):
    entry, reason = ESCAPES[case]
    entry = entry.format(other=other)
    names = shard(bert)
    if index_name == ck.BIN_INDEX:
        (bert / ck.SAFETENSORS_INDEX).unlink()
    weight_map = {n: "model-00001-of-00001.safetensors" for n in names}
    weight_map[names[3]] = entry  # one bad entry among good ones
    write_index(bert, weight_map, index_name)
    before = tree(bert)
    result = invoke(["inspect", str(bert)] + (["--weights-only"] if weights_only else []))
    assert_refused(result, f"{bert / index_name} maps {names[3]!r} to {entry!r}, which "
                   f"{reason}{_escape(bert)}")
    assert tree(bert) == before
    assert_nothing_written(isolated)


def test_index_entry_through_a_symlink_out_of_the_folder_is_refused(bert, other, isolated):
    names = shard(bert)
    (bert / "elsewhere").symlink_to(other, target_is_directory=True)
    write_index(bert, {n: "elsewhere/model.safetensors" for n in names})
    result = invoke(["inspect", str(bert), "--weights-only"])
    target = (other / "model.safetensors").resolve()
    assert_refused(result, f"{bert / ck.SAFETENSORS_INDEX} maps {names[0]!r} to "
                   f"'elsewhere/model.safetensors', which resolves to {target}, outside the "
                   f"checkpoint folder{_escape(bert)}")
    assert_nothing_written(isolated)


@pytest.mark.parametrize("single", [ck.SAFETENSORS_SINGLE, ck.BIN_SINGLE])
def test_single_weight_file_linked_out_of_the_folder_is_refused(bert, other, isolated, single):
    (bert / "model.safetensors").unlink()
    (bert / single).symlink_to(other / "model.safetensors")
    result = invoke(["inspect", str(bert), "--weights-only"])
    target = (other / "model.safetensors").resolve()
    assert_refused(result, f"{bert / single} resolves to {target}, outside the checkpoint "
                   f"folder{_escape(bert)}")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json",
                                  "special_tokens_map.json"])
@pytest.mark.parametrize("weights_only", [True, False])
def test_config_or_tokenizer_linked_out_of_the_folder_is_refused(bert, tmp_path, isolated, name,
                                                                 weights_only):
    """A config or tokenizer file that is a link out of the checkpoint is never read (its
    content could land in a report or in fix's config.json), like a weight file."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"model_type": "bert", "token": "do-not-read"}')
    if (bert / name).exists():
        (bert / name).unlink()
    (bert / name).symlink_to(secret)
    before = tree(bert)
    result = invoke(["inspect", str(bert)] + (["--weights-only"] if weights_only else []))
    assert_refused(result, f"{bert / name} resolves to {secret}, outside the checkpoint folder; "
                   "headscope reads a checkpoint's config and tokenizer only from inside its "
                   "folder: refusing it (repair the checkpoint or re-download it).")
    assert tree(bert) == before
    assert_nothing_written(isolated)


def test_fix_refuses_a_config_linked_out_before_writing(bert, tmp_path, isolated):
    secret = tmp_path / "secret.json"
    secret.write_text((bert / "config.json").read_text())
    (bert / "config.json").unlink()
    (bert / "config.json").symlink_to(secret)
    out = tmp_path / "fixed"
    result = invoke(["fix", str(bert), "--k", "2", "--out", str(out)])
    assert_refused(result, contains="config.json resolves to")
    assert not out.exists()


@pytest.mark.parametrize("weight_map", [["a.safetensors"], "a.safetensors", {}, None,
                                        {"x": 5}, {"x": None}, {"x": ["a.safetensors"]}])
def test_index_that_is_not_a_map_of_file_names_is_refused(bert, weight_map):
    shard(bert)
    write_index(bert, weight_map)
    result = invoke(["inspect", str(bert), "--weights-only"])
    index = bert / ck.SAFETENSORS_INDEX
    if isinstance(weight_map, dict) and weight_map:
        value = weight_map["x"]
        assert_refused(result, f"{index} maps 'x' to {value!r}, which is not a file name; "
                       "repair the index or re-download the checkpoint.")
    else:
        assert_refused(result, f'{index} has no "weight_map" object naming the shard of each '
                       "tensor; repair the index or re-download the checkpoint.")


def test_symlink_inside_the_folder_is_followed(bert):
    """A link that stays inside the checkpoint is its own file: measured as usual."""
    names = shard(bert)
    (bert / "weights").mkdir()
    (bert / "model-00001-of-00001.safetensors").rename(bert / "weights" / "real.safetensors")
    (bert / "model-00001-of-00001.safetensors").symlink_to("weights/real.safetensors")
    plain = invoke(["inspect", str(bert), "--weights-only", "--json", "-"])
    assert plain.exit_code == 0, plain.stderr
    write_index(bert, {n: "weights/real.safetensors" for n in names})
    nested = invoke(["inspect", str(bert), "--weights-only", "--json", "-"])
    assert nested.exit_code == 0, nested.stderr
    assert json.loads(nested.stdout)["weights"] == json.loads(plain.stdout)["weights"]


def _hub_snapshot(cache: Path, source: Path, repo_id: str = "acme/tiny") -> Path:
    """`source` laid out as huggingface_hub caches it: each file stored once under blobs/ and
    linked from snapshots/<commit>/ by a relative symlink."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        blob = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, repo / "blobs" / blob)
        (snapshot / path.name).symlink_to(f"../../blobs/{blob}")
    return snapshot


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    cache = tmp_path / "hub"
    for var in ("HUGGINGFACE_HUB_CACHE", "HF_HOME", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("sharded", [False, True])
def test_hub_cache_snapshot_links_into_blobs_are_allowed(bert, hub, sharded):
    if sharded:
        shard(bert)
    local = invoke(["inspect", str(bert), "--weights-only", "--json", "-"])
    snapshot = _hub_snapshot(hub, bert)
    assert (snapshot / "config.json").is_symlink()
    cached = invoke(["inspect", "acme/tiny", "--weights-only", "--json", "-"])
    assert local.exit_code == 0 and cached.exit_code == 0, cached.stderr
    assert json.loads(cached.stdout)["weights"] == json.loads(local.stdout)["weights"]
    assert json.loads(cached.stdout)["model"]["revision"] == COMMIT


def test_hub_cache_allows_only_its_own_blobs(bert, other, hub):
    snapshot = _hub_snapshot(hub, bert)
    foreign = _hub_snapshot(hub, other, "evil/other")
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to((foreign / "model.safetensors").resolve())
    result = invoke(["inspect", "acme/tiny", "--weights-only"])
    target = (foreign / "model.safetensors").resolve()
    assert_refused(result, f"{snapshot / 'model.safetensors'} resolves to {target}, outside the "
                   f"checkpoint folder{_escape(snapshot)}")


def test_hub_cache_index_may_not_name_a_blob_directly(bert, hub):
    names = shard(bert)
    snapshot = _hub_snapshot(hub, bert)
    blob = os.readlink(snapshot / "model-00001-of-00001.safetensors")
    (snapshot / ck.SAFETENSORS_INDEX).unlink()
    write_index(snapshot, {n: blob for n in names})
    result = invoke(["inspect", "acme/tiny", "--weights-only"])
    assert_refused(result, contains=f"to {blob!r}, which climbs out of the folder with '..'")


# --------------------------------------------------------------------------------------------
# item 4: fix copies only regular files of the checkpoint


def test_other_files_skip_links_out_of_the_checkpoint_and_special_files(bert, tmp_path):
    from headscope.save.plan import other_files

    (tmp_path / "secret.txt").write_text("the secret")
    (bert / "notes.txt").symlink_to("../secret.txt")
    (bert / "inside.txt").write_text("kept")
    (bert / "alias.txt").symlink_to("inside.txt")
    (bert / "dangling.txt").symlink_to("no-such-file")
    (bert / "outdir").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(bert / "pipe.txt")
    copied, skipped = other_files(bert, {"model.safetensors"})
    assert "inside.txt" in copied and "alias.txt" in copied
    assert not {"notes.txt", "dangling.txt", "pipe.txt", "outdir"} & set(copied)
    secret = (tmp_path / "secret.txt").resolve()
    assert skipped == [
        "dangling.txt (a link that points nowhere)",
        f"notes.txt (a link that resolves to {secret}, outside the checkpoint folder)",
        f"outdir (a link that resolves to {tmp_path.resolve()}, outside the checkpoint folder)",
        "pipe.txt (is not a regular file)",
    ]


def test_other_files_of_a_hub_snapshot_are_copied(bert, hub):
    from headscope.save.plan import other_files

    (bert / "README.md").write_text("model card")
    snapshot = _hub_snapshot(hub, bert)
    copied, skipped = other_files(snapshot, {"model.safetensors"})
    assert "README.md" in copied and "tokenizer.json" in copied
    assert skipped == []


def test_fix_does_not_copy_a_symlinked_secret(bert, tmp_path, isolated):
    (tmp_path / "secret.txt").write_text("TOP-SECRET-TOKEN")
    (bert / "notes.txt").symlink_to("../secret.txt")
    out = tmp_path / "fixed"
    result = invoke(["fix", str(bert), "--k", "2", "--out", str(out), "--n-pairs", "4"])
    assert result.exit_code == 0, result.stderr
    secret = (tmp_path / "secret.txt").resolve()
    assert (f"Not copied from {bert}: notes.txt (a link that resolves to {secret}, outside the "
            "checkpoint folder)\n") in result.stderr
    written = tree(out)
    assert "notes.txt" not in written
    assert not any(b"TOP-SECRET-TOKEN" in data for data in written.values())
    assert not any(p.is_symlink() for p in out.rglob("*"))


# --------------------------------------------------------------------------------------------
# item 5: pickles that PyTorch's restricted loader blocks


class _Payload:
    """Pickles as a call of `func(*args)`: what a malicious checkpoint carries."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _pickle_message(path: Path, what: str) -> str:
    return (f"{path} is a pickle that would import and call {what} when loaded (PyTorch's safe "
            "loader blocked it): the file contains code, so headscope will not load it; convert "
            "the checkpoint to safetensors from a copy you trust, or ask its publisher for one.")


@pytest.mark.parametrize("payload,what", [
    ("system", "posix.system"),
    ("eval", "eval"),
    ("rmtree", "shutil.rmtree"),
])
@pytest.mark.parametrize("command", ["weights-only", "inspect", "fix"])
def test_blocked_pickle_is_refused_with_the_opposite_of_torchs_advice(bert, tmp_path, isolated,
                                                                       payload, what, command):
    marker = tmp_path / "pwned"
    victim = tmp_path / "victim"
    victim.mkdir()
    obj = {
        "system": _Payload(os.system, f"touch {marker}"),
        "eval": _Payload(eval, f"open({str(marker)!r}, 'w')"),
        "rmtree": _Payload(shutil.rmtree, str(victim)),
    }[payload]
    state = load_file(str(bert / "model.safetensors"))
    state["cls.predictions.bias"] = obj
    (bert / "model.safetensors").unlink()
    torch.save(state, bert / "pytorch_model.bin")
    args = {"weights-only": ["inspect", str(bert), "--weights-only"],
            "inspect": ["inspect", str(bert), "--n-pairs", "4"],
            "fix": ["fix", str(bert), "--k", "2", "--out", str(tmp_path / "out")]}[command]
    result = invoke(args)
    assert_refused(result, _pickle_message(bert / "pytorch_model.bin", what))
    assert "weights_only" not in result.stderr
    assert not marker.exists() and victim.is_dir()
    assert not (tmp_path / "out").exists()
    assert_nothing_written(isolated)


def test_bin_that_is_not_a_state_dict_is_refused(bert):
    (bert / "model.safetensors").unlink()
    torch.save([torch.zeros(2)], bert / "pytorch_model.bin")
    result = invoke(["inspect", str(bert), "--weights-only"])
    assert_refused(result, f"{bert / 'pytorch_model.bin'} holds a list, not a state dict of named "
                   "tensors; pass a checkpoint saved with save_pretrained.")


def test_bin_with_a_value_that_is_not_a_tensor_is_refused(bert):
    state = load_file(str(bert / "model.safetensors"))
    state["cls.predictions.bias"] = [1.0, 2.0]
    (bert / "model.safetensors").unlink()
    torch.save(state, bert / "pytorch_model.bin")
    result = invoke(["inspect", str(bert), "--weights-only"])
    assert_refused(result, f"{bert / 'pytorch_model.bin'} stores 'cls.predictions.bias' as a list, "
                   "not a tensor; pass a checkpoint saved with save_pretrained.")


def test_damaged_bin_is_one_line(bert):
    (bert / "model.safetensors").unlink()
    (bert / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip\n\nsecond line")
    result = invoke(["inspect", str(bert), "--weights-only"])
    assert_refused(result, contains=f"Cannot read {bert / 'pytorch_model.bin'} (")
    assert result.stderr.endswith("the file is damaged or not a PyTorch state dict: "
                                  "re-download it.\n")


# --------------------------------------------------------------------------------------------
# item 6: damaged safetensors files


def _damage(case: str, path: Path) -> str:
    """Damage `path` as `case` says; the expected problem text."""
    raw = path.read_bytes()
    header, data = header_of(path)
    first = next(k for k in header if k != "__metadata__")
    bias = "cls.predictions.bias"
    b0, b1 = header[bias]["data_offsets"]
    size = len(raw)
    if case == "empty":
        path.write_bytes(b"")
        return "it holds 0 bytes, fewer than the 8 of a header length"
    if case == "short":
        path.write_bytes(raw[:5])
        return "it holds 5 bytes, fewer than the 8 of a header length"
    if case == "header past end":
        path.write_bytes(struct.pack("<Q", size) + raw[8:])
        return f"its header length ({size} bytes) runs past the end of the {size}-byte file"
    if case == "header length huge":
        path.write_bytes(struct.pack("<Q", 2**64 - 1) + raw[8:])
        return (f"its header length ({2**64 - 1} bytes) runs past the end of the {size}-byte "
                "file")
    if case == "truncated":
        path.write_bytes(raw[: size - 100])
        n = len(raw) - len(data)
        return (f"its tensors need {len(data)} bytes of data but the file holds "
                f"{size - 100 - n} (truncated)")
    if case == "trailing bytes":
        path.write_bytes(raw + b"\0" * 16)
        return "16 bytes after the last tensor are not described"
    if case == "non-utf8":
        body = json.dumps(header).encode()
        write_with_header(path, b"\xff\xfe" + body[2:], data)
        return "its header is not UTF-8 (byte 0)"
    if case == "not json":
        write_with_header(path, b"{not json}", data)
        return "its header is not JSON (Expecting property name enclosed in double quotes: " \
               "line 1 column 2 (char 1))"
    if case == "json list":
        write_with_header(path, b"[1, 2]", data)
        return "its header is not a JSON object"
    if case == "metadata not strings":
        header["__metadata__"] = {"format": 1}
        write_with_header(path, header, data)
        return "its __metadata__ is not an object of strings"
    if case == "info not object":
        header[first] = [1, 2]
        write_with_header(path, header, data)
        return f"tensor {first!r} is described by list, not an object"
    if case == "unknown dtype":
        header[bias]["dtype"] = "F128"
        write_with_header(path, header, data)
        return f"tensor {bias!r} has unknown dtype 'F128'"
    if case == "negative dim":
        header[bias]["shape"] = [-100]
        write_with_header(path, header, data)
        return f"tensor {bias!r} has shape [-100], not a list of non-negative integers"
    if case == "float dim":
        header[bias]["shape"] = [100.0]
        write_with_header(path, header, data)
        return f"tensor {bias!r} has shape [100.0], not a list of non-negative integers"
    if case == "offsets reversed":
        header[bias]["data_offsets"] = [b1, b0]
        write_with_header(path, header, data)
        return (f"tensor {bias!r} has data_offsets [{b1}, {b0}], not [begin, end] with "
                "begin <= end")
    if case == "offsets out of range":
        header[bias]["data_offsets"] = [b0, b0 + 10**12]
        write_with_header(path, header, data)
        return f"tensor {bias!r} (F32, shape [100]) needs 400 bytes but its data_offsets span " \
               f"{10**12}"
    if case == "shape mismatch":
        header[bias]["shape"] = [101]
        write_with_header(path, header, data)
        return f"tensor {bias!r} (F32, shape [101]) needs 404 bytes but its data_offsets span 400"
    if case == "dtype mismatch":
        header[bias]["dtype"] = "F64"
        write_with_header(path, header, data)
        return f"tensor {bias!r} (F64, shape [100]) needs 800 bytes but its data_offsets span 400"
    if case == "overlap":
        other = next(k for k, v in header.items()
                     if k not in ("__metadata__", bias) and v["data_offsets"][0] < b0)
        o0, o1 = header[other]["data_offsets"]
        header[bias]["data_offsets"] = [o0, o0 + 400]
        write_with_header(path, header, data)
        return (f"tensor {bias!r} overlaps the tensor before it (data_offsets "
                f"[{o0}, {o0 + 400}])")
    raise AssertionError(case)


DAMAGES = ["empty", "short", "header past end", "header length huge", "truncated",
           "trailing bytes", "non-utf8", "not json", "json list", "metadata not strings",
           "info not object", "unknown dtype", "negative dim", "float dim", "offsets reversed",
           "offsets out of range", "shape mismatch", "dtype mismatch", "overlap"]


def _damaged_message(path: Path, problem: str) -> str:
    return (f"{path} is not a valid safetensors file: {problem}; re-download it, or convert the "
            "checkpoint again from a copy you trust.")


@pytest.mark.parametrize("case", DAMAGES)
def test_damaged_safetensors_is_refused_naming_the_fault(bert, isolated, case):
    problem = _damage(case, bert / "model.safetensors")
    result = invoke(["inspect", str(bert), "--weights-only"])
    assert_refused(result, _damaged_message(bert / "model.safetensors", problem))
    assert_nothing_written(isolated)


@pytest.mark.parametrize("case", ["truncated", "non-utf8", "overlap", "unknown dtype"])
@pytest.mark.parametrize("command", ["inspect", "fix", "check", "compare"])
def test_damaged_safetensors_is_refused_by_every_command_that_reads_it(bert, tmp_path, isolated,
                                                                       case, command):
    names = shard(bert)
    path = bert / "model-00001-of-00001.safetensors"
    problem = _damage(case, path)
    assert names
    out = tmp_path / "out"
    args = {"inspect": ["inspect", str(bert)], "fix": ["fix", str(bert), "--out", str(out)],
            "check": ["check", str(bert)], "compare": ["compare", str(bert)]}[command]
    result = invoke(args)
    assert_refused(result, _damaged_message(path, problem))
    assert not out.exists()
    assert_nothing_written(isolated)


def test_header_check_accepts_every_tiny_family(tiny_checkpoint):
    for family in tiny_models.FAMILIES:
        path = tiny_checkpoint(family) / "model.safetensors"
        header = safetensors_file.read_safetensors_header(path)
        stored = load_file(str(path))
        assert set(header.tensors) == set(stored)
        for name, info in header.tensors.items():
            assert info.shape == tuple(stored[name].shape)
            raw = path.read_bytes()[info.begin:info.end]
            assert raw == stored[name].contiguous().view(torch.uint8).numpy().tobytes()


def test_header_check_accepts_empty_tensors_and_metadata(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(0, 3), "b": torch.ones(2, dtype=torch.bfloat16)}, str(path),
              metadata={"format": "pt"})
    header = safetensors_file.read_safetensors_header(path)
    assert header.metadata == {"format": "pt"}
    assert {n: (t.dtype, t.shape) for n, t in header.tensors.items()} == {
        "a": ("F32", (0, 3)), "b": ("BF16", (2,))}


def test_header_check_raises_weight_file_error(tmp_path):
    from headscope.errors import WeightFileError

    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(WeightFileError):
        safetensors_file.read_safetensors_header(path)


# --------------------------------------------------------------------------------------------
# item 7: config.json that disagrees with the weights


def _mismatch(folder: Path, tensor: str, have: list, field: str, value, want: list) -> str:
    return (f"{folder / 'config.json'} disagrees with the weights: tensor {tensor} is stored with "
            f"shape {have}, but config.json's {field} = {value} makes it {want}; make "
            "config.json match the stored tensors (or re-download both).")


EMB = "bert.embeddings.word_embeddings.weight"


@pytest.mark.parametrize("field,value,tensor,have,want", [
    ("vocab_size", 10**12, EMB, [100, 32], [10**12, 32]),
    ("vocab_size", 50, EMB, [100, 32], [50, 32]),
    ("vocab_size", 101, EMB, [100, 32], [101, 32]),
    ("hidden_size", 48, EMB, [100, 32], [100, 48]),
])
@pytest.mark.parametrize("weights_only", [True, False])
def test_config_size_that_disagrees_with_the_tensors(bert, isolated, field, value, tensor, have,
                                                     want, weights_only):
    set_config(bert, **{field: value})
    result = invoke(["inspect", str(bert)]
                    + (["--weights-only"] if weights_only else ["--n-pairs", "4"]))
    assert_refused(result, _mismatch(bert, tensor, have, field, value, want))
    assert_nothing_written(isolated)


def test_config_mismatch_outside_the_head_is_named_on_full_load(bert):
    set_config(bert, intermediate_size=80)
    result = invoke(["inspect", str(bert)])
    assert_refused(result, _mismatch(bert, "bert.encoder.layer.0.intermediate.dense.weight",
                                     [64, 32], "intermediate_size", 80, [80, 32]))


def test_config_embedding_size_of_albert(tiny_checkpoint, tmp_path):
    folder = tmp_path / "albert"
    shutil.copytree(tiny_checkpoint("albert"), folder)
    set_config(folder, embedding_size=24)
    for extra in (["--weights-only"], []):
        result = invoke(["inspect", str(folder)] + extra)
        assert_refused(result, _mismatch(folder, "albert.embeddings.word_embeddings.weight",
                                         [100, 16], "embedding_size", 24, [100, 24]))


@pytest.mark.parametrize("field,value,kind", [
    ("vocab_size", -5, "a positive"),
    ("vocab_size", 0, "a positive"),
    ("vocab_size", "lots", "a positive"),
    ("vocab_size", 100.0, "a positive"),
    ("vocab_size", True, "a positive"),
    ("vocab_size", None, "a positive"),
    ("hidden_size", [32], "a positive"),
    ("num_attention_heads", {"n": 2}, "a positive"),
    ("type_vocab_size", -1, "a non-negative"),
])
@pytest.mark.parametrize("weights_only", [True, False])
def test_config_size_of_the_wrong_type(bert, field, value, kind, weights_only):
    set_config(bert, **{field: value})
    result = invoke(["inspect", str(bert)] + (["--weights-only"] if weights_only else []))
    assert_refused(result, f'{bert / "config.json"}: "{field}" is {value!r}, but it must be '
                   f"{kind} integer; fix config.json (it must agree with the stored tensors).")


@pytest.mark.parametrize("field,value,expected", [
    ("model_type", 5, '"model_type" is 5, not a string'),
    ("architectures", "BertForMaskedLM", '"architectures" is \'BertForMaskedLM\', not a list of '
     "class names"),
    ("architectures", [1], '"architectures" is [1], not a list of class names'),
    ("tie_word_embeddings", "yes", '"tie_word_embeddings" is \'yes\', not true or false'),
])
def test_config_fields_read_before_loading_are_typed(bert, field, value, expected):
    set_config(bert, **{field: value})
    result = invoke(["inspect", str(bert), "--weights-only"])
    assert_refused(result, f"{bert / 'config.json'}: {expected}; fix config.json.")


@pytest.mark.parametrize("field,value", [("hidden_act", 5), ("layer_norm_eps", "tiny"),
                                         ("pad_token_id", 10**6), ("num_attention_heads", 5)])
def test_config_values_transformers_rejects_are_input_errors(bert, field, value):
    set_config(bert, **{field: value})
    result = invoke(["inspect", str(bert), "--n-pairs", "4"])
    assert_refused(result, contains=f"{bert / 'config.json'} ")
    assert "fix config.json." in result.stderr


def test_weights_only_refuses_a_decoder_of_another_size(bert):
    state = load_file(str(bert / "model.safetensors"))
    state["cls.predictions.decoder.weight"] = torch.zeros(100, 16)
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    set_config(bert, tie_word_embeddings=False)
    save_file(state, str(bert / "model.safetensors"), metadata={"format": "pt"})
    result = invoke(["inspect", str(bert), "--weights-only"])
    assert_refused(result, _mismatch(bert, "cls.predictions.decoder.weight", [100, 16],
                                     "hidden_size", 32, [100, 32]))


def test_check_against_weights_accepts_every_tiny_family(tiny_checkpoint):
    from transformers import AutoConfig

    for family in tiny_models.FAMILIES:
        ckpt = ck.resolve(str(tiny_checkpoint(family)))
        ck.check_against_weights(ckpt, AutoConfig.from_pretrained(str(ckpt.path)))


def test_real_albert_bin_passes_the_consistency_checks(albert_dir):
    from headscope.heads import read_head

    head = read_head(ck.resolve(str(albert_dir)))
    assert head.decoder_weight.shape[0] == json.loads(
        (albert_dir / "config.json").read_text())["vocab_size"]


def test_config_error_is_an_input_error():
    from headscope.errors import ConfigError

    assert issubclass(ConfigError, click.ClickException) is False
    assert ConfigError("x").exit_code == 2


# --------------------------------------------------------------------------------------------
# item 10: data files, deeply nested reports, failing remote code


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails loudly: a refusal must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was validated")

    monkeypatch.setattr(ck, "load", refuse)


def _pairs(n: int = 20) -> list[dict]:
    return [{"query": f"question {i}", "positive": f"passage number {i}"} for i in range(n)]


@pytest.mark.parametrize("case", ["not gzip", "truncated gzip", "bad json", "deep json",
                                  "not an object", "missing key"])
@pytest.mark.parametrize("command", ["confirm", "sweep"])
def test_confirm_data_is_validated_before_the_model_loads(bert, tmp_path, isolated,
                                                          no_model_load, case, command):
    good = "\n".join(json.dumps(p) for p in _pairs()).encode()
    if case == "not gzip":
        path = tmp_path / "pairs.jsonl.gz"
        path.write_bytes(good)
        expected = (f"{path} is not a complete gzip file (Not a gzipped file (b'{{\"')), though "
                    "its name ends in .gz; compress it with gzip, or drop the .gz suffix if it "
                    "is plain text.")
    elif case == "truncated gzip":
        path = tmp_path / "pairs.jsonl.gz"
        path.write_bytes(gzip.compress(good)[:-12])
        expected = None
    else:
        path = tmp_path / "pairs.jsonl"
        line = {"bad json": '{"query": "q", ', "deep json": "[" * 100_000 + "]" * 100_000,
                "not an object": "[1, 2]", "missing key": '{"query": "q"}'}[case]
        path.write_bytes(good + b"\n" + line.encode() + b"\n")
        n = 21
        example = '{"query": "...", "positive": "...", "negatives": ["..."]}'
        expected = {
            "bad json": f"{path}, line {n}: not valid JSON (Expecting property name enclosed in "
                        f"double quotes); each line must be one object like {example}.",
            "deep json": f"{path}, line {n}: JSON nested too deeply to read; each line must be "
                         f"one object like {example}.",
            "not an object": f"{path}, line {n}: expected a JSON object, found list; each line "
                             f"must be one object like {example}.",
            "missing key": f"{path}, line {n}: missing key 'positive'; each line must be one "
                           f"object like {example}.",
        }[case]
    log = tmp_path / "log.jsonl"
    args = [command, str(bert), "--data", str(path), "--log", str(log)]
    result = invoke(args)
    if expected is None:
        assert_refused(result, contains=f"{path} is not a complete gzip file (")
    else:
        assert_refused(result, expected)
    assert not log.exists()
    assert_nothing_written(isolated)


def test_gzipped_tsv_triples_are_read_as_triples(tmp_path):
    from headscope.splade.data import load_dataset

    rows = [f"question {i}\tpassage {i}\tother {i}" for i in range(20)]
    path = tmp_path / "triples.tsv.gz"
    path.write_bytes(gzip.compress("\n".join(rows).encode()))
    data = load_dataset(path)
    assert len(data.train) + len(data.eval.queries) == 20
    assert all(len(p.negatives) == 1 for p in data.train)


@pytest.fixture
def deep_report(tmp_path) -> Path:
    path = tmp_path / "deep.json"
    path.write_text('{"schema_version": 2, "model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return path


@pytest.mark.parametrize("command", ["check", "compare", "report"])
def test_report_nested_too_deep_is_refused(deep_report, tmp_path, isolated, command):
    out = tmp_path / "page.html"
    args = {"check": ["check", "--report", str(deep_report)],
            "compare": ["compare", str(deep_report)],
            "report": ["report", str(deep_report), "--html", str(out)]}[command]
    result = invoke(args)
    assert_refused(result, f"Report {deep_report} is JSON nested too deeply to read; pass a file "
                   "written by headscope inspect --json.")
    assert not out.exists()


def test_probe_file_nested_too_deep_is_refused(bert, tmp_path, no_model_load):
    path = tmp_path / "probe.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    result = invoke(["inspect", str(bert), "--probe", str(path)])
    assert_refused(result, contains=f"{path}")
    assert "nested too deeply" in result.stderr


def _remote_checkpoint(bert: Path, config_code: str, modeling_code: str) -> None:
    set_config(bert, model_type="evil", auto_map={
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForMaskedLM": "modeling_evil.EvilForMaskedLM"})
    (bert / "configuration_evil.py").write_text(config_code)
    (bert / "modeling_evil.py").write_text(modeling_code)


GOOD_CONFIG = ("from transformers import BertConfig\n\n\nclass EvilConfig(BertConfig):\n"
               "    model_type = 'evil'\n")


@pytest.mark.parametrize("where", ["modeling", "config", "model init"])
def test_failing_remote_code_is_an_input_error(bert, isolated, where):
    boom = "raise RuntimeError('boom from the checkpoint')\n"
    if where == "modeling":
        _remote_checkpoint(bert, GOOD_CONFIG, boom)
    elif where == "config":
        _remote_checkpoint(bert, boom, boom)
    else:
        _remote_checkpoint(bert, GOOD_CONFIG, (
            "from transformers import BertForMaskedLM\n\n"
            "from .configuration_evil import EvilConfig\n\n\n"
            "class EvilForMaskedLM(BertForMaskedLM):\n"
            "    config_class = EvilConfig\n\n"
            "    def __init__(self, config):\n"
            "        raise ValueError('refusing to build')\n"))
    without = invoke(["inspect", str(bert)])
    assert_refused(without, contains="it ships its own code: pass --trust-remote-code")
    result = invoke(["inspect", str(bert), "--trust-remote-code", "--n-pairs", "4"])
    err = "ValueError: refusing to build" if where == "model init" else \
        "RuntimeError: boom from the checkpoint"
    assert_refused(result, f"The code shipped with {bert} (configuration_evil.py, "
                   f"modeling_evil.py) failed ({err}); it ran only because of "
                   "--trust-remote-code: fix that code or ask the checkpoint's authors.")


# --------------------------------------------------------------------------------------------
# item 11: every usage error is one line


def _commands() -> list[str]:
    return sorted(commands())


def _usage_cases() -> list[tuple[str, list[str], str]]:
    """(command, args, expected message start) for every way to misuse each command: an
    unknown option, and a wrong value for every option that checks its value."""
    cases = []
    for name in _commands():
        command = commands()[name]
        base = []
        for param in command.params:
            if isinstance(param, click.Argument) and param.required:
                base.append("x")
            if isinstance(param, click.Option) and param.required:
                base += [param.opts[0], "somewhere"]
        cases.append((name, base + ["--no-such-flag"], "No such option '--no-such-flag'."))
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag or param.opts[0] in (
                    "--help",):
                continue
            bad = None
            if isinstance(param.type, click.Choice):
                bad = "not-a-choice"
            elif param.type in (click.INT, click.FLOAT):
                bad = "not-a-number"
            elif param.callback is not None and param.name in ("ks", "band_specs"):
                bad = "0"
            if bad is not None:
                cases.append((name, base + [param.opts[0], bad],
                              f"Invalid value for '{param.opts[0]}'"))
            if param.nargs == 1 and not param.is_flag:
                cases.append((name, base + [param.opts[0]],
                              f"Option '{param.opts[0]}' requires an argument."))
        if any(isinstance(p, click.Argument) and p.required for p in command.params):
            cases.append((name, [], "Missing argument"))
    cases.append(("", ["no-such-command"], "No such command 'no-such-command'."))
    return cases


@pytest.mark.parametrize("name,args,start", _usage_cases(),
                         ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40])
def test_every_usage_error_is_one_line(name, args, start):
    result = CliRunner().invoke(main, ([name] if name else []) + args, prog_name="headscope")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"Error: {start}"), result.stderr
    if start.startswith("Option ") is False:
        path = f"headscope {name}" if name else "headscope"
        assert result.stderr.endswith(f" Try '{path} --help' for help.\n"), result.stderr


def test_usage_error_word_for_word():
    result = CliRunner().invoke(main, ["inspect", "x", "--ks", "0"], prog_name="headscope")
    assert result.stderr == ("Error: Invalid value for '--ks': '0': every k must be a number >= 1 "
                             "(k divides the head). Try 'headscope inspect --help' for help.\n")


def test_bare_command_prints_the_help():
    result = CliRunner().invoke(main, [], prog_name="headscope")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: headscope [OPTIONS] COMMAND [ARGS]...")
    assert result.stderr == ""


def test_a_multi_line_library_error_is_printed_as_one_line(monkeypatch):
    from headscope.errors import InputError

    def fail(*args, **kwargs):
        raise InputError("first line\n\n  second line\n")

    monkeypatch.setattr(api, "inspect", fail)
    result = invoke(["inspect", "x"])
    assert_refused(result, "first line second line")


# --------------------------------------------------------------------------------------------
# item 12: inputs validated before the model loads; flags weights-only cannot honour


def test_bad_probe_file_is_refused_before_the_model_loads(bert, tmp_path, no_model_load):
    path = tmp_path / "probe.jsonl"
    path.write_text('{"text": "First sentence here. Second one there."}\n{"query": 5}\n')
    for args in (["inspect", str(bert)], ["check", str(bert)]):
        result = invoke(args + ["--probe", str(path)])
        assert_refused(result, contains=f"{path}, line 2")


def test_missing_probe_file_is_refused_before_the_model_loads(bert, tmp_path, no_model_load):
    result = invoke(["inspect", str(bert), "--probe", str(tmp_path / "nope.txt")])
    assert_refused(result, f"Probe file {tmp_path / 'nope.txt'} does not exist; pass an existing "
                   "file.")


@pytest.mark.parametrize("flags,named", [
    (["--device", "cuda"], "--device cuda"),
    (["--device", "cuda:1"], "--device cuda:1"),
    (["--device", "mps"], "--device mps"),
    (["--dtype", "bfloat16"], "--dtype bfloat16"),
    (["--device", "cuda", "--dtype", "float16"], "--device cuda, --dtype float16"),
    (["--reference", "somewhere"], "--reference"),
])
def test_weights_only_refuses_flags_it_cannot_honour(bert, isolated, flags, named):
    result = invoke(["inspect", str(bert), "--weights-only"] + flags)
    assert_refused(result, f"{named} has no effect with --weights-only, which reads the head "
                   "tensors from the files as stored and runs no model; drop it, or drop "
                   "--weights-only to measure on that device/dtype/probe.")
    assert_nothing_written(isolated)


@pytest.mark.parametrize("command, flags, named, pronoun", [
    ("inspect", ["--fast"], "--fast has", "it"),
    ("inspect", ["--n-pairs", "8", "--ks", "1,2"], "--n-pairs, --ks have", "them"),
    ("inspect", ["--rule", "bands"], "--rule bands has", "it"),
    ("inspect", ["--band", "start_loss=:50"], "--band has", "it"),
    ("inspect", ["--no-scale-bias"], "--scale-bias/--no-scale-bias has", "it"),
    ("check", ["--batch-size", "4"], "--batch-size has", "it"),
])
def test_weights_only_refuses_probe_flags_given(bert, isolated, command, flags, named, pronoun):
    """Weights-only runs no probe and no bands rule: a flag only they read, typed on the command
    line, is refused before anything is read, not silently ignored."""
    result = invoke([command, str(bert), "--weights-only"] + flags)
    rule = "paper" if weights_only_rule() == "paper" else "shipped"
    assert_refused(result, f"{named} no effect with --weights-only, which runs no probe and "
                   f"recommends k by the {rule} rule from the weights; drop "
                   f"{pronoun}, or drop --weights-only to run the probe.")
    assert_nothing_written(isolated)


def test_weights_only_accepts_the_paper_rule_it_follows(bert):
    result = invoke(["inspect", str(bert), "--weights-only", "--rule", "paper", "--json", "-"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["recommendation"]["rule"] == "paper"


def test_weights_only_refuses_a_probe_file(bert, tmp_path):
    path = tmp_path / "probe.txt"
    path.write_text("One sentence here. Another one there.\n")
    result = invoke(["inspect", str(bert), "--weights-only", "--probe", str(path)])
    assert_refused(result, contains=f"--probe {path} has no effect with --weights-only")


def test_weights_only_on_cpu_still_works(bert):
    result = invoke(["inspect", str(bert), "--weights-only", "--device", "cpu", "--json", "-"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"]["weights_only"] is True


def test_confirm_fixed_folder_is_resolved_before_the_model_loads(bert, tmp_path, no_model_load):
    missing = tmp_path / "no-such-fixed"
    result = invoke(["confirm", str(bert), "--fixed", str(missing)])
    assert_refused(result, f"Checkpoint {str(missing)!r} was not found (no such directory, and "
                   "not a Hub id of the form org/name); pass a local directory or a Hub id that "
                   "is in the Hugging Face cache.")


@pytest.mark.parametrize("name", ["config.json", ck.SAFETENSORS_INDEX])
def test_json_of_the_checkpoint_nested_too_deep_is_refused(bert, name):
    if name == ck.SAFETENSORS_INDEX:
        shard(bert)
    (bert / name).write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = invoke(["inspect", str(bert), "--weights-only"])
    assert_refused(result, f"{bert / name} is JSON nested too deeply to read; repair or replace "
                   "the file.")


def test_hub_ref_that_is_not_a_commit_is_refused(bert, hub):
    snapshot = _hub_snapshot(hub, bert)
    ref = snapshot.parent.parent / "refs" / "main"
    ref.write_text("../../../../elsewhere")
    result = invoke(["inspect", "acme/tiny", "--weights-only"])
    assert_refused(result, f"Checkpoint 'acme/tiny' was not found ({ref} does not hold a commit "
                   "hash; repair or delete the cached ref); pass a local directory or a Hub id "
                   "that is in the Hugging Face cache.")


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "nan", "TrainConfig.lr must be a finite number > 0, got nan."),
    ("--lr", "-1", "TrainConfig.lr must be a finite number > 0, got -1.0."),
    ("--steps", "0", "TrainConfig.steps must be at least 1, got 0."),
    ("--batch-size", "1", "TrainConfig.batch_size must be at least 2: the contrastive loss needs "
     "in-batch negatives."),
])
def test_training_options_are_validated_before_the_model_loads(bert, no_model_load, flag, value,
                                                               message):
    for command in ("confirm", "sweep"):
        result = invoke([command, str(bert), flag, value])
        assert_refused(result, message)


# --------------------------------------------------------------------------------------------
# tokenizer files are checked before any model is built, by every command


def _tokenizer_json(folder: Path) -> Path:
    """The checkpoint's tokenizer.json, written from its vocab.txt by the tokenizers library
    when it ships only the latter (a valid file to damage)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    path = folder / "tokenizer.json"
    if not path.exists():
        vocab = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
        tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab) if t}, unk_token="[UNK]"))
        path.write_text(tok.to_str(), encoding="utf-8")
    return path


_EVERY_COMMAND = ("inspect", "inspect --weights-only", "fix", "check", "compare", "confirm")


def _command_args(command: str, folder: Path, out: Path) -> list[str]:
    name, *flags = command.split()
    args = {"fix": ["fix", str(folder), "--out", str(out)]}.get(name, [name, str(folder)])
    return args + flags


@pytest.mark.parametrize("command", _EVERY_COMMAND)
def test_a_tokenizer_json_the_library_refuses_is_named_before_the_model_loads(
        bert, tmp_path, isolated, no_model_load, command):
    """The issue's case: a tokenizer.json with an extra top-level key was found only after the
    model had loaded (a minute), as a 'JSON syntax error', with the advice to install
    sentencepiece. The tokenizers library itself refuses such a file (so transformers cannot
    load it either): the check asks that library, before any model is built, and says what it
    refuses."""
    import tokenizers

    path = _tokenizer_json(bert)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["x_comment"] = "added by hand"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(Exception):  # noqa: B017 - the library's own verdict on the file
        tokenizers.Tokenizer.from_file(str(path))
    result = invoke(_command_args(command, bert, tmp_path / "out"))
    assert_refused(result, (
        f"{path} is JSON, but the tokenizers library {tokenizers.__version__} (which loads it "
        "for transformers too) refuses it: top-level key 'x_comment' it does not know (it "
        "knows added_tokens, decoder, model, normalizer, padding, post_processor, "
        "pre_tokenizer, truncation, version); repair or replace the file."))
    assert "sentencepiece" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert_nothing_written(isolated)


@pytest.mark.parametrize("command", _EVERY_COMMAND)
def test_a_malformed_tokenizer_file_is_named_before_the_model_loads(bert, tmp_path, isolated,
                                                                    no_model_load, command):
    path = _tokenizer_json(bert)
    path.write_text(path.read_text(encoding="utf-8")[:200], encoding="utf-8")  # cut short
    result = invoke(_command_args(command, bert, tmp_path / "out"))
    assert_refused(result, contains=f"Error: {path} is not readable JSON (")
    assert result.stderr.endswith("; repair or replace the file.\n")
    assert "sentencepiece" not in result.stderr
    (bert / "tokenizer_config.json").write_text("[1, 2]", encoding="utf-8")
    path.unlink()
    result = invoke(_command_args(command, bert, tmp_path / "out"))
    assert_refused(result, f"{bert / 'tokenizer_config.json'} does not hold a JSON object; "
                           "repair or replace the file.")


def test_the_tokenizer_check_accepts_what_the_library_accepts(bert):
    """A tokenizer.json the library reads passes, whatever the order of its keys."""
    from headscope.vocabulary import check_files

    path = _tokenizer_json(bert)
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(dict(reversed(list(data.items())))), encoding="utf-8")
    check_files(bert)  # no error
    assert ck.resolve(str(bert)).path == bert.resolve()
