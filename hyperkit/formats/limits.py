"""Explicit resource limits for everything read from a file, checked *before* allocating.

A weights file is small in structure (a few thousand pickle opcodes, metadata of a few KB) and
large only in tensor bytes, which stay memory-mapped. So every structural quantity a hostile file
could inflate — pickle size, opcode count, nesting depth, integer size, metadata size, zip
inflation, tensor views that would expand a small storage — has a fixed ceiling far above any real
checkpoint, and crossing it is a :class:`~hyperkit.errors.LimitExceeded` (exit 3). The numbers are
documented in ``docs/formats.md`` ("Limits"); change them there too.

Example:
    >>> check_value({"name": "anime", "layer_structure": [1, 2, 1]}, "metadata")
    >>> try:
    ...     check_value(10**200, "metadata 'step'")
    ... except LimitExceeded as e:
    ...     print(e)
    metadata 'step': integer of 665 bits exceeds the limit of 256 bits
"""

from __future__ import annotations

from typing import Any

from hyperkit.errors import CorruptFileError, LimitExceeded

MIB = 1 << 20

#: Bytes of one (decompressed) pickle. Real ones: a few KB (hypernetworks) to ~2 MB (SDXL checkpoints).
MAX_PICKLE_BYTES = 64 * MIB
#: Opcodes in one pickle (~30 per tensor; an SDXL checkpoint needs ~80,000).
MAX_PICKLE_OPS = 1_000_000
#: Nesting of containers (dicts, lists, tuples, calls) in a pickle or a metadata value.
MAX_DEPTH = 64
#: Bits of one integer in metadata or a pickle (Python refuses to print ints over 4300 digits).
MAX_INT_BITS = 256
#: UTF-8 bytes of all metadata text (keys and strings) together; the safetensors header holds 100 MB.
MAX_METADATA_BYTES = 16 * MIB
#: Values (scalars and containers) in all metadata together.
MAX_METADATA_ITEMS = 100_000
#: Compressed zip members may inflate to this many times their compressed size, plus the slack
#: below (torch never compresses; re-zipping tools do, and a zero bias compresses a lot).
MAX_INFLATE_RATIO = 32
INFLATE_SLACK_BYTES = 16 * MIB
#: Dimensions of one tensor view.
MAX_NDIM = 32
#: Tensors built from a file may hold at most this many times the bytes of the storages they view
#: (tied weights view one storage twice; a crafted file could view it a million times).
MAX_VIEW_EXPANSION = 4
#: Tensors in one file.
MAX_TENSORS = 100_000


def check_value(value: Any, where: str) -> None:
    """Refuse a plain value (metadata) that is too deep, too big, has a huge int or invalid text.

    Walks iteratively, so a deep value cannot exhaust the C stack here.
    """
    items = 0
    text = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        items += 1
        if items > MAX_METADATA_ITEMS:
            raise LimitExceeded(f"{where}: more than {MAX_METADATA_ITEMS} values")
        if isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        if isinstance(item, int):
            if item.bit_length() > MAX_INT_BITS:
                raise LimitExceeded(
                    f"{where}: integer of {item.bit_length()} bits exceeds the limit of {MAX_INT_BITS} bits"
                )
        elif isinstance(item, str):
            text += _utf8_length(item, where)
            if text > MAX_METADATA_BYTES:
                raise LimitExceeded(f"{where}: more than {MAX_METADATA_BYTES // MIB} MiB of text")
        elif isinstance(item, list | tuple | dict):
            if depth > MAX_DEPTH:
                raise LimitExceeded(f"{where}: nested more than {MAX_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            todo.extend((child, depth + 1) for child in children)


def _utf8_length(text: str, where: str) -> int:
    """UTF-8 size of ``text``; lone surrogates (from a damaged pickle or file name) are refused
    because no other format can store them."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise CorruptFileError(f"{where}: text {text[:40]!r} is not valid Unicode (lone surrogate)") from None
