"""``hyperkit bake --into``: bad bases, mismatched hypernetworks, bad outputs, a full disk.

Each case: one ``Error:`` line naming the file, the right exit code, no output (no temporary
either) and the inputs byte for byte as they were.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

import bakekit as bk
from conftest import listing, sha256

from hyperkit.formats.safetensors_io import write_safetensors


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bake-bad")
    bk.save_ldm_file(bk.tiny_unet(), d / "base.safetensors")
    bk.save_hn(d / "lin.pt", (bk.CROSS, 32))
    bk.save_hn(d / "relu.pt", (bk.CROSS,), activation="relu")
    bk.save_hn(d / "half.pt", (bk.CROSS, 320))  # 48 matches, 320 matches nothing
    bk.save_hn(d / "none.pt", (100, 200))
    bk.save_hn(d / "sd1.pt", (768, 32))  # SD1's text width: another architecture
    return d


def _bake(run_cli, folder: Path, *args: str):
    before = {p.name: sha256(p) for p in folder.iterdir() if p.is_file()}
    result = run_cli("bake", *args)
    after = {p.name: sha256(p) for p in folder.iterdir() if p.is_file() and p.name in before}
    assert after == before, "an input changed"
    return result


def _one_error(result, code: int, *words: str) -> None:
    assert result.code == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    ("hn", "code", "words"),
    [
        ("none.pt", 3, ["none.pt", "no dim", "match no attention layer"]),
        ("half.pt", 3, ["half.pt", "dims 320", "match no attention layer"]),
        ("relu.pt", 3, ["relu.pt", "non-linear", "cannot fold"]),
    ],
)
def test_hypernetwork_that_does_not_fit(work, tmp_path, run_cli, hn, code, words):
    out = tmp_path / "out.safetensors"
    result = _bake(run_cli, work, str(work / hn), "--into", str(work / "base.safetensors"), "-o", str(out))
    _one_error(result, code, *words)
    assert listing(tmp_path) == []
    if hn == "relu.pt":
        assert "ONNX" in result.stderr  # the hint says where it can go


def test_base_of_another_architecture(work, tmp_path, run_cli):
    big = tmp_path / "sd1.safetensors"  # an SD1-shaped attention layer: text width 768
    import numpy as np

    p = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn"
    tensors = []
    for kind, width in (("1", 32), ("2", 768)):
        for part, shape in (
            ("to_q.weight", (32, 32)),
            ("to_k.weight", (32, width)),
            ("to_v.weight", (32, width)),
            ("to_out.0.weight", (32, 32)),
            ("to_out.0.bias", (32,)),
        ):
            tensors.append((f"{p}{kind}.{part}", np.zeros(shape, "f4")))
    write_safetensors(big, tensors, {})
    hn = bk.save_hn(tmp_path / "sd2.pt", (1024, 32))  # SD2's text width: an SD2 hypernetwork
    result = run_cli("bake", hn, "--into", big, "-o", tmp_path / "o.safetensors")
    _one_error(result, 3, "sd2.pt", "1024")
    result = run_cli("bake", work / "sd1.pt", "--into", work / "base.safetensors", "-o", tmp_path / "o.safetensors")
    _one_error(result, 3, "sd1.pt", "768")
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", ["empty"]),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ", ["JSON"]),
        (None, ["unknown layout"]),  # a valid safetensors file of something else
        (b"garbage that is no model at all", ["header"]),
    ],
)
def test_corrupt_or_unknown_base(work, tmp_path, run_cli, content, words):
    base = tmp_path / "bad.safetensors"
    if content is None:
        import numpy as np

        write_safetensors(base, [("encoder.layers.0.weight", np.zeros((2, 2), "f4"))], {})
    else:
        base.write_bytes(content)
    before = base.read_bytes()
    result = run_cli("bake", work / "lin.pt", "--into", base, "-o", tmp_path / "out.safetensors")
    _one_error(result, 3, "bad.safetensors", *words)
    assert base.read_bytes() == before and listing(tmp_path) == ["bad.safetensors"]


def test_truncated_base(work, tmp_path, run_cli):
    base = tmp_path / "cut.safetensors"
    base.write_bytes((work / "base.safetensors").read_bytes()[:-100])
    _one_error(run_cli("bake", work / "lin.pt", "--into", base, "-o", tmp_path / "o.safetensors"), 3, "cut.safetensors")
    assert listing(tmp_path) == ["cut.safetensors"]


def test_output_equal_to_an_input(work, run_cli):
    base = work / "base.safetensors"
    _one_error(_bake(run_cli, work, str(work / "lin.pt"), "--into", str(base), "-o", str(base), "--force"), 3, "input")
    _one_error(
        _bake(run_cli, work, str(work / "lin.pt"), "--into", str(base), "-o", str(work / "lin.pt"), "--force"),
        3,
        "lin.pt",
    )


def test_existing_output_needs_force(work, tmp_path, run_cli):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    _one_error(run_cli("bake", work / "lin.pt", "--into", work / "base.safetensors", "-o", out), 3, "already exists")
    assert out.read_bytes() == b"keep me"
    assert run_cli("bake", work / "lin.pt", "--into", work / "base.safetensors", "-o", out, "--force").code == 0


def test_disk_full_while_writing(work, tmp_path, run_cli, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", full)
    result = _bake(
        run_cli,
        work,
        str(work / "lin.pt"),
        "--into",
        str(work / "base.safetensors"),
        "-o",
        str(tmp_path / "o.safetensors"),
    )
    _one_error(result, 3, "o.safetensors", "No space left")
    assert listing(tmp_path) == []


def test_usage_errors(work, tmp_path, run_cli):
    r = run_cli(
        "bake",
        work / "lin.pt",
        "--into",
        work / "base.safetensors",
        "-o",
        tmp_path / "o.safetensors",
        "--strength",
        "1",
        "--strength",
        "2",
    )
    _one_error(r, 2, "--strength")
    r = run_cli("bake", work / "lin.pt", "--into", work / "base.safetensors", "-o", tmp_path / "o.ckpt")
    _one_error(r, 2, ".safetensors")
    assert listing(tmp_path) == []


def test_cli_report_and_tolerance(work, tmp_path, run_cli):
    out = tmp_path / "o.safetensors"
    ok = run_cli("bake", work / "lin.pt", "--into", work / "base.safetensors", "-o", out, "--strength", "0.5")
    assert ok.code == 0 and "parity: ok" in ok.stdout and "attn2" in ok.stdout
    strict = run_cli(
        "bake",
        work / "lin.pt",
        "--into",
        work / "base.safetensors",
        "-o",
        out,
        "--force",
        "--tolerance",
        "1e-12",
        "--json",
    )
    assert strict.code == 1 and '"passed": false' in strict.stdout
    _one_error(strict, 1, "parity failed", "tolerance")


def test_cli_float64_flag(work, tmp_path, run_cli):
    out = tmp_path / "o.safetensors"
    ok = run_cli("bake", work / "lin.pt", "--into", work / "base.safetensors", "-o", out, "--float64", "--json")
    assert ok.code == 0 and '"passed": true' in ok.stdout
    wrong = run_cli("bake", work / "lin.pt", "--condition", "1", "-o", tmp_path / "g.onnx", "--float64")
    _one_error(wrong, 2, "--float64", "--into")
    assert listing(tmp_path) == ["o.safetensors"]


def test_ckpt_base_read_safely(work, tmp_path, run_cli):
    import torch
    from safetensors.torch import load_file

    from hyperkit.formats.safetensors_io import read_safetensors

    state = load_file(str(work / "base.safetensors"))
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "base.ckpt")
    result = run_cli("bake", work / "lin.pt", "--into", tmp_path / "base.ckpt", "-o", tmp_path / "o.safetensors")
    assert result.code == 0, result.stderr
    assert "global_step" in result.stderr  # the dropped non-tensor entry is named
    assert sorted(read_safetensors(tmp_path / "o.safetensors")[0]) == sorted(state)

    import argparse  # Lightning-era checkpoints pickle objects like this one; it is never built

    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(lr=1)}, tmp_path / "lightning.ckpt")
    result = run_cli("bake", work / "lin.pt", "--into", tmp_path / "lightning.ckpt", "-o", tmp_path / "l.safetensors")
    _one_error(result, 3, "lightning.ckpt", "argparse.Namespace")
    assert not (tmp_path / "l.safetensors").exists()


def _onnx_base(
    folder: Path, location: str | None = None, length: int | None = None, every: bool = False, offset: int = 0
) -> Path:
    """The bundled dynamo fixture with its external data, one initializer (or ``every`` one)
    re-pointed if asked."""
    import shutil

    import onnx

    folder.mkdir()
    shutil.copy(bk.FIXTURES / "unet-dynamo.onnx.data", folder / "unet-dynamo.onnx.data")
    model = onnx.load(str(bk.FIXTURES / "unet-dynamo.onnx"), load_external_data=False)
    tensors = [t for t in model.graph.initializer if t.external_data]
    for tensor in tensors if every else tensors[:1]:
        for entry in tensor.external_data:
            if entry.key == "location" and location is not None:
                entry.value = location
            if entry.key == "length" and length is not None:
                entry.value = str(length)
            if entry.key == "offset" and offset:
                entry.value = str(offset)
    onnx.save(model, str(folder / "unet.onnx"))
    return folder / "unet.onnx"


@pytest.mark.parametrize(
    ("location", "length", "offset", "words"),
    [
        ("../outside.data", None, 0, ["outside the model's folder", "../outside.data"]),
        ("/etc/hostname", None, 0, ["outside the model's folder"]),
        ("link.data", None, 0, ["outside the model's folder", "link.data"]),  # a symlink out of the folder
        ("gone.data", None, 0, ["gone.data", "is missing"]),
        ("a\x00b", None, 0, ["unusable data location"]),
        ("x" * 5000, None, 0, ["unusable data location"]),
        (None, 1 << 40, 0, ["says 1099511627776 bytes", "shape and type take"]),
        (None, None, 1 << 40, ["reads bytes", "unet-dynamo.onnx.data"]),
    ],
)
def test_onnx_external_data_that_points_elsewhere(tmp_path, run_cli, location, length, offset, words):
    """A crafted location must never make the bake copy another file's bytes into its output."""
    (tmp_path / "outside.data").write_bytes(b"secret" * 4096)
    base = _onnx_base(tmp_path / "base", location, length, offset=offset)
    (base.parent / "link.data").symlink_to(tmp_path / "outside.data")
    hn = bk.save_hn(tmp_path / "lin16.pt", (bk.FIXTURE_CROSS, 8))
    out = tmp_path / "out"
    out.mkdir()
    result = _bake(run_cli, base.parent, str(hn), "--into", str(base), "-o", str(out / "baked.onnx"))
    _one_error(result, 3, "unet.onnx", *words)
    assert listing(out) == []


