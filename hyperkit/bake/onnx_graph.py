"""ONNX UNets: find the attention projections, and build a hypernetwork chain as ONNX nodes.

Two exporters name things differently (``docs/bake.md``). The legacy TorchScript exporter (what
optimum uses) folds each Linear's transposed weight into an ``onnx::MatMul_N`` initializer and
names the node after the module path, ``/…/attn2/to_k/MatMul``; the dynamo exporter names weights
``val_N`` and keeps the module path in node metadata ``pkg.torch.onnx.name_scopes``. Both wrap the
path in the export wrapper's prefix, so layers are matched by suffix
(``….transformer_blocks.N.attnK.to_k``). Weights are ``[in, out]``; the ``to_out.0`` bias keeps
its parameter name and feeds an ``Add`` in the same module.

Example:
    >>> from onnx import helper
    >>> node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/u/mid/transformer_blocks.0/attn2/to_k/MatMul")
    >>> module_path(node)
    'u.mid.transformer_blocks.0.attn2.to_k'
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperkit.bake.hnmath import Link, active_layers
from hyperkit.errors import UnsupportedError

_PROJECTION = re.compile(r"^(?P<prefix>.*transformer_blocks\.\d+\.(?P<kind>attn\d+))\.(?P<part>to_[qkv]|to_out\.0)$")


def module_path(node: Any) -> str | None:
    """The torch module a node came from: dynamo metadata first, else the legacy node name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            for scope in reversed(scopes if isinstance(scopes, list) else []):
                if isinstance(scope, str) and _PROJECTION.match(scope):
                    return scope
            return None
    if node.name.startswith("/") and "/" in node.name[1:]:
        return ".".join(node.name.strip("/").split("/")[:-1])
    return None


@dataclass
class Projection:
    """One projection of an attention layer in the graph."""

    node: Any  # the MatMul (or, for to_out.0's bias, the Add)
    weight: str  # initializer name
    index: int  # which input of the node it is


@dataclass
class OnnxAttention:
    """The graph pieces of one attention layer (``parts``: to_q, to_k, to_v, to_out.0, bias)."""

    prefix: str
    kind: str
    parts: dict[str, Projection] = field(default_factory=dict)


def find_projections(graph: Any, initializers: dict[str, Any]) -> dict[str, OnnxAttention]:
    """Attention layers keyed by their module path (with the exporter's wrapper prefix, if any)."""
    layers: dict[str, OnnxAttention] = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Add"):
            continue
        path = module_path(node)
        m = _PROJECTION.match(path) if path else None
        if not m:
            continue
        rank = 2 if node.op_type == "MatMul" else 1
        found = [(i, n) for i, n in enumerate(node.input) if n in initializers and len(initializers[n].dims) == rank]
        if len(found) != 1:
            continue
        part = m.group("part") if node.op_type == "MatMul" else m.group("part") + ".bias"
        if node.op_type == "Add" and part != "to_out.0.bias":
            continue
        layer = layers.setdefault(m.group("prefix"), OnnxAttention(m.group("prefix"), m.group("kind")))
        layer.parts[part] = Projection(node, found[0][1], found[0][0])
    return layers


# --- a hypernetwork chain as nodes --------------------------------------------------------------


