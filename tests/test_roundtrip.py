"""Every fixture variant through .pt -> .safetensors -> .onnx -> .pt, checked against torch itself.

The references are independent of hyperkit: ``torch.load(weights_only=True)`` of the original
file, the ``safetensors`` package, ONNX Runtime against torch modules built A1111's way, and an
A1111-style strict ``load_state_dict`` of the written ``.pt``.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import torch_module

import hyperkit
from hyperkit.conversion import strict_equal
from hyperkit.demo import fixture_dir
from hyperkit.sdkv.model import A1111_METADATA_KEYS

MANIFEST = json.loads((fixture_dir() / "MANIFEST.json").read_text())
NAMES = sorted(n for n in (MANIFEST.get("files") or MANIFEST) if n.endswith(".pt"))
SUPPORTED = [n for n in NAMES if not n.startswith("h_")]
A1111_STRICT_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")  # A1111 <= 1.9
LEGACY = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}
DEFAULTS = {
    "step": 0,
    "layer_structure": [1, 2, 1],
    "activation_func": None,
    "is_layer_norm": False,
    "weight_initialization": "Normal",
    "sd_checkpoint": None,
    "sd_checkpoint_name": None,
    "activate_output": True,
    "use_dropout": False,
    "last_layer_dropout": False,
    "optional_info": None,
}


def reference(name: str) -> dict:
    return torch.load(fixture_dir() / name, map_location="cpu", weights_only=True)


def chain(name: str, tmp: Path) -> Path:
    src = fixture_dir() / name
    hyperkit.convert(src, tmp / "a.safetensors")
    hyperkit.convert(tmp / "a.safetensors", tmp / "b.onnx")
    hyperkit.convert(tmp / "b.onnx", tmp / "c.pt")
    return tmp / "c.pt"


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


@pytest.mark.parametrize("name", SUPPORTED)
def test_chain_is_bit_exact_and_keeps_metadata(name, tmp_path):
    ref = reference(name)
    out = torch.load(chain(name, tmp_path), map_location="cpu", weights_only=True)
    ref_dims = [k for k in ref if isinstance(k, int)]
    assert [k for k in out if isinstance(k, int)] == ref_dims
    for dim in ref_dims:
        assert type(out[dim]) is tuple and len(out[dim]) == 2
        for got, want in zip(out[dim], ref[dim], strict=True):
            assert type(got) is OrderedDict
            assert list(got) == list(want)
            assert all(same_tensor(got[k], want[k]) for k in want)
    for key, value in ref.items():
        if isinstance(key, str):
            if key == "activation_func" and value is None:
                # The one documented normalisation: ComfyUI refuses None; A1111 reads both as identity.
                assert out[key] == "linear"
            else:
                assert strict_equal(out[key], value), (key, out[key], value)
    written = [k for k in out if isinstance(k, str)]
    assert written[:13] == list(A1111_METADATA_KEYS)
    for key in set(A1111_METADATA_KEYS) - set(ref):
        if key in DEFAULTS and key != "activation_func":
            assert out[key] == DEFAULTS[key], key
    assert out["name"] == ref.get("name", name.removesuffix(".pt"))


@pytest.mark.parametrize("name", SUPPORTED)
def test_written_pt_passes_a1111_zip_check(name, tmp_path):
    path = chain(name, tmp_path)
    members = zipfile.ZipFile(path).namelist()
    assert all(A1111_STRICT_NAMES.match(m) for m in members), members
    assert [m for m in members if m.endswith("data.pkl")] == ["c/data.pkl"]
    with zipfile.ZipFile(path) as zf:
        assert zf.read("c/data.pkl")[:2] == b"\x80\x02"  # pickle protocol 2
        assert zf.read("c/version") == b"3\n"
    torch.load(path, weights_only=True, mmap=True)


def _a1111_load(obj: dict) -> dict[int, list[torch.nn.Sequential]]:
    """A1111's Hypernetwork.load in miniature: its defaults, its rename, strict load_state_dict."""
    get = obj.get
    ls = get("layer_structure", [1, 2, 1])
    ds = get("dropout_structure") or [0] * len(ls)
    modules = {}
    for dim, pair in obj.items():
        if type(dim) is not int:
            continue
        modules[dim] = []
        for sd in pair:
            seq = torch_module(
                dim, ls, get("activation_func"), get("is_layer_norm", False), ds, get("activate_output", True)
            )
            sd = {LEGACY.get(k, k).removeprefix("linear."): v for k, v in sd.items()}
            seq.load_state_dict(sd, strict=True)
            modules[dim].append(seq)
    return modules


