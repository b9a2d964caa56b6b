"""Folder mode (``hyperkit convert SRC_FOLDER DST --to FMT``): planning, collisions, skips, errors.

Every test checks the exact exit code and the exact error text, and that nothing was written
when the run is refused.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import a1111_dict, listing, save_pt, sha256

import hyperkit.folder
from hyperkit.demo import fixture_path
from hyperkit.errors import OutputPathError, UsageProblem
from hyperkit.folder import checkpoints_in, convert_folder, plan_folder

SAFETENSORS_NOTE = (
    "Warning: no UI loads hypernetworks from .safetensors (convert back to .pt to use it), and the new file's "
    "SHA256/AutoV2 differ, so Civitai hash lookups will not find it"
)


def models(root: Path, **files: str) -> Path:
    """A folder of fixture copies: ``models(tmp, **{"m.pt": "b_a1111_default.pt"})``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, fixture in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixture_path(fixture), root / name)
    return root


B, C, D = "b_a1111_default.pt", "c_relu_ln_dropout.pt", "d_deep.pt"


def test_two_sources_with_one_output_stop_the_run_before_anything_is_written(run_cli, tmp_path):
    src = models(tmp_path / "models", **{"m.pt": B, "m.ckpt": C, "a.pt": D})
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--to", "safetensors", "--force")
    assert result.code == 3
    assert result.stderr == (
        f"Error: {out / 'm.safetensors'}: would be written from both {src / 'm.ckpt'} and {src / 'm.pt'}; "
        "nothing was written\n"
        "Hint: rename one file of each group, or convert those files one by one\n"
    )
    assert result.stdout == ""
    assert not out.exists()  # not even the output folder


def test_collisions_are_all_named_and_compared_case_folded(tmp_path):
    src = models(tmp_path / "models", **{"m.pt": B, "M.ckpt": C, "sub/x.pt": B, "sub/x.pth": C, "sub/x.bin": D})
    if len(listing(src)) < 3:
        pytest.skip("case-insensitive file system")
    with pytest.raises(OutputPathError) as info:
        plan_folder(src, tmp_path / "out", to="onnx")
    assert info.value.message == (
        f"{tmp_path / 'out' / 'M.onnx'}: would be written from both {src / 'M.ckpt'} and {src / 'm.pt'}; "
        f"{tmp_path / 'out' / 'sub' / 'x.onnx'}: would be written from each of "
        f"{src / 'sub' / 'x.bin'}, {src / 'sub' / 'x.pt'}, {src / 'sub' / 'x.pth'}; nothing was written"
    )


def test_an_output_that_is_a_source_is_a_collision(run_cli, tmp_path):
    """SRC inside DST: ``sub/sub/a.pt`` would become ``sub/a.safetensors``, itself a source."""
    dst = tmp_path / "models"
    src = models(dst / "sub", **{"sub/a.pt": B, "a.safetensors": B})
    before = sha256(src / "a.safetensors")
    result = run_cli("convert", src, dst, "--to", "safetensors", "--force")
    assert result.code == 3
    assert result.stderr.splitlines()[0] == (
        f"Error: {src / 'a.safetensors'}: would overwrite a source file (converted from {src / 'sub' / 'a.pt'}); "
        "nothing was written"
    )
    assert sha256(src / "a.safetensors") == before


def test_skip_existing_reports_skips_and_keeps_the_outputs(run_cli, tmp_path):
    src = models(tmp_path / "models", **{"a.pt": B, "sub/c.pt": C})
    out = tmp_path / "out"
    assert run_cli("convert", src, out, "--to", "pt").code == 0
    first = sha256(out / "a.pt")
    (out / "sub" / "c.pt").unlink()  # one output missing: only it is converted again
    result = run_cli("convert", src, out, "--to", "pt", "--skip-existing")
    assert result.code == 0, result.stderr
    rows = [line.split()[2] for line in result.stdout.splitlines()[2:-1]]
    assert rows == ["skipped", "ok"]
    assert result.stdout.splitlines()[-1] == "1 of 2 converted, 1 skipped (output exists)"
    assert sha256(out / "a.pt") == first
    # Without --skip-existing (or --force) an existing output is a per-file error, exit 3.
    again = run_cli("convert", src, out, "--to", "pt")
    assert again.code == 3
    assert again.stdout.splitlines()[-1] == "0 of 2 converted, 2 failed"
    assert f"{out / 'a.pt'}: already exists" in again.stdout


