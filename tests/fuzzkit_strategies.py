"""Hypothesis strategies that damage zip archives and safetensors headers, and the JSON/name values they use."""

from __future__ import annotations

import json

from fuzzkit import byte_mutants, join_safetensors, split_safetensors, zip_layout
from hypothesis import strategies as st

from hyperkit.formats.safetensors_io import DTYPES as ST_DTYPES

INTERESTING = (
    0,
    1,
    2,
    7,
    8,
    30,
    46,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x10000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    2**63 - 1,
    2**63,
    2**64 - 1,
)


def _field_value(draw: st.DrawFn, size: int, current: int, total: int) -> int:
    top = 2 ** (8 * size) - 1
    value = draw(
        st.one_of(
            st.sampled_from([v for v in INTERESTING if v <= top]),
            st.sampled_from([current - 1, current + 1, current ^ 1, total, total - 1, total + 1]),
            st.integers(0, top),
        )
    )
    return min(max(value, 0), top)


#: (offset, size) of the numeric fields of a central directory entry, a local header, the end record.
CD_FIELDS = [
    (4, 2),
    (6, 2),
    (8, 2),
    (10, 2),
    (12, 2),
    (14, 2),
    (16, 4),
    (20, 4),
    (24, 4),
    (28, 2),
    (30, 2),
    (32, 2),
    (34, 2),
    (36, 2),
    (38, 4),
    (42, 4),
]
LOCAL_FIELDS = [(4, 2), (6, 2), (8, 2), (10, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]
EOCD_FIELDS = [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]


@st.composite
def zip_mutants(draw: st.DrawFn, data: bytes) -> bytes:
    """Damage 1-3 fields of the central directory, a local header or the end record."""
    eocd, entries = zip_layout(data)
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["cd", "cd", "cd", "local", "eocd", "cut-cd"]))
        if where == "cut-cd":
            cd_start = entries[0][0]
            del buf[draw(st.integers(cd_start, len(buf) - 1)) :]
            break
        if where == "eocd":
            base, (off, size) = eocd, draw(st.sampled_from(EOCD_FIELDS))
        else:
            cd, local = draw(st.sampled_from(entries))
            base = cd if where == "cd" else local
            off, size = draw(st.sampled_from(CD_FIELDS if where == "cd" else LOCAL_FIELDS))
        at = base + off
        if at + size > len(buf):
            continue
        current = int.from_bytes(buf[at : at + size], "little")
        buf[at : at + size] = _field_value(draw, size, current, len(buf)).to_bytes(size, "little")
    return bytes(buf)


# JSON text for metadata values: valid encodings (with $tuple/$dict tags) and nasty ones.
_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
        st.lists(inner, max_size=3).map(lambda v: {"$tuple": v}),
        st.lists(st.lists(inner, min_size=2, max_size=2), max_size=2).map(lambda v: {"$dict": v}),
    ),
    max_leaves=8,
)
NASTY_JSON = (
    "[" * 5000,
    "[" * 5000 + "]" * 5000,
    "1" * 5000,
    '{"$dict": [[[1], 2]]}',
    '{"$dict": [[{"$dict": []}, 1]]}',
    '{"$tuple": 1}',
    '{"$dict": [[1]]}',
    "NaN",
    "-Infinity",
    "1e999",
    "",
    "nul",
    '"\\ud800"',
    "[1, 1e308, 1]",
    "[1, 1e400, 1]",
    "[1, " + "9" * 400 + ", 1]",
    "[1, -1, 1]",
    "[0, 1]",
    "[1]",
    "[]",
)
json_texts = st.one_of(json_values.map(json.dumps), st.sampled_from(NASTY_JSON), st.text(max_size=12))
tensor_names = st.one_of(
    st.sampled_from(
        [
            "4.k.linear.0.weight",
            "4.v.linear.0.bias",
            "².k.linear.0.weight",
            "٤.k.linear.0.weight",
            "04.k.linear.0.weight",
            "4.q.linear.0.weight",
            "4.k.",
            "4",
            "",
            "-4.k.linear.0.weight",
            "4.k.linear.0.linear.1.weight",
            "4.k.linear1.weight",
            "8.k.linear.0.weight",
            "strength",
            "4.k.linear.9.weight",
            " 4.k.linear.0.weight",
            "4.k.upsample.weight",
        ]
    ),
    st.text(max_size=12),
)
nasty_ints = st.one_of(st.sampled_from([-1, 0, 1, 2, 3, 4, 7, 2**31, 2**63, 2**64, 2**70, 10**400]), st.integers())
json_shapes = st.one_of(
    st.lists(nasty_ints, max_size=4),
    st.sampled_from([[True], [1.0], [None], "4", {}, None, [[4]], [0, 2**70], [0, 2**62, 2**62]]),
)


