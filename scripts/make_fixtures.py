#!/usr/bin/env python3
"""Generate tiny, deterministic hypernetwork ``.pt`` fixtures with the real ``torch.save``.

Usage::

    .venv/bin/python scripts/make_fixtures.py            # rewrite fixtures/*.pt, MANIFEST.json, README.md
    .venv/bin/python scripts/make_fixtures.py --check    # regenerate into a temp dir, compare with MANIFEST

The files are written by ``torch.save`` itself so they carry torch's own container details
(zip layout with ``.format_version``, ``.storage_alignment``, ``byteorder``, ``version``,
``.data/serialization_id``; ``_metadata`` on every state-dict ``OrderedDict``; storage location tags),
exactly like files written by the trainers they imitate.

Determinism
-----------
* Parameter values are drawn from torch's default generator after ``torch.manual_seed`` (one fixed seed
  per fixture), but only through ``torch.randint``: integer sampling is a serial kernel, whereas
  ``torch.randn`` on the CPU has SIMD (AVX2/AVX-512) code paths whose last bits can depend on the
  machine.  An approximately normal value is the scaled sum of four uniform integers, so every float is
  computed with single, correctly rounded IEEE operations and is the same everywhere.
* The zip writer is already deterministic: entry timestamps are fixed (1980-01-01), entries are stored
  uncompressed in a fixed order, and ``.data/serialization_id`` is not random -- it is derived from the
  record names and the CRC32 of the record contents, so identical content gives an identical id (checked
  empirically with torch 2.14.1 across processes and directories).  The archive's top-level folder is the
  file's stem, which is why ``--check`` regenerates under the same file names.
* The legacy (pre-1.6, ``_use_new_zipfile_serialization=False``) writer is NOT deterministic: it keys
  every storage by ``str(storage._cdata)``, i.e. a C pointer, and writes the storage payloads sorted by
  that key.  After saving, :func:`_canonicalize_legacy` renames the keys to fixed pointer-like numbers in
  order of first appearance in the pickle (so sorted order == appearance order) and reorders the payload
  blocks to match.  Only the key strings, the key list and the payload order change.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import math
import pickle
import pickletools
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = ROOT / "fixtures"
MANIFEST_NAME = "MANIFEST.json"
README_NAME = "README.md"

SD_CHECKPOINT = "a1b2c3d4e5"
SD_CHECKPOINT_NAME = "v1-5-pruned-emaonly"
SD2_CHECKPOINT = "c6d7e8f9a0"
SD2_CHECKPOINT_NAME = "v2-1_768-ema-pruned"

# Activation names as A1111 understands them ("swish" really is Hardswish there).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "prelu": nn.PReLU,
}


# --------------------------------------------------------------------------------------------------
# deterministic values


def _approx_normal(shape: tuple[int, ...], std: float) -> torch.Tensor:
    """Approximately N(0, std**2) float32 values from the seeded torch generator, bit-stable everywhere.

    Irwin-Hall style: the sum of four discrete uniforms on [-2**15, 2**15), scaled to the wanted
    standard deviation (the variance of one such uniform is ((2*2**15)**2 - 1) / 12).
    """
    half = 2**15
    ints = torch.randint(-half, half, (4, *shape), dtype=torch.int64).sum(dim=0)
    scale = std / math.sqrt(4 * ((2 * half) ** 2 - 1) / 12)
    return (ints.to(torch.float64) * scale).to(torch.float32)


def _fill(modules: list[nn.Module], seed: int) -> None:
    """Overwrite every parameter, in a fixed order, with small seeded values.

    Like A1111's "Normal" initialisation the weights get std 0.01; unlike it, biases are small non-zero
    values too (so a swapped or misplaced tensor is caught), and PReLU slopes sit near their 0.25 default
    as they would after training.
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for owner in module.modules():
                for _, param in owner.named_parameters(recurse=False):
                    values = _approx_normal(tuple(param.shape), 0.01)
                    if isinstance(owner, nn.PReLU):
                        values = values + 0.25
                    param.copy_(values)


# --------------------------------------------------------------------------------------------------
# module layouts


