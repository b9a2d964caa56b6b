"""Bake SD hypernetworks into an ONNX UNet: rewrite weights (affine) or insert the MLP (not).

Affine chains fold exactly as for checkpoints (:mod:`hyperkit.bake.fold`), on the transposed
``[in, out]`` weights the exporters store. Any other chain is inserted as nodes in front of the
``to_k``/``to_v`` MatMuls (strength folded in): one chain per distinct input, since every
cross-attention layer reads ``encoder_hidden_states`` itself while a self-attention layer's q, k
and v share their ``norm1`` output — the chain rewires only the K or V MatMul, never the shared
tensor. A weight with another consumer gets a new initializer instead of being changed.

External data is streamed: every external tensor's bytes are copied in the kernel into one data
file (however many files the base spreads them over), changed tensors are appended to it and
re-pointed, so a multi-GB UNet is never loaded. The result passes
``onnx.checker`` (by path) and loads in ONNX Runtime before it is renamed into place; its
external data goes to ``<output>.data``.

Example:
    >>> data_name("unet-anime.onnx")
    'unet-anime.onnx.data'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hyperkit.bake.fold import Folds, LayerParity, fold_layer, guess_heads, layer_parity, work_dtype
from hyperkit.bake.hnmath import Link, nonaffine_reason, reference_forward
from hyperkit.bake.onnx_external import ALIGN, EXTERNAL, external_files, gather_external, point, relocate
from hyperkit.bake.onnx_graph import Builder, OnnxAttention, chain_model, chain_nodes, find_projections
from hyperkit.bake.sd import BakeResult, _record, baked_metadata, check_match, default_tolerance
from hyperkit.bake.sd_base import Attention, Base
from hyperkit.bake.stream import pwrite_all
from hyperkit.errors import (
    BadInputError,
    CorruptFileError,
    OutputPathError,
    UnsupportedError,
    VerificationError,
    require,
)
from hyperkit.paths import atomic_output, check_input, check_output, temporary_name


def data_name(output: str | os.PathLike[str]) -> str:
    """The external data file written beside ``output``."""
    return Path(output).name + ".data"


def _load(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise CorruptFileError(f"{path}: not a readable ONNX model: {e}") from e


class Graph:
    """The base model with lazy access to initializer values (external data read on demand)."""

    def __init__(self, path: Path) -> None:
        self.path, self.model = path, _load(path)
        self.data_dir = path.parent  # where external data locations are resolved
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self.consumers: dict[str, int] = {}
        for node in self.model.graph.node:
            for name in node.input:
                self.consumers[name] = self.consumers.get(name, 0) + 1
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        try:
            return numpy_helper.to_array(self.inits[name], str(self.data_dir))
        except (OSError, ValueError) as e:
            raise CorruptFileError(f"{self.path}: cannot read initializer '{name}': {e}") from e


def _attentions(g: Graph) -> tuple[list[Attention], dict[str, OnnxAttention]]:
    layers = find_projections(g.model.graph, g.inits)
    atts, by_prefix = [], {}
    for prefix, layer in sorted(layers.items()):
        if set(layer.parts) != {"to_q", "to_k", "to_v", "to_out.0", "to_out.0.bias"}:
            continue
        k, q = g.inits[layer.parts["to_k"].weight].dims, g.inits[layer.parts["to_q"].weight].dims
        atts.append(Attention(prefix, layer.kind, int(k[0]), int(q[1]), int(q[0])))
        by_prefix[prefix] = layer
    return atts, by_prefix


class _Writer:
    """Sets initializer values in the output, appending external ones to the copied data file."""

    def __init__(self, g: Graph, data_fd: int | None, location: str) -> None:
        self.g, self.fd, self.location = g, data_fd, location
        self.end = os.lseek(data_fd, 0, os.SEEK_END) if data_fd is not None else 0

    def set(self, name: str, arr: np.ndarray) -> None:
        from onnx import numpy_helper

        t = self.g.inits[name]
        if t.data_location != EXTERNAL or self.fd is None:
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))
            return
        data = np.ascontiguousarray(arr).tobytes()
        offset = self.end + (-self.end) % ALIGN
        pwrite_all(self.fd, data, offset)
        self.end = offset + len(data)
        point(t, self.location, offset, len(data))

    def add(self, name: str, arr: np.ndarray, like: str) -> str:
        """A new initializer (a changed copy of ``like``, which has other consumers)."""
        new = self.g.model.graph.initializer.add()
        new.CopyFrom(self.g.inits[like])
        new.name = name
        self.g.inits[name] = new
        self.set(name, arr)
        return name


def _fold(
    g: Graph,
    targets: list[Attention],
    parts: dict[str, OnnxAttention],
    links: list[Link],
    w: _Writer,
    arch: str | None,
    dtype: type,
) -> list[LayerParity]:
    folds, parity = Folds(links, dtype), []
    names = {"to_q.weight": "to_q", "to_k.weight": "to_k", "to_v.weight": "to_v", "to_out.0.weight": "to_out.0"}
    for i, att in enumerate(targets):
        layer = parts[att.prefix]

        def read(key: str, layer: OnnxAttention = layer, att: Attention = att) -> np.ndarray:
            suffix = key[len(att.prefix) + 1 :]
            if suffix == "to_out.0.bias":
                return g.array(layer.parts["to_out.0.bias"].weight)
            return g.array(layer.parts[names[suffix]].weight).T

        folded = fold_layer(att, read, links, folds, heads=guess_heads(att.channels, arch))
        for suffix, part in (("to_k.weight", "to_k"), ("to_v.weight", "to_v"), ("to_out.0.bias", "to_out.0.bias")):
            proj = layer.parts[part]
            value = folded.tensors[att.key(suffix)]
            value = value.T if value.ndim == 2 else value
            if g.consumers.get(proj.weight, 0) > 1:
                proj.node.input[proj.index] = w.add(f"{proj.weight}.hyperkit_baked_{i}", value, proj.weight)
            else:
                w.set(proj.weight, value)
        parity.append(folded.parity)
    return parity


def _insert(
    g: Graph, targets: list[Attention], parts: dict[str, OnnxAttention], links: list[Link], arch: str | None
) -> list[LayerParity]:
    import onnx

    dtype = g.array(parts[targets[0].prefix].parts["to_k"].weight).dtype.type
    if dtype not in (np.float32, np.float16):
        raise UnsupportedError(f"{g.path}: {np.dtype(dtype).name} weights are not supported for subgraph insertion")
    outputs: dict[tuple[str, int], str] = {}
    chains: dict[str, list[Any]] = {}  # chain output -> its nodes
    initializers: list[Any] = []
    for att in targets:
        for which, part in ((0, "to_k"), (1, "to_v")):
            proj = parts[att.prefix].parts[part]
            data_in = proj.node.input[1 - proj.index]
            key = (data_in, which)
            if key not in outputs:
                b = Builder(f"hyperkit_hn/{len(outputs)}")
                outputs[key] = chain_nodes(b, links, att.width, which, data_in, dtype, g.opset)
                chains[outputs[key]], initializers = b.nodes, [*initializers, *b.initializers]
            proj.node.input[1 - proj.index] = outputs[key]
    # Each chain goes right before the first node reading its output: after its own input exists.
    graph = g.model.graph
    nodes, ordered = list(graph.node), []
    for node in nodes:
        for name in node.input:
            if name in chains:
                ordered.extend(chains.pop(name))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(initializers)
    return _subgraph_parity(g, targets, parts, links, dtype, arch, onnx)


def _subgraph_parity(
    g: Graph,
    targets: list[Attention],
    parts: dict[str, OnnxAttention],
    links: list[Link],
    dtype: Any,
    arch: str | None,
    onnx: Any,
) -> list[LayerParity]:
    """Each layer with its K/V inputs transformed by the inserted nodes, run in ONNX Runtime."""
    from hyperkit.runtime import make_session

    sessions: dict[tuple[int, int], Any] = {}
    with tempfile.TemporaryDirectory(prefix="hyperkit-parity-") as tmp:
        for width in sorted({a.width for a in targets}):
            for which in (0, 1):
                path = Path(tmp) / f"chain_{width}_{which}.onnx"
                onnx.save(chain_model(links, width, which, dtype, max(g.opset, 17)), str(path))
                sessions[(width, which)] = make_session(path, prefer_gpu=False)[0]

        parity = []
        for att in targets:
            layer = parts[att.prefix]
            base_w = {
                "to_q.weight": g.array(layer.parts["to_q"].weight).T,
                "to_k.weight": g.array(layer.parts["to_k"].weight).T,
                "to_v.weight": g.array(layer.parts["to_v"].weight).T,
                "to_out.0.weight": g.array(layer.parts["to_out.0"].weight).T,
                "to_out.0.bias": g.array(layer.parts["to_out.0.bias"].weight),
            }

            def reference(ctx: np.ndarray, which: int, att: Attention = att) -> np.ndarray:
                out = reference_forward(links, att.width, which, ctx)
                return out.astype(dtype).astype(np.float64)

            def transformed(ctx: np.ndarray, which: int, att: Attention = att) -> np.ndarray:
                out = sessions[(att.width, which)].run(None, {"x": ctx.astype(dtype)})[0]
                return np.asarray(out, np.float64)

            parity.append(layer_parity(att, base_w, {}, {}, reference, transformed, guess_heads(att.channels, arch)))
    return parity


def bake_onnx(
    inputs: list[Path],
    links: list[Link],
    base_path: Path,
    output: Path,
    *,
    tolerance: float | None,
    float64: bool = False,
    force: bool,
) -> BakeResult:
    """Bake into the ONNX UNet ``base_path``; write ``output`` (+ ``output.data`` when external)."""
    require("onnx", "onnx")
    import onnx

    check_input(base_path)
    if output.suffix.lower() != ".onnx":
        raise BadInputError(f"{output}: an ONNX base is baked into an .onnx output; name the output so")
    check_output(output, force=force, src=base_path)
    g = Graph(base_path)
    atts, parts = _attentions(g)
    base = Base(base_path, "onnx", "onnx", base_path, {}, atts)
    targets = check_match(base, links, inputs)
    sources = external_files(g)
    data_out = output.with_name(data_name(output))
    if any(data_out.resolve() == src.resolve() for src in sources):
        raise OutputPathError(f"{data_out}: is the base's external data; name the output otherwise")
    if sources and data_out.exists() and not force:
        raise BadInputError(f"{data_out}: already exists", hint="pass --force to overwrite it")
    affine = all(nonaffine_reason(link.hn) is None for link in links)
    dtype = g.array(parts[targets[0].prefix].parts["to_k"].weight).dtype.name
    work = work_dtype(dtype, float64=float64) if affine else np.float32  # the inserted MLP: float32
    # The data goes to a temporary name too and replaces OUT.data only once the model checks
    # out: written in place, a failed `--force` bake would leave the old model with broken data.
    data_tmp = temporary_name(data_out)
    try:
        with atomic_output(output, force=force, src=base_path) as tmp:
            fd = None
            if sources:
                fd = os.open(data_tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                gather_external(g, sources, fd, data_tmp.name)
                g.data_dir = data_out.parent  # the locations now name the copy beside the output
            try:
                writer = _Writer(g, fd, data_tmp.name)
                if affine:
                    parity = _fold(g, targets, parts, links, writer, base.architecture, work)
                else:
                    parity = _insert(g, targets, parts, links, base.architecture)
            finally:
                if fd is not None:
                    os.close(fd)
            record = _record(links, inputs, "fold" if affine else "subgraph", len(targets))
            meta = baked_metadata({p.key: p.value for p in g.model.metadata_props}, record)
            onnx.helper.set_model_props(g.model, meta)
            tmp.write_bytes(g.model.SerializeToString())
            _check(tmp, output)
            if sources:
                relocate(g, data_tmp.name, data_out.name)
                tmp.write_bytes(g.model.SerializeToString())
                os.replace(data_tmp, data_out)
    finally:
        data_tmp.unlink(missing_ok=True)
    return BakeResult(
        base_path,
        output,
        "onnx",
        "fold" if affine else "subgraph",
        dtype,
        record["hypernetworks"],  # type: ignore[arg-type]
        parity,
        tolerance if tolerance is not None else default_tolerance(dtype),
        precision=work.__name__,
    )


def _check(path: Path, output: Path) -> None:
    """``onnx.checker`` by path (external data too), then a session in ONNX Runtime."""
    import onnx

    from hyperkit.runtime import make_session

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise VerificationError(f"{output}: the baked model fails onnx.checker: {str(e).splitlines()[0]}") from e
    try:
        make_session(path, prefer_gpu=False)
    except Exception as e:  # ORT raises its own types; any of them means the model does not load
        raise VerificationError(f"{output}: the baked model does not load in ONNX Runtime: {e}") from e
