"""``hyperkit inspect``: what a checkpoint is and which tools can load it, without running it.

The report is a plain JSON-ready dict (the CLI renders it as a table or ``--json``). Verdicts
model the real loaders' rules from the reference notes: A1111's zip-name and global allowlist
check plus its strict ``load_state_dict``; ComfyUI's ``weights_only`` load, its nine activation
names and its different ``activate_output`` default; ``torch.load(weights_only=True)``.

Example:
    >>> from hyperkit.demo import fixture_path
    >>> report = inspect_file(fixture_path("b_a1111_default.pt"))
    >>> report["family"], report["dims"], report["verdicts"]["comfyui"]["loads"]
    ('sd-kv', [8, 16], True)
"""

from __future__ import annotations

import os
import re
from typing import Any

from hyperkit import formats
from hyperkit.conversion import nonfinite_tensors, read_any
from hyperkit.errors import HyperkitError
from hyperkit.formats.torchfile import TorchFile
from hyperkit.paths import check_input, sha256_file
from hyperkit.sdkv import structure
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
#: Globals ``torch.load(weights_only=True)`` refuses although hyperkit's reader accepts them.
NOT_WEIGHTS_ONLY = {"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype"}


def _verdict(ok: bool, reason: str = "") -> dict[str, Any]:
    return {"loads": ok, "reason": reason}


def a1111_verdict(fmt: str, hn: SDKVHypernetwork, tf: TorchFile | None, problems: list[str]) -> dict[str, Any]:
    """Would AUTOMATIC1111 (≥ 1.0, safe unpickling on) load this file and apply it?"""
    if fmt != "pt" or tf is None:
        return _verdict(False, f"A1111 only loads hypernetworks from .pt files; convert this {fmt} to .pt")
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


def comfyui_verdict(fmt: str, hn: SDKVHypernetwork, tf: TorchFile | None, problems: list[str]) -> dict[str, Any]:
    """Would ComfyUI's *Load Hypernetwork* node apply this file?"""
    if fmt == "safetensors":
        return _verdict(
            False,
            "ComfyUI opens .safetensors hypernetworks but finds no int dim keys, so the "
            "node silently does nothing; convert to .pt",
        )
    if fmt != "pt" or tf is None:
        return _verdict(False, f"ComfyUI only loads .pt/.safetensors hypernetworks, not {fmt}")
    if blocked := [g for g in tf.globals if g in NOT_WEIGHTS_ONLY]:
        return _verdict(False, f"torch.load(weights_only=True) refuses global '{blocked[0]}'")
    act = hn.metadata.get("activation_func", "linear")
    if not (isinstance(act, str) and act in structure.COMFYUI_ACTIVATIONS):
        return _verdict(
            False,
            f"activation_func {act!r} is not one of ComfyUI's "
            f"{', '.join(sorted(structure.COMFYUI_ACTIVATIONS))}: 'Unsupported Hypernetwork "
            "format'; `hyperkit convert` to .pt writes None as 'linear'",
        )
    if problems:
        return _verdict(False, f"tensors do not fit the declared structure: {problems[0]}")
    if act != "linear" and "activate_output" not in hn.metadata:
        return _verdict(
            True,
            "activate_output is missing: ComfyUI assumes False, A1111 True, so outputs "
            "differ; `hyperkit convert` to .pt writes A1111's value explicitly",
        )
    return _verdict(True)


def weights_only_verdict(fmt: str, tf: TorchFile | None) -> dict[str, Any]:
    """Would ``torch.load(path, weights_only=True)`` accept the file?"""
    if fmt != "pt" or tf is None:
        return _verdict(False, f"not a pickle archive ({fmt})")
    if blocked := [g for g in tf.globals if g in NOT_WEIGHTS_ONLY]:
        return _verdict(False, f"refuses global '{blocked[0]}'")
    return _verdict(True)


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything hyperkit can tell about a checkpoint, as a JSON-ready dict. Nothing is executed."""
    p = check_input(path)
    fmt = formats.for_path(p)
    tf: TorchFile | None = None
    if fmt.name == "pt":
        from hyperkit.formats import pt

        hn, tf = read_any(p, fmt, reader=pt.read_with_info)
    else:
        hn = read_any(p, fmt)
    try:
        problems, fatal = structure.problems(hn), ""
    except HyperkitError as e:  # unsupported variant: still describe what is there
        problems, fatal = [e.message], e.message
    digest = sha256_file(p)
    eff = hn.effective_metadata()
    report: dict[str, Any] = {
        "path": str(p),
        "format": fmt.name,
        "family": "sd-kv",
        "file_bytes": p.stat().st_size,
        "sha256": digest,
        "autov2": digest[:10],
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
        report["pickle"] = {
            "container": tf.container,
            "globals": tf.globals,
            "storage_locations": tf.locations,
            "zip_members": tf.members,
        }
    report["verdicts"] = {
        "a1111": a1111_verdict(fmt.name, hn, tf, problems),
        "comfyui": comfyui_verdict(fmt.name, hn, tf, problems),
        "torch_weights_only": weights_only_verdict(fmt.name, tf),
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
