"""``inspect``'s loader verdicts against independent references: torch networks built the way
ComfyUI and A1111 build them, and the real ``torch.load(weights_only=True)``.

The ComfyUI network here is written from the reference notes (§2), not with
:mod:`hyperkit.sdkv.comfyui`; A1111's comes from ``conftest.torch_module`` with a strict
``load_state_dict`` of the file's tensors.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import pickletools
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import a1111_dict, save_pt, torch_module

import hyperkit
from hyperkit import inspection
from hyperkit.demo import fixture_dir
from hyperkit.sdkv.model import parse_dropout_structure

COMFY_ACT = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "softsign": torch.nn.Softsign,
    "mish": torch.nn.Mish,
}
DROPOUT_CLAUSE = "keeps dropout p=0.3 active at inference"


def comfy_network(sd: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[torch.nn.Sequential, bool] | None:
    """ComfyUI's module for one state dict, or None where its node refuses the file; also whether
    it adds Dropout. Layers follow the ``.weight`` keys in insertion order; "last" counts them all."""
    act = meta.get("activation_func", "linear")
    if act not in COMFY_ACT:
        return None
    norm, use_dropout = meta.get("is_layer_norm", False), meta.get("use_dropout", False)
    activate_output, last_layer_dropout = meta.get("activate_output", False), meta.get("last_layer_dropout", False)
    names = [k[: -len(".weight")] for k in sd if k.endswith(".weight")]
    layers: list[torch.nn.Module] = []
    dropout = False
    i = 0
    while i < len(names):
        last, penultimate = i == len(names) - 1, i == len(names) - 2
        weight = sd[f"{names[i]}.weight"]
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": sd[f"{names[i]}.bias"]})
        layers.append(linear)
        if act != "linear" and (not last or activate_output):
            layers.append(COMFY_ACT[act]())
        if norm:
            i += 1
            ln_weight = sd[f"{names[i]}.weight"]
            ln = torch.nn.LayerNorm(ln_weight.shape[0])
            ln.load_state_dict({"weight": ln_weight, "bias": sd[f"{names[i]}.bias"]})
            layers.append(ln)
        if use_dropout and not last and (not penultimate or last_layer_dropout):
            layers.append(torch.nn.Dropout(p=0.3))
            dropout = True
        i += 1
    return torch.nn.Sequential(*layers), dropout


def a1111_network(sd: dict[str, torch.Tensor], meta: dict[str, Any], dim: int) -> torch.nn.Module | None:
    """A1111's module (eval mode) with the file's tensors, or None where its strict load fails."""
    ls = meta.get("layer_structure", [1, 2, 1])
    ds = meta.get("dropout_structure") or parse_dropout_structure(
        ls, meta.get("use_dropout", False), meta.get("last_layer_dropout", False)
    )
    act = meta.get("activation_func")
    seq = torch_module(dim, ls, act, meta.get("is_layer_norm", False), ds, meta.get("activate_output", True))
    legacy = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias"}
    legacy |= {"linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}
    fixed = {legacy.get(k, k).removeprefix("linear."): v for k, v in sd.items()}
    try:
        seq.load_state_dict(fixed, strict=True)
    except RuntimeError:
        return None
    return seq.eval()


def reference_verdict(path: Path) -> tuple[bool, bool | None, bool]:
    """(ComfyUI loads, its layers compute A1111's network with dropout off (None if A1111 cannot
    load it), ComfyUI adds dropout) from the torch networks."""
    obj = torch.load(path, weights_only=True, map_location="cpu")
    meta = {k: v for k, v in obj.items() if isinstance(k, str)}
    same: bool | None = True
    dropout = False
    for dim, pair in ((k, v) for k, v in obj.items() if isinstance(k, int)):
        for sd in pair:
            x = torch.randn(4, dim, generator=torch.Generator().manual_seed(dim))
            try:
                comfy = comfy_network(sd, meta)
                if comfy is None:
                    return False, None, False
                with torch.no_grad():
                    ours = comfy[0].eval()(x)
            except (RuntimeError, IndexError, KeyError):  # ComfyUI raises building or sampling
                return False, None, False
            dropout |= comfy[1]
            with torch.no_grad():
                a1111 = a1111_network(sd, meta, dim)
                if a1111 is None:
                    same = None
                elif same is not None:
                    same = same and bool(torch.allclose(ours, a1111(x), rtol=0, atol=1e-6))
    return True, same, dropout


def _variants() -> list[tuple[str, dict[str, Any], str]]:
    out = []
    for act, norm, ao, dropout in itertools.product(
        ["linear", "relu", "tanh", "swish"], [False, True], [False, True, None], [False, True]
    ):
        out.append((f"{act}-ln{norm:d}-ao{ao}-do{dropout:d}", {"act": act, "ln": norm, "ao": ao, "do": dropout}, ""))
    deep = {"act": "relu", "ln": True, "ao": False, "do": False, "ls": [1, 2, 2, 2, 2, 1]}
    out.append(("lexicographic-keys-break", deep, "sort"))  # shapes no longer chain: ComfyUI fails
    same_width = {"act": "linear", "ln": False, "ao": False, "do": False, "ls": [1] * 12}
    out.append(("lexicographic-keys-reorder", same_width, "sort"))  # loads, layers in another order
    out.append(("deep-last-layer-dropout", {**deep, "do": True, "lld": True}, ""))
    out.append(("elu-with-ln-ao", {"act": "elu", "ln": True, "ao": True, "do": False}, ""))
    return out


def _build(tmp_path: Path, case: dict[str, Any], edit: str) -> Path:
    ls = case.get("ls", [1.0, 2.0, 1.0])
    ds = [0] + [0.3] * (len(ls) - 2) + [0] if case["do"] else None
    obj = a1111_dict(
        dims=(8, 16),
        layer_structure=ls,
        activation=case["act"],
        layer_norm=case["ln"],
        dropout=ds,
        activate_output=bool(case["ao"]),
        last_layer_dropout=case.get("lld", False),
    )
    if case["ao"] is None:
        del obj["activate_output"]  # A1111 then assumes True, ComfyUI False
    if edit == "sort":  # a careless writer: linear.10 now comes before linear.2
        for dim in (8, 16):
            obj[dim] = tuple(collections.OrderedDict(sorted(sd.items())) for sd in obj[dim])
    return save_pt(obj, tmp_path / "hn.pt")


def _check(path: Path) -> dict[str, Any]:
    loads, same, dropout = reference_verdict(path)
    verdict = hyperkit.inspect_file(path)["verdicts"]["comfyui"]
    assert verdict["loads"] is loads, verdict
    if not loads:
        return verdict
    assert verdict["same_as_a1111"] is (same is True and not dropout), (verdict, same, dropout)
    if same is not None:
        # dropout and structure are reported separately
        assert (DROPOUT_CLAUSE in verdict["reason"]) is dropout, verdict
        only_dropout = verdict["reason"].startswith("ComfyUI keeps dropout") or not verdict["reason"]
        assert only_dropout is same, verdict
    return verdict


@pytest.mark.parametrize(("case", "edit"), [(c, e) for _, c, e in _variants()], ids=[n for n, _, _ in _variants()])
def test_comfyui_verdict_matches_torch_networks(tmp_path, case, edit):
    _check(_build(tmp_path, case, edit))


@pytest.mark.parametrize("name", sorted(p.name for p in fixture_dir().glob("*.pt")))
def test_comfyui_verdict_on_fixtures(name):
    _check(fixture_dir() / name)


def test_relu_layer_norm_names_how_comfyui_differs():
    verdict = hyperkit.inspect_file(fixture_dir() / "c_relu_ln_dropout.pt")["verdicts"]["comfyui"]
    assert verdict == {
        "loads": True,
        "same_as_a1111": False,
        "reason": "ComfyUI adds a relu after the last linear (it counts layer-norm weights as layers) and "
        "keeps dropout p=0.3 active at inference (it never calls eval()): outputs differ from A1111",
    }


def test_missing_activate_output_is_explained(tmp_path):
    path = _build(tmp_path, {"act": "tanh", "ln": False, "ao": None, "do": False}, "")
    reason = hyperkit.inspect_file(path)["verdicts"]["comfyui"]["reason"]
    assert reason.startswith("ComfyUI leaves out the tanh after the last linear (activate_output is missing")


def test_monkeypatch_verdicts(run_cli):
    path = fixture_dir() / "h_monkeypatch_skip.pt"
    result = run_cli("inspect", path)
    assert result.code == 0
    verdicts = hyperkit.inspect_file(path)["verdicts"]
    assert verdicts["a1111"]["loads"] is False
    assert verdicts["a1111"]["reason"].startswith(
        "strict load_state_dict fails on the nested ResBlock key 'linear.0.linear.0.weight'"
    )
    assert verdicts["comfyui"]["loads"] is True
    assert verdicts["comfyui"]["same_as_a1111"] is False
    assert "drops the skip connection and flattens the ResBlock linears" in verdicts["comfyui"]["reason"]


# --- torch.load(weights_only=True) ------------------------------------------------------------


def torch_accepts(path: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about protocols other than 2
        try:
            torch.load(path, weights_only=True, map_location="cpu")
        except Exception:
            return False
    return True


def _lora() -> dict[str, torch.Tensor]:
    return {"lora_unet_x.lora_down.weight": torch.zeros(4, 8), "lora_unet_x.lora_up.weight": torch.zeros(8, 4)}


CRAFTED = {
    "protocol2": (lambda: a1111_dict(), {}),
    "protocol3": (lambda: a1111_dict(), {"pickle_protocol": 3}),
    "protocol4": (lambda: a1111_dict(), {"pickle_protocol": 4}),
    "protocol5": (lambda: a1111_dict(), {"pickle_protocol": 5}),
    "legacy": (lambda: a1111_dict(), {"_use_new_zipfile_serialization": False}),
    "legacy-protocol4": (lambda: a1111_dict(), {"_use_new_zipfile_serialization": False, "pickle_protocol": 4}),
    "numpy-int-step": (lambda: a1111_dict(step=np.int64(5)), {}),
    "numpy-float-metadata": (lambda: a1111_dict(learning_rate=np.float64(1e-5)), {}),
    "lora-protocol2": (_lora, {}),
    "lora-protocol4": (_lora, {"pickle_protocol": 4}),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_weights_only_verdict_matches_torch(tmp_path, case):
    build, kwargs = CRAFTED[case]
    path = tmp_path / "x.pt"
    torch.save(build(), path, **kwargs)
    report = hyperkit.inspect_file(path)
    verdict = report["verdicts"]["torch_weights_only"]
    expected = torch_accepts(path)
    assert verdict["loads"] is expected, (verdict, report["pickle"])
    if kwargs.get("pickle_protocol", 2) >= 4:
        assert "'Unsupported operand' for pickle opcode" in verdict["reason"]
        assert "STACK_GLOBAL" in verdict["reason"]
    if case.startswith("numpy"):
        assert verdict["reason"].startswith("refuses global 'numpy.")
    if report["family"] == "sd-kv" and not expected:  # ComfyUI loads with weights_only too
        comfy = report["verdicts"]["comfyui"]
        assert comfy["loads"] is False
        assert comfy["reason"].startswith("torch.load(weights_only=True) ")
    if case == "protocol4":  # A1111's C unpickler runs every opcode; only globals are checked
        assert report["pickle"]["globals"] == [
            "collections.OrderedDict",
            "torch._utils._rebuild_tensor_v2",
            "torch.FloatStorage",
        ]
        assert not report["verdicts"]["a1111"]["reason"].startswith("its safe unpickler")


@pytest.mark.parametrize("name", sorted(p.name for p in fixture_dir().glob("*.pt")))
def test_weights_only_verdict_on_fixtures(name):
    path = fixture_dir() / name
    assert hyperkit.inspect_file(path)["verdicts"]["torch_weights_only"]["loads"] is torch_accepts(path)


def test_weights_only_tables_match_torch_source():
    """The frozensets are hyperkit's own data; this checks them against the installed torch."""
    from torch import _weights_only_unpickler as wo

    assert set(wo._get_allowed_globals()) == inspection.WEIGHTS_ONLY_GLOBALS
    source = inspect.getsource(wo.Unpickler.load)
    implemented = set(re.findall(r"\b([A-Z][A-Z0-9_]+)\[0\]", source))
    assert implemented == inspection.WEIGHTS_ONLY_OPCODES
    assert implemented <= {op.name for op in pickletools.opcodes}
