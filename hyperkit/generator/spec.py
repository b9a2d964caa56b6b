"""The generator spec (``generator/0``): parse and validate the JSON document, derive every shape.

The contract is ``docs/generator.md`` (and ``schema.json`` beside this module, the same rules as a
JSON Schema). Validation is strict and precise: an error names the field by its JSON path, says
what was expected and what was found, and every size a document declares (widths, counts, the
parameters it would generate) is bounded *before* anything is allocated, because a spec comes
from a file and a hostile one could ask for terabytes. Unknown fields are refused: a field this
version does not understand would change what the weights mean.

Example:
    >>> spec = parse_spec('''{"hyperkit_spec": "generator/0",
    ...   "condition": {"kind": "task_id", "num": 3, "dim": 4},
    ...   "hypernet": {"type": "mlp", "hidden": [8], "activation": "relu"},
    ...   "target": {"input": [5], "layers": [{"op": "linear", "name": "fc", "in": 5, "out": 2, "bias": true}]},
    ...   "slots": [{"param": "fc.weight", "mode": "lora", "rank": 1, "alpha": 2.0},
    ...             {"param": "fc.bias", "mode": "full"}]}''')
    >>> spec.total, [s.numel for s in spec.slots], spec.output_shape
    (9, [7, 2], (2,))
    >>> try:
    ...     parse_spec('{"hyperkit_spec": "generator/0"}', "g.json")
    ... except SpecError as e:
    ...     print(e)
    g.json: spec field 'condition' is missing
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from hyperkit.errors import LimitExceeded, StructureError
from hyperkit.formats.limits import check_value

SPEC_VERSION = "generator/0"
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "silu", "elu", "leaky_relu", "identity")
MODES = ("full", "delta", "lora", "static")
CONDITION_KINDS = ("task_id", "continuous")
HYPERNET_TYPES = ("mlp", "chunked_mlp")
INPUT_ORDERS = (("chunk_emb", "condition"), ("condition", "chunk_emb"))

#: Bytes of one spec document (real ones: a few KB).
MAX_SPEC_BYTES = 1 << 20
#: Any one width, count or size a spec declares (a layer's in/out, dims, rows, chunk size).
MAX_WIDTH = 1 << 24
#: Target layers, hypernet hidden layers.
MAX_LAYERS = 256
#: Kernel size, stride and padding of a conv2d.
MAX_KERNEL = 64
#: Elements of one tensor the spec implies (a target parameter, an activation of one sample).
MAX_ELEMENTS = 1 << 28
#: Generated values (``total``) and all tensors of a generator together (1 GiB of fp32 each).
MAX_TOTAL = 1 << 28
MAX_STORED = 1 << 28


class SpecError(StructureError):
    """The spec document is malformed or inconsistent (exit 3)."""


@dataclass(frozen=True)
class Layer:
    """One target layer: ``op``, its ``name`` (layers with parameters) and its other fields."""

    op: str
    name: str | None
    fields: dict[str, Any]
    params: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Slot:
    """One target parameter: how it is obtained (``mode``), with its shape and θ span."""

    param: str
    mode: str
    shape: tuple[int, ...]
    rank: int = 0
    alpha: float = 0.0
    offset: int = 0
    numel: int = 0  # generated values (0 for static)

    @property
    def fan_out(self) -> int:
        return self.shape[0]

    @property
    def fan_in(self) -> int:
        return math.prod(self.shape[1:])


@dataclass(frozen=True)
class Spec:
    """A validated spec with every derived size."""

    condition_kind: str
    condition_dim: int
    condition_num: int
    hypernet_type: str
    hidden: tuple[int, ...]
    activation: str
    chunk_size: int
    chunk_emb_dim: int
    input_order: tuple[str, str]
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    slots: tuple[Slot, ...]
    output_shape: tuple[int, ...]
    total: int
    document: dict[str, Any] = field(repr=False, compare=False)

    @property
    def chunk_count(self) -> int:
        return -(-self.total // self.chunk_size) if self.hypernet_type == "chunked_mlp" else 0

    @property
    def hnet_widths(self) -> list[int]:
        """Input width, hidden widths, output width of the hypernet MLP."""
        if self.hypernet_type == "chunked_mlp":
            return [self.chunk_emb_dim + self.condition_dim, *self.hidden, self.chunk_size]
        return [self.condition_dim, *self.hidden, self.total]

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every stored tensor's canonical name and shape, in canonical (file) order."""
        out: dict[str, tuple[int, ...]] = {}
        if self.condition_kind == "task_id":
            out["hnet.cond_table"] = (self.condition_num, self.condition_dim)
        if self.hypernet_type == "chunked_mlp":
            out["hnet.chunk_emb"] = (self.chunk_count, self.chunk_emb_dim)
        widths = self.hnet_widths
        for i in range(len(widths) - 1):
            out[f"hnet.layers.{i}.weight"] = (widths[i + 1], widths[i])
            out[f"hnet.layers.{i}.bias"] = (widths[i + 1],)
        for slot in self.slots:
            if slot.mode in ("delta", "lora"):
                out[f"base.{slot.param}"] = slot.shape
        for slot in self.slots:
            if slot.mode == "static":
                out[f"target.{slot.param}"] = slot.shape
        return out