def test_skip_existing_contradicts_force_and_needs_a_folder(run_cli, tmp_path):
    src = models(tmp_path / "models", **{"a.pt": B})
    result = run_cli("convert", src, tmp_path / "out", "--to", "pt", "--force", "--skip-existing")
    assert (result.code, result.stderr) == (2, "Error: --skip-existing contradicts --force: choose one\n")
    assert not (tmp_path / "out").exists()
    single = run_cli("convert", src / "a.pt", tmp_path / "a.onnx", "--skip-existing")
    assert (single.code, single.stderr) == (
        2,
        "Error: --skip-existing applies to folder conversion only (SRC is not a folder)\n",
    )
    with pytest.raises(UsageProblem):
        convert_folder(src, tmp_path / "out", to="pt", force=True, skip_existing=True)


def test_an_internal_error_in_one_file_is_reported_and_the_others_go_on(run_cli, tmp_path, monkeypatch):
    src = models(tmp_path / "models", **{"a.pt": B, "b.pt": C, "c.pt": D})
    real = hyperkit.folder.convert

    def flaky(path, *args, **kwargs):
        if Path(path).name == "b.pt":
            raise RuntimeError("kaboom")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(hyperkit.folder, "convert", flaky)
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--to", "onnx")
    assert result.code == 5
    assert result.stdout.splitlines()[3].split(None, 3)[1:] == ["-", "failed", "internal error: RuntimeError: kaboom"]
    assert result.stdout.splitlines()[-1] == "2 of 3 converted, 1 failed"
    assert listing(out) == ["a.onnx", "c.onnx"]
    assert "Traceback" not in result.stderr
    # --debug adds the failed file's traceback; the exit code stays the worst failure's.
    debug = run_cli("--debug", "convert", src, tmp_path / "out2", "--to", "onnx")
    assert debug.code == 5
    assert "Traceback (most recent call last):" in debug.stderr
    assert "RuntimeError: kaboom" in debug.stderr


def test_worst_exit_code_wins(run_cli, tmp_path, monkeypatch):
    src = models(tmp_path / "models", **{"a.pt": B, "c.pt": D})
    (src / "broken.pt").write_bytes(b"PK\x03\x04garbage")
    assert run_cli("convert", src, tmp_path / "out", "--to", "pt").code == 3
    real = hyperkit.folder.convert

    def flaky(path, *args, **kwargs):
        if Path(path).name == "a.pt":
            raise KeyError("x")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(hyperkit.folder, "convert", flaky)
    result = run_cli("convert", src, tmp_path / "out2", "--to", "pt")
    assert result.code == 5
    assert result.stdout.splitlines()[-1] == "1 of 3 converted, 2 failed"


def test_output_folder_inside_the_source_and_hidden_files_are_not_converted(run_cli, tmp_path):
    src = models(tmp_path / "models", **{"a.pt": B, "sub/c.pt": C, ".hidden.pt": B, ".cache/x.pt": B})
    out = src / "converted"
    assert run_cli("convert", src, out, "--to", "safetensors").code == 0
    (out / ".a.safetensors.0123abcd.hyperkit-tmp").write_bytes(b"left by a killed run")
    assert checkpoints_in(src, exclude=out) == [src / "a.pt", src / "sub" / "c.pt"]
    result = run_cli("convert", src, out, "--to", "safetensors", "--skip-existing", "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(Path(d["src"]).name, d["status"]) for d in data] == [("a.pt", "skipped"), ("c.pt", "skipped")]
    assert sorted(p.name for p in out.rglob("*")) == [
        ".a.safetensors.0123abcd.hyperkit-tmp",
        "a.safetensors",
        "c.safetensors",
        "sub",
    ]


def test_each_distinct_warning_is_printed_once(run_cli, tmp_path):
    src = tmp_path / "models"
    src.mkdir()
    for name in ("n1.pt", "n2.pt"):
        obj = a1111_dict()
        obj[8][0]["linear.0.weight"][0, 0] = math.nan
        save_pt(obj, src / name)
    models(src, **{"a.pt": B, "b.pt": C})
    result = run_cli("convert", src, tmp_path / "out", "--to", "safetensors")
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        SAFETENSORS_NOTE,
        f"Warning: {src / 'n1.pt'}: 1 tensor(s) contain NaN/Inf: 8.k.linear.0.weight",
        f"Warning: {src / 'n2.pt'}: 1 tensor(s) contain NaN/Inf: 8.k.linear.0.weight",
    ]


