"""The committed hypernetwork fixtures: integrity, reproducibility and the structure they promise.

``torch.load(..., weights_only=True)`` is the independent reference reader here; the expected key sets
and shapes are spelled out by hand rather than derived from ``scripts/make_fixtures.py``.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text(encoding="utf-8"))["files"]

# A1111's 13 metadata keys with their types, in the order ``Hypernetwork.save`` writes them.
OPTIONAL_STR = (str, type(None))
META_TYPES: dict[str, Any] = {
    "step": int,
    "name": str,
    "layer_structure": list,
    "activation_func": OPTIONAL_STR,
    "is_layer_norm": bool,
    "weight_initialization": str,
    "sd_checkpoint": OPTIONAL_STR,
    "sd_checkpoint_name": OPTIONAL_STR,
    "activate_output": bool,
    "use_dropout": bool,
    "dropout_structure": list,
    "last_layer_dropout": bool,
    "optional_info": OPTIONAL_STR,
}
META_KEYS = tuple(META_TYPES)
OLD_META_KEYS = tuple(
    k for k in META_KEYS if k not in ("activate_output", "dropout_structure", "last_layer_dropout", "optional_info")
)


# ------------------------------------------------------------------------------------------------
# expected state-dict layouts, written out by hand as "key=shape" items; a shape lists its sizes in
# terms of the module width: "d", "2d", "h" (the SD2 hidden width int(d * 0.0078125)) or a plain number

LAYOUTS: dict[str, str] = {
    # b, f, g, j, k, l: linear.0 d->2d, linear.1 2d->d
    "simple": "linear.0.weight=2d,d linear.0.bias=2d linear.1.weight=d,2d linear.1.bias=d",
    "nai": "linear1.weight=2d,d linear1.bias=2d linear2.weight=d,2d linear2.bias=d",
    # Linear 0, ReLU 1, LayerNorm 2, Dropout 3, Linear 4, LayerNorm 5
    "relu_ln_dropout": "linear.0.weight=2d,d linear.0.bias=2d linear.2.weight=2d linear.2.bias=2d "
    "linear.4.weight=d,2d linear.4.bias=d linear.5.weight=d linear.5.bias=d",
    # four (Linear, Hardswish, LayerNorm, Dropout) groups at 0, 4, 8, 12, then Linear 16, Hardswish 17,
    # LayerNorm 18 (activate_output; the last dropout entry is 0)
    "deep": "linear.0.weight=2d,d linear.0.bias=2d linear.2.weight=2d linear.2.bias=2d "
    "linear.4.weight=2d,2d linear.4.bias=2d linear.6.weight=2d linear.6.bias=2d "
    "linear.8.weight=2d,2d linear.8.bias=2d linear.10.weight=2d linear.10.bias=2d "
    "linear.12.weight=2d,2d linear.12.bias=2d linear.14.weight=2d linear.14.bias=2d "
    "linear.16.weight=d,2d linear.16.bias=d linear.18.weight=d linear.18.bias=d",
    # Linear 0, PReLU 1 (one slope, no bias), Linear 2
    "prelu": "linear.0.weight=2d,d linear.0.bias=2d linear.1.weight=1 linear.2.weight=d,2d linear.2.bias=d",
    # ResBlock 0: Linear 0, ReLU 1, LayerNorm 2; ResBlock 1: Linear 0, LayerNorm 1
    "skip": "linear.0.linear.0.weight=2d,d linear.0.linear.0.bias=2d linear.0.linear.2.weight=2d "
    "linear.0.linear.2.bias=2d linear.1.linear.0.weight=d,2d linear.1.linear.0.bias=d "
    "linear.1.linear.1.weight=d linear.1.linear.1.bias=d",
    # Linear 0, ReLU 1, Linear 2
    "sd2": "linear.0.weight=h,d linear.0.bias=h linear.2.weight=d,h linear.2.bias=d",
}
SD2_HIDDEN = {1024: 8, 320: 2}  # int(d * 0.0078125)


def _layout(name: str, d: int) -> dict[str, tuple[int, ...]]:
    """LAYOUTS[name] for width d as {key: shape}."""
    sizes = {"d": d, "2d": 2 * d, "h": SD2_HIDDEN.get(d, -1)}
    items = (item.split("=") for item in LAYOUTS[name].split())
    return {key: tuple(sizes[s] if s in sizes else int(s) for s in shape.split(",")) for key, shape in items}


# file -> (dims in order, container type, layout, metadata keys in order, dtype name)
EXPECTED: dict[str, tuple[list[int], type, str, tuple[str, ...], str]] = {
    "a_nai_legacy.pt": ([8, 16], list, "nai", (), "float32"),
    "b_a1111_default.pt": ([8, 16], tuple, "simple", META_KEYS, "float32"),
    "c_relu_ln_dropout.pt": ([8, 16], tuple, "relu_ln_dropout", META_KEYS, "float32"),
    "d_deep.pt": ([8, 16], tuple, "deep", META_KEYS, "float32"),
    "e_prelu.pt": ([8, 16], tuple, "prelu", META_KEYS, "float32"),
    "f_none_no_activate_output.pt": ([8, 16], tuple, "simple", OLD_META_KEYS, "float32"),
    "g_kohya_list.pt": ([8, 16], list, "simple", (), "float32"),
    "h_monkeypatch_skip.pt": ([8, 16], tuple, "skip", (*META_KEYS, "skip_connection", "upsample_linear"), "float32"),
    "i_sd2_1024.pt": ([1024, 320], tuple, "sd2", META_KEYS, "float32"),
    "j_fp16_cuda.pt": ([8, 16], tuple, "simple", META_KEYS, "float16"),
    "k_bf16.pt": ([8, 16], tuple, "simple", META_KEYS, "bfloat16"),
    "l_legacy_stacked.pt": ([8, 16], tuple, "simple", META_KEYS, "float32"),
}

# selected metadata values: file -> {key: value}
META_VALUES: dict[str, dict[str, Any]] = {
    "b_a1111_default.pt": {
        "step": 1000,
        "name": "b_a1111_default",
        "layer_structure": [1.0, 2.0, 1.0],
        "activation_func": "linear",
        "is_layer_norm": False,
        "weight_initialization": "Normal",
        "sd_checkpoint": "a1b2c3d4e5",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
        "activate_output": False,
        "use_dropout": False,
        "dropout_structure": [0, 0, 0],
        "last_layer_dropout": False,
        "optional_info": None,
    },
    "c_relu_ln_dropout.pt": {
        "activation_func": "relu",
        "is_layer_norm": True,
        "use_dropout": True,
        "activate_output": False,
        "dropout_structure": [0.0, 0.3, 0.0],
    },
    "d_deep.pt": {
        "layer_structure": [1.0, 2.0, 2.0, 2.0, 2.0, 1.0],
        "activation_func": "swish",
        "is_layer_norm": True,
        "use_dropout": True,
        "last_layer_dropout": True,
        "activate_output": True,
        "dropout_structure": [0.0, 0.1, 0.1, 0.1, 0.1, 0.0],
    },
    "e_prelu.pt": {"activation_func": "prelu", "layer_structure": [1.0, 2.0, 1.0], "activate_output": False},
    "f_none_no_activate_output.pt": {"activation_func": None, "layer_structure": [1.0, 2.0, 1.0]},
    "h_monkeypatch_skip.pt": {"skip_connection": True, "upsample_linear": None},
    "i_sd2_1024.pt": {"layer_structure": [1.0, 0.0078125, 1.0], "activation_func": "relu"},
}


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch")


def _load(torch: Any, name: str) -> dict[Any, Any]:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------
# integrity


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_manifest_matches_committed_file(name: str) -> None:
    path = FIXTURES / name
    assert path.is_file()
    assert path.stat().st_size == MANIFEST[name]["size"]
    assert _sha256(path) == MANIFEST[name]["sha256"]
    assert MANIFEST[name]["description"].strip()
    assert "\n" not in MANIFEST[name]["description"]


def test_manifest_lists_exactly_the_fixtures() -> None:
    assert set(MANIFEST) == set(EXPECTED)
    assert {p.name for p in FIXTURES.glob("*.pt")} == set(EXPECTED)


def test_fixtures_are_tiny() -> None:
    sizes = [entry["size"] for entry in MANIFEST.values()]
    assert max(sizes) < 300_000
    assert sum(sizes) < 1_500_000


def test_readme_describes_every_fixture() -> None:
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for name in MANIFEST:
        assert f"`{name}`" in readme


# ------------------------------------------------------------------------------------------------
# structure, read back with torch's own loader


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_structure(torch: Any, name: str) -> None:
    dims, container, layout, meta_keys, dtype_name = EXPECTED[name]
    obj = _load(torch, name)
    assert type(obj) is dict
    keys = list(obj)
    # int dim keys first, in the given order, then the metadata keys in A1111's order
    assert keys == [*dims, *meta_keys]
    assert all(type(k) is int for k in dims)
    for dim in dims:
        pair = obj[dim]
        assert type(pair) is container
        assert len(pair) == 2
        for sd in pair:
            assert type(sd) is collections.OrderedDict
            assert hasattr(sd, "_metadata")  # written by Module.state_dict()
            assert sd._metadata[""] == {"version": 1}
            assert {k: tuple(v.shape) for k, v in sd.items()} == _layout(layout, dim)
            for tensor in sd.values():
                assert tensor.dtype == getattr(torch, dtype_name)
                assert tensor.device.type == "cpu"
                assert bool((tensor != 0).all())  # biases too: a swapped tensor must be visible
    for key in meta_keys:
        assert isinstance(obj[key], META_TYPES.get(key, object)), key
    for key, value in META_VALUES.get(name, {}).items():
        assert obj[key] == value, key
    if "layer_structure" in meta_keys:
        assert all(type(x) is float for x in obj["layer_structure"])
    if "name" in meta_keys:
        assert obj["name"] == Path(name).stem


def test_nai_uses_one_object_twice(torch: Any) -> None:
    obj = _load(torch, "a_nai_legacy.pt")
    for dim in (8, 16):
        assert obj[dim][0] is obj[dim][1]


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if n != "a_nai_legacy.pt"])
def test_k_and_v_differ(torch: Any, name: str) -> None:
    obj = _load(torch, name)
    for dim in EXPECTED[name][0]:
        k_sd, v_sd = obj[dim]
        assert k_sd is not v_sd
        for key in k_sd:
            assert not torch.equal(k_sd[key], v_sd[key]), key


def test_values_are_small(torch: Any) -> None:
    obj = _load(torch, "b_a1111_default.pt")
    weight = obj[16][0]["linear.0.weight"]
    assert 0.005 < float(weight.std()) < 0.015
    assert float(weight.abs().max()) < 0.1


@pytest.mark.parametrize(
    ("name", "dtype_name"),
    [("j_fp16_cuda.pt", "float16"), ("k_bf16.pt", "bfloat16"), ("l_legacy_stacked.pt", "float32")],
)
def test_variants_hold_b_values(torch: Any, name: str, dtype_name: str) -> None:
    base = _load(torch, "b_a1111_default.pt")
    other = _load(torch, name)
    for dim in (8, 16):
        for base_sd, other_sd in zip(base[dim], other[dim], strict=True):
            for key, tensor in base_sd.items():
                assert torch.equal(tensor.to(getattr(torch, dtype_name)), other_sd[key]), key


# ------------------------------------------------------------------------------------------------
# container details, read from the raw pickles


class _PidCollector(pickle.Unpickler):
    """Reads a torch pickle without torch, recording (storage type, key, location, numel) per storage."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.pids: list[tuple[str, str, str, int]] = []

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        return lambda *args, **kwargs: None

    def persistent_load(self, pid: Any) -> None:
        self.pids.append((pid[1], pid[2], pid[3], pid[4]))


