#!/usr/bin/env python3
"""Generate tiny, deterministic hypernetwork ``.pt`` fixtures with the real ``torch.save``.

Usage::

    .venv/bin/python scripts/make_fixtures.py            # rewrite fixtures/*.pt, MANIFEST.json, README.md
    .venv/bin/python scripts/make_fixtures.py --check    # regenerate into a temp dir, compare with MANIFEST

Each fixture is one :class:`Spec` row of :data:`FIXTURES`, which :func:`build` turns into the object
handed to ``torch.save`` itself, so the files carry torch's own container details (zip layout with
``.format_version``, ``.storage_alignment``, ``byteorder``, ``version``, ``.data/serialization_id``;
``_metadata`` on every state-dict ``OrderedDict``; storage location tags), exactly like files written by
the trainers they imitate.

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
import hashlib
import io
import json
import math
import pickle
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST_NAME = "MANIFEST.json"
README_NAME = "README.md"

SD15 = ("a1b2c3d4e5", "v1-5-pruned-emaonly")  # (sd_checkpoint, sd_checkpoint_name) metadata values
SD21 = ("c6d7e8f9a0", "v2-1_768-ema-pruned")

# The activations the table uses, by A1111's names ("swish" really is Hardswish); "linear"/None add no layer.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "swish": nn.Hardswish, "prelu": nn.PReLU}


@dataclass(frozen=True)
class Spec:
    """One fixture; the network defaults are fixture b's settings."""

    name: str  # file stem and ``name`` metadata value
    seed: int  # j, k and l reuse b's seed, so their values equal b's
    step: int | None  # None: no metadata keys at all (NovelAI, kohya)
    variant: str  # README columns; "Dims" comes from ``dims``
    structure: str
    exercises: str
    description: str  # one line, for MANIFEST.json
    layout: Literal["a1111", "nai", "skip"] = "a1111"  # see _module; "nai", "skip" have fixed layers
    dims: tuple[int, ...] = (8, 16)
    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation: str | None = "linear"
    layer_norm: bool = False
    dropout: tuple[float, ...] = (0, 0, 0)  # ints where A1111 wrote ints: the pickle keeps the type
    activate_output: bool = False
    checkpoint: tuple[str | None, str | None] = SD15
    drop: tuple[str, ...] = ()  # metadata keys left out, imitating files written by older A1111 versions
    meta: dict[str, Any] = field(default_factory=dict)  # metadata values replaced or appended
    dtype: torch.dtype = torch.float32
    container: Literal["tuple", "list", "shared"] = "tuple"  # (k, v), [k, v] or [sd, sd] (one object twice)
    legacy: bool = False  # pre-1.6 stacked-pickle format instead of zip
    cuda: bool = False  # tag every storage cuda:0


