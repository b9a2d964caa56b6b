"""Base models to bake into: open one, find its attention layers from the keys, read tensors lazily.

Three containers hold a Stable Diffusion UNet's weights:

- a ``.safetensors`` file: a full checkpoint in the original LDM naming
  (``model.diffusion_model.…attn2.to_k.weight``) or a diffusers UNet
  (``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``);
- a diffusers UNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``; a pipeline
  folder's ``unet/`` is found too);
- a ``.ckpt``/``.pt`` pickle, read with hyperkit's allowlisting unpickler (nothing in it runs).

Attention layers are found from the keys alone: a ``….transformer_blocks.N.attnK`` prefix with
``to_q``/``to_k``/``to_v``/``to_out.0`` weights; the context width is ``to_k``'s input size.
Tensors stay in the file (read-only mmap) until the bake asks for one.

Example:
    >>> architecture({768}, 1280)
    'stable-diffusion-v1'
    >>> architecture({64}, 64) is None
    True
"""

from __future__ import annotations

import json
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError, CorruptFileError, LimitExceeded, UnknownFormatError, UnsupportedError
from hyperkit.formats.dtypes import numpy_dtype
from hyperkit.formats.safetensors_io import DTYPES, parse_header
from hyperkit.paths import check_input, is_folder

LDM_PREFIX = "model.diffusion_model."
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_ATTENTION = re.compile(r"^(?P<prefix>.*\.transformer_blocks\.\d+\.(?P<kind>attn\d+))\.to_k\.weight$")
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class Attention:
    """One attention layer of the UNet: where its projections are and how wide its context is."""

    prefix: str
    kind: str  # "attn1" (self-attention: context = hidden states) or "attn2" (cross-attention)
    width: int  # context width: to_k's input size
    channels: int  # the layer's inner width: to_q's output size
    query_width: int  # to_q's input size (the hidden states' width)

    def key(self, part: str) -> str:
        """The tensor name of ``to_q.weight``, ``to_out.0.bias`` & co. of this layer."""
        return f"{self.prefix}.{part}"


@dataclass
class TensorInfo:
    """Where one tensor of a safetensors file is: dtype name, shape, absolute byte span."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class Base:
    """An opened base model: its tensors (lazily), attention layers and inferred architecture."""

    path: Path
    container: str  # "safetensors", "diffusers-folder" or "checkpoint"
    naming: str  # "ldm" or "diffusers"
    weights: Path  # the file holding the tensors
    metadata: dict[str, str]
    attentions: list[Attention]
    infos: dict[str, TensorInfo] = field(default_factory=dict)  # safetensors containers
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # checkpoint containers
    dropped: list[str] = field(default_factory=list)  # non-tensor entries of a checkpoint
    header_end: int = 0
    shards: list[Base] = field(default_factory=list)  # a sharded diffusers UNet: one per file
    _mm: Any = None
    _where: dict[str, int] = field(default_factory=dict)  # tensor name -> its shard

    @property
    def architecture(self) -> str | None:
        """``stable-diffusion-v1``/``-v2``/``-xl-v1-base``/``-xl-v1-refiner``, or None when unknown."""
        cross = {a.width for a in self.attentions if a.kind == "attn2"}
        return architecture(cross, max((a.channels for a in self.attentions), default=0))

    @property
    def widths(self) -> list[int]:
        """Every distinct context width, ascending."""
        return sorted({a.width for a in self.attentions})

    def names(self) -> list[str]:
        """Tensor names in file order (shard by shard)."""
        if self.shards:
            return [n for shard in self.shards for n in shard.names()]
        return list(self.infos or self.arrays)

    def files(self) -> list[Base]:
        """The safetensors files holding the tensors: the shards, or this base itself."""
        return self.shards or [self]

    def locate(self, name: str) -> tuple[int, int]:
        """Where a tensor is: the index of its file in :meth:`files` and its first byte there."""
        index = self._where[name] if self.shards else 0
        return index, self.files()[index].infos[name].begin

    def array(self, name: str) -> np.ndarray:
        """One tensor as a read-only zero-copy view (safetensors) or the unpickled array."""
        if self.shards:
            return self.shards[self._where[name]].array(name)
        if self.arrays:
            return self.arrays[name]
        info = self.infos[name]
        count = int(np.prod(info.shape, dtype=np.int64))
        return np.frombuffer(self._mm, numpy_dtype(info.dtype), count, info.begin).reshape(info.shape)

    def dtype(self, name: str) -> np.dtype:
        """A tensor's element type without reading it."""
        if self.shards:
            return self.shards[self._where[name]].dtype(name)
        return self.arrays[name].dtype if self.arrays else numpy_dtype(self.infos[name].dtype)

    def close(self) -> None:
        """Drop the mapping (views handed out keep it alive until they go)."""
        self._mm = None
        for shard in self.shards:
            shard.close()


