"""Fuzzing every reader: damaged input must give a model or a ``HyperkitError``, nothing else.

Seeds are written into a temporary folder: a ``.pt`` written by hyperkit, one written by the real
``torch.save`` of an A1111-shaped dict, a legacy (``_use_new_zipfile_serialization=False``) one,
a ``.safetensors`` and an ONNX file (when ``hyperkit.formats.onnx`` is importable). Hypothesis
mutates them — raw byte edits (truncation, flips, insertions, deletions), safetensors header-length
and header-JSON edits, zip central-directory / local-header / end-record damage, edits of the
pickle inside an intact zip, edits of the unpickled object re-written as a valid archive, and ONNX
protobuf edits — and every reader (each format's ``read``, ``conversion.load`` per format and
``inspection.inspect_file``) gets every mutant. A deterministic loop also tries every truncation
length of every seed.

The contract checked (:mod:`hyperkit.errors`: no other exception escapes): a reader either returns a sane
:class:`SDKVHypernetwork` (and then ``conversion.save`` to every format gives a file or a
``HyperkitError``), or raises an instance of :class:`hyperkit.errors.HyperkitError`; the input
file's bytes are unchanged afterwards; and pickles calling ``os.system``, ``posix.system``,
``builtins.eval`` or ``subprocess.Popen`` are refused with an ``UnsafePickleError`` naming the
global, their marker file never appearing.

A failure prints the reader, the exception and the input as ``zlib``+``base64`` text; rebuild it
with ``zlib.decompress(base64.b64decode(text))``.
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import io
import json
import os
import pickle
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperkit import conversion, formats, inspection
from hyperkit.errors import HyperkitError, UnsafePickleError
from hyperkit.formats import pt
from hyperkit.formats.safetensors_io import DTYPES as ST_DTYPES
from hyperkit.formats.safetensors_io import MAX_HEADER
from hyperkit.formats.torchfile import LEGACY_MAGIC, LEGACY_PROTOCOL, write_torch_zip
from hyperkit.sdkv import structure
from hyperkit.sdkv.model import SDKVHypernetwork
from hyperkit.sdkv.strmap import to_string_map

#: Multiplies every max_examples here, for long local runs (``HYPERKIT_FUZZ_SCALE=20 pytest ...``).
SCALE = float(os.environ.get("HYPERKIT_FUZZ_SCALE", "1"))


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def _format_available(name: str) -> bool:
    if importlib.util.find_spec(formats.get(name).module) is None:
        return False
    return name != "onnx" or importlib.util.find_spec("onnx") is not None


FORMATS = [name for name in formats.names() if _format_available(name)]
needs_onnx = pytest.mark.skipif("onnx" not in FORMATS, reason="hyperkit.formats.onnx not available yet")


# ---------------------------------------------------------------------------------------------
# harness
# ---------------------------------------------------------------------------------------------


def blob(data: bytes) -> str:
    """The input in a short, reproducible form: base64 of zlib-compressed bytes."""
    return base64.b64encode(zlib.compress(data, 9)).decode()


def _readers() -> list[tuple[str, Callable[[Path], Any]]]:
    out: list[tuple[str, Callable[[Path], Any]]] = []
    for name in FORMATS:
        out.append((f"formats.{name}.read", formats.get(name).load_module().read))
        out.append((f"conversion.load(format={name!r})", lambda p, n=name: conversion.load(p, format=n)))
    out.append(("inspection.inspect_file", inspection.inspect_file))
    return out


READERS = _readers()


def _sane(hn: SDKVHypernetwork) -> None:
    """What every successfully read model must look like, whatever the input was."""
    assert isinstance(hn, SDKVHypernetwork)
    assert hn.container in ("tuple", "list")
    for dim, pair in hn.modules.items():
        assert type(dim) is int
        assert len(pair) == 2
        for state in pair:
            assert isinstance(state, dict)
            for key, arr in state.items():
                assert isinstance(key, str)
                assert isinstance(arr, np.ndarray)
    assert all(isinstance(k, str) for k in hn.metadata)


def read_everything(path: Path, data: bytes, outdir: Path | None = None) -> list[SDKVHypernetwork]:
    """Write ``data`` to ``path``, feed it to every reader, enforce the error contract.

    With ``outdir``, every model that ``conversion.load`` accepts is also saved in every format.
    """
    path.write_bytes(data)
    loaded = []
    for label, reader in READERS:
        try:
            result = reader(path)
        except HyperkitError:
            continue
        except Exception as e:
            raise AssertionError(
                f"{label} let {type(e).__name__} escape: {e!r:.300}\n"
                f"input ({path.suffix}, {len(data)} bytes): zlib.decompress(base64.b64decode({blob(data)!r}))"
            ) from e
        if label.startswith("inspection"):
            assert isinstance(result, dict)
            continue
        _sane(result)
        if label.startswith("conversion.load"):
            loaded.append(result)
    assert path.read_bytes() == data, "a reader modified its input file"
    if outdir is not None:
        for hn in loaded:
            save_everywhere(hn, outdir, data)
    return loaded


def save_everywhere(hn: SDKVHypernetwork, outdir: Path, data: bytes) -> None:
    for name in FORMATS:
        out = outdir / f"out{formats.get(name).suffixes[0]}"
        try:
            conversion.save(hn, out, force=True)
        except HyperkitError:
            pass
        except Exception as e:
            raise AssertionError(
                f"conversion.save(.., format {name}) of a model read from a mutant let {type(e).__name__} "
                f"escape: {e!r:.300}\ninput: zlib.decompress(base64.b64decode({blob(data)!r}))"
            ) from e
    leftovers = [p.name for p in outdir.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


# ---------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------


def small_model() -> SDKVHypernetwork:
    """A tiny hypernetwork touching many features: PReLU slope, LayerNorm, odd metadata types."""
    meta: dict[str, Any] = {
        "step": 7,
        "name": "seed",
        "layer_structure": [1, 1.0],
        "activation_func": "prelu",
        "is_layer_norm": True,
        "activate_output": True,
        "dropout_structure": [0, 0],
        "optional_info": ("tüple", [1, 2.5, None], {"k": True}),
        "extra": -1.5,
    }
    cfg = structure.resolve_config(meta)
    rng = np.random.default_rng(1)
    shapes = structure.expected_shapes(structure.layout(4, cfg))
    pair = tuple({k: rng.standard_normal(s).astype("f4") for k, s in shapes.items()} for _ in range(2))
    return SDKVHypernetwork(modules={4: (pair[0], pair[1])}, metadata=meta)


def _torch_a1111_dict() -> dict[Any, Any]:
    import torch

    torch.manual_seed(0)
    obj: dict[Any, Any] = {}
    seq = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    obj[4] = tuple(torch.nn.ModuleDict({"linear": seq}).state_dict() for _ in range(2))
    obj.update(
        step=1,
        name="torchseed",
        layer_structure=[1.0, 1.0],
        activation_func="relu",
        is_layer_norm=True,
        weight_initialization="Normal",
        sd_checkpoint=None,
        sd_checkpoint_name=None,
        activate_output=False,
        use_dropout=False,
        dropout_structure=[0, 0],
        last_layer_dropout=False,
        optional_info=None,
    )
    return obj


class Seeds(dict[str, bytes]):
    """The seed files' bytes by name; a short repr keeps hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"<seeds {', '.join(f'{k}: {len(v)} B' for k, v in self.items())}>"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Valid files, by name (the name's suffix is the file suffix the mutants get)."""
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("seeds")
    hn = small_model()
    pt.write(hn, d / "hk.pt", stem="hk")
    torch.save(_torch_a1111_dict(), d / "torch.pt")
    torch.save(_torch_a1111_dict(), d / "legacy.pt", _use_new_zipfile_serialization=False)
    formats.get("safetensors").load_module().write(hn, d / "hk.safetensors", stem="hk")
    names = ["hk.pt", "torch.pt", "legacy.pt", "hk.safetensors"]
    if "onnx" in FORMATS:
        formats.get("onnx").load_module().write(hn, d / "hk.onnx", stem="hk")
        names.append("hk.onnx")
    out = Seeds((name, (d / name).read_bytes()) for name in names)
    for name in names:  # every seed is valid to begin with
        assert conversion.load(d / name) is not None
    return out


SEED_NAMES = ["hk.pt", "torch.pt", "legacy.pt", "hk.safetensors", pytest.param("hk.onnx", marks=needs_onnx)]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for mutants and outputs, reused across tests and hypothesis examples (files are overwritten)."""
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------
# mutation strategies
# ---------------------------------------------------------------------------------------------

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