# One row per fixture: name, seed, step, then the README columns Variant, Structure and Exercises, then the
# MANIFEST.json description, then whatever differs from b.  Hand-aligned, so the formatter leaves it alone.
# fmt: off
FIXTURES: tuple[Spec, ...] = (
    Spec("a_nai_legacy", 1001, None, "NovelAI leak",
         "`linear1` d→2d, `linear2` 2d→d; list of the *same* OrderedDict twice",
         "NAI key names, list container, shared (memoised) object, no metadata",
         "NovelAI leak format: {dim: [sd, sd]} (list, same OrderedDict twice), linear1/linear2 keys, no metadata",
         layout="nai", container="shared"),
    Spec("b_a1111_default", 1002, 1000, "A1111 (current)", "[1, 2, 1], `linear`, no LN, dropout [0, 0, 0]",
         "baseline A1111 layout (`linear.0`, `linear.1`), tuple (k, v), 13 metadata keys",
         "A1111 default: [1, 2, 1], linear activation, no layer norm, no dropout, all 13 metadata keys"),
    Spec("c_relu_ln_dropout", 1003, 2500, "A1111 (current)", "[1, 2, 1], `relu`, LN, dropout [0.0, 0.3, 0.0]",
         "index gaps (`linear.0`, `.2`, `.4`, `.5`), LayerNorm tensors, dropout metadata",
         "A1111 relu + layer norm + dropout [0, 0.3, 0]: parameter-free members leave index gaps",
         activation="relu", layer_norm=True, dropout=(0.0, 0.3, 0.0)),
    Spec("d_deep", 1004, 5000, "A1111 (current)",
         "[1, 2, 2, 2, 2, 1], `swish`→Hardswish, LN, dropout [0, .1, .1, .1, .1, 0], activate_output",
         "two-digit indices (numeric, not lexicographic, order), output activation, str optional_info",
         "A1111 deep [1, 2, 2, 2, 2, 1], swish (Hardswish), layer norm, dropout, activate_output: indices up to 18",
         layer_structure=(1.0, 2.0, 2.0, 2.0, 2.0, 1.0), activation="swish", layer_norm=True,
         dropout=(0.0, 0.1, 0.1, 0.1, 0.1, 0.0), activate_output=True, meta={"last_layer_dropout": True,
         "optional_info": "deep fixture: hardswish, layer norm and dropout after every hidden layer"}),
    Spec("e_prelu", 1005, 1500, "A1111 (current)", "[1, 2, 1], `prelu`, no LN, no dropout",
         "parametrised activation (`linear.1.weight` shape (1,)), None checkpoint fields",
         "A1111 prelu [1, 2, 1]: a 1-element PReLU weight without bias at linear.1; sd_checkpoint None",
         activation="prelu", checkpoint=(None, None)),
    Spec("f_none_no_activate_output", 1006, 300, "A1111 (old)", "[1, 2, 1], activation None, 9 metadata keys",
         "missing metadata keys and defaults, None activation",
         "early-2022 A1111 file: activation_func None, no activate_output/dropout_structure/"
         "last_layer_dropout/optional_info keys",
         activation=None, drop=("activate_output", "dropout_structure", "last_layer_dropout", "optional_info")),
    # kohya's Sequential of two linears (d -> 2d -> d) has exactly the keys of A1111's [1, 2, 1] "linear"
    Spec("g_kohya_list", 1007, None, "kohya sd-scripts", "`linear.0` d→2d, `linear.1` 2d→d, no activation",
         "list container with distinct k/v dicts, adjacent linears, no metadata",
         "kohya hypernetwork_nai.py style: {dim: [sd_k, sd_v]} (list, two different OrderedDicts), "
         "linear.0/linear.1 keys, no metadata", container="list"),
    Spec("h_monkeypatch_skip", 1008, 800, "MonkeyPatch extension",
         "ResBlocks: `linear.0.linear.{0,2}`, `linear.1.linear.{0,1}`; `skip_connection: True`",
         "unsupported variant detection (nested keys, extra metadata `skip_connection`, `upsample_linear`)",
         "Hypernetwork-MonkeyPatch skip_connection file: nested ResBlock keys linear.N.linear.M.*; must be rejected",
         layout="skip", activation="relu", layer_norm=True, meta={"skip_connection": True, "upsample_linear": None}),
    # 1/128, not 1/64: at 1/64 the two fp32 1024-wide module pairs alone are ~270 KB, over the 300 KB file
    # budget.  int(1024/128) = 8 and int(320/128) = int(2.5) = 2 exercise the truncating int() as well.
    Spec("i_sd2_1024", 1009, 4000, "A1111 (current), SD2", "[1, 1/128, 1], `relu`, no LN, no dropout",
         "SD2 widths, dims not in ascending order, fractional multiplier with int() truncation",
         "SD2-style dims 1024 and 320, [1.0, 0.0078125, 1.0] relu: hidden widths int(1024/128)=8, int(320/128)=2",
         dims=(1024, 320), layer_structure=(1.0, 0.0078125, 1.0), activation="relu", checkpoint=SD21),
    Spec("j_fp16_cuda", 1002, 1000, "A1111 (current)", "as b, float16, storage location `cuda:0`",
         "HalfStorage, non-CPU location tags (needs map_location on CPU-only machines)",
         "b's values in fp16 with every storage tagged cuda:0 (saved on a CPU-only machine)",
         dtype=torch.float16, cuda=True),
    Spec("k_bf16", 1002, 1000, "A1111 (current)", "as b, bfloat16", "BFloat16Storage", "b's values in bf16",
         dtype=torch.bfloat16),
    Spec("l_legacy_stacked", 1002, 1000, "A1111 (current), legacy container", "as b, float32",
         "non-zip legacy format: magic/protocol/sys_info pickles, main pickle, key list, raw payloads",
         "b's values saved with _use_new_zipfile_serialization=False (pre-1.6 stacked pickles)", legacy=True),
)
# fmt: on


# ---- building ------------------------------------------------------------------------------------


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
        for owner in (owner for module in modules for owner in module.modules()):
            for param in owner.parameters(recurse=False):
                values = _approx_normal(tuple(param.shape), 0.01)
                param.copy_(values + 0.25 if isinstance(owner, nn.PReLU) else values)


