"""The one in-memory model of a weight-generating hypernetwork: its spec text and its tensors.

Every container codec reads into a :class:`Generator` and writes from one. The spec is kept as
the exact text found in the file (so a round trip is byte-exact for it too) and parsed once; the
tensors are kept in the canonical order the spec defines (``hnet.cond_table``, ``hnet.chunk_emb``,
``hnet.layers.{i}.*``, ``base.*``, ``target.*``), whatever order a file stored them in, each with
its stored dtype and bytes untouched.

Example:
    >>> import numpy as np
    >>> from hyperkit.generator.spec import canonical_text
    >>> doc = {"hyperkit_spec": "generator/0", "condition": {"kind": "continuous", "dim": 2},
    ...        "hypernet": {"type": "mlp", "hidden": [], "activation": "identity"},
    ...        "target": {"input": [3], "layers": [{"op": "linear", "name": "fc", "in": 3, "out": 1, "bias": False}]},
    ...        "slots": [{"param": "fc.weight", "mode": "full"}]}
    >>> g = Generator.build(canonical_text(doc), {"hnet.layers.0.weight": np.zeros((3, 2), "f4"),
    ...                                           "hnet.layers.0.bias": np.zeros(3, "f4")})
    >>> g.parameter_count, g.spec.total
    (9, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from hyperkit.errors import CorruptFileError, StructureError
from hyperkit.generator.spec import Spec, parse_spec

FAMILY = "generator"
#: Stored dtypes a generator tensor may have (all are computed in float32).
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass
class Generator:
    """A generator checkpoint: ``spec_text`` (JSON, as stored) and ``tensor_map`` (canonical order)."""

    spec_text: str
    tensor_map: dict[str, np.ndarray]
    spec: Spec = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    #: What conversion verifies besides the tensors.
    VERIFIED_FIELDS: ClassVar[tuple[str, ...]] = ("spec_text",)

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = parse_spec(self.spec_text)

    @classmethod
    def build(cls, spec_text: str, tensors: dict[str, np.ndarray], source: str = "generator") -> Generator:
        """Validate ``tensors`` against the spec (names, shapes, dtypes) and order them canonically."""
        spec = parse_spec(spec_text, source)
        shapes = spec.tensor_shapes()
        if missing := [n for n in shapes if n not in tensors]:
            raise StructureError(f"{source}: tensor '{missing[0]}' is missing ({len(missing)} missing in all)")
        if extra := [n for n in tensors if n not in shapes]:
            raise StructureError(f"{source}: tensor '{extra[0]}' is not part of this spec ({len(extra)} extra)")
        for name, shape in shapes.items():
            arr = tensors[name]
            if not isinstance(arr, np.ndarray):
                raise CorruptFileError(f"{source}: '{name}' is a {type(arr).__name__}, not a tensor")
            if tuple(arr.shape) != shape:
                raise StructureError(
                    f"{source}: tensor '{name}' has shape {list(arr.shape)}, the spec says {list(shape)}"
                )
            if arr.dtype.name not in FLOAT_DTYPES:
                raise StructureError(f"{source}: tensor '{name}' has dtype {arr.dtype}, expected a float dtype")
        return cls(spec_text, {n: tensors[n] for n in shapes}, spec)

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, array)`` in canonical order."""
        yield from self.tensor_map.items()

    def dtypes(self) -> list[str]:
        """Distinct tensor dtypes, sorted."""
        return sorted({arr.dtype.name for arr in self.tensor_map.values()})

    @property
    def parameter_count(self) -> int:
        return sum(int(arr.size) for arr in self.tensor_map.values())

    def with_tensors(self, fn: Callable[[np.ndarray], np.ndarray]) -> Generator:
        """A copy with ``fn`` applied to every tensor (e.g. a dtype cast)."""
        return Generator(self.spec_text, {n: fn(a) for n, a in self.tensor_map.items()}, self.spec)

    def summary(self) -> dict[str, Any]:
        """What ``hyperkit inspect`` shows about the generator (JSON-ready)."""
        s = self.spec
        return {
            "condition": {
                "kind": s.condition_kind,
                "dim": s.condition_dim,
                **({"num": s.condition_num} if s.condition_num else {}),
            },
            "hypernet": {
                "type": s.hypernet_type,
                "hidden": list(s.hidden),
                "activation": s.activation,
                **({"chunks": s.chunk_count, "chunk_size": s.chunk_size} if s.chunk_count else {}),
            },
            "target": {
                "input": list(s.input_shape),
                "output": list(s.output_shape),
                "layers": [layer.op + (f" {layer.name}" if layer.name else "") for layer in s.layers],
            },
            "slots": {slot.param: slot.mode for slot in s.slots},
            "generated_values": s.total,
        }
