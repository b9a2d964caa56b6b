"""Property tests: random valid sd-kv hypernetworks survive every format losslessly.

The strategy :func:`hypernetworks` builds models A1111 would load: 1-3 dims, a random
``layer_structure``/activation/layer-norm/dropout/``activate_output`` combination, a random subset
of the 13 A1111 metadata keys, extra metadata of mixed Python types, one tensor dtype per model
(float32, float16 or bfloat16) and tensors of the layout's shapes filled with random values or
random *bit patterns* (NaN payloads, signalling NaNs, -0.0, infinities, subnormals), because
conversions must be bit-exact. The ``.pt`` writer is also checked independently with
``torch.load(weights_only=True)``, and the ``.safetensors`` IO against the ``safetensors`` package.
"""

from __future__ import annotations

import collections
import importlib.util
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperkit import conversion, formats
from hyperkit.formats import pt
from hyperkit.formats.dtypes import numpy_dtype
from hyperkit.formats.safetensors_io import DTYPES as ST_DTYPE_NAMES
from hyperkit.formats.safetensors_io import read_safetensors, write_safetensors
from hyperkit.sdkv import structure
from hyperkit.sdkv.model import A1111_METADATA_KEYS, SDKVHypernetwork
from hyperkit.sdkv.strmap import RESERVED

BF16 = np.dtype(ml_dtypes.bfloat16)
MODEL_DTYPES = (np.dtype("<f4"), np.dtype("<f2"), BF16)

# Bit patterns that a float conversion would lose: sign of zero, NaN payloads (quiet and
# signalling, both signs), infinities, the smallest subnormal.
SPECIAL_BITS: dict[str, tuple[int, ...]] = {
    "float32": (0x80000000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FBFFFFF, 0x7F800000, 0xFF800000, 0x1),
    "float16": (0x8000, 0x7E00, 0xFE01, 0x7C01, 0x7DFF, 0x7C00, 0xFC00, 0x1),
    "bfloat16": (0x8000, 0x7FC0, 0xFFC1, 0x7F81, 0x7FBF, 0x7F80, 0xFF80, 0x1),
}
UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

#: Multiplies every max_examples here, for long local runs (``HYPERKIT_PROPERTY_SCALE=20 pytest ...``).
SCALE = float(os.environ.get("HYPERKIT_PROPERTY_SCALE", "1"))

SETTINGS = settings(
    max_examples=max(1, int(40 * SCALE)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _format_available(name: str) -> bool:
    """Whether the format's module (and, for ONNX, the onnx package) can be imported."""
    module = formats.get(name).module
    if importlib.util.find_spec(module) is None:
        return False
    return name != "onnx" or importlib.util.find_spec("onnx") is not None


def _format_params() -> list[Any]:
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                not _format_available(name), reason=f"{formats.get(name).module} not importable yet"
            ),
        )
        for name in formats.names()
    ]


needs_onnx = pytest.mark.skipif(not _format_available("onnx"), reason="hyperkit.formats.onnx not available")


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([1, 1.0, 0, 0.0, -0.0, True, False]),
    # JSON spells every NaN "NaN", so only the canonical NaN keeps its bits through .safetensors/ONNX
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: math.nan if math.isnan(f) else f),
    st.text(max_size=12),
)
_dict_keys = st.one_of(
    st.text(max_size=6),
    st.integers(-5, 5),
    st.sampled_from([1.0, 2.5, None, True]),
    st.tuples(st.integers(0, 3), st.text(max_size=3)),
)
#: Plain metadata values as a pickle (and A1111) can hold them: nested lists, tuples and dicts.
plain_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(_dict_keys, inner, max_size=3),
    ),
    max_leaves=8,
)


def _extra_key_ok(key: str) -> bool:
    if key in A1111_METADATA_KEYS or key in RESERVED:
        return False
    if key == "skip_connection":  # a truthy value marks a MonkeyPatch file (unsupported on purpose)
        return False
    return not key.strip().isdigit()  # a digit-string key is refused as a broken dim key