@pytest.mark.parametrize("name", [n for n in SUPPORTED if reference(n).get("activation_func") != "prelu"])
def test_written_pt_loads_the_a1111_way_and_onnx_matches(name, tmp_path):
    out = torch.load(chain(name, tmp_path), map_location="cpu", weights_only=True)
    modules = _a1111_load(out)
    assert modules
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {f"context_{d}": rng.standard_normal((2, 7, d)).astype("f4") for d in modules}
    for strength in (1.0, 0.4):
        results = dict(
            zip(
                [o.name for o in session.get_outputs()],
                session.run(None, {**feeds, "strength": np.array(strength, "f4")}),
                strict=True,
            )
        )
        for dim, (k_mod, v_mod) in modules.items():
            x = torch.from_numpy(feeds[f"context_{dim}"])
            with torch.no_grad():
                want_k = x + k_mod.float()(x) * strength
                want_v = x + v_mod.float()(x) * strength
            np.testing.assert_allclose(results[f"k_{dim}"], want_k.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(results[f"v_{dim}"], want_v.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SUPPORTED)
def test_safetensors_layout_read_by_the_safetensors_package(name, tmp_path):
    from safetensors import safe_open

    hyperkit.convert(fixture_dir() / name, tmp_path / "x.safetensors")
    ref = reference(name)
    with safe_open(tmp_path / "x.safetensors", framework="pt") as f:
        meta = f.metadata()
        assert meta["hyperkit.family"] == "sd-kv"
        assert meta["hyperkit.format_version"] == "1"
        assert meta["modelspec.sai_model_spec"] == "1.0.1"
        assert meta["modelspec.architecture"].endswith("/hypernetwork")
        assert json.loads(meta["hyperkit.key_order"]) == list(ref)
        for key, value in ref.items():
            if isinstance(key, str):
                assert json.loads(meta[f"hyperkit.{key}"]) == value
                continue
            for kv, state in zip("kv", value, strict=True):
                for sub, tensor in state.items():
                    assert same_tensor(f.get_tensor(f"{key}.{kv}.{sub}"), tensor)


def test_sd2_architecture_inferred(tmp_path):
    hyperkit.convert(fixture_dir() / "i_sd2_1024.pt", tmp_path / "x.safetensors")
    from safetensors import safe_open

    with safe_open(tmp_path / "x.safetensors", framework="np") as f:
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-v2-512/hypernetwork"


def test_monkeypatch_fixture_is_unsupported():
    with pytest.raises(hyperkit.errors.UnsupportedError, match="skip_connection=True"):
        hyperkit.load(fixture_dir() / "h_monkeypatch_skip.pt")


@pytest.mark.parametrize("name", SUPPORTED)
def test_reader_matches_torch_load(name):
    """hyperkit's torch-free reader sees exactly what torch.load(weights_only=True) sees."""
    ref = reference(name)
    hn = hyperkit.load(fixture_dir() / name)
    assert hn.key_order == list(ref)
    for dim, pair in hn.modules.items():
        for ours, theirs in zip(pair, ref[dim], strict=True):
            assert list(ours) == list(theirs)
            for key, arr in ours.items():
                assert same_tensor(
                    torch.from_numpy(np.array(arr).view(np.uint8)).view(theirs[key].dtype).reshape(theirs[key].shape),
                    theirs[key],
                )
    assert all(strict_equal(hn.metadata[k], v) for k, v in ref.items() if isinstance(k, str))
