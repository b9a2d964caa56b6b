"""Static analysis of a pickle before anything is unpickled: limits, globals and opcodes.

The C unpickler builds whatever the opcodes say before hyperkit's code sees it, and some of what it
builds is dangerous without running any code: a tuple nested a million deep crashes the process
when it is hashed as a dict key (CPython's tuple hash recurses in C), ten million opcodes take
minutes. So every pickle is first walked once with :mod:`pickletools` while a symbolic stack
machine replays it: each object becomes a node, containers record their children, and the longest
chain of containment from the result is the nesting depth (cycles are refused). The same walk
names the globals (``STACK_GLOBAL`` resolved from the strings on the stack, as the unpickler
does) and the opcodes used, for loader verdicts.

Example:
    >>> import pickle
    >>> facts = analyze(pickle.dumps({"a": [(1, 2)]}, protocol=4))
    >>> facts.depth, facts.globals
    (3, [])
    >>> analyze(pickle.dumps(print, protocol=4)).globals
    ['builtins.print']
"""

from __future__ import annotations

import pickletools
import warnings
from dataclasses import dataclass
from typing import IO, Any, cast

from hyperkit.errors import CorruptFileError, LimitExceeded
from hyperkit.formats.limits import MAX_DEPTH, MAX_PICKLE_BYTES, MAX_PICKLE_OPS

_LEAVES = frozenset(
    [
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "FLOAT",
        "BINFLOAT",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "BYTEARRAY8",
        "NEXT_BUFFER",
        "PERSID",
    ]
)
_EMPTY = frozenset({"EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"})
_FROM_MARK = frozenset({"TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"})
_INTO_FROM_MARK = frozenset({"APPENDS", "SETITEMS", "ADDITEMS"})
_TEXT = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_POP_N = {"APPEND": 1, "SETITEM": 2, "BUILD": 1, "REDUCE": 1, "NEWOBJ": 1, "NEWOBJ_EX": 2}


@dataclass
class PickleFacts:
    """What one pickle does, known without running it."""

    length: int  # bytes up to and including STOP
    ops: int
    depth: int
    globals: list[str]
    opcodes: list[str]


class _Machine:
    """The symbolic stack: ints stand for objects; ``kids`` holds each container's children."""

    def __init__(self) -> None:
        self.stack: list[int] = []
        self.marks: list[int] = []
        self.memo: dict[int, int] = {}
        self.kids: dict[int, list[int]] = {}
        self.text: dict[int, str] = {}
        self.count = 0
        self.globals: list[str] = []

    def new(self, kids: list[int] | None = None) -> int:
        self.count += 1
        if kids is not None:
            self.kids[self.count] = kids
        return self.count

    def pop(self, n: int = 1) -> list[int]:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < floor:
            raise CorruptFileError("malformed pickle: stack underflow")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def pop_mark(self) -> list[int]:
        if not self.marks:
            raise CorruptFileError("malformed pickle: no MARK")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def top(self) -> int:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) <= floor:
            raise CorruptFileError("malformed pickle: stack underflow")
        return self.stack[-1]

    def add_to(self, node: int, items: list[int]) -> None:
        self.kids.setdefault(node, []).extend(items)

    def step(self, name: str, arg: Any) -> None:
        if name in _LEAVES:
            node = self.new()
            if name in _TEXT and isinstance(arg, str) and len(arg) < 1000:
                self.text[node] = arg
            self.stack.append(node)
        elif name in _EMPTY:
            self.stack.append(self.new([]))
        elif name == "MARK":
            self.marks.append(len(self.stack))
        elif name in _FROM_MARK:
            items = self.pop_mark()
            if name == "INST":
                self.globals.append(str(arg).replace(" ", "."))
            self.stack.append(self.new(items))
        elif name in _TUPLE_N:
            self.stack.append(self.new(self.pop(_TUPLE_N[name])))
        elif name in _INTO_FROM_MARK:
            items = self.pop_mark()
            self.add_to(self.top(), items)
        elif name in ("APPEND", "SETITEM", "BUILD"):
            items = self.pop(_POP_N[name])
            self.add_to(self.top(), items)
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
            args = self.pop(_POP_N[name])
            func = self.pop()
            self.stack.append(self.new(func + args))
        elif name == "BINPERSID":
            self.stack.append(self.new(self.pop()))
        elif name == "GLOBAL":
            self.globals.append(str(arg).replace(" ", "."))
            self.stack.append(self.new())
        elif name == "STACK_GLOBAL":
            module, qualname = self.pop(2)
            self.globals.append(f"{self.text.get(module, '<computed>')}.{self.text.get(qualname, '<computed>')}")
            self.stack.append(self.new())
        elif name in ("EXT1", "EXT2", "EXT4"):
            self.globals.append(f"<copyreg extension {arg}>")
            self.stack.append(self.new())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            key = len(self.memo) if name == "MEMOIZE" else int(arg)
            if not 0 <= key <= self.count:
                # The C unpickler sizes its memo table by the largest index: LONG_BINPUT 2**31
                # would allocate 16 GiB. Picklers number memo entries in order, so an index
                # beyond the objects built so far is never legitimate.
                raise CorruptFileError(f"malformed pickle: memo index {key} exceeds the {self.count} objects built")
            self.memo[key] = self.top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise CorruptFileError(f"malformed pickle: memo key {arg} was never stored")
            self.stack.append(self.memo[int(arg)])
        elif name == "DUP":
            self.stack.append(self.top())
        elif name == "POP":
            if self.marks and len(self.stack) == self.marks[-1]:
                self.marks.pop()  # POP at a mark drops the mark, as the C unpickler does
            else:
                self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name not in ("PROTO", "FRAME", "READONLY_BUFFER", "STOP"):
            raise CorruptFileError(f"malformed pickle: opcode {name} is not handled")

    def depth(self, root: int) -> int:
        """Longest containment chain below ``root`` (a leaf is 0), refusing cycles, iteratively."""
        done: dict[int, int] = {}
        active: set[int] = set()
        todo: list[tuple[int, bool]] = [(root, False)]
        while todo:
            node, leaving = todo.pop()
            if leaving:
                active.discard(node)
                done[node] = 1 + max((done.get(k, 0) for k in self.kids[node]), default=0)
                if done[node] > MAX_DEPTH:
                    raise LimitExceeded(f"pickle nests objects more than {MAX_DEPTH} levels deep")
                continue
            if node in done or node not in self.kids:
                continue
            if node in active:
                raise CorruptFileError("pickle builds a self-referencing structure")
            active.add(node)
            todo.append((node, True))
            todo.extend((k, False) for k in self.kids[node] if k not in done)
        return done.get(root, 0)


