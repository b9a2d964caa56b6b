"""ONNX format: the graph computes what A1111's torch modules compute, and the file round-trips bit-exactly."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from hyperkit import formats  # noqa: E402
from hyperkit.errors import CorruptFileError, UnknownFormatError, UnsupportedError  # noqa: E402
from hyperkit.formats import onnx as onnx_format  # noqa: E402
from hyperkit.formats.arrays import bit_equal  # noqa: E402
from hyperkit.sdkv.model import SDKVHypernetwork, parse_dropout_structure  # noqa: E402
from hyperkit.sdkv.strmap import to_string_map  # noqa: E402
from hyperkit.sdkv.structure import ACTIVATIONS  # noqa: E402

DIMS = (8, 16)

# A1111 looks activations up by lower-cased torch class name, with a few explicit aliases.
TORCH_ACTIVATIONS: dict[str, Any] = {
    name.lower(): cls
    for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
    if cls.__module__ == "torch.nn.modules.activation"
}
TORCH_ACTIVATIONS["swish"] = torch.nn.Hardswish


def a1111_sequential(dim: int, md: dict[str, Any]) -> Any:
    """An eval-mode Sequential built the way A1111's HypernetworkModule builds one."""
    ls = md.get("layer_structure", [1, 2, 1])
    act = md.get("activation_func")
    ds = md.get("dropout_structure") or parse_dropout_structure(
        list(ls), md.get("use_dropout", False), md.get("last_layer_dropout", False)
    )
    layers: list[Any] = []
    n = len(ls)
    for i in range(n - 1):
        layers.append(torch.nn.Linear(int(dim * ls[i]), int(dim * ls[i + 1])))
        if act not in (None, "linear") and (i < n - 2 or md.get("activate_output", True)):
            layers.append(TORCH_ACTIVATIONS[act]())
        if md.get("is_layer_norm", False):
            layers.append(torch.nn.LayerNorm(int(dim * ls[i + 1])))
        if ds[i + 1] > 0:
            layers.append(torch.nn.Dropout(p=ds[i + 1]))
    seq = torch.nn.Sequential(*layers)
    with torch.no_grad():  # move LayerNorm/PReLU off their 1/0/0.25 defaults so using them shows
        for p in seq.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return seq.eval()


def cast(arr: np.ndarray, dtype: str) -> np.ndarray:
    return arr.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def make(
    md: dict[str, Any], *, dtype: str = "float32", seed: int = 0, legacy: bool = False
) -> tuple[SDKVHypernetwork, dict[tuple[int, int], Any]]:
    """A hypernetwork from torch modules, plus those modules holding the very weights stored."""
    torch.manual_seed(seed)
    modules, seqs = {}, {}
    for dim in DIMS:
        pair = []
        for which in range(2):
            seq = a1111_sequential(dim, md)
            # A1111 keeps the Sequential as ``self.linear``, hence the ``linear.`` prefix
            state = {f"linear.{k}": cast(v.numpy(), dtype) for k, v in seq.state_dict().items()}
            # the reference runs on the stored (rounded) weights, upcast as the graph does
            seq.load_state_dict({k[len("linear.") :]: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()})
            if legacy:
                state = {k.replace("linear.0", "linear1").replace("linear.1", "linear2"): v for k, v in state.items()}
            pair.append(state)
            seqs[dim, which] = seq
        modules[dim] = (pair[0], pair[1])
    return SDKVHypernetwork(modules=modules, metadata=dict(md)), seqs


def write(hn: SDKVHypernetwork, tmp_path: Path, name: str = "hn") -> Path:
    path = tmp_path / f"{name}.onnx"
    onnx_format.write(hn, path, stem=name)
    return path


def assert_same(a: SDKVHypernetwork, b: SDKVHypernetwork) -> None:
    ta, tb = list(a.tensors()), list(b.tensors())
    assert [n for n, _ in ta] == [n for n, _ in tb]
    for (name, x), (_, y) in zip(ta, tb, strict=True):
        assert bit_equal(x, y), name
    assert a.metadata == b.metadata
    assert {k: type(v) for k, v in a.metadata.items()} == {k: type(v) for k, v in b.metadata.items()}
    assert a.key_order == b.key_order
    assert a.container == b.container