def _module(spec: Spec, dim: int) -> nn.Module:
    """One k or v module of width ``dim`` in the row's layout.

    State-dict keys and their ``_metadata`` depend only on child names and module types, so ModuleDicts
    stand in for each trainer's own wrapper classes.
    """
    if spec.layout == "nai":  # the leaked NovelAI layout: two named linears, d -> 2d -> d
        return nn.ModuleDict({"linear1": nn.Linear(dim, 2 * dim), "linear2": nn.Linear(2 * dim, dim)})
    if spec.layout == "skip":  # MonkeyPatch skip_connection: ResBlocks, each with its own ``linear`` Sequential
        first = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.LayerNorm(2 * dim))
        second = nn.Sequential(nn.Linear(2 * dim, dim), nn.LayerNorm(dim))
        return nn.ModuleDict({"linear": nn.Sequential(*(nn.ModuleDict({"linear": b}) for b in (first, second)))})
    # A1111's HypernetworkModule: ``linear`` is a Sequential, so parameter-free members leave index gaps
    widths = [int(dim * factor) for factor in spec.layer_structure]  # int() truncates, as A1111's does
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if spec.activation not in (None, "linear") and (i < len(widths) - 2 or spec.activate_output):
            layers.append(ACTIVATIONS[spec.activation]())
        if spec.layer_norm:
            layers.append(nn.LayerNorm(widths[i + 1]))
        if spec.dropout[i + 1] > 0:
            layers.append(nn.Dropout(p=spec.dropout[i + 1]))
    return nn.ModuleDict({"linear": nn.Sequential(*layers)})


def _metadata(spec: Spec) -> dict[str, Any]:
    """The 13 keys A1111's ``Hypernetwork.save`` writes after the dims, in its order, edited by the row."""
    metadata: dict[str, Any] = {
        "step": spec.step,
        "name": spec.name,
        "layer_structure": [float(x) for x in spec.layer_structure],
        "activation_func": spec.activation,
        "is_layer_norm": spec.layer_norm,
        "weight_initialization": "Normal",
        "sd_checkpoint": spec.checkpoint[0],
        "sd_checkpoint_name": spec.checkpoint[1],
        "activate_output": spec.activate_output,
        "use_dropout": any(p > 0 for p in spec.dropout),  # A1111 stores the option; for these rows it agrees
        "dropout_structure": list(spec.dropout),
        "last_layer_dropout": False,
        "optional_info": None,
    }
    metadata.update(spec.meta)
    for key in spec.drop:
        del metadata[key]
    return metadata


def build(spec: Spec) -> dict[Any, Any]:
    """The object handed to ``torch.save``: ``{dim: k/v state dicts}`` for every dim, then any metadata."""
    per_dim = 1 if spec.container == "shared" else 2
    modules = {dim: [_module(spec, dim) for _ in range(per_dim)] for dim in spec.dims}
    _fill([module for pair in modules.values() for module in pair], spec.seed)  # one seed; dims, then k, v
    obj: dict[Any, Any] = {}
    for dim, pair in modules.items():
        sds = [module.to(spec.dtype).state_dict() for module in pair]
        if spec.container == "shared":
            sds *= 2  # the very same OrderedDict twice, which the pickle memoises
        obj[dim] = tuple(sds) if spec.container == "tuple" else sds
    return {**obj, **_metadata(spec)} if spec.step is not None else obj


# ---- saving --------------------------------------------------------------------------------------

_CUDA_TAGGED: set[int] = set()  # data pointers of the storages of the ``cuda=True`` row being saved


def _fake_cuda_tag(storage: Any) -> str | None:
    return "cuda:0" if storage.device.type == "cpu" and storage.data_ptr() in _CUDA_TAGGED else None


# Priority 5 runs before torch's CPU tagger (priority 10).  The tagger is inert unless a storage's data
# pointer is in _CUDA_TAGGED, which only happens while :func:`write` saves a ``cuda=True`` row.  Its
# deserializer never claims anything, so loading goes through the normal ones.
torch.serialization.register_package(5, _fake_cuda_tag, lambda storage, location: None)

# Pointer-like replacement keys: all 14 digits, so string order == numeric order.
_LEGACY_KEY_BASE = 0x55D0_0A3F_1000
_LEGACY_KEY_STEP = 0x1000


def _binunicode(text: str) -> bytes:  # how pickle protocol 2 writes a str
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _canonicalize_legacy(raw: bytes, storages: list[torch.UntypedStorage]) -> bytes:
    """Replace the pointer-derived storage keys of a legacy torch file by fixed ones (see module doc).

    ``storages`` are the saved object's storages in pickling order.  The file is: three small pickles, the
    main pickle, the pickled key list, then per storage in key order an int64 element count and the payload.
    """
    sizes = {str(storage._cdata): 8 + storage.nbytes() for storage in storages}  # torch's keys, in appearance order
    old_list = pickle.dumps(sorted(sizes), protocol=2)
    f = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, sys_info
        pickle.load(f)
    main_start, main_end = f.tell(), len(raw) - len(old_list) - sum(sizes.values())
    if raw[main_end : main_end + len(old_list)] != old_list:
        raise RuntimeError("unexpected legacy storage key list or payload sizes")
    blocks: dict[str, bytes] = {}
    pos = main_end + len(old_list)
    for key in sorted(sizes):
        blocks[key], pos = raw[pos : pos + sizes[key]], pos + sizes[key]
    main = raw[main_start:main_end]
    new_keys = [str(_LEGACY_KEY_BASE + i * _LEGACY_KEY_STEP) for i in range(len(sizes))]
    for old, new in zip(sizes, new_keys, strict=True):
        if main.count(_binunicode(old)) != 1:
            raise RuntimeError(f"storage key {old!r} is not in the main pickle exactly once")
        main = main.replace(_binunicode(old), _binunicode(new))
    return raw[:main_start] + main + pickle.dumps(new_keys, protocol=2) + b"".join(blocks[key] for key in sizes)


