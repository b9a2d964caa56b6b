"""Baked models against the hypernetwork applied at run time on the original model.

The reference is :func:`hyperkit.bake.diffusers_apply.apply_hypernetworks` on a diffusers
``UNet2DConditionModel`` — A1111's semantics (K/V inputs only, by context width, chained, fp32)
with torch modules; the baked model runs as a full UNet forward (torch for checkpoints, ONNX
Runtime for ONNX). fp32 max abs error must be ≤ 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

import bakekit as bk

import hyperkit
from hyperkit.bake import bake_sd
from hyperkit.bake.diffusers_apply import apply_hypernetworks
from hyperkit.formats.safetensors_io import read_safetensors

TOL = 1e-4


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bake")
    unet = bk.tiny_unet()
    bk.save_diffusers_file(unet, d / "unet.safetensors")
    bk.save_ldm_file(unet, d / "ldm.safetensors")
    bk.save_diffusers_folder(unet, d / "unet_folder")
    bk.export_onnx(unet, d / "legacy.onnx", dynamo=False)
    bk.save_hn(d / "lin.pt", (bk.CROSS, 32, 64))
    bk.save_hn(d / "lin2.pt", (bk.CROSS,), layer_structure=[1, 1.5, 2, 1], seed=3)
    bk.save_hn(d / "relu_ln.pt", (bk.CROSS, 32), activation="relu", layer_norm=True, seed=4)
    return d


_REFERENCES: dict[tuple[tuple[str, ...], tuple[float, ...]], np.ndarray] = {}


def runtime_reference(paths: list[Path], strengths: list[float]) -> np.ndarray:
    """The tiny UNet's output with ``paths`` applied at run time (computed once per chain)."""
    key = (tuple(map(str, paths)), tuple(strengths))
    if key not in _REFERENCES:
        unet = bk.tiny_unet()
        handle = apply_hypernetworks(unet, [hyperkit.load(p) for p in paths], strengths)
        try:
            _REFERENCES[key] = bk.forward(unet, bk.inputs())
        finally:
            handle.remove()
    return _REFERENCES[key].copy()


CHAINS = [(["lin.pt"], [1.0]), (["lin.pt", "lin2.pt"], [0.7, 1.3])]


@pytest.mark.parametrize("base", ["unet.safetensors", "ldm.safetensors"])
@pytest.mark.parametrize(("hns", "strengths"), CHAINS)
def test_fold_into_safetensors_matches_runtime(work, base, hns, strengths, tmp_path):
    out = tmp_path / "baked.safetensors"
    result = bake_sd([work / h for h in hns], work / base, out, strengths=strengths)
    assert result.passed and result.method == "fold" and len(result.layers) == 8
    baked = bk.forward(bk.load_state(bk.tiny_unet(seed=9), out), bk.inputs())
    ref = runtime_reference([work / h for h in hns], strengths)
    plain = bk.forward(bk.tiny_unet(), bk.inputs())
    assert np.abs(baked - ref).max() <= TOL
    assert np.abs(plain - ref).max() > 100 * TOL  # the hypernetwork really changes the output


def test_baked_file_keeps_keys_shapes_dtypes_and_untouched_bytes(work, tmp_path):
    out = tmp_path / "baked.safetensors"
    bake_sd([work / "lin.pt"], work / "ldm.safetensors", out, strengths=[0.5])
    before, meta_before = read_safetensors(work / "ldm.safetensors")
    after, meta = read_safetensors(out)
    assert list(before) == list(after)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(k.endswith(("to_k.weight", "to_v.weight", "to_out.0.bias")) for k in changed)
    for k in before:
        assert before[k].dtype == after[k].dtype and before[k].shape == after[k].shape
    assert (
        before["first_stage_model.decoder.conv_in.weight"].tobytes()
        == after["first_stage_model.decoder.conv_in.weight"].tobytes()
    )
    record = bk.baked_record(out)[-1]
    assert meta["format"] == meta_before["format"]
    assert record["hypernetworks"][0]["strength"] == 0.5
    assert record["hypernetworks"][0]["sha256"] == bk.sha256_of(work / "lin.pt")
    assert record["hyperkit_version"] == hyperkit.__version__


