"""The ``.safetensors`` container for hyperkit's families (layouts in ``docs/formats.md``).

Tensors and the string ``__metadata__`` are read and written by :mod:`safetensors_io`; what they
mean is the family's: ``hyperkit.family`` in the metadata picks the decoder
(:mod:`hyperkit.families`). No UI loads a hypernetwork from ``.safetensors``: for sd-kv it is the
safe archival and exchange form; convert back to ``.pt`` to use it.

Example:
    >>> import numpy as np, tempfile, os
    >>> from hyperkit.sdkv.model import SDKVHypernetwork
    >>> hn = SDKVHypernetwork({8: ({"linear.0.weight": np.ones((16, 8), "f4")}, {})}, {"step": 1})
    >>> path = os.path.join(tempfile.mkdtemp(), "hn.safetensors")
    >>> write(hn, path, stem="hn")
    >>> read(path).metadata
    {'step': 1}
"""

from __future__ import annotations

import os
from typing import Any

from hyperkit import families
from hyperkit.formats.safetensors_io import read_safetensors, write_safetensors


def read(path: str | os.PathLike[str]) -> Any:
    """Read a hyperkit ``.safetensors`` file of any family (validated header, memory-mapped tensors)."""
    tensors, metadata = read_safetensors(path)
    return families.for_metadata(metadata).load().decode_safetensors(tensors, metadata, str(path))


def write(model: Any, path: str | os.PathLike[str], *, stem: str) -> None:
    """Write a family model; ``stem`` is unused (safetensors has no inner name) but keeps one signature."""
    tensors, metadata = families.for_model(model).load().safetensors_parts(model)
    write_safetensors(path, tensors, metadata)
