"""The exact fold of affine hypernetworks into attention weights, one attention layer at a time.

With the chain ``x ↦ A·x + c`` per context width (:func:`hyperkit.bake.hnmath.chain_affine`):
``to_k ← to_k·A_k`` (the key offset adds the same number to every logit of a query, which the
softmax cancels), ``to_v ← to_v·A_v`` and ``to_out.0.bias += to_out.0.weight·to_v·c_v`` (the
attention weights of a query sum to 1, so the value offset passes through unchanged). Products
are formed in the working precision (:func:`work_dtype`: float64, or float32 for fp16/bf16 bases)
and cast back to the base's dtype once; each layer's parity row is computed from the same values,
so the report separates the fold's error from the cast's.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperkit.bake.hnmath import Link, chain_affine, reference_forward
from hyperkit.bake.sd_base import Attention
from hyperkit.formats.arrays import release

#: The tensors of an attention layer the fold reads.
PARTS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")
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
    fold_abs: float  # baked in the working precision (before the cast) vs runtime-applied
    cast_abs: float  # baked as stored vs baked in float64: the cost of the base's dtype


@dataclass
class FoldedLayer:
    """New tensors of one layer (base dtype, base shapes) and its parity row."""

    tensors: dict[str, np.ndarray]
    parity: LayerParity


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """numpy's BLAS limited to ``n`` threads inside the block. The limit is process-wide: enter
    it once, around all the threads that compute (not in each); while it holds, every other
    thread of a program calling the bake also gets ``n`` BLAS threads."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(n, user_api="blas"):
        yield


def work_dtype(base_dtype: np.dtype | str, *, float64: bool = False) -> type:
    """The precision the fold is computed in for a base stored in ``base_dtype``.

    float64 for float32 bases (their own rounding is float32's, so the products need more), and
    float32 for float16/bfloat16 bases unless ``float64`` is asked for: float32 rounds ~8000×
    finer than float16 (2⁻²⁴ against 2⁻¹¹), so after the single cast back the result is the
    float64 one or one unit in the last place (ulp) away — for ~0.1% of the values of an SD1
    bake — except values that cancel to near zero, which stay within 1e-6 of the tensor's
    largest value (tests/test_bake_precision.py). The bake then takes 0.6–0.7× the time of a
    float64 one on a 2-core machine (DESIGN §7).

    Example:
        >>> work_dtype("float16").__name__, work_dtype("float32").__name__, work_dtype("float16", float64=True).__name__
        ('float32', 'float64', 'float64')
    """
    name = np.dtype(base_dtype).name if not isinstance(base_dtype, str) else base_dtype
    return np.float32 if name in ("float16", "bfloat16") and not float64 else np.float64


