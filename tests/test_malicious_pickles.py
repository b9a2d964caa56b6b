"""Malicious pickles: calls of ``os.system``, ``posix.system``, ``builtins.eval`` or ``subprocess.Popen``
are refused with an ``UnsafePickleError`` naming the global, by every reader, their marker file never appearing.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import binunicode, byte_mutants, fuzz_settings, read_everything, torch_a1111_dict, torch_zip
from hypothesis import given
from hypothesis import strategies as st

from hyperkit import conversion, inspection
from hyperkit.errors import UnsafePickleError
from hyperkit.formats import pt
from hyperkit.formats.torchfile import LEGACY_MAGIC, LEGACY_PROTOCOL

# ---------------------------------------------------------------------------------------------
# malicious pickles: refused, named, never run
# ---------------------------------------------------------------------------------------------

#: (module as written in the pickle, name, the global hyperkit must name)
EVIL_TARGETS = [
    ("os", "system", "os.system"),
    ("posix", "system", "posix.system"),
    ("builtins", "eval", "builtins.eval"),
    ("__builtin__", "eval", "builtins.eval"),  # protocol-2 spelling, mapped like pickle does
    ("subprocess", "Popen", "subprocess.Popen"),
]
STYLES = ["p2-GLOBAL", "p4-STACK_GLOBAL", "p4-FRAME-memo", "p0-INST", "p1-OBJ", "p2-nested-in-dict"]


def _short(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _evil_arg(module: str, marker: Path) -> tuple[bytes, Any]:
    """Opcodes pushing the one argument, and its value."""
    if module == "subprocess":
        return b"](" + binunicode("touch") + binunicode(str(marker)) + b"e", ["touch", str(marker)]
    if module in ("builtins", "__builtin__"):
        code = f"open({str(marker)!r}, 'w').close()"
        return binunicode(code), code
    return binunicode(f"touch {marker}"), f"touch {marker}"


def evil_pickle(module: str, name: str, style: str, marker: Path) -> tuple[bytes, tuple[Any, ...]]:
    """A hand-assembled pickle calling ``module.name(arg)``; returns it and the call's args."""
    arg, value = _evil_arg(module, marker)
    glob = b"c" + f"{module}\n{name}\n".encode()
    if style == "p2-GLOBAL":
        pkl = b"\x80\x02" + glob + arg + b"\x85R."
    elif style == "p4-STACK_GLOBAL":
        pkl = b"\x80\x04" + _short(module) + _short(name) + b"\x93" + arg + b"\x85R."
    elif style == "p4-FRAME-memo":
        body = _short(module) + b"\x94" + b"0" + _short(name) + b"\x94" + b"0" + b"h\x00h\x01\x93" + arg + b"\x85R\x94."
        pkl = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
    elif style == "p0-INST":
        pkl = b"(" + arg + b"i" + f"{module}\n{name}\n".encode() + b"."
    elif style == "p1-OBJ":
        pkl = b"(" + glob + arg + b"o."
    elif style == "p2-nested-in-dict":
        pkl = b"\x80\x02}(" + binunicode("step") + b"K\x05" + binunicode("optional_info") + glob + arg + b"\x85Ru."
    else:
        raise AssertionError(style)
    return pkl, (value,)


