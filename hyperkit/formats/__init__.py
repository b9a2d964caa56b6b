"""The format registry: one reader/writer module per file format, imported only when used.

Each format module exposes ``read(path) -> model`` and ``write(model, path, *, stem) -> None``,
where the model is the family's one in-memory representation. Conversions go through that model,
so adding a format adds one module, never N converters.

Example:
    >>> names()
    ['pt', 'safetensors', 'onnx']
    >>> for_path("anime.safetensors").name
    'safetensors'
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from hyperkit.errors import UnknownFormatError


@dataclass(frozen=True)
class Format:
    """A registered file format: its name, the suffixes it owns and the module doing the work."""

    name: str
    suffixes: tuple[str, ...]
    module: str

    def load_module(self) -> ModuleType:
        """Import the reader/writer module (heavy dependencies are imported only here)."""
        return importlib.import_module(self.module)


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> None:
    """Add a format; a name or suffix registered twice is a programming error."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"format '{fmt.name}' is already registered")
    owned = {s for f in _REGISTRY.values() for s in f.suffixes}
    if clash := owned.intersection(fmt.suffixes):
        raise ValueError(f"suffixes {sorted(clash)} are already registered")
    _REGISTRY[fmt.name] = fmt


register(Format("pt", (".pt", ".pth", ".ckpt", ".bin"), "hyperkit.formats.pt"))
register(Format("safetensors", (".safetensors", ".sft"), "hyperkit.formats.safetensors"))
register(Format("onnx", (".onnx",), "hyperkit.formats.onnx"))


def names() -> list[str]:
    """Registered format names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> Format:
    """The format called ``name``; unknown names list the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownFormatError(f"unknown format '{name}' (known: {', '.join(_REGISTRY)})") from None


def suffixes() -> list[str]:
    """Every suffix some format owns."""
    return [s for f in _REGISTRY.values() for s in f.suffixes]


def for_path(path: str | os.PathLike[str]) -> Format:
    """The format owning ``path``'s suffix (case-insensitive), else one sniffed from its bytes."""
    suffix = Path(path).suffix.lower()
    for fmt in _REGISTRY.values():
        if suffix in fmt.suffixes:
            return fmt
    sniffed = sniff(path)
    if sniffed is None:
        raise UnknownFormatError(
            f"{path}: cannot tell the format from the suffix '{suffix}' or the content",
            hint=f"use one of {', '.join(suffixes())}, or pass --to",
        )
    return _REGISTRY[sniffed]


def sniff(path: str | os.PathLike[str]) -> str | None:
    """Guess a format from the first bytes of an existing file, or ``None``."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pt"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    return None
