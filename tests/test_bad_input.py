"""Bad input: one ``Error:`` line, the right exit code, nothing written, input untouched, nothing run."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import a1111_dict, listing, save_pt, sha256

BAD_INPUT = 3


class Evil:
    """Pickles as a call to ``fn(*args)``: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _assert_refused(
    run_cli, folder: Path, src: Path, message: str, code: int = BAD_INPUT, inspect_describes: bool = False
) -> None:
    """Every command refuses ``src``; with ``inspect_describes`` (a file that is not a hypernetwork
    but a well-formed one of something else) ``inspect`` instead describes it and exits 0."""
    before, digest = listing(folder), sha256(src)
    if inspect_describes:
        result = run_cli("inspect", src, "--json")
        assert result.code == 0, result.stderr
        assert json.loads(result.stdout)["family"] == "unknown"
    commands = [["convert", src, folder / "out.safetensors"], ["convert", src, folder / "o.pt"]]
    for args in commands if inspect_describes else [["inspect", src], *commands]:
        result = run_cli(*args)
        assert result.code == code, (args, result.stderr)
        assert result.stderr.startswith(f"Error: {src}: {message}"), result.stderr
        assert result.stderr.count("Error:") == 1
        assert "Traceback" not in result.stderr
    assert listing(folder) == before, "something was written"
    assert sha256(src) == digest, "input was modified"


@pytest.mark.parametrize(
    ("fn", "global_name"),
    [(os.system, "posix.system"), (eval, "builtins.eval"), (subprocess.check_call, "subprocess.check_call")],
)
def test_malicious_pickle_never_runs(tmp_path, run_cli, fn, global_name):
    marker = tmp_path / "pwned"
    payload = f"open({str(marker)!r}, 'w').write('x')" if fn is eval else f"touch {marker}"
    arg = payload if fn is not subprocess.check_call else ["touch", str(marker)]
    obj = a1111_dict()
    obj["optional_info"] = Evil(fn, arg)
    src = save_pt(obj, tmp_path / "evil.pt")
    assert not marker.exists()
    _assert_refused(run_cli, tmp_path, src, f"pickle wants global '{global_name}', which is not on the allowlist")
    assert not marker.exists(), "the pickle's payload ran"


def test_protocol4_stack_global_is_refused(tmp_path, run_cli):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}".encode()
    pkl = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c" + bytes([len(cmd)]) + cmd + b"\x94\x85\x94R\x94."
    src = tmp_path / "evil4.pt"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("evil4/data.pkl", pkl)
        zf.writestr("evil4/version", "3\n")
    _assert_refused(run_cli, tmp_path, src, "pickle wants global 'os.system'")
    assert not marker.exists()


def test_legacy_tar_is_refused(tmp_path, run_cli):
    src = tmp_path / "old.pt"
    with tarfile.open(src, "w") as tf:
        for name in ("sys_info", "pickle", "tensors", "storages"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tf.addfile(info, fileobj=__import__("io").BytesIO(b"\x80\x02N."))
    _assert_refused(run_cli, tmp_path, src, "legacy tar-format .pt files (PyTorch 0.1.x) are not supported")


def test_zero_byte_file(tmp_path, run_cli):
    src = tmp_path / "empty.pt"
    src.write_bytes(b"")
    _assert_refused(run_cli, tmp_path, src, "file is empty (0 bytes)")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.95])
def test_truncated_pt(tmp_path, run_cli, fraction):
    data = save_pt(a1111_dict(), tmp_path / "full.bin").read_bytes()
    (tmp_path / "full.bin").unlink()
    src = tmp_path / "cut.pt"
    src.write_bytes(data[: int(len(data) * fraction)])
    _assert_refused(run_cli, tmp_path, src, "")


def test_zip_that_is_not_a_torch_archive(tmp_path, run_cli):
    src = tmp_path / "notes.pt"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("notes/readme.txt", "hello")
    _assert_refused(run_cli, tmp_path, src, "zip archive is not a torch file: no '<archive>/data.pkl' members")