class Builder:
    """Collects nodes and initializers under one unique name prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self.initializers, self.count = prefix, [], [], 0  # type: ignore[var-annotated]

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}/{what}_{self.count}"

    def const(self, what: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(what)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = self.name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _activation(b: Builder, name: str, x: str, slope: np.ndarray | None, opset: int) -> str:
    f32 = np.float32
    simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign", "softplus": "Softplus"}
    if name in simple:
        return b.op(simple[name], [x])
    if name == "leakyrelu":
        return b.op("LeakyRelu", [x], alpha=0.01)
    if name in ("elu", "celu"):
        return b.op("Elu", [x], alpha=1.0)
    if name == "selu":
        return b.op("Selu", [x])
    if name == "hardswish":
        return b.op("HardSwish", [x])
    if name == "hardsigmoid":
        return b.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    if name in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if name == "relu6" else (-1.0, 1.0)
        return b.op("Clip", [x, b.const("lo", np.array(lo, f32)), b.const("hi", np.array(hi, f32))])
    if name == "silu":
        return b.op("Mul", [x, b.op("Sigmoid", [x])])
    if name == "mish":
        return b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])])
    if name == "tanhshrink":
        return b.op("Sub", [x, b.op("Tanh", [x])])
    if name == "logsigmoid":
        return b.op("Neg", [b.op("Softplus", [b.op("Neg", [x])])])
    if name == "gelu":
        if opset >= 20:
            return b.op("Gelu", [x])
        erf = b.op("Erf", [b.op("Mul", [x, b.const("rsqrt2", np.array(1 / math.sqrt(2), f32))])])
        half = b.op("Mul", [x, b.const("half", np.array(0.5, f32))])
        return b.op("Mul", [half, b.op("Add", [erf, b.const("one", np.array(1.0, f32))])])
    if name == "prelu" and slope is not None:
        return b.op("PRelu", [x, b.const("slope", np.asarray(slope, f32).reshape(1))])
    raise UnsupportedError(f"activation '{name}' has no ONNX form in hyperkit yet")


def chain_nodes(b: Builder, links: list[Link], width: int, which: int, x: str, dtype: Any, opset: int) -> str:
    """Append ``x ← x + s·MLP(x)`` for every link with ``width`` (strength folded into the last
    Linear, or a constant Mul); computed in float32 whatever the model's dtype. Returns the output."""
    from onnx import TensorProto

    f32 = np.float32
    cur = b.op("Cast", [x], to=TensorProto.FLOAT) if dtype != np.float32 else x
    for link in links:
        if width not in link.hn.modules:
            continue
        state = link.hn.modules[width][which]
        layers = active_layers(link.hn, width, which)
        fold_strength = layers[-1].kind == "linear"
        h = cur
        for i, layer in enumerate(layers):
            if layer.kind == "linear":
                scale = link.strength if fold_strength and i == len(layers) - 1 else 1.0
                w = np.asarray(state[layer.weight], np.float64).T * scale
                h = b.op("MatMul", [h, b.const("w", w.astype(f32))])
                h = b.op("Add", [h, b.const("b", (np.asarray(state[layer.bias], np.float64) * scale).astype(f32))])
            elif layer.kind == "layernorm":
                if opset < 17:
                    raise UnsupportedError(f"a layer-norm hypernetwork needs opset ≥ 17; the model has {opset}")
                scale_name = b.const("ln_scale", np.asarray(state[layer.weight], f32))
                h = b.op(
                    "LayerNormalization",
                    [h, scale_name, b.const("ln_bias", np.asarray(state[layer.bias], f32))],
                    axis=-1,
                    epsilon=1e-5,
                )
            else:
                slope = state.get(layer.weight) if layer.weight else None
                h = _activation(b, str(layer.activation), h, slope, opset)
        if not fold_strength:
            h = b.op("Mul", [h, b.const("strength", np.array(link.strength, f32))])
        cur = b.op("Add", [cur, h])
    if dtype != np.float32:
        cur = b.op("Cast", [cur], to=TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.BFLOAT16)
    return cur


def chain_model(links: list[Link], width: int, which: int, dtype: Any, opset: int) -> Any:
    """A standalone model ``x → chain(x)`` (the same nodes a bake inserts), for parity checks."""
    from onnx import TensorProto, helper

    elem = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}[dtype]
    b = Builder("hyperkit_check")
    out = chain_nodes(b, links, width, which, "x", dtype, opset)
    graph = helper.make_graph(
        b.nodes,
        "chain",
        [helper.make_tensor_value_info("x", elem, ["n", width])],
        [helper.make_tensor_value_info(out, elem, ["n", width])],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # ORT refuses onnx's newest IR version; 8 covers opset 17-20
    return model
