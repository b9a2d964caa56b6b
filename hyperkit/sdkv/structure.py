"""How A1111 lays out an sd-kv module, and the check that a file's tensors fit that layout.

A1111 builds each module as an ``nn.Sequential`` whose parameter-free members (activations,
dropout) still take an index, so the ``linear.N`` keys depend on activation, layer norm, dropout
and ``activate_output``. :func:`layout` replays that algorithm; :func:`check` compares it with the
file and names the dim, the module, the key and the expected versus found shape, instead of the
``Missing key(s) in state_dict`` traceback users get from the UIs.

Example:
    >>> [layer.kind for layer in layout(8, resolve_config({"activation_func": "relu",
    ...     "is_layer_norm": True}))]
    ['linear', 'act', 'layernorm', 'linear', 'act', 'layernorm']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperkit.errors import StructureError, UnsupportedError
from hyperkit.sdkv.model import KV_NAMES, SDKVHypernetwork

#: A1111's explicit aliases; note ``swish`` is Hardswish, not SiLU.
ALIASES: dict[str, str] = {"swish": "hardswish"}

#: Activation names A1111 accepts (aliases + ``torch.nn.modules.activation`` class names,
#: lower-cased, as of torch 2.13) that can be built with no arguments and keep the width.
ACTIVATIONS: frozenset[str] = frozenset(
    {
        *("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "celu", "gelu", "hardshrink"),
        *("hardsigmoid", "hardswish", "hardtanh", "logsigmoid", "logsoftmax", "mish", "prelu", "rrelu"),
        *("relu6", "selu", "silu", "softmax", "softmax2d", "softmin", "softplus", "softshrink", "softsign"),
        "tanhshrink",
    }
)

#: Names A1111 lists but cannot use: no-argument construction fails, or the width halves.
UNBUILDABLE: dict[str, str] = {
    "threshold": "torch.nn.Threshold needs arguments, so A1111 cannot build it",
    "multiheadattention": "torch.nn.MultiheadAttention needs arguments, so A1111 cannot build it",
    "glu": "GLU halves the feature width, so the next layer's shapes cannot match",
}

#: The activations ComfyUI's hypernetwork loader implements; anything else (None too) is refused.
COMFYUI_ACTIVATIONS: frozenset[str] = frozenset(
    ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "softsign", "mish")
)

LN_EPS = 1e-5


@dataclass(frozen=True)
class Config:
    """The structure-deciding options, resolved with A1111's defaults."""

    layer_structure: tuple[float, ...]
    activation: str | None  # None for identity ("linear" or missing)
    layer_norm: bool
    dropout_structure: tuple[float, ...]
    activate_output: bool


@dataclass(frozen=True)
class Layer:
    """One member of the Sequential. ``index`` is its position; ``weight``/``bias`` are file keys."""

    kind: str  # "linear" | "act" | "layernorm" | "dropout"
    index: int
    in_features: int = 0
    out_features: int = 0
    activation: str = ""
    p: float = 0.0
    weight: str = ""
    bias: str = ""


def _number_list(value: Any, key: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and -(2**20) <= v <= 2**20 for v in value
    ):
        raise StructureError(f"metadata '{key}' must be a list of numbers, found {value!r}")
    return tuple(value)


def resolve_config(metadata: dict[str, Any]) -> Config:
    """Resolve structure options from file metadata with A1111's defaults, validating types.

    Example:
        >>> resolve_config({}).activate_output
        True
    """
    eff = SDKVHypernetwork(modules={}, metadata=dict(metadata)).effective_metadata()
    ls = _number_list(eff["layer_structure"], "layer_structure")
    if len(ls) < 2 or ls[0] != 1 or ls[-1] != 1:
        raise StructureError(f"layer_structure {list(ls)!r} must have at least two entries and start and end with 1")
    ds = _number_list(eff["dropout_structure"], "dropout_structure")
    if len(ds) != len(ls):
        raise StructureError(f"dropout_structure {list(ds)!r} has {len(ds)} entries, layer_structure has {len(ls)}")
    for p in ds:
        if p != 0 and not 0 < p < 1:
            raise StructureError(f"dropout_structure entry {p!r} is not 0 or a probability in (0, 1)")
    act = eff["activation_func"]
    if act is not None and not isinstance(act, str):
        raise StructureError(f"metadata 'activation_func' must be a string or None, found {act!r}")
    if act is not None:
        if act in UNBUILDABLE:
            raise UnsupportedError(f"activation '{act}' is unbuildable: {UNBUILDABLE[act]}")
        if act not in ACTIVATIONS:
            lowered = act.lower()
            hint = (
                f"did you mean '{lowered}'? A1111 only accepts lower-case names"
                if (lowered in ACTIVATIONS)
                else "known names: " + ", ".join(sorted(ACTIVATIONS))
            )
            raise UnsupportedError(f"unknown activation '{act}' ({hint})")
    return Config(
        layer_structure=ls,
        activation=None if act in (None, "linear") else ALIASES.get(act, act),
        layer_norm=bool(eff["is_layer_norm"]),
        dropout_structure=ds,
        activate_output=bool(eff["activate_output"]),
    )