def _zip_pids(path: Path) -> list[tuple[str, str, str, int]]:
    with zipfile.ZipFile(path) as zf:
        data = zf.read(f"{path.stem}/data.pkl")
    collector = _PidCollector(io.BytesIO(data))
    collector.load()
    return collector.pids


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if n != "l_legacy_stacked.pt"])
def test_zip_layout(name: str) -> None:
    path = FIXTURES / name
    assert zipfile.is_zipfile(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        prefix = f"{path.stem}/"
        assert names[0] == prefix + "data.pkl"
        for record in (".format_version", "byteorder", "version", ".data/serialization_id"):
            assert prefix + record in names
        assert zf.read(prefix + "byteorder") == b"little"
    locations = {pid[2] for pid in _zip_pids(path)}
    assert locations == ({"cuda:0"} if name == "j_fp16_cuda.pt" else {"cpu"})


def test_fp16_storages_are_tagged_cuda(torch: Any) -> None:
    pids = _zip_pids(FIXTURES / "j_fp16_cuda.pt")
    assert len(pids) == 2 * 2 * 4  # 2 dims x (k, v) x 4 tensors
    assert {(storage_type, location) for storage_type, _, location, _ in pids} == {("HalfStorage", "cuda:0")}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            torch.load(FIXTURES / "j_fp16_cuda.pt", weights_only=True)


def test_legacy_stacked_layout() -> None:
    path = FIXTURES / "l_legacy_stacked.pt"
    assert not zipfile.is_zipfile(path)
    with path.open("rb") as f:
        assert pickle.load(f) == 0x1950A86A20F9469CFC6C  # torch's legacy magic number
        assert pickle.load(f) == 1001
        assert pickle.load(f)["little_endian"] is True
        collector = _PidCollector(f)
        collector.load()
        keys = pickle.load(f)
    appearance = list(dict.fromkeys(pid[1] for pid in collector.pids))
    assert keys == appearance == sorted(keys)
    assert {pid[2] for pid in collector.pids} == {"cpu"}


# ------------------------------------------------------------------------------------------------
# reproducibility


def test_generator_check_passes(torch: Any) -> None:  # the generator needs torch
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_fixtures.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
