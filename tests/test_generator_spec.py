"""The generator spec: precise errors for every kind of bad document, limits, the JSON Schema, fuzzing."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from fuzzkit import fuzz_settings
from generatorkit import grid
from hypothesis import given
from hypothesis import strategies as st

import hyperkit.generator as generator_pkg
from hyperkit.errors import HyperkitError, LimitExceeded
from hyperkit.generator.examples import conv_document, mlp_document
from hyperkit.generator.spec import SpecError, parse_spec


def _with(doc: dict, path: str, value: object) -> dict:
    """``doc`` with the field at ``path`` (dots, [i]) replaced, or deleted when value is ...."""
    doc = copy.deepcopy(doc)
    parts = path.replace("[", ".").replace("]", "").split(".")
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("condition", ..., "spec field 'condition' is missing"),
        ("hyperkit_spec", "generator/9", "spec field 'hyperkit_spec' must be \"generator/0\""),
        ("condition.kind", "noise", "spec field 'condition.kind' must be one of task_id, continuous"),
        ("condition.num", 0, "spec field 'condition.num' must be in 1.."),
        ("condition.dim", True, "spec field 'condition.dim' must be an integer, got true"),
        ("hypernet.type", "rnn", "spec field 'hypernet.type' must be one of mlp, chunked_mlp"),
        ("hypernet.activation", "swish", "spec field 'hypernet.activation' must be one of relu"),
        ("hypernet.chunk", ..., "spec field 'hypernet.chunk' is missing"),
        ("hypernet.chunk.input_order", ["condition"], "spec field 'hypernet.chunk.input_order' must be"),
        ("hypernet.extra", 1, "spec field 'hypernet.extra' is not part of generator/0 (unknown field)"),
        ("target.layers[1].op", "softmax", "spec field 'target.layers[1].op' must be one of linear, conv2d"),
        (
            "target.layers[3].in",
            47,
            "spec field 'target.layers[3].in': expected 48 (the last dimension of [48]), got 47",
        ),
        ("target.layers[0].in", 3, "spec field 'target.layers[0].in': expected 2 (the channels of [2, 4, 4]), got 3"),
        ("target.layers[0].kernel", 9, "kernel 9 does not fit the input [2, 4, 4]"),
        ("target.layers[4].shape", [4], "spec field 'target.layers[4].shape': expected [5]"),
        ("target.layers[3].name", "c0", "'c0' is used by an earlier layer"),
        ("target.layers[3].name", "fc.x", "must be an identifier"),
        ("slots[2].param", "fc.gamma", "spec field 'slots[2].param': \"fc.gamma\" is not a target parameter"),
        ("slots[3].param", "fc.weight", "spec field 'slots[3].param': 'fc.weight' has a slot already"),
        ("slots[2].rank", 6, "spec field 'slots[2].rank' must be in 1..5, got 6"),
        ("slots[2].mode", "scale", "spec field 'slots[2].mode' must be one of full, delta, lora, static"),
        ("slots[5]", ..., "spec field 'slots' has no entry for target parameter 'ln.bias'"),
        ("slots[2].alpha", "4", "spec field 'slots[2].alpha' must be a finite number"),
    ],
)
def test_bad_spec_is_one_precise_error(path, value, message):
    with pytest.raises(SpecError) as info:
        parse_spec(json.dumps(_with(conv_document(), path, value)), "g.safetensors")
    assert info.value.message.startswith("g.safetensors: ")
    assert message in info.value.message
    assert info.value.exit_code == 3


def test_lora_of_a_vector_and_all_static_are_refused():
    doc = _with(mlp_document(), "slots[1]", {"param": "fc0.bias", "mode": "lora", "rank": 1, "alpha": 1.0})
    with pytest.raises(SpecError, match="lora needs a matrix or kernel"):
        parse_spec(doc)
    doc = mlp_document(mode="static")
    with pytest.raises(SpecError, match="generates nothing"):
        parse_spec(doc)


@pytest.mark.parametrize("text", ['{"a": 1, "a": 2}', "[1]", '{"x": NaN}', "{", '"x"'])
def test_malformed_json(text):
    with pytest.raises(SpecError):
        parse_spec(text, "g")


def test_sizes_are_bounded_before_anything_is_allocated():
    huge = _with(mlp_document(), "target.layers[0].out", 1 << 24)
    huge = _with(huge, "target.layers[2].in", 1 << 24)
    with pytest.raises(LimitExceeded, match="over the limit"):
        parse_spec(huge)
    with pytest.raises(LimitExceeded, match=r"must be in 1\.\.16777216"):
        parse_spec(_with(mlp_document(), "condition.num", 1 << 40))
    with pytest.raises(LimitExceeded, match="exceeds the 1048576-byte limit"):
        parse_spec(" " * (1 << 21))


def test_chunk_count_follows_total_and_the_tail_is_cut():
    spec = parse_spec(conv_document())
    assert spec.total == 54 + 3 + (2 * 48 + 5 * 2) + 5
    assert spec.chunk_count == -(-spec.total // 32)
    assert spec.tensor_shapes()["hnet.chunk_emb"] == (spec.chunk_count, 4)


@pytest.mark.parametrize(("name", "doc"), grid(), ids=[g[0] for g in grid()])
def test_schema_accepts_every_example(name, doc):
    jsonschema.validate(doc, generator_pkg.schema())
    parse_spec(doc)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("condition.kind", "noise"),
        ("hypernet.extra", 1),
        ("target.layers[1].op", "softmax"),
        ("slots[2].mode", "scale"),
        ("hypernet.chunk", ...),
        ("condition.num", 0),
    ],
)
def test_schema_and_parser_agree_on_refusals(path, value):
    doc = _with(conv_document(), path, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, generator_pkg.schema())
    with pytest.raises(SpecError):
        parse_spec(doc)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_PATHS = [
    "condition",
    "condition.kind",
    "condition.num",
    "condition.dim",
    "hypernet.type",
    "hypernet.hidden",
    "hypernet.hidden[0]",
    "hypernet.chunk.size",
    "hypernet.chunk",
    "target.input",
    "target.input[0]",
    "target.layers[0]",
    "target.layers[0].kernel",
    "target.layers[3].out",
    "target.layers[4].eps",
    "slots",
    "slots[0]",
    "slots[2].rank",
    "slots[2].alpha",
    "slots[4].mode",
]


@fuzz_settings(300)
@given(mutations=st.lists(st.tuples(st.sampled_from(_PATHS), _JSON | st.just(...)), min_size=1, max_size=3))
def test_fuzzed_documents_parse_or_raise_a_hyperkit_error(mutations):
    doc = conv_document()
    for path, value in mutations:
        try:
            doc = _with(doc, path, value)
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    try:
        spec = parse_spec(json.dumps(doc), "fuzz")
    except HyperkitError as e:
        message = e.message
        assert message.startswith("fuzz: ")
        return
    assert spec.total > 0 and all(s.param for s in spec.slots)
    jsonschema.validate(doc, generator_pkg.schema())  # what the parser takes, the schema takes


@fuzz_settings(200)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_fuzzed_text_never_escapes(text):
    with pytest.raises(HyperkitError):
        parse_spec(text, "fuzz")