def test_the_output_folder_is_created_when_its_parent_exists(run_cli, tmp_path):
    src = models(tmp_path / "models", **{"a.pt": B})
    result = run_cli("convert", src, tmp_path / "out", "--to", "pt")
    assert result.code == 0, result.stderr
    assert listing(tmp_path / "out") == ["a.pt"]
    missing = tmp_path / "no" / "out"
    result = run_cli("convert", src, missing, "--to", "pt")
    assert result.code == 3
    assert result.stderr == (
        f"Error: {missing}: cannot create the output folder: '{tmp_path / 'no'}' does not exist\n"
        "Hint: create it first; hyperkit creates the output folder itself but not its parents\n"
    )
    assert not (tmp_path / "no").exists()


def test_unusable_output_folders(run_cli, tmp_path):
    src = models(tmp_path / "models", **{"a.pt": B})
    (tmp_path / "file").write_text("x")
    result = run_cli("convert", src, tmp_path / "file", "--to", "pt")
    assert (result.code, result.stderr) == (3, f"Error: {tmp_path / 'file'}: is a file, expected a folder\n")
    same = run_cli("convert", src, src, "--to", "pt")
    assert same.code == 3
    assert same.stderr == (
        f"Error: {src}: the output folder is the source folder\nHint: choose another one, e.g. {src / 'converted'}\n"
    )
    (tmp_path / "out" / "a.pt").mkdir(parents=True)  # an output name taken by a folder: that file fails
    taken = run_cli("convert", src, tmp_path / "out", "--to", "pt", "--force")
    assert taken.code == 3
    assert f"{tmp_path / 'out' / 'a.pt'}: is a folder, expected a file path" in taken.stdout
    assert listing(tmp_path / "out" / "a.pt") == []


def test_empty_folder_warns_and_exits_0(run_cli, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "notes.txt").write_text("not a checkpoint")
    result = run_cli("convert", tmp_path / "models", tmp_path / "out", "--to", "pt")
    assert result.code == 0
    assert f"Warning: {tmp_path / 'models'}: no checkpoints found (looked for " in result.stderr
    assert result.stdout.splitlines()[-1] == "0 of 0 converted"


def test_json_reports_every_status(run_cli, tmp_path):
    src = models(tmp_path / "models", **{"a.pt": B, "b.pt": C})
    (src / "broken.pt").write_bytes(b"PK\x03\x04garbage")
    out = tmp_path / "out"
    models(out, **{"b.pt": C})
    result = run_cli("convert", src, out, "--to", "pt", "--skip-existing", "--json")
    assert result.code == 3
    data = {Path(d["src"]).name: d for d in json.loads(result.stdout)}
    assert data["a.pt"]["status"] == "ok" and data["a.pt"]["verified"] is True
    assert data["b.pt"] == {"src": str(src / "b.pt"), "dst": str(out / "b.pt"), "status": "skipped"}
    assert data["broken.pt"]["status"] == "failed"
    assert data["broken.pt"]["exit_code"] == 3
    assert data["broken.pt"]["error"].startswith(f"{src / 'broken.pt'}: ")


def test_library_plan_writes_nothing_and_items_know_their_output(tmp_path):
    src = models(tmp_path / "models", **{"a.pt": B, "sub/c.pt": C})
    plan = plan_folder(src, tmp_path / "out", to="onnx")
    assert [(i.src, i.dst, i.status) for i in plan.items] == [
        (src / "a.pt", tmp_path / "out" / "a.onnx", "pending"),
        (src / "sub" / "c.pt", tmp_path / "out" / "sub" / "c.onnx", "pending"),
    ]
    assert not (tmp_path / "out").exists()
    items = convert_folder(src, tmp_path / "out", to="onnx")
    assert [i.status for i in items] == ["ok", "ok"]
    assert [i.exit_code for i in items] == [0, 0]