class A1111Module(nn.Module):
    """One A1111 hypernetwork module for width ``dim``; its state dict uses ``linear.<idx>.*`` keys."""

    def __init__(
        self,
        dim: int,
        layer_structure: list[float],
        activation_func: str | None,
        is_layer_norm: bool,
        dropout_structure: list[float],
        activate_output: bool,
    ) -> None:
        super().__init__()
        n = len(layer_structure)
        layers: list[nn.Module] = []
        for i in range(n - 1):
            width_in = int(dim * layer_structure[i])
            width_out = int(dim * layer_structure[i + 1])
            layers.append(nn.Linear(width_in, width_out))
            if activation_func is not None and activation_func != "linear" and (i < n - 2 or activate_output):
                layers.append(ACTIVATIONS[activation_func]())
            if is_layer_norm:
                layers.append(nn.LayerNorm(width_out))
            if dropout_structure[i + 1] > 0:
                layers.append(nn.Dropout(p=dropout_structure[i + 1]))
        self.linear = nn.Sequential(*layers)


class NaiModule(nn.Module):
    """The leaked NovelAI layout: two named linears, d -> 2d -> d."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, dim * 2)
        self.linear2 = nn.Linear(dim * 2, dim)


class KohyaModule(nn.Module):
    """kohya ``hypernetwork_nai.py`` style: a Sequential of two linears, d -> 2d -> d."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Sequential(nn.Linear(dim, dim * 2), nn.Linear(dim * 2, dim))


class ResBlock(nn.Module):
    """A residual block as in the MonkeyPatch extension: its own ``linear`` Sequential inside."""

    def __init__(self, width_in: int, width_out: int, activate: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(width_in, width_out)]
        if activate:
            layers.append(nn.ReLU())
        layers.append(nn.LayerNorm(width_out))
        self.linear = nn.Sequential(*layers)


class SkipModule(nn.Module):
    """MonkeyPatch ``skip_connection`` module: ResBlocks nested under ``linear``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Sequential(ResBlock(dim, dim * 2, activate=True), ResBlock(dim * 2, dim, activate=False))


# --------------------------------------------------------------------------------------------------
# fixture builders


@dataclass(frozen=True)
class A1111Spec:
    name: str
    dims: tuple[int, ...]
    layer_structure: tuple[float, ...]
    activation_func: str | None
    is_layer_norm: bool
    dropout_structure: tuple[float, ...]
    use_dropout: bool
    last_layer_dropout: bool
    activate_output: bool
    step: int
    seed: int
    sd_checkpoint: str | None = SD_CHECKPOINT
    sd_checkpoint_name: str | None = SD_CHECKPOINT_NAME
    optional_info: str | None = None
    # metadata keys to leave out, imitating files written by older A1111 versions
    omit: tuple[str, ...] = ()


def _a1111_layers(spec: A1111Spec, dtype: torch.dtype) -> dict[int, tuple[nn.Module, nn.Module]]:
    layers: dict[int, tuple[nn.Module, nn.Module]] = {}
    for dim in spec.dims:
        pair = tuple(
            A1111Module(
                dim,
                list(spec.layer_structure),
                spec.activation_func,
                spec.is_layer_norm,
                list(spec.dropout_structure),
                spec.activate_output,
            )
            for _ in range(2)
        )
        layers[dim] = (pair[0], pair[1])
    _fill([m for pair in layers.values() for m in pair], spec.seed)
    for k_module, v_module in layers.values():
        k_module.to(dtype)
        v_module.to(dtype)
    return layers


def _a1111_object(spec: A1111Spec, dtype: torch.dtype = torch.float32) -> dict[Any, Any]:
    """The dict A1111's ``Hypernetwork.save`` hands to ``torch.save``: dims first, then 13 metadata keys."""
    obj: dict[Any, Any] = {}
    for dim, (k_module, v_module) in _a1111_layers(spec, dtype).items():
        obj[dim] = (k_module.state_dict(), v_module.state_dict())
    metadata: dict[str, Any] = {
        "step": spec.step,
        "name": spec.name,
        "layer_structure": [float(x) for x in spec.layer_structure],
        "activation_func": spec.activation_func,
        "is_layer_norm": spec.is_layer_norm,
        "weight_initialization": "Normal",
        "sd_checkpoint": spec.sd_checkpoint,
        "sd_checkpoint_name": spec.sd_checkpoint_name,
        "activate_output": spec.activate_output,
        "use_dropout": spec.use_dropout,
        "dropout_structure": list(spec.dropout_structure),
        "last_layer_dropout": spec.last_layer_dropout,
        "optional_info": spec.optional_info,
    }
    for key in spec.omit:
        del metadata[key]
    obj.update(metadata)
    return obj


