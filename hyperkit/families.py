"""The family registry: which hypernetwork families exist and how a container names its family.

Containers (:mod:`hyperkit.formats`) know bytes and tensors; families (``hyperkit/sdkv/``,
``hyperkit/generator/``) know what the tensors mean. Each family package has a ``codecs`` module
with one decode/encode pair per container::

    decode_pt(obj, source, stem) / pt_object(model)
    decode_safetensors(tensors, metadata, source) / safetensors_parts(model)
    decode_onnx(onnx_file, source) / onnx_parts(model, stem)

plus ``MODEL`` (its model class) and ``claims_pt_object(obj)``. Which family a file holds comes
from the file itself: the ``hyperkit.family`` metadata of ``.safetensors`` and ONNX, the shape of a
``.pt`` file's top-level object. Adding a family adds a folder and one line here, never a
converter per pair of formats. Modules are named by string and imported on first use, so
containers never import a family at import time and ``hyperkit --help`` imports neither.

Example:
    >>> names()
    ['sd-kv', 'generator']
    >>> for_metadata({"hyperkit.family": "generator"}).name
    'generator'
    >>> for_metadata({}).name  # no family: the default family's decoder explains what is wrong
    'sd-kv'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

FAMILY_KEY = "hyperkit.family"


@dataclass(frozen=True)
class Family:
    """A registered family: its ``hyperkit.family`` name and the module holding its codecs."""

    name: str
    codecs: str

    def load(self) -> ModuleType:
        """Import the family's codec module (its heavy dependencies load only when used)."""
        return importlib.import_module(self.codecs)


_REGISTRY: dict[str, Family] = {}
#: The family that decodes files naming no (or an unknown) family: sd-kv, whose messages for
#: "not a hyperkit file" users and tests already know.
DEFAULT = "sd-kv"


def register(family: Family) -> None:
    """Add a family; registering a name twice is a programming error."""
    if family.name in _REGISTRY:
        raise ValueError(f"family '{family.name}' is already registered")
    _REGISTRY[family.name] = family


register(Family("sd-kv", "hyperkit.sdkv.codecs"))
register(Family("generator", "hyperkit.generator.codecs"))


def names() -> list[str]:
    """Registered family names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> Family:
    """The family called ``name`` (``KeyError`` for an unknown one)."""
    return _REGISTRY[name]


def for_metadata(metadata: dict[str, str]) -> Family:
    """The family a ``.safetensors`` header or ONNX ``metadata_props`` names, else the default."""
    return _REGISTRY.get(metadata.get(FAMILY_KEY, ""), _REGISTRY[DEFAULT])


def for_pt_object(obj: Any) -> Family:
    """The family whose ``.pt`` layout ``obj`` (an unpickled top-level object) has, else the default."""
    for family in _REGISTRY.values():
        if family.name != DEFAULT and family.load().claims_pt_object(obj):
            return family
    return _REGISTRY[DEFAULT]


def for_model(model: Any) -> Family:
    """The family of an in-memory model (by its class)."""
    for family in _REGISTRY.values():
        if isinstance(model, family.load().MODEL):
            return family
    raise TypeError(f"{type(model).__name__} is not the model of any registered hypernetwork family")
