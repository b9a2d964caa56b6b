"""``.safetensors`` reader/writer for sd-kv hypernetworks (hyperkit's layout, DESIGN §3.1).

Tensors are named ``"{dim}.{k|v}.{state-dict key}"`` and written in module order; every other
field is JSON-encoded under ``hyperkit.*`` next to Stability's ``modelspec.*`` keys (see
:mod:`hyperkit.sdkv.strmap`). No UI loads a hypernetwork from ``.safetensors``: it is the safe
archival and exchange form; convert back to ``.pt`` to use it.

Example:
    >>> import numpy as np, tempfile, os
    >>> hn = SDKVHypernetwork({8: ({"linear.0.weight": np.ones((16, 8), "f4")}, {})}, {"step": 1})
    >>> path = os.path.join(tempfile.mkdtemp(), "hn.safetensors")
    >>> write(hn, path, stem="hn")
    >>> read(path).metadata
    {'step': 1}
"""

from __future__ import annotations

import os

from hyperkit.formats.safetensors_io import read_safetensors, write_safetensors
from hyperkit.sdkv.model import SDKVHypernetwork
from hyperkit.sdkv.strmap import from_string_map, to_string_map


def read(path: str | os.PathLike[str]) -> SDKVHypernetwork:
    """Read a hyperkit sd-kv ``.safetensors`` file (validated header, memory-mapped tensors)."""
    tensors, metadata = read_safetensors(path)
    return from_string_map(tensors, metadata, str(path))


def write(hn: SDKVHypernetwork, path: str | os.PathLike[str], *, stem: str) -> None:
    """Write ``hn``; ``stem`` is unused (safetensors has no inner name) but keeps one signature."""
    write_safetensors(path, hn.tensors(), to_string_map(hn))