def architecture(cross_widths: set[int], max_channels: int) -> str | None:
    """The SD family a UNet belongs to, from its cross-attention widths and widest layer."""
    if cross_widths == {768}:
        return "stable-diffusion-v1"
    if cross_widths == {1024}:
        return "stable-diffusion-v2"
    if cross_widths == {2048}:
        return "stable-diffusion-xl-v1-base"
    if cross_widths == {1280} and max_channels == 1536:
        return "stable-diffusion-xl-v1-refiner"
    return None


def family(arch: str | None) -> str | None:
    """``v1``, ``v2`` or ``xl``: what must agree between a hypernetwork and its base.

    Example:
        >>> family("stable-diffusion-v2-512"), family("stable-diffusion-xl-v1-refiner")
        ('v2', 'xl')
    """
    if arch is None:
        return None
    return "xl" if "-xl-" in arch else arch.split("-")[2]


def find_attentions(shapes: dict[str, tuple[int, ...]], source: Path) -> list[Attention]:
    """Every attention layer whose projections are all present with consistent 2-D shapes."""
    found = []
    for name, shape in shapes.items():
        m = _ATTENTION.match(name)
        if not m:
            continue
        prefix = m.group("prefix")
        parts = {p: shapes.get(f"{prefix}.{p}") for p in ("to_q.weight", "to_v.weight", "to_out.0.weight")}
        bias = shapes.get(f"{prefix}.to_out.0.bias")
        q, v, out = parts["to_q.weight"], parts["to_v.weight"], parts["to_out.0.weight"]
        if q is None or v is None or out is None or bias is None:
            raise CorruptFileError(f"{source}: attention layer '{prefix}' lacks to_q, to_v or to_out.0 tensors")
        if len(shape) != 2 or v != shape or len(q) != 2 or q[0] != shape[0] or out != (q[1], shape[0]):
            raise CorruptFileError(f"{source}: attention layer '{prefix}' has inconsistent projection shapes")
        found.append(Attention(prefix, m.group("kind"), shape[1], shape[0], q[1]))
    return found


def _naming(names: list[str], source: Path) -> str:
    if any(n.startswith(LDM_PREFIX) for n in names):
        return "ldm"
    if any(n.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for n in names):
        return "diffusers"
    raise UnsupportedError(
        f"{source}: unknown layout: neither an SD checkpoint ('{LDM_PREFIX}…') nor a diffusers UNet "
        "('down_blocks.…') — is it a VAE, a text encoder, a LoRA or another model?"
    )


def is_weights_file(name: str) -> bool:
    """Whether ``name`` is one of a diffusers folder's weight files (any variant, shard or index).

    Example:
        >>> names = ("diffusion_pytorch_model.fp16.safetensors", "config.json",
        ...     "diffusion_pytorch_model.safetensors.index.fp16.json")
        >>> [is_weights_file(n) for n in names]
        [True, False, True]
    """
    return name.startswith("diffusion_pytorch_model") and (name.endswith((".safetensors", ".bin")) or ".index" in name)


def _weights_file(folder: Path) -> Path:
    """The folder's weights: ``diffusion_pytorch_model.safetensors``, else its one variant
    (``diffusion_pytorch_model.fp16.safetensors``, as ``variant="fp16"`` downloads have), else
    its shard index (``diffusion_pytorch_model.safetensors.index[.fp16].json``)."""
    if (folder / "unet").is_dir():
        folder = folder / "unet"
    if (folder / DIFFUSERS_WEIGHTS).is_file():
        return folder / DIFFUSERS_WEIGHTS
    indexes = sorted(folder.glob("diffusion_pytorch_model.safetensors.index*.json"))
    if len(indexes) == 1:
        return indexes[0]
    if indexes:
        names = ", ".join(i.name for i in indexes)
        raise BadInputError(f"{folder}: several shard indexes ({names})", hint="keep the one to bake into")
    variants = sorted(folder.glob("diffusion_pytorch_model.*.safetensors"))
    if len(variants) == 1:
        return variants[0]
    if variants:
        names = ", ".join(v.name for v in variants)
        raise BadInputError(
            f"{folder}: several weight variants ({names}) and no {DIFFUSERS_WEIGHTS}",
            hint="pass the one to bake into as --into FILE",
        )
    raise BadInputError(f"{folder}: no {DIFFUSERS_WEIGHTS} in this folder (or its unet/)")


