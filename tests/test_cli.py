"""The CLI surface: help texts, start-up cost (no heavy imports), exit codes, --json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import a1111_dict, listing, save_pt, sha256

from hyperkit.cli import cli
from hyperkit.demo import DEMO_OUTPUTS, fixture_path

HEAVY = ("torch", "onnxruntime", "onnx", "open_clip", "numpy", "ml_dtypes", "pandas")


#: Every command, so a new one is checked by the tests that exist.
COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("args", [["--help"], *([name, "--help"] for name in COMMANDS)])
def test_help_does_not_import_heavy_libraries(args):
    """Through the console-script entry point ``main`` (signal handler included), in a fresh process."""
    code = (
        "import sys\n"
        f"sys.argv = ['hyperkit', *{args!r}]\n"
        "from hyperkit.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", COMMANDS)
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


def test_debug_prints_the_traceback_and_keeps_the_exit_code(run_cli, tmp_path, monkeypatch):
    missing = tmp_path / "missing.pt"
    result = run_cli("--debug", "convert", missing, tmp_path / "x.safetensors")
    assert result.code == 3
    assert result.stderr.startswith("Traceback (most recent call last):\n")
    assert result.stderr.endswith(
        f"hyperkit.errors.BadInputError: {missing}: no such file\nError: {missing}: no such file\n"
    )
    src = shutil.copy(fixture_path("b_a1111_default.pt"), tmp_path / "a.pt")
    usage = run_cli("--debug", "convert", src, tmp_path / "a.safetensors", "--to", "onnx")
    assert usage.code == 2
    assert usage.stderr.endswith("Error: --to onnx contradicts the output suffix '.safetensors'\n")

    import hyperkit.inspection

    def boom(_path):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(hyperkit.inspection, "inspect_file", boom)
    internal = run_cli("--debug", "inspect", src)
    assert internal.code == 5
    assert internal.stderr.startswith("Traceback (most recent call last):\n")
    assert internal.stderr.endswith(
        "RuntimeError: kaboom\n"
        "Error: internal error: RuntimeError: kaboom\n"
        "Hint: please report it with the traceback above\n"
    )


def test_error_lines_are_sanitized(run_cli, tmp_path, monkeypatch):
    hostile = tmp_path / "a\nb\x1b[31m\udcff.pt"
    result = run_cli("convert", hostile, tmp_path / "x.safetensors")
    assert result.code == 3
    assert result.stderr == f"Error: {tmp_path}/a\\nb\\x1b[31m\\xff.pt: no such file\n"

    import hyperkit.inspection

    def boom(_path):
        raise RuntimeError("line one\nline two\x07")

    monkeypatch.setattr(hyperkit.inspection, "inspect_file", boom)
    internal = run_cli("inspect", hostile)
    assert internal.stderr.splitlines()[0] == "Error: internal error: RuntimeError: line one\\nline two\\x07"


def test_undecodable_file_names_print_and_round_trip_through_json(run_cli, tmp_path):
    """A name with a byte that is not UTF-8 (``os.fsdecode`` gives a lone surrogate) must not crash
    the strict-UTF-8 stdout: text output shows the byte escaped, JSON holds a valid ``\\udcff``."""
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / os.fsdecode(b"caf\xe9.pt")
    shutil.copy(fixture_path("b_a1111_default.pt"), src)
    result = run_cli("convert", src, tmp_path / "x.safetensors")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"{tmp_path}/in/caf\\xe9.pt (pt) -> {tmp_path}/x.safetensors (safetensors): ")
    as_json = run_cli("convert", src, tmp_path / "x.onnx", "--json")
    assert as_json.code == 0, as_json.stderr
    assert "caf\\udce9.pt" in as_json.stdout
    assert json.loads(as_json.stdout)["src"] == str(src)  # lossless: os.fsencode gives the bytes back
    report = run_cli("inspect", src, "--json")
    assert report.code == 0, report.stderr
    assert json.loads(report.stdout)["path"] == str(src)
    out = tmp_path / "out"
    folder = run_cli("convert", src.parent, out, "--to", "pt", "--json")
    assert folder.code == 0, folder.stderr
    assert [d["dst"] for d in json.loads(folder.stdout)] == [str(out / src.name)]
    table = run_cli("convert", src.parent, out, "--to", "pt", "--skip-existing")
    assert table.code == 0, table.stderr
    assert table.stdout.splitlines()[2].split() == [
        f"{tmp_path}/in/caf\\xe9.pt",
        f"{out}/caf\\xe9.pt",
        "skipped",
        "output",
        "exists",
    ]


# A real ``hyperkit`` process whose writer pauses after writing the temporary file, standing in
# for a conversion slow enough to be interrupted: the test waits for the temporary to appear
# (no sleeps that could be too short), then signals.
SLOW_MAIN = """
import signal, sys, time
import hyperkit.formats.safetensors as st
real_write = st.write
def slow_write(hn, path, *, stem):
    real_write(hn, path, stem=stem)
    time.sleep(600)
st.write = slow_write
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores Ctrl-C
sys.argv = ["hyperkit", *sys.argv[1:]]
from hyperkit.cli import main
main()
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_a_signal_leaves_no_temporary_and_no_output(tmp_path, sig, code, folder):
    src = tmp_path / "models"
    src.mkdir()
    shutil.copy(fixture_path("b_a1111_default.pt"), src / "a.pt")
    out = tmp_path / "out"
    out.mkdir()
    args = [src, out, "--to", "safetensors"] if folder else [src / "a.pt", out / "a.safetensors"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_MAIN, "convert", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # only a guard against a hang, never reached normally
        while not any(p.name.endswith(".hyperkit-tmp") for p in out.iterdir()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.01)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code
    assert stderr.splitlines()[-1] == "Error: interrupted; no partial output was left"
    assert listing(out) == []
    assert listing(src) == ["a.pt"]


def test_demo_without_out_removes_its_folder(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run_cli("demo")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "done"
    assert "strength 0 returns them exactly: True" in result.stdout
    # The demo's own folder is gone (torch may leave its compiler cache, torchinductor_<user>, there).
    assert [name for name in listing(tmp_path) if not name.startswith("torchinductor_")] == []


def test_demo_out_is_created_and_never_overwritten_without_force(run_cli, tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", out)
    assert result.code == 0, result.stderr
    assert listing(out) == sorted(DEMO_OUTPUTS)
    before = {name: sha256(out / name) for name in listing(out)}
    again = run_cli("demo", "--out", out)
    assert again.code == 3
    assert again.stdout == ""
    assert again.stderr == (
        f"Error: {out}: already holds {', '.join(DEMO_OUTPUTS)}\n"
        "Hint: pass --force to overwrite them, or choose another --out\n"
    )
    forced = run_cli("demo", "--out", out, "--force")
    assert forced.code == 0, forced.stderr
    assert {name: sha256(out / name) for name in listing(out)} == before  # same input, same bytes


def test_demo_out_unusable(run_cli, tmp_path):
    deep = tmp_path / "no" / "demo"
    result = run_cli("demo", "--out", deep)
    assert result.code == 3
    assert result.stderr == (
        f"Error: {deep}: cannot create it: '{tmp_path / 'no'}' does not exist\n"
        "Hint: create the parent folder first; the demo creates only the last folder\n"
    )
    (tmp_path / "file").write_text("x")
    result = run_cli("demo", "--out", tmp_path / "file")
    assert result.code == 3
    assert result.stderr == f"Error: {tmp_path / 'file'}: is a file, expected a folder for the demo's files\n"
    assert listing(tmp_path) == ["file"]
