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

Neither direction copies a weight: :func:`write` has ``onnx`` serialise the graph without them
and encodes each weight's ``TensorProto`` itself (:mod:`~hyperkit.formats.protowire`), writing
``raw_data`` straight from the array, and :func:`read` memory-maps the file, hands ``onnx`` all
but the weights to parse, and returns them as read-only views of their ``raw_data``. The bytes are
exactly what ``onnx.save`` writes for the whole model.

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

import mmap
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
from hyperkit.formats import protowire
from hyperkit.formats.arrays import raw_bytes, release
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
#: The most bytes protobuf parses as one message (and so the largest file :func:`read` takes).
MAX_MESSAGE_BYTES = 2**31 - 1
#: Wire field numbers from onnx.proto: ModelProto.graph, GraphProto.initializer, and TensorProto's
#: dims, data_type, name and raw_data, the only fields :func:`write` gives a weight.
_GRAPH, _INITIALIZER = 7, 5
_DIMS, _DATA_TYPE, _NAME, _RAW_DATA = 1, 2, 8, 9
_WEIGHT_FIELDS = {(_DATA_TYPE, protowire.VARINT), (_NAME, protowire.LEN), (_RAW_DATA, protowire.LEN)}
#: More dims than numpy allows: such a tensor is left to onnx (and refused there), not walked on.
_MAX_DIMS = 32
#: Fields the reader walks in Python before handing the whole file to onnx instead: a hyperkit
#: model has a few thousand, and a crafted file of millions of tiny fields must not take minutes.
MAX_WALKED_FIELDS = 100_000

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
    graph = helper.make_graph(g.nodes, name or "hypernetwork", inputs, outputs, initializer=[strength])
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


def _little_endian(arr: np.ndarray) -> np.ndarray:
    """``arr`` itself, or a little-endian copy where it is not (``raw_data`` is little-endian)."""
    little = arr.dtype.newbyteorder("<")
    return arr if arr.dtype == little else arr.astype(little)


def write(hn: SDKVHypernetwork, path: str | os.PathLike[str], *, stem: str) -> None:
    """Write ``hn`` as one ONNX model; ``stem`` names the graph.

    The bytes are what ``onnx.save`` would write for the full model, but only the graph without
    its weights is built and serialised by ``onnx``; each weight's ``TensorProto`` is then encoded
    by hand (:mod:`~hyperkit.formats.protowire`) in front of ``strength``, its ``raw_data``
    written straight from the array's memory, whose pages are handed back right after.
    """
    require("onnx", "onnx")
    import onnx
    from onnx import helper

    check(hn)  # the graph is built from the A1111 layout, so the tensors have to fit it
    total = sum(arr.nbytes for _, arr in hn.tensors())
    if total > MAX_TENSOR_BYTES:
        raise UnsupportedError(f"{path}: {total} bytes of tensors exceed protobuf's 2 GiB limit for ONNX")
    model = _model(hn, stem)
    helper.set_model_props(model, to_string_map(hn))
    onnx.checker.check_model(_checkable(model, hn), full_check=True)  # a failure is a bug here, not in hn
    weights: list[tuple[bytes, np.ndarray]] = []  # (initializer field header and tensor header, array)
    for name, arr in hn.tensors():
        dtype = helper.np_dtype_to_tensor_dtype(arr.dtype.newbyteorder("<"))
        tensor = onnx.TensorProto(name=name, dims=arr.shape, data_type=dtype)
        # dims, data_type and name are fields 1, 2 and 8, so raw_data (9) goes last, as onnx puts it
        head = tensor.SerializeToString() + protowire.len_field_header(_RAW_DATA, arr.nbytes)
        weights.append((protowire.len_field_header(_INITIALIZER, len(head) + arr.nbytes) + head, arr))

    skeleton = memoryview(model.SerializeToString())
    graph = next(f for f in protowire.fields(skeleton) if f.number == _GRAPH)
    strength = next(f for f in protowire.fields(skeleton, graph.payload, graph.end) if f.number == _INITIALIZER)
    graph_size = graph.end - graph.payload + sum(len(head) + arr.nbytes for head, arr in weights)
    graph_head = protowire.len_field_header(_GRAPH, graph_size)
    size = graph.start + len(graph_head) + graph_size + len(skeleton) - graph.end
    if size > MAX_MESSAGE_BYTES:
        raise UnsupportedError(f"{path}: the ONNX model would take {size} bytes, past protobuf's 2 GiB limit")
    with open(path, "wb") as f:
        f.write(skeleton[: graph.start])
        f.write(graph_head)
        f.write(skeleton[graph.payload : strength.start])  # nodes and graph name
        for head, arr in weights:
            f.write(head)
            f.write(raw_bytes(_little_endian(arr)))
            release(arr)  # the pages of a memory-mapped input would otherwise all stay resident
        f.write(skeleton[strength.start :])  # strength, inputs, outputs; opsets and metadata


@dataclass(frozen=True)
class _Weight:
    """Where a weight's ``raw_data`` lies in the file, with what its ``TensorProto`` says about it."""

    name: str
    data_type: int
    dims: list[int]
    offset: int
    nbytes: int