@st.composite
def byte_mutants(draw: st.DrawFn, data: bytes) -> bytes:
    """1-4 raw edits: truncate, flip, set, insert, delete, overwrite, duplicate a chunk."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete", "overwrite", "duplicate"]))
        n = len(buf)
        pos = draw(st.integers(0, n))
        if op == "truncate":
            del buf[pos:]
        elif op == "flip" and n:
            buf[min(pos, n - 1)] ^= draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128, 255]))
        elif op == "set" and n:
            buf[min(pos, n - 1)] = draw(st.one_of(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]), st.integers(0, 255)))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 64))]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            buf[pos : pos + len(chunk)] = chunk
        elif op == "duplicate" and n:
            start = draw(st.integers(0, n - 1))
            buf[pos:pos] = buf[start : start + draw(st.integers(1, 64))]
    return bytes(buf)


def zip_layout(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """End-of-central-directory offset and, per member, (central entry offset, local header offset)."""
    eocd = data.rfind(b"PK\x05\x06")
    assert eocd >= 0
    (cd_off,) = struct.unpack("<I", data[eocd + 16 : eocd + 20])
    entries, pos = [], cd_off
    while data[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack("<HHH", data[pos + 28 : pos + 34])
        (local,) = struct.unpack("<I", data[pos + 42 : pos + 46])
        entries.append((pos, local))
        pos += 46 + n + m + k
    assert entries
    return eocd, entries


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


def unzip(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def rezip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, payload in members:
            zf.writestr(name, payload)
    return buf.getvalue()


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


def _split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join_safetensors(header: Any, buffer: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + buffer


@st.composite
def safetensors_header_mutants(draw: st.DrawFn, data: bytes) -> bytes:
    """Edit the header JSON (tensor entries, hyperkit metadata) and re-encode it consistently."""
    header, buffer = _split_safetensors(data)
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
    return _join_safetensors(header, buffer)


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
    assert not read_everything(work / "hl.safetensors", mutant) or value == n


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
    obj = pt.a1111_object(small_model())
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


# ---------------------------------------------------------------------------------------------
# malicious pickles: refused, named, never run
# ---------------------------------------------------------------------------------------------

#: (module as written in the pickle, name, the global hyperkit must name)
EVIL_TARGETS = [
    ("os", "system", "os.system"),
    ("posix", "system", "posix.system"),
    ("builtins", "eval", "builtins.eval"),
    ("__builtin__", "eval", "builtins.eval"),  # protocol-2 spelling, mapped like pickle does
    ("subprocess", "Popen", "subprocess.Popen"),
]
STYLES = ["p2-GLOBAL", "p4-STACK_GLOBAL", "p4-FRAME-memo", "p0-INST", "p1-OBJ", "p2-nested-in-dict"]


def _binunicode(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _short(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _evil_arg(module: str, marker: Path) -> tuple[bytes, Any]:
    """Opcodes pushing the one argument, and its value."""
    if module == "subprocess":
        return b"](" + _binunicode("touch") + _binunicode(str(marker)) + b"e", ["touch", str(marker)]
    if module in ("builtins", "__builtin__"):
        code = f"open({str(marker)!r}, 'w').close()"
        return _binunicode(code), code
    return _binunicode(f"touch {marker}"), f"touch {marker}"


def evil_pickle(module: str, name: str, style: str, marker: Path) -> tuple[bytes, tuple[Any, ...]]:
    """A hand-assembled pickle calling ``module.name(arg)``; returns it and the call's args."""
    arg, value = _evil_arg(module, marker)
    glob = b"c" + f"{module}\n{name}\n".encode()
    if style == "p2-GLOBAL":
        pkl = b"\x80\x02" + glob + arg + b"\x85R."
    elif style == "p4-STACK_GLOBAL":
        pkl = b"\x80\x04" + _short(module) + _short(name) + b"\x93" + arg + b"\x85R."
    elif style == "p4-FRAME-memo":
        body = _short(module) + b"\x94" + b"0" + _short(name) + b"\x94" + b"0" + b"h\x00h\x01\x93" + arg + b"\x85R\x94."
        pkl = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
    elif style == "p0-INST":
        pkl = b"(" + arg + b"i" + f"{module}\n{name}\n".encode() + b"."
    elif style == "p1-OBJ":
        pkl = b"(" + glob + arg + b"o."
    elif style == "p2-nested-in-dict":
        pkl = b"\x80\x02}(" + _binunicode("step") + b"K\x05" + _binunicode("optional_info") + glob + arg + b"\x85Ru."
    else:
        raise AssertionError(style)
    return pkl, (value,)