def test_onnx_output_data_would_overwrite_the_base_data(tmp_path, run_cli):
    base = _onnx_base(tmp_path / "base", location="baked.onnx.data", every=True)
    (base.parent / "unet-dynamo.onnx.data").rename(base.parent / "baked.onnx.data")
    hn = bk.save_hn(tmp_path / "lin16.pt", (bk.FIXTURE_CROSS, 8))
    before = sha256(base.parent / "baked.onnx.data")
    result = _bake(run_cli, base.parent, str(hn), "--into", str(base), "-o", str(base.parent / "baked.onnx"))
    _one_error(result, 3, "baked.onnx.data", "external data")
    assert sha256(base.parent / "baked.onnx.data") == before
    assert listing(base.parent) == ["baked.onnx.data", "unet.onnx"]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ("missing", ["shard", "is not a .safetensors file beside the index"]),
        ("outside", ["../", "is not a .safetensors file beside the index"]),
        ("unmapped", ["is not mapped to it"]),
        ("unlisted", ["are in no shard"]),
        ("garbage", ["not a readable shard index"]),
    ],
)
def test_sharded_folder_with_a_bad_index(tmp_path, run_cli, edit, words):
    import json

    src = tmp_path / "sharded"
    bk.tiny_unet().save_pretrained(src, safe_serialization=True, max_shard_size="200KB")
    index = src / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = sorted(data["weight_map"])[0]
    if edit == "missing":
        data["weight_map"][first] = "diffusion_pytorch_model-99999.safetensors"
    elif edit == "outside":
        data["weight_map"][first] = "../elsewhere.safetensors"
    elif edit == "unmapped":
        other = next(v for v in data["weight_map"].values() if v != data["weight_map"][first])
        data["weight_map"][first] = other
    elif edit == "unlisted":
        data["weight_map"]["extra.weight"] = data["weight_map"][first]
    index.write_text("{not json" if edit == "garbage" else json.dumps(data))
    hn = bk.save_hn(tmp_path / "lin.pt", (bk.CROSS, 32))
    out = tmp_path / "out"
    result = _bake(run_cli, src, str(hn), "--into", str(src), "-o", str(out))
    _one_error(result, 3, *words)
    assert not out.exists() and listing(tmp_path) == ["lin.pt", "sharded"]
