"""``hyperkit inspect``: the facts and the loader verdicts, for the bundled fixtures."""

from __future__ import annotations

import json

import pytest

import hyperkit
from hyperkit.demo import fixture_dir

MANIFEST = json.loads((fixture_dir() / "MANIFEST.json").read_text())


def manifest_sha(name: str) -> str:
    files = MANIFEST.get("files", MANIFEST)
    entry = files[name]
    return entry["sha256"] if isinstance(entry, dict) else entry


def test_a1111_default_report(run_cli):
    path = fixture_dir() / "b_a1111_default.pt"
    r = json.loads(run_cli("inspect", path, "--json").stdout)
    assert (r["format"], r["family"], r["dims"], r["parameters"], r["tensors"]) == ("pt", "sd-kv", [8, 16], 2704, 16)
    assert r["sha256"] == manifest_sha("b_a1111_default.pt")
    assert r["autov2"] == r["sha256"][:10]
    assert r["pickle"]["globals"] == [
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage",
    ]
    assert r["metadata_types"]["layer_structure"] == "list"
    assert r["metadata"]["layer_structure"] == [1.0, 2.0, 1.0]
    assert r["defaults_applied"] == {}
    assert r["verdicts"]["a1111"] == {
        "loads": False,
        "reason": "its safety check rejects the archive member 'b_a1111_default/.format_version' (written by "
        "torch ≥ 2.x); `hyperkit convert` to .pt writes a layout it accepts",
    }
    assert r["verdicts"]["comfyui"] == {"loads": True, "same_as_a1111": True, "reason": ""}


def test_converted_pt_loads_everywhere(tmp_path):
    hyperkit.convert(fixture_dir() / "f_none_no_activate_output.pt", tmp_path / "f.pt")
    verdicts = hyperkit.inspect_file(tmp_path / "f.pt")["verdicts"]
    assert all(v["loads"] for v in verdicts.values()), verdicts


def test_old_file_defaults_and_comfyui_refusal():
    r = hyperkit.inspect_file(fixture_dir() / "f_none_no_activate_output.pt")
    assert r["defaults_applied"]["activate_output"] is True
    assert r["verdicts"]["comfyui"]["loads"] is False
    assert r["verdicts"]["comfyui"]["reason"].startswith("activation_func None is not one of ComfyUI's")


@pytest.mark.parametrize(
    ("name", "tool", "loads", "reason"),
    [
        ("e_prelu.pt", "comfyui", False, "activation_func 'prelu' is not one of ComfyUI's"),
        ("j_fp16_cuda.pt", "torch_weights_only", True, ""),
        ("k_bf16.pt", "a1111", False, "its safety check rejects"),
        ("l_legacy_stacked.pt", "a1111", True, ""),
    ],
)
def test_verdicts(name, tool, loads, reason):
    r = hyperkit.inspect_file(fixture_dir() / name)
    assert r["verdicts"][tool]["loads"] is loads
    assert r["verdicts"][tool]["reason"].startswith(reason)


def test_cuda_locations_and_legacy_container_are_reported():
    assert hyperkit.inspect_file(fixture_dir() / "j_fp16_cuda.pt")["pickle"]["storage_locations"] == ["cuda:0"]
    assert hyperkit.inspect_file(fixture_dir() / "l_legacy_stacked.pt")["pickle"]["container"] == "legacy"


def test_monkeypatch_is_described_as_unsupported(run_cli):
    result = run_cli("inspect", fixture_dir() / "h_monkeypatch_skip.pt")
    assert result.code == 0
    assert "unsupported: Hypernetwork-MonkeyPatch files with skip_connection=True" in result.stdout


def test_safetensors_report(tmp_path, run_cli):
    hyperkit.convert(fixture_dir() / "b_a1111_default.pt", tmp_path / "b.safetensors")
    r = hyperkit.inspect_file(tmp_path / "b.safetensors")
    assert r["format"] == "safetensors"
    assert "pickle" not in r
    assert r["verdicts"]["comfyui"]["reason"].startswith("ComfyUI opens .safetensors hypernetworks but finds no int")
    text = run_cli("inspect", tmp_path / "b.safetensors").stdout
    assert "loads in A1111" in text
    assert "'linear' (str)" in text


def test_human_table_marks_defaults(run_cli):
    text = run_cli("inspect", fixture_dir() / "a_nai_legacy.pt").stdout
    assert "activate_output        True (bool)  [missing: A1111 default]" in text
    assert "structure: every tensor fits the declared layout" in text


@pytest.mark.parametrize("name", sorted(p.name for p in fixture_dir().glob("*.pt")))
def test_every_fixture_report_is_json_and_verdicts_have_their_keys(name, run_cli):
    result = run_cli("inspect", fixture_dir() / name, "--json")
    assert result.code == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["suffix_mismatch"] is None
    assert set(r["verdicts"]["comfyui"]) == {"loads", "same_as_a1111", "reason"}
    assert set(r["verdicts"]["a1111"]) == set(r["verdicts"]["torch_weights_only"]) == {"loads", "reason"}
    assert r["pickle"]["opcodes"]  # the scanner's list of pickletools names, for the weights_only verdict


def test_human_table_says_when_comfyui_differs(run_cli):
    text = run_cli("inspect", fixture_dir() / "c_relu_ln_dropout.pt").stdout
    assert "loads in ComfyUI               yes, but differs from A1111: ComfyUI adds a relu after the last" in text
