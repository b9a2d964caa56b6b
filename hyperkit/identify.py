"""What a checkpoint that is not an sd-kv hypernetwork is: LoRA, embedding, SD checkpoint, ...

``hyperkit inspect`` falls back to this module when a file holds no hypernetwork. It works on
what the container readers already produced (the safely unpickled object of a ``.pt``, the
tensors of a ``.safetensors``, the initializers of an ONNX model), so nothing runs and nothing is
read twice. :func:`sniff` tells the container from the first bytes, because suffixes lie (a
safetensors file renamed ``.pt`` is common). The kind is a guess from tensor names, always given
with the evidence it rests on.

Example:
    >>> import numpy as np
    >>> d = describe_object({"lora_unet_x.lora_down.weight": np.zeros((4, 8), "f4"),
    ...                      "lora_unet_x.lora_up.weight": np.zeros((8, 4), "f4")})
    >>> d["family"], d["kind"], d["kind_evidence"]
    ('lora', 'LoRA (kohya)', 'lora_up/lora_down keys (1 modules, rank 4)')
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

#: How many tensors and metadata entries a report lists (the counts are always complete).
MAX_LISTED = 20
#: Containers visited at most while looking for tensors in an unpickled object.
MAX_NODES = 1_000_000
_TEXT_LIMIT = 200
#: ONNX ``ModelProto`` starts with ``ir_version`` (field 1, varint), then a length-delimited field.
_ONNX_SECOND_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72})

Named = tuple[str, tuple[int, ...], str]  # tensor name, shape, dtype name


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The container format from the first bytes: ``pt``, ``safetensors``, ``onnx`` or ``None``.

    Example:
        >>> import tempfile, os, struct
        >>> p = os.path.join(tempfile.mkdtemp(), "x.pt")
        >>> _ = open(p, "wb").write(struct.pack("<Q", 2) + b"{}")
        >>> sniff(p)
        'safetensors'
    """
    try:
        with open(path, "rb") as f:
            head, size = f.read(16), os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if head[:4] == b"PK\x03\x04":
        return "pt"
    # safetensors: an 8-byte little-endian header length, then the JSON header itself
    if len(head) > 8 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO 2..5 (torch legacy)
        return "pt"
    if len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in _ONNX_SECOND_TAGS:
        return "onnx"
    return None


def is_hypernetwork_object(obj: Any) -> bool:
    """Whether an unpickled object is meant as an sd-kv hypernetwork (it has dim keys)."""
    return isinstance(obj, dict) and any(
        (isinstance(k, int) and not isinstance(k, bool)) or (isinstance(k, str) and k.strip().isdigit()) for k in obj
    )


