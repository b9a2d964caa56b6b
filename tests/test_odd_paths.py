"""Odd paths never reach an internal error (exit 5): undecodable names, over-long names, places
that cannot be written, and folder-shaped outputs. Run through the real command in a subprocess,
since terminal encoding is part of what can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyperkit.demo import fixture_path

SOURCE = fixture_path("b_a1111_default.pt")


def hyperkit(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""}
    return subprocess.run(
        [sys.executable, "-m", "hyperkit", *args], cwd=cwd, capture_output=True, env=env, check=False, timeout=120
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(os.fsencode(folder)) if name.startswith(b"."))  # type: ignore[misc]


@pytest.mark.parametrize("suffix", [".safetensors", ".onnx", ".pt"])
def test_undecodable_file_names_convert_and_inspect(tmp_path, suffix):
    """A Latin-1 name on a UTF-8 system: the bytes are kept in the path, shown escaped in messages."""
    src = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.pt"))
    shutil.copy(SOURCE, src)
    dst = src.with_name(src.stem + "-out" + suffix)
    proc = hyperkit("convert", src, dst, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert b"caf\\xe9.pt" in proc.stdout  # escaped, never a raw invalid byte on the terminal
    assert os.path.exists(os.fsencode(dst))
    proc = hyperkit("inspect", dst, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    again = hyperkit("convert", dst, dst, cwd=tmp_path)
    assert again.returncode == 3
    assert again.stderr.startswith(b"Error: " + bytes(tmp_path) + b"/caf\\xe9-out"), again.stderr


def test_output_name_near_the_limit_still_gets_a_temporary_name(tmp_path):
    """The hidden temporary name adds ~23 bytes; a 250-byte name must still convert."""
    dst = tmp_path / ("n" * 238 + ".safetensors")
    proc = hyperkit("convert", SOURCE, dst, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert dst.exists()
    assert leftovers(tmp_path) == []


def test_output_name_over_255_bytes(tmp_path):
    dst = tmp_path / ("n" * 260 + ".safetensors")
    proc = hyperkit("convert", SOURCE, dst, cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stderr.decode() == f"Error: {dst}: file name is longer than 255 bytes\n"


def test_input_path_component_over_255_bytes(tmp_path):
    src = tmp_path / ("n" * 300 + ".pt")
    proc = hyperkit("inspect", src, cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stderr.decode().startswith(f"Error: {src}: unusable input path: File name too long")


def test_output_where_nothing_can_be_written(tmp_path):
    """/proc refuses new files even to root: the write error names the output, exit 3."""
    proc = hyperkit("convert", SOURCE, "/proc/hyperkit-test.safetensors", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert lines[0].startswith("Error: /proc/hyperkit-test.safetensors: cannot write: ")
    assert lines[1] == "Hint: check the folder's permissions and free space"


def test_trailing_slash_names_a_folder_that_is_created(tmp_path):
    proc = hyperkit("convert", SOURCE, "out/", "--to", "safetensors", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "b_a1111_default.safetensors").is_file()


def test_trailing_slash_folder_whose_parent_is_missing(tmp_path):
    proc = hyperkit("convert", SOURCE, "no/out/", "--to", "safetensors", cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stderr.decode() == "Error: no/out: output folder's parent 'no' does not exist\n"
    assert not (tmp_path / "no").exists()
