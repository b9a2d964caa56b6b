"""The CLI surface: help texts, start-up cost (no heavy imports), exit codes, --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import a1111_dict, save_pt

HEAVY = ("torch", "onnxruntime", "onnx", "open_clip", "numpy", "pandas")


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "from hyperkit.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["inspect", "convert", "demo"])
def test_every_command_has_help_with_examples(run_cli, command):
    result = run_cli(command, "--help")
    assert result.code == 0
    assert "Example" in result.stdout


def test_top_level_help_lists_exit_codes(run_cli):
    result = run_cli("--help")
    assert result.code == 0
    assert "0 ok, 1 a check said no, 2 usage error, 3 bad input" in result.stdout
    for command in ("inspect", "convert", "demo"):
        assert command in result.stdout


def test_version(run_cli):
    from hyperkit import __version__

    assert run_cli("--version").stdout == f"hyperkit, version {__version__}\n"


def test_usage_error_exit_code(run_cli, tmp_path):
    assert run_cli("convert").code == 2
    assert run_cli("convert", "a.pt", "b.pt", "--dtype", "fp8").code == 2
    src = save_pt(a1111_dict(), tmp_path / "a.pt")
    result = run_cli("convert", src, tmp_path / "a.safetensors", "--to", "onnx")
    assert result.code == 2
    assert result.stderr == "Error: --to onnx contradicts the output suffix '.safetensors'\n"


def test_convert_json_and_into_folder(run_cli, tmp_path):
    src = save_pt(a1111_dict(), tmp_path / "a.pt")
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("convert", src, out, "--to", "safetensors", "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["dst"] == str(out / "a.safetensors")
    assert data["verified"] is True
    assert data["tensors"] == 16


def test_convert_folder_summary_and_exit_code(run_cli, tmp_path):
    src = tmp_path / "hn"
    (src / "sub").mkdir(parents=True)
    save_pt(a1111_dict(), src / "good.pt")
    save_pt(a1111_dict(dims=(16,)), src / "sub" / "also.pt")
    (src / "broken.pt").write_bytes(b"PK\x03\x04garbage")
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("convert", src, out, "--to", "safetensors")
    assert result.code == 3
    assert "2 of 3 converted" in result.stdout
    assert "failed" in result.stdout and "broken.pt" in result.stdout
    assert (out / "good.safetensors").exists() and (out / "sub" / "also.safetensors").exists()
    assert not (out / "broken.safetensors").exists()
    assert run_cli("convert", src, out).code == 2  # a folder needs --to


def test_dtype_cast_is_verified_within_the_cast(run_cli, tmp_path):
    src = save_pt(a1111_dict(), tmp_path / "a.pt")
    result = run_cli("convert", src, tmp_path / "a16.pt", "--dtype", "fp16", "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["dtype"] == "fp16"
    assert 0 < data["max_cast_error"] < 1e-3
    import torch

    loaded = torch.load(tmp_path / "a16.pt", weights_only=True)
    assert loaded[8][0]["linear.0.weight"].dtype == torch.float16


def test_internal_error_is_exit_5(run_cli, tmp_path, monkeypatch):
    import hyperkit.inspection

    def boom(_path):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(hyperkit.inspection, "inspect_file", boom)
    result = run_cli("inspect", tmp_path / "x.pt")
    assert result.code == 5
    assert result.stderr.splitlines() == [
        "Error: internal error: RuntimeError: kaboom",
        "Hint: rerun with --debug for the traceback and please report it",
    ]


def test_verification_failure_is_exit_1_and_leaves_nothing(run_cli, tmp_path, monkeypatch):
    """A writer that corrupts one byte is caught by the reload comparison before the rename."""
    import hyperkit.formats.safetensors as st

    real_write = st.write

    def corrupting_write(hn, path, *, stem):
        real_write(hn, path, stem=stem)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))

    monkeypatch.setattr(st, "write", corrupting_write)
    src = save_pt(a1111_dict(), tmp_path / "a.pt")
    result = run_cli("convert", src, tmp_path / "a.safetensors")
    assert result.code == 1
    assert result.stderr.startswith(
        f"Error: {tmp_path / 'a.safetensors'}: verification failed: tensor '16.v.linear.1.bias' differs"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_safetensors_output_notes_where_it_loads(run_cli, tmp_path):
    src = save_pt(a1111_dict(), tmp_path / "a.pt")
    result = run_cli("convert", src, tmp_path / "a.safetensors")
    assert result.code == 0
    assert "Warning: no UI loads hypernetworks from .safetensors" in result.stderr


def test_cli_format_choices_match_the_registry():
    from hyperkit import formats
    from hyperkit.cli import FORMAT_NAMES

    assert formats.names() == FORMAT_NAMES