def test_diffusers_folder_in_folder_out(work, tmp_path):
    out = tmp_path / "baked_unet"
    bake_sd([work / "lin.pt"], work / "unet_folder", out)
    assert (out / "config.json").read_bytes() == (work / "unet_folder" / "config.json").read_bytes()
    from diffusers import UNet2DConditionModel

    baked = bk.forward(UNet2DConditionModel.from_pretrained(out).eval(), bk.inputs())
    assert np.abs(baked - runtime_reference([work / "lin.pt"], [1.0])).max() <= TOL


def test_diffusers_variant_folder_and_other_weights_left_out(work, tmp_path):
    """A ``variant="fp16"``-style folder is baked into the same file name; weight files the bake
    did not change are left out (a loader picking them would run the base) with a warning."""
    import shutil

    from diffusers import UNet2DConditionModel

    src = tmp_path / "pipe" / "unet"
    shutil.copytree(work / "unet_folder", src)
    (src / "diffusion_pytorch_model.safetensors").rename(src / "diffusion_pytorch_model.fp16.safetensors")
    out = tmp_path / "baked_unet"
    result = bake_sd([work / "lin.pt"], tmp_path / "pipe", out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    baked = UNet2DConditionModel.from_pretrained(out, variant="fp16").eval()
    assert np.abs(bk.forward(baked, bk.inputs()) - runtime_reference([work / "lin.pt"], [1.0])).max() <= TOL
    assert not result.warnings

    shutil.copy(work / "unet.safetensors", src / "diffusion_pytorch_model.safetensors")
    (src / "diffusion_pytorch_model.bin").write_bytes(b"stale")
    result = bake_sd([work / "lin.pt"], src, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert len(result.warnings) == 1 and "diffusion_pytorch_model.bin" in result.warnings[0]
    assert "diffusion_pytorch_model.fp16.safetensors" in result.warnings[0]


def test_sharded_diffusers_folder(work, tmp_path):
    """``save_pretrained`` shards a large UNet: every shard is baked under its own name, the
    index is kept, and diffusers loads the result."""
    import json

    from diffusers import UNet2DConditionModel

    src = tmp_path / "sharded"
    bk.tiny_unet().save_pretrained(src, safe_serialization=True, max_shard_size="200KB")
    shards = sorted(p.name for p in src.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 3
    out = tmp_path / "baked"
    result = bake_sd([work / "lin.pt", work / "lin2.pt"], src, out, strengths=[0.7, 1.3])
    assert result.passed and len(result.layers) == 8 and not result.warnings
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    index = "diffusion_pytorch_model.safetensors.index.json"
    assert (out / index).read_bytes() == (src / index).read_bytes()
    assert set(json.loads((out / index).read_text())["weight_map"].values()) == set(shards)
    baked = bk.forward(UNet2DConditionModel.from_pretrained(out).eval(), bk.inputs())
    assert np.abs(baked - runtime_reference([work / "lin.pt", work / "lin2.pt"], [0.7, 1.3])).max() <= TOL
    for name in shards:
        assert bk.baked_record(out / name)[-1]["layers"] == 8


def test_fp16_base_keeps_dtype_and_reports_the_cast(work, tmp_path):
    import torch

    unet16 = bk.tiny_unet(dtype=torch.float16)
    bk.save_diffusers_file(unet16, tmp_path / "u16.safetensors")
    result = bake_sd([work / "lin.pt"], tmp_path / "u16.safetensors", tmp_path / "b16.safetensors")
    assert result.dtype == "float16" and result.passed
    assert all(p.cast_abs > p.fold_abs for p in result.layers)  # fp16 rounding dominates the fold's error
    assert {a.dtype.name for a in read_safetensors(tmp_path / "b16.safetensors")[0].values()} == {"float16"}


@pytest.mark.parametrize(
    ("hns", "strengths"), [(["lin.pt", "lin2.pt"], [0.7, 1.3]), (["relu_ln.pt", "lin.pt"], [1.0, 0.5])]
)
def test_onnx_legacy_export_matches_runtime(work, hns, strengths, tmp_path):
    out = tmp_path / "baked.onnx"
    result = bake_sd([work / h for h in hns], work / "legacy.onnx", out, strengths=strengths)
    assert result.method == ("subgraph" if "relu_ln.pt" in hns else "fold")
    assert result.passed
    baked = bk.run_onnx(out, bk.inputs())
    assert np.abs(baked - runtime_reference([work / h for h in hns], strengths)).max() <= TOL


def test_onnx_dynamo_export_with_external_data(tmp_path):
    """The dynamo exporter: ``val_N`` weights, module paths in node metadata, external data.

    The base is the bundled fixture UNet exported by ``torch.onnx`` dynamo with external data
    (``fixtures/bake/unet-dynamo.onnx`` + ``.onnx.data``, made by scripts/make_bake_fixtures.py:
    exporting here would take most of this file's time); the reference is the same UNet in
    diffusers, loaded from ``fixtures/bake/unet/``.
    """
    base = bk.FIXTURES / "unet-dynamo.onnx"
    assert (bk.FIXTURES / "unet-dynamo.onnx.data").exists()
    cross = bk.FIXTURE_CROSS  # 16: the text width, and the mid block's channels
    lin = bk.save_hn(tmp_path / "lin16.pt", (cross, 8))
    relu = bk.save_hn(tmp_path / "relu16.pt", (cross,), activation="relu", layer_norm=True, seed=4)
    args = bk.inputs(cross=cross)
    plain = bk.forward(bk.fixture_unet(), args)
    for hns, strengths, method in (([lin], [0.8], "fold"), ([relu, lin], [1.0, 0.5], "subgraph")):
        out = tmp_path / f"baked-{method}.onnx"
        result = bake_sd(hns, base, out, strengths=strengths)
        assert result.method == method and result.passed
        assert (tmp_path / f"baked-{method}.onnx.data").exists()
        ref_unet = bk.fixture_unet()
        handle = apply_hypernetworks(ref_unet, [hyperkit.load(p) for p in hns], strengths)
        ref = bk.forward(ref_unet, args)
        handle.remove()
        assert np.abs(bk.run_onnx(out, args) - ref).max() <= TOL
        assert np.abs(plain - ref).max() > 10 * TOL  # the hypernetworks change the output far past TOL
    assert np.abs(bk.run_onnx(base, args) - plain).max() <= TOL  # the base still runs: untouched


def test_onnx_external_data_in_many_files_is_gathered(work, tmp_path):
    """The legacy exporter writes one external file per tensor unless told otherwise: the bake
    gathers them into one ``OUT.data`` and leaves the base's files as they were."""
    import onnx

    src = tmp_path / "base"
    src.mkdir()
    model = onnx.load(str(work / "legacy.onnx"))
    onnx.save_model(model, str(src / "unet.onnx"), save_as_external_data=True, all_tensors_to_one_file=False)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert len(before) > 10
    for hns, strengths, method in ((["lin.pt"], [1.0], "fold"), (["relu_ln.pt", "lin.pt"], [1.0, 0.5], "subgraph")):
        out = tmp_path / method / "baked.onnx"
        out.parent.mkdir()
        result = bake_sd([work / h for h in hns], src / "unet.onnx", out, strengths=strengths)
        assert result.passed and result.method == method
        assert sorted(p.name for p in out.parent.iterdir()) == ["baked.onnx", "baked.onnx.data"]
        baked = bk.run_onnx(out, bk.inputs())
        assert np.abs(baked - runtime_reference([work / h for h in hns], strengths)).max() <= TOL
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_onnx_fp16_base(work, tmp_path):
    """An fp16 export: weights rewritten in fp16 or the MLP inserted in fp16; its output is as
    close to the float32 runtime reference as the fp16 base is to the float32 base."""
    import torch

    base = bk.export_onnx(bk.tiny_unet(dtype=torch.float16), tmp_path / "u16.onnx", dynamo=False)
    plain = bk.forward(bk.tiny_unet(), bk.inputs())
    half_error = np.abs(bk.run_onnx(base, bk.inputs()) - plain).max()  # fp16's own error
    for hns, strengths, method in ((["lin.pt"], [1.0], "fold"), (["relu_ln.pt"], [0.5], "subgraph")):
        out = tmp_path / f"baked-{method}.onnx"
        result = bake_sd([work / h for h in hns], base, out, strengths=strengths)
        assert result.passed and result.method == method and result.dtype == "float16"
        ref = runtime_reference([work / h for h in hns], strengths)
        error = np.abs(bk.run_onnx(out, bk.inputs()) - ref).max()
        assert error <= 3 * half_error + 1e-3, (error, half_error)
        assert np.abs(plain - ref).max() > 10 * error  # the hypernetwork's effect stands far above it


def test_runtime_apply_hooks_only_matching_widths_and_removes_cleanly(work):
    unet = bk.tiny_unet()
    plain = bk.forward(unet, bk.inputs())
    handle = apply_hypernetworks(unet, [hyperkit.load(work / "lin2.pt")])  # width 48: cross-attention only
    assert handle.layers and all(name.endswith("attn2") for name in handle.layers)
    assert np.abs(bk.forward(unet, bk.inputs()) - plain).max() > 1e-3
    handle.remove()
    assert np.array_equal(bk.forward(unet, bk.inputs()), plain)


def test_onnx_many_files_under_a_low_open_file_limit(work, tmp_path):
    """One external file per tensor, more of them than the process may hold open at once."""
    import resource
    import subprocess
    import sys

    import onnx

    src = tmp_path / "base"
    src.mkdir()
    model = onnx.load(str(work / "legacy.onnx"))
    onnx.save_model(model, str(src / "unet.onnx"), save_as_external_data=True, all_tensors_to_one_file=False)
    files = len(list(src.iterdir()))
    limit = 40
    assert files > 2 * limit

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    out = tmp_path / "baked.onnx"
    argv = ["hyperkit", "bake", str(work / "lin.pt"), "--into", str(src / "unet.onnx"), "-o", str(out)]
    code = f"import sys; from hyperkit.cli import main; sys.argv = {argv!r}; main()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=low_limit)
    assert done.returncode == 0, done.stderr
    assert np.abs(bk.run_onnx(out, bk.inputs()) - runtime_reference([work / "lin.pt"], [1.0])).max() <= TOL


def test_onnx_failed_force_bake_keeps_the_previous_output(work, tmp_path, monkeypatch):
    """A --force bake that fails after writing its data leaves the earlier model and data as they were."""
    import hyperkit.bake.onnx_unet as onnx_unet
    from hyperkit.errors import VerificationError

    base = bk.FIXTURES / "unet-dynamo.onnx"
    hn = bk.save_hn(tmp_path / "lin16.pt", (bk.FIXTURE_CROSS, 8))
    out = tmp_path / "out" / "baked.onnx"
    out.parent.mkdir()
    bake_sd([hn], base, out)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert sorted(before) == ["baked.onnx", "baked.onnx.data"]

    def refuse(path: Path, output: Path) -> None:
        raise VerificationError(f"{output}: refused for the test")

    monkeypatch.setattr(onnx_unet, "_check", refuse)
    with pytest.raises(VerificationError):
        bake_sd([hn], base, out, strengths=[0.3], force=True)
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before