def _default_spec(name: str) -> A1111Spec:
    """Fixture b's settings (j, k and l reuse them, and its seed, so their values equal b's)."""
    return A1111Spec(
        name=name,
        dims=(8, 16),
        layer_structure=(1.0, 2.0, 1.0),
        activation_func="linear",
        is_layer_norm=False,
        dropout_structure=(0, 0, 0),
        use_dropout=False,
        last_layer_dropout=False,
        activate_output=False,
        step=1000,
        seed=1002,
    )


def build_nai_legacy() -> dict[Any, Any]:
    modules = {dim: NaiModule(dim) for dim in (8, 16)}
    _fill(list(modules.values()), 1001)
    obj: dict[Any, Any] = {}
    for dim, module in modules.items():
        sd = module.state_dict()
        obj[dim] = [sd, sd]  # a list holding the very same OrderedDict twice
    return obj


def build_kohya_list() -> dict[Any, Any]:
    modules = {dim: [KohyaModule(dim), KohyaModule(dim)] for dim in (8, 16)}
    _fill([m for pair in modules.values() for m in pair], 1007)
    return {dim: [pair[0].state_dict(), pair[1].state_dict()] for dim, pair in modules.items()}


def build_monkeypatch_skip() -> dict[Any, Any]:
    modules = {dim: (SkipModule(dim), SkipModule(dim)) for dim in (8, 16)}
    _fill([m for pair in modules.values() for m in pair], 1008)
    obj: dict[Any, Any] = {dim: (k.state_dict(), v.state_dict()) for dim, (k, v) in modules.items()}
    obj.update(
        {
            "step": 800,
            "name": "h_monkeypatch_skip",
            "layer_structure": [1.0, 2.0, 1.0],
            "activation_func": "relu",
            "is_layer_norm": True,
            "weight_initialization": "Normal",
            "sd_checkpoint": SD_CHECKPOINT,
            "sd_checkpoint_name": SD_CHECKPOINT_NAME,
            "activate_output": False,
            "use_dropout": False,
            "dropout_structure": [0, 0, 0],
            "last_layer_dropout": False,
            "optional_info": None,
            "skip_connection": True,
            "upsample_linear": None,
        }
    )
    return obj


