"""A tiny protocol-2 pickle emitter for torch-style weight files, with no torch import.

:mod:`pickle` cannot name ``torch._utils._rebuild_tensor_v2`` without importing torch (it checks
that the global resolves), so the few opcodes a weights file needs are written by hand. The
output uses only globals that A1111's safety check, ``torch.load(weights_only=True)`` and
hyperkit's own reader allow: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and
``torch.<Type>Storage``.

Example:
    >>> import pickle
    >>> pickle.loads(PickleWriter([]).dumps({768: (1, 2.5, None, True), "name": "x"}))
    {768: (1, 2.5, None, True), 'name': 'x'}
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError
from hyperkit.formats.safe_pickle import STORAGE_NAMES

_BATCH = 1000  # items per SETITEMS/APPENDS, as pickle itself batches


class PickleWriter:
    """Serialise plain data plus numpy arrays; arrays become storages appended to ``arrays``."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.out = bytearray()

    def dumps(self, obj: Any) -> bytes:
        """The protocol-2 pickle of ``obj``."""
        self.out = bytearray(b"\x80\x02")
        self._save(obj)
        self.out += b"."
        return bytes(self.out)

    def _save(self, obj: Any) -> None:
        out = self.out
        if obj is None:
            out += b"N"
        elif obj is True:
            out += b"\x88"
        elif obj is False:
            out += b"\x89"
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, float):
            out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):
            data = obj.encode("utf-8", "surrogatepass")
            out += b"X" + struct.pack("<I", len(data)) + data
        elif isinstance(obj, np.ndarray):
            self._tensor(obj)
        elif isinstance(obj, tuple):
            self._tuple(obj)
        elif isinstance(obj, list):
            out += b"]"
            self._batched(obj, b"e", pairs=False)
        elif isinstance(obj, OrderedDict):
            out += b"ccollections\nOrderedDict\n)R"
            self._batched(list(obj.items()), b"u", pairs=True)
        elif isinstance(obj, dict):
            out += b"}"
            self._batched(list(obj.items()), b"u", pairs=True)
        else:
            raise BadInputError(f"cannot write a value of type {type(obj).__name__} into a .pt file")

    def _int(self, v: int) -> None:
        if 0 <= v < 0x100:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 0x10000:
            self.out += b"M" + struct.pack("<H", v)
        elif -(2**31) <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            n = (v.bit_length() + 8) // 8  # two's complement, sign bit included
            head = b"\x8a" + bytes([n]) if n < 256 else b"\x8b" + struct.pack("<i", n)  # LONG1 / LONG4
            self.out += head + v.to_bytes(n, "little", signed=True)

    def _tuple(self, items: tuple[Any, ...]) -> None:
        if not items:
            self.out += b")"
            return
        if len(items) > 3:
            self.out += b"("
        for item in items:
            self._save(item)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t")

    def _batched(self, items: list[Any], op: bytes, *, pairs: bool) -> None:
        for start in range(0, len(items), _BATCH):
            self.out += b"("
            for item in items[start : start + _BATCH]:
                if pairs:
                    self._save(item[0])
                    self._save(item[1])
                else:
                    self._save(item)
            self.out += op

    def _tensor(self, arr: np.ndarray) -> None:
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        storage = STORAGE_NAMES.get(str(arr.dtype))
        if storage is None:
            raise BadInputError(f"tensors of dtype {arr.dtype} cannot be written to a .pt file")
        key = str(len(self.arrays))
        self.arrays.append(arr)
        self.out += b"ctorch._utils\n_rebuild_tensor_v2\n("
        # persistent id ('storage', torch.<Type>Storage, key, location, numel)
        self.out += b"("
        self._save("storage")
        self.out += f"ctorch\n{storage}\n".encode()
        self._save(key)
        self._save("cpu")
        self._save(int(arr.size))
        self.out += b"tQ"
        self._save(0)
        self._save(tuple(int(s) for s in arr.shape))
        self._save(_contiguous_strides(arr.shape))
        self.out += b"\x89"  # requires_grad=False
        self.out += b"ccollections\nOrderedDict\n)R"  # no backward hooks
        self.out += b"tR"


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    step = 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(strides))