@st.composite
def safetensors_header_mutants(draw: st.DrawFn, data: bytes) -> bytes:
    """Edit the header JSON (tensor entries, hyperkit metadata) and re-encode it consistently."""
    header, buffer = split_safetensors(data)
    meta = header.setdefault("__metadata__", {})
    names = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                [
                    "dtype",
                    "shape",
                    "offsets",
                    "rename",
                    "drop",
                    "entry",
                    "extra-field",
                    "meta-value",
                    "meta-field",
                    "key_order",
                    "container",
                    "meta-drop",
                    "meta-type",
                    "buffer",
                ]
            )
        )
        name = draw(st.sampled_from(names))
        entry = header.get(name)
        if op in ("dtype", "shape", "offsets", "extra-field") and not isinstance(entry, dict):
            continue
        if op == "dtype":
            header[name]["dtype"] = draw(
                st.one_of(st.sampled_from([*ST_DTYPES, "F8_E4M3", "f32", "C64"]), st.sampled_from([None, 1, ["F32"]]))
            )
        elif op == "shape":
            header[name]["shape"] = draw(json_shapes)
        elif op == "offsets":
            offsets = header[name].get("data_offsets")
            begin, end = offsets if isinstance(offsets, list) and len(offsets) == 2 else (0, 0)
            header[name]["data_offsets"] = draw(
                st.one_of(
                    st.sampled_from(
                        [
                            [end, begin],
                            [begin, end + 4],
                            [begin - 4, end],
                            [begin],
                            [begin, end, end],
                            [begin, 2**64],
                            [-8, end],
                            [0.0, end],
                            None,
                            "0",
                        ]
                    ),
                    st.lists(nasty_ints, max_size=3),
                )
            )
        elif op == "rename" and name in header:
            header[draw(tensor_names)] = header.pop(name)
        elif op == "drop" and name in header:
            del header[name]
        elif op == "entry" and name in header:
            header[name] = draw(json_values)
        elif op == "extra-field":
            header[name][draw(st.text(max_size=6))] = draw(json_values)
        elif op == "meta-value" and meta:
            meta[draw(st.sampled_from(sorted(meta)))] = draw(json_texts)
        elif op == "meta-field":
            field = draw(
                st.one_of(
                    st.sampled_from(
                        [
                            "activation_func",
                            "layer_structure",
                            "skip_connection",
                            "family",
                            "default_name",
                            "dropout_structure",
                            "k\ud800",
                        ]
                    ),
                    st.text(max_size=8),
                )
            )
            try:
                order = json.loads(meta.get("hyperkit.key_order", "[]"))
            except (ValueError, TypeError, RecursionError):  # mutated earlier in this example
                order = None
            if isinstance(order, list):
                order.append(field)
                meta["hyperkit.key_order"] = json.dumps(order)
            meta["hyperkit." + field] = draw(json_texts)
        elif op == "key_order":
            meta["hyperkit.key_order"] = draw(
                st.one_of(
                    json_texts,
                    st.sampled_from(
                        [
                            '[4, "name", 4]',
                            "[true]",
                            "[4, 8]",
                            "[1e400]",
                            "[" + "9" * 400 + "]",
                            '[4, "step", "step"]',
                            '["4"]',
                            "[-4]",
                        ]
                    ),
                )
            )
        elif op == "container":
            meta["hyperkit.container"] = draw(st.sampled_from(["list", "tuple", "dict", "", "List"]))
        elif op == "meta-drop" and meta:
            del meta[draw(st.sampled_from(sorted(meta)))]
        elif op == "meta-type":
            header["__metadata__"] = meta = draw(st.one_of(json_values, st.just({"k": 1})))
            if not isinstance(meta, dict):
                meta = {}
        elif op == "buffer":
            buffer = draw(byte_mutants(buffer))
    return join_safetensors(header, buffer)
