"""The algebra of baking: an sd-kv module as an affine map, and a numpy reference forward.

A1111 transforms an attention layer's K and V *inputs*: ``x ← x + s·MLP(x)`` per hypernetwork,
chained in order, computed in float32. When every member of the MLP is a Linear (activation
``linear``/None, no layer norm; dropout is inactive at inference) the whole chain is one affine
map ``x ↦ A·x + c`` with ``A = I + s·Wₙ…W₁``, which folds exactly into the projection that
follows (DESIGN §4). :func:`chain_affine` builds ``(A, c)`` in the fold's working precision
(:func:`hyperkit.bake.fold.work_dtype`); :func:`reference_forward` is the independent float32
forward used as the runtime reference in parity reports, written from A1111's semantics (not
from the fold).

Example:
    >>> import numpy as np
    >>> from hyperkit.sdkv.model import SDKVHypernetwork
    >>> w = {"linear.0.weight": np.eye(2, dtype="f4"), "linear.0.bias": np.ones(2, "f4")}
    >>> hn = SDKVHypernetwork(modules={2: (w, w)}, metadata={"layer_structure": [1, 1]})
    >>> A, c = chain_affine([Link(hn, 0.5)], 2, 0)
    >>> A.tolist(), c.tolist()
    ([[1.5, 0.0], [0.0, 1.5]], [0.5, 0.5])
    >>> reference_forward([Link(hn, 0.5)], 2, 0, np.array([[2.0, 0.0]], "f4")).tolist()
    [[3.5, 0.5]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperkit.errors import UnsupportedError
from hyperkit.sdkv import structure
from hyperkit.sdkv.model import SDKVHypernetwork
from hyperkit.sdkv.structure import LN_EPS, Layer


@dataclass(frozen=True)
class Link:
    """One hypernetwork of a chain, with its strength and what the report says about it."""

    hn: SDKVHypernetwork
    strength: float = 1.0
    name: str = "hypernetwork"
    sha256: str = ""


def active_layers(hn: SDKVHypernetwork, dim: int, which: int) -> list[Layer]:
    """The members that act at inference (dropout is the identity there), keys as in the file."""
    return [layer for layer in structure.resolved_layout(hn, dim, which) if layer.kind != "dropout"]


def nonaffine_reason(hn: SDKVHypernetwork) -> str | None:
    """Why ``hn`` cannot fold into weights exactly, or ``None`` when it is affine.

    Example:
        >>> from hyperkit.sdkv.model import SDKVHypernetwork
        >>> nonaffine_reason(SDKVHypernetwork(modules={}, metadata={"activation_func": "relu"}))
        'activation relu between its layers'
    """
    cfg = structure.resolve_config(hn.metadata)
    dims = hn.dims or [1]
    kinds = {layer.kind for layer in structure.layout(dims[0], cfg)}
    reasons = []
    if "act" in kinds:
        reasons.append(f"activation {cfg.activation} between its layers")
    if "layernorm" in kinds:
        reasons.append("layer norm")
    return " and ".join(reasons) or None


def _linear(
    hn: SDKVHypernetwork, dim: int, which: int, layer: Layer, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    state = hn.modules[dim][which]
    return np.asarray(state[layer.weight], dtype), np.asarray(state[layer.bias], dtype)


def affine_map(link: Link, dim: int, which: int, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """``(A, c)`` in ``dtype`` with ``x + s·MLP(x) = A·x + c`` for an affine module."""
    m: np.ndarray | None = None  # the product so far; None is the identity, never multiplied by
    offset: np.ndarray = np.zeros(dim, dtype)
    for layer in active_layers(link.hn, dim, which):
        if layer.kind != "linear":
            raise UnsupportedError(f"{link.name}: a {layer.kind} member is not affine; it cannot fold")
        w, b = _linear(link.hn, dim, which, layer, dtype)
        m, offset = (w if m is None else w @ m), w @ offset + b
    a = link.strength * (m if m is not None else np.eye(dim, dtype=dtype))
    a[np.diag_indices(dim)] += 1.0
    return a.astype(dtype, copy=False), (link.strength * offset).astype(dtype, copy=False)


def chain_affine(links: list[Link], dim: int, which: int, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The composition, in order, of every link that has ``dim``: ``x ↦ A·x + c``, in ``dtype``.

    The first map is taken as is: multiplying by an identity would double the work (a product
    of two ``dim × dim`` matrices is most of the cost for a single hypernetwork).
    """
    maps = [affine_map(link, dim, which, dtype) for link in links if dim in link.hn.modules]
    if not maps:
        return np.eye(dim, dtype=dtype), np.zeros(dim, dtype)
    a, c = maps[0]
    for a_i, c_i in maps[1:]:
        a, c = a_i @ a, a_i @ c + c_i
    return a, c


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


#: torch.nn's default-argument activations, in numpy (the reference casts each result to float32).
ACTIVATIONS: dict[str, Any] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "leakyrelu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "celu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0.0))),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hardsigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "hardtanh": lambda x: np.clip(x, -1.0, 1.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "softplus": _softplus,
    "tanhshrink": lambda x: x - np.tanh(x),
    "logsigmoid": lambda x: -_softplus(-x),
}


def _module_forward(link: Link, dim: int, which: int, x: np.ndarray) -> np.ndarray:
    # float32 throughout, as torch runs A1111's modules: the reference is what users get at run
    # time, and using the weights as stored avoids converting every matrix on every call.
    state = link.hn.modules[dim][which]
    h = np.asarray(x, np.float32)
    for layer in active_layers(link.hn, dim, which):
        if layer.kind == "linear":
            w, b = _linear(link.hn, dim, which, layer, np.float32)
            h = h @ w.T + b
        elif layer.kind == "layernorm":
            mean = h.mean(-1, keepdims=True)
            var = ((h - mean) ** 2).mean(-1, keepdims=True)
            h = (h - mean) / np.sqrt(var + np.float32(LN_EPS)) * np.asarray(state[layer.weight], np.float32)
            h = h + np.asarray(state[layer.bias], np.float32)
        elif layer.activation == "prelu":
            slope = np.float32(np.asarray(state[layer.weight]).reshape(-1)[0])
            h = np.where(h >= 0, h, slope * h)
        elif layer.activation in ACTIVATIONS:
            h = ACTIVATIONS[layer.activation](h)
        else:
            raise UnsupportedError(f"{link.name}: activation '{layer.activation}' has no reference implementation")
        h = np.asarray(h, np.float32)
    return h


def reference_forward(links: list[Link], dim: int, which: int, x: np.ndarray) -> np.ndarray:
    """A1111's runtime transform of a K (``which=0``) or V (``1``) input: every link with
    ``dim``, in order, ``x ← x + s·MLP(x)``, in float32 as A1111 computes it."""
    out = np.asarray(x, np.float32)
    for link in links:
        if dim in link.hn.modules:
            out = (out + np.float32(link.strength) * _module_forward(link, dim, which, out)).astype(np.float32)
    return out