def _plain(value: Any) -> Any:
    """A short JSON-ready stand-in for a metadata value (long text cut, containers summarised)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= _TEXT_LIMIT else value[:_TEXT_LIMIT] + f"… ({len(value)} characters)"
    if isinstance(value, list | tuple | dict):
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else list(value)
        # small plain containers (A1111's string_to_token) are worth showing; never repr tensors
        if len(items) <= 16 and not any(isinstance(v, np.ndarray | dict | list | tuple) for v in items):
            return _plain(repr(value))
        return f"<{type(value).__name__} of {len(value)}>"
    return f"<{type(value).__name__}>"


def _walk(obj: Any) -> list[tuple[str, np.ndarray]]:
    """Every array inside nested dicts/lists/tuples, named by its dotted path, in order."""
    found: list[tuple[str, np.ndarray]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    budget = MAX_NODES
    while stack and budget > 0:
        name, value = stack.pop()
        if isinstance(value, np.ndarray):
            found.append((name or "<root>", value))
            continue
        if isinstance(value, dict):
            items = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, list | tuple):
            items = [(str(i), v) for i, v in enumerate(value)]
        else:
            continue
        if id(value) in seen:  # shared (memoised) containers are listed once
            continue
        seen.add(id(value))
        budget -= len(items) + 1
        stack.extend((f"{name}.{key}" if name else key, child) for key, child in reversed(items))
    return found


def _count(names: Iterable[str], test: Callable[[str], bool]) -> int:
    return sum(1 for n in names if test(n))


def guess_kind(named: list[Named], top: list[str]) -> tuple[str, str, str]:
    """``(family, kind, evidence)`` from tensor names, shapes and top-level keys.

    Example:
        >>> guess_kind([("emb_params", (2, 768), "float32")], [])[1]
        'textual-inversion embedding (A1111 safetensors)'
    """
    names = [n for n, _, _ in named]
    shapes = {n: s for n, s, _ in named}

    def has(part: str) -> bool:
        return any(part in n for n in names)

    if "string_to_param" in top:
        vec = next((s for n, s in shapes.items() if n.startswith("string_to_param.")), ())
        what = f"{vec[0]} vector(s) of width {vec[-1]}" if len(vec) == 2 else "no vectors"
        return "textual-inversion", "textual-inversion embedding (A1111)", f"string_to_param: {what}"
    if set(names) == {"emb_params"}:
        return "textual-inversion", "textual-inversion embedding (A1111 safetensors)", "a single emb_params tensor"
    if set(names) == {"clip_l", "clip_g"}:
        return "textual-inversion", "textual-inversion embedding (SDXL)", "clip_l and clip_g tensors"
    if "optimizer_state_dict" in top:
        return "optimizer-state", "optimizer state (A1111 .optim sidecar)", "optimizer_state_dict key"
    if has("hada_w1_a") or has("lokr_w1"):
        algo = "LoHa" if has("hada_w1_a") else "LoKr"
        return "lora", f"LyCORIS {algo}", "hada_w*/lokr_w* keys"
    downs = [n for n in names if n.endswith(("lora_down.weight", "lora.down.weight", "lora_A.weight"))]
    if downs:
        rank = shapes[downs[0]][0] if shapes[downs[0]] else 0
        if any(n.endswith("lora_A.weight") for n in downs):
            style, keys = "LoRA (PEFT/diffusers)", "lora_A/lora_B keys"
        elif all(n.startswith(("lora_unet_", "lora_te")) for n in downs):
            style, keys = "LoRA (kohya)", "lora_up/lora_down keys"
        else:
            style, keys = "LoRA", "lora_up/lora_down keys"
        return "lora", style, f"{keys} ({len(downs)} modules, rank {rank})"
    if has("control_model.") or has("input_hint_block."):
        return "controlnet", "ControlNet", "control_model.* / input_hint_block keys"
    if has("model.diffusion_model."):
        n = _count(names, lambda x: "model.diffusion_model." in x)
        evidence = [f"model.diffusion_model.* keys ({n} tensors)"]
        kind = "Stable Diffusion checkpoint"
        # the text encoder tells the generation apart (the UNet keys are alike)
        for part, arch, note in (
            ("conditioner.embedders.1.", "SDXL", "conditioner.embedders.* (two text encoders)"),
            ("cond_stage_model.model.", "SD2", "cond_stage_model.model.* (OpenCLIP)"),
            ("cond_stage_model.transformer.", "SD1", "cond_stage_model.transformer.* (CLIP ViT-L)"),
        ):
            if has(part):
                kind, evidence = f"{kind} ({arch})", [*evidence, note]
                break
        if has("first_stage_model."):
            evidence.append("first_stage_model.* (VAE)")
        return "sd-checkpoint", kind, ", ".join(evidence)
    if has("down_blocks.") and has("mid_block.") and has("time_embedding."):
        return "diffusers-unet", "diffusers UNet", "down_blocks/mid_block/time_embedding keys"
    if has("encoder.down_blocks.") and has("decoder.up_blocks."):
        return "vae", "VAE (diffusers layout)", "encoder.down_blocks/decoder.up_blocks keys"
    if has("encoder.down.") and has("decoder.up.") and has("quant_conv."):
        return "vae", "VAE (ldm layout)", "encoder.down/decoder.up/quant_conv keys"
    if has("text_model.encoder.layers."):
        return "text-encoder", "CLIP text encoder (transformers layout)", "text_model.encoder.layers.* keys"
    if len(named) == 1 and len(named[0][1]) in (1, 2) and named[0][1][-1] in (768, 1024, 1280):
        only, shape, _ = named[0]  # diffusers' learned_embeds: {token: vector(s)} of a text-encoder width
        return "textual-inversion", "textual-inversion embedding (diffusers)", f"one tensor '{only}' of shape {shape}"
    if not named:
        return "unknown", "unknown", "the file holds no tensors"
    return "unknown", "unknown", "no known key pattern; first keys: " + ", ".join(names[:3])


def describe_named(named: list[Named], metadata: dict[str, Any], top: list[str]) -> dict[str, Any]:
    """The JSON-ready description shared by every container."""
    family, kind, evidence = guess_kind(named, top)
    listed = [{"name": n, "shape": list(s), "dtype": d} for n, s, d in named[:MAX_LISTED]]
    meta = dict(list(metadata.items())[:MAX_LISTED])
    return {
        "family": family,
        "kind": kind,
        "kind_evidence": evidence,
        "tensors": len(named),
        "parameters": sum(int(np.prod(s, dtype=object)) for _, s, _ in named),
        "dtypes": sorted({d for _, _, d in named}),
        "tensor_list": listed,
        "tensors_not_listed": len(named) - len(listed),
        "top_level_keys": top[:MAX_LISTED],
        "metadata": {k: _plain(v) for k, v in meta.items()},
        "metadata_not_listed": len(metadata) - len(meta),
    }


def describe_object(obj: Any) -> dict[str, Any]:
    """Describe an unpickled ``.pt`` object (tensors already numpy arrays)."""
    named = [(n, tuple(int(x) for x in a.shape), str(a.dtype)) for n, a in _walk(obj)]
    top = [str(k) for k in obj] if isinstance(obj, dict) else []
    plain = {str(k): v for k, v in obj.items() if not isinstance(v, np.ndarray)} if isinstance(obj, dict) else {}
    return describe_named(named, plain, top)


def describe_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> dict[str, Any]:
    """Describe a ``.safetensors`` file's tensors and ``__metadata__``."""
    named = [(n, tuple(int(x) for x in a.shape), str(a.dtype)) for n, a in tensors.items()]
    return describe_named(named, dict(metadata), [])


