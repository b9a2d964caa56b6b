"""Just enough of the protobuf wire format to stream ONNX weights in and out without copies.

``onnx`` can only serialise or parse a whole ``ModelProto`` in memory, which for a hypernetwork
means three or four copies of every weight. The wire format is simple, though: a message is a
sequence of fields, each a varint *tag* (``field_number << 3 | wire_type``) and a payload, and a
length-delimited payload (wire type 2) is a varint length and that many bytes. So the ONNX writer
can encode the weights' ``TensorProto`` fields itself, straight from the arrays' memory, and the
reader can find where each ``raw_data`` payload lies in a memory-mapped file and view it in place.
Nothing here interprets field *meanings*; :mod:`hyperkit.formats.onnx` does that.

Every offset is checked against the end of the enclosing message, so damaged or hostile bytes
raise :class:`~hyperkit.errors.CorruptFileError` and nothing else. Groups (wire types 3 and 4) are
refused outright: they are deprecated, ONNX never uses them, and skipping them needs unbounded
nesting.

Example:
    >>> inner = tag(1, VARINT) + varint(300)
    >>> msg = tag(2, LEN) + varint(len(inner)) + inner + tag(3, I32) + b"\\x00\\x00\\x80\\x3f"
    >>> [(f.number, f.wire_type, f.value) for f in fields(msg)]
    [(2, 2, 3), (3, 5, 0)]
    >>> [(f.number, f.value) for f in fields(msg, 2, 5)]
    [(1, 300)]
    >>> next(fields(b"\\x12\\x05abc"))
    Traceback (most recent call last):
    ...
    hyperkit.errors.CorruptFileError: protobuf field 2 at byte 0 runs past the end of its message (truncated?)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from hyperkit.errors import CorruptFileError

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
#: A varint encodes at most 64 bits in 7-bit groups, so it is never longer than 10 bytes.
MAX_VARINT_BYTES = 10
#: Tags are 32-bit: field numbers run from 1 to 2**29 - 1.
MAX_FIELD_NUMBER = 2**29 - 1


class Buffer(Protocol):
    """What the walker reads: ``bytes``, ``memoryview`` and ``mmap.mmap`` all index to ints."""

    def __getitem__(self, index: int, /) -> int: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Field:
    """One field of a message: where it lies in the buffer and its decoded scalar.

    ``start``/``end`` span the whole field (tag included), so ``buf[start:end]`` can be copied
    verbatim into another message. ``payload`` is where the value begins: for a ``LEN`` field the
    first byte of its contents, which run to ``end``. ``value`` is the varint for ``VARINT``, the
    content length for ``LEN`` and 0 for the fixed-width types (read them yourself if needed).
    """

    number: int
    wire_type: int
    start: int
    payload: int
    end: int
    value: int


def varint(value: int) -> bytes:
    """The base-128 varint encoding of a non-negative integer below 2**64."""
    if not 0 <= value < 2**64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """The encoded tag of field ``number`` with ``wire_type``."""
    return varint(number << 3 | wire_type)


def len_field_header(number: int, length: int) -> bytes:
    """Tag and length of a ``LEN`` field whose ``length`` content bytes follow."""
    return tag(number, LEN) + varint(length)


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``pos`` (which must end before ``end``); return (value, next position)."""
    value = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= end:
            raise CorruptFileError(f"protobuf varint at byte {pos} runs past the end of its message (truncated?)")
        byte = buf[pos + i]
        # The tenth byte may only carry bit 63; anything more would not fit in 64 bits.
        if i == MAX_VARINT_BYTES - 1 and byte > 1:
            raise CorruptFileError(f"protobuf varint at byte {pos} overflows 64 bits")
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos + i + 1
    raise CorruptFileError(f"protobuf varint at byte {pos} is longer than {MAX_VARINT_BYTES} bytes")


def fields(buf: Buffer, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """Yield the fields of the message occupying ``buf[start:end]`` (default: the whole buffer).

    Only this one level is decoded; a ``LEN`` field's contents can be walked with another call on
    ``(field.payload, field.end)``. Fields are checked lazily: one that is damaged raises when the
    iteration reaches it, after the good fields before it were yielded.
    """
    stop = len(buf) if end is None else end
    if not 0 <= start <= stop <= len(buf):
        raise CorruptFileError(f"protobuf message [{start}, {stop}) lies outside the buffer")
    pos = start
    while pos < stop:
        key, payload = read_varint(buf, pos, stop)
        number, wire_type = key >> 3, key & 7
        if not 1 <= number <= MAX_FIELD_NUMBER:
            raise CorruptFileError(f"protobuf field number {number} at byte {pos} is invalid")
        value = 0
        if wire_type == VARINT:
            value, after = read_varint(buf, payload, stop)
        elif wire_type == I64:
            after = payload + 8
        elif wire_type == I32:
            after = payload + 4
        elif wire_type == LEN:
            value, payload = read_varint(buf, payload, stop)
            after = payload + value
        elif wire_type in (SGROUP, EGROUP):
            raise CorruptFileError(f"protobuf field {number} at byte {pos} is a group, which ONNX never uses")
        else:
            raise CorruptFileError(f"protobuf field {number} at byte {pos} has invalid wire type {wire_type}")
        if after > stop:
            raise CorruptFileError(
                f"protobuf field {number} at byte {pos} runs past the end of its message (truncated?)"
            )
        yield Field(number, wire_type, pos, payload, after, value)
        pos = after