SPEC_C = A1111Spec(
    name="c_relu_ln_dropout",
    dims=(8, 16),
    layer_structure=(1.0, 2.0, 1.0),
    activation_func="relu",
    is_layer_norm=True,
    dropout_structure=(0.0, 0.3, 0.0),
    use_dropout=True,
    last_layer_dropout=False,
    activate_output=False,
    step=2500,
    seed=1003,
)
SPEC_D = A1111Spec(
    name="d_deep",
    dims=(8, 16),
    layer_structure=(1.0, 2.0, 2.0, 2.0, 2.0, 1.0),
    activation_func="swish",
    is_layer_norm=True,
    dropout_structure=(0.0, 0.1, 0.1, 0.1, 0.1, 0.0),
    use_dropout=True,
    last_layer_dropout=True,
    activate_output=True,
    step=5000,
    seed=1004,
    optional_info="deep fixture: hardswish, layer norm and dropout after every hidden layer",
)
SPEC_E = A1111Spec(
    name="e_prelu",
    dims=(8, 16),
    layer_structure=(1.0, 2.0, 1.0),
    activation_func="prelu",
    is_layer_norm=False,
    dropout_structure=(0, 0, 0),
    use_dropout=False,
    last_layer_dropout=False,
    activate_output=False,
    step=1500,
    seed=1005,
    sd_checkpoint=None,
    sd_checkpoint_name=None,
)
SPEC_F = A1111Spec(
    name="f_none_no_activate_output",
    dims=(8, 16),
    layer_structure=(1.0, 2.0, 1.0),
    activation_func=None,
    is_layer_norm=False,
    dropout_structure=(0, 0, 0),
    use_dropout=False,
    last_layer_dropout=False,
    activate_output=False,
    step=300,
    seed=1006,
    omit=("activate_output", "dropout_structure", "last_layer_dropout", "optional_info"),
)
# 1/128 rather than 1/64: with 1/64 the two fp32 1024-wide module pairs alone are ~270 KB and the file
# would exceed the 300 KB budget.  int(1024/128) = 8 and int(320/128) = int(2.5) = 2, so the
# truncating int() of the hidden width is exercised as well.
SPEC_I = A1111Spec(
    name="i_sd2_1024",
    dims=(1024, 320),
    layer_structure=(1.0, 0.0078125, 1.0),
    activation_func="relu",
    is_layer_norm=False,
    dropout_structure=(0, 0, 0),
    use_dropout=False,
    last_layer_dropout=False,
    activate_output=False,
    step=4000,
    seed=1009,
    sd_checkpoint=SD2_CHECKPOINT,
    sd_checkpoint_name=SD2_CHECKPOINT_NAME,
)


# --------------------------------------------------------------------------------------------------
# saving


_CUDA_TAGGED: set[int] = set()


def _fake_cuda_tag(storage: Any) -> str | None:
    if storage.device.type == "cpu" and storage.data_ptr() in _CUDA_TAGGED:
        return "cuda:0"
    return None


def _fake_cuda_deserialize(storage: Any, location: str) -> None:
    return None  # never claims anything; loading goes through the normal deserializers


# Priority 5 runs before torch's CPU tagger (priority 10).  The tagger is inert unless a storage's
# data pointer was registered by _tag_as_cuda, which only happens while saving j_fp16_cuda.pt.
torch.serialization.register_package(5, _fake_cuda_tag, _fake_cuda_deserialize)


@contextmanager
def _tag_as_cuda(obj: Any) -> Iterator[None]:
    ptrs = {t.untyped_storage().data_ptr() for t in _iter_tensors(obj)}
    _CUDA_TAGGED.update(ptrs)
    try:
        yield
    finally:
        _CUDA_TAGGED.difference_update(ptrs)


def _iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _iter_tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _iter_tensors(value)


_STORAGE_ELEMENT_SIZE = {
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "DoubleStorage": 8,
    "LongStorage": 8,
    "IntStorage": 4,
    "ByteStorage": 1,
}
# Pointer-like replacement keys: all 14 digits, so string order == numeric order.
_LEGACY_KEY_BASE = 0x55D0_0A3F_1000
_LEGACY_KEY_STEP = 0x1000


