"""The safetensors format, read without torch: its dtypes (one table, one name per dtype), the
one parser and checker of its headers, and a tensor's bytes as a numpy array.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, and the data section those ranges tile. `read_safetensors_header`
checks all of that as the format's own reader does; `checkpoint.resolve` runs it on every file,
the weights-only path reads tensors through it (`tensor_info`, `read_array`), and `save` writes
and verifies its output with the same table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headscope.errors import InputError, WeightFileError


@dataclass(frozen=True)
class Dtype:
    """One safetensors dtype: its code in a header, its size, and its names elsewhere."""

    code: str  # as a safetensors header writes it: "F32", "BF16", ...
    bits: int  # per element
    name: str  # what headscope calls it (reports, TensorInfo): torch's name where torch has one
    numpy: str | None = None  # numpy dtype of the stored bytes (little-endian); None: unreadable
    # without torch (numpy has no bfloat16: its 16 bits are read as uint16 and widened)
    torch: bool = False  # torch has a dtype of this name, so headscope writes it (save)


# Every dtype the safetensors format defines (its Rust reader's list).
DTYPES: dict[str, Dtype] = {d.code: d for d in (
    Dtype("F64", 64, "float64", "<f8", torch=True),
    Dtype("F32", 32, "float32", "<f4", torch=True),
    Dtype("F16", 16, "float16", "<f2", torch=True),
    Dtype("BF16", 16, "bfloat16", "<u2", torch=True),
    Dtype("I64", 64, "int64", "<i8", torch=True),
    Dtype("I32", 32, "int32", "<i4", torch=True),
    Dtype("I16", 16, "int16", "<i2", torch=True),
    Dtype("I8", 8, "int8", "i1", torch=True),
    Dtype("U8", 8, "uint8", "u1", torch=True),
    Dtype("BOOL", 8, "bool", "?", torch=True),
    Dtype("U16", 16, "uint16", torch=True),
    Dtype("U32", 32, "uint32", torch=True),
    Dtype("U64", 64, "uint64", torch=True),
    Dtype("F8_E4M3", 8, "float8_e4m3fn", torch=True),
    Dtype("F8_E5M2", 8, "float8_e5m2", torch=True),
    Dtype("F8_E8M0", 8, "F8_E8M0"),
    Dtype("F8_E4M3FNUZ", 8, "F8_E4M3FNUZ"),
    Dtype("F8_E5M2FNUZ", 8, "F8_E5M2FNUZ"),
    Dtype("F4", 4, "F4"),
    Dtype("F6_E2M3", 6, "F6_E2M3"),
    Dtype("F6_E3M2", 6, "F6_E3M2"),
    Dtype("C64", 64, "C64"),
)}
# Bits per element, by code (a view of DTYPES).
SAFETENSORS_DTYPE_BITS = {code: d.bits for code, d in DTYPES.items()}
_BY_NAME = {d.name: d for d in DTYPES.values()}


def dtype_named(name: str) -> Dtype | None:
    """The dtype headscope calls `name` ("float32", torch's names), None when none is."""
    return _BY_NAME.get(name)


# The safetensors reader refuses larger headers too.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as a safetensors header describes it."""

    dtype: str  # safetensors dtype name, e.g. "F32"
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of the first byte in the file
    end: int  # absolute byte offset past the last byte


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, StoredTensor]  # in file order
    metadata: dict[str, str]  # "__metadata__"
    data_start: int  # 8 + header length


def damaged_error(path: Path, problem: str) -> WeightFileError:
    return WeightFileError(
        f"{path} is not a valid safetensors file: {problem}; re-download it, or convert the "
        "checkpoint again from a copy you trust."
    )


