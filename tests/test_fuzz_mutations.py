"""Mutation fuzzing of every reader: damaged input must give a model or a ``HyperkitError``, nothing else.

Hypothesis mutates the seed files (see :mod:`fuzzkit`) — raw byte edits (truncation, flips, insertions,
deletions), safetensors header-length and header-JSON edits, zip central-directory / local-header / end-record
damage, edits of the pickle inside an intact zip, edits of the unpickled object re-written as a valid archive,
and ONNX protobuf edits — and every reader gets every mutant. A deterministic loop also tries every truncation
length of every seed.
"""

from __future__ import annotations

import collections
import io
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from fuzzkit import (
    SEED_NAMES,
    byte_mutants,
    fuzz_settings,
    needs_onnx,
    read_everything,
    rezip,
    seeds_fixture,  # noqa: F401  (the `seeds` fixture)
    small_model,
    unzip,
    work_fixture,  # noqa: F401  (the `work` fixture)
)
from fuzzkit_strategies import json_texts, safetensors_header_mutants, tensor_names, zip_mutants
from hypothesis import given
from hypothesis import strategies as st

from hyperkit import conversion
from hyperkit.formats.arrays import bit_equal
from hyperkit.formats.safetensors_io import MAX_HEADER
from hyperkit.formats.torchfile import write_torch_zip
from hyperkit.sdkv import pt_codec

# ---------------------------------------------------------------------------------------------
# raw byte mutations of every seed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEED_NAMES)
@fuzz_settings(250)
@given(data=st.data())
def test_byte_mutants_raise_only_hyperkit_errors(seeds, work, seed, data):
    mutant = data.draw(byte_mutants(seeds[seed]), label="mutant")
    read_everything(work / f"mutant{Path(seed).suffix}", mutant)


@pytest.mark.parametrize("fixture", ["a_nai_legacy.pt", "j_fp16_cuda.pt", "l_legacy_stacked.pt"])
@fuzz_settings(80)
@given(data=st.data())
def test_byte_mutants_of_bundled_fixtures(work, fixture, data):
    from hyperkit.demo import fixture_path

    original = fixture_path(fixture).read_bytes()
    mutant = data.draw(byte_mutants(original), label="mutant")
    read_everything(work / "mutant.pt", mutant)


@pytest.mark.parametrize("seed", SEED_NAMES)
def test_every_truncation_length(seeds, work, seed):
    """Deterministic: every prefix of every seed (0 bytes included) is refused cleanly or reads."""
    original = seeds[seed]
    path = work / f"cut{Path(seed).suffix}"
    refused = 0
    for n in range(len(original)):
        refused += not read_everything(path, original[:n])
    # A prefix may parse by chance (e.g. protobuf stops at a field boundary) but almost all must fail.
    assert refused >= len(original) - 2, f"{len(original) - refused} truncations of {seed} loaded"


# ---------------------------------------------------------------------------------------------
# format-aware damage
# ---------------------------------------------------------------------------------------------


def seeds_path(work: Path, name: str, data: bytes) -> Path:
    path = work / f"original-{name}"
    if not path.exists():
        path.write_bytes(data)
    return path


@fuzz_settings(250)
@given(data=st.data())
def test_safetensors_header_length_corruption(seeds, work, data):
    original = seeds["hk.safetensors"]
    (n,) = struct.unpack("<Q", original[:8])
    value = data.draw(
        st.one_of(
            st.sampled_from(
                [
                    0,
                    1,
                    2,
                    7,
                    8,
                    n - 8,
                    n - 1,
                    n + 1,
                    n + 8,
                    len(original) - 8,
                    len(original),
                    MAX_HEADER,
                    MAX_HEADER + 1,
                    2**31,
                    2**32 - 1,
                    2**32,
                    2**32 + n,
                    2**63 - 1,
                    2**63,
                    2**64 - 1,
                ]
            ),
            st.integers(0, len(original) + 64),
            st.integers(0, 2**64 - 1),
        ),
        label="header length",
    )
    mutant = struct.pack("<Q", value) + original[8:]
    if data.draw(st.booleans(), label="also cut"):
        mutant = mutant[: data.draw(st.integers(0, len(mutant)), label="cut at")]
    # A shorter length can still describe a valid file: the header loses trailing padding spaces
    # and the data shifts with it (and a cut can make the shifted data fit exactly, so the file
    # is valid with other values). The true property: whatever loads holds what the bytes say,
    # as the reference implementation reads them, and the unchanged file is the original.
    loaded = read_everything(work / "hl.safetensors", mutant)
    if loaded:
        from safetensors.numpy import load as reference_load

        reference = reference_load(mutant)  # raising here: hyperkit accepted what the reference refuses
        for hn in loaded:
            have = dict(hn.tensors())
            assert set(have) == set(reference)
            assert all(bit_equal(have[name], arr) for name, arr in reference.items())
    if mutant == original:
        original_hn = conversion.load(seeds_path(work, "hk.safetensors", original))
        conversion.verify(original_hn, loaded[0], "unchanged file")


