"""``inspect`` on files that are not hypernetworks: described (exit 0), read by content, never run."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch
from conftest import a1111_dict, save_pt
from safetensors.torch import save_file

import hyperkit
from hyperkit import identify
from hyperkit.demo import fixture_dir
from hyperkit.errors import CorruptFileError, UnsafePickleError


def lora() -> dict[str, torch.Tensor]:
    """A kohya LoRA for two modules: down (rank 4), up and alpha per module."""
    torch.manual_seed(0)
    out = {}
    for name in ("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1"):
        out[f"{name}.lora_down.weight"] = torch.randn(4, 32)
        out[f"{name}.lora_up.weight"] = torch.randn(32, 4)
        out[f"{name}.alpha"] = torch.tensor(4.0)
    return out


def embedding() -> dict:
    """What A1111's ``Embedding.save`` passes to torch.save."""
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.randn(2, 768, requires_grad=True)},
        "name": "my-style",
        "step": 1500,
        "sd_checkpoint": "a1b2c3d4e5",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }


def checkpoint_state() -> dict[str, torch.Tensor]:
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
        "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(32),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, 8),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
    }


def diffusers_unet() -> dict[str, torch.Tensor]:
    return {
        "conv_in.weight": torch.zeros(8, 4, 3, 3),
        "time_embedding.linear_1.weight": torch.zeros(16, 8),
        "down_blocks.0.resnets.0.conv1.weight": torch.zeros(8, 8, 3, 3),
        "mid_block.resnets.0.conv1.weight": torch.zeros(8, 8, 3, 3),
    }


