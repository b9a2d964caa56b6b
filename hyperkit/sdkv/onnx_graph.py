"""The sd-kv family's ONNX codec: the runnable K/V graph, and the checks that a file is ours.

One model computes, for every dim ``d``, ``k_d = x + MLP_k(x) * strength`` and
``v_d = x + MLP_v(x) * strength`` from the graph input ``context_d`` (float32
``[batch, tokens, d]``); ``strength`` is a float32 scalar input that defaults to 1.0 (it is also an
initializer). MLP is A1111's ``nn.Sequential`` in inference mode, so dropout is absent. Weights are
initializers named like the ``.safetensors`` tensors (``768.k.linear.0.weight``) holding the
stored bytes, dtype and ``[out, in]`` shape unchanged; the graph casts and transposes them, so
reading a file back is bit-exact. Metadata is :func:`~hyperkit.sdkv.strmap.to_string_map` in
``metadata_props``. :func:`decode` rebuilds the graph from the tensors and metadata and refuses a
file whose graph differs, so what runs is always what the metadata describes. The bytes (the
streamed weights, the protobuf walk) are the container's, :mod:`hyperkit.formats.onnx`.

Example:
    >>> import numpy as np
    >>> sd = {"linear.0.weight": np.ones((16, 8), "f4"), "linear.0.bias": np.ones(16, "f4"),
    ...       "linear.1.weight": np.ones((8, 16), "f4"), "linear.1.bias": np.ones(8, "f4")}
    >>> model, weights = parts(SDKVHypernetwork({8: (sd, dict(sd))}, {"step": 3}), "demo")
    >>> [o.name for o in model.graph.output], [name for name, _ in weights][:2]
    (['k_8', 'v_8'], ['8.k.linear.0.weight', '8.k.linear.0.bias'])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hyperkit.errors import BadInputError, CorruptFileError, StructureError, UnknownFormatError, UnsupportedError
from hyperkit.formats.onnx import STRENGTH, OnnxFile, graph_signature, make_model
from hyperkit.sdkv.model import FAMILY, KV_NAMES, SDKVHypernetwork
from hyperkit.sdkv.strmap import PREFIX, from_string_map, to_string_map
from hyperkit.sdkv.structure import LN_EPS, check, resolved_layout

#: Stored dtypes the graph can cast to float32; anything else has no meaning as a weight.
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")

#: Activations that are one ONNX op with fixed attributes, equal to torch's default-argument module.
#: Selu relies on ONNX's defaults, which are torch's constants rounded to float32.
SIMPLE_ACTIVATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("Relu", {}),
    "leakyrelu": ("LeakyRelu", {"alpha": 0.01}),
    "elu": ("Elu", {"alpha": 1.0}),
    "celu": ("Celu", {"alpha": 1.0}),
    "selu": ("Selu", {}),
    "gelu": ("Gelu", {"approximate": "none"}),
    "hardswish": ("HardSwish", {}),
    "hardsigmoid": ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}),
    "tanh": ("Tanh", {}),
    "sigmoid": ("Sigmoid", {}),
    "mish": ("Mish", {}),
    "softplus": ("Softplus", {}),  # torch's threshold=20 shortcut agrees within float32 rounding
    "softsign": ("Softsign", {}),
    "hardshrink": ("Shrink", {"lambd": 0.5, "bias": 0.0}),
    "softshrink": ("Shrink", {"lambd": 0.5, "bias": 0.5}),
    "rrelu": ("LeakyRelu", {"alpha": (1 / 8 + 1 / 3) / 2}),  # eval mode: the mean slope
    # torch's legacy dim=None rule picks dim 0 for a 3-D input, i.e. softmax across the batch.
    "softmax": ("Softmax", {"axis": 0}),
    "logsoftmax": ("LogSoftmax", {"axis": 0}),
    "softmax2d": ("Softmax", {"axis": -3}),
}
#: Clip ranges of the clamp-style activations.
CLIPS: dict[str, tuple[float, float]] = {"hardtanh": (-1.0, 1.0), "relu6": (0.0, 6.0)}


class _Graph:
    """Collects nodes; every node is named after its single output, which is unique."""

    def __init__(self, hn: SDKVHypernetwork) -> None:
        from onnx import helper

        self.helper = helper
        self.hn = hn
        self.nodes: list[Any] = []
        self.dtypes = {name: np.dtype(arr.dtype).name for name, arr in hn.tensors()}

    def add(self, op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def as_float(self, name: str) -> str:
        """The initializer as float32: a Cast node unless it already is (the bytes stay as stored)."""
        dtype = self.dtypes[name]
        if dtype not in FLOAT_DTYPES:
            raise UnsupportedError(f"tensor '{name}' has dtype {dtype}; ONNX export needs a float dtype")
        if dtype == "float32":
            return name
        return self.add("Cast", [name], f"{name}/float32", to=self.helper.TensorProto.FLOAT)

    def activation(self, act: str, x: str, out: str, slope: str) -> str:
        if act in SIMPLE_ACTIVATIONS:
            op, attrs = SIMPLE_ACTIVATIONS[act]
            return self.add(op, [x], out, **attrs)
        if act in CLIPS:
            # Clip takes its bounds as inputs; Constant nodes keep them out of the initializers,
            # which hold only the file's tensors.
            low, high = CLIPS[act]
            lo = self.add("Constant", [], f"{out}/min", value_float=low)
            hi = self.add("Constant", [], f"{out}/max", value_float=high)
            return self.add("Clip", [x, lo, hi], out)
        if act == "silu":
            return self.add("Mul", [x, self.add("Sigmoid", [x], f"{out}/sigmoid")], out)
        if act == "tanhshrink":
            return self.add("Sub", [x, self.add("Tanh", [x], f"{out}/tanh")], out)
        if act == "logsigmoid":
            # -softplus(-x) rather than log(sigmoid(x)), which is -inf for very negative x.
            neg = self.add("Neg", [x], f"{out}/neg")
            return self.add("Neg", [self.add("Softplus", [neg], f"{out}/softplus")], out)
        if act == "softmin":
            return self.add("Softmax", [self.add("Neg", [x], f"{out}/neg")], out, axis=0)
        if act == "prelu":
            return self.add("PRelu", [x, self.as_float(slope)], out)
        raise UnsupportedError(f"activation '{act}' has no ONNX mapping")

    def module(self, dim: int, which: int, x: str, out: str) -> None:
        prefix = f"{dim}.{KV_NAMES[which]}"
        h = x
        for layer in resolved_layout(self.hn, dim, which):
            name = f"{prefix}/{layer.index}.{layer.kind}"
            weight, bias = f"{prefix}.{layer.weight}", f"{prefix}.{layer.bias}"
            if layer.kind == "linear":
                # Stored [out, in] like torch; transposing in the graph keeps the bytes as stored.
                wt = self.add("Transpose", [self.as_float(weight)], f"{weight}/T", perm=[1, 0])
                product = self.add("MatMul", [h, wt], f"{name}/matmul")
                h = self.add("Add", [product, self.as_float(bias)], name)
            elif layer.kind == "act":
                h = self.activation(layer.activation, h, name, weight)
            elif layer.kind == "layernorm":
                h = self.add(
                    "LayerNormalization", [h, self.as_float(weight), self.as_float(bias)], name, axis=-1, epsilon=LN_EPS
                )
            # dropout: identity in inference mode, so no node
        scaled = self.add("Mul", [h, STRENGTH], f"{prefix}/scaled")
        self.add("Add", [x, scaled], out)


def _model(hn: SDKVHypernetwork, name: str) -> Any:
    """The ModelProto for ``hn`` without metadata and without the weights: ``strength`` is its only
    initializer (the weights are streamed in by :func:`write` and kept out by :func:`read`)."""
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(hn)
    inputs, outputs = [], []
    for dim in hn.dims:
        x = f"context_{dim}"
        inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "tokens", dim]))
        for which, kv in enumerate(KV_NAMES):
            g.module(dim, which, x, f"{kv}_{dim}")
            outputs.append(helper.make_tensor_value_info(f"{kv}_{dim}", TensorProto.FLOAT, ["batch", "tokens", dim]))
    # An initializer that is also a graph input: optional to feed, 1.0 when not fed.
    inputs.append(helper.make_tensor_value_info(STRENGTH, TensorProto.FLOAT, []))
    strength = numpy_helper.from_array(np.array(1.0, np.float32), STRENGTH)
    return make_model(helper.make_graph(g.nodes, name or "hypernetwork", inputs, outputs, initializer=[strength]))


def _checkable(model: Any, hn: SDKVHypernetwork) -> Any:
    """``model`` with every weight declared as a typed, shaped graph input, for ``onnx.checker``.

    The file holds the weights as initializers, but they are streamed in by :func:`write` and never
    pass through ``onnx``; declared as inputs instead, the checker still sees every name, dtype and
    shape the nodes consume, and can run full type and shape inference over the graph.
    """
    from onnx import ModelProto, helper

    checkable = ModelProto()
    checkable.CopyFrom(model)
    for name, arr in hn.tensors():
        dtype = helper.np_dtype_to_tensor_dtype(arr.dtype.newbyteorder("<"))
        checkable.graph.input.append(helper.make_tensor_value_info(name, dtype, list(arr.shape)))
    return checkable


def parts(hn: SDKVHypernetwork, stem: str) -> tuple[Any, list[tuple[str, np.ndarray]]]:
    """The checked ModelProto without its weights (metadata set) and the weights to stream in."""
    from onnx import checker, helper

    check(hn)  # the graph is built from the A1111 layout, so the tensors have to fit it
    model = _model(hn, stem)
    helper.set_model_props(model, to_string_map(hn))
    checker.check_model(_checkable(model, hn), full_check=True)  # a failure is a bug here, not in hn
    return model, list(hn.tensors())


def decode(onnx_file: OnnxFile, source: str) -> SDKVHypernetwork:
    """The hypernetwork of a parsed hyperkit ONNX file, verifying its graph against its metadata."""
    model, meta = onnx_file.model, onnx_file.metadata
    family = meta.get(PREFIX + "family")
    if family != FAMILY:
        raise UnknownFormatError(
            f"{source}: not a hyperkit sd-kv ONNX model nor a generator (hyperkit.family is {family!r})",
            hint="hyperkit reads ONNX files that hyperkit wrote; convert the original .pt",
        )
    if PREFIX + "format_version" not in meta:
        raise CorruptFileError(f"{source}: hyperkit.format_version is missing (truncated?)")
    if not isinstance(model.graph.name, str):  # protobuf returns non-UTF-8 string fields as bytes
        raise CorruptFileError(f"{source}: graph name is not UTF-8 text")
    tensors = onnx_file.initializers(source)
    tensors.pop(STRENGTH, None)  # compared below, as part of the graph
    hn = from_string_map(tensors, meta, source)
    # Every key the writer emits must be there: a cut between two entries parses cleanly otherwise.
    try:
        written = to_string_map(hn)
    except BadInputError as e:  # e.g. a metadata field named like hyperkit's own keys
        raise CorruptFileError(f"{source}: hyperkit metadata cannot have been written by hyperkit: {e}") from e
    if missing := sorted(set(written) - set(meta)):
        raise CorruptFileError(f"{source}: metadata_props lacks {', '.join(missing)} (truncated?)")
    try:
        check(hn)
    except StructureError as e:
        raise CorruptFileError(f"{source}: ONNX initializers disagree with the hyperkit metadata: {e}") from e
    expected = _model(hn, model.graph.name)
    if graph_signature(expected, (STRENGTH,)) != graph_signature(model, (STRENGTH,)):
        raise CorruptFileError(f"{source}: graph does not match its hyperkit metadata (edited?)")
    return hn
