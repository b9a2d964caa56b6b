"""hyperkit's replay of A1111's module layout against real torch.nn Sequentials (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import state, torch_module

from hyperkit.errors import StructureError, UnsupportedError
from hyperkit.sdkv import structure
from hyperkit.sdkv.model import SDKVHypernetwork, parse_dropout_structure

CASES = [
    # layer_structure, activation, layer norm, dropout_structure, activate_output
    ([1, 2, 1], None, False, [0, 0, 0], False),
    ([1, 2, 1], "relu", False, [0, 0, 0], False),
    ([1, 2, 1], "relu", False, [0, 0, 0], True),
    ([1, 2, 1], "relu", True, [0, 0, 0], False),
    ([1, 2, 1], "relu", False, [0, 0.3, 0], False),
    ([1, 2, 2, 1], "swish", True, [0, 0.3, 0.3, 0], False),
    ([1, 2, 1], "prelu", False, [0, 0, 0], False),
    ([1, 1.5, 1], None, False, [0, 0, 0], False),
    ([1, 2, 2, 2, 2, 1], "tanh", True, [0, 0.1, 0.1, 0.1, 0.1, 0], True),
    ([1, 2, 1], "relu", False, [0, 0.05, 0.15], True),  # non-zero last entry: a trailing Dropout
]


@pytest.mark.parametrize(("ls", "act", "ln", "ds", "ao"), CASES)
def test_layout_matches_torch_state_dict(ls, act, ln, ds, ao):
    dim = 768
    reference = {k: tuple(v.shape) for k, v in state(torch_module(dim, ls, act, ln, ds, ao)).items()}
    metadata = {
        "layer_structure": ls,
        "activation_func": act,
        "is_layer_norm": ln,
        "dropout_structure": ds,
        "activate_output": ao,
    }
    ours = structure.expected_shapes(structure.layout(dim, structure.resolve_config(metadata)))
    assert list(ours.items()) == list(reference.items())


def test_reference_table_examples():
    """The verified rows of the format reference, e.g. PReLU's 1-element weight at index 1."""
    cfg = structure.resolve_config({"activation_func": "prelu", "activate_output": False})
    assert structure.expected_shapes(structure.layout(768, cfg)) == {
        "linear.0.weight": (1536, 768),
        "linear.0.bias": (1536,),
        "linear.1.weight": (1,),
        "linear.2.weight": (768, 1536),
        "linear.2.bias": (768,),
    }
    deep = structure.resolve_config(
        {
            "layer_structure": [1, 2, 2, 1],
            "activation_func": "swish",
            "is_layer_norm": True,
            "dropout_structure": [0, 0.3, 0.3, 0],
            "activate_output": False,
        }
    )
    linear_or_ln = [x.index for x in structure.layout(768, deep) if x.kind in ("linear", "layernorm")]
    assert linear_or_ln == [0, 2, 4, 6, 8, 9]


def test_a1111_defaults_for_missing_keys():
    cfg = structure.resolve_config({"activation_func": "relu"})
    assert cfg.activate_output is True  # old files applied the activation after the last layer too
    assert cfg.layer_structure == (1, 2, 1)
    assert parse_dropout_structure([1, 2, 2, 2, 1], True, True) == [0, 0.3, 0.3, 0.3, 0]
    assert structure.resolve_config({"dropout_structure": [0, 0.2, 0]}).dropout_structure == (0, 0.2, 0)


def test_nai_legacy_names_fit_default_layout():
    sd = {
        "linear1.weight": np.zeros((16, 8), "f4"),
        "linear1.bias": np.zeros(16, "f4"),
        "linear2.weight": np.zeros((8, 16), "f4"),
        "linear2.bias": np.zeros(8, "f4"),
    }
    hn = SDKVHypernetwork({8: (sd, sd)})
    assert structure.problems(hn) == []
    layers = structure.resolved_layout(hn, 8, 0)
    assert [(x.weight, x.bias) for x in layers] == [
        ("linear1.weight", "linear1.bias"),
        ("linear2.weight", "linear2.bias"),
    ]


def test_mismatch_names_dim_module_key_and_shapes():
    sd = {
        "linear.0.weight": np.zeros((16, 8), "f4"),
        "linear.0.bias": np.zeros(16, "f4"),
        "linear.2.weight": np.zeros((8, 16), "f4"),
        "linear.2.bias": np.zeros(8, "f4"),
    }
    hn = SDKVHypernetwork({8: (sd, dict(sd))}, {"activation_func": "linear"})
    with pytest.raises(StructureError) as err:
        structure.check(hn)
    assert str(err.value) == (
        "tensors do not fit layer_structure [1, 2, 1], activation linear, layer norm off, dropout [0, 0, 0], "
        "activate_output True: dim 8 (k): missing key 'linear.1.weight', expected shape (8, 16); "
        "dim 8 (k): missing key 'linear.1.bias', expected shape (8,); "
        "dim 8 (k): unexpected key 'linear.2.weight' with shape (8, 16); "
        "dim 8 (k): unexpected key 'linear.2.bias' with shape (8,); and 4 more"
    )


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"layer_structure": [2, 2, 1]}, StructureError),
        ({"layer_structure": [1]}, StructureError),
        ({"layer_structure": "1,2,1"}, StructureError),
        ({"dropout_structure": [0, 1.5, 0]}, StructureError),
        ({"dropout_structure": [0, 0]}, StructureError),
        ({"activation_func": 3}, StructureError),
        ({"activation_func": "glu"}, UnsupportedError),
    ],
)
def test_invalid_metadata(metadata, error):
    with pytest.raises(error):
        structure.resolve_config(metadata)