def legacy_file(main: bytes) -> bytes:
    sys_info = {
        "protocol_version": LEGACY_PROTOCOL,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    return (
        pickle.dumps(LEGACY_MAGIC, protocol=2)
        + pickle.dumps(LEGACY_PROTOCOL, protocol=2)
        + pickle.dumps(sys_info, protocol=2)
        + main
        + pickle.dumps([], protocol=2)
    )


class _Recorder(pickle.Unpickler):
    """Resolves every global to a recording stub: shows what the pickle *would* call."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []

    def find_class(self, module: str, name: str) -> Any:
        def stub(*args: Any) -> str:
            self.calls.append((module, name, args))
            return "stub"

        return stub


class _Evil:
    """Pickles (via the real pickle module) as a call to ``fn(*args)``."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


@pytest.fixture(scope="module")
def evil_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evil")


def evil_cases(marker: Path) -> list[tuple[str, bytes, str]]:
    """(label, file bytes, global to be named) for every target x style x container."""
    cases = []
    for module, name, named in EVIL_TARGETS:
        for style in STYLES:
            pkl, _ = evil_pickle(module, name, style, marker)
            cases.append((f"zip/{style}/{module}.{name}", torch_zip(pkl), named))
            cases.append((f"legacy-main/{style}/{module}.{name}", legacy_file(pkl), named))
            if pkl[:1] == b"\x80":
                cases.append((f"bare/{style}/{module}.{name}", pkl, named))
    return cases


@pytest.mark.parametrize("target", EVIL_TARGETS, ids=lambda t: f"{t[0]}.{t[1]}")
@pytest.mark.parametrize("style", STYLES)
def test_evil_payloads_are_live(tmp_path, target, style):
    """Guard against a vacuous test: each payload *would* call its global with the marker command."""
    module, name, _ = target
    marker = tmp_path / "PWNED"
    pkl, args = evil_pickle(module, name, style, marker)
    rec = _Recorder(pkl)
    rec.load()
    assert rec.calls == [(module, name, args)]
    assert str(marker) in repr(args)
    assert not marker.exists()


def _evil_ids() -> list[str]:
    return [label for label, _, _ in evil_cases(Path("/m"))]


@pytest.mark.parametrize("label", _evil_ids())
def test_evil_pickles_are_refused_and_never_run(evil_dir, label):
    marker = evil_dir / f"PWNED-{label.replace('/', '_')}"
    _, data, named = next(c for c in evil_cases(marker) if c[0] == label)
    src = evil_dir / f"{label.replace('/', '_')}.pt"
    src.write_bytes(data)
    pt_readers = [pt.read, lambda p: conversion.load(p, format="pt"), conversion.load, inspection.inspect_file]
    for reader in pt_readers:
        with pytest.raises(UnsafePickleError) as info:
            reader(src)
        assert f"'{named}'" in str(info.value), str(info.value)
        assert not marker.exists(), "the pickle's payload ran"
    out = evil_dir / f"{label.replace('/', '_')}.safetensors"
    with pytest.raises(UnsafePickleError):
        conversion.convert(src, out)
    assert not out.exists()
    read_everything(src, data)  # the other formats' readers refuse it cleanly too
    assert src.read_bytes() == data
    assert not marker.exists(), "the pickle's payload ran"


def test_evil_pickles_written_by_real_torch_save(evil_dir):
    """The same attack as users meet it: a callable inside a torch.save'd A1111 dict."""
    torch = pytest.importorskip("torch")
    marker = evil_dir / "PWNED-torch"
    payloads = [
        (os.system, f"touch {marker}", "posix.system"),
        (eval, f"open({str(marker)!r}, 'w').close()", "builtins.eval"),
        (subprocess.Popen, ["touch", str(marker)], "subprocess.Popen"),
    ]
    for i, (fn, arg, named) in enumerate(payloads):
        obj = torch_a1111_dict()
        obj["optional_info"] = _Evil(fn, arg)
        for zip_format in (True, False):
            src = evil_dir / f"torch-evil-{i}-{zip_format}.pt"
            torch.save(obj, src, _use_new_zipfile_serialization=zip_format)
            data = src.read_bytes()
            for reader in (pt.read, conversion.load, inspection.inspect_file):
                with pytest.raises(UnsafePickleError, match=f"'{named}'"):
                    reader(src)
            read_everything(src, data)
    assert not marker.exists(), "the pickle's payload ran"


@fuzz_settings(250)
@given(data=st.data())
def test_mutated_evil_pickles_never_run(evil_dir, data):
    marker = evil_dir / "PWNED-fuzz"
    cases = evil_cases(marker)
    label, original, _ = data.draw(st.sampled_from(cases), label="case")
    mutant = data.draw(byte_mutants(original), label="mutant")
    read_everything(evil_dir / "fuzz-evil.pt", mutant)
    assert not marker.exists(), f"the payload of a mutant of {label} ran"
