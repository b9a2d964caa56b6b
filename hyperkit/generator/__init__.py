"""The ``generator`` family: weight-generating hypernetworks H(z) -> θ for a target f(x; θ).

Modules: :mod:`~hyperkit.generator.spec` and :mod:`~hyperkit.generator.spec_target` (the
``generator/0`` spec, validated; ``schema.json`` is the same rules as a JSON Schema),
:mod:`~hyperkit.generator.model` (the in-memory :class:`Generator`), :mod:`~hyperkit.generator.codecs`
(``.pt``, ``.safetensors``, hyper-ONNX), :mod:`~hyperkit.generator.onnx_graph` (the ONNX graphs),
:mod:`~hyperkit.generator.torch_modules` (authoring and reference modules, needs torch),
:mod:`~hyperkit.generator.bake` (static target ONNX with parity), and
:mod:`~hyperkit.generator.hypnettorch` (import). Nothing heavy is imported here.

Example:
    >>> schema()["properties"]["hyperkit_spec"]["const"]
    'generator/0'
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def schema() -> dict[str, Any]:
    """The JSON Schema of a ``generator/0`` spec document, shipped with the package."""
    return dict(json.loads(resources.files(__name__).joinpath("schema.json").read_text(encoding="utf-8")))
