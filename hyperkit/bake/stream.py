"""Write a baked ``.safetensors`` by streaming: untouched tensor bytes are copied in the kernel.

The output keeps the base's tensor names, dtypes, shapes and byte layout; only ``__metadata__``
and the folded tensors differ. Runs of untouched tensors go from file to file with
``os.copy_file_range`` (``sendfile``, then plain reads as fallbacks), so their bytes never enter
this process; the folded tensors of each layer are computed on a worker thread, in file order,
while the copy of what lies before them runs. Memory use is a few layers' weights, whatever the
checkpoint's size.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from hyperkit.formats.safetensors_io import write_safetensors, read_safetensors
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_safetensors(d / "a.safetensors", [("x", np.arange(4, dtype="f4")), ("y", np.ones(2, "f2"))], {})
    >>> infos = header_spans(d / "a.safetensors")
    >>> write_streaming(d / "a.safetensors", d / "b.safetensors", infos, {"y": np.zeros(2, "f2")}.get, {"m": "1"})
    >>> t, meta = read_safetensors(d / "b.safetensors"); t["x"].tolist(), t["y"].tolist(), meta
    ([0.0, 1.0, 2.0, 3.0], [0.0, 0.0], {'m': '1'})
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hyperkit.bake.sd_base import TensorInfo
from hyperkit.errors import CorruptFileError, LimitExceeded
from hyperkit.formats.arrays import raw_bytes
from hyperkit.formats.safetensors_io import MAX_HEADER, NAMES, parse_header

#: Bytes per read/write when the kernel cannot copy between the two files itself.
CHUNK = 1 << 24
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


def header_spans(path: str | os.PathLike[str]) -> dict[str, TensorInfo]:
    """Tensor name → dtype, shape and absolute byte span, in file order (header read only)."""
    import mmap

    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        header, _, start = parse_header(mm)
    finally:
        mm.close()
    from hyperkit.formats.safetensors_io import DTYPES

    return {
        name: TensorInfo(
            DTYPES[e["dtype"]], tuple(e["shape"]), start + e["data_offsets"][0], start + e["data_offsets"][1]
        )
        for name, e in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    }


def copy_range(src: int, dst: int, offset: int, count: int) -> None:
    """Append ``count`` bytes of ``src`` from ``offset`` at ``dst``'s position, in the kernel if it can."""
    end = offset + count
    kernel = hasattr(os, "copy_file_range")
    while offset < end:
        if kernel:
            try:
                n = os.copy_file_range(src, dst, end - offset, offset)
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            data = os.pread(src, min(CHUNK, end - offset), offset)
            n = os.write(dst, data) if data else 0
        if n == 0:
            raise CorruptFileError(f"source ended {end - offset} bytes early while copying (was it truncated?)")
        offset += n


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _header(infos: dict[str, TensorInfo], metadata: dict[str, str]) -> bytes:
    start = min((i.begin for i in infos.values()), default=0)
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    for name, info in infos.items():
        header[name] = {
            "dtype": NAMES[info.dtype],
            "shape": list(info.shape),
            "data_offsets": [info.begin - start, info.end - start],
        }
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    blob += b" " * ((-len(blob)) % 8)
    if len(blob) > MAX_HEADER:
        raise LimitExceeded(f"safetensors header would be {len(blob):,} bytes, over the {MAX_HEADER:,}-byte limit")
    return struct.pack("<Q", len(blob)) + blob


def write_streaming(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    infos: dict[str, TensorInfo],
    replacement: Callable[[str], np.ndarray | None],
    metadata: dict[str, str],
) -> None:
    """Write ``dst``: ``src``'s tensors in its order, each replaced by ``replacement(name)`` when
    that is not None (same dtype and shape, checked), the rest copied byte for byte."""
    out = os.open(Path(dst), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with open(src, "rb") as f:
            fd = f.fileno()
            _write_all(out, _header(infos, metadata))
            run = None  # start of the pending run of untouched bytes
            for name, info in infos.items():
                new = replacement(name)
                if new is None:
                    run = info.begin if run is None else run
                    continue
                if run is not None:
                    copy_range(fd, out, run, info.begin - run)
                    run = None
                if new.dtype.name != info.dtype or tuple(new.shape) != info.shape:
                    raise AssertionError(f"baked tensor '{name}' changed dtype or shape")
                _write_all(out, raw_bytes(new))
            if run is not None:
                last = max(i.end for i in infos.values())
                copy_range(fd, out, run, last - run)
        os.fsync(out)
    finally:
        os.close(out)
