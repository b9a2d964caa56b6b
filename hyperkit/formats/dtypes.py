"""Tensor element types by name, with ``bfloat16`` loaded lazily.

numpy has no bfloat16; ``ml_dtypes`` provides it but costs about half a second of start-up, so it
is imported only when a bf16 tensor is actually met, never for the common fp32/fp16 files.

Example:
    >>> numpy_dtype("float16").str
    '<f2'
    >>> numpy_dtype("float32").name
    'float32'
"""

from __future__ import annotations

import numpy as np


def numpy_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype called ``name`` (``bfloat16`` imports ml_dtypes on first use)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name).newbyteorder("<")
