"""Lossless mapping between an :class:`SDKVHypernetwork` and flat ``{name: tensor}`` plus a
``{str: str}`` metadata map — the shape both ``.safetensors`` and ONNX ``metadata_props`` take.

Tensor names are ``"{dim}.{k|v}.{state-dict key}"`` (e.g. ``768.k.linear.0.weight``). Every
metadata field is JSON-encoded under ``hyperkit.<field>``; JSON keeps ``1`` vs ``1.0``, ``None`` and
bools, and tuples/dicts are tagged (``{"$tuple": [...]}``, ``{"$dict": [[k, v], ...]}``) so
nothing changes type. ``hyperkit.key_order`` keeps the file's top-level order and
``hyperkit.container`` whether the per-dim pair was a tuple or a list, and
``hyperkit.default_name`` the original file stem (A1111's name for a file without ``name``).

Example:
    >>> import numpy as np
    >>> hn = SDKVHypernetwork({8: ({"linear.0.weight": np.ones((1, 8), "f4")}, {})},
    ...                       metadata={"layer_structure": [1.0, 2.0, 1.0]})
    >>> meta = to_string_map(hn)
    >>> meta["hyperkit.layer_structure"], meta["modelspec.architecture"]
    ('[1.0, 2.0, 1.0]', 'unknown/hypernetwork')
    >>> back = from_string_map(dict(hn.tensors()), meta, "x")
    >>> back.metadata == hn.metadata and back.key_order == hn.key_order
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError, CorruptFileError, UnknownFormatError
from hyperkit.formats.limits import check_value
from hyperkit.paths import text_name
from hyperkit.sdkv.model import FAMILY, KV_NAMES, SDKVHypernetwork, StateDict

FORMAT_VERSION = "1"
PREFIX = "hyperkit."
RESERVED = ("family", "format_version", "key_order", "container", "default_name")
IMPLEMENTATION = "https://github.com/AUTOMATIC1111/stable-diffusion-webui"


def encode_value(value: Any) -> Any:
    """Turn a metadata value into JSON-ready data, tagging tuples and dicts."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode_value(v) for v in value]}
    if isinstance(value, dict):
        return {"$dict": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    raise BadInputError(f"metadata value of type {type(value).__name__} cannot be stored losslessly")


def decode_value(data: Any) -> Any:
    """Inverse of :func:`encode_value`."""
    if isinstance(data, list):
        return [decode_value(v) for v in data]
    if isinstance(data, dict):
        if set(data) == {"$tuple"} and isinstance(data["$tuple"], list):
            return tuple(decode_value(v) for v in data["$tuple"])
        if set(data) == {"$dict"} and isinstance(data["$dict"], list):
            pairs = data["$dict"]
            if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise CorruptFileError("malformed $dict in hyperkit metadata")
            try:
                return {decode_value(k): decode_value(v) for k, v in pairs}
            except TypeError as e:  # an unhashable (list or dict) key
                raise CorruptFileError(f"malformed $dict in hyperkit metadata: {e}") from e
        raise CorruptFileError(f"unexpected JSON object in hyperkit metadata: {sorted(data)}")
    return data


def modelspec(hn: SDKVHypernetwork) -> dict[str, str]:
    """Stability's ModelSpec keys (MUST fields) for a hypernetwork; architecture from the dims."""
    arch = hn.architecture() or "unknown"
    title = hn.metadata.get("name")
    return {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{arch}/hypernetwork",
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": title if isinstance(title, str) else hn.default_name,
    }


def to_string_map(hn: SDKVHypernetwork) -> dict[str, str]:
    """The ``{str: str}`` metadata for a hypernetwork (tensors go by :meth:`~SDKVHypernetwork.tensors`)."""
    out = {
        PREFIX + "family": FAMILY,
        PREFIX + "format_version": FORMAT_VERSION,
        PREFIX + "key_order": json.dumps(hn.key_order),
        PREFIX + "container": hn.container,
        # A1111 names a file without 'name' after its stem; keep the original stem across formats.
        PREFIX + "default_name": hn.default_name,
    }
    for key, value in hn.metadata.items():
        check_value(key, "metadata key")
        check_value(value, f"metadata '{key}'")
        if key in RESERVED:
            raise BadInputError(f"metadata key '{key}' collides with hyperkit's own '{PREFIX}{key}'")
        out[PREFIX + key] = json.dumps(encode_value(value))
    out.update(modelspec(hn))
    return out


def _loads(meta: dict[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError, RecursionError) as e:
        raise CorruptFileError(f"{source}: metadata '{key}' is missing or not valid JSON") from e


def from_string_map(tensors: dict[str, np.ndarray], meta: dict[str, str], source: str) -> SDKVHypernetwork:
    """Rebuild a hypernetwork from flat tensors (in module order) and the string metadata."""
    family = meta.get(PREFIX + "family")
    if family != FAMILY:
        raise UnknownFormatError(
            f"{source}: not a hyperkit sd-kv hypernetwork (hyperkit.family is {family!r})",
            hint="hyperkit reads .safetensors/ONNX files that hyperkit wrote; convert the original .pt",
        )
    if meta.get(PREFIX + "format_version") != FORMAT_VERSION:
        raise UnknownFormatError(
            f"{source}: unsupported hyperkit.format_version {meta.get(PREFIX + 'format_version')!r}"
        )
    key_order = _loads(meta, PREFIX + "key_order", source)
    container = meta.get(PREFIX + "container", "tuple")
    if not isinstance(key_order, list) or container not in ("tuple", "list"):
        raise CorruptFileError(f"{source}: malformed hyperkit.key_order or hyperkit.container")
    modules: dict[int, tuple[StateDict, StateDict]] = {
        k: ({}, {}) for k in key_order if isinstance(k, int) and not isinstance(k, bool)
    }
    for name, arr in tensors.items():
        if not isinstance(name, str):
            raise CorruptFileError(f"{source}: tensor name {name!r} is not text")
        dim_s, _, rest = name.partition(".")
        kv, _, key = rest.partition(".")
        canonical = dim_s.isascii() and dim_s.isdigit() and str(int(dim_s)) == dim_s
        if not canonical or int(dim_s) not in modules or kv not in KV_NAMES or not key:
            raise CorruptFileError(f"{source}: unexpected tensor name {name!r}")
        state = modules[int(dim_s)][KV_NAMES.index(kv)]
        if key in state:
            raise CorruptFileError(f"{source}: tensor name {name!r} appears twice")
        state[key] = arr
    check_value(key_order, f"{source}: hyperkit.key_order")
    metadata = {}
    for key in key_order:
        if isinstance(key, str):
            value = _loads(meta, PREFIX + key, source)
            check_value(value, f"{source}: metadata '{key}'")  # before decode_value recurses into it
            metadata[key] = decode_value(value)
    return SDKVHypernetwork(
        modules=modules,
        metadata=metadata,
        key_order=key_order,
        container=container,
        default_name=meta.get(PREFIX + "default_name") or text_name(Path(source).stem) or "hypernetwork",
    )