_extra_keys = st.text(max_size=12).filter(_extra_key_ok)
_one = st.sampled_from([1, 1.0])
_inner = st.sampled_from([0.5, 1, 1.0, 1.5, 2, 2.0])
_dropout_p = st.one_of(
    st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.75]),
    st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True),
)


def _fill(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, mode: str, specials: int) -> np.ndarray:
    n = math.prod(shape)
    if mode == "bits":
        arr = rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype).copy()
    else:
        arr = (rng.standard_normal(n) * 0.05).astype(dtype)
    if specials and n:
        bits = arr.view(UINT_OF_SIZE[dtype.itemsize])
        table = np.array(SPECIAL_BITS[dtype.name], dtype=bits.dtype)
        idx = rng.integers(0, n, specials)
        bits[idx] = table[rng.integers(0, len(table), specials)]
    return arr.reshape(shape)


@st.composite
def hypernetworks(draw: st.DrawFn) -> SDKVHypernetwork:
    """A random sd-kv hypernetwork whose tensors fit A1111's layout for its metadata."""
    dims = draw(st.lists(st.integers(4, 24), min_size=1, max_size=3, unique=True))
    present = draw(st.sets(st.sampled_from(A1111_METADATA_KEYS)))
    meta: dict[str, Any] = {}

    n = 3  # A1111's default layer_structure [1, 2, 1]
    if "layer_structure" in present:
        n = draw(st.integers(2, 5))
        ls = [draw(_one), *(draw(_inner) for _ in range(n - 2)), draw(_one)]
        meta["layer_structure"] = ls if draw(st.integers(0, 4)) else tuple(ls)
    if "activation_func" in present:
        meta["activation_func"] = draw(
            st.one_of(  # the ones with a parameter or an alias more often
                st.sampled_from(["prelu", "swish", "linear", None]),
                st.sampled_from([None, *sorted(structure.ACTIVATIONS)]),
            )
        )
    if "is_layer_norm" in present:
        meta["is_layer_norm"] = draw(st.booleans())
    if "activate_output" in present:
        meta["activate_output"] = draw(st.booleans())
    if "dropout_structure" in present:
        inner = [draw(st.one_of(st.sampled_from([0, 0.0]), _dropout_p)) for _ in range(n - 2)]
        ds = [draw(st.sampled_from([0, 0.0])), *inner, draw(st.sampled_from([0, 0.0]))]
        meta["dropout_structure"] = ds if draw(st.integers(0, 4)) else tuple(ds)
    if "use_dropout" in present:
        # Without an explicit dropout_structure A1111 derives one that only fits n >= 3.
        meta["use_dropout"] = draw(st.booleans()) and ("dropout_structure" in present or n >= 3)
    if "last_layer_dropout" in present:
        meta["last_layer_dropout"] = draw(st.booleans())
    if "step" in present:
        meta["step"] = draw(st.one_of(st.integers(0, 2**40), plain_values))
    if "name" in present:
        meta["name"] = draw(st.one_of(st.text(max_size=16), plain_values))
    if "weight_initialization" in present:
        meta["weight_initialization"] = draw(
            st.one_of(
                st.sampled_from(["Normal", "KaimingUniform", "KaimingNormal", "XavierUniform", "XavierNormal"]),
                plain_values,
            )
        )
    for key in ("sd_checkpoint", "sd_checkpoint_name", "optional_info"):
        if key in present:
            meta[key] = draw(st.one_of(st.none(), st.text(max_size=16), plain_values))
    extras = draw(st.dictionaries(_extra_keys, plain_values, max_size=4))
    meta.update(extras)

    cfg = structure.resolve_config(meta)  # valid by construction
    dtype = draw(st.sampled_from(MODEL_DTYPES))
    mode = draw(st.sampled_from(["normal", "bits"]))
    specials = draw(st.sampled_from([0, 0, 1, 5]))
    shuffle = draw(st.integers(0, 5)) == 0
    legacy = draw(st.integers(0, 3)) == 0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    order: list[int | str] = draw(st.permutations([*dims, *meta]))
    modules = {}
    for dim in (k for k in order if isinstance(k, int)):
        shapes = structure.expected_shapes(structure.layout(dim, cfg))
        pair = []
        for _ in range(2):
            keys = list(shapes)
            if shuffle:
                keys = [keys[i] for i in rng.permutation(len(keys))]
            state = {k: _fill(rng, shapes[k], dtype, mode, specials) for k in keys}
            if legacy and set(state) == set(structure.LEGACY_NAMES.values()):
                back = {v: k for k, v in structure.LEGACY_NAMES.items()}
                state = {back[k]: v for k, v in state.items()}
            pair.append(state)
        modules[dim] = (pair[0], pair[1])
    metadata = {k: meta[k] for k in order if isinstance(k, str)}
    return SDKVHypernetwork(
        modules=modules,
        metadata=metadata,
        key_order=list(order),
        container=draw(st.sampled_from(["tuple", "list"])),
        default_name=draw(st.sampled_from(["hypernetwork", "my_hn", "ünï cødé"])),
    )