def test_safetensors_shorter_header_with_a_matching_cut_is_another_valid_file(seeds, work):
    """Found by `make fuzz`: the header's last padding space left out and the file's last byte
    cut make a valid file whose tensors start one byte earlier; it loads with those values."""
    from safetensors.numpy import load as reference_load

    original = seeds["hk.safetensors"]
    (n,) = struct.unpack("<Q", original[:8])
    assert original[8 + n - 1 : 8 + n] == b" "  # the header ends in padding
    mutant = struct.pack("<Q", n - 1) + original[8:-1]
    (hn,) = read_everything(work / "shifted.safetensors", mutant)
    reference = reference_load(mutant)
    have = dict(hn.tensors())
    assert set(have) == set(reference) and all(bit_equal(have[k], v) for k, v in reference.items())
    assert not all(bit_equal(have[k], v) for k, v in reference_load(original).items())


@fuzz_settings(300)
@given(data=st.data())
def test_safetensors_header_json_mutants(seeds, work, data):
    mutant = data.draw(safetensors_header_mutants(seeds["hk.safetensors"]), label="mutant")
    read_everything(work / "hj.safetensors", mutant, outdir=work)


@pytest.mark.parametrize("seed", ["hk.pt", "torch.pt"])
@fuzz_settings(250)
@given(data=st.data())
def test_pt_zip_structure_damage(seeds, work, seed, data):
    mutant = data.draw(zip_mutants(seeds[seed]), label="mutant")
    read_everything(work / "zip.pt", mutant)


@pytest.mark.parametrize("seed", ["hk.pt", "torch.pt"])
@fuzz_settings(250)
@given(data=st.data())
def test_pt_pickle_mutants_in_intact_zip(seeds, work, seed, data):
    """Damage only ``data.pkl`` (or a storage) and re-zip, so the unpickler itself is fuzzed."""
    members = unzip(seeds[seed])
    targets = [i for i, (name, _) in enumerate(members) if name.endswith("data.pkl") or "/data/" in name]
    idx = data.draw(st.sampled_from(targets), label="member")
    name, payload = members[idx]
    members[idx] = (name, data.draw(byte_mutants(payload), label="payload"))
    read_everything(work / "pkl.pt", rezip(members), outdir=work)


# Values a hand-edited or hostile A1111 dict could carry, all writable by hyperkit's pickle writer.
_nasty_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**100), 2**100),
    st.floats(),
    st.sampled_from(
        [
            1e308,
            -1e308,
            1e30,
            0.5,
            -0.0,
            2**63,
            2**64,
            10**400,
            -(10**400),
            "",
            "4",
            "²",
            "\ud800",
            "relu",
            "RELU",
            "glu",
            "threshold",
            "linear",
        ]
    ),
    st.text(max_size=8),
)
nasty_values = st.recursive(
    _nasty_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-3, 3)), inner, max_size=3),
    ),
    max_leaves=10,
)
_storage_dtypes = [np.dtype(d) for d in ("<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "i1", "u1", "?")] + [
    np.dtype(ml_dtypes.bfloat16)
]


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(_storage_dtypes))
    shape = tuple(draw(st.lists(st.integers(0, 9), max_size=3)))
    return np.zeros(shape, dtype=dtype)


@st.composite
def object_mutants(draw: st.DrawFn) -> dict[Any, Any]:
    """The seed's A1111 dict with 1-4 semantic edits, for hyperkit's writer to archive validly."""
    obj = pt_codec.a1111_object(small_model())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["meta", "structural", "drop", "dim", "dim-value", "state", "odd-key"]))
        str_keys = [k for k in obj if isinstance(k, str)]
        dims = [k for k in obj if isinstance(k, int) and not isinstance(k, bool)]
        if op == "meta":
            obj[draw(st.one_of(st.sampled_from(str_keys), st.text(max_size=6)))] = draw(nasty_values)
        elif op == "structural":
            key = draw(
                st.sampled_from(
                    [
                        "layer_structure",
                        "dropout_structure",
                        "activation_func",
                        "is_layer_norm",
                        "activate_output",
                        "use_dropout",
                        "skip_connection",
                    ]
                )
            )
            obj[key] = draw(
                st.one_of(
                    nasty_values, st.lists(st.one_of(st.sampled_from([0, 1, 1.0, 2, 0.5]), _nasty_scalars), max_size=5)
                )
            )
        elif op == "drop" and obj:
            del obj[draw(st.sampled_from(list(obj)))]
        elif op == "dim":
            pair = tuple(
                collections.OrderedDict(
                    (draw(st.text(max_size=16)), draw(arrays())) for _ in range(draw(st.integers(0, 2)))
                )
                for _ in range(2)
            )
            obj[draw(st.sampled_from([-4, 0, 1, 4, 8, 2**40, 2**100, 10**400]))] = pair
        elif op == "dim-value" and dims:
            dim = draw(st.sampled_from(dims))
            if not (isinstance(obj[dim], tuple) and len(obj[dim]) == 2):
                continue
            k, v = obj[dim]
            obj[dim] = draw(st.sampled_from([[k, v], (k,), (k, v, v), (k, None), {"k": k}, None, (v, k)]))
        elif op == "state" and dims:
            dim = draw(st.sampled_from(dims))
            if not (isinstance(obj[dim], tuple | list) and len(obj[dim]) == 2):
                continue
            state = obj[dim][draw(st.integers(0, 1))]
            if isinstance(state, dict) and state:
                key = draw(st.sampled_from(list(state)))
                what = draw(st.sampled_from(["array", "drop", "rename", "value"]))
                if what == "array":
                    state[key] = draw(arrays())
                elif what == "drop":
                    del state[key]
                elif what == "rename":
                    state[
                        draw(
                            st.one_of(
                                st.text(max_size=16),
                                st.sampled_from(
                                    ["linear.0.linear.1.weight", "linear1.weight", "linear.7.bias", "upsample.weight"]
                                ),
                            )
                        )
                    ] = state.pop(key)
                else:
                    state[key] = draw(nasty_values)
        elif op == "odd-key":
            obj[draw(st.sampled_from([1.5, None, True, (4,), "4", " 8 ", "²", "x"]))] = draw(nasty_values)
    return obj