def layout(dim: int, cfg: Config) -> list[Layer]:
    """Replay A1111's ``HypernetworkModule.__init__`` for one width: the Sequential's members.

    Example:
        >>> [(x.kind, x.index) for x in layout(8, resolve_config({"activation_func": "relu"}))]
        [('linear', 0), ('act', 1), ('linear', 2), ('act', 3)]
    """
    ls, n = cfg.layer_structure, len(cfg.layer_structure)
    layers: list[Layer] = []
    for i in range(n - 1):
        fin, fout = int(dim * ls[i]), int(dim * ls[i + 1])
        idx = len(layers)
        layers.append(Layer("linear", idx, fin, fout, weight=f"linear.{idx}.weight", bias=f"linear.{idx}.bias"))
        if cfg.activation is not None and (i < n - 2 or cfg.activate_output):
            idx = len(layers)
            prelu = cfg.activation == "prelu"
            layers.append(Layer("act", idx, activation=cfg.activation, weight=f"linear.{idx}.weight" * prelu))
        if cfg.layer_norm:
            idx = len(layers)
            layers.append(Layer("layernorm", idx, fout, fout, weight=f"linear.{idx}.weight", bias=f"linear.{idx}.bias"))
        if cfg.dropout_structure[i + 1] > 0:
            layers.append(Layer("dropout", len(layers), p=float(cfg.dropout_structure[i + 1])))
    return layers


def expected_shapes(layers: list[Layer]) -> dict[str, tuple[int, ...]]:
    """The parameter keys and shapes a layout needs, in module order (weight before bias)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in layers:
        if layer.kind == "linear":
            shapes[layer.weight] = (layer.out_features, layer.in_features)
            shapes[layer.bias] = (layer.out_features,)
        elif layer.kind == "layernorm":
            shapes[layer.weight] = (layer.out_features,)
            shapes[layer.bias] = (layer.out_features,)
        elif layer.weight:  # PReLU's single slope
            shapes[layer.weight] = (1,)
    return shapes


#: NovelAI's leaked format names its two Linears ``linear1``/``linear2``; A1111 renames them.
LEGACY_NAMES = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}


def _fmt(shape: tuple[int, ...]) -> str:
    return str(tuple(int(s) for s in shape))


def state_problems(dim: int, kv: str, state: dict[str, np.ndarray], cfg: Config) -> list[str]:
    """Every way one module's tensors disagree with the layout: missing, unexpected, wrong shape."""
    where = f"dim {dim} ({kv})"
    for key in state:
        if key.count(".") > 2 or ".linear." in key or "upsample" in key:
            raise UnsupportedError(
                f"{where}: nested key '{key}' looks like a Hypernetwork-MonkeyPatch ResBlock "
                "(skip_connection) module; these are unsupported"
            )
    found = {LEGACY_NAMES.get(k, k): v for k, v in state.items()}
    expected = expected_shapes(layout(dim, cfg))
    problems: list[str] = []
    for key, shape in expected.items():
        if key not in found:
            problems.append(f"{where}: missing key '{key}', expected shape {_fmt(shape)}")
        elif tuple(found[key].shape) != shape:
            problems.append(f"{where}: key '{key}' has shape {_fmt(tuple(found[key].shape))}, expected {_fmt(shape)}")
    for key, arr in found.items():
        if key not in expected:
            problems.append(f"{where}: unexpected key '{key}' with shape {_fmt(tuple(arr.shape))}")
    return problems


def describe(cfg: Config) -> str:
    """A short phrase naming the options that decide the layout, for error messages."""
    return (
        f"layer_structure {list(cfg.layer_structure)}, activation {cfg.activation or 'linear'}, "
        f"layer norm {'on' if cfg.layer_norm else 'off'}, dropout {list(cfg.dropout_structure)}, "
        f"activate_output {cfg.activate_output}"
    )


def problems(hn: SDKVHypernetwork) -> list[str]:
    """All structure problems of a hypernetwork; empty when A1111 would load it.

    Raises :class:`UnsupportedError` for MonkeyPatch files and unbuildable activations, since no
    layout exists to compare against.
    """
    return _diagnose(hn)[1]


def _diagnose(hn: SDKVHypernetwork) -> tuple[Config, list[str]]:
    if hn.metadata.get("skip_connection"):
        raise UnsupportedError(
            "Hypernetwork-MonkeyPatch files with skip_connection=True (ResBlock modules) are unsupported",
            hint="A1111 refuses them too; ComfyUI loads them but silently drops the skip connection",
        )
    cfg = resolve_config(hn.metadata)
    found: list[str] = []
    for dim, pair in hn.modules.items():
        if not 0 < dim <= 2**20:
            found.append("a dim key is outside 1..2**20, not a plausible context width")
            continue
        for kv, state in zip(KV_NAMES, pair, strict=True):
            found.extend(state_problems(dim, kv, state, cfg))
    return cfg, found


def check(hn: SDKVHypernetwork) -> Config:
    """Raise :class:`StructureError` naming every mismatch; return the resolved config when none.

    Example:
        >>> import numpy as np
        >>> bad = SDKVHypernetwork(modules={8: ({"linear.0.weight": np.zeros((3, 8), "f4")}, {})})
        >>> try:
        ...     check(bad)
        ... except StructureError as e:
        ...     print(str(e).splitlines()[0][:56])
        tensors do not fit layer_structure [1, 2, 1], activation
    """
    cfg, found = _diagnose(hn)
    if found:
        shown = "; ".join(found[:4]) + (f"; and {len(found) - 4} more" if len(found) > 4 else "")
        raise StructureError(f"tensors do not fit {describe(cfg)}: {shown}")
    return cfg


def resolved_layout(hn: SDKVHypernetwork, dim: int, which: int) -> list[Layer]:
    """The layout of one module with ``weight``/``bias`` naming the keys *as stored in the file*."""
    cfg = resolve_config(hn.metadata)
    state = hn.modules[dim][which]
    reverse = {v: k for k, v in LEGACY_NAMES.items() if k in state}
    out = []
    for layer in layout(dim, cfg):
        w, b = reverse.get(layer.weight, layer.weight), reverse.get(layer.bias, layer.bias)
        out.append(
            Layer(layer.kind, layer.index, layer.in_features, layer.out_features, layer.activation, layer.p, w, b)
        )
    return out
