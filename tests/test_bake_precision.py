"""The fold's working precision: float32 for fp16/bf16 bases, float64 for fp32 bases and --float64.

float32 rounds ~8000× finer than float16, so after the single cast back the default bake and the
float64 one may differ only by one unit in the last place (ulp) of a stored value, and rarely.
Both are checked against an independent float64 fold written here from DESIGN §4 (numpy only),
on an SD1-wide base (320 channels, 768-wide text context) where the products have enough terms
for float32's rounding to show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hyperkit
from hyperkit.bake import bake_sd
from hyperkit.bake.fold import work_dtype
from hyperkit.formats.dtypes import numpy_dtype
from hyperkit.formats.safetensors_io import read_safetensors, write_safetensors

torch = pytest.importorskip("torch")
from bakekit import save_hn  # noqa: E402 (needs torch)

PREFIX = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0"
C, TEXT = 320, 768
CHANGED = ("to_k.weight", "to_v.weight", "to_out.0.bias")


def _base(path: Path, dtype: str, seed: int = 0) -> Path:
    """One self-attention and one cross-attention layer with SD1's widths, random weights."""
    rng = np.random.default_rng(seed)
    tensors = []
    for attn, width in (("attn1", C), ("attn2", TEXT)):
        shapes = {"to_q.weight": (C, C), "to_k.weight": (C, width), "to_v.weight": (C, width)}
        shapes |= {"to_out.0.weight": (C, C), "to_out.0.bias": (C,)}
        for part, shape in shapes.items():
            values = rng.standard_normal(shape) / np.sqrt(shape[-1])
            tensors.append((f"{PREFIX}.{attn}.{part}", values.astype(numpy_dtype(dtype))))
    tensors.append(("model.diffusion_model.out.2.weight", rng.standard_normal((4, 320, 3, 3)).astype("f2")))
    write_safetensors(path, tensors, {"format": "pt"})
    return path


def _fold64(hn_path: Path, base: dict[str, np.ndarray], strength: float) -> dict[str, np.ndarray]:
    """DESIGN §4 in float64: A = I + s·W2·W1 (+ the bias path), to_k·A_k, to_v·A_v, the to_out bias."""
    hn = hyperkit.load(hn_path)
    out = {}
    for attn, width in (("attn1", C), ("attn2", TEXT)):
        maps = []
        for which in (0, 1):
            state = {k: np.asarray(v, np.float64) for k, v in hn.modules[width][which].items()}
            w1, b1 = state["linear.0.weight"], state["linear.0.bias"]
            w2, b2 = state["linear.1.weight"], state["linear.1.bias"]
            maps.append((np.eye(width) + strength * (w2 @ w1), strength * (w2 @ b1 + b2)))
        (a_k, _), (a_v, c_v) = maps
        key = f"{PREFIX}.{attn}."
        w = {p: np.asarray(base[key + p], np.float64) for p in ("to_k.weight", "to_v.weight", "to_out.0.weight")}
        bias = np.asarray(base[key + "to_out.0.bias"], np.float64)
        out[key + "to_k.weight"] = w["to_k.weight"] @ a_k
        out[key + "to_v.weight"] = w["to_v.weight"] @ a_v
        out[key + "to_out.0.bias"] = bias + w["to_out.0.weight"] @ (w["to_v.weight"] @ c_v)
    return out


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place between two arrays of one 16-bit float type."""

    def ordered(x: np.ndarray) -> np.ndarray:
        bits = x.view(np.int16).astype(np.int32)
        return np.where(bits < 0, -(bits & 0x7FFF), bits)

    return np.abs(ordered(a) - ordered(b))


@pytest.fixture(scope="module")
def hn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hn(tmp_path_factory.mktemp("hn") / "sd1.pt", (C, TEXT), seed=5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_bases_fold_in_float32_within_one_ulp_of_float64(hn, dtype, tmp_path):
    base_path = _base(tmp_path / "base.safetensors", dtype)
    fast = bake_sd([hn], base_path, tmp_path / "fast.safetensors", strengths=[0.8])
    exact = bake_sd([hn], base_path, tmp_path / "exact.safetensors", strengths=[0.8], float64=True)
    assert fast.passed and exact.passed and fast.dtype == dtype
    base, _ = read_safetensors(base_path)
    a, _ = read_safetensors(tmp_path / "fast.safetensors")
    b, _ = read_safetensors(tmp_path / "exact.safetensors")
    reference = _fold64(hn, base, 0.8)
    differ = total = 0
    for name, values in reference.items():
        want = values.astype(numpy_dtype(dtype))
        assert _ulps(b[name], want).max() <= 1, name  # float64 here and there: BLAS order only
        # float32: one ulp at most, except results that cancel to near zero (bf16's ulp shrinks
        # with them), which still differ by less than 1e-6 of the tensor's largest value.
        err = np.abs(a[name].astype(np.float64) - values)
        near_zero = err <= 1e-6 * np.abs(values).max()
        assert ((_ulps(a[name], want) <= 1) | near_zero).all(), name
        differ, total = differ + int((_ulps(a[name], b[name]) > 0).sum()), total + want.size
    assert differ / total < 0.01  # rare: only values within float32's error of a rounding tie
    for name in base:
        if not name.endswith(CHANGED):
            assert a[name].tobytes() == base[name].tobytes() == b[name].tobytes()
    # The report separates the algebra's error from the cast's: float32's is far below the cast.
    assert max(p.fold_abs for p in fast.layers) < 0.01 * max(p.cast_abs for p in fast.layers)


def test_float32_bases_always_fold_in_float64(hn, tmp_path):
    base_path = _base(tmp_path / "base.safetensors", "float32")
    bake_sd([hn], base_path, tmp_path / "a.safetensors")
    bake_sd([hn], base_path, tmp_path / "b.safetensors", float64=True)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    base, _ = read_safetensors(base_path)
    a, _ = read_safetensors(tmp_path / "a.safetensors")
    for name, values in _fold64(hn, base, 1.0).items():
        assert np.abs(a[name] - values.astype(np.float32)).max() <= 1e-6 * np.abs(values).max(), name
    assert work_dtype("float32") is np.float64 and work_dtype("bfloat16") is np.float32
