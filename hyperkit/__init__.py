"""hyperkit: safe, lossless tools for hypernetwork checkpoints.

The public API is imported lazily so that ``import hyperkit`` (and ``hyperkit --help``) stays
cheap; heavy libraries load only when a function needs them.

Example:
    >>> import hyperkit
    >>> hn = hyperkit.load(hyperkit.demo.fixture_path("b_a1111_default.pt"))
    >>> hn.dims
    [8, 16]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hyperkit._version import __version__

if TYPE_CHECKING:
    from hyperkit import demo
    from hyperkit.conversion import convert, load, save
    from hyperkit.folder import convert_folder
    from hyperkit.generator.bake import bake_generator
    from hyperkit.generator.model import Generator
    from hyperkit.generator.spec import parse_spec
    from hyperkit.generator.torch_modules import GeneratorModule
    from hyperkit.inspection import inspect_file
    from hyperkit.sdkv.model import SDKVHypernetwork

__all__ = [
    "Generator",
    "GeneratorModule",
    "SDKVHypernetwork",
    "__version__",
    "bake_generator",
    "convert",
    "convert_folder",
    "demo",
    "inspect_file",
    "load",
    "parse_spec",
    "save",
]

_LAZY = {
    "convert": "hyperkit.conversion",
    "convert_folder": "hyperkit.folder",
    "load": "hyperkit.conversion",
    "save": "hyperkit.conversion",
    "inspect_file": "hyperkit.inspection",
    "SDKVHypernetwork": "hyperkit.sdkv.model",
    "Generator": "hyperkit.generator.model",
    "GeneratorModule": "hyperkit.generator.torch_modules",
    "bake_generator": "hyperkit.generator.bake",
    "parse_spec": "hyperkit.generator.spec",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "demo":
        return importlib.import_module("hyperkit.demo")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hyperkit' has no attribute {name!r}")
