"""Small helpers on numpy arrays shared by the format modules: raw bytes, bit-exact equality, and
handing the pages of memory-mapped arrays back to the kernel.

Example:
    >>> import numpy as np
    >>> bytes(raw_bytes(np.array([1.0], "f2")))
    b'\\x00<'
    >>> bit_equal(np.array([np.nan], "f4"), np.array([np.nan], "f4"))
    True
    >>> release(np.zeros(3))  # not memory-mapped: nothing to do
    False
"""

from __future__ import annotations

import mmap

import numpy as np

#: Bytes compared per step in :func:`bit_equal`; bounds the temporary ``==`` result it allocates.
COMPARE_CHUNK = 1 << 20


def raw_bytes(arr: np.ndarray) -> memoryview:
    """The array's bytes in C order as a flat ``uint8`` memoryview (no copy when contiguous)."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    return memoryview(flat.view(np.uint8).data)


def bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, same shape and the very same bytes (so NaN payloads and -0.0 count too).

    Compared a chunk at a time, so checking a large tensor allocates no array of its size.
    """
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    x, y = np.asarray(raw_bytes(a)), np.asarray(raw_bytes(b))
    return all(
        np.array_equal(x[i : i + COMPARE_CHUNK], y[i : i + COMPARE_CHUNK]) for i in range(0, x.size, COMPARE_CHUNK)
    )


def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` that ``arr`` is a view into, following ``.base`` (views of views, memoryviews).

    ``as_strided`` views hang off a helper object that exposes ``__array_interface__`` and keeps
    the viewed array as its ``.base``, so those links are followed too.
    """
    base: object = arr
    while isinstance(base, np.ndarray) or (hasattr(base, "__array_interface__") and hasattr(base, "base")):
        base = getattr(base, "base", None)
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def release(arr: np.ndarray) -> bool:
    """Drop the pages under ``arr`` from this process's RSS if it views a read-only ``mmap``.

    A file-backed page counts in the resident set once touched and stays until unmapped, so
    reading every tensor of a memory-mapped file once makes the whole file resident.
    ``MADV_DONTNEED`` unmaps the pages from the process only: they stay in the page cache and a
    later access maps them in again, reading the same bytes. That holds for read-only (shared)
    mappings only — on a private writable mapping it would discard changes — so anything else is
    left alone. The range is rounded out to whole pages; neighbours sharing a page just fault back
    in if used. Returns whether pages were released (``False``: not an mmap view, or unsupported).
    """
    mm = _mapping(arr)
    if mm is None or arr.size == 0 or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    with memoryview(mm) as view:
        if not view.readonly:
            return False
    # Byte span of the view, whatever its strides, relative to the start of the mapping.
    lo = hi = arr.__array_interface__["data"][0]
    for n, stride in zip(arr.shape, arr.strides, strict=True):
        lo, hi = lo + min(0, (n - 1) * stride), hi + max(0, (n - 1) * stride)
    hi += arr.itemsize
    origin = np.frombuffer(mm, np.uint8, count=1).__array_interface__["data"][0]
    start = (lo - origin) // mmap.PAGESIZE * mmap.PAGESIZE
    stop = min(len(mm), hi - origin)
    if not 0 <= start < stop:
        return False
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, stop - start)
    except (OSError, ValueError):  # the advice is an optimisation: never fail a conversion over it
        return False
    return True
