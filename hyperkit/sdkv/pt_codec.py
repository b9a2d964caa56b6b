"""The sd-kv family's ``.pt`` codec: an unpickled top-level object <-> :class:`SDKVHypernetwork`.

Reading accepts every variant in the wild: A1111 files with any subset of the 13 metadata keys,
NovelAI's ``linear1``/``linear2`` legacy files, kohya's list-valued files, fp16/bf16 tensors (the
container, :mod:`hyperkit.formats.torchfile`, already turned the pickle into plain values and
numpy arrays without running anything).

Writing produces what *all* consumers load: a plain dict with ``int`` dim keys, each a tuple of
two ``OrderedDict`` in module order, then all 13 metadata keys with A1111's types (missing ones
filled with A1111's defaults, ``activation_func`` ``None`` written as ``"linear"`` because ComfyUI
refuses ``None``); the container writes it in the minimal zip layout A1111's safety check accepts.

Example:
    >>> import numpy as np
    >>> sd = {"linear.0.weight": np.ones((16, 8), "f4"), "linear.0.bias": np.ones(16, "f4"),
    ...       "linear.1.weight": np.ones((8, 16), "f4"), "linear.1.bias": np.ones(8, "f4")}
    >>> obj = a1111_object(SDKVHypernetwork({8: (sd, sd)}, {"name": "demo"}))
    >>> from_object(obj, "demo.pt").effective_metadata()["activation_func"]
    'linear'
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError, CorruptFileError, StructureError, UnsupportedError
from hyperkit.formats.limits import check_value
from hyperkit.sdkv.model import A1111_METADATA_KEYS, SDKVHypernetwork, StateDict

_PLAIN = (type(None), bool, int, float, str)


def _plain_copy(value: Any) -> Any:
    """A copy of a metadata value made only of plain types (the reader's ``OrderedDict`` stand-ins
    become plain ordered dicts); raises ``TypeError`` for anything else (tensors, stand-ins)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        return type(value)(_plain_copy(v) for v in value)
    if isinstance(value, dict):
        return {_plain_copy(k): _plain_copy(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


def _state(value: Any, where: str) -> StateDict:
    if not isinstance(value, dict):
        raise CorruptFileError(f"{where} is a {type(value).__name__}, expected a state dict")
    for key, arr in value.items():
        if not isinstance(key, str) or not isinstance(arr, np.ndarray):
            raise CorruptFileError(f"{where} holds a non-tensor entry {key!r}")
    return dict(value)


def from_object(obj: Any, source: str, default_name: str = "hypernetwork") -> SDKVHypernetwork:
    """Interpret an unpickled top-level object as an sd-kv hypernetwork, precisely or not at all."""
    if not isinstance(obj, dict):
        raise BadInputError(f"{source}: top-level object is a {type(obj).__name__}, not a hypernetwork dict")
    if not any(isinstance(k, int) and not isinstance(k, bool) for k in obj) and not any(
        isinstance(k, str) and k.strip().isdigit() for k in obj
    ):
        raise BadInputError(
            f"{source}: no hypernetwork layers (int dim keys) found; top-level keys: "
            + ", ".join(repr(k) for k in list(obj)[:8]),
            hint="is this a model checkpoint, LoRA or embedding rather than a hypernetwork?",
        )
    modules: dict[int, tuple[StateDict, StateDict]] = {}
    metadata: dict[str, Any] = {}
    containers = set()
    for key, value in obj.items():
        if isinstance(key, int) and not isinstance(key, bool):
            check_value(key, f"{source}: dim key")
            if not isinstance(value, list | tuple) or len(value) != 2:
                raise CorruptFileError(f"{source}: a dim holds {type(value).__name__}, expected (k, v)")
            containers.add("list" if isinstance(value, list) else "tuple")
            modules[key] = (_state(value[0], f"dim {key} (k)"), _state(value[1], f"dim {key} (v)"))
        elif isinstance(key, str) and key.strip().isdigit():
            raise StructureError(
                f"{source}: dim key {key!r} is a string; A1111 and ComfyUI only read int keys, so this "
                "hypernetwork would silently do nothing",
                hint="the file was written by a broken tool; its author should save int dim keys",
            )
        elif isinstance(key, str):
            check_value(key, f"{source}: metadata key")
            check_value(value, f"{source}: metadata '{key}'")
            try:
                metadata[key] = _plain_copy(value)
            except TypeError:
                kind = "a tensor" if isinstance(value, np.ndarray) else type(value).__name__
                raise UnsupportedError(f"{source}: metadata '{key}' holds {kind}, not a plain value") from None
        else:
            raise CorruptFileError(f"{source}: unexpected top-level key {key!r}")
    return SDKVHypernetwork(
        modules=modules,
        metadata=metadata,
        key_order=list(obj),
        container="list" if containers == {"list"} else "tuple",
        default_name=default_name,
    )


def a1111_object(hn: SDKVHypernetwork) -> dict[Any, Any]:
    """The plain dict A1111's ``Hypernetwork.save`` would write for this hypernetwork."""
    obj: dict[Any, Any] = {dim: (OrderedDict(k), OrderedDict(v)) for dim, (k, v) in hn.modules.items()}
    meta = hn.effective_metadata()
    if meta["activation_func"] is None:
        meta["activation_func"] = "linear"  # ComfyUI refuses None; A1111 treats both as identity
    for key in A1111_METADATA_KEYS:
        obj[key] = meta[key]
    for key, value in hn.extra_metadata().items():
        obj[key] = value
    return obj


def normalize(hn: SDKVHypernetwork) -> SDKVHypernetwork:
    """What :func:`write` stores for ``hn``, as :func:`read` will return it (used to verify)."""
    return from_object(a1111_object(hn), "normalized", hn.default_name)