class _Doc:
    """Typed access to a JSON object with errors that name the field's path."""

    def __init__(self, data: Any, path: str, where: str) -> None:
        self.where, self.path = where, path
        if not isinstance(data, dict):
            self.fail(f"spec field '{path}' must be an object, got {_kind(data)}")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def fail(self, message: str) -> None:
        raise SpecError(f"{self.where}: {message}")

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                self.fail(f"spec field '{self.name(key)}' is missing")
            return default
        return self.data[key]

    def integer(self, key: str, low: int = 1, high: int = MAX_WIDTH, default: Any = ...) -> int:
        value = self.get(key, default)
        if type(value) is not int:
            self.fail(f"spec field '{self.name(key)}' must be an integer, got {_kind(value)}")
        if not low <= value <= high:
            error = LimitExceeded if value > high == MAX_WIDTH else SpecError  # past a global limit
            raise error(f"{self.where}: spec field '{self.name(key)}' must be in {low}..{high}, got {value}")
        return int(value)

    def number(self, key: str, default: Any = ...) -> float:
        value = self.get(key, default)
        if type(value) not in (int, float) or not math.isfinite(value):
            self.fail(f"spec field '{self.name(key)}' must be a finite number, got {_kind(value)}")
        return float(value)

    def flag(self, key: str, default: Any = ...) -> bool:
        value = self.get(key, default)
        if type(value) is not bool:
            self.fail(f"spec field '{self.name(key)}' must be true or false, got {_kind(value)}")
        return bool(value)

    def choice(self, key: str, options: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or value not in options:
            shown = json.dumps(value)[:60] if _jsonable(value) else _kind(value)
            self.fail(f"spec field '{self.name(key)}' must be one of {', '.join(options)}; got {shown}")
        return str(value)

    def ints(self, key: str, low: int = 1, max_len: int = MAX_LAYERS, min_len: int = 0) -> tuple[int, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not min_len <= len(value) <= max_len:
            self.fail(
                f"spec field '{self.name(key)}' must be a list of {min_len}..{max_len} integers, got {_kind(value)}"
            )
        items = (_Doc({"v": v}, f"{self.name(key)}[{i}]", self.where) for i, v in enumerate(value))
        return tuple(item.integer("v", low) for item in items)

    def done(self) -> None:
        if extra := sorted(set(self.data) - self.used):
            self.fail(f"spec field '{self.name(extra[0])}' is not part of {SPEC_VERSION} (unknown field)")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value[:40])
    return {list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"spec object lists '{key}' twice")
        out[key] = value
    return out


def load_document(text: str | bytes, where: str = "spec") -> dict[str, Any]:
    """The JSON object of a spec text: size-capped, duplicate keys and non-finite numbers refused."""
    if len(text) > MAX_SPEC_BYTES:
        raise LimitExceeded(f"{where}: spec of {len(text)} bytes exceeds the {MAX_SPEC_BYTES}-byte limit")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except SpecError as e:
        raise SpecError(f"{where}: {e.message}") from None
    except (ValueError, RecursionError) as e:
        raise SpecError(f"{where}: spec is not valid JSON: {e}") from None
    check_value(data, f"{where}: spec")
    if not isinstance(data, dict):
        raise SpecError(f"{where}: spec must be a JSON object, got {_kind(data)}")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in a spec")


def parse_spec(text: str | bytes | dict[str, Any], where: str = "spec") -> Spec:
    """Validate a spec (JSON text or an already-decoded object) and derive every shape."""
    from hyperkit.generator import spec_target

    data = load_document(text, where) if isinstance(text, str | bytes) else text
    if isinstance(text, dict):
        check_value(data, f"{where}: spec")
    top = _Doc(data, "", where)
    version = top.get("hyperkit_spec")
    if version != SPEC_VERSION:
        top.fail(f"spec field 'hyperkit_spec' must be \"{SPEC_VERSION}\", got {_kind(version)}")
    cond = _Doc(top.get("condition"), "condition", where)
    kind = cond.choice("kind", CONDITION_KINDS)
    dim = cond.integer("dim")
    num = cond.integer("num") if kind == "task_id" else 0
    cond.done()
    hnet = _Doc(top.get("hypernet"), "hypernet", where)
    htype = hnet.choice("type", HYPERNET_TYPES)
    hidden = hnet.ints("hidden", max_len=64)
    activation = hnet.choice("activation", ACTIVATIONS)
    chunk_size = emb_dim = 0
    order: tuple[str, str] = INPUT_ORDERS[0]
    if htype == "chunked_mlp":
        chunk = _Doc(hnet.get("chunk"), "hypernet.chunk", where)
        chunk_size, emb_dim = chunk.integer("size"), chunk.integer("emb_dim")
        raw = chunk.get("input_order", list(INPUT_ORDERS[0]))
        if not isinstance(raw, list) or tuple(raw) not in INPUT_ORDERS:
            chunk.fail(
                'spec field \'hypernet.chunk.input_order\' must be ["chunk_emb", "condition"] or '
                f'["condition", "chunk_emb"], got {_kind(raw)}'
            )
        order = (str(raw[0]), str(raw[1]))
        chunk.done()
    elif "chunk" in hnet.data:
        hnet.fail("spec field 'hypernet.chunk' applies to type chunked_mlp only")
    hnet.done()
    layers, output_shape, input_shape = spec_target.parse_target(_Doc(top.get("target"), "target", where))
    slots, total = spec_target.parse_slots(top.get("slots"), layers, where)
    if "provenance" in data:
        top.get("provenance")  # free-form, plain values only (checked above); never changes semantics
    top.done()
    spec = Spec(
        kind,
        dim,
        num,
        htype,
        hidden,
        activation,
        chunk_size,
        emb_dim,
        order,
        input_shape,
        layers,
        slots,
        output_shape,
        total,
        data,
    )
    _check_sizes(spec, where)
    return spec


def _check_sizes(spec: Spec, where: str) -> None:
    """Bound what the spec implies before anything is allocated from it."""
    if spec.total == 0:
        raise SpecError(f"{where}: spec generates nothing: every slot is static")
    if spec.total > MAX_TOTAL:
        raise LimitExceeded(f"{where}: spec generates {spec.total:,} values, over the limit of {MAX_TOTAL:,}")
    stored = 0
    for name, shape in spec.tensor_shapes().items():
        n = math.prod(shape)
        if n > MAX_ELEMENTS:
            raise LimitExceeded(f"{where}: tensor '{name}' would hold {n:,} values, over the limit of {MAX_ELEMENTS:,}")
        stored += n
    if stored > MAX_STORED:
        raise LimitExceeded(
            f"{where}: the spec's tensors would hold {stored:,} values, over the limit of {MAX_STORED:,}"
        )


def canonical_text(document: dict[str, Any]) -> str:
    """The spec text hyperkit writes for a document it builds (files keep their own text as found).

    Example:
        >>> canonical_text({"b": 1, "a": [1, 2]})
        '{"b": 1, "a": [1, 2]}'
    """
    return json.dumps(document, ensure_ascii=False, allow_nan=False)