def _dims(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        return None
    return tuple(value)


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read and check the header of a safetensors file, reading no tensor data (no torch).

    Checks what the format requires (as its reader does): an 8-byte little-endian header
    length within the file, a UTF-8 JSON object, known dtypes, shapes of non-negative integers,
    byte ranges that match dtype x shape and tile the data section exactly (no gap, no
    overlap, nothing past the end). Raises WeightFileError naming the file and the fault.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise damaged_error(path, f"it holds {len(head)} bytes, fewer than the 8 of a "
                                    "header length")
            n = int.from_bytes(head, "little")
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise damaged_error(path, f"its header length ({n} bytes) runs past the end "
                                    f"of the {size}-byte file")
            raw = fh.read(n)
    except OSError as err:
        raise WeightFileError(f"{path} cannot be read ({err.strerror}); check the file.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise damaged_error(path, f"its header is not UTF-8 (byte {err.start})") from None
    try:
        data = json.loads(text, parse_constant=lambda c: float("nan"))
    except (ValueError, RecursionError) as err:
        raise damaged_error(path, f"its header is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise damaged_error(path, "its header is not a JSON object")
    metadata = data.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise damaged_error(path, "its __metadata__ is not an object of strings")
    data_start = 8 + n
    data_size = size - data_start
    items: list[tuple[str, StoredTensor]] = []
    for name, info in data.items():
        if not isinstance(info, dict):
            raise damaged_error(path, f"tensor {name!r} is described by {type(info).__name__}, "
                                "not an object")
        dtype = info.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise damaged_error(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        shape = _dims(info.get("shape"))
        if shape is None:
            raise damaged_error(path, f"tensor {name!r} has shape {info.get('shape')!r}, not a "
                                "list of non-negative integers")
        offsets = _dims(info.get("data_offsets"))
        if offsets is None or len(offsets) != 2 or offsets[1] < offsets[0]:
            raise damaged_error(path, f"tensor {name!r} has data_offsets "
                                f"{info.get('data_offsets')!r}, not [begin, end] with begin <= end")
        bits = math.prod(shape) * DTYPES[dtype].bits
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            raise damaged_error(path, f"tensor {name!r} ({dtype}, shape {list(shape)}) needs "
                                f"{bits / 8:g} bytes but its data_offsets span "
                                f"{offsets[1] - offsets[0]}")
        items.append((name, StoredTensor(dtype, shape, data_start + offsets[0],
                                         data_start + offsets[1])))
    items.sort(key=lambda kv: (kv[1].begin, kv[1].end))
    cursor = data_start
    for name, t in items:
        if t.begin != cursor:
            what = "overlaps the tensor before it" if t.begin < cursor else "leaves a gap"
            raise damaged_error(path, f"tensor {name!r} {what} (data_offsets "
                                f"[{t.begin - data_start}, {t.end - data_start}])")
        cursor = t.end
    if cursor != size:
        if cursor > size:
            problem = (f"its tensors need {cursor - data_start} bytes of data but the file "
                       f"holds {data_size} (truncated)")
        else:
            problem = f"{size - cursor} bytes after the last tensor are not described"
        raise damaged_error(path, problem)
    return SafetensorsHeader(path=path, tensors=dict(items), metadata=dict(metadata),
                             data_start=data_start)


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: its dtype, shape and where its bytes lie; nothing loaded."""

    name: str
    file: Path  # the weight file (shard) holding it
    dtype: str  # DTYPES[code].name: "float32", "bfloat16", ... (the code where torch has none)
    shape: tuple[int, ...]
    start: int | None  # absolute byte range of its data in `file`; None for .bin files
    end: int | None


def safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file as `TensorInfo`s (dtype under torch's name).

    A view of `read_safetensors_header`, the one parser and checker of safetensors headers:
    a damaged file is refused there (WeightFileError naming the file and the fault).
    """
    path = Path(path)
    header = read_safetensors_header(path)
    return {name: TensorInfo(name, path, DTYPES[t.dtype].name, t.shape, t.begin, t.end)
            for name, t in header.tensors.items()}


def read_array(info: TensorInfo) -> np.ndarray:
    """One tensor's bytes as a read-only numpy array mapped from the file (no copy; pages come
    from the page cache as they are touched). bfloat16 is widened to a float32 copy."""
    dtype = dtype_named(info.dtype)
    if dtype is None or dtype.numpy is None or info.start is None:
        readable = (d.name for d in DTYPES.values() if d.numpy is not None)
        raise InputError(
            f"Tensor {info.name} in {info.file} has dtype {info.dtype}, which headscope cannot "
            f"read without torch; supported: {', '.join(readable)}."
        )
    stored = np.dtype(dtype.numpy)
    count = math.prod(info.shape)
    if count == 0:
        return np.zeros(info.shape, dtype=np.float32 if info.dtype == "bfloat16" else stored)
    # read_safetensors_header checked that the byte range lies inside the file and
    # matches dtype x shape.
    data = np.memmap(info.file, dtype=stored, mode="r", offset=info.start,
                     shape=(count,)).view(np.ndarray)  # (count,)
    if info.dtype == "bfloat16":
        # A bfloat16 is the upper half of a float32: shifting its bits up 16 is exact.
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data.reshape(info.shape)
