"""The target half of a generator spec: layers with shape propagation, and the slots that feed them.

Each layer is checked against the shape flowing into it (``linear.in`` against the last
dimension, ``conv2d.in`` against the channels, ``layernorm.shape`` against the trailing
dimensions), so an inconsistent spec fails on load with the layer, the field and both numbers,
never later inside a matmul. Slots must name every target parameter exactly once; their order
defines θ.

Example:
    >>> from hyperkit.generator.spec import _Doc
    >>> target = {"input": [3, 8, 8], "layers": [
    ...     {"op": "conv2d", "name": "c", "in": 3, "out": 4, "kernel": 3, "stride": 2, "padding": 1, "bias": False},
    ...     {"op": "flatten"}, {"op": "linear", "name": "fc", "in": 64, "out": 2, "bias": True}]}
    >>> layers, out, _ = parse_target(_Doc(target, "target", "g"))
    >>> [p for layer in layers for p in layer.params], out
    ([('c.weight', (4, 3, 3, 3)), ('fc.weight', (2, 64)), ('fc.bias', (2,))], (2,))
"""

from __future__ import annotations

import math
import re
from typing import Any

from hyperkit.errors import LimitExceeded
from hyperkit.generator.spec import (
    ACTIVATIONS,
    MAX_ELEMENTS,
    MAX_KERNEL,
    MAX_LAYERS,
    MODES,
    Layer,
    Slot,
    SpecError,
    _Doc,
    _kind,
)

OPS = ("linear", "conv2d", "layernorm", "flatten", *ACTIVATIONS)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def parse_target(doc: _Doc) -> tuple[tuple[Layer, ...], tuple[int, ...], tuple[int, ...]]:
    """The layers, the output shape (without batch) and the input shape of ``target``."""
    input_shape = doc.ints("input", min_len=1, max_len=8)
    raw = doc.get("layers")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_LAYERS:
        doc.fail(f"spec field 'target.layers' must be a list of 1..{MAX_LAYERS} layers, got {_kind(raw)}")
    doc.done()
    shape = input_shape
    _check_elements(shape, doc, "target.input")
    layers: list[Layer] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        layer, shape = _layer(_Doc(item, f"target.layers[{i}]", doc.where), shape)
        if layer.name is not None:
            if layer.name in names:
                doc.fail(f"spec field 'target.layers[{i}].name': '{layer.name}' is used by an earlier layer")
            names.add(layer.name)
        layers.append(layer)
    return tuple(layers), shape, input_shape


def _check_elements(shape: tuple[int, ...], doc: _Doc, path: str) -> None:
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise LimitExceeded(f"{doc.where}: spec field '{path}' implies {n:,} values per sample, over {MAX_ELEMENTS:,}")