def open_base(path: str | os.PathLike[str]) -> Base:
    """Open a base model (any container above) and find its attention layers; nothing is loaded."""
    p = Path(path)
    if is_folder(p):
        weights = _weights_file(p)
        base = _open_sharded(weights) if weights.name.endswith(".json") else open_safetensors(weights)
        base.path, base.container = p, "diffusers-folder"
        return base
    check_input(p)
    suffix = p.suffix.lower()
    if suffix in (".safetensors", ".sft"):
        return open_safetensors(p)
    if suffix in CHECKPOINT_SUFFIXES:
        return _open_checkpoint(p)
    if suffix == ".bin":
        raise UnsupportedError(f"{p}: diffusers .bin weights are not supported", hint="save the UNet as .safetensors")
    raise UnknownFormatError(f"{p}: unknown base model format '{suffix}' (use .safetensors, .ckpt, a folder or .onnx)")


def open_safetensors(path: Path, *, layout: bool = True) -> Base:
    """Open a ``.safetensors`` base; without ``layout`` (a shard: some of a UNet's tensors) its
    naming and attention layers are left for the caller to find across every shard."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise CorruptFileError(f"{path}: file is empty (0 bytes)")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise BadInputError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        header, metadata, start = parse_header(mm)
    except CorruptFileError as e:
        raise CorruptFileError(f"{path}: {e.message}") from None
    infos = {}
    for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        begin, end = entry["data_offsets"]
        infos[name] = TensorInfo(DTYPES[entry["dtype"]], tuple(entry["shape"]), start + begin, start + end)
    naming = _naming(list(infos), path) if layout else ""
    attentions = find_attentions({n: i.shape for n, i in infos.items()}, path) if layout else []
    return Base(path, "safetensors", naming, path, metadata, attentions, infos=infos, header_end=start, _mm=mm)


#: Most shards an index may name, and most bytes of index JSON read.
MAX_SHARDS, MAX_INDEX_BYTES = 1000, 64 << 20


def _open_sharded(index: Path) -> Base:
    """A sharded diffusers UNet: the index's ``weight_map`` names each tensor's shard, a plain
    file beside the index; every shard is opened (nothing loaded) and must hold exactly the
    tensors the index gives it."""
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise LimitExceeded(f"{index}: shard index over {MAX_INDEX_BYTES:,} bytes")
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not a mapping of tensor names to file names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptFileError(f"{index}: not a readable shard index: {e}") from e
    names = sorted(set(weight_map.values()))
    if len(names) > MAX_SHARDS:
        raise LimitExceeded(f"{index}: {len(names)} shards, over the limit of {MAX_SHARDS}")
    for name in names:
        if Path(name).name != name or not name.endswith(".safetensors") or not (index.parent / name).is_file():
            raise BadInputError(f"{index}: shard '{name}' is not a .safetensors file beside the index")
    shards = [open_safetensors(index.parent / name, layout=False) for name in names]
    where: dict[str, int] = {}
    for i, shard in enumerate(shards):
        for tensor in shard.infos:
            if weight_map.get(tensor) != names[i] or tensor in where:
                raise CorruptFileError(f"{index}: tensor '{tensor}' of {names[i]} is not mapped to it")
            where[tensor] = i
    if len(where) != len(weight_map):
        missing = sorted(set(weight_map) - set(where))[:3]
        raise CorruptFileError(f"{index}: tensors {', '.join(missing)} are in no shard")
    shapes = {n: s.infos[n].shape for s in shards for n in s.infos}
    naming = _naming(list(shapes), index)
    attentions = find_attentions(shapes, index)
    return Base(index, "safetensors", naming, index, shards[0].metadata, attentions, shards=shards, _where=where)


def _state_dict(obj: Any, path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The tensors of a checkpoint: its ``state_dict`` (Lightning/LDM) or the top-level dict."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        dropped = [str(k) for k in obj if k != "state_dict"]
        obj = obj["state_dict"]
    else:
        dropped = []
    if not isinstance(obj, dict):
        raise UnsupportedError(f"{path}: the checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    arrays = {}
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, np.ndarray):
            arrays[key] = value
        else:
            dropped.append(str(key))
    return arrays, dropped


def _open_checkpoint(path: Path) -> Base:
    from hyperkit.formats.torchfile import read_torch_file

    try:
        tf = read_torch_file(path)
    except OSError as e:
        raise BadInputError(f"{path}: cannot read: {e.strerror or e}") from e
    except BadInputError as e:
        if not e.message.startswith(str(path)):
            e.message = f"{path}: {e.message}"
            e.args = (e.message,)
        raise
    arrays, dropped = _state_dict(tf.obj, path)
    naming = _naming(list(arrays), path)
    attentions = find_attentions({n: tuple(a.shape) for n, a in arrays.items()}, path)
    return Base(path, "checkpoint", naming, path, {}, attentions, arrays=arrays, dropped=dropped)


def diffusers_config(base: Base) -> dict[str, Any]:
    """The ``config.json`` beside a diffusers UNet's weights, or ``{}``."""
    cfg = base.weights.parent / "config.json"
    if base.container != "diffusers-folder" or not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorruptFileError(f"{cfg}: not a readable JSON config: {e}") from e
    return data if isinstance(data, dict) else {}
