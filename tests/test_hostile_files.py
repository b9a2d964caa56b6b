"""Hostile files through the real CLI, in a subprocess under a 1 GiB address-space limit.

Each case is a file crafted to exhaust memory, time or the C stack (or to reach an internal error):
a nested tuple a million deep, a one-element storage viewed as 25000×20000, zip bombs, opcode
floods, over-deep or over-large metadata, huge integers, lone surrogates, self-references. For
every one, `hyperkit inspect` and `hyperkit convert` must exit 3 with one `Error:` line, within
the time limit, killed by no signal, writing nothing and leaving no temporary file.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperkit.formats.pickle_writer import PickleWriter

ADDRESS_SPACE = 1 << 30
TIMEOUT_S = 120


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _torch_zip(pkl: bytes, storages: dict[str, bytes] | None = None, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        zf.writestr("archive/data.pkl", pkl)
        for key, data in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


def _deflated_member(name: str, chunk: bytes, repeat: int) -> bytes:
    """A zip whose one member inflates to ``chunk * repeat`` without holding that in memory here."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w", force_zip64=True) as f:
        for _ in range(repeat):
            f.write(chunk)
    return buf.getvalue()


def _hypernetwork_pickle(**metadata: object) -> bytes:
    """A valid one-dim hypernetwork pickle with extra metadata, tensors referencing storage '0'..'3'."""
    import numpy as np

    sd = {
        "linear.0.weight": np.zeros((2, 1), "f4"),
        "linear.0.bias": np.zeros(2, "f4"),
        "linear.1.weight": np.zeros((1, 2), "f4"),
        "linear.1.bias": np.zeros(1, "f4"),
    }
    arrays: list[np.ndarray] = []
    return PickleWriter(arrays).dumps({1: (sd, sd), **metadata})


def _with_storages(pkl: bytes) -> bytes:
    return _torch_zip(pkl, {str(i): bytes(8) for i in range(8)})


def _raw_metadata_pickle(value_opcodes: bytes) -> bytes:
    """``{1: ..., "x": <value>}`` where the value is given as raw opcodes."""
    head = _hypernetwork_pickle()[:-2]  # drop SETITEMS-terminating 'u' and STOP
    return head + b"X\x01\x00\x00\x00x" + value_opcodes + b"u."


def deep_tuple_key() -> bytes:
    return _torch_zip(b"\x80\x02}N" + b"\x85" * 1_000_000 + b"K\x01s.")


def zero_stride_view() -> bytes:
    w = PickleWriter([])
    w.out = bytearray(b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((")
    w._save("storage")
    w.out += b"ctorch\nFloatStorage\n"
    for item in ("0", "cpu", 1):
        w._save(item)
    w.out += b"tQ"
    for item in (0, (25000, 20000), (0, 0)):
        w._save(item)
    w.out += b"\x89ccollections\nOrderedDict\n)RtRs."
    return _torch_zip(bytes(w.out), {"0": bytes(4)})


def pickle_bomb() -> bytes:
    return _deflated_member("archive/data.pkl", b"}" * (1 << 20), 30)


def storage_bomb() -> bytes:
    pkl = _hypernetwork_pickle()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pkl)
        with zf.open("archive/data/0", "w", force_zip64=True) as f:
            for _ in range(1500):
                f.write(bytes(1 << 20))
    return buf.getvalue()


def opcode_flood_compressed() -> bytes:
    return _deflated_member("archive/data.pkl", b"\x80\x02" + b"N0" * (1 << 19), 100)


def opcode_flood_stored() -> bytes:
    return _torch_zip(b"\x80\x02N" + b"N0" * 1_100_000 + b".")


def deep_metadata_pickle() -> bytes:
    return _with_storages(_raw_metadata_pickle(b"]" * 450 + b"a" * 449))


def deep_metadata_safetensors() -> bytes:
    meta = {"hyperkit.family": "sd-kv", "hyperkit.format_version": "1", "hyperkit.key_order": '["x"]'}
    meta["hyperkit.x"] = "[" * 450 + "]" * 450
    header = json.dumps({"__metadata__": meta}).encode()
    return struct.pack("<Q", len(header)) + header


def huge_int_metadata() -> bytes:
    n = 2000  # bytes: ~4800 decimal digits
    return _with_storages(_raw_metadata_pickle(b"\x8b" + struct.pack("<i", n) + b"\x01" * n))


def lone_surrogate_metadata() -> bytes:
    text = "\ud800".encode("utf-8", "surrogatepass")
    return _with_storages(_raw_metadata_pickle(b"X" + struct.pack("<I", len(text)) + text))


def large_metadata_string() -> bytes:
    size = 20 << 20
    return _with_storages(_raw_metadata_pickle(b"X" + struct.pack("<I", size) + b"a" * size))


def memo_index_bomb() -> bytes:
    """LONG_BINPUT 2**31 - 1: the C unpickler would size its memo table to 16 GiB (found by make fuzz)."""
    return _torch_zip(b"\x80\x02}Nr\xff\xff\xff\x7f0.")


def self_referencing_metadata() -> bytes:
    return _with_storages(_raw_metadata_pickle(b"]q\x63h\x63a"))


CASES: dict[str, Callable[[], bytes]] = {
    "deep-tuple-key": deep_tuple_key,
    "zero-stride-view": zero_stride_view,
    "pickle-zip-bomb": pickle_bomb,
    "storage-zip-bomb": storage_bomb,
    "opcode-flood-compressed": opcode_flood_compressed,
    "opcode-flood-stored": opcode_flood_stored,
    "deep-metadata-pickle": deep_metadata_pickle,
    "deep-metadata-safetensors": deep_metadata_safetensors,
    "huge-int-metadata": huge_int_metadata,
    "lone-surrogate-metadata": lone_surrogate_metadata,
    "large-metadata-string": large_metadata_string,
    "self-referencing-metadata": self_referencing_metadata,
    "memo-index-bomb": memo_index_bomb,
}


def run_limited(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hyperkit", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=TIMEOUT_S,
        preexec_fn=_limit_memory,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        check=False,
    )


def assert_refused(proc: subprocess.CompletedProcess[str], folder: Path, before: set[str]) -> None:
    assert proc.returncode == 3, f"exit {proc.returncode} (negative: signal)\n{proc.stderr[-2000:]}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert len(proc.stderr.splitlines()) <= 2, proc.stderr[-2000:]  # Error: and at most a Hint:
    assert {p.name for p in folder.iterdir()} == before, "something was written or a temp file left"


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_refused_within_limits(case, tmp_path):
    suffix = ".safetensors" if case.endswith("safetensors") else ".pt"
    src = tmp_path / f"hostile{suffix}"
    src.write_bytes(CASES[case]())
    before = {p.name for p in tmp_path.iterdir()}
    assert_refused(run_limited("inspect", src, cwd=tmp_path), tmp_path, before)
    out = "out.onnx" if suffix == ".safetensors" else "out.safetensors"
    assert_refused(run_limited("convert", src, tmp_path / out, cwd=tmp_path), tmp_path, before)


def test_named_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    before = {p.name for p in tmp_path.iterdir()}
    proc = run_limited("inspect", fifo, cwd=tmp_path)
    assert_refused(proc, tmp_path, before)
    assert f"Error: {fifo}: is not a regular file (a pipe, socket or device)" in proc.stderr