def _layer(doc: _Doc, shape: tuple[int, ...]) -> tuple[Layer, tuple[int, ...]]:
    op = doc.choice("op", OPS)
    if op in ACTIVATIONS:
        doc.done()
        return Layer(op, None, {}, ()), shape
    if op == "flatten":
        doc.done()
        return Layer(op, None, {}, ()), (math.prod(shape),)
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        doc.fail(f"spec field '{doc.name('name')}' must be an identifier (letters, digits, _), got {_kind(name)}")
    fields: dict[str, Any] = {}
    params: list[tuple[str, tuple[int, ...]]]
    if op == "linear":
        fields = {"in": doc.integer("in"), "out": doc.integer("out"), "bias": doc.flag("bias")}
        if shape[-1] != fields["in"]:
            doc.fail(
                f"spec field '{doc.name('in')}': expected {shape[-1]} (the last dimension of {list(shape)}), "
                f"got {fields['in']}"
            )
        params = [(f"{name}.weight", (fields["out"], fields["in"]))]
        out = (*shape[:-1], fields["out"])
    elif op == "conv2d":
        fields = {
            "in": doc.integer("in"),
            "out": doc.integer("out"),
            "kernel": doc.integer("kernel", 1, MAX_KERNEL),
            "stride": doc.integer("stride", 1, MAX_KERNEL, default=1),
            "padding": doc.integer("padding", 0, MAX_KERNEL, default=0),
            "bias": doc.flag("bias"),
        }
        if len(shape) != 3:
            doc.fail(f"spec field '{doc.path}': conv2d needs a [channels, height, width] input, got {list(shape)}")
        if shape[0] != fields["in"]:
            doc.fail(
                f"spec field '{doc.name('in')}': expected {shape[0]} (the channels of {list(shape)}), "
                f"got {fields['in']}"
            )
        k, s, p = fields["kernel"], fields["stride"], fields["padding"]
        spatial = [(n + 2 * p - k) // s + 1 for n in shape[1:]]
        if min(spatial) < 1:
            doc.fail(
                f"spec field '{doc.name('kernel')}': kernel {k} does not fit the input {list(shape)} with padding {p}"
            )
        params = [(f"{name}.weight", (fields["out"], fields["in"], k, k))]
        out = (fields["out"], *spatial)
    else:  # layernorm
        norm = doc.ints("shape", min_len=1, max_len=len(shape))
        fields = {"shape": list(norm), "eps": doc.number("eps", default=1e-5), "bias": True}
        if fields["eps"] <= 0:
            doc.fail(f"spec field '{doc.name('eps')}' must be positive, got {fields['eps']}")
        if tuple(shape[-len(norm) :]) != norm:
            doc.fail(
                f"spec field '{doc.name('shape')}': expected {list(shape[-len(norm) :])} (the trailing "
                f"dimensions of {list(shape)}), got {list(norm)}"
            )
        params = [(f"{name}.weight", norm)]
        out = shape
    doc.done()
    if fields["bias"]:
        params.append((f"{name}.bias", (params[0][1][0],) if op != "layernorm" else params[0][1]))
    for pname, pshape in params:
        _check_elements(pshape, doc, f"{doc.path} ({pname})")
    _check_elements(out, doc, doc.path)
    return Layer(op, name, fields, tuple(params)), out


def parse_slots(raw: Any, layers: tuple[Layer, ...], where: str) -> tuple[tuple[Slot, ...], int]:
    """The slots in θ order with their shapes and spans, and θ's length (``total``)."""
    shapes = dict(p for layer in layers for p in layer.params)
    if not isinstance(raw, list):
        raise SpecError(f"{where}: spec field 'slots' must be a list, got {_kind(raw)}")
    slots: list[Slot] = []
    offset = 0
    for i, item in enumerate(raw):
        doc = _Doc(item, f"slots[{i}]", where)
        param = doc.get("param")
        if not isinstance(param, str) or param not in shapes:
            known = ", ".join(shapes) or "none"
            doc.fail(f"spec field 'slots[{i}].param': {_kind(param)} is not a target parameter (they are: {known})")
        if any(s.param == param for s in slots):
            doc.fail(f"spec field 'slots[{i}].param': '{param}' has a slot already")
        mode = doc.choice("mode", MODES)
        shape = shapes[param]
        rank, alpha, numel = 0, 0.0, 0
        if mode == "lora":
            if len(shape) < 2:
                doc.fail(
                    f"spec field 'slots[{i}].mode': lora needs a matrix or kernel, '{param}' has shape {list(shape)}"
                )
            fan_out, fan_in = shape[0], math.prod(shape[1:])
            rank = doc.integer("rank", 1, min(fan_out, fan_in))
            alpha = doc.number("alpha")
            numel = rank * fan_in + fan_out * rank
        elif mode != "static":
            numel = math.prod(shape)
        doc.done()
        slots.append(Slot(param, mode, shape, rank, alpha, offset, numel))
        offset += numel
    if missing := [p for p in shapes if not any(s.param == p for s in slots)]:
        raise SpecError(f"{where}: spec field 'slots' has no entry for target parameter '{missing[0]}'")
    return tuple(slots), offset