class _ViewReader:
    """The file interface :func:`pickletools.genops` needs, over a buffer without copying it
    (``io.BytesIO`` would copy a whole memory-mapped file), refusing to read past the limit."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.view = memoryview(data).cast("B")
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > MAX_PICKLE_BYTES:
            raise LimitExceeded(f"pickle is larger than the {MAX_PICKLE_BYTES >> 20} MiB limit")
        chunk = bytes(self.view[self.pos : self.pos + n])
        self.pos += len(chunk)
        return chunk

    def read(self, n: int = -1) -> bytes:
        return self._take(len(self.view) - self.pos if n < 0 else n)

    def readline(self) -> bytes:
        end = self.pos
        while end < len(self.view):
            found = bytes(self.view[end : end + 4096]).find(b"\n")
            if found >= 0:
                return self._take(end + found + 1 - self.pos)
            end += 4096
        return self._take(len(self.view) - self.pos)

    def tell(self) -> int:
        return self.pos


def analyze(data: bytes | memoryview) -> PickleFacts:
    """Walk the pickle at the start of ``data`` up to its STOP; enforce the limits.

    Raises :class:`~hyperkit.errors.LimitExceeded` past :data:`MAX_PICKLE_BYTES`,
    :data:`MAX_PICKLE_OPS` opcodes or :data:`MAX_DEPTH` levels, and
    :class:`~hyperkit.errors.CorruptFileError` for anything malformed.
    """
    stream = _ViewReader(data)
    machine = _Machine()
    opcodes: set[str] = set()
    ops = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickletools warns on some damaged protocol-0 opcodes
        try:
            for op, arg, _pos in pickletools.genops(cast(IO[bytes], stream)):
                ops += 1
                if ops > MAX_PICKLE_OPS:
                    raise LimitExceeded(f"pickle has more than {MAX_PICKLE_OPS:,} opcodes")
                opcodes.add(op.name)
                machine.step(op.name, arg)
                if op.name == "STOP":
                    break
        except (CorruptFileError, LimitExceeded):
            raise
        except Exception as e:  # pickletools' ValueError on truncation or an unknown opcode, ...
            raise CorruptFileError(f"malformed pickle: {e}") from e
    if "STOP" not in opcodes:
        raise CorruptFileError("pickle has no STOP opcode (truncated?)")
    return PickleFacts(
        length=stream.tell(),
        ops=ops,
        depth=machine.depth(machine.top()),
        globals=list(dict.fromkeys(machine.globals)),
        opcodes=sorted(opcodes),
    )
