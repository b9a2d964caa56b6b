"""Read and write PyTorch ``torch.save`` files without importing torch.

Reading: the zip archive (torch >= 1.6) is memory-mapped and each storage becomes a zero-copy numpy
view; the legacy stacked-pickle format (torch < 1.6) is read sequentially; the legacy tar format is
refused. Every pickle goes through :mod:`hyperkit.formats.safe_pickle`.

Writing: the minimal archive A1111's safety check accepts — only ``<stem>/data.pkl`` (protocol 2),
``<stem>/data/<n>`` and ``<stem>/version`` — with storages 64-byte aligned like torch's own writer.

Example:
    >>> import io, collections, numpy as np
    >>> buf = io.BytesIO()
    >>> write_torch_zip(buf, {1: (collections.OrderedDict(w=np.ones(2, "f4")),)}, "demo")
    >>> read_torch_bytes(buf.getvalue()).obj[1][0]["w"]
    array([1., 1.], dtype=float32)
"""

from __future__ import annotations

import io
import lzma
import mmap
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from hyperkit.errors import CorruptFileError, LimitExceeded, UnsupportedError
from hyperkit.formats import safe_pickle
from hyperkit.formats.arrays import raw_bytes, release
from hyperkit.formats.limits import INFLATE_SLACK_BYTES, MAX_INFLATE_RATIO, MAX_PICKLE_BYTES, MIB
from hyperkit.formats.pickle_scan import analyze
from hyperkit.formats.pickle_writer import PickleWriter
from hyperkit.paths import text_name

#: What zipfile raises on a damaged archive or member (unsupported method, encryption, bad data).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    ValueError,
    EOFError,
    struct.error,
    NotImplementedError,
    RuntimeError,
    zlib.error,
    lzma.LZMAError,
)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
ZIP_ALIGNMENT = 64
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class TorchFile:
    """What a ``torch.save`` file holds, with tensors as numpy arrays."""

    obj: Any
    container: str  # "zip" or "legacy"
    globals: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    #: Names of the distinct pickle opcodes used (``pickletools`` names), for loader verdicts.
    opcodes: list[str] = field(default_factory=list)


