"""The generator family's codecs, one per container, in the interface :mod:`hyperkit.families` names.

- ``.pt``: ``{"hyperkit_spec": <spec JSON text>, "tensors": {canonical name: tensor}}``, a plain
  dict of plain values that ``torch.load(weights_only=True)`` loads;
- ``.safetensors``: the canonical tensors; ``__metadata__`` holds ``hyperkit.family =
  "generator"``, ``hyperkit.format_version = "1"`` and ``hyperkit.spec``;
- ONNX: the hyper graph (condition, x) -> y of :mod:`hyperkit.generator.onnx_graph`, the tensors as
  its initializers, the same three keys in ``metadata_props``; a file whose graph is not the one
  its spec implies is refused (edited), so what runs is always what the spec says.

The spec text is kept exactly as stored, and the tensors bit-exact, so the three round trip.

Example:
    >>> from hyperkit.generator.examples import tiny_generator
    >>> g = tiny_generator()
    >>> obj = pt_object(g)
    >>> sorted(obj), claims_pt_object(obj)
    (['hyperkit_spec', 'tensors'], True)
    >>> decode_pt(obj, "g.pt", "g").spec_text == g.spec_text
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from hyperkit.errors import CorruptFileError, UnknownFormatError
from hyperkit.generator.model import FAMILY, Generator

if TYPE_CHECKING:
    from hyperkit.formats.onnx import OnnxFile

NAME = FAMILY
MODEL = Generator
FORMAT_VERSION = "1"
SPEC_KEY = "hyperkit.spec"
PT_SPEC_KEY = "hyperkit_spec"


def claims_pt_object(obj: Any) -> bool:
    """Whether an unpickled ``.pt`` object has the generator layout (a ``hyperkit_spec`` key)."""
    return isinstance(obj, dict) and PT_SPEC_KEY in obj


def decode_pt(obj: Any, source: str, stem: str) -> Generator:
    """The generator of a ``.pt`` file's top-level object."""
    if set(obj) != {PT_SPEC_KEY, "tensors"}:
        extra = sorted(str(k) for k in set(obj) - {PT_SPEC_KEY, "tensors"})
        raise CorruptFileError(
            f"{source}: generator .pt must hold exactly 'hyperkit_spec' and 'tensors' (also: {extra})"
        )
    text, tensors = obj[PT_SPEC_KEY], obj["tensors"]
    if not isinstance(text, str):
        raise CorruptFileError(f"{source}: 'hyperkit_spec' is a {type(text).__name__}, expected the spec's JSON text")
    if not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors):
        raise CorruptFileError(f"{source}: 'tensors' must map tensor names to tensors")
    return Generator.build(text, dict(tensors), source)


def pt_object(gen: Generator) -> dict[str, Any]:
    """The plain object a generator ``.pt`` holds (a dict, so every loader takes it)."""
    return {PT_SPEC_KEY: gen.spec_text, "tensors": dict(gen.tensors())}


def _metadata(gen: Generator) -> dict[str, str]:
    return {"hyperkit.family": FAMILY, "hyperkit.format_version": FORMAT_VERSION, SPEC_KEY: gen.spec_text}


def _from_metadata(tensors: dict[str, np.ndarray], meta: dict[str, str], source: str) -> Generator:
    if meta.get("hyperkit.family") != FAMILY:
        raise UnknownFormatError(
            f"{source}: not a hyperkit generator (hyperkit.family is {meta.get('hyperkit.family')!r})"
        )
    if meta.get("hyperkit.format_version") != FORMAT_VERSION:
        raise UnknownFormatError(
            f"{source}: unsupported hyperkit.format_version {meta.get('hyperkit.format_version')!r}"
        )
    if SPEC_KEY not in meta:
        raise CorruptFileError(f"{source}: generator without its spec ({SPEC_KEY} is missing)")
    if extra := sorted(set(meta) - set(_keys())):
        raise CorruptFileError(f"{source}: unexpected metadata key '{extra[0]}' in a generator")
    return Generator.build(meta[SPEC_KEY], tensors, source)


def _keys() -> tuple[str, ...]:
    return ("hyperkit.family", "hyperkit.format_version", SPEC_KEY)


def decode_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str], source: str) -> Generator:
    """The generator of a hyperkit ``.safetensors`` file."""
    return _from_metadata(tensors, metadata, source)


def safetensors_parts(gen: Generator) -> tuple[Iterable[tuple[str, np.ndarray]], dict[str, str]]:
    """Tensors in canonical order and the three metadata keys."""
    return gen.tensors(), _metadata(gen)


def decode_onnx(onnx_file: OnnxFile, source: str) -> Generator:
    """The generator of a hyper-ONNX file, its graph checked against its spec."""
    from hyperkit.formats.onnx import graph_signature
    from hyperkit.generator import onnx_graph

    if not isinstance(onnx_file.model.graph.name, str):
        raise CorruptFileError(f"{source}: graph name is not UTF-8 text")
    gen = _from_metadata(onnx_file.initializers(source), onnx_file.metadata, source)
    if graph_signature(onnx_graph.hyper_model(gen, onnx_file.model.graph.name)) != graph_signature(onnx_file.model):
        raise CorruptFileError(f"{source}: graph does not match its hyperkit spec (edited?)")
    return gen


def onnx_parts(gen: Generator, stem: str) -> tuple[Any, list[tuple[str, np.ndarray]]]:
    """The hyper graph without its weights (metadata set, checked) and the tensors to stream in."""
    from onnx import checker, helper

    from hyperkit.generator import onnx_graph

    model = onnx_graph.hyper_model(gen, stem)
    helper.set_model_props(model, _metadata(gen))
    # The weights never pass through onnx (they are streamed); declared as typed graph inputs, the
    # checker still sees every name, dtype and shape the nodes consume.
    checkable = helper.make_model(model.graph, ir_version=model.ir_version, opset_imports=model.opset_import)
    for name, arr in gen.tensors():
        dtype = helper.np_dtype_to_tensor_dtype(arr.dtype.newbyteorder("<"))
        checkable.graph.input.append(helper.make_tensor_value_info(name, dtype, list(arr.shape)))
    checker.check_model(checkable, full_check=True)  # a failure is a bug here, not in the generator
    return model, list(gen.tensors())


def check(gen: Generator) -> None:
    """Nothing more to check: :meth:`Generator.build` validated the spec and every tensor."""
