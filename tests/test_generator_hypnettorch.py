"""Import from hypnettorch, compared with hypnettorch's own outputs (real HMLP / ChunkedHMLP + MLP)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("hypnettorch")
from hypnettorch.hnets import HMLP, ChunkedHMLP
from hypnettorch.mnets import MLP

import hyperkit
from hyperkit.errors import BadInputError, UnsupportedError
from hyperkit.generator.hypnettorch import import_file
from hyperkit.generator.torch_modules import GeneratorModule

CASES = [
    ("HMLP", {"layers": [9, 6]}, {"hidden_layers": [7, 6], "activation": "relu"}),
    ("HMLP", {"layers": [], "activation": "tanh"}, {"hidden_layers": [], "activation": "relu"}),
    (
        "ChunkedHMLP",
        {"layers": [9], "chunk_size": 17, "chunk_emb_size": 2},
        {"hidden_layers": [7], "activation": "relu"},
    ),
    (
        "ChunkedHMLP",
        {"layers": [5, 5], "chunk_size": 64, "chunk_emb_size": 3, "activation": "elu"},
        {"hidden_layers": [4, 4], "activation": "tanh"},
    ),
]
_ACT = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "elu": torch.nn.ELU}


def _build(htype, hkw, mkw):
    torch.manual_seed(0)
    mnet = MLP(
        n_in=5,
        n_out=3,
        hidden_layers=tuple(mkw["hidden_layers"]),
        activation_fn=_ACT[mkw["activation"]](),
        no_weights=True,
        verbose=False,
    )
    kw = {
        "cond_in_size": 4,
        "num_cond_embs": 3,
        "layers": tuple(hkw["layers"]),
        "verbose": False,
        "activation_fn": _ACT[hkw.get("activation", "relu")](),
    }
    if htype == "HMLP":
        return mnet, HMLP(mnet.param_shapes, **kw)
    return mnet, ChunkedHMLP(
        mnet.param_shapes, chunk_size=hkw["chunk_size"], chunk_emb_size=hkw["chunk_emb_size"], **kw
    )


@pytest.mark.parametrize(("htype", "hkw", "mkw"), CASES)
def test_import_matches_hypnettorch(tmp_path, htype, hkw, mkw):
    mnet, hnet = _build(htype, hkw, mkw)
    torch.save(hnet.state_dict(), tmp_path / "h.pt")  # aliased tensors, as users have them
    config = {
        "hnet": {"type": htype, "cond_in_size": 4, "num_cond_embs": 3, **hkw},
        "mnet": {"type": "MLP", "n_in": 5, "n_out": 3, **mkw},
    }
    gen = import_file(tmp_path / "h.pt", config)
    hyperkit.save(gen, tmp_path / "g.onnx")  # through a container and back
    module = GeneratorModule.from_generator(hyperkit.load(tmp_path / "g.onnx"))
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for task in range(3):
            want = mnet.forward(x, weights=hnet.forward(cond_id=task))
            assert torch.allclose(module(x, task_id=task), want, atol=1e-6, rtol=0)
            theta = torch.cat([w.flatten() for w in hnet.forward(cond_id=task)])
            assert torch.equal(module.theta(task_id=task), theta)
    (report,) = hyperkit.bake_generator(tmp_path / "g.onnx", "2", tmp_path / "t.onnx")
    assert report.passed


def test_cli_import_of_the_bundled_fixture(tmp_path, run_cli):
    from hyperkit.demo import fixture_path

    state, config = fixture_path("generator/hypnettorch_chunked.pt"), fixture_path("generator/hypnettorch_chunked.json")
    result = run_cli("import-hypnettorch", state, "--config", config, "-o", tmp_path / "g.safetensors")
    assert result.code == 0 and "verified" in result.stdout
    assert hyperkit.load(tmp_path / "g.safetensors").spec.hypernet_type == "chunked_mlp"


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"hnet": {"uncond_in_size": 2}}, UnsupportedError, "config 'hnet.uncond_in_size' = 2 cannot be expressed"),
        ({"hnet": {"type": "HDeconv"}}, UnsupportedError, "must be HMLP or ChunkedHMLP"),
        (
            {"hnet": {"layers": [8]}},
            BadInputError,
            "'_hnet._internal_params.3' has shape [16, 6], the config implies [8, 6]",
        ),
        (
            {"hnet": {"num_cond_embs": 5}},
            BadInputError,
            "'_hnet._internal_params.3' has shape [16, 6], the config implies [4]",
        ),
        ({"mnet": {"bogus": 1}}, BadInputError, "config 'mnet.bogus' is not a known option"),
    ],
)
def test_bad_configs(tmp_path, change, error, message):
    from hyperkit.demo import fixture_path

    config = json.loads(fixture_path("generator/hypnettorch_chunked.json").read_text())
    for section, values in change.items():
        config[section].update(values)
    with pytest.raises(error) as info:
        import_file(fixture_path("generator/hypnettorch_chunked.pt"), config)
    assert message in info.value.message


def test_a_model_state_dict_is_not_a_hypnettorch_hypernet(tmp_path):
    torch.save({"0.weight": torch.zeros(2, 2)}, tmp_path / "m.pt")
    config = {
        "hnet": {"type": "HMLP", "layers": [], "cond_in_size": 2},
        "mnet": {"type": "MLP", "n_in": 2, "n_out": 1, "hidden_layers": []},
    }
    with pytest.raises(BadInputError, match=r"_internal_params\.0' is missing"):
        import_file(tmp_path / "m.pt", config)