def _safetensors(path: Path, header: dict, data: bytes, pad: bytes = b"") -> Path:
    blob = json.dumps(header).encode() + pad
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_safetensors_bad_header(tmp_path, run_cli):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    _assert_refused(run_cli, tmp_path, src, "safetensors header is not valid UTF-8 JSON")


def test_safetensors_header_past_end(tmp_path, run_cli):
    src = tmp_path / "long.safetensors"
    src.write_bytes(struct.pack("<Q", 5000) + b"{}")
    _assert_refused(run_cli, tmp_path, src, "safetensors header length 5000 runs past the end of the file")


def test_safetensors_overlapping_offsets(tmp_path, run_cli):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    src = _safetensors(tmp_path / "overlap.safetensors", {"a": entry, "b": entry}, b"\0" * 8)
    _assert_refused(run_cli, tmp_path, src, "safetensors entry ")
    assert "invalid offset (overlap or hole)" in run_cli("inspect", src).stderr


def test_safetensors_trailing_bytes(tmp_path, run_cli):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    src = _safetensors(tmp_path / "trail.safetensors", {"a": entry}, b"\0" * 12)
    _assert_refused(run_cli, tmp_path, src, "safetensors buffer covers 8 bytes but the file has 12 after the header")


def test_safetensors_not_ours(tmp_path, run_cli):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    src = _safetensors(tmp_path / "lora.safetensors", {"a": entry}, b"\0" * 8)
    _assert_refused(
        run_cli, tmp_path, src, "not a hyperkit sd-kv hypernetwork (hyperkit.family is None)", inspect_describes=True
    )


def test_onnx_not_ours(tmp_path, run_cli):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), src)
    _assert_refused(run_cli, tmp_path, src, "not a hyperkit sd-kv", inspect_describes=True)


def test_string_dim_keys(tmp_path, run_cli):
    obj = a1111_dict(dims=(8,))
    obj["768"] = obj.pop(8)
    src = save_pt(obj, tmp_path / "strkeys.pt")
    _assert_refused(run_cli, tmp_path, src, "dim key '768' is a string; A1111 and ComfyUI only read int keys")


def test_shapes_contradicting_layer_structure(tmp_path, run_cli):
    obj = a1111_dict(dims=(8,))
    obj["layer_structure"] = [1.0, 1.0, 1.0]
    src = save_pt(obj, tmp_path / "shapes.pt")
    before = listing(tmp_path)
    result = run_cli("convert", src, tmp_path / "x.safetensors")
    assert result.code == BAD_INPUT
    assert result.stderr.startswith(
        f"Error: {src}: tensors do not fit layer_structure [1.0, 1.0, 1.0], activation linear, layer norm off, "
        "dropout [0, 0, 0], activate_output False: dim 8 (k): key 'linear.0.weight' has shape (16, 8), "
        "expected (8, 8)"
    )
    assert listing(tmp_path) == before
    # inspect still describes the file and says why the UIs fail
    report = json.loads(run_cli("inspect", src, "--json").stdout)
    assert report["structure_ok"] is False
    assert report["verdicts"]["a1111"]["loads"] is False


def test_nan_weights_warn_then_refuse_with_strict(tmp_path, run_cli):
    obj = a1111_dict(dims=(8,))
    obj[8][0]["linear.0.weight"][0, 0] = float("nan")
    obj[8][1]["linear.1.bias"][1] = float("inf")
    src = save_pt(obj, tmp_path / "nan.pt")
    strict = run_cli("convert", src, tmp_path / "strict.safetensors", "--strict")
    assert strict.code == BAD_INPUT
    assert strict.stderr.startswith(
        f"Error: {src}: 2 tensor(s) contain NaN/Inf: 8.k.linear.0.weight, 8.v.linear.1.bias"
    )
    assert not (tmp_path / "strict.safetensors").exists()
    lenient = run_cli("convert", src, tmp_path / "ok.safetensors")
    assert lenient.code == 0
    assert "Warning: " in lenient.stderr and "contain NaN/Inf" in lenient.stderr
    assert (tmp_path / "ok.safetensors").exists()


