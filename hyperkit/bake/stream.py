"""Write a baked ``.safetensors`` by streaming: untouched tensor bytes are copied in the kernel.

The output keeps the base's tensor names, dtypes, shapes and byte layout; only ``__metadata__``
and the folded tensors differ. Runs of untouched tensors go from file to file with
``os.copy_file_range`` (plain reads and writes as the fallback), so their bytes never enter this
process. The copy runs first and never waits: the folded tensors, computed meanwhile on worker
threads, are written at their offsets whenever they are ready. Memory use is the folded tensors
not yet written (at most the K/V weights, a small part of a checkpoint), whatever its size.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from hyperkit.formats.safetensors_io import write_safetensors, read_safetensors
    >>> from hyperkit.bake.sd_base import open_safetensors
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_safetensors(d / "a.safetensors", [("x", np.arange(4, dtype="f4")), ("y", np.ones(2, "f2"))], {})
    >>> infos = open_safetensors(d / "a.safetensors", layout=False).infos
    >>> new = {"y": np.zeros(2, "f2")}
    >>> write_streaming(d / "a.safetensors", d / "b.safetensors", infos, lambda n, wait: new[n], ["y"], {"m": "1"})
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
from hyperkit.formats.safetensors_io import MAX_HEADER, NAMES

#: Bytes per read/write when the kernel cannot copy between the two files itself.
CHUNK = 1 << 24
#: Bytes copied between looks at the replacements computed meanwhile.
COPY_CHUNK = 1 << 26
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


def copy_range(src: int, dst: int, offset: int, count: int, dst_offset: int) -> None:
    """Copy ``count`` bytes of ``src`` from ``offset`` to ``dst`` at ``dst_offset``, in the kernel
    when it can."""
    end = offset + count
    kernel = hasattr(os, "copy_file_range")
    while offset < end:
        if kernel:
            try:
                n = os.copy_file_range(src, dst, end - offset, offset, dst_offset)
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            data = os.pread(src, min(CHUNK, end - offset), offset)
            n = os.pwrite(dst, data, dst_offset) if data else 0
        if n == 0:
            raise CorruptFileError(f"source ended {end - offset} bytes early while copying (was it truncated?)")
        offset, dst_offset = offset + n, dst_offset + n


def pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


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


def untouched_runs(infos: dict[str, TensorInfo], changed: set[str]) -> list[tuple[int, int]]:
    """``(begin, end)`` byte spans of consecutive tensors not in ``changed``, in file order.

    Example:
        >>> i = {n: TensorInfo("float16", (2,), b, b + 4) for n, b in (("a", 8), ("b", 12), ("c", 16))}
        >>> untouched_runs(i, {"b"}), untouched_runs(i, set())
        ([(8, 12), (16, 20)], [(8, 20)])
    """
    runs: list[tuple[int, int]] = []
    for name, info in infos.items():
        if name in changed:
            continue
        if runs and runs[-1][1] == info.begin:
            runs[-1] = (runs[-1][0], info.end)
        else:
            runs.append((info.begin, info.end))
    return runs


def write_streaming(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    infos: dict[str, TensorInfo],
    take: Callable[[str, bool], np.ndarray | None],
    changed: list[str],
    metadata: dict[str, str],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write ``dst``: ``src``'s tensors in its layout, those named in ``changed`` replaced by
    ``take(name, wait)`` (same dtype and shape, checked), the rest copied byte for byte.

    The untouched bytes are copied first, in chunks, while the replacements are computed
    elsewhere; between chunks every replacement already computed is written at its offset
    (``take(name, False)`` returns None while it is not), and the rest are waited for at the end.
    So the copy never waits for the computation, whatever the order of the tensors in the file.
    ``progress(n, total)`` hears of every ``n`` more bytes of the ``total`` tensor bytes written.
    """
    replaced = set(changed)
    pending = [n for n in infos if n in replaced]
    data_start = min((i.begin for i in infos.values()), default=0)
    total = sum(i.end - i.begin for i in infos.values())
    report = progress or (lambda n, total: None)
    out = os.open(Path(dst), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        header = _header(infos, metadata)
        pwrite_all(out, header, 0)
        shift = len(header) - data_start

        def put(name: str, arr: np.ndarray) -> None:
            info = infos[name]
            if arr.dtype.name != info.dtype or tuple(arr.shape) != info.shape:
                raise AssertionError(f"baked tensor '{name}' changed dtype or shape")
            pwrite_all(out, raw_bytes(arr), info.begin + shift)
            report(info.end - info.begin, total)

        def flush(wait: bool) -> None:
            for name in list(pending):
                arr = take(name, wait)
                if arr is not None:
                    put(name, arr)
                    pending.remove(name)

        with open(src, "rb") as f:
            for begin, end in untouched_runs(infos, replaced):
                for at in range(begin, end, COPY_CHUNK):
                    count = min(COPY_CHUNK, end - at)
                    copy_range(f.fileno(), out, at, count, at + shift)
                    report(count, total)
                    flush(wait=False)
        flush(wait=True)
        if pending:
            raise AssertionError(f"baked tensors never written: {', '.join(pending[:5])}")
        size = max((i.end for i in infos.values()), default=data_start) + shift
        if os.fstat(out).st_size != size:
            raise AssertionError(f"wrote {os.fstat(out).st_size} bytes, expected {size}")
    finally:
        os.close(out)