def _weight(buf: mmap.mmap, field: protowire.Field) -> _Weight | None:
    """The weight in initializer ``field`` if it is laid out as :func:`write` lays it out, else None.

    Only ``dims`` (varints), ``data_type``, ``name`` and ``raw_data``, each scalar once, with a
    floating data type: anything else (``float_data``, external data, segments, unknown fields,
    fields repeated so that the last one wins) is left in the model for ``onnx`` to parse, which
    keeps every rule about what such a tensor means in one place. ``strength`` is left there too,
    because the graph check compares it as ``onnx`` parses it.
    """
    from onnx import TensorProto

    if sys.byteorder != "little":  # raw_data is little-endian; let onnx swap it
        return None
    dims: list[int] = []
    found: dict[int, protowire.Field] = {}
    for part in protowire.fields(buf, field.payload, field.end):
        if part.number == _DIMS and part.wire_type == protowire.VARINT and len(dims) < _MAX_DIMS:
            dims.append(part.value - 2**64 if part.value >= 2**63 else part.value)  # int64 two's complement
        elif (part.number, part.wire_type) in _WEIGHT_FIELDS and part.number not in found:
            found[part.number] = part
        else:
            return None
    if len(found) != len(_WEIGHT_FIELDS):
        return None
    data_type = found[_DATA_TYPE].value
    if data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
        return None
    name = found[_NAME]
    try:
        text = bytes(buf[name.payload : name.end]).decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(f"initializer name at byte {name.start} is not UTF-8 text") from None
    if text == STRENGTH:
        return None
    raw = found[_RAW_DATA]
    return _Weight(text, data_type, dims, raw.payload, raw.value)


class _Unwalkable(Exception):
    """The file has more fields than :func:`_split` walks in Python; onnx parses all of it."""


def _split(buf: mmap.mmap) -> tuple[bytes, list[_Weight | None]]:
    """Walk the file's top level and its graph: the model without the weights' ``TensorProto``s,
    for ``onnx`` to parse, and for every initializer in file order its :class:`_Weight`, or None
    for one left in that model. Raises :class:`_Unwalkable` past :data:`MAX_WALKED_FIELDS`."""
    skeleton = bytearray()
    initializers: list[_Weight | None] = []
    walked = 0
    for field in protowire.fields(buf):
        walked += 1
        if field.number != _GRAPH or field.wire_type != protowire.LEN:
            skeleton += buf[field.start : field.end]
            continue
        # Protobuf merges repeated occurrences of a message field, so each one is walked alike.
        graph = bytearray()
        for part in protowire.fields(buf, field.payload, field.end):
            walked += 1
            if walked > MAX_WALKED_FIELDS:
                raise _Unwalkable
            weight = None
            if part.number == _INITIALIZER and part.wire_type == protowire.LEN:
                weight = _weight(buf, part)
                initializers.append(weight)
            if weight is None:
                graph += buf[part.start : part.end]
        skeleton += protowire.len_field_header(_GRAPH, len(graph)) + graph
        if walked > MAX_WALKED_FIELDS:
            raise _Unwalkable
    return bytes(skeleton), initializers


def _view(buf: mmap.mmap, weight: _Weight) -> np.ndarray:
    """A read-only array over the weight's bytes in the mapped file (no copy)."""
    from onnx import helper

    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(weight.data_type))
    if any(d < 0 for d in weight.dims):
        raise ValueError(f"negative dimension in {weight.dims}")
    count = int(np.prod(weight.dims, dtype=object))
    if count * dtype.itemsize != weight.nbytes:
        raise ValueError(f"{weight.nbytes} bytes of raw_data for shape {weight.dims} of {dtype}")
    return np.frombuffer(buf, dtype, count=count, offset=weight.offset).reshape(weight.dims)


def read(path: str | os.PathLike[str]) -> SDKVHypernetwork:
    """Read a hyperkit sd-kv ONNX model, verifying that its graph is the one its metadata implies.

    The file is memory-mapped and the weights come back as read-only views into it; everything
    else is parsed by ``onnx`` (see :func:`_split`).
    """
    require("onnx", "onnx")
    import onnx
    from onnx import numpy_helper

    source = str(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CorruptFileError(f"{source}: file is empty (0 bytes)")
        if size > MAX_MESSAGE_BYTES:
            raise CorruptFileError(f"{source}: {size} bytes is past protobuf's 2 GiB limit, so not one ONNX model")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    weights: list[_Weight | None] | None
    try:
        data, weights = _split(buf)
    except CorruptFileError as e:
        raise CorruptFileError(f"{source}: not a valid ONNX protobuf (truncated or damaged?): {e.message}") from None
    except _Unwalkable:  # not a file hyperkit wrote; read it the slow way, all copied
        data, weights = bytes(buf), None
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
    kept = list(model.graph.initializer)
    if weights is None:
        weights = [None] * len(kept)
    if len(kept) != weights.count(None):  # cannot happen: _split and protobuf agree on what is one
        raise CorruptFileError(f"{source}: initializers could not be located in the file")
    tensors: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    left = iter(kept)
    for weight in weights:
        load: Callable[[], np.ndarray]
        if weight is None:
            init = next(left)
            if init.data_location == onnx.TensorProto.EXTERNAL:
                # external data would make us open paths named inside an untrusted file
                raise UnsupportedError(f"{source}: initializer '{init.name}' uses external data")
            name, load = init.name, partial(numpy_helper.to_array, init)
        else:
            name, load = weight.name, partial(_view, buf, weight)
        if name in seen:
            raise CorruptFileError(f"{source}: initializer '{name}' appears twice")
        seen.add(name)
        if name == STRENGTH:
            continue
        try:
            tensors[name] = load()
        except Exception as e:  # bad sizes or types surface as assorted numpy/onnx errors
            raise CorruptFileError(f"{source}: initializer '{name}' is malformed: {e}") from e
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
    if _signature(expected) != _signature(model):
        raise CorruptFileError(f"{source}: graph does not match its hyperkit metadata (edited?)")
    return hn