class _StorageIdCollector(pickle.Unpickler):
    """Walks a legacy torch pickle without building tensors, recording its persistent storage ids."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.ids: list[tuple[str, str, int]] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return _ignore

    def persistent_load(self, pid: Any) -> None:
        # ("storage", storage type, key, location, numel, view metadata)
        self.ids.append((pid[1], pid[2], pid[4]))


def _ignore(*_args: Any, **_kwargs: Any) -> None:
    return None


def _canonicalize_legacy(raw: bytes) -> bytes:
    """Replace the pointer-derived storage keys of a legacy torch file by fixed ones (see module doc)."""
    f = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, sys_info
        pickle.load(f)
    main_start = f.tell()
    collector = _StorageIdCollector(f)
    collector.load()
    main_end = f.tell()
    old_keys = pickle.load(f)
    data_start = f.tell()
    if raw[main_end:data_start] != pickle.dumps(old_keys, protocol=2):
        raise RuntimeError("unexpected encoding of the legacy storage key list")

    appearance: list[str] = []
    info: dict[str, tuple[str, int]] = {}
    for storage_type, key, numel in collector.ids:
        if key not in info:
            appearance.append(key)
            info[key] = (storage_type, numel)
    if sorted(appearance) != list(old_keys):
        raise RuntimeError("legacy storage keys in the pickle do not match the key list")

    blocks: dict[str, bytes] = {}
    pos = data_start
    for key in old_keys:
        storage_type, numel = info[key]
        (stored_numel,) = struct.unpack_from("<q", raw, pos)
        if stored_numel != numel:
            raise RuntimeError(f"legacy storage {key}: header says {stored_numel} elements, pickle {numel}")
        end = pos + 8 + numel * _STORAGE_ELEMENT_SIZE[storage_type]
        blocks[key] = raw[pos:end]
        pos = end
    if pos != len(raw):
        raise RuntimeError("trailing bytes after the legacy storage payloads")

    new_key = {key: str(_LEGACY_KEY_BASE + i * _LEGACY_KEY_STEP) for i, key in enumerate(appearance)}

    # Splice the new key strings into the main pickle (protocol 2 writes them as BINUNICODE).
    pieces: list[bytes] = [raw[:main_start]]
    cursor = main_start
    main = io.BytesIO(raw)
    main.seek(main_start)
    replaced = 0
    for opcode, arg, op_pos in pickletools.genops(main):
        if opcode.name == "BINUNICODE" and arg in new_key:
            assert op_pos is not None
            encoded = new_key[arg].encode("utf-8")
            pieces.append(raw[cursor:op_pos])
            pieces.append(b"X" + struct.pack("<I", len(encoded)) + encoded)
            cursor = op_pos + 1 + 4 + len(arg.encode("utf-8"))
            replaced += 1
        elif isinstance(arg, str) and arg in new_key:
            raise RuntimeError(f"storage key {arg!r} written with unexpected opcode {opcode.name}")
    if replaced < len(new_key):
        raise RuntimeError("not every legacy storage key was found in the pickle")
    pieces.append(raw[cursor:main_end])
    pieces.append(pickle.dumps([new_key[k] for k in appearance], protocol=2))
    pieces.extend(blocks[k] for k in appearance)
    return b"".join(pieces)


def _save(obj: Any, path: Path, *, legacy: bool = False) -> None:
    if legacy:
        torch.save(obj, str(path), _use_new_zipfile_serialization=False)
        path.write_bytes(_canonicalize_legacy(path.read_bytes()))
    else:
        torch.save(obj, str(path))


# --------------------------------------------------------------------------------------------------
# the fixture table


@dataclass(frozen=True)
class Fixture:
    filename: str
    description: str  # one line, for MANIFEST.json
    variant: str  # README columns
    dims: str
    structure: str
    exercises: str
    write: Callable[[Path], None]


def _write_plain(builder: Callable[[], dict[Any, Any]]) -> Callable[[Path], None]:
    return lambda path: _save(builder(), path)


def _write_cuda_fp16(path: Path) -> None:
    obj = _a1111_object(_default_spec("j_fp16_cuda"), torch.float16)
    with _tag_as_cuda(obj):
        _save(obj, path)


FIXTURES: tuple[Fixture, ...] = (
    Fixture(
        "a_nai_legacy.pt",
        "NovelAI leak format: {dim: [sd, sd]} (list, same OrderedDict twice), linear1/linear2 keys, no metadata",
        "NovelAI leak",
        "8, 16",
        "`linear1` d→2d, `linear2` 2d→d; list of the *same* OrderedDict twice",
        "NAI key names, list container, shared (memoised) object, no metadata",
        _write_plain(build_nai_legacy),
    ),
    Fixture(
        "b_a1111_default.pt",
        "A1111 default: [1, 2, 1], linear activation, no layer norm, no dropout, all 13 metadata keys",
        "A1111 (current)",
        "8, 16",
        "[1, 2, 1], `linear`, no LN, dropout [0, 0, 0]",
        "baseline A1111 layout (`linear.0`, `linear.1`), tuple (k, v), 13 metadata keys",
        _write_plain(lambda: _a1111_object(_default_spec("b_a1111_default"))),
    ),
    Fixture(
        "c_relu_ln_dropout.pt",
        "A1111 relu + layer norm + dropout [0, 0.3, 0]: parameter-free members leave index gaps",
        "A1111 (current)",
        "8, 16",
        "[1, 2, 1], `relu`, LN, dropout [0.0, 0.3, 0.0]",
        "index gaps (`linear.0`, `.2`, `.4`, `.5`), LayerNorm tensors, dropout metadata",
        _write_plain(lambda: _a1111_object(SPEC_C)),
    ),
    Fixture(
        "d_deep.pt",
        "A1111 deep [1, 2, 2, 2, 2, 1], swish (Hardswish), layer norm, dropout, activate_output: indices up to 18",
        "A1111 (current)",
        "8, 16",
        "[1, 2, 2, 2, 2, 1], `swish`→Hardswish, LN, dropout [0, .1, .1, .1, .1, 0], activate_output",
        "two-digit indices (numeric, not lexicographic, order), output activation, str optional_info",
        _write_plain(lambda: _a1111_object(SPEC_D)),
    ),
    Fixture(
        "e_prelu.pt",
        "A1111 prelu [1, 2, 1]: a 1-element PReLU weight without bias at linear.1; sd_checkpoint None",
        "A1111 (current)",
        "8, 16",
        "[1, 2, 1], `prelu`, no LN, no dropout",
        "parametrised activation (`linear.1.weight` shape (1,)), None checkpoint fields",
        _write_plain(lambda: _a1111_object(SPEC_E)),
    ),
    Fixture(
        "f_none_no_activate_output.pt",
        "early-2022 A1111 file: activation_func None, no activate_output/dropout_structure/"
        "last_layer_dropout/optional_info keys",
        "A1111 (old)",
        "8, 16",
        "[1, 2, 1], activation None, 9 metadata keys",
        "missing metadata keys and defaults, None activation",
        _write_plain(lambda: _a1111_object(SPEC_F)),
    ),
    Fixture(
        "g_kohya_list.pt",
        "kohya hypernetwork_nai.py style: {dim: [sd_k, sd_v]} (list, two different OrderedDicts), "
        "linear.0/linear.1 keys, no metadata",
        "kohya sd-scripts",
        "8, 16",
        "`linear.0` d→2d, `linear.1` 2d→d, no activation",
        "list container with distinct k/v dicts, adjacent linears, no metadata",
        _write_plain(build_kohya_list),
    ),
    Fixture(
        "h_monkeypatch_skip.pt",
        "Hypernetwork-MonkeyPatch skip_connection file: nested ResBlock keys linear.N.linear.M.*; must be rejected",
        "MonkeyPatch extension",
        "8, 16",
        "ResBlocks: `linear.0.linear.{0,2}`, `linear.1.linear.{0,1}`; `skip_connection: True`",
        "unsupported variant detection (nested keys, extra metadata `skip_connection`, `upsample_linear`)",
        _write_plain(build_monkeypatch_skip),
    ),
    Fixture(
        "i_sd2_1024.pt",
        "SD2-style dims 1024 and 320, [1.0, 0.0078125, 1.0] relu: hidden widths int(1024/128)=8, int(320/128)=2",
        "A1111 (current), SD2",
        "1024, 320",
        "[1, 1/128, 1], `relu`, no LN, no dropout",
        "SD2 widths, dims not in ascending order, fractional multiplier with int() truncation",
        _write_plain(lambda: _a1111_object(SPEC_I)),
    ),
    Fixture(
        "j_fp16_cuda.pt",
        "b's values in fp16 with every storage tagged cuda:0 (saved on a CPU-only machine)",
        "A1111 (current)",
        "8, 16",
        "as b, float16, storage location `cuda:0`",
        "HalfStorage, non-CPU location tags (needs map_location on CPU-only machines)",
        _write_cuda_fp16,
    ),
    Fixture(
        "k_bf16.pt",
        "b's values in bf16",
        "A1111 (current)",
        "8, 16",
        "as b, bfloat16",
        "BFloat16Storage",
        _write_plain(lambda: _a1111_object(_default_spec("k_bf16"), torch.bfloat16)),
    ),
    Fixture(
        "l_legacy_stacked.pt",
        "b's values saved with _use_new_zipfile_serialization=False (pre-1.6 stacked pickles)",
        "A1111 (current), legacy container",
        "8, 16",
        "as b, float32",
        "non-zip legacy format: magic/protocol/sys_info pickles, main pickle, key list, raw payloads",
        lambda path: _save(_a1111_object(_default_spec("l_legacy_stacked")), path, legacy=True),
    ),
)


# --------------------------------------------------------------------------------------------------
# manifest, readme, main


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(out_dir: Path) -> dict[str, Any]:
    """Write every fixture into ``out_dir``; return the manifest describing them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for fixture in FIXTURES:
        path = out_dir / fixture.filename
        fixture.write(path)
        files[fixture.filename] = {
            "sha256": _sha256(path),
            "size": path.stat().st_size,
            "description": fixture.description,
        }
    return {
        "generator": "scripts/make_fixtures.py",
        "torch_version": torch.__version__.split("+")[0],
        "files": files,
    }