def assert_runs_like_torch(path: Path, seqs: dict[tuple[int, int], Any]) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch, tokens in ((2, 5), (3, 1)):
        feeds = {f"context_{d}": rng.standard_normal((batch, tokens, d)).astype(np.float32) * 2 for d in DIMS}
        for strength in (None, 0.7):
            extra = {} if strength is None else {"strength": np.array(strength, np.float32)}
            outputs = dict(
                zip([o.name for o in session.get_outputs()], session.run(None, {**feeds, **extra}), strict=True)
            )
            for (dim, which), seq in seqs.items():
                x = torch.from_numpy(feeds[f"context_{dim}"])
                with torch.no_grad():
                    ref = (x + seq(x) * (1.0 if strength is None else strength)).numpy()
                got = outputs[f"{'kv'[which]}_{dim}"]
                assert got.shape == ref.shape
                assert got.dtype == np.float32
                np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


CONFIGS: list[dict[str, Any]] = [
    *({"activation_func": act, "activate_output": True} for act in sorted(ACTIVATIONS)),
    {
        "activation_func": "relu",
        "is_layer_norm": True,
        "layer_structure": [1, 2, 2, 1],
        "dropout_structure": [0, 0.1, 0.2, 0],
        "activate_output": False,
    },
    {"activation_func": "prelu", "is_layer_norm": True, "activate_output": False},
    {"activation_func": "leakyrelu", "is_layer_norm": True, "layer_structure": [1, 1.5, 1]},
    {"activation_func": "swish", "layer_structure": [1, 2, 2, 1], "use_dropout": True, "last_layer_dropout": True},
    {"layer_structure": [1.0, 2.0, 1.0], "activation_func": None, "is_layer_norm": True},
    {},
]


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
@pytest.mark.parametrize("md", CONFIGS, ids=lambda md: "-".join(f"{k}={v}" for k, v in md.items()) or "empty")
def test_graph_matches_torch_and_round_trips(md: dict[str, Any], tmp_path: Path) -> None:
    hn, seqs = make(md)
    path = write(hn, tmp_path)
    onnx.checker.check_model(str(path))
    assert_runs_like_torch(path, seqs)
    assert_same(hn, onnx_format.read(path))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_low_and_high_precision_weights(dtype: str, tmp_path: Path) -> None:
    md = {"activation_func": "prelu", "is_layer_norm": True, "layer_structure": [1, 2, 2, 1]}
    hn, seqs = make(md, dtype=dtype, seed=3)
    path = write(hn, tmp_path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    stored = {t.name: t for t in model.graph.initializer}
    assert stored["8.k.linear.0.weight"].data_type == helper.np_dtype_to_tensor_dtype(
        np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    )
    assert {n.op_type for n in model.graph.node} >= {"Cast", "Transpose", "PRelu", "LayerNormalization"}
    assert_runs_like_torch(path, seqs)
    back = onnx_format.read(path)
    assert back.dtypes() == [dtype]
    assert_same(hn, back)


def test_legacy_novelai_names_and_metadata_survive(tmp_path: Path) -> None:
    md = {
        "layer_structure": [1.0, 2.0, 1.0],
        "activation_func": None,
        "sd_checkpoint": None,
        "is_layer_norm": False,
        "step": 3,
        "extra": {"a": (1, 2.0)},
    }
    hn, seqs = make(md, legacy=True, seed=5)
    hn.container = "list"
    hn.key_order = ["step", *DIMS, *(k for k in md if k != "step")]
    path = write(hn, tmp_path, "nai")
    model = onnx.load(str(path))
    names = [t.name for t in model.graph.initializer]
    assert names == [n for n, _ in hn.tensors()] + ["strength"]
    assert "8.k.linear1.weight" in names
    assert "16.v.linear2.bias" in names
    assert_runs_like_torch(path, seqs)
    back = onnx_format.read(path)
    assert_same(hn, back)
    assert list(back.modules[8][0]) == ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"]


def test_bit_exact_special_values(tmp_path: Path) -> None:
    hn, _ = make({"activation_func": "relu"}, dtype="float16", seed=7)
    bias = hn.modules[8][1]["linear.0.bias"]
    bias.view(np.uint16)[:3] = [0x7E01, 0x8000, 0xFC00]  # NaN with a payload, -0.0, -inf
    back = onnx_format.read(write(hn, tmp_path))
    assert_same(hn, back)


def test_contract(tmp_path: Path) -> None:
    hn, _ = make({"activation_func": "gelu", "step": 1, "name": "demo"})
    model = onnx.load(str(write(hn, tmp_path, "demo")))
    assert model.ir_version == 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 20)]
    assert model.producer_name == "hyperkit"
    assert model.graph.name == "demo"
    assert {p.key: p.value for p in model.metadata_props} == to_string_map(hn)
    graph = model.graph
    assert [i.name for i in graph.input] == ["context_8", "context_16", "strength"]
    assert [o.name for o in graph.output] == ["k_8", "v_8", "k_16", "v_16"]
    for value in [*graph.input[:2], *graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
        assert [dims[0].dim_param, dims[1].dim_param] == ["batch", "tokens"]
        assert dims[2].dim_value == int(value.name.rsplit("_", 1)[1])
    strength = graph.input[2].type.tensor_type
    assert strength.elem_type == TensorProto.FLOAT
    assert len(strength.shape.dim) == 0
    init = {t.name: t for t in graph.initializer}
    assert numpy_helper.to_array(init["strength"]) == np.float32(1.0)
    assert init["8.k.linear.0.weight"].dims == [16, 8]
    gelu = next(n for n in graph.node if n.op_type == "Gelu")
    assert helper.get_attribute_value(gelu.attribute[0]) == b"none"


def test_registered_for_onnx_suffix() -> None:
    assert formats.for_path("x.ONNX").load_module() is onnx_format


def test_foreign_model_is_unknown(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(UnknownFormatError, match="not a hyperkit sd-kv ONNX model"):
        onnx_format.read(path)


def test_empty_and_truncated_files_are_corrupt(tmp_path: Path) -> None:
    hn, _ = make({"activation_func": "tanh", "name": "t"})
    path = write(hn, tmp_path)
    data = path.read_bytes()
    # every cut past the first field, including ones between two metadata entries that parse cleanly
    for n in [0, *range(3, len(data) - 600, 97), *range(len(data) - 600, len(data))]:
        path.write_bytes(data[:n])
        with pytest.raises(CorruptFileError):
            onnx_format.read(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptFileError):
        onnx_format.read(path)


def _edit(path: Path, fn: Any) -> None:
    model = onnx.load(str(path))
    fn(model)
    path.write_bytes(model.SerializeToString())  # onnx.save would act on external-data edits


def _set_meta(model: Any, key: str, value: str) -> None:
    next(p for p in model.metadata_props if p.key == key).value = value


EDITS: dict[str, Any] = {
    "op_type": lambda m: setattr(next(n for n in m.graph.node if n.op_type == "LeakyRelu"), "op_type", "Relu"),
    "attribute": lambda m: setattr(next(n for n in m.graph.node if n.op_type == "LeakyRelu").attribute[0], "f", 0.2),
    "extra_node": lambda m: m.graph.node.append(helper.make_node("Relu", ["k_8"], ["junk"])),
    "rewired": lambda m: m.graph.node[-1].input.__setitem__(0, "context_8"),
    "strength_not_an_input": lambda m: m.graph.input.pop(),
    "strength_value": lambda m: m.graph.initializer[-1].CopyFrom(
        numpy_helper.from_array(np.array(0.5, np.float32), "strength")
    ),
    "activation_metadata": lambda m: _set_meta(m, "hyperkit.activation_func", '"elu"'),
    "opset": lambda m: setattr(m.opset_import[0], "version", 13),
    "structure_metadata": lambda m: _set_meta(m, "hyperkit.layer_structure", "[1, 3, 1]"),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_edited_graph_is_corrupt(edit: Any, tmp_path: Path) -> None:
    hn, _ = make({"layer_structure": [1, 2, 1], "activation_func": "leakyrelu", "activate_output": False})
    path = write(hn, tmp_path)
    _edit(path, edit)
    with pytest.raises(CorruptFileError, match="hyperkit metadata"):
        onnx_format.read(path)


def test_external_data_is_refused(tmp_path: Path) -> None:
    path = write(make({"activation_func": "relu"})[0], tmp_path)
    _edit(path, lambda m: setattr(m.graph.initializer[0], "data_location", TensorProto.EXTERNAL))
    with pytest.raises(UnsupportedError, match="external data"):
        onnx_format.read(path)


def test_non_float_weights_are_refused(tmp_path: Path) -> None:
    hn = make({"activation_func": "relu"})[0].with_tensors(lambda a: a.astype(np.int32))
    with pytest.raises(UnsupportedError, match="float dtype"):
        write(hn, tmp_path)