def read_onnx(path: str | os.PathLike[str]) -> tuple[bool, dict[str, Any]]:
    """``(is a hyperkit sd-kv model, description)`` of an ONNX file; tensor data is never decoded."""
    from hyperkit.errors import CorruptFileError, require

    require("onnx", "onnx")
    import onnx

    model = onnx.ModelProto()
    try:
        with open(path, "rb") as f:
            model.ParseFromString(f.read())
    except Exception as e:  # protobuf's backends raise different types
        raise CorruptFileError(f"not a valid ONNX protobuf (truncated or damaged?): {e}") from e
    meta = {p.key: p.value for p in model.metadata_props}
    if "hyperkit.family" in meta or model.producer_name == "hyperkit":
        return True, {}
    named = []
    for init in model.graph.initializer:
        try:
            dtype = onnx.TensorProto.DataType.Name(init.data_type).lower()
        except ValueError:
            dtype = f"onnx type {init.data_type}"
        dtype = {"float": "float32", "double": "float64"}.get(dtype, dtype)  # numpy's names, as elsewhere
        named.append((init.name, tuple(int(d) for d in init.dims), dtype))
    out = describe_named(named, meta, [])
    if out["family"] == "unknown":
        ops = Counter(node.op_type for node in model.graph.node).most_common(5)
        out["kind"] = f"ONNX model ({model.producer_name or 'unknown producer'})"
        out["kind_evidence"] = "ops: " + (", ".join(f"{op}×{n}" for op, n in ops) or "none")
    return False, out
