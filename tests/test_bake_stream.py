"""The streaming writer of baked checkpoints: whatever the file's layout, whichever tensors are
replaced and whenever their values become ready, the output reads back as the base with exactly
those tensors replaced — through the kernel copy and through its read/write fallback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
from fuzzkit import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from hyperkit.bake import stream
from hyperkit.bake.sd_base import open_safetensors
from hyperkit.bake.stream import write_streaming
from hyperkit.formats.safetensors_io import read_safetensors, write_safetensors

DTYPES = ["float16", "float32", "uint8", "int64"]


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[tuple[str, np.ndarray]], dict[str, np.ndarray], dict[str, int]]:
    """Tensors (some empty), replacements for some of them, and how many polls each takes."""
    n = draw(st.integers(1, 8))
    tensors, new, polls = [], {}, {}
    for i in range(n):
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=2)))
        seed = draw(st.integers(0, 2**16))
        tensors.append((f"t{i}", np.random.default_rng(seed).integers(0, 100, shape).astype(dtype)))
        if draw(st.booleans()):
            new[f"t{i}"] = np.random.default_rng(seed + 1).integers(100, 200, shape).astype(dtype)
            polls[f"t{i}"] = draw(st.integers(0, 3))  # "not ready" this many times first
    return tensors, new, polls


def _check(tmp: Path, tensors, new, polls, metadata) -> None:
    src, dst = tmp / "base.safetensors", tmp / "out.safetensors"
    write_safetensors(src, tensors, {"format": "pt"})
    before = src.read_bytes()
    asked: dict[str, int] = {}

    def take(name: str, wait: bool) -> np.ndarray | None:
        asked[name] = asked.get(name, 0) + 1
        return new[name] if wait or asked[name] > polls[name] else None

    write_streaming(src, dst, open_safetensors(src, layout=False).infos, take, list(new), metadata)
    got, meta = read_safetensors(dst)
    assert list(got) == [n for n, _ in tensors] and meta == metadata
    for name, arr in tensors:
        want = new.get(name, arr)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        assert got[name].tobytes() == want.tobytes(), name
    assert src.read_bytes() == before  # the base is only read


@fuzz_settings(60)
@given(layouts(), st.sampled_from([1, 8, 1 << 26]))
def test_streaming_writes_the_base_with_the_replacements(tmp_path_factory, layout, chunk):
    tensors, new, polls = layout
    tmp = tmp_path_factory.mktemp("stream")
    saved = stream.COPY_CHUNK
    stream.COPY_CHUNK = chunk  # tiny chunks: replacements land between copies of one run
    try:
        _check(tmp, tensors, new, polls, {"hyperkit.baked": "[]"})
    finally:
        stream.COPY_CHUNK = saved


def test_fallback_without_kernel_copy_writes_the_same(tmp_path, monkeypatch):
    def refuse(*_a: object) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(stream, "CHUNK", 7)  # several reads per run
    tensors = [(f"t{i}", np.arange(i * 5, dtype="f4")) for i in range(6)]
    _check(tmp_path, tensors, {"t2": -np.arange(10, dtype="f4")}, {"t2": 2}, {})