@pytest.mark.parametrize(
    ("activation", "message"),
    [
        ("threshold", "activation 'threshold' is unbuildable: torch.nn.Threshold needs arguments"),
        ("multiheadattention", "activation 'multiheadattention' is unbuildable"),
        ("glu", "activation 'glu' is unbuildable: GLU halves the feature width"),
        ("ReLU", "unknown activation 'ReLU' (did you mean 'relu'? A1111 only accepts lower-case names)"),
        ("sparkle", "unknown activation 'sparkle' (known names: "),
    ],
)
def test_unknown_or_unbuildable_activation(tmp_path, run_cli, activation, message):
    obj = a1111_dict(dims=(8,))
    obj["activation_func"] = activation
    src = save_pt(obj, tmp_path / "act.pt")
    result = run_cli("convert", src, tmp_path / "x.safetensors")
    assert result.code == BAD_INPUT
    assert result.stderr.startswith(f"Error: {src}: {message}"), result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_monkeypatch_skip_connection_is_unsupported(tmp_path, run_cli):
    obj = a1111_dict(dims=(8,), skip_connection=True, upsample_linear=None)
    src = save_pt(obj, tmp_path / "mp.pt")
    result = run_cli("convert", src, tmp_path / "x.safetensors")
    assert result.code == BAD_INPUT
    assert result.stderr.startswith(
        f"Error: {src}: Hypernetwork-MonkeyPatch files with skip_connection=True (ResBlock modules) are unsupported"
    )


def test_output_in_missing_folder(tmp_path, run_cli):
    src = save_pt(a1111_dict(), tmp_path / "a.pt")
    result = run_cli("convert", src, tmp_path / "nope" / "a.safetensors")
    assert result.code == BAD_INPUT
    assert result.stderr == (
        f"Error: {tmp_path / 'nope' / 'a.safetensors'}: output folder '{tmp_path / 'nope'}' does not exist\n"
        "Hint: create it first (hyperkit creates a missing output folder only for a DST ending in '/')\n"
    )
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_input(tmp_path, run_cli, force):
    src = save_pt(a1111_dict(), tmp_path / "a.pt")
    digest = sha256(src)
    result = run_cli("convert", src, src, *(["--force"] if force else []))
    assert result.code == BAD_INPUT
    assert result.stderr.startswith(f"Error: {src}: output is the input file; refusing to overwrite it")
    assert sha256(src) == digest
    assert listing(tmp_path) == ["a.pt"]


def test_existing_output_needs_force(tmp_path, run_cli):
    src = save_pt(a1111_dict(), tmp_path / "a.pt")
    dst = tmp_path / "a.safetensors"
    dst.write_bytes(b"keep me")
    result = run_cli("convert", src, dst)
    assert result.code == BAD_INPUT
    assert result.stderr == f"Error: {dst}: already exists\nHint: pass --force to overwrite it\n"
    assert dst.read_bytes() == b"keep me"
    assert run_cli("convert", src, dst, "--force").code == 0
    assert dst.read_bytes()[8:9] == b"{"


def test_missing_input(tmp_path, run_cli):
    result = run_cli("inspect", tmp_path / "ghost.pt")
    assert result.code == BAD_INPUT
    assert result.stderr == f"Error: {tmp_path / 'ghost.pt'}: no such file\n"


def test_model_checkpoint_is_not_a_hypernetwork(tmp_path, run_cli):
    src = save_pt({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "model.ckpt")
    _assert_refused(run_cli, tmp_path, src, "no hypernetwork layers (int dim keys) found", inspect_describes=True)
