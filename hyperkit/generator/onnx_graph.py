"""ONNX graphs of a generator: the *hyper* graph (condition, x) -> y, and the *baked* target x -> y.

Both are built node by node with ``onnx.helper`` from the spec, never traced, so every name is
ours: the hyper graph's initializers are the canonical tensors exactly as stored (dtype, shape and
bytes; ``Cast`` nodes make them float32), the baked graph's are the target parameters named as
the spec names them (``c0.weight``, ``fc.bias``). The target part is shared, so the two graphs
compute the target the same way. Linear layers use ``Gemm(transB=1)`` on 2-D activations and
``Transpose`` + ``MatMul`` otherwise (ONNX Runtime folds the transpose of a constant at load).

Example:
    >>> from hyperkit.generator.examples import tiny_generator
    >>> model = hyper_model(tiny_generator(), "tiny")
    >>> [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    (['condition', 'x'], ['y'])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hyperkit.formats.onnx import make_model
from hyperkit.generator.model import Generator
from hyperkit.generator.spec import Slot, Spec

#: The spec's activations as (op, attributes); silu is built from two nodes.
ACTIVATION_OPS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("Relu", {}),
    "gelu": ("Gelu", {"approximate": "none"}),
    "tanh": ("Tanh", {}),
    "sigmoid": ("Sigmoid", {}),
    "elu": ("Elu", {"alpha": 1.0}),
    "leaky_relu": ("LeakyRelu", {"alpha": 0.01}),
    "identity": ("Identity", {}),
}


class Builder:
    """Collects nodes and constants; every node is named after its single output."""

    def __init__(self, dtypes: dict[str, str] | None = None) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.dtypes = dtypes or {}

    def add(self, op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, name: str, value: np.ndarray) -> str:
        """A Constant node (kept out of the initializers, which hold only the file's tensors)."""
        return self.add("Constant", [], name, value=self.numpy_helper.from_array(value, name))

    def as_float(self, name: str) -> str:
        if self.dtypes.get(name, "float32") == "float32":
            return name
        return self.add("Cast", [name], f"{name}/float32", to=self.helper.TensorProto.FLOAT)

    def activation(self, act: str, x: str, out: str) -> str:
        if act == "silu":
            return self.add("Mul", [x, self.add("Sigmoid", [x], f"{out}/sigmoid")], out)
        op, attrs = ACTIVATION_OPS[act]
        return self.add(op, [x], out, **attrs)

    def reshape(self, x: str, shape: tuple[int, ...] | list[int], out: str) -> str:
        return self.add("Reshape", [x, self.const(f"{out}/shape", np.array(shape, np.int64))], out)

    def slice1d(self, x: str, start: int, stop: int, out: str) -> str:
        starts = self.const(f"{out}/start", np.array([start], np.int64))
        stops = self.const(f"{out}/stop", np.array([stop], np.int64))
        return self.add("Slice", [x, starts, stops], out)


def target_nodes(b: Builder, spec: Spec, x: str, weights: dict[str, str], out: str = "y") -> str:
    """The target's layers applied to ``x``; ``weights`` maps each parameter to a float32 value name."""
    h, shape = x, spec.input_shape
    for i, layer in enumerate(spec.layers):
        name = out if i == len(spec.layers) - 1 else f"target/{i}.{layer.name or layer.op}"
        f = layer.fields
        if layer.op == "linear":
            w, bias = weights[f"{layer.name}.weight"], weights.get(f"{layer.name}.bias")
            if len(shape) == 1:
                h = b.add("Gemm", [h, w, *([bias] if bias else [])], name, transB=1)
            else:
                product = b.add("MatMul", [h, b.add("Transpose", [w], f"{name}/wT", perm=[1, 0])], f"{name}/matmul")
                h = b.add("Add", [product, bias], name) if bias else b.add("Identity", [product], name)
            shape = (*shape[:-1], f["out"])
        elif layer.op == "conv2d":
            k, s, p = f["kernel"], f["stride"], f["padding"]
            inputs = [h, weights[f"{layer.name}.weight"]]
            if f["bias"]:
                inputs.append(weights[f"{layer.name}.bias"])
            h = b.add("Conv", inputs, name, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
            shape = (f["out"], *((n + 2 * p - k) // s + 1 for n in shape[1:]))
        elif layer.op == "layernorm":
            w, bias = weights[f"{layer.name}.weight"], weights[f"{layer.name}.bias"]
            h = b.add("LayerNormalization", [h, w, bias], name, axis=-len(f["shape"]), epsilon=f["eps"])
        elif layer.op == "flatten":
            h = b.add("Flatten", [h], name, axis=1)
            shape = (int(np.prod(shape)),)
        else:
            h = b.activation(layer.op, h, name)
    return h


def _hypernet_nodes(b: Builder, spec: Spec, z: str) -> str:
    """θ (float32 ``[total]``) from the condition vector ``z`` (float32 ``[dim]``)."""
    h = b.reshape(z, [1, spec.condition_dim], "hnet/z_row")
    if spec.hypernet_type == "chunked_mlp":
        count = spec.chunk_count
        zs = b.add(
            "Expand", [h, b.const("hnet/z_rows/shape", np.array([count, spec.condition_dim], np.int64))], "hnet/z_rows"
        )
        emb = b.as_float("hnet.chunk_emb")
        parts = [emb, zs] if spec.input_order[0] == "chunk_emb" else [zs, emb]
        h = b.add("Concat", parts, "hnet/input", axis=1)
    n = len(spec.hidden) + 1
    for i in range(n):
        w, bias = b.as_float(f"hnet.layers.{i}.weight"), b.as_float(f"hnet.layers.{i}.bias")
        h = b.add("Gemm", [h, w, bias], f"hnet/layers.{i}", transB=1)
        if i < n - 1:
            h = b.activation(spec.activation, h, f"hnet/layers.{i}/act")
    flat = b.reshape(h, [-1], "hnet/flat")
    if spec.hypernet_type == "chunked_mlp" and spec.chunk_count * spec.chunk_size != spec.total:
        return b.slice1d(flat, 0, spec.total, "theta")  # the tail of the last chunk is discarded
    return b.add("Identity", [flat], "theta")


def slot_weight(b: Builder, slot: Slot, theta: str, base: str | None) -> str:
    """The effective float32 parameter of a generated slot, from θ (and its base)."""
    p, off = slot.param, slot.offset
    if slot.mode == "lora":
        a_len = slot.rank * slot.fan_in
        a = b.reshape(b.slice1d(theta, off, off + a_len, f"{p}/A_flat"), [slot.rank, slot.fan_in], f"{p}/A")
        bb = b.reshape(
            b.slice1d(theta, off + a_len, off + slot.numel, f"{p}/B_flat"), [slot.fan_out, slot.rank], f"{p}/B"
        )
        return lora_merge(b, slot, bb, a, base)
    value = b.reshape(b.slice1d(theta, off, off + slot.numel, f"{p}/theta"), list(slot.shape), f"{p}/generated")
    if slot.mode == "delta":
        assert base is not None
        return b.add("Add", [base, value], f"{p}/effective")
    return value


def lora_merge(b: Builder, slot: Slot, lora_b: str, lora_a: str, base: str | None) -> str:
    """``base + (alpha/rank)·(B·A)`` reshaped to the parameter's shape, in float32."""
    p = slot.param
    product = b.add("MatMul", [lora_b, lora_a], f"{p}/BA")
    scale = b.const(f"{p}/scale", np.array(slot.alpha / slot.rank, np.float32))
    delta = b.reshape(b.add("Mul", [product, scale], f"{p}/scaled"), list(slot.shape), f"{p}/delta")
    assert base is not None
    return b.add("Add", [base, delta], f"{p}/effective")


def hyper_model(gen: Generator, stem: str) -> Any:
    """The (condition, x) -> y ModelProto for ``gen``, without initializers or metadata."""
    from onnx import TensorProto, helper

    spec = gen.spec
    b = Builder({name: arr.dtype.name for name, arr in gen.tensors()})
    if spec.condition_kind == "task_id":
        cond = helper.make_tensor_value_info("condition", TensorProto.INT64, [])
        z = b.add("Gather", [b.as_float("hnet.cond_table"), "condition"], "hnet/z", axis=0)
    else:
        cond = helper.make_tensor_value_info("condition", TensorProto.FLOAT, [spec.condition_dim])
        z = "condition"
    theta = _hypernet_nodes(b, spec, z)
    weights: dict[str, str] = {}
    for slot in spec.slots:
        if slot.mode == "static":
            weights[slot.param] = b.as_float(f"target.{slot.param}")
        else:
            base = b.as_float(f"base.{slot.param}") if slot.mode in ("delta", "lora") else None
            weights[slot.param] = slot_weight(b, slot, theta, base)
    target_nodes(b, spec, "x", weights)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *spec.input_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *spec.output_shape])
    return make_model(helper.make_graph(b.nodes, stem or "generator", [cond, x], [y]))


def baked_model(spec: Spec, weights: dict[str, np.ndarray], stem: str, lora_factors: dict[str, Slot]) -> Any:
    """The static x -> y ModelProto; ``weights`` (float32) become initializers named as given.

    Slots in ``lora_factors`` keep their factors: ``P`` holds the base, ``P.lora_A`` and
    ``P.lora_B`` the factors, merged by the graph.
    """
    from onnx import TensorProto, helper, numpy_helper

    b = Builder()
    names: dict[str, str] = {}
    for slot in spec.slots:
        if slot.param in lora_factors:
            names[slot.param] = lora_merge(b, slot, f"{slot.param}.lora_B", f"{slot.param}.lora_A", slot.param)
        else:
            names[slot.param] = slot.param
    target_nodes(b, spec, "x", names)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *spec.input_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *spec.output_shape])
    inits = [numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name) for name, arr in weights.items()]
    return make_model(helper.make_graph(b.nodes, stem or "target", [x], [y], initializer=inits))
