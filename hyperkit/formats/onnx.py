"""ONNX reader/writer for sd-kv hypernetworks: a runnable graph that also stores the file losslessly.

One model computes, for every dim ``d``, ``k_d = x + MLP_k(x) * strength`` and
``v_d = x + MLP_v(x) * strength`` from the graph input ``context_d`` (float32
``[batch, tokens, d]``); ``strength`` is a float32 scalar input that defaults to 1.0 (it is also an
initializer). MLP is A1111's ``nn.Sequential`` in inference mode, so dropout is absent. Weights are
initializers named like the ``.safetensors`` tensors (``768.k.linear.0.weight``) holding the
stored bytes, dtype and ``[out, in]`` shape unchanged; the graph casts and transposes them, so
reading a file back is bit-exact. Metadata is :func:`~hyperkit.sdkv.strmap.to_string_map` in
``metadata_props``. :func:`read` rebuilds the graph from the tensors and metadata and refuses a
file whose graph differs, so what runs is always what the metadata describes.

Example:
    >>> import numpy as np, tempfile, os
    >>> sd = {"linear.0.weight": np.ones((16, 8), "f4"), "linear.0.bias": np.ones(16, "f4"),
    ...       "linear.1.weight": np.ones((8, 16), "f4"), "linear.1.bias": np.ones(8, "f4")}
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.onnx")
    >>> write(SDKVHypernetwork({8: (sd, dict(sd))}, {"step": 3}), path, stem="demo")
    >>> back = read(path)
    >>> back.metadata, [name for name, _ in back.tensors()][:2]
    ({'step': 3}, ['8.k.linear.0.weight', '8.k.linear.0.bias'])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hyperkit._version import __version__
from hyperkit.errors import (
    BadInputError,
    CorruptFileError,
    StructureError,
    UnknownFormatError,
    UnsupportedError,
    require,
)
from hyperkit.sdkv.model import FAMILY, KV_NAMES, SDKVHypernetwork
from hyperkit.sdkv.strmap import PREFIX, from_string_map, to_string_map
from hyperkit.sdkv.structure import LN_EPS, check, resolved_layout

# ORT 1.31 refuses the IR version onnx.helper stamps by default; 10 carries opset 20 (exact Gelu).
IR_VERSION = 10
OPSET = 20
STRENGTH = "strength"
#: Stored dtypes the graph can cast to float32; anything else has no meaning as a weight.
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
#: Protobuf cannot serialise a message past 2 GiB; leave room for the graph and metadata.
MAX_TENSOR_BYTES = 2**31 - 2**24

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


def _model(hn: SDKVHypernetwork, name: str, tensors: dict[str, Any]) -> Any:
    """The ModelProto for ``hn`` (without metadata); ``tensors`` are the initializers by name."""
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
    graph = helper.make_graph(
        g.nodes, name or "hypernetwork", inputs, outputs, initializer=[*tensors.values(), strength]
    )
    return helper.make_model(
        graph,
        ir_version=IR_VERSION,
        producer_name="hyperkit",
        producer_version=__version__,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )


def _signature(model: Any) -> tuple[Any, ...]:
    """What must agree between a file and its rebuild: opsets, nodes, graph inputs/outputs, strength."""
    graph = model.graph
    nodes = [
        (n.op_type, n.domain, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute])
        for n in graph.node
    ]
    strength = [t.SerializeToString() for t in graph.initializer if t.name == STRENGTH]
    return (
        sorted((o.domain, o.version) for o in model.opset_import),
        nodes,
        [v.SerializeToString() for v in graph.input],
        [v.SerializeToString() for v in graph.output],
        strength,
    )


def write(hn: SDKVHypernetwork, path: str | os.PathLike[str], *, stem: str) -> None:
    """Write ``hn`` as one ONNX model; ``stem`` names the graph."""
    require("onnx", "onnx")
    import onnx
    from onnx import helper, numpy_helper

    check(hn)  # the graph is built from the A1111 layout, so the tensors have to fit it
    total = sum(arr.nbytes for _, arr in hn.tensors())
    if total > MAX_TENSOR_BYTES:
        raise UnsupportedError(f"{path}: {total} bytes of tensors exceed protobuf's 2 GiB limit for ONNX")
    tensors = {name: numpy_helper.from_array(arr, name) for name, arr in hn.tensors()}
    model = _model(hn, stem, tensors)
    helper.set_model_props(model, to_string_map(hn))
    onnx.checker.check_model(model)  # a failure here is a bug in this module, not in the input
    data = model.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)


def read(path: str | os.PathLike[str]) -> SDKVHypernetwork:
    """Read a hyperkit sd-kv ONNX model, verifying that its graph is the one its metadata implies."""
    require("onnx", "onnx")
    import onnx
    from onnx import numpy_helper

    source = str(path)
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise CorruptFileError(f"{source}: file is empty (0 bytes)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf's backends (upb, cpp, python) raise different types
        raise CorruptFileError(f"{source}: not a valid ONNX protobuf (truncated or damaged?): {e}") from e
    meta = {p.key: p.value for p in model.metadata_props}
    family = meta.get(PREFIX + "family")
    if family is None and model.producer_name == "hyperkit":
        # metadata_props is serialised last, so a file cut at a field boundary loses it first
        raise CorruptFileError(f"{source}: hyperkit ONNX model without its hyperkit metadata (truncated?)")
    if family != FAMILY:
        raise UnknownFormatError(
            f"{source}: not a hyperkit sd-kv ONNX model (hyperkit.family is {family!r})",
            hint="hyperkit reads ONNX files that hyperkit wrote; convert the original .pt",
        )
    if PREFIX + "format_version" not in meta:
        raise CorruptFileError(f"{source}: hyperkit.format_version is missing (truncated?)")
    if not isinstance(model.graph.name, str):  # protobuf returns non-UTF-8 string fields as bytes
        raise CorruptFileError(f"{source}: graph name is not UTF-8 text")
    tensors: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            # external data would make us open paths named inside an untrusted file
            raise UnsupportedError(f"{source}: initializer '{init.name}' uses external data")
        if init.name in seen:
            raise CorruptFileError(f"{source}: initializer '{init.name}' appears twice")
        seen.add(init.name)
        if init.name == STRENGTH:
            continue
        try:
            tensors[init.name] = numpy_helper.to_array(init)
        except Exception as e:  # bad sizes or types surface as assorted numpy/onnx errors
            raise CorruptFileError(f"{source}: initializer '{init.name}' is malformed: {e}") from e
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
    expected = _model(hn, model.graph.name, {})  # initializers are already known to fit
    if _signature(expected) != _signature(model):
        raise CorruptFileError(f"{source}: graph does not match its hyperkit metadata (edited?)")
    return hn
