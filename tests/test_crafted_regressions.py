"""Crafted regression inputs: each made a reader or writer raise a non-hyperkit error when it was written."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fuzzkit import (
    FORMATS,
    binunicode,
    join_safetensors,
    needs_onnx,
    read_everything,
    save_everywhere,
    seeds_fixture,  # noqa: F401  (the `seeds` fixture)
    torch_zip,
    work_fixture,  # noqa: F401  (the `work` fixture)
    zip_layout,
)

from hyperkit import conversion
from hyperkit.errors import BadInputError, HyperkitError
from hyperkit.formats.safetensors_io import DTYPES as ST_DTYPES
from hyperkit.formats.torchfile import write_torch_zip
from hyperkit.sdkv import pt_codec, structure
from hyperkit.sdkv.model import SDKVHypernetwork
from hyperkit.sdkv.strmap import to_string_map

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
            "dtype": {v: k for k, v in ST_DTYPES.items()}[arr.dtype.name],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    return join_safetensors(header, b"".join(arr.tobytes() for _, arr in tensors))


def _st_with(meta_edits: dict[str, str] | None = None, tensors: list[tuple[str, np.ndarray]] | None = None) -> bytes:
    """A hyperkit .safetensors of a tiny model (``name``, ``step``) with string-map entries or tensors replaced."""
    hn = _tiny({"name": "x", "step": 1})
    meta = {**to_string_map(hn), **(meta_edits or {})}
    return _safetensors_bytes(tensors if tensors is not None else list(hn.tensors()), meta)


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
    obj = pt_codec.a1111_object(_tiny())
    arrays: list[np.ndarray] = []
    from hyperkit.formats.pickle_writer import PickleWriter

    marker = "\x00DEEP\x00"
    obj["optional_info"] = marker
    pkl = PickleWriter(arrays).dumps(obj)
    text = binunicode(marker)
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
    write_torch_zip(buf, pt_codec.a1111_object(hn), "c")
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
            join_safetensors({"a": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}),
        ),
        "st-shape-too-big-for-numpy": lambda s: (
            ".safetensors",
            join_safetensors({"a": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}),
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
            join_safetensors({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
        ),
        "st-shape-true": lambda s: (
            ".safetensors",
            join_safetensors({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)),
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


#: Cases the readers now refuse (exit 3) because no other format could store what they hold.
REFUSED_AT_READ = {
    "surrogate-key-pt-to-safetensors": r"metadata key: text 'k\\ud800' is not valid Unicode",
    "surrogate-key-pt-to-onnx": r"metadata key: text 'k\\ud800' is not valid Unicode",
    "surrogate-key-safetensors-to-safetensors": r"not valid Unicode \(lone surrogate\)",
    "int-past-255-bytes-safetensors-to-pt": "integer of 3001 bits exceeds the limit of 256 bits",
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
    if case in REFUSED_AT_READ:  # since the metadata limits, these never reach a writer
        with pytest.raises(BadInputError, match=REFUSED_AT_READ[case]):
            conversion.load(src)
        return
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
