"""``hyperkit inspect``: what a checkpoint is and which tools can load it, without running it.

The report is a plain JSON-ready dict (the CLI renders it as a table or ``--json``). The file is
read by its content (:func:`hyperkit.identify.sniff`), not its suffix. A hypernetwork gets the
loader verdicts, which model the real loaders' rules from the reference notes and their source:
A1111's zip-name and global allowlist check plus its strict ``load_state_dict``; ComfyUI's
``weights_only`` load and its builder (replayed by :mod:`hyperkit.sdkv.comfyui`, compared with
A1111's network); ``torch.load(weights_only=True)``'s opcodes and global allowlist. Anything else
(LoRA, embedding, model checkpoint) is described by :mod:`hyperkit.identify`.

Example:
    >>> from hyperkit.demo import fixture_path
    >>> report = inspect_file(fixture_path("b_a1111_default.pt"))
    >>> report["family"], report["dims"], report["verdicts"]["comfyui"]
    ('sd-kv', [8, 16], {'loads': True, 'same_as_a1111': True, 'reason': ''})
"""

from __future__ import annotations

import _compat_pickle
import os
import re
from pathlib import Path
from typing import Any

from hyperkit import families, formats, identify
from hyperkit.conversion import nonfinite_tensors, read_any
from hyperkit.errors import CorruptFileError, HyperkitError
from hyperkit.formats.torchfile import TorchFile
from hyperkit.paths import check_input, sha256_file
from hyperkit.sdkv import comfyui, structure
from hyperkit.sdkv.model import SDKVHypernetwork

#: Zip member names A1111 1.10's ``check_zip_filenames`` accepts (older versions: no byteorder).
A1111_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl)|byteorder|(\.data/serialization_id))$")
#: Globals A1111's RestrictedUnpickler allows (those a weights file can contain).
A1111_GLOBALS = {
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage",
    "torch.HalfStorage",
    "torch.IntStorage",
    "torch.LongStorage",
    "torch.DoubleStorage",
    "torch.ByteStorage",
    "torch.BFloat16Storage",
    "_codecs.encode",
    "numpy.core.multiarray.scalar",
    "numpy.dtype",
}