CASES = {
    # name: (object for torch.save, tensors for safetensors or None, family, kind)
    "lora": (lora(), lora(), "lora", "LoRA (kohya)"),
    "embedding": (embedding(), {"emb_params": torch.randn(2, 768)}, "textual-inversion", None),
    "checkpoint": (
        {"state_dict": checkpoint_state(), "global_step": 10, "epoch": 1},
        checkpoint_state(),
        "sd-checkpoint",
        "Stable Diffusion checkpoint (SD1)",
    ),
    "unet": (diffusers_unet(), diffusers_unet(), "diffusers-unet", "diffusers UNet"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("container", ["pt", "safetensors"])
def test_kind_is_described_with_exit_0(tmp_path, run_cli, name, container):
    obj, tensors, family, kind = CASES[name]
    path = tmp_path / f"{name}.{container}"
    if container == "pt":
        torch.save(obj, path)
    else:
        save_file(tensors, path)
    result = run_cli("inspect", path, "--json")
    assert result.code == 0, result.stderr
    r = json.loads(result.stdout)
    assert (r["format"], r["family"]) == (container, family)
    if kind:
        assert r["kind"] == kind
    assert r["kind_evidence"]
    expected = tensors if container == "safetensors" else None
    if expected is not None:
        assert r["tensors"] == len(expected)
        assert r["parameters"] == sum(t.numel() for t in expected.values())
    assert not r["verdicts"]["a1111"]["loads"]
    assert r["verdicts"]["a1111"]["reason"].startswith("not a hypernetwork: ")
    text = run_cli("inspect", path).stdout
    assert r["kind"] in text
    assert r["tensor_list"][0]["name"] in text


def test_lora_details():
    d = identify.describe_object({k: v.numpy() for k, v in lora().items()})
    assert d["kind_evidence"] == "lora_up/lora_down keys (2 modules, rank 4)"
    assert d["tensors"] == 6
    assert d["parameters"] == 2 * (4 * 32 * 2 + 1)
    assert d["dtypes"] == ["float32"]
    assert d["tensor_list"][0] == {
        "name": "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        "shape": [4, 32],
        "dtype": "float32",
    }


def test_embedding_details(tmp_path):
    r = hyperkit.inspect_file(save_pt(embedding(), tmp_path / "emb.pt"))
    assert r["kind"] == "textual-inversion embedding (A1111)"
    assert r["kind_evidence"] == "string_to_param: 2 vector(s) of width 768"
    assert r["metadata"]["name"] == "my-style"
    assert r["metadata"]["step"] == 1500
    assert r["top_level_keys"][:2] == ["string_to_token", "string_to_param"]
    assert r["pickle"]["container"] == "zip"
    assert r["verdicts"]["torch_weights_only"]["loads"] is True
    json.dumps(r)  # JSON-ready


def test_checkpoint_evidence(tmp_path):
    r = hyperkit.inspect_file(save_pt({"state_dict": checkpoint_state(), "global_step": 10}, tmp_path / "m.ckpt"))
    assert r["kind_evidence"] == (
        "model.diffusion_model.* keys (2 tensors), cond_stage_model.transformer.* (CLIP ViT-L), "
        "first_stage_model.* (VAE)"
    )
    assert r["tensor_list"][0]["name"] == "state_dict.model.diffusion_model.input_blocks.0.0.weight"
    assert r["metadata"]["global_step"] == 10


def test_safetensors_named_pt_is_read_by_content(tmp_path, run_cli):
    path = tmp_path / "lora.pt"
    save_file(lora(), path)
    result = run_cli("inspect", path, "--json")
    assert result.code == 0, result.stderr
    r = json.loads(result.stdout)
    assert (r["format"], r["family"], r["suffix_mismatch"]) == (
        "safetensors",
        "lora",
        "named .pt but holds safetensors",
    )
    assert r["verdicts"]["torch_weights_only"]["loads"] is False
    assert "read by its content" in run_cli("inspect", path).stdout


def test_hypernetwork_with_lying_suffix(tmp_path):
    st = tmp_path / "hn.pt"
    hyperkit.convert(fixture_dir() / "b_a1111_default.pt", tmp_path / "hn.safetensors")
    shutil.copy(tmp_path / "hn.safetensors", st)
    r = hyperkit.inspect_file(st)
    assert (r["format"], r["family"], r["dims"]) == ("safetensors", "sd-kv", [8, 16])
    assert r["verdicts"]["a1111"]["reason"].startswith("torch.load fails: the file is safetensors, not a torch pickle")
    assert r["verdicts"]["comfyui"]["reason"] == (
        "torch.load fails: the file is safetensors, not a torch pickle, despite its .pt name"
    )
    pickled = tmp_path / "hn2.safetensors"
    shutil.copy(fixture_dir() / "b_a1111_default.pt", pickled)
    r = hyperkit.inspect_file(pickled)
    assert (r["format"], r["suffix_mismatch"]) == ("pt", "named .safetensors but holds pt")
    assert r["verdicts"]["a1111"]["reason"].startswith("A1111 lists only *.pt files")
    assert r["verdicts"]["comfyui"]["reason"].startswith("ComfyUI opens .safetensors files with safetensors")
    assert r["verdicts"]["torch_weights_only"]["loads"] is True


def test_many_tensors_are_counted_not_all_listed(tmp_path):
    path = tmp_path / "many.safetensors"
    save_file({f"layer.{i}.weight": torch.zeros(2) for i in range(45)}, path, metadata={"k": "v" * 500})
    r = hyperkit.inspect_file(path)
    assert (r["tensors"], len(r["tensor_list"]), r["tensors_not_listed"]) == (45, identify.MAX_LISTED, 25)
    assert (r["family"], r["kind"]) == ("unknown", "unknown")
    assert r["metadata"]["k"].endswith("(500 characters)")


def test_empty_containers_and_files(tmp_path, run_cli):
    path = tmp_path / "nothing.safetensors"
    save_file({}, path)
    r = hyperkit.inspect_file(path)
    assert (r["tensors"], r["kind_evidence"]) == (0, "the file holds no tensors")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    result = run_cli("inspect", empty)
    assert result.code == 3
    assert result.stderr.startswith(f"Error: {empty}: file is empty (0 bytes)")
    with pytest.raises(CorruptFileError):
        hyperkit.inspect_file(empty)


def test_corrupt_file_still_exits_3(tmp_path, run_cli):
    path = tmp_path / "cut.pt"
    save_file(lora(), tmp_path / "full.safetensors")
    path.write_bytes((tmp_path / "full.safetensors").read_bytes()[:-10])
    result = run_cli("inspect", path)
    assert result.code == 3
    assert "Traceback" not in result.stderr


class _Evil:
    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return os.system, self.args


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
def test_malicious_non_hypernetwork_exits_3_and_nothing_runs(tmp_path, run_cli, suffix):
    marker = tmp_path / "pwned"
    obj = {**lora(), "note": _Evil(f"touch {marker}")}
    path = tmp_path / f"evil{suffix}"
    torch.save(obj, path)
    result = run_cli("inspect", path)
    assert result.code == 3
    assert "is not on the allowlist" in result.stderr
    with pytest.raises(UnsafePickleError):
        hyperkit.inspect_file(path)
    assert not marker.exists(), "the pickle's payload ran"


def test_onnx_model_is_described(tmp_path, run_cli):
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((3, 4), "f4"), "w")],
    )
    path = tmp_path / "model.bin"  # the suffix lies: read as ONNX by content
    onnx.save(helper.make_model(graph, producer_name="tester"), path)
    result = run_cli("inspect", path, "--json")
    assert result.code == 0, result.stderr
    r = json.loads(result.stdout)
    assert (r["format"], r["kind"], r["kind_evidence"]) == ("onnx", "ONNX model (tester)", "ops: MatMul×1")
    assert r["tensor_list"] == [{"name": "w", "shape": [3, 4], "dtype": "float32"}]


def test_legacy_container_lora(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(lora(), path, _use_new_zipfile_serialization=False)
    r = hyperkit.inspect_file(path)
    assert (r["family"], r["container"], r["pickle"]["container"]) == ("lora", "legacy", "legacy")


def test_hypernetworks_still_get_the_hypernetwork_report(tmp_path):
    r = hyperkit.inspect_file(save_pt(a1111_dict(), tmp_path / "hn.pt"))
    assert (r["family"], r["suffix_mismatch"]) == ("sd-kv", None)
    assert "kind" not in r


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"PK\x03\x04" + b"\0" * 20, "pt"),
        (b"\x80\x02\x8a\x0al" + b"\0" * 20, "pt"),
        (struct.pack("<Q", 4) + b"{}  ", "safetensors"),
        (struct.pack("<Q", 400) + b"{}  ", None),  # header longer than the file
        (b"\x08\x0e\x12\x07pytorch" + b"\0" * 8, "onnx"),
        (b"hello world, not a model", None),
        (b"\x80\x01junk", None),
    ],
)
def test_sniff(tmp_path, head, expected):
    path = tmp_path / "x"
    path.write_bytes(head)
    assert identify.sniff(path) == expected
