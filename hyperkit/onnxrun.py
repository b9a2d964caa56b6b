"""``hyperkit run`` and ``hyperkit bench``: an ONNX model on ONNX Runtime, with its numbers.

Inputs are given (``.npy``) or drawn from a seeded normal distribution in the shapes the model
declares (its first symbolic dimension is the batch, any other one is 1), so a run is repeatable.
``bench`` times ``Session.run`` alone (inputs prepared before the clock starts), after warm-up
runs, and reports latency percentiles and throughput per batch size. Parity: a baked generator
(``hyperkit.family = "generator-baked"``) is checked against the PyTorch target built from the
spec it carries, run with the model's own initializers through ``functional_call`` — an
independent implementation of the same math; other models report none.

Example:
    >>> import tempfile, pathlib, hyperkit
    >>> from hyperkit.generator.examples import tiny_generator
    >>> from hyperkit.generator.bake import bake_generator
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> hyperkit.save(tiny_generator(), d / "g.safetensors")
    >>> _ = bake_generator(d / "g.safetensors", "1", d / "t.onnx")
    >>> result = bench_model(d / "t.onnx", batches=[2], runs=3, warmup=1, prefer_gpu=False, threads=1)
    >>> result["batches"][0]["batch"], result["parity"]["max_abs"] < 1e-5
    (2, True)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError
from hyperkit.runtime import Session, open_session

_NP = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def random_feeds(session: Session, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input, in its declared shape (symbolic dims: batch first, then 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.session.get_inputs():
        dtype = _NP.get(inp.type)
        if dtype is None:
            raise BadInputError(f"input '{inp.name}' has type {inp.type}, which run/bench cannot generate")
        shape, symbolic = [], 0
        for dim in inp.shape:
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
            else:
                shape.append(batch if symbolic == 0 else 1)
                symbolic += 1
        if not shape and dtype == np.float32 and inp.name == "strength":
            continue  # sd-kv's optional scalar: its initializer (1.0) applies
        value = rng.standard_normal(shape) if np.issubdtype(dtype, np.floating) else np.zeros(shape)
        feeds[inp.name] = value.astype(dtype)
    return feeds


def _metadata(session: Session) -> dict[str, str]:
    return dict(session.session.get_modelmeta().custom_metadata_map)


def run_model(
    path: str | os.PathLike[str],
    *,
    x: np.ndarray | None = None,
    batch: int = 1,
    prefer_gpu: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run ``path`` once; the provider used, and each output's shape and statistics."""
    session = open_session(path, prefer_gpu=prefer_gpu, threads=threads)
    feeds = random_feeds(session, batch)
    if x is not None:
        name = session.session.get_inputs()[0].name
        feeds[name] = np.asarray(x, feeds[name].dtype if name in feeds else np.float32)
    start = time.perf_counter()
    outputs = session.run(feeds)
    elapsed = time.perf_counter() - start
    names = [o.name for o in session.session.get_outputs()]
    return {
        "model": str(path),
        "provider": session.provider,
        "session": session.describe(),
        "note": session.note,
        "family": _metadata(session).get("hyperkit.family"),
        "inputs": {k: list(v.shape) for k, v in feeds.items()},
        "outputs": {n: _stats(o) for n, o in zip(names, outputs, strict=True)},
        "seconds": elapsed,
        "arrays": dict(zip(names, outputs, strict=True)),
    }


def _stats(arr: np.ndarray) -> dict[str, Any]:
    a = arr.astype(np.float64)
    return {
        "shape": list(arr.shape),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "finite": bool(np.isfinite(a).all()),
    }


def bench_model(
    path: str | os.PathLike[str],
    *,
    batches: list[int],
    runs: int = 50,
    warmup: int = 10,
    prefer_gpu: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Latency percentiles (ms) and throughput (samples/s) per batch size, and parity."""
    session = open_session(path, prefer_gpu=prefer_gpu, threads=threads)
    rows = []
    for batch in batches:
        feeds = random_feeds(session, batch)
        for _ in range(warmup):
            session.run(feeds)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(feeds)
            times.append(time.perf_counter() - start)
        ms = np.array(times) * 1e3
        rows.append(
            {
                "batch": batch,
                "p50_ms": float(np.percentile(ms, 50)),
                "p90_ms": float(np.percentile(ms, 90)),
                "p99_ms": float(np.percentile(ms, 99)),
                "throughput": batch / float(np.median(ms) / 1e3),
            }
        )
    return {
        "model": str(path),
        "provider": session.provider,
        "session": session.describe(),
        "note": session.note,
        "runs": runs,
        "warmup": warmup,
        "batches": rows,
        "parity": parity(path, session),
    }


def parity(path: str | os.PathLike[str], session: Session, batch: int = 4) -> dict[str, Any] | None:
    """A baked generator's output against the PyTorch target with the same weights, else None."""
    meta = _metadata(session)
    if meta.get("hyperkit.family") != "generator-baked":
        return None
    import onnx
    import torch
    from onnx import numpy_helper

    from hyperkit.generator.spec import parse_spec
    from hyperkit.generator.torch_modules import Target

    spec = parse_spec(meta.get("hyperkit.spec", ""), f"{path}: hyperkit.spec")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    params = {}
    for slot in spec.slots:
        w = torch.from_numpy(inits[slot.param].astype(np.float32))
        if f"{slot.param}.lora_A" in inits:
            a, b = (torch.from_numpy(inits[f"{slot.param}.lora_{k}"]) for k in "AB")
            w = w + ((slot.alpha / slot.rank) * (b @ a)).reshape(slot.shape)
        params[slot.param] = w
    feeds = random_feeds(session, batch, seed=1)
    got = session.run(feeds)[0]
    with torch.no_grad():
        ref = torch.func.functional_call(Target(spec).to("meta"), params, (torch.from_numpy(feeds["x"]),)).numpy()
    diff = np.abs(got.astype(np.float64) - ref)
    return {
        "against": "PyTorch target with the model's weights",
        "batch": batch,
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / max(np.abs(ref).max(), 1e-30)),
        "condition": json.loads(meta.get("hyperkit.condition", "null")),
    }


def save_array(arr: np.ndarray, out: Path, *, force: bool) -> None:
    """Write ``arr`` as ``.npy`` atomically."""
    from hyperkit.paths import atomic_output

    with atomic_output(out, force=force) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
