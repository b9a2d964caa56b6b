"""The exact fold of affine hypernetworks into attention weights, one attention layer at a time.

With the chain ``x ↦ A·x + c`` per context width (:func:`hyperkit.bake.hnmath.chain_affine`):
``to_k ← to_k·A_k`` (the key offset adds the same number to every logit of a query, which the
softmax cancels), ``to_v ← to_v·A_v`` and ``to_out.0.bias += to_out.0.weight·to_v·c_v`` (the
attention weights of a query sum to 1, so the value offset passes through unchanged). Products
are formed in float64 and cast back to the base's dtype once; each layer's parity row is computed
from the same float64 values, so the report separates the fold's error from the cast's.

Example:
    >>> import numpy as np
    >>> from hyperkit.bake.sd_base import Attention
    >>> from hyperkit.sdkv.model import SDKVHypernetwork
    >>> from hyperkit.bake.hnmath import Link
    >>> w = {"linear.0.weight": 0.1 * np.eye(4, dtype="f4"), "linear.0.bias": np.ones(4, "f4")}
    >>> hn = SDKVHypernetwork(modules={4: (w, w)}, metadata={"layer_structure": [1, 1]})
    >>> att = Attention("b.attn2", "attn2", 4, 4, 4)
    >>> rng = np.random.default_rng(0)
    >>> weights = {att.key(p): rng.standard_normal(s).astype("f4") for p, s in
    ...     [("to_q.weight", (4, 4)), ("to_k.weight", (4, 4)), ("to_v.weight", (4, 4)),
    ...      ("to_out.0.weight", (4, 4)), ("to_out.0.bias", (4,))]}
    >>> folded = fold_layer(att, weights.__getitem__, [Link(hn)], Folds([Link(hn)]), heads=1)
    >>> sorted(k.split(".", 2)[-1] for k in folded.tensors), folded.parity.max_abs < 1e-5
    (['to_k.weight', 'to_out.0.bias', 'to_v.weight'], True)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hyperkit.bake.hnmath import Link, chain_affine, reference_forward
from hyperkit.bake.sd_base import Attention
from hyperkit.formats.arrays import release

#: Tokens of the random inputs each layer's parity is measured on (queries, context).
PARITY_QUERIES, PARITY_CONTEXT = 16, 8


@dataclass(frozen=True)
class LayerParity:
    """One attention layer's output, baked (as stored) vs the hypernetwork applied at run time."""

    layer: str
    kind: str
    width: int
    max_abs: float  # baked as stored vs runtime-applied
    max_rel: float  # max_abs over the largest runtime-applied output
    fold_abs: float  # baked in float64 (before the cast) vs runtime-applied: the algebra's error
    cast_abs: float  # baked as stored vs baked in float64: the cost of the base's dtype


@dataclass
class FoldedLayer:
    """New tensors of one layer (base dtype, base shapes) and its parity row."""

    tensors: dict[str, np.ndarray]
    parity: LayerParity


class Folds:
    """Per (width, K|V) chain maps, computed once and shared by every layer of that width."""

    def __init__(self, links: list[Link]) -> None:
        self.links = links
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def get(self, width: int, which: int) -> tuple[np.ndarray, np.ndarray]:
        """``(A, c)`` for the chain at ``width`` on the K (0) or V (1) input."""
        with self._lock:
            if (width, which) not in self._cache:
                self._cache[(width, which)] = chain_affine(self.links, width, which)
            return self._cache[(width, which)]


def cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 → the base dtype, rounding once (bf16 through ml_dtypes)."""
    return np.ascontiguousarray(values.astype(dtype))


def attention(x: np.ndarray, k_in: np.ndarray, v_in: np.ndarray, w: dict[str, np.ndarray], heads: int) -> np.ndarray:
    """Scaled dot-product attention of one layer in float64 on ``[tokens, width]`` inputs."""
    q, k, v = x @ w["to_q.weight"].T, k_in @ w["to_k.weight"].T, v_in @ w["to_v.weight"].T
    if "to_k.bias" in w:
        k = k + w["to_k.bias"]
    if "to_v.bias" in w:
        v = v + w["to_v.bias"]
    split = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * split, (h + 1) * split)
        logits = q[:, sl] @ k[:, sl].T / np.sqrt(split)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        outs.append((p / p.sum(-1, keepdims=True)) @ v[:, sl])
    return np.concatenate(outs, -1) @ w["to_out.0.weight"].T + w["to_out.0.bias"]


def guess_heads(channels: int, architecture: str | None) -> int:
    """Heads used for parity: SD1's 8, else 64-wide heads (the fold is exact for any split).

    Example:
        >>> guess_heads(320, "stable-diffusion-v1"), guess_heads(640, None), guess_heads(48, None)
        (8, 10, 1)
    """
    if architecture == "stable-diffusion-v1" and channels % 8 == 0:
        return 8
    return channels // 64 if channels % 64 == 0 else 1


def parity_inputs(att: Attention, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random hidden states and context for one layer (self-attention: the same)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((PARITY_QUERIES, att.query_width)).astype(np.float32)
    ctx = x if att.kind == "attn1" else rng.standard_normal((PARITY_CONTEXT, att.width)).astype(np.float32)
    return x, ctx


def layer_parity(
    att: Attention,
    base_w: dict[str, np.ndarray],
    exact_w: dict[str, np.ndarray],
    stored_w: dict[str, np.ndarray],
    reference: Callable[[np.ndarray, int], np.ndarray],
    transformed: Callable[[np.ndarray, int], np.ndarray] | None,
    heads: int,
    seed: int,
) -> LayerParity:
    """Compare the baked layer with the runtime-applied one on deterministic random inputs.

    ``reference(ctx, which)`` is the runtime hypernetwork on a K/V input; ``transformed`` is what
    the baked model does to that input before the projection (``None``: nothing, the fold).
    """
    x, ctx = parity_inputs(att, seed)
    f64 = {k: np.asarray(v, np.float64) for k, v in base_w.items()}
    ref = attention(x, reference(ctx, 0), reference(ctx, 1), f64, heads)
    k_in = transformed(ctx, 0) if transformed else ctx
    v_in = transformed(ctx, 1) if transformed else ctx
    exact = attention(x, k_in, v_in, {**f64, **exact_w}, heads)
    stored = attention(x, k_in, v_in, {**f64, **{k: np.asarray(v, np.float64) for k, v in stored_w.items()}}, heads)
    max_abs = float(np.abs(stored - ref).max())
    return LayerParity(
        layer=att.prefix,
        kind=att.kind,
        width=att.width,
        max_abs=max_abs,
        max_rel=max_abs / max(float(np.abs(ref).max()), 1e-30),
        fold_abs=float(np.abs(exact - ref).max()),
        cast_abs=float(np.abs(stored - exact).max()),
    )


def fold_layer(
    att: Attention,
    read: Callable[[str], np.ndarray],
    links: list[Link],
    folds: Folds,
    *,
    heads: int,
    seed: int = 0,
) -> FoldedLayer:
    """The folded ``to_k``/``to_v`` weights and ``to_out.0`` bias of one layer, and its parity."""
    parts = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")
    base_w = {p: read(att.key(p)) for p in parts}
    a_k, _ = folds.get(att.width, 0)
    a_v, c_v = folds.get(att.width, 1)
    w_v = np.asarray(base_w["to_v.weight"], np.float64)
    exact = {
        "to_k.weight": np.asarray(base_w["to_k.weight"], np.float64) @ a_k,
        "to_v.weight": w_v @ a_v,
        "to_out.0.bias": np.asarray(base_w["to_out.0.bias"], np.float64)
        + np.asarray(base_w["to_out.0.weight"], np.float64) @ (w_v @ c_v),
    }
    stored = {p: cast(v, base_w[p].dtype) for p, v in exact.items()}

    def reference(ctx: np.ndarray, which: int) -> np.ndarray:
        return reference_forward(links, att.width, which, ctx).astype(np.float64)

    parity = layer_parity(att, base_w, exact, stored, reference, None, heads, seed)
    for arr in base_w.values():
        release(arr)  # a memory-mapped base's pages leave this process once used
    return FoldedLayer({att.key(p): v for p, v in stored.items()}, parity)