# ---------------------------------------------------------------------------------------------
# equality helpers (independent of hyperkit's own verify)
# ---------------------------------------------------------------------------------------------


def same_value(a: Any, b: Any) -> bool:
    """Stricter than ``strict_equal``: dict *key* types and the sign of zero count too."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        ka, kb = list(a), list(b)
        return (
            len(ka) == len(kb)
            and all(same_value(x, y) for x, y in zip(ka, kb, strict=True))
            and all(same_value(a[k], b[k]) for k in ka)
        )
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def assert_bit_equal(want: np.ndarray, got: np.ndarray, name: str) -> None:
    assert isinstance(got, np.ndarray), name
    assert got.dtype == want.dtype, (name, want.dtype, got.dtype)
    assert got.shape == want.shape, (name, want.shape, got.shape)
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), name


def assert_same_model(want: SDKVHypernetwork, got: SDKVHypernetwork) -> None:
    assert isinstance(got, SDKVHypernetwork)
    assert list(got.modules) == list(want.modules)
    for dim in want.modules:
        assert type(dim) is int
        for which in range(2):
            assert list(got.modules[dim][which]) == list(want.modules[dim][which]), (dim, which)
    wt, gt = list(want.tensors()), list(got.tensors())
    assert [n for n, _ in gt] == [n for n, _ in wt]
    for (name, a), (_, b) in zip(wt, gt, strict=True):
        assert_bit_equal(a, b, name)
    assert conversion.strict_equal(want.metadata, got.metadata), (want.metadata, got.metadata)
    assert same_value(want.metadata, got.metadata), (want.metadata, got.metadata)
    assert conversion.strict_equal(want.key_order, got.key_order), (want.key_order, got.key_order)
    assert same_value(want.key_order, got.key_order)
    assert got.container == want.container
    conversion.verify(want, got, "round trip")  # hyperkit's own check agrees


def expected_after(fmt: str, hn: SDKVHypernetwork) -> SDKVHypernetwork:
    """What reading back a file of ``fmt`` written from ``hn`` must give."""
    module = formats.get(fmt).load_module()
    normalize = getattr(module, "normalize", None)
    return normalize(hn) if normalize else hn


# ---------------------------------------------------------------------------------------------
# model properties
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(hn=hypernetworks())
def test_generated_models_are_valid(hn: SDKVHypernetwork) -> None:
    cfg = structure.check(hn)
    assert structure.problems(hn) == []
    assert cfg == structure.resolve_config(hn.metadata)
    assert structure.problems(pt.normalize(hn)) == []


@SETTINGS
@given(hn=hypernetworks())
def test_pt_normalize_is_idempotent(hn: SDKVHypernetwork) -> None:
    once = pt.normalize(hn)
    assert list(once.metadata)[: len(A1111_METADATA_KEYS)] == list(A1111_METADATA_KEYS)
    assert once.container == "tuple"
    assert_same_model(once, pt.normalize(once))
    # tensors and extra metadata are kept; the 13 A1111 keys become what A1111 would see
    # (use_dropout forced on by a non-zero dropout_structure), with None activation spelled "linear"
    assert [n for n, _ in once.tensors()] == [n for n, _ in hn.tensors()]
    effective = hn.effective_metadata()
    if effective["activation_func"] is None:
        effective["activation_func"] = "linear"
    for key in A1111_METADATA_KEYS:
        assert same_value(once.metadata[key], effective[key]), key
    for key, value in hn.extra_metadata().items():
        assert same_value(once.metadata[key], value), key


@pytest.mark.parametrize("fmt", _format_params())
@SETTINGS
@given(hn=hypernetworks())
def test_write_read_round_trip(fmt: str, hn: SDKVHypernetwork) -> None:
    module = formats.get(fmt).load_module()
    suffix = formats.get(fmt).suffixes[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{suffix}"
        module.write(hn, path, stem="model")
        first = path.read_bytes()
        back = module.read(path)
        assert_same_model(expected_after(fmt, hn), back)
        if fmt != "pt":
            assert_same_model(hn, back)  # lossless: no normalisation at all
            assert back.default_name == hn.default_name
        structure.check(back)
        # The writer is a fixed point: re-writing what was read gives the very same bytes.
        again = Path(tmp) / f"again{suffix}"
        module.write(back, again, stem="model")
        assert again.read_bytes() == first


@needs_onnx
@SETTINGS
@given(hn=hypernetworks())
def test_chain_pt_safetensors_onnx_pt(hn: SDKVHypernetwork) -> None:
    want = pt.normalize(hn)
    mods = {name: formats.get(name).load_module() for name in ("pt", "safetensors", "onnx")}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # module level: write -> read through every format in turn
        mods["pt"].write(hn, d / "a.pt", stem="a")
        a = mods["pt"].read(d / "a.pt")
        assert_same_model(want, a)
        mods["safetensors"].write(a, d / "b.safetensors", stem="b")
        b = mods["safetensors"].read(d / "b.safetensors")
        assert_same_model(want, b)
        mods["onnx"].write(b, d / "c.onnx", stem="c")
        c = mods["onnx"].read(d / "c.onnx")
        assert_same_model(want, c)
        mods["pt"].write(c, d / "d.pt", stem="a")
        assert_same_model(want, mods["pt"].read(d / "d.pt"))
        assert (d / "d.pt").read_bytes() == (d / "a.pt").read_bytes()
        # the same through conversion.convert (which re-verifies every write)
        conversion.convert(d / "a.pt", d / "e.safetensors")
        conversion.convert(d / "e.safetensors", d / "f.onnx")
        conversion.convert(d / "f.onnx", d / "g.pt")
        assert_same_model(want, conversion.load(d / "g.pt"))


@pytest.mark.parametrize("fmt", _format_params())
@SETTINGS
@given(hn=hypernetworks())
def test_conversion_save_load_round_trip(fmt: str, hn: SDKVHypernetwork) -> None:
    suffix = formats.get(fmt).suffixes[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"saved{suffix}"
        conversion.save(hn, path)
        assert_same_model(expected_after(fmt, hn), conversion.load(path))
        assert_same_model(expected_after(fmt, hn), conversion.load(path, format=fmt, validate=False))
        assert [p.name for p in Path(tmp).iterdir()] == [path.name]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------
# the .pt writer, checked by torch itself
# ---------------------------------------------------------------------------------------------


def _torch_bytes(t: Any) -> bytes:
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@SETTINGS
@given(hn=hypernetworks())
def test_pt_writer_loads_with_torch_weights_only(hn: SDKVHypernetwork) -> None:
    torch = pytest.importorskip("torch")
    torch_dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    want = pt.normalize(hn)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hn.pt"
        pt.write(hn, path, stem="hn")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    assert type(obj) is dict
    assert same_value(list(obj), want.key_order)
    for key, value in obj.items():
        if isinstance(key, str):
            assert conversion.strict_equal(value, want.metadata[key]), key
            assert same_value(value, want.metadata[key]), key
            continue
        assert type(key) is int
        assert type(value) is tuple
        assert len(value) == 2
        for which, state in enumerate(value):
            assert type(state) is collections.OrderedDict
            ours = hn.modules[key][which]
            assert list(state) == list(ours)
            for name, tensor in state.items():
                arr = ours[name]
                assert isinstance(tensor, torch.Tensor)
                assert not tensor.requires_grad
                assert tensor.dtype == torch_dtypes[arr.dtype.name], name
                assert tuple(tensor.shape) == arr.shape, name
                assert tensor.is_contiguous()
                assert _torch_bytes(tensor) == arr.tobytes(), name
    assert [k for k in obj if isinstance(k, int)] == list(hn.modules)
    assert [k for k in obj if isinstance(k, str)] == list(want.metadata)


# ---------------------------------------------------------------------------------------------
# safetensors IO against the reference implementation
# ---------------------------------------------------------------------------------------------

_st_names = st.text(max_size=12).filter(lambda s: s != "__metadata__")


@st.composite
def tensor_dicts(draw: st.DrawFn) -> list[tuple[str, np.ndarray]]:
    """Named arrays of every safetensors dtype, including 0-d and zero-size shapes."""
    names = draw(st.lists(_st_names, max_size=6, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = []
    for name in names:
        code = draw(st.sampled_from(sorted(ST_DTYPE_NAMES)))
        dtype = numpy_dtype(ST_DTYPE_NAMES[code])
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        n = math.prod(shape)
        if code == "BOOL":
            arr = rng.integers(0, 2, n).astype(bool)
        else:
            arr = rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype)
        out.append((name, arr.reshape(shape)))
    return out


_st_metadata = st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4)


def _to_torch(arr: np.ndarray) -> Any:
    import torch

    if arr.dtype == BF16:
        return torch.from_numpy(arr.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(arr.copy())


@settings(max_examples=max(1, int(80 * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=tensor_dicts(), metadata=_st_metadata)
def test_safetensors_io_round_trip_and_reference_interop(
    tensors: list[tuple[str, np.ndarray]], metadata: dict[str, str]
) -> None:
    pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    safe_open = pytest.importorskip("safetensors").safe_open
    names = {numpy_dtype(v): k for k, v in ST_DTYPE_NAMES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        ours = Path(tmp) / "ours.safetensors"
        write_safetensors(ours, tensors, metadata)
        got, got_meta = read_safetensors(ours)
        assert list(got) == [n for n, _ in tensors]  # offset order is write order
        for name, arr in tensors:
            assert_bit_equal(arr, got[name], name)
        assert got_meta == metadata
        header_len = int.from_bytes(ours.read_bytes()[:8], "little")
        assert header_len % 8 == 0  # header padded so the buffer starts 8-byte aligned
        # hyperkit's file, read by the reference implementation
        ref = st_torch.load_file(str(ours))
        assert set(ref) == {n for n, _ in tensors}
        for name, arr in tensors:
            t = ref[name]
            assert tuple(t.shape) == arr.shape, name
            assert str(t.dtype) == "torch." + ST_DTYPE_NAMES[names[arr.dtype]], name  # torch spells them alike
        with safe_open(str(ours), framework="pt") as f:
            assert (f.metadata() or {}) == metadata
        # the reference implementation's file, read by hyperkit
        theirs = Path(tmp) / "theirs.safetensors"
        st_torch.save_file({n: _to_torch(a) for n, a in tensors}, str(theirs), metadata=metadata or None)
        got, got_meta = read_safetensors(theirs)
        assert set(got) == {n for n, _ in tensors}
        for name, arr in tensors:
            assert_bit_equal(arr, got[name], name)
        assert got_meta == metadata