def write(spec: Spec, path: Path) -> None:
    obj = build(spec)
    storages = [t.untyped_storage() for dim in spec.dims for sd in obj[dim] for t in sd.values()]
    if spec.cuda:
        _CUDA_TAGGED.update(storage.data_ptr() for storage in storages)
    try:
        torch.save(obj, str(path), _use_new_zipfile_serialization=not spec.legacy)
    finally:
        _CUDA_TAGGED.clear()
    if spec.legacy:
        path.write_bytes(_canonicalize_legacy(path.read_bytes(), storages))


# ---- manifest, readme, main ----------------------------------------------------------------------

README_HEAD = """\
# Hypernetwork fixtures

Subfolders hold the fixtures of the other features, each made by its own deterministic script
with a `MANIFEST.json` of checksums (`--check` verifies them; `make fixtures` rewrites all):
`bake/` (a tiny diffusers UNet and its ONNX export, `scripts/make_bake_fixtures.py`), `eval/`
(a tiny CLIP and 64×64 images with a manifest, `scripts/make_eval_fixtures.py`) and `generator/`
(tiny weight-generating hypernetworks, `scripts/make_generator_fixtures.py`). The rest of this
page is about the sd-kv `.pt` files at the top level.

Tiny `.pt` files written by the real `torch.save` (torch's own zip layout, `_metadata` on the
state-dict `OrderedDict`s, storage location tags) by `scripts/make_fixtures.py`. Do not edit them
by hand: run `.venv/bin/python scripts/make_fixtures.py` to rewrite them (and `MANIFEST.json`,
which records each file's sha256 and size), and `--check` to verify they are reproducible.

Dim keys are Python `int`s; A1111-style files map each dim to a `(k, v)` tuple of state dicts
followed by the metadata keys. Parameter values are small seeded numbers (weights and biases
both non-zero, std ≈ 0.01); `j`, `k` and `l` hold the same values as `b`.

| File | Variant | Dims | Structure | Exercises |
| --- | --- | --- | --- | --- |
"""
README_ROW = "| `{0.name}.pt` | {0.variant} | {1} | {0.structure} | {0.exercises} |\n"


def render_readme() -> str:
    return README_HEAD + "".join(README_ROW.format(s, ", ".join(map(str, s.dims))) for s in FIXTURES)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(out_dir: Path) -> dict[str, Any]:
    """Write every fixture into ``out_dir``; return the manifest describing them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for spec in FIXTURES:
        write(spec, path := out_dir / f"{spec.name}.pt")
        files[path.name] = {"sha256": _sha256(path), "size": path.stat().st_size, "description": spec.description}
    return {"generator": "scripts/make_fixtures.py", "torch_version": torch.__version__.split("+")[0], "files": files}


def check(fixtures_dir: Path) -> int:
    """Regenerate into a temporary directory; return 1 if anything differs from the manifest."""
    manifest_path = fixtures_dir / MANIFEST_NAME
    try:
        expected = {n: e["sha256"] for n, e in json.loads(manifest_path.read_text(encoding="utf-8"))["files"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot read {manifest_path}: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hyperkit-fixtures-") as tmp:
        generated = {n: e["sha256"] for n, e in generate(Path(tmp))["files"].items()}
    committed = {n: _sha256(fixtures_dir / n) for n in expected if (fixtures_dir / n).is_file()}
    problems = [
        f"{n}: manifest sha256 {expected.get(n)}, regenerated {generated.get(n)}, committed {committed.get(n)}"
        for n in sorted(expected.keys() | generated.keys())
        if not expected.get(n) == generated.get(n) == committed.get(n)
    ]
    readme = fixtures_dir / README_NAME
    if not readme.is_file() or readme.read_text(encoding="utf-8") != render_readme():
        problems.append(f"{README_NAME}: out of date")
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"ok: {len(generated)} fixtures reproduce the manifest")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare")
    parser.add_argument("--out", type=Path, default=FIXTURES_DIR, help="fixtures directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    manifest = generate(args.out)
    (args.out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (args.out / README_NAME).write_text(render_readme(), encoding="utf-8")
    for name, entry in manifest["files"].items():
        print(f"{entry['size']:>8}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