class Folds:
    """Per (width, K|V) chain maps in ``dtype`` and the runtime reference on the parity inputs,
    each computed once and shared by every layer of that width."""

    def __init__(self, links: list[Link], dtype: type = np.float64) -> None:
        self.links, self.dtype = links, dtype
        self._values: dict[tuple[object, ...], Any] = {}
        self._locks: dict[tuple[object, ...], threading.Lock] = {}
        self._lock = threading.Lock()

    def _once(self, key: tuple[object, ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` for ``key``, run once; one lock per key, so workers that need different
        values compute them at the same time."""
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = compute()
            return self._values[key]

    def runtime(self, att: Attention, which: int, ctx: np.ndarray) -> np.ndarray:
        """The runtime hypernetwork on ``ctx``, the K/V input of :func:`parity_inputs` for
        ``att``: the same for every layer of its kind and widths, so computed once for them."""
        key = ("runtime", att.kind, att.width, att.query_width, which)
        return self._once(key, lambda: reference_forward(self.links, att.width, which, ctx))

    def get(self, width: int, which: int) -> tuple[np.ndarray, np.ndarray]:
        """``(A, c)`` for the chain at ``width`` on the K (0) or V (1) input."""
        key = ("chain", width, which)
        return self._once(key, lambda: chain_affine(self.links, width, which, self.dtype))


def cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The working precision → the base dtype, rounding once (bf16 through ml_dtypes)."""
    return np.ascontiguousarray(values.astype(dtype))


def attend(q: np.ndarray, k_in: np.ndarray, v_in: np.ndarray, w: dict[str, np.ndarray], heads: int) -> np.ndarray:
    """One attention layer once its queries ``q`` are projected, up to the output projection:
    K/V projections and scaled dot-product attention per head, in ``q``'s dtype."""
    k, v = np.asarray(k_in, q.dtype) @ w["to_k.weight"].T, np.asarray(v_in, q.dtype) @ w["to_v.weight"].T
    if "to_k.bias" in w:
        k = k + w["to_k.bias"]
    if "to_v.bias" in w:
        v = v + w["to_v.bias"]
    split = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * split, (h + 1) * split)
        logits = q[:, sl] @ k[:, sl].T * split**-0.5  # a Python float keeps q's dtype (NEP 50)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        outs.append((p / p.sum(-1, keepdims=True)) @ v[:, sl])
    return np.concatenate(outs, -1)


def guess_heads(channels: int, architecture: str | None) -> int:
    """Heads used for parity: SD1's 8, else 64-wide heads (the fold is exact for any split).

    Example:
        >>> guess_heads(320, "stable-diffusion-v1"), guess_heads(640, None), guess_heads(48, None)
        (8, 10, 1)
    """
    if architecture == "stable-diffusion-v1" and channels % 8 == 0:
        return 8
    return channels // 64 if channels % 64 == 0 else 1


def parity_inputs(att: Attention) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random hidden states and context for a layer (self-attention: the same).

    They depend only on the layer's kind and widths, so the runtime hypernetwork's output on
    them is computed once per width (:meth:`Folds.runtime`), not once per layer.
    """
    rng = np.random.default_rng([att.width, att.query_width, int(att.kind == "attn1")])
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
    dtype: type = np.float64,
) -> LayerParity:
    """Compare the baked layer with the runtime-applied one on deterministic random inputs.

    ``reference(ctx, which)`` is the runtime hypernetwork on a K/V input; ``transformed`` is what
    the baked model does to that input before the projection (``None``: nothing, the fold). The
    three passes share the queries and are computed in ``dtype`` (the fold's precision).
    """
    x, ctx = parity_inputs(att)
    base: dict[str, np.ndarray] = {k: np.asarray(v, dtype) for k, v in base_w.items()}
    q = x.astype(dtype) @ base["to_q.weight"].T  # shared by the three passes
    k_in = transformed(ctx, 0) if transformed else ctx
    v_in = transformed(ctx, 1) if transformed else ctx
    baked: dict[str, np.ndarray] = {k: np.asarray(v, dtype) for k, v in exact_w.items() if not k.startswith("to_out")}
    cast: dict[str, np.ndarray] = {k: np.asarray(v, dtype) for k, v in stored_w.items() if not k.startswith("to_out")}
    passes = [
        attend(q, reference(ctx, 0), reference(ctx, 1), base, heads),
        attend(q, k_in, v_in, {**base, **baked}, heads),
        attend(q, k_in, v_in, {**base, **cast}, heads),
    ]
    stacked = np.concatenate(passes)
    heads_out = stacked @ base["to_out.0.weight"].T  # one output projection for all three
    bias = "to_out.0.bias"
    n = len(x)
    ref = heads_out[:n] + base[bias]
    exact = heads_out[n : 2 * n] + np.asarray(exact_w.get(bias, base[bias]), dtype)
    stored = heads_out[2 * n :] + np.asarray(stored_w.get(bias, base[bias]), dtype)
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
) -> FoldedLayer:
    """The folded ``to_k``/``to_v`` weights and ``to_out.0`` bias of one layer, and its parity."""
    raw = {p: read(att.key(p)) for p in PARTS}
    w: dict[str, np.ndarray] = {p: np.asarray(v, folds.dtype) for p, v in raw.items()}  # each projection converted once
    a_k, _ = folds.get(att.width, 0)
    a_v, c_v = folds.get(att.width, 1)
    exact = {
        "to_k.weight": w["to_k.weight"] @ a_k,
        "to_v.weight": w["to_v.weight"] @ a_v,
        "to_out.0.bias": w["to_out.0.bias"] + w["to_out.0.weight"] @ (w["to_v.weight"] @ c_v),
    }
    stored = {p: cast(v, raw[p].dtype) for p, v in exact.items()}

    def reference(ctx: np.ndarray, which: int) -> np.ndarray:
        return folds.runtime(att, which, ctx)

    parity = layer_parity(att, w, exact, stored, reference, None, heads, folds.dtype)
    for arr in raw.values():
        release(arr)  # a memory-mapped base's pages leave this process once used
    return FoldedLayer({att.key(p): v for p, v in stored.items()}, parity)