@fuzz_settings(300)
@given(obj=object_mutants())
def test_pt_object_mutants(work, obj):
    """Edited-but-well-formed archives: reader, structure check, inspect and every writer."""
    buf = io.BytesIO()
    write_torch_zip(buf, obj, "obj")
    read_everything(work / "obj.pt", buf.getvalue(), outdir=work)


@st.composite
def onnx_mutants(draw: st.DrawFn, data: bytes) -> bytes:
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(data)
    props, inits, nodes = model.metadata_props, model.graph.initializer, model.graph.node
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                [
                    "prop-value",
                    "prop-key",
                    "prop-drop",
                    "prop-dup",
                    "init-dims",
                    "init-type",
                    "init-raw",
                    "init-name",
                    "init-float-data",
                    "init-external",
                    "init-dup",
                    "node-drop",
                    "node-op",
                    "node-attr",
                    "graph-name",
                    "opset",
                    "ir",
                ]
            )
        )
        if op.startswith("prop") and props:
            i = draw(st.integers(0, len(props) - 1))
            if op == "prop-value":
                props[i].value = draw(json_texts)
            elif op == "prop-key":
                props[i].key = draw(st.one_of(st.text(max_size=12), st.just("hyperkit.default_name")))
            elif op == "prop-drop":
                del props[i]
            else:
                extra = props.add()
                extra.key, extra.value = props[i].key, draw(json_texts)
        elif op.startswith("init") and inits:
            init = inits[draw(st.integers(0, len(inits) - 1))]
            if op == "init-dims":
                del init.dims[:]
                init.dims.extend(draw(st.lists(st.integers(-2, 40), max_size=3)))
            elif op == "init-type":
                init.data_type = draw(st.integers(0, 25))
            elif op == "init-raw":
                init.raw_data = draw(byte_mutants(bytes(init.raw_data)))
            elif op == "init-name":
                init.name = draw(tensor_names)
            elif op == "init-float-data":
                init.ClearField("raw_data")
                init.float_data.extend(draw(st.lists(st.floats(width=32), max_size=40)))
            elif op == "init-external":
                init.data_location = onnx.TensorProto.EXTERNAL
                entry = init.external_data.add()
                entry.key, entry.value = "location", "../../../../etc/passwd"
            else:
                inits.add().CopyFrom(init)
        elif op.startswith("node") and nodes:
            node = nodes[draw(st.integers(0, len(nodes) - 1))]
            if op == "node-drop":
                nodes.remove(node)
            elif op == "node-op":
                node.op_type = draw(st.sampled_from(["Relu", "Add", "Identity", "Gelu", "NoSuchOp"]))
            elif node.attribute:
                attr = node.attribute[0]
                attr.f, attr.i = draw(st.floats(width=32)), draw(st.integers(-5, 5))
        elif op == "graph-name":
            model.graph.name = draw(st.text(max_size=8))
        elif op == "opset" and model.opset_import:
            model.opset_import[0].version = draw(st.integers(0, 30))
        elif op == "ir":
            model.ir_version = draw(st.integers(0, 20))
    return model.SerializeToString()


@needs_onnx
@fuzz_settings(300)
@given(data=st.data())
def test_onnx_protobuf_mutants(seeds, work, data):
    mutant = data.draw(onnx_mutants(seeds["hk.onnx"]), label="mutant")
    read_everything(work / "pb.onnx", mutant, outdir=work)
