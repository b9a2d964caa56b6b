"""Shared pieces of the fuzz tests: configuration, the reading harness, seed files and byte-level helpers.

The contract the harness enforces (:mod:`hyperkit.errors`: no other exception escapes): a reader either returns a sane
:class:`SDKVHypernetwork` (and then ``conversion.save`` to every format gives a file or a
``HyperkitError``), or raises an instance of :class:`hyperkit.errors.HyperkitError`; and the input
file's bytes are unchanged afterwards. Every reader is each format's ``read``, ``conversion.load`` per
format and ``inspection.inspect_file``.

Seeds are written into a temporary folder: a ``.pt`` written by hyperkit, one written by the real
``torch.save`` of an A1111-shaped dict, a legacy (``_use_new_zipfile_serialization=False``) one,
a ``.safetensors`` and an ONNX file (when ``hyperkit.formats.onnx`` is importable).

A failure prints the reader, the exception and the input as ``zlib``+``base64`` text; rebuild it
with ``zlib.decompress(base64.b64decode(text))``.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from hyperkit import conversion, formats, inspection
from hyperkit.errors import HyperkitError
from hyperkit.formats import pt
from hyperkit.sdkv import structure
from hyperkit.sdkv.model import SDKVHypernetwork

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


def torch_a1111_dict() -> dict[Any, Any]:
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


@pytest.fixture(scope="module", name="seeds")
def seeds_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Valid files, by name (the name's suffix is the file suffix the mutants get)."""
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("seeds")
    hn = small_model()
    pt.write(hn, d / "hk.pt", stem="hk")
    torch.save(torch_a1111_dict(), d / "torch.pt")
    torch.save(torch_a1111_dict(), d / "legacy.pt", _use_new_zipfile_serialization=False)
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


@pytest.fixture(scope="module", name="work")
def work_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for mutants and outputs, reused across tests and hypothesis examples (files are overwritten)."""
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------
# byte-level helpers shared by the mutation, malicious-pickle and crafted-input tests
# ---------------------------------------------------------------------------------------------


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


def unzip(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def rezip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, payload in members:
            zf.writestr(name, payload)
    return buf.getvalue()


def split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: Any, buffer: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + buffer


def binunicode(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def torch_zip(pkl: bytes, stem: str = "evil") -> bytes:
    return rezip([(f"{stem}/data.pkl", pkl), (f"{stem}/byteorder", b"little"), (f"{stem}/version", b"3\n")])
