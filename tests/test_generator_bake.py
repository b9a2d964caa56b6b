"""`hyperkit bake` for generators: parity for every slot mode, hypernet and target; the layout; bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from generatorkit import condition_arg, generator, grid, numpy_reference

import hyperkit
from hyperkit.generator.examples import conv_document, mlp_document
from hyperkit.paths import sha256_file


@pytest.mark.parametrize(("name", "doc"), grid(), ids=[g[0] for g in grid()])
def test_baked_onnx_matches_the_dynamic_model(name, doc, tmp_path):
    gen = generator(doc, seed=5)
    hyperkit.save(gen, tmp_path / "g.safetensors")
    cond = condition_arg(gen)
    for factors in (False, True):
        out = tmp_path / f"t{int(factors)}.onnx"
        (report,) = hyperkit.bake_generator(tmp_path / "g.safetensors", cond, out, lora_factors=factors)
        assert report.passed and report.max_abs <= 1e-5
        # and against the independent numpy reference of the spec, through ONNX Runtime
        from hyperkit.runtime import open_session

        x = np.random.default_rng(2).standard_normal((5, *gen.spec.input_shape)).astype(np.float32)
        got = open_session(out, prefer_gpu=False, threads=1).run({"x": x})[0]
        assert np.abs(got - numpy_reference(gen, x, cond)).max() <= 1e-5


def test_baked_layout(tmp_path):
    gen = generator(conv_document())
    hyperkit.save(gen, tmp_path / "g.pt")
    hyperkit.bake_generator(tmp_path / "g.pt", "3", tmp_path / "t.onnx")
    model = onnx.load(tmp_path / "t.onnx")
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["y"]
    assert [t.name for t in model.graph.initializer] == [s.param for s in gen.spec.slots]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["hyperkit.family"] == "generator-baked"
    assert meta["hyperkit.spec"] == gen.spec_text
    assert json.loads(meta["hyperkit.condition"]) == {"task_id": 3}
    assert meta["hyperkit.source_sha256"] == sha256_file(tmp_path / "g.pt")
    assert meta["hyperkit.version"] == hyperkit.__version__
    hyperkit.bake_generator(tmp_path / "g.pt", "3", tmp_path / "f.onnx", lora_factors=True)
    names = [t.name for t in onnx.load(tmp_path / "f.onnx").graph.initializer]
    assert {"fc.weight", "fc.weight.lora_A", "fc.weight.lora_B"} <= set(names)


def test_cli_bake_ids_vector_npy_theta_and_json(tmp_path, run_cli):
    hyperkit.save(generator(conv_document()), tmp_path / "g.safetensors")
    result = run_cli(
        "bake",
        tmp_path / "g.safetensors",
        "--condition",
        "0,2",
        "-o",
        tmp_path / "m.onnx",
        "--theta",
        tmp_path / "w.safetensors",
        "--json",
    )
    assert result.code == 0, result.stderr
    assert [r["condition"] for r in json.loads(result.stdout)] == [{"task_id": 0}, {"task_id": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "g.safetensors",
        "m-task0.onnx",
        "m-task2.onnx",
        "w-task0.safetensors",
        "w-task2.safetensors",
    ]
    hyperkit.save(generator(mlp_document(condition="continuous")), tmp_path / "c.pt")
    np.save(tmp_path / "z.npy", np.array([0.1, -0.4, 2.0, 0.0]))
    for cond in ("0.1,-0.4,2,0", str(tmp_path / "z.npy")):
        result = run_cli("bake", tmp_path / "c.pt", "--condition", cond, "-o", tmp_path / "c.onnx", "--force")
        assert result.code == 0 and "parity max abs" in result.stdout


@pytest.mark.parametrize(
    ("doc", "cond", "code", "message"),
    [
        (conv_document(), "4", 3, "task id 4 is out of range: the generator has 4 tasks (0..3)"),
        (conv_document(), "1,x", 2, "takes task ids"),
        (mlp_document(condition="continuous"), "1,2", 3, "condition vector has 2 values, the generator expects 4"),
        (mlp_document(condition="continuous"), "a,b", 2, "takes a vector"),
    ],
)
def test_bad_conditions(tmp_path, run_cli, doc, cond, code, message):
    hyperkit.save(generator(doc), tmp_path / "g.pt")
    result = run_cli("bake", tmp_path / "g.pt", "--condition", cond, "-o", tmp_path / "t.onnx")
    assert result.code == code and message in result.stderr
    assert not (tmp_path / "t.onnx").exists()


def test_past_the_tolerance_exits_1_and_writes_nothing(tmp_path, run_cli):
    hyperkit.save(generator(conv_document()), tmp_path / "g.pt")
    result = run_cli("bake", tmp_path / "g.pt", "--condition", "1", "-o", tmp_path / "t.onnx", "--tolerance", "0")
    assert result.code == 1 and "parity failed" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt"]


def test_nan_in_generated_weights_is_refused(tmp_path, run_cli):
    gen = generator(conv_document())
    gen.tensor_map["hnet.layers.1.bias"] = np.full_like(gen.tensor_map["hnet.layers.1.bias"], np.nan)
    hyperkit.save(gen, tmp_path / "g.safetensors")
    result = run_cli("bake", tmp_path / "g.safetensors", "--condition", "1", "-o", tmp_path / "t.onnx")
    assert result.code == 3 and "contain NaN or Inf" in result.stderr
    assert not (tmp_path / "t.onnx").exists()


def test_an_sd_hypernetwork_is_not_a_generator(tmp_path, run_cli):
    from hyperkit.demo import fixture_path

    result = run_cli("bake", fixture_path("b_a1111_default.pt"), "--condition", "1", "-o", tmp_path / "t.onnx")
    assert result.code == 3 and "not a generator" in result.stderr
