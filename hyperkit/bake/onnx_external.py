"""External data of an ONNX base: where it is, checked, and gathered into one file.

ONNX keeps large initializers outside the model, each naming a ``location`` (a file beside the
model), an ``offset`` and a ``length``. The bake copies them, in the kernel, into one data file
beside its output, however many files the base spreads them over (the legacy exporter writes
one per tensor unless told otherwise). A location must name a regular file in the model's
folder and a span must be exactly what the tensor's shape and type take: a crafted model must
never have the bake copy another file's bytes into what it writes.

Example:
    >>> ALIGN, EXTERNAL
    (64, 1)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hyperkit.bake.stream import copy_range
from hyperkit.errors import BadInputError, CorruptFileError

if TYPE_CHECKING:
    from hyperkit.bake.onnx_unet import Graph

EXTERNAL = 1  # TensorProto.EXTERNAL
ALIGN = 64  # byte alignment of each tensor in the data file written


def _entries(t: Any) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def external_files(g: Graph) -> dict[Path, list[str]]:
    """The external data files of ``g``'s initializers (and who uses each), every one checked to
    be a regular file in the model's folder: a location naming ``..``, an absolute path or a
    link out of the folder would have the bake copy another file's bytes into its output."""
    folder = g.data_dir.resolve()
    files: dict[Path, list[str]] = {}
    for t in g.model.graph.initializer:
        if t.data_location != EXTERNAL:
            continue
        location = _entries(t).get("location", "")
        try:
            path = (g.data_dir / location).resolve()
            inside = location and not Path(location).is_absolute() and ".." not in Path(location).parts
            found = path.is_file()
        except (ValueError, OSError) as e:  # a NUL byte, a name too long for the file system
            raise BadInputError(f"{g.path}: initializer '{t.name}' has an unusable data location: {e}") from e
        if not inside or folder not in path.parents:
            raise BadInputError(
                f"{g.path}: initializer '{t.name}' has its data outside the model's folder: '{location}'"
            )
        if not found:
            raise BadInputError(f"{g.path}: the external data file {path} of initializer '{t.name}' is missing")
        files.setdefault(path, []).append(t.name)
    return files


def gather_external(g: Graph, files: dict[Path, list[str]], fd: int, location: str) -> None:
    """Copy every external initializer's bytes (``files``, from :func:`external_files`) into the
    data file ``fd`` (in the kernel, 64-byte aligned) and point the initializer there: one file
    however many the base spreads them over (the legacy exporter writes one per tensor unless
    told otherwise)."""
    end = 0
    for path, names in files.items():
        src = os.open(path, os.O_RDONLY)  # one at a time: a legacy export has a file per tensor
        try:
            size = os.fstat(src).st_size
            for name in names:
                t = g.inits[name]
                offset, length = _span(g, t, size, path)
                at = end + (-end) % ALIGN
                copy_range(src, fd, offset, length, at)
                end = at + length
                point(t, location, at, length)
        finally:
            os.close(src)


def _span(g: Graph, t: Any, size: int, path: Path) -> tuple[int, int]:
    """The checked ``(offset, length)`` of an external initializer in its file of ``size`` bytes:
    the length, when given, must be what the tensor's dims and type take."""
    from onnx.helper import tensor_dtype_to_np_dtype

    entries = _entries(t)
    try:
        offset = int(entries.get("offset", "0"))
        expected = int(np.prod(t.dims, dtype=np.int64)) * tensor_dtype_to_np_dtype(t.data_type).itemsize
        length = int(entries.get("length", expected))
    except (ValueError, TypeError, KeyError) as e:
        raise CorruptFileError(f"{g.path}: initializer '{t.name}' has a bad external offset, length or type") from e
    if length != expected:
        raise CorruptFileError(
            f"{g.path}: initializer '{t.name}' says {length} bytes of external data, its shape and type take {expected}"
        )
    if offset < 0 or offset + length > size:
        raise CorruptFileError(
            f"{g.path}: initializer '{t.name}' reads bytes {offset}..{offset + length} of {path.name}, which has {size}"
        )
    return offset, length


def point(t: Any, location: str, offset: int, length: int) -> None:
    """Make ``t``'s external data ``length`` bytes at ``offset`` of ``location``."""
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def relocate(g: Graph, old: str, new: str) -> None:
    """Rename the data file the external initializers name from ``old`` to ``new``."""
    for t in g.model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
