"""Small helpers on numpy arrays shared by the format modules: raw bytes and bit-exact equality.

Example:
    >>> import numpy as np
    >>> bytes(raw_bytes(np.array([1.0], "f2")))
    b'\\x00<'
    >>> bit_equal(np.array([np.nan], "f4"), np.array([np.nan], "f4"))
    True
"""

from __future__ import annotations

import numpy as np


def raw_bytes(arr: np.ndarray) -> memoryview:
    """The array's bytes in C order as a flat ``uint8`` memoryview (no copy when contiguous)."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    return memoryview(flat.view(np.uint8).data)


def bit_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, same shape and the very same bytes (so NaN payloads and -0.0 count too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(np.asarray(raw_bytes(a)), np.asarray(raw_bytes(b))))
