"""The ONNX container: a model's weights streamed in and out as raw bytes, for any family.

A family (:mod:`hyperkit.families`) builds the graph and names the weights; this module turns
them into a file and back. Neither direction copies a weight: :func:`write` has ``onnx`` serialise
the graph without them and encodes each weight's ``TensorProto`` itself
(:mod:`~hyperkit.formats.protowire`), writing ``raw_data`` straight from the array, and
:func:`read` memory-maps the file, hands ``onnx`` all but the weights to parse, and gives them
back as read-only views of their ``raw_data``. The bytes are exactly what ``onnx.save`` writes for
the whole model. Which family decodes a file is read from its ``hyperkit.family`` metadata; a
model without it is refused (hyperkit reads the ONNX files hyperkit wrote).

Example:
    >>> import numpy as np, tempfile, os
    >>> from hyperkit.sdkv.model import SDKVHypernetwork
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
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from hyperkit import families
from hyperkit.errors import CorruptFileError, UnsupportedError, require
from hyperkit.formats import protowire
from hyperkit.formats.arrays import raw_bytes, release

# ORT 1.31 refuses the IR version onnx.helper stamps by default; 10 carries opset 20 (exact Gelu).
IR_VERSION = 10
OPSET = 20
STRENGTH = "strength"
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


def _little_endian(arr: np.ndarray) -> np.ndarray:
    """``arr`` itself, or a little-endian copy where it is not (``raw_data`` is little-endian)."""
    little = arr.dtype.newbyteorder("<")
    return arr if arr.dtype == little else arr.astype(little)


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
    for top in protowire.fields(buf):
        walked += 1
        if top.number != _GRAPH or top.wire_type != protowire.LEN:
            skeleton += buf[top.start : top.end]
            continue
        # Protobuf merges repeated occurrences of a message field, so each one is walked alike.
        graph = bytearray()
        for part in protowire.fields(buf, top.payload, top.end):
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


def write(model: Any, path: str | os.PathLike[str], *, stem: str) -> None:
    """Write a family model as one ONNX file; ``stem`` names the graph.

    The family gives the graph (metadata set, weights left out) and the weights; each weight's
    ``TensorProto`` is then encoded by hand in front of the graph's own initializers (as if they
    came first in ``graph.initializer``), its ``raw_data`` written straight from the array's
    memory, whose pages are handed back right after.
    """
    require("onnx", "onnx")
    skeleton_model, tensors = families.for_model(model).load().onnx_parts(model, stem)
    total = sum(arr.nbytes for _, arr in tensors)
    if total > MAX_TENSOR_BYTES:
        raise UnsupportedError(f"{path}: {total} bytes of tensors exceed protobuf's 2 GiB limit for ONNX")
    write_streamed(skeleton_model, tensors, path)


def write_streamed(model: Any, tensors: list[tuple[str, np.ndarray]], path: str | os.PathLike[str]) -> None:
    """Write ``model`` with ``tensors`` as its first initializers, streamed from the arrays."""
    import onnx
    from onnx import helper

    weights: list[tuple[bytes, np.ndarray]] = []  # (initializer field header and tensor header, array)
    for name, arr in tensors:
        dtype = helper.np_dtype_to_tensor_dtype(arr.dtype.newbyteorder("<"))
        tensor = onnx.TensorProto(name=name, dims=arr.shape, data_type=dtype)
        # dims, data_type and name are fields 1, 2 and 8, so raw_data (9) goes last, as onnx puts it
        head = tensor.SerializeToString() + protowire.len_field_header(_RAW_DATA, arr.nbytes)
        weights.append((protowire.len_field_header(_INITIALIZER, len(head) + arr.nbytes) + head, arr))

    skeleton = memoryview(model.SerializeToString())
    graph = next(f for f in protowire.fields(skeleton) if f.number == _GRAPH)
    # Fields are serialised in number order: initializers (5) follow the nodes (1) and the name (2).
    insert = next(
        (f.start for f in protowire.fields(skeleton, graph.payload, graph.end) if f.number >= _INITIALIZER),
        graph.end,
    )
    graph_size = graph.end - graph.payload + sum(len(head) + arr.nbytes for head, arr in weights)
    graph_head = protowire.len_field_header(_GRAPH, graph_size)
    size = graph.start + len(graph_head) + graph_size + len(skeleton) - graph.end
    if size > MAX_MESSAGE_BYTES:
        raise UnsupportedError(f"{path}: the ONNX model would take {size} bytes, past protobuf's 2 GiB limit")
    with open(path, "wb") as f:
        f.write(skeleton[: graph.start])
        f.write(graph_head)
        f.write(skeleton[graph.payload : insert])  # nodes and graph name
        for head, arr in weights:
            f.write(head)
            f.write(raw_bytes(_little_endian(arr)))
            release(arr)  # the pages of a memory-mapped input would otherwise all stay resident
        f.write(skeleton[insert:])  # the graph's own initializers, inputs, outputs; opsets and metadata


@dataclass
class OnnxFile:
    """A parsed ONNX file: the model (without the streamed weights), its ``metadata_props``, and
    every initializer in file order, each either a view into the mapped file or left in the model."""

    model: Any
    metadata: dict[str, str]
    weights: list[_Weight | None] = field(default_factory=list)
    buf: Any = None

    def initializers(self, source: str) -> dict[str, np.ndarray]:
        """Every initializer by name, in file order (views of the file where the layout allows).

        Refuses external data (it would make us open paths named inside an untrusted file) and a
        name used twice.
        """
        import onnx
        from onnx import numpy_helper

        kept = list(self.model.graph.initializer)
        if len(kept) != self.weights.count(None):  # cannot happen: _split and protobuf agree on what is one
            raise CorruptFileError(f"{source}: initializers could not be located in the file")
        tensors: dict[str, np.ndarray] = {}
        left = iter(kept)
        for weight in self.weights:
            load: Callable[[], np.ndarray]
            if weight is None:
                init = next(left)
                if init.data_location == onnx.TensorProto.EXTERNAL:
                    raise UnsupportedError(f"{source}: initializer '{init.name}' uses external data")
                name, load = init.name, partial(numpy_helper.to_array, init)
            else:
                name, load = weight.name, partial(_view, self.buf, weight)
            if name in tensors:
                raise CorruptFileError(f"{source}: initializer '{name}' appears twice")
            try:
                tensors[name] = load()
            except Exception as e:  # bad sizes or types surface as assorted numpy/onnx errors
                raise CorruptFileError(f"{source}: initializer '{name}' is malformed: {e}") from e
        return tensors


def read_file(path: str | os.PathLike[str]) -> OnnxFile:
    """Parse an ONNX file, keeping its weights in the mapped file (see :func:`_split`)."""
    require("onnx", "onnx")
    import onnx

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
    if weights is None:
        weights = [None] * len(model.graph.initializer)
    return OnnxFile(model, {p.key: p.value for p in model.metadata_props}, weights, buf)


def read(path: str | os.PathLike[str]) -> Any:
    """Read a hyperkit ONNX model of any family; the family checks its graph against its metadata."""
    source = str(path)
    parsed = read_file(path)
    if families.FAMILY_KEY not in parsed.metadata and parsed.model.producer_name == "hyperkit":
        # metadata_props is serialised last, so a file cut at a field boundary loses it first
        raise CorruptFileError(f"{source}: hyperkit ONNX model without its hyperkit metadata (truncated?)")
    if parsed.metadata.get(families.FAMILY_KEY) == "generator-baked":
        raise UnsupportedError(
            f"{source}: a target model baked from a generator holds no hypernetwork, so it cannot be converted",
            hint="run it with `hyperkit run`; convert the generator it was baked from instead",
        )
    return families.for_metadata(parsed.metadata).load().decode_onnx(parsed, source)


def make_model(graph: Any) -> Any:
    """A ModelProto around ``graph`` with hyperkit's fixed IR version, opset and producer."""
    from onnx import helper

    from hyperkit._version import __version__

    return helper.make_model(
        graph,
        ir_version=IR_VERSION,
        producer_name="hyperkit",
        producer_version=__version__,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )


def graph_signature(model: Any, initializers: tuple[str, ...] = ()) -> tuple[Any, ...]:
    """What must agree between a file and the graph its metadata implies: opsets, nodes (with
    attributes), graph inputs and outputs, and the named constant ``initializers``."""
    graph = model.graph
    nodes = [
        (n.op_type, n.domain, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute])
        for n in graph.node
    ]
    return (
        sorted((o.domain, o.version) for o in model.opset_import),
        nodes,
        [v.SerializeToString() for v in graph.input],
        [v.SerializeToString() for v in graph.output],
        [t.SerializeToString() for t in graph.initializer if t.name in initializers],
    )