def render_readme() -> str:
    lines = [
        "# Hypernetwork fixtures",
        "",
        "Tiny `.pt` files written by the real `torch.save` (torch's own zip layout, `_metadata` on the",
        "state-dict `OrderedDict`s, storage location tags) by `scripts/make_fixtures.py`. Do not edit them",
        "by hand: run `.venv/bin/python scripts/make_fixtures.py` to rewrite them (and `MANIFEST.json`,",
        "which records each file's sha256 and size), and `--check` to verify they are reproducible.",
        "",
        "Dim keys are Python `int`s; A1111-style files map each dim to a `(k, v)` tuple of state dicts",
        "followed by the metadata keys. Parameter values are small seeded numbers (weights and biases",
        "both non-zero, std ≈ 0.01); `j`, `k` and `l` hold the same values as `b`.",
        "",
        "| File | Variant | Dims | Structure | Exercises |",
        "| --- | --- | --- | --- | --- |",
    ]
    for fx in FIXTURES:
        lines.append(f"| `{fx.filename}` | {fx.variant} | {fx.dims} | {fx.structure} | {fx.exercises} |")
    return "\n".join(lines) + "\n"


def _manifest_text(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2) + "\n"


def check(fixtures_dir: Path) -> int:
    """Regenerate into a temporary directory; return 1 if anything differs from the manifest."""
    manifest_path = fixtures_dir / MANIFEST_NAME
    try:
        expected = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot read {manifest_path}: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hyperkit-fixtures-") as tmp:
        generated = generate(Path(tmp))["files"]
    problems: list[str] = []
    for name in sorted(set(expected) | set(generated)):
        if name not in generated:
            problems.append(f"{name}: listed in the manifest but no longer generated")
        elif name not in expected:
            problems.append(f"{name}: generated but missing from the manifest")
        elif generated[name]["sha256"] != expected[name]["sha256"]:
            problems.append(
                f"{name}: regenerated sha256 {generated[name]['sha256']} != manifest {expected[name]['sha256']}"
            )
        else:
            committed = fixtures_dir / name
            if not committed.is_file():
                problems.append(f"{name}: missing from {fixtures_dir}")
            elif _sha256(committed) != expected[name]["sha256"]:
                problems.append(f"{name}: committed file does not match the manifest")
    readme = fixtures_dir / README_NAME
    if not readme.is_file() or readme.read_text(encoding="utf-8") != render_readme():
        problems.append(f"{README_NAME}: out of date")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"ok: {len(generated)} fixtures reproduce the manifest")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare")
    parser.add_argument("--out", type=Path, default=FIXTURES_DIR, help="fixtures directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    manifest = generate(args.out)
    (args.out / MANIFEST_NAME).write_text(_manifest_text(manifest), encoding="utf-8")
    (args.out / README_NAME).write_text(render_readme(), encoding="utf-8")
    for name, entry in manifest["files"].items():
        print(f"{entry['size']:>8}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