def read_torch_file(path: str | os.PathLike[str]) -> TorchFile:
    """Read a ``.pt``/``.ckpt`` safely; storages of zip files stay memory-mapped."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CorruptFileError("file is empty (0 bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return read_torch_bytes(mm)


def read_torch_bytes(data: bytes | mmap.mmap) -> TorchFile:
    """Like :func:`read_torch_file` on an in-memory buffer (or a read-only mmap)."""
    head = bytes(data[:512])
    if len(head) == 0:
        raise CorruptFileError("file is empty (0 bytes)")
    if head[:4] == b"PK\x03\x04":
        return _read_zip(data)
    if head[257:262] == b"ustar":
        raise UnsupportedError(
            "legacy tar-format .pt files (PyTorch 0.1.x) are not supported; torch cannot read them safely either",
            hint="re-save the file with a current PyTorch in a sandbox you trust",
        )
    if head[:1] == b"\x80":
        return _read_legacy(data)
    raise CorruptFileError("not a PyTorch file: neither a zip archive nor a pickle")


def _member_view(
    data: bytes | mmap.mmap, zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int | None = None
) -> memoryview | bytes:
    """The first ``size`` bytes (default: all) of one member: a zero-copy view for stored members,
    else decompressed, never more than ``size`` (the archive's inflation was bounded up front)."""
    size = info.file_size if size is None else size
    if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(info) as member:
            return member.read(size)
    off = info.header_offset
    header = bytes(data[off : off + 30])
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CorruptFileError(f"zip member '{info.filename}' has a bad local header")
    n, m = struct.unpack("<HH", header[26:30])
    start = off + 30 + n + m
    if start + info.file_size > len(data):
        raise CorruptFileError(f"zip member '{info.filename}' runs past the end of the file (truncated?)")
    return memoryview(data)[start : start + size]


def _check_inflation(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip bomb from its central directory, before anything is decompressed."""
    packed = [i for i in infos if i.compress_type != zipfile.ZIP_STORED]
    inflated = sum(i.file_size for i in packed)
    allowed = MAX_INFLATE_RATIO * sum(i.compress_size for i in packed) + INFLATE_SLACK_BYTES
    if inflated > allowed:
        raise LimitExceeded(
            f"compressed zip members inflate to {inflated:,} bytes, over {MAX_INFLATE_RATIO}x their "
            f"compressed size plus {INFLATE_SLACK_BYTES // MIB} MiB (a zip bomb?)",
            hint="torch never compresses its archives; re-save the file with torch.save",
        )


def _read_zip(data: bytes | mmap.mmap) -> TorchFile:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else _MmapReader(data))
        infos = {i.filename: i for i in zf.infolist()}
    except _ZIP_ERRORS as e:
        raise CorruptFileError(f"broken zip archive (truncated?): {e}") from e
    pickles = [name for name in infos if name.endswith("data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        found = "no" if not pickles else f"{len(pickles)}"
        raise CorruptFileError(f"zip archive is not a torch file: {found} '<archive>/data.pkl' members")
    prefix = pickles[0][: -len("data.pkl")]
    if infos[pickles[0]].file_size > MAX_PICKLE_BYTES:
        raise LimitExceeded(
            f"data.pkl declares {infos[pickles[0]].file_size:,} bytes, over the {MAX_PICKLE_BYTES // MIB} MiB "
            "limit for a weights pickle"
        )
    _check_inflation(list(infos.values()))
    try:
        pkl = bytes(_member_view(data, zf, infos[pickles[0]]))
        order = infos.get(prefix + "byteorder")
        byteorder = bytes(_member_view(data, zf, order, min(order.file_size, 16))).decode() if order else "little"
    except _ZIP_ERRORS as e:
        raise CorruptFileError(f"broken zip archive: {e}") from e
    if byteorder not in ("little", "big"):
        raise CorruptFileError(f"unknown byteorder record {byteorder!r}")
    facts = analyze(pkl)
    cache: dict[str, np.ndarray] = {}
    locations: list[str] = []

    def persistent(pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CorruptFileError(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, safe_pickle.StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise CorruptFileError(f"malformed storage record {pid!r:.80}")
        if key not in cache:
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise CorruptFileError(f"storage '{key}' is missing from the archive")
            dtype = stype.dtype.newbyteorder(">") if byteorder == "big" else stype.dtype
            if numel < 0 or numel * dtype.itemsize > info.file_size:
                raise CorruptFileError(f"storage '{key}' holds {info.file_size} bytes, too few for {numel} elements")
            try:
                raw = _member_view(data, zf, info, numel * dtype.itemsize)
            except _ZIP_ERRORS as e:
                raise CorruptFileError(f"broken zip member '{info.filename}': {e}") from e
            if len(raw) < numel * dtype.itemsize:
                raise CorruptFileError(f"storage '{key}' is shorter than its zip entry declares")
            arr = np.frombuffer(raw, dtype=dtype, count=numel)
            cache[key] = arr.astype(stype.dtype) if byteorder == "big" else arr
            locations.append(str(location))
        return cache[key]

    obj = safe_pickle.load_pickle(pkl, persistent, facts).obj
    return TorchFile(
        obj=obj,
        container="zip",
        globals=facts.globals,
        locations=sorted(set(locations)),
        members=list(infos),
        opcodes=facts.opcodes,
    )


class _MmapReader(io.RawIOBase):
    """A seekable read-only file over an mmap, for :mod:`zipfile`'s directory parsing."""

    def __init__(self, mm: mmap.mmap) -> None:
        self._mm, self._pos = mm, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._mm)}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf: Any) -> int:
        chunk = self._mm[self._pos : self._pos + len(buf)]
        buf[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def _read_legacy(data: bytes | mmap.mmap) -> TorchFile:
    """Stacked pickles: magic, protocol, sys_info, the object, storage keys, then raw storages."""
    raw = memoryview(data)
    pos = 0

    def no_persistent(pid: Any) -> Any:
        raise CorruptFileError("unexpected persistent id in a legacy header pickle")

    def next_pickle() -> Any:
        nonlocal pos
        loaded = safe_pickle.load_pickle(raw[pos:], no_persistent)
        pos += loaded.facts.length
        return loaded.obj

    if next_pickle() != LEGACY_MAGIC:
        raise CorruptFileError("not a PyTorch file: a pickle without torch's magic number")
    if next_pickle() != LEGACY_PROTOCOL:
        raise CorruptFileError("unsupported legacy torch protocol version")
    sys_info = next_pickle()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise UnsupportedError("big-endian legacy torch files are not supported")
    main_facts = analyze(raw[pos:])
    main = raw[pos : pos + main_facts.length]
    pos += main_facts.length
    specs: dict[str, tuple[np.dtype, int]] = {}
    locations: list[str] = []

    placeholders: dict[str, safe_pickle.StorageSpec] = {}

    def record(pid: Any) -> safe_pickle.StorageSpec:
        # First pass: learn each storage's dtype and size; placeholders that hold no data keep
        # the views checkable without reading or allocating anything.
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CorruptFileError(f"unexpected persistent id {pid!r:.80}")
        _, stype, key, location, numel, view = pid
        if not isinstance(stype, safe_pickle.StorageType) or not isinstance(numel, int) or numel < 0:
            raise CorruptFileError(f"malformed storage record {pid!r:.80}")
        if view is not None:
            raise UnsupportedError("legacy storage views are not supported")
        if numel * stype.dtype.itemsize > len(raw):
            raise CorruptFileError(f"storage '{key}' claims {numel} elements, more than the file holds")
        specs.setdefault(str(key), (stype.dtype, numel))
        locations.append(str(location))
        return placeholders.setdefault(str(key), safe_pickle.StorageSpec(stype.dtype, numel))

    safe_pickle.load_pickle(main, record, main_facts)
    keys = next_pickle()
    if not isinstance(keys, list):
        raise CorruptFileError("legacy torch file has no storage key list")
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        if str(key) not in specs or pos + 8 > len(raw):
            raise CorruptFileError("legacy torch file is truncated or lists an unknown storage")
        dtype, numel = specs[str(key)]
        (count,) = struct.unpack("<q", raw[pos : pos + 8])
        if count != numel or pos + 8 + numel * dtype.itemsize > len(raw):
            raise CorruptFileError(f"legacy storage '{key}' is truncated or has the wrong size")
        arrays[str(key)] = np.frombuffer(raw, dtype=dtype, count=numel, offset=pos + 8)
        pos += 8 + numel * dtype.itemsize

    def resolve(pid: Any) -> np.ndarray:
        if str(pid[2]) not in arrays:
            raise CorruptFileError(f"storage '{pid[2]}' has no data in the file")
        return arrays[str(pid[2])]

    obj = safe_pickle.load_pickle(main, resolve, main_facts).obj
    return TorchFile(
        obj=obj,
        container="legacy",
        globals=main_facts.globals,
        locations=sorted(set(locations)),
        opcodes=main_facts.opcodes,
    )


def write_torch_zip(target: str | os.PathLike[str] | IO[bytes], obj: Any, stem: str) -> None:
    """Write ``obj`` (dicts, OrderedDicts, tuples, lists, scalars, numpy arrays) as a torch zip.

    Tensors are written as ``torch._utils._rebuild_tensor_v2`` records over ``torch.*Storage``
    storages; entries are only ``data.pkl``, ``data/<n>`` and ``version`` under ``stem/``.
    """
    arrays: list[np.ndarray] = []
    pkl = PickleWriter(arrays).dumps(obj)
    stem = text_name(stem).replace("/", "_") or "archive"  # one valid UTF-8 folder name, as torch writes
    if isinstance(target, str | os.PathLike):
        with open(target, "wb") as f:
            _write_zip(f, stem, pkl, arrays)
    else:
        _write_zip(target, stem, pkl, arrays)


def _write_zip(f: IO[bytes], stem: str, pkl: bytes, arrays: list[np.ndarray]) -> None:
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _add(zf, f, f"{stem}/data.pkl", [memoryview(pkl)])
        for n, arr in enumerate(arrays):
            _add(zf, f, f"{stem}/data/{n}", [raw_bytes(arr)], align=True)
            release(arr)  # a memory-mapped source's pages leave this process once written
        _add(zf, f, f"{stem}/version", [memoryview(b"3\n")])


def _add(zf: zipfile.ZipFile, f: IO[bytes], name: str, chunks: list[memoryview], align: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = sum(len(c) for c in chunks)
    if align:  # pad the local header's extra field so the data starts on a 64-byte boundary
        start = f.tell() + 30 + len(name.encode()) + 4
        pad = (-start) % ZIP_ALIGNMENT
        info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    with zf.open(info, "w", force_zip64=info.file_size >= 0xFFFFFFFF) as out:
        for chunk in chunks:
            out.write(chunk)