#: The opcodes ``Unpickler.load`` in torch's ``_weights_only_unpickler.py`` implements (torch
#: 2.10-2.14); any other raises "Unsupported operand". Protocol 2, torch.save's default, needs no more.
WEIGHTS_ONLY_OPCODES: frozenset[str] = frozenset(
    {
        *("PROTO", "STOP", "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "BINPERSID", "MARK"),
        *("APPEND", "APPENDS", "SETITEM", "SETITEMS", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"),
        *("NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"),
        *("BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING"),
        *("BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT"),
    }
)
_ELEMENTS = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
_DTYPES = (
    *("bfloat16", "bool", "complex32", "complex64", "complex128", "float16", "float32", "float64"),
    *("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2"),
    *("bcomplex32", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2", "qint8", "qint32", "quint8"),
    *("quint2x4", "quint4x2", *(f"{s}int{n}" for s in ("", "u") for n in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64))),
)
_REBUILDS = (
    *("tensor", "tensor_v2", "tensor_v3", "parameter", "parameter_with_state", "qtensor", "sparse_tensor"),
    *("meta_tensor_no_storage", "nested_tensor", "wrapper_subclass", "device_tensor_from_numpy"),
    "device_tensor_from_cpu_tensor",
)
#: The names ``_get_allowed_globals()`` in torch's ``_weights_only_unpickler.py`` allows (torch 2.14),
#: after its Python 2 name mapping; every other global raises "Unsupported global".
WEIGHTS_ONLY_GLOBALS: frozenset[str] = frozenset(
    {
        *("collections.OrderedDict", "collections.Counter", "_codecs.encode"),
        *("builtins.set", "builtins.bytearray", "builtins.complex"),
        *("torch.nn.parameter.Parameter", "torch.Size", "torch.Tensor", "torch.device"),
        *("torch.serialization._get_layout", "torch._tensor._rebuild_from_type_v2"),
        *("torch.storage.TypedStorage", "torch.storage.UntypedStorage"),
        *(f"torch.{p}{e}Storage" for p in ("", "cuda.") for e in (*_ELEMENTS, "ComplexFloat", "ComplexDouble")),
        *(f"torch.{e}Storage" for e in ("QInt8", "QInt32", "QUInt8", "QUInt2x4", "QUInt4x2")),
        *(f"torch.{p}{e}Tensor" for p in ("", "cuda.") for e in _ELEMENTS),
        *(f"torch.{p}sparse.{e}Tensor" for p in ("", "cuda.") for e in _ELEMENTS if e != "Bool"),
        *(f"torch.per_{q}" for q in ("tensor_affine", "tensor_symmetric", "channel_affine", "channel_symmetric")),
        "torch.per_channel_affine_float_qparams",
        *(f"torch.{d}" for d in _DTYPES),
        *(f"torch._utils._rebuild_{r}" for r in _REBUILDS),
    }
)
#: Opcodes that only pickle protocols >= 4 write (torch.save(..., pickle_protocol=4) and up).
_PROTOCOL_4 = frozenset({"FRAME", "MEMOIZE", "STACK_GLOBAL", "SHORT_BINUNICODE", "BINUNICODE8", "NEWOBJ_EX"})
#: Suffixes ComfyUI's model folders list, and which of them it opens with safetensors.
COMFYUI_SUFFIXES = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
COMFYUI_SAFETENSORS = (".safetensors", ".sft")


def _verdict(ok: bool, reason: str = "") -> dict[str, Any]:
    return {"loads": ok, "reason": reason}


def _py3_name(name: str) -> str:
    """A global as torch's weights_only unpickler looks it up (Python 2 names mapped first)."""
    module, _, attr = name.rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        return ".".join(_compat_pickle.NAME_MAPPING[module, attr])
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{attr}"


def _nested_key(hn: SDKVHypernetwork) -> str:
    """The first MonkeyPatch ResBlock key (``linear.0.linear.0.weight``), or ''."""
    return next((k for pair in hn.modules.values() for s in pair for k in s if k.count(".") > 2), "")


def a1111_verdict(
    fmt: str, hn: SDKVHypernetwork, tf: TorchFile | None, problems: list[str], suffix: str = ".pt"
) -> dict[str, Any]:
    """Would AUTOMATIC1111 (≥ 1.0, safe unpickling on) load this file and apply it?"""
    if suffix != ".pt":
        fix = "rename it to .pt" if fmt == "pt" else f"convert this {fmt} to .pt"
        return _verdict(False, f"A1111 lists only *.pt files as hypernetworks; {fix}")
    if fmt != "pt" or tf is None:
        return _verdict(
            False,
            f"torch.load fails: the file is {fmt}, not a torch pickle, despite its .pt name; `hyperkit convert` it",
        )
    # checked first: converting (the fix for the checks below) cannot help these files
    if nested := _nested_key(hn):
        return _verdict(
            False,
            f"strict load_state_dict fails on the nested ResBlock key '{nested}' (Hypernetwork-MonkeyPatch "
            "modules load only with that extension)",
        )
    if tf.container == "zip":
        bad = [m for m in tf.members if not A1111_ZIP_NAMES.match(m)]
        if bad:
            return _verdict(
                False,
                f"its safety check rejects the archive member '{bad[0]}' (written by "
                "torch ≥ 2.x); `hyperkit convert` to .pt writes a layout it accepts",
            )
    if forbidden := [g for g in tf.globals if g not in A1111_GLOBALS]:
        return _verdict(False, f"its safe unpickler forbids global '{forbidden[0]}'")
    if problems:
        return _verdict(False, f"load_state_dict fails: {problems[0]}")
    if "torch.BFloat16Storage" in tf.globals:
        return _verdict(True, "bf16 tensors need A1111 ≥ 1.3 (May 2023); older versions refuse them")
    return _verdict(True)


def comfyui_verdict(
    fmt: str, hn: SDKVHypernetwork, tf: TorchFile | None, problems: list[str], suffix: str = ".pt"
) -> dict[str, Any]:
    """Would ComfyUI's *Load Hypernetwork* node apply this file, and compute what A1111 does?

    ``problems`` are A1111's (why its strict load fails); ComfyUI is compared with A1111's network.
    """
    no = {"loads": False, "same_as_a1111": False}
    if suffix not in COMFYUI_SUFFIXES:
        return {**no, "reason": f"ComfyUI lists only {', '.join(COMFYUI_SUFFIXES)} files, not {suffix or 'no suffix'}"}
    if suffix in COMFYUI_SAFETENSORS:
        if fmt != "safetensors":
            return {**no, "reason": f"ComfyUI opens {suffix} files with safetensors, which refuses this {fmt} content"}
        return {
            **no,
            "reason": "ComfyUI opens .safetensors hypernetworks but finds no int dim keys, so the "
            "node silently does nothing; convert to .pt",
        }
    if fmt != "pt" or tf is None:
        return {**no, "reason": f"torch.load fails: the file is {fmt}, not a torch pickle, despite its {suffix} name"}
    if not (wo := weights_only_verdict(fmt, tf))["loads"]:
        return {**no, "reason": f"torch.load(weights_only=True) {wo['reason']}"}
    a1111_problem = problems[0] if problems else ""
    if nested := _nested_key(hn):
        a1111_problem = f"strict load_state_dict fails on the nested key '{nested}'"
    return comfyui.verdict(hn, a1111_problem)


def weights_only_verdict(fmt: str, tf: TorchFile | None) -> dict[str, Any]:
    """Would ``torch.load(path, weights_only=True)`` accept the file?"""
    if fmt != "pt" or tf is None:
        return _verdict(False, f"not a pickle archive ({fmt})")
    if ops := [op for op in tf.opcodes if op not in WEIGHTS_ONLY_OPCODES]:
        why = " (written with pickle protocol ≥ 4; torch.save's default is 2)" if _PROTOCOL_4 & set(ops) else ""
        return _verdict(False, f"fails: 'Unsupported operand' for pickle opcode {', '.join(ops)}{why}")
    if blocked := [g for g in map(_py3_name, tf.globals) if g not in WEIGHTS_ONLY_GLOBALS]:
        return _verdict(False, f"refuses global '{blocked[0]}' (not on its allowlist)")
    return _verdict(True)


def _content_format(p: Path) -> tuple[formats.Format, str | None]:
    """The format the bytes say (else the suffix's) and the one the suffix claims, if any."""
    suffix = p.suffix.lower()
    claimed = next((n for n in formats.names() if suffix in formats.get(n).suffixes), None)
    sniffed = identify.sniff(p)
    return (formats.get(sniffed) if sniffed else formats.for_path(p)), claimed


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything hyperkit can tell about a checkpoint, as a JSON-ready dict. Nothing is executed."""
    p = check_input(path)
    if p.stat().st_size == 0:
        raise CorruptFileError(f"{p}: file is empty (0 bytes)")
    fmt, claimed = _content_format(p)
    digest = sha256_file(p)
    base: dict[str, Any] = {
        "path": str(p),
        "format": fmt.name,
        "suffix_mismatch": f"named {p.suffix} but holds {fmt.name}" if claimed and claimed != fmt.name else None,
        "file_bytes": p.stat().st_size,
        "sha256": digest,
        "autov2": digest[:10],
    }
    tf: TorchFile | None = None
    if fmt.name == "pt":
        from hyperkit.formats.torchfile import read_torch_file
        from hyperkit.sdkv import pt_codec

        tf = read_any(p, fmt, reader=read_torch_file)
        if families.for_pt_object(tf.obj).name != families.DEFAULT:  # another family (a generator)
            obj = tf.obj
            model = read_any(p, fmt, reader=lambda q: families.for_pt_object(obj).load().decode_pt(obj, str(q), q.stem))
            return _family_report(base, model, tf)
        if not identify.is_hypernetwork_object(tf.obj):
            return _other(base, identify.describe_object(tf.obj), tf, tf.container)
        obj = tf.obj
        hn = read_any(p, fmt, reader=lambda q: pt_codec.from_object(obj, str(q), q.stem))
    elif fmt.name == "safetensors":
        from hyperkit.formats.safetensors_io import read_safetensors

        tensors, meta = read_any(p, fmt, reader=read_safetensors)
        if not any(k.startswith("hyperkit.") for k in meta):
            return _other(base, identify.describe_safetensors(tensors, meta), None, "safetensors")
        hn = read_any(p, fmt)
    else:
        is_hn, desc = read_any(p, fmt, reader=identify.read_onnx)
        if not is_hn:
            return _other(base, desc, None, "onnx")
        from hyperkit.generator.report import baked_report

        if baked := read_any(p, fmt, reader=baked_report):
            return {**base, **baked}
        hn = read_any(p, fmt)
    if not isinstance(hn, SDKVHypernetwork):
        return _family_report(base, hn, tf)
    return _hypernetwork_report(base, hn, tf, p.suffix.lower())


def _family_report(base: dict[str, Any], model: Any, tf: TorchFile | None) -> dict[str, Any]:
    """The report of another family's model (a generator): its own summary, no UI verdicts."""
    from hyperkit.generator.report import generator_report

    report = {**base, **generator_report(model), "nonfinite_tensors": nonfinite_tensors(model)}
    if tf is not None:
        report["pickle"] = _pickle_facts(tf)
    no = _verdict(False, "a weight-generating hypernetwork, not an SD hypernetwork")
    report["verdicts"] = {"a1111": no, "comfyui": no, "torch_weights_only": weights_only_verdict(base["format"], tf)}
    return report


def _other(base: dict[str, Any], desc: dict[str, Any], tf: TorchFile | None, container: str) -> dict[str, Any]:
    """The report of a file that is not an sd-kv hypernetwork: what it is, and the verdicts."""
    report = {**base, **desc, "container": container}
    if tf is not None:
        report["pickle"] = _pickle_facts(tf)
    known = desc["family"] != "unknown"
    no = f"not a hypernetwork: {desc['kind'] if known else 'no dim keys, and no known key pattern'}"
    report["verdicts"] = {
        "a1111": _verdict(False, no),
        "comfyui": _verdict(False, no),
        "torch_weights_only": weights_only_verdict(base["format"], tf),
    }
    return report


def _pickle_facts(tf: TorchFile) -> dict[str, Any]:
    return {
        "container": tf.container,
        "globals": tf.globals,
        "opcodes": tf.opcodes,
        "storage_locations": tf.locations,
        "zip_members": tf.members,
    }


def _hypernetwork_report(base: dict[str, Any], hn: SDKVHypernetwork, tf: TorchFile | None, suffix: str) -> dict:
    try:
        problems, fatal = structure.problems(hn), ""
    except HyperkitError as e:  # unsupported variant: still describe what is there
        problems, fatal = [e.message], e.message
    eff = hn.effective_metadata()
    report: dict[str, Any] = {
        **base,
        "family": "sd-kv",
        "architecture": hn.architecture() or "unknown",
        "dims": hn.dims,
        "layer_structure": eff["layer_structure"],
        "activation": eff["activation_func"],
        "layer_norm": eff["is_layer_norm"],
        "dropout_structure": eff["dropout_structure"],
        "activate_output": eff["activate_output"],
        "dtypes": hn.dtypes(),
        "tensors": sum(1 for _ in hn.tensors()),
        "parameters": hn.parameter_count,
        "container": hn.container,
        "metadata": {k: _jsonable(v) for k, v in hn.metadata.items()},
        "metadata_types": {k: type(v).__name__ for k, v in hn.metadata.items()},
        "defaults_applied": {k: _jsonable(eff[k]) for k in hn.missing_metadata()},
        "legacy_keys": any(k in structure.LEGACY_NAMES for pair in hn.modules.values() for k in pair[0]),
        "structure_ok": not problems,
        "structure_problems": problems,
        "nonfinite_tensors": nonfinite_tensors(hn),
    }
    if tf is not None:
        report["pickle"] = _pickle_facts(tf)
    fmt = base["format"]
    report["verdicts"] = {
        "a1111": a1111_verdict(fmt, hn, tf, problems, suffix),
        "comfyui": comfyui_verdict(fmt, hn, tf, problems, suffix),
        "torch_weights_only": weights_only_verdict(fmt, tf),
    }
    if fatal:
        report["unsupported"] = fatal
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