def torch_zip(pkl: bytes, stem: str = "evil") -> bytes:
    return rezip([(f"{stem}/data.pkl", pkl), (f"{stem}/byteorder", b"little"), (f"{stem}/version", b"3\n")])


def legacy_file(main: bytes) -> bytes:
    sys_info = {
        "protocol_version": LEGACY_PROTOCOL,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    return (
        pickle.dumps(LEGACY_MAGIC, protocol=2)
        + pickle.dumps(LEGACY_PROTOCOL, protocol=2)
        + pickle.dumps(sys_info, protocol=2)
        + main
        + pickle.dumps([], protocol=2)
    )


class _Recorder(pickle.Unpickler):
    """Resolves every global to a recording stub: shows what the pickle *would* call."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []

    def find_class(self, module: str, name: str) -> Any:
        def stub(*args: Any) -> str:
            self.calls.append((module, name, args))
            return "stub"

        return stub


class _Evil:
    """Pickles (via the real pickle module) as a call to ``fn(*args)``."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


@pytest.fixture(scope="module")
def evil_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evil")


def evil_cases(marker: Path) -> list[tuple[str, bytes, str]]:
    """(label, file bytes, global to be named) for every target x style x container."""
    cases = []
    for module, name, named in EVIL_TARGETS:
        for style in STYLES:
            pkl, _ = evil_pickle(module, name, style, marker)
            cases.append((f"zip/{style}/{module}.{name}", torch_zip(pkl), named))
            cases.append((f"legacy-main/{style}/{module}.{name}", legacy_file(pkl), named))
            if pkl[:1] == b"\x80":
                cases.append((f"bare/{style}/{module}.{name}", pkl, named))
    return cases


@pytest.mark.parametrize("target", EVIL_TARGETS, ids=lambda t: f"{t[0]}.{t[1]}")
@pytest.mark.parametrize("style", STYLES)
def test_evil_payloads_are_live(tmp_path, target, style):
    """Guard against a vacuous test: each payload *would* call its global with the marker command."""
    module, name, _ = target
    marker = tmp_path / "PWNED"
    pkl, args = evil_pickle(module, name, style, marker)
    rec = _Recorder(pkl)
    rec.load()
    assert rec.calls == [(module, name, args)]
    assert str(marker) in repr(args)
    assert not marker.exists()


def _evil_ids() -> list[str]:
    return [label for label, _, _ in evil_cases(Path("/m"))]


@pytest.mark.parametrize("label", _evil_ids())
def test_evil_pickles_are_refused_and_never_run(evil_dir, label):
    marker = evil_dir / f"PWNED-{label.replace('/', '_')}"
    _, data, named = next(c for c in evil_cases(marker) if c[0] == label)
    src = evil_dir / f"{label.replace('/', '_')}.pt"
    src.write_bytes(data)
    pt_readers = [pt.read, lambda p: conversion.load(p, format="pt"), conversion.load, inspection.inspect_file]
    for reader in pt_readers:
        with pytest.raises(UnsafePickleError) as info:
            reader(src)
        assert f"'{named}'" in str(info.value), str(info.value)
        assert not marker.exists(), "the pickle's payload ran"
    out = evil_dir / f"{label.replace('/', '_')}.safetensors"
    with pytest.raises(UnsafePickleError):
        conversion.convert(src, out)
    assert not out.exists()
    read_everything(src, data)  # the other formats' readers refuse it cleanly too
    assert src.read_bytes() == data
    assert not marker.exists(), "the pickle's payload ran"


def test_evil_pickles_written_by_real_torch_save(evil_dir):
    """The same attack as users meet it: a callable inside a torch.save'd A1111 dict."""
    torch = pytest.importorskip("torch")
    marker = evil_dir / "PWNED-torch"
    payloads = [
        (os.system, f"touch {marker}", "posix.system"),
        (eval, f"open({str(marker)!r}, 'w').close()", "builtins.eval"),
        (subprocess.Popen, ["touch", str(marker)], "subprocess.Popen"),
    ]
    for i, (fn, arg, named) in enumerate(payloads):
        obj = _torch_a1111_dict()
        obj["optional_info"] = _Evil(fn, arg)
        for zip_format in (True, False):
            src = evil_dir / f"torch-evil-{i}-{zip_format}.pt"
            torch.save(obj, src, _use_new_zipfile_serialization=zip_format)
            data = src.read_bytes()
            for reader in (pt.read, conversion.load, inspection.inspect_file):
                with pytest.raises(UnsafePickleError, match=f"'{named}'"):
                    reader(src)
            read_everything(src, data)
    assert not marker.exists(), "the pickle's payload ran"


@fuzz_settings(250)
@given(data=st.data())
def test_mutated_evil_pickles_never_run(evil_dir, data):
    marker = evil_dir / "PWNED-fuzz"
    cases = evil_cases(marker)
    label, original, _ = data.draw(st.sampled_from(cases), label="case")
    mutant = data.draw(byte_mutants(original), label="mutant")
    read_everything(evil_dir / "fuzz-evil.pt", mutant)
    assert not marker.exists(), f"the payload of a mutant of {label} ran"


# ---------------------------------------------------------------------------------------------
# crafted inputs: each made a reader or writer raise a non-hyperkit error when this file was written
# ---------------------------------------------------------------------------------------------


def _tiny(metadata: dict[str, Any] | None = None, dim: int = 4) -> SDKVHypernetwork:
    rng = np.random.default_rng(0)
    shapes = structure.expected_shapes(structure.layout(dim, structure.resolve_config({})))
    pair = tuple({k: rng.standard_normal(s).astype("f4") for k, s in shapes.items()} for _ in range(2))
    return SDKVHypernetwork(modules={dim: (pair[0], pair[1])}, metadata=dict(metadata or {}))


def _safetensors_bytes(tensors: list[tuple[str, np.ndarray]], meta: dict[str, str]) -> bytes:
    """A safetensors file built by hand (ASCII-escaped JSON, so lone surrogates can be written)."""
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name, arr in tensors:
        header[name] = {
            "dtype": {v: k for k, v in ST_DTYPES.items()}[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    return _join_safetensors(header, b"".join(arr.tobytes() for _, arr in tensors))


def _st_with(meta_edits: dict[str, str] | None = None, tensors: list[tuple[str, np.ndarray]] | None = None) -> bytes:
    """A hyperkit .safetensors of a tiny model (``name``, ``step``) with string-map entries or tensors replaced."""
    hn = _tiny({"name": "x", "step": 1})
    meta = {**to_string_map(hn), **(meta_edits or {})}
    return _safetensors_bytes(tensors if tensors is not None else list(hn.tensors()), meta)


def _raw_safetensors(header: dict[str, Any], buffer: bytes = b"") -> bytes:
    return _join_safetensors(header, buffer)


def _zip_with_cd_field(seed: bytes, member_suffix: str, off: int, size: int, value: int) -> bytes:
    buf = bytearray(seed)
    _, entries = zip_layout(seed)
    for cd, _ in entries:
        (n,) = struct.unpack("<H", seed[cd + 28 : cd + 30])
        if seed[cd + 46 : cd + 46 + n].decode().endswith(member_suffix):
            buf[cd + off : cd + off + size] = value.to_bytes(size, "little")
    return bytes(buf)


def _deep_list_pt(depth: int) -> bytes:
    """An A1111 archive whose optional_info is a list nested ``depth`` deep (pickle builds it iteratively)."""
    obj = pt.a1111_object(_tiny())
    arrays: list[np.ndarray] = []
    from hyperkit.formats.pickle_writer import PickleWriter

    marker = "\x00DEEP\x00"
    obj["optional_info"] = marker
    pkl = PickleWriter(arrays).dumps(obj)
    text = _binunicode(marker)
    assert pkl.count(text) == 1
    pkl = pkl.replace(text, b"]" * depth + b"a" * (depth - 1))
    buf = io.BytesIO()
    from hyperkit.formats.torchfile import _write_zip

    _write_zip(buf, "deep", pkl, arrays)
    return buf.getvalue()


def _long4(value: int) -> bytes:
    n = (value.bit_length() + 8) // 8
    return b"\x8b" + struct.pack("<i", n) + value.to_bytes(n, "little", signed=True)


def _pickle_in_zip(pkl: bytes) -> bytes:
    return torch_zip(pkl, stem="crafted")


def _pt_bytes(hn: SDKVHypernetwork) -> bytes:
    buf = io.BytesIO()
    write_torch_zip(buf, pt.a1111_object(hn), "c")
    return buf.getvalue()


def _crafted_readers() -> dict[str, Callable[[dict[str, bytes]], tuple[str, bytes]]]:
    """name -> (suffix, bytes) builders for inputs that once made a reader raise a non-hyperkit error."""
    return {
        "zip-cd-method-deflate": lambda s: (".pt", _zip_with_cd_field(s["hk.pt"], "data.pkl", 10, 2, 8)),
        "zip-cd-method-unknown": lambda s: (".pt", _zip_with_cd_field(s["hk.pt"], "data.pkl", 10, 2, 99)),
        "zip-cd-method-shrink": lambda s: (".pt", _zip_with_cd_field(s["hk.pt"], "data.pkl", 10, 2, 1)),
        "zip-cd-encrypted-deflate": lambda s: (
            ".pt",
            _zip_with_cd_field(_zip_with_cd_field(s["hk.pt"], "data.pkl", 8, 2, 1), "data.pkl", 10, 2, 8),
        ),
        "zip-cd-byteorder-deflate": lambda s: (".pt", _zip_with_cd_field(s["torch.pt"], "byteorder", 10, 2, 8)),
        "pt-deeply-nested-metadata": lambda s: (".pt", _deep_list_pt(50_000)),
        "pt-layer-structure-1e308": lambda s: (".pt", _pt_bytes(_tiny({"layer_structure": [1, 1e308, 1]}))),
        "pt-layer-structure-10**400": lambda s: (".pt", _pt_bytes(_tiny({"layer_structure": [1, 10**400, 1]}))),
        "pt-dropout-structure-10**400": lambda s: (".pt", _pt_bytes(_tiny({"dropout_structure": [0, 10**400, 0]}))),
        "pt-activation-func-list": lambda s: (".pt", _pt_bytes(_tiny({"activation_func": ["relu"]}))),
        "st-header-deep-json": lambda s: (".safetensors", struct.pack("<Q", 5000) + b"[" * 5000),
        "st-shape-0-by-2**70": lambda s: (
            ".safetensors",
            _raw_safetensors({"a": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}),
        ),
        "st-shape-too-big-for-numpy": lambda s: (
            ".safetensors",
            _raw_safetensors({"a": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}),
        ),
        "st-metadata-deep-json": lambda s: (".safetensors", _st_with({"hyperkit.name": "[" * 5000})),
        "st-metadata-dict-with-list-key": lambda s: (
            ".safetensors",
            _st_with({"hyperkit.name": '{"$dict": [[[1], 2]]}'}),
        ),
        "st-tensor-name-superscript-dim": lambda s: (
            ".safetensors",
            _st_with(tensors=[("².k.linear.0.weight", np.ones(1, "f4"))]),
        ),
        "st-dtype-is-a-list": lambda s: (
            ".safetensors",
            _raw_safetensors({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
        ),
        "st-shape-true": lambda s: (
            ".safetensors",
            _raw_safetensors({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)),
        ),
        "zip-cd-version-needed-ffff": lambda s: (".pt", _zip_with_cd_field(s["hk.pt"], "data.pkl", 6, 2, 0xFFFF)),
        "pt-dim-key-with-5000-digits": lambda s: (".pt", _pickle_in_zip(b"\x80\x02}" + _long4(10**5000) + b"Ns.")),
    }


CRAFTED = _crafted_readers()


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_inputs_raise_only_hyperkit_errors(seeds, work, case):
    suffix, data = CRAFTED[case](seeds)
    read_everything(work / f"crafted{suffix}", data)


@needs_onnx
@pytest.mark.parametrize(
    "edit",
    ["superscript-dim", "dict-with-list-key", "deep-json", "initializer-name-not-utf8", "graph-name-not-utf8"],
)
def test_crafted_onnx_inputs_raise_only_hyperkit_errors(seeds, work, edit):
    import onnx

    if edit.endswith("not-utf8"):
        # protobuf hands proto2 string fields that are not UTF-8 back as bytes
        old = b"B\x114.k.linear.0.bias" if edit.startswith("initializer") else b"\x12\x02hk*"
        new = b"B\x11\xff.k.linear.0.bias" if edit.startswith("initializer") else b"\x12\x02h\xff*"
        assert seeds["hk.onnx"].count(old) == 1
        read_everything(work / "crafted.onnx", seeds["hk.onnx"].replace(old, new))
        return
    model = onnx.ModelProto()
    model.ParseFromString(seeds["hk.onnx"])
    if edit == "superscript-dim":
        model.graph.initializer[0].name = "²" + model.graph.initializer[0].name[1:]
    else:
        prop = next(p for p in model.metadata_props if p.key == "hyperkit.name")
        prop.value = '{"$dict": [[[1], 2]]}' if edit == "dict-with-list-key" else "[" * 5000
    read_everything(work / "crafted.onnx", model.SerializeToString())


def test_safetensors_names_aliasing_one_tensor_are_refused(work):
    """``04.k.x`` and ``4.k.x`` name the same tensor; reading must refuse, not keep whichever came last."""
    hn = _tiny({"name": "x"})
    tensors = [*hn.tensors(), ("04.k.linear.0.weight", np.full((8, 4), 7, "f4"))]
    path = work / "alias.safetensors"
    path.write_bytes(_safetensors_bytes(tensors, to_string_map(hn)))
    with pytest.raises(HyperkitError):
        conversion.load(path)


def _surrogate_key_safetensors() -> bytes:
    """A hyperkit .safetensors whose metadata has a key with a lone surrogate (legal escaped JSON)."""
    hn = _tiny({"kx": 1})
    meta = to_string_map(hn)
    meta["hyperkit.k\ud800"] = meta.pop("hyperkit.kx")
    meta["hyperkit.key_order"] = json.dumps([4, "k\ud800"])
    return _safetensors_bytes(list(hn.tensors()), meta)


CRAFTED_CONVERSIONS: dict[str, tuple[str, Callable[[], bytes], str]] = {
    # a lone surrogate survives pickle (surrogatepass) and escaped JSON, not UTF-8 in a header/protobuf
    "surrogate-key-pt-to-safetensors": (".pt", lambda: _pt_bytes(_tiny({"k\ud800": 1})), ".safetensors"),
    "surrogate-key-pt-to-onnx": (".pt", lambda: _pt_bytes(_tiny({"k\ud800": 1})), ".onnx"),
    "surrogate-key-safetensors-to-safetensors": (".safetensors", _surrogate_key_safetensors, ".safetensors"),
    # JSON carries any int; the .pt writer's LONG1 opcode only 255 bytes of one
    "int-past-255-bytes-safetensors-to-pt": (".safetensors", lambda: _st_with({"hyperkit.step": str(2**3000)}), ".pt"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_CONVERSIONS))
def test_crafted_conversions_raise_only_hyperkit_errors(tmp_path, case):
    """Inputs that read fine but whose conversion raised a non-hyperkit error."""
    src_suffix, build, dst_suffix = CRAFTED_CONVERSIONS[case]
    if dst_suffix == ".onnx" and "onnx" not in FORMATS:
        pytest.skip("no ONNX format")
    src = tmp_path / f"src{src_suffix}"
    data = build()
    src.write_bytes(data)
    loaded = conversion.load(src)
    try:
        conversion.convert(src, tmp_path / f"out{dst_suffix}")
    except HyperkitError:
        pass
    except Exception as e:
        raise AssertionError(f"convert {src_suffix} -> {dst_suffix} let {type(e).__name__} escape: {e!r:.200}") from e
    outdir = tmp_path / "out"
    outdir.mkdir()
    save_everywhere(loaded, outdir, data)
