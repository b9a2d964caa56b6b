"""A validating, memory-mapped ``.safetensors`` reader and a streaming writer, in numpy.

The reader applies the checks of the reference Rust implementation before any tensor is used:
header length capped and inside the file, UTF-8 JSON object, no duplicate keys, known dtypes,
``numel * itemsize == end - begin``, offsets contiguous with no overlap or hole, and the buffer
covering the file exactly (no trailing bytes, so no polyglot files). bf16 tensors come back as
``ml_dtypes.bfloat16`` arrays, which the ``safetensors`` package's numpy API cannot do.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.safetensors")
    >>> write_safetensors(path, [("a", np.arange(3, dtype="f4"))], {"k": "v"})
    >>> tensors, meta = read_safetensors(path)
    >>> tensors["a"], meta
    (array([0., 1., 2.], dtype=float32), {'k': 'v'})
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError, CorruptFileError, LimitExceeded
from hyperkit.formats.arrays import raw_bytes, release
from hyperkit.formats.dtypes import numpy_dtype

MAX_HEADER = 100_000_000

#: safetensors dtype code -> numpy dtype name (resolved by :func:`numpy_dtype`, lazily for bf16).
DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "U64": "uint64",
}
NAMES: dict[str, str] = {v: k for k, v in DTYPES.items()}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise CorruptFileError(f"safetensors header lists '{key}' twice")
        seen[key] = value
    return seen


def parse_header(data: bytes | mmap.mmap) -> tuple[dict[str, Any], dict[str, str], int]:
    """Validate the header of a whole file's bytes; return (entries, metadata, data start)."""
    if len(data) < 8:
        raise CorruptFileError(f"file is too short for a safetensors header ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER:
        raise CorruptFileError(f"safetensors header length {n} exceeds the {MAX_HEADER}-byte limit")
    if 8 + n > len(data):
        raise CorruptFileError(f"safetensors header length {n} runs past the end of the file (truncated?)")
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, CorruptFileError):
            raise
        raise CorruptFileError(f"safetensors header is not valid UTF-8 JSON: {e}") from e
    if not isinstance(header, dict):
        raise CorruptFileError("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CorruptFileError("safetensors __metadata__ must map strings to strings")
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CorruptFileError(f"safetensors entry '{name}' is malformed")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CorruptFileError(f"safetensors entry '{name}' has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise CorruptFileError(f"safetensors entry '{name}' has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise CorruptFileError(f"safetensors entry '{name}' has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if int(np.prod(shape, dtype=object)) * numpy_dtype(DTYPES[dtype]).itemsize != end - begin:
            raise CorruptFileError(
                f"safetensors entry '{name}': byte size {end - begin} does not match shape {shape} of {dtype}"
            )
        spans.append((begin, end, name))
    expected = 0
    for begin, end, name in sorted(spans):
        if begin != expected or end < begin:
            raise CorruptFileError(f"safetensors entry '{name}' has an invalid offset (overlap or hole)")
        expected = end
    start = 8 + n
    if start + expected != len(data):
        raise CorruptFileError(
            f"safetensors buffer covers {expected} bytes but the file has {len(data) - start} after the "
            "header (trailing bytes or truncated)"
        )
    return header, metadata, start


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor (zero-copy views of a read-only mmap, in offset order) and the metadata."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise CorruptFileError("file is empty (0 bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    header, metadata, start = parse_header(mm)
    tensors = {}
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        begin, _ = entry["data_offsets"]
        dtype = numpy_dtype(DTYPES[entry["dtype"]])
        count = int(np.prod(entry["shape"], dtype=object))
        try:
            arr = np.frombuffer(mm, dtype=dtype, count=count, offset=start + begin)
            tensors[name] = arr.reshape(entry["shape"])
        except (ValueError, OverflowError) as e:
            raise CorruptFileError(f"safetensors entry '{name}' has an unusable shape {entry['shape']}: {e}") from e
    return tensors, metadata


def write_safetensors(
    path: str | os.PathLike[str], tensors: Iterable[tuple[str, np.ndarray]], metadata: dict[str, str]
) -> None:
    """Write tensors in the given order; the header is padded with spaces to 8-byte alignment."""
    items = list(tensors)
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, arr in items:
        dtype = NAMES.get(arr.dtype.name)
        if dtype is None:
            raise BadInputError(f"tensor '{name}' has dtype {arr.dtype}, which safetensors cannot store")
        if name in header:
            raise BadInputError(f"tensor name '{name}' is used twice")
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    blob += b" " * ((-len(blob)) % 8)
    if len(blob) > MAX_HEADER:  # the reference reader (and ours) would refuse the file
        raise LimitExceeded(f"safetensors header would be {len(blob):,} bytes, over the {MAX_HEADER:,}-byte limit")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, arr in items:
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            f.write(raw_bytes(arr))
            release(arr)  # a memory-mapped source's pages leave this process once written
