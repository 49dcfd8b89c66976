"""Fuzzing the read side: damaged safetensors headers, config.json values and index maps.

Every generated input is invalid by construction (the strategies say why), so every run must
end the same way: exit 2, one `Error:` line on stderr and nothing else, no traceback, and
nothing written (the checkpoint folder, HEADSCOPE_CACHE and the working directory unchanged).
In-process through CliRunner, few examples and no deadline, so the module stays a few seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from headscope.cli import main
from headscope.safetensors_file import SAFETENSORS_DTYPE_BITS

# HEADSCOPE_FUZZ_EXAMPLES=2000 runs a deeper, randomised search locally.
_DEEP = int(os.environ.get("HEADSCOPE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_DEEP or 30, deadline=None, derandomize=not _DEEP,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# Head tensors of the tiny BERT whose shape config.json fixes (weights-only reads them).
HEAD = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias",
        "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def base(tiny_checkpoint) -> Path:
    return tiny_checkpoint("bert")


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"")
            for p in sorted(path.rglob("*"))}


def run_refused(folder: Path, weights_only: bool = True) -> None:
    """Inspect `folder` in a scratch working directory and cache; assert the refusal."""
    before = tree(folder)
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        cache.mkdir()
        runner = CliRunner()
        with runner.isolated_filesystem(temp_dir=scratch) as work:
            args = ["inspect", str(folder)] + (["--weights-only"] if weights_only
                                                else ["--n-pairs", "4"])
            result = runner.invoke(main, args, env={"HEADSCOPE_CACHE": str(cache)})
            leftovers = list(Path(work).iterdir())
        assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
        assert result.stdout == ""
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, \
            result.stderr
        assert "Traceback" not in result.stderr
        assert leftovers == [] and list(cache.iterdir()) == []
    assert tree(folder) == before


def copy_of(base: Path, scratch: str) -> Path:
    folder = Path(scratch) / "ckpt"
    shutil.copytree(base, folder)
    return folder


def split(raw: bytes) -> tuple[int, dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8:8 + n]), raw[8 + n:]


# --------------------------------------------------------------------------------------------
# safetensors headers


@st.composite
def damaged_weights(draw, raw: bytes) -> bytes:
    """`raw` (a valid safetensors file) damaged in one way that the format forbids."""
    n, header, data = split(raw)
    names = [k for k in header if k != "__metadata__"]
    kind = draw(st.sampled_from(["length", "truncate", "append", "header bytes", "dtype",
                                 "shape", "offsets", "entry", "metadata"]))
    if kind == "length":  # another length moves the data section: offsets no longer tile it
        new = draw(st.integers(0, 2**64 - 1).filter(lambda v: v != n))
        return struct.pack("<Q", new) + raw[8:]
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "append":
        return raw + draw(st.binary(min_size=1, max_size=64))
    if kind == "header bytes":
        body = draw(st.binary(max_size=64))
        return struct.pack("<Q", len(body)) + body + data
    name = draw(st.sampled_from(names))
    info = header[name]
    if kind == "dtype":  # a dtype of another width, or none the format knows
        width = SAFETENSORS_DTYPE_BITS[info["dtype"]]
        info["dtype"] = draw(json_values.filter(
            lambda v: SAFETENSORS_DTYPE_BITS.get(v, None) != width if isinstance(v, str)
            else True))
    elif kind == "shape":  # another element count, or not a shape at all
        count = 1
        for d in info["shape"]:
            count *= d
        info["shape"] = draw(json_values | st.lists(st.integers(-3, 300), max_size=3))
        shape = info["shape"]
        if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape):
            product = 1
            for d in shape:
                product *= d
            assume(product != count)
    elif kind == "offsets":  # anything but the original range breaks the tiling
        old = info["data_offsets"]
        info["data_offsets"] = draw((json_values | st.lists(st.integers(-5, len(data) + 5),
                                                            min_size=2, max_size=2))
                                    .filter(lambda v: v != old))
    elif kind == "entry":
        header[name] = draw(json_values.filter(lambda v: not isinstance(v, dict)))
    else:
        header["__metadata__"] = draw(json_values.filter(
            lambda v: not (isinstance(v, dict) and all(isinstance(x, str) for x in v.values()))))
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


@given(data=st.data())
@FUZZ
def test_fuzzed_safetensors_header_is_refused(base, data):
    raw = (base / "model.safetensors").read_bytes()
    damaged = data.draw(damaged_weights(raw))
    with tempfile.TemporaryDirectory() as scratch:
        folder = copy_of(base, scratch)
        (folder / "model.safetensors").write_bytes(damaged)
        run_refused(folder, weights_only=data.draw(st.booleans()))


@given(data=st.data())
@FUZZ
def test_fuzzed_shape_of_a_head_tensor_is_refused(base, data):
    """A header that is valid safetensors but gives a head tensor another shape with the
    same number of elements: config.json contradicts it."""
    raw = (base / "model.safetensors").read_bytes()
    _, header, body = split(raw)
    name = data.draw(st.sampled_from(HEAD))
    shape = header[name]["shape"]
    count = 1
    for d in shape:
        count *= d
    divisors = [d for d in range(1, count + 1) if count % d == 0]
    first = data.draw(st.sampled_from(divisors))
    new = data.draw(st.sampled_from([[first, count // first], [count // first, first],
                                     [count], [1, count], [count, 1]]))
    assume(new != shape)
    header[name]["shape"] = new
    head = json.dumps(header).encode()
    with tempfile.TemporaryDirectory() as scratch:
        folder = copy_of(base, scratch)
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + body)
        run_refused(folder, weights_only=data.draw(st.booleans()))


# --------------------------------------------------------------------------------------------
# config.json values


def _not_int(value) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


# field -> (strategy of values that must be refused)
CONFIG_CASES = {
    "vocab_size": json_values.filter(lambda v: v != 100 or _not_int(v))
    | st.integers().filter(lambda v: v != 100),
    "hidden_size": json_values.filter(lambda v: v != 32 or _not_int(v))
    | st.integers().filter(lambda v: v != 32),
    "num_hidden_layers": json_values.filter(lambda v: _not_int(v) or v < 1),
    "model_type": json_values.filter(lambda v: v is not None and not isinstance(v, str)),
    "architectures": json_values.filter(
        lambda v: v is not None and not (isinstance(v, list)
                                         and all(isinstance(a, str) for a in v))),
    "tie_word_embeddings": json_values.filter(lambda v: v is not None
                                              and not isinstance(v, bool)),
}


@given(data=st.data())
@FUZZ
def test_fuzzed_config_value_is_refused(base, data):
    field = data.draw(st.sampled_from(sorted(CONFIG_CASES)))
    value = data.draw(CONFIG_CASES[field])
    with tempfile.TemporaryDirectory() as scratch:
        folder = copy_of(base, scratch)
        config = json.loads((folder / "config.json").read_text())
        config[field] = value
        (folder / "config.json").write_text(json.dumps(config))
        run_refused(folder, weights_only=data.draw(st.booleans()))


# --------------------------------------------------------------------------------------------
# index maps

segment = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
                  min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
escaping = st.one_of(
    st.builds(lambda rest: "/" + "/".join(rest), st.lists(segment, max_size=3)),
    st.builds(lambda a, b: "/".join(a + [".."] + b),
              st.lists(segment, max_size=2), st.lists(segment, min_size=1, max_size=2)),
    st.just(""),
    json_values.filter(lambda v: not isinstance(v, str)),
)


@given(data=st.data())
@FUZZ
def test_fuzzed_index_map_is_refused(base, data):
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as scratch:
        folder = copy_of(base, scratch)
        shard_name = "model-00001-of-00001.safetensors"
        (folder / "model.safetensors").rename(folder / shard_name)
        with safe_open(str(folder / shard_name), "np") as fh:
            names = list(fh.keys())
        weight_map = {n: shard_name for n in names}
        if data.draw(st.booleans()):
            for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)):
                weight_map[name] = data.draw(escaping)
            mapping = weight_map
        else:
            mapping = data.draw(json_values.filter(lambda v: not isinstance(v, dict) or not v))
        index = data.draw(st.sampled_from(["model.safetensors.index.json",
                                           "pytorch_model.bin.index.json"]))
        (folder / index).write_text(json.dumps({"weight_map": mapping}))
        run_refused(folder, weights_only=data.draw(st.booleans()))
