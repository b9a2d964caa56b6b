"""Generators in every container: bit-exact round trips through `hyperkit convert`, and bad files refused."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import sha256
from generatorkit import generator, grid

import hyperkit
from hyperkit.errors import CorruptFileError, StructureError, UnknownFormatError, UnsupportedError
from hyperkit.formats import onnx as onnx_format
from hyperkit.formats import pt
from hyperkit.formats.safetensors_io import read_safetensors, write_safetensors
from hyperkit.generator.examples import conv_document


@pytest.mark.parametrize(("name", "doc"), grid()[::3], ids=[g[0] for g in grid()[::3]])
def test_round_trip_through_every_container_is_bit_exact(name, doc, tmp_path):
    gen = generator(doc)
    hyperkit.save(gen, tmp_path / "g0.safetensors")
    chain = ["g0.safetensors", "g1.pt", "g2.onnx", "g3.safetensors", "g4.onnx", "g5.pt"]
    for a, b in itertools.pairwise(chain):
        hyperkit.convert(tmp_path / a, tmp_path / b)
    back = hyperkit.load(tmp_path / "g5.pt")
    assert back.spec_text == gen.spec_text
    assert [n for n, _ in back.tensors()] == [n for n, _ in gen.tensors()]
    assert all(
        a.tobytes() == b.tobytes() and a.dtype == b.dtype
        for (_, a), (_, b) in zip(gen.tensors(), back.tensors(), strict=True)
    )
    assert sha256(tmp_path / "g0.safetensors") == sha256(tmp_path / "g3.safetensors")  # the very same bytes


def test_fp16_and_bf16_tensors_round_trip(tmp_path):
    gen = generator(conv_document())
    for dtype in ("fp16", "bf16"):
        hyperkit.save(gen, tmp_path / "g.safetensors", force=True)
        hyperkit.convert(tmp_path / "g.safetensors", tmp_path / f"{dtype}.onnx", dtype=dtype)
        hyperkit.convert(tmp_path / f"{dtype}.onnx", tmp_path / f"{dtype}.pt")
        back = hyperkit.load(tmp_path / f"{dtype}.pt")
        assert back.dtypes() == [{"fp16": "float16", "bf16": "bfloat16"}[dtype]]


def test_pt_is_a_plain_dict_torch_loads_with_weights_only(tmp_path):
    gen = generator(conv_document())
    hyperkit.save(gen, tmp_path / "g.pt")
    obj = torch.load(tmp_path / "g.pt", weights_only=True)
    assert sorted(obj) == ["hyperkit_spec", "tensors"]
    assert json.loads(obj["hyperkit_spec"]) == conv_document()
    assert np.array_equal(obj["tensors"]["hnet.cond_table"].numpy(), dict(gen.tensors())["hnet.cond_table"])


def test_hyper_onnx_runs_and_matches_the_torch_module(tmp_path):
    from hyperkit.generator.torch_modules import GeneratorModule
    from hyperkit.runtime import open_session

    gen = generator(conv_document())
    hyperkit.save(gen, tmp_path / "g.onnx")
    session = open_session(tmp_path / "g.onnx", prefer_gpu=False, threads=1)
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)).astype(np.float32)
    module = GeneratorModule.from_generator(gen)
    for task in range(4):
        got = session.run({"condition": np.array(task, np.int64), "x": x})[0]
        with torch.no_grad():
            want = module(torch.from_numpy(x), task_id=task).numpy()
        assert np.abs(got - want).max() <= 1e-5


def _rewrite_safetensors(src, dst, change):
    tensors, meta = read_safetensors(src)
    tensors, meta = change(dict(tensors), dict(meta))
    write_safetensors(dst, list(tensors.items()), meta)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            lambda t, m: ({k: v for k, v in t.items() if k != "base.fc.bias"}, m),
            StructureError,
            "tensor 'base.fc.bias' is missing",
        ),
        (
            lambda t, m: ({**t, "hnet.extra": np.zeros(1, "f4")}, m),
            StructureError,
            "tensor 'hnet.extra' is not part of this spec",
        ),
        (
            lambda t, m: ({**t, "hnet.chunk_emb": np.zeros((5, 4), "f4")}, m),
            StructureError,
            "tensor 'hnet.chunk_emb' has shape [5, 4], the spec says [6, 4]",
        ),
        (lambda t, m: ({**t, "hnet.cond_table": np.zeros((4, 8), "i4")}, m), StructureError, "expected a float dtype"),
        (
            lambda t, m: (t, {**m, "hyperkit.spec": m["hyperkit.spec"].replace('"relu"}', '"swish"}')}),
            StructureError,
            "spec field 'target.layers[1].op'",
        ),
        (
            lambda t, m: (t, {k: v for k, v in m.items() if k != "hyperkit.spec"}),
            CorruptFileError,
            "generator without its spec",
        ),
        (
            lambda t, m: (t, {**m, "hyperkit.format_version": "7"}),
            UnknownFormatError,
            "unsupported hyperkit.format_version",
        ),
    ],
)
def test_bad_safetensors_generators_are_refused(tmp_path, change, error, message):
    hyperkit.save(generator(conv_document()), tmp_path / "g.safetensors")
    _rewrite_safetensors(tmp_path / "g.safetensors", tmp_path / "bad.safetensors", change)
    with pytest.raises(error) as info:
        hyperkit.load(tmp_path / "bad.safetensors")
    assert message in info.value.message and info.value.message.startswith(str(tmp_path / "bad.safetensors"))


def test_bad_files_exit_3_and_write_nothing(tmp_path, run_cli):
    hyperkit.save(generator(conv_document()), tmp_path / "g.safetensors")
    _rewrite_safetensors(
        tmp_path / "g.safetensors", tmp_path / "bad.safetensors", lambda t, m: ({**t, "x": t["base.fc.bias"]}, m)
    )
    result = run_cli("convert", tmp_path / "bad.safetensors", tmp_path / "out.pt")
    assert result.code == 3 and "tensor 'x' is not part of this spec" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def test_edited_hyper_onnx_graph_is_refused(tmp_path):
    import onnx

    hyperkit.save(generator(conv_document()), tmp_path / "g.onnx")
    model = onnx.load(tmp_path / "g.onnx")
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "Sigmoid"
    onnx.save(model, tmp_path / "edited.onnx")
    with pytest.raises(CorruptFileError, match="graph does not match its hyperkit spec"):
        onnx_format.read(tmp_path / "edited.onnx")


def test_onnx_without_our_metadata_and_baked_models_are_refused(tmp_path):
    import onnx

    hyperkit.save(generator(conv_document()), tmp_path / "g.onnx")
    model = onnx.load(tmp_path / "g.onnx")
    del model.metadata_props[:]
    model.producer_name = "someone"
    onnx.save(model, tmp_path / "plain.onnx")
    with pytest.raises(UnknownFormatError, match="not a hyperkit"):
        onnx_format.read(tmp_path / "plain.onnx")
    hyperkit.bake_generator(tmp_path / "g.onnx", "1", tmp_path / "t.onnx")
    with pytest.raises(UnsupportedError, match="baked from a generator holds no hypernetwork"):
        hyperkit.load(tmp_path / "t.onnx")


def test_pt_of_another_shape_is_refused(tmp_path):
    from hyperkit.formats.torchfile import write_torch_zip

    write_torch_zip(tmp_path / "g.pt", {"hyperkit_spec": "{}", "tensors": {}, "extra": 1}, "g")
    with pytest.raises(CorruptFileError, match="exactly 'hyperkit_spec' and 'tensors'"):
        pt.read(tmp_path / "g.pt")
    write_torch_zip(tmp_path / "g.pt", {"hyperkit_spec": 3, "tensors": {}}, "g")
    with pytest.raises(CorruptFileError, match="expected the spec's JSON text"):
        pt.read(tmp_path / "g.pt")


def test_inspect_describes_a_generator_and_a_baked_model(tmp_path, run_cli):
    hyperkit.save(generator(conv_document()), tmp_path / "g.pt")
    report = hyperkit.inspect_file(tmp_path / "g.pt")
    assert report["family"] == "generator" and report["slots"]["fc.weight"] == "lora"
    assert report["verdicts"]["torch_weights_only"]["loads"]
    hyperkit.bake_generator(tmp_path / "g.pt", "2", tmp_path / "t.onnx")
    result = run_cli("inspect", tmp_path / "t.onnx", "--json")
    assert result.code == 0 and json.loads(result.stdout)["condition"] == {"task_id": 2}
