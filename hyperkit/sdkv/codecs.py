"""The sd-kv family's codecs, one per container, in the interface :mod:`hyperkit.families` names.

Each pair maps between what a container reads or writes (an unpickled object; tensors plus a
string map; a parsed ONNX file) and the one in-memory model, :class:`SDKVHypernetwork`.

Example:
    >>> import numpy as np
    >>> hn = SDKVHypernetwork({8: ({"linear.0.weight": np.ones((16, 8), "f4")}, {})}, {"step": 1})
    >>> tensors, meta = safetensors_parts(hn)
    >>> decode_safetensors(dict(tensors), meta, "hn.safetensors").metadata
    {'step': 1}
    >>> claims_pt_object({768: ({}, {})})
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from hyperkit.formats.limits import check_value
from hyperkit.sdkv import pt_codec
from hyperkit.sdkv.model import FAMILY, SDKVHypernetwork
from hyperkit.sdkv.strmap import from_string_map, to_string_map

if TYPE_CHECKING:
    from hyperkit.formats.onnx import OnnxFile

NAME = FAMILY
MODEL = SDKVHypernetwork


def claims_pt_object(obj: Any) -> bool:
    """Whether an unpickled object has sd-kv's layout (int dim keys); the default family anyway."""
    return isinstance(obj, dict) and any(isinstance(k, int) and not isinstance(k, bool) for k in obj)


def decode_pt(obj: Any, source: str, stem: str) -> SDKVHypernetwork:
    """The hypernetwork of a ``.pt`` file's top-level object (A1111, NovelAI or kohya layout)."""
    return pt_codec.from_object(obj, source, stem)


def pt_object(hn: SDKVHypernetwork) -> dict[Any, Any]:
    """The plain object to pickle: what A1111's ``Hypernetwork.save`` writes."""
    for key, value in hn.metadata.items():
        check_value(value, f"metadata '{key}'")  # the pickle writer recurses into it
    return pt_codec.a1111_object(hn)


def normalize_pt(hn: SDKVHypernetwork) -> SDKVHypernetwork:
    """What a ``.pt`` file stores for ``hn``, as reading it will return it (used to verify)."""
    return pt_codec.normalize(hn)


def decode_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str], source: str) -> SDKVHypernetwork:
    """The hypernetwork of a hyperkit sd-kv ``.safetensors`` file (tensors in offset order)."""
    return from_string_map(tensors, metadata, source)


def safetensors_parts(hn: SDKVHypernetwork) -> tuple[Iterable[tuple[str, np.ndarray]], dict[str, str]]:
    """Tensors in module order and the string metadata (see :mod:`hyperkit.sdkv.strmap`)."""
    return hn.tensors(), to_string_map(hn)


def decode_onnx(onnx_file: OnnxFile, source: str) -> SDKVHypernetwork:
    """The hypernetwork of a hyperkit sd-kv ONNX file, its graph checked against its metadata."""
    from hyperkit.sdkv import onnx_graph

    return onnx_graph.decode(onnx_file, source)


def onnx_parts(hn: SDKVHypernetwork, stem: str) -> tuple[Any, list[tuple[str, np.ndarray]]]:
    """The K/V graph without its weights (metadata set, checked) and the weights to stream in."""
    from hyperkit.sdkv import onnx_graph

    return onnx_graph.parts(hn, stem)


def check(hn: SDKVHypernetwork) -> None:
    """The structure check :func:`hyperkit.load` runs (A1111's layout rules)."""
    from hyperkit.sdkv import structure

    structure.check(hn)
