"""Generators side by side: PyTorch eager (generate θ, then run f) vs torch.compile vs baked ONNX on ORT CPU.

For a small MLP target and a small conv target, at batch 1 and 64, in one run: each variant is
timed in interleaved rounds (so drift hits all alike), medians reported, with the ratio to eager
and the max abs difference from eager (parity is checked before anything is timed). Threads are
pinned alike (``torch.set_num_threads`` and ORT's ``intra_op_num_threads``). Compile time and
ORT session creation are reported separately, as one-time costs.

Usage: ``python scripts/bench_generator.py [--rounds 7] [--iters 200] [--threads 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hyperkit
from hyperkit.generator.bake import bake_generator
from hyperkit.generator.examples import random_generator
from hyperkit.generator.spec import SPEC_VERSION
from hyperkit.generator.torch_modules import GeneratorModule
from hyperkit.runtime import open_session

TASK = 1


def mlp_target() -> dict[str, Any]:
    return _doc(
        [64],
        [
            {"op": "linear", "name": "fc0", "in": 64, "out": 128, "bias": True},
            {"op": "relu"},
            {"op": "linear", "name": "fc1", "in": 128, "out": 128, "bias": True},
            {"op": "relu"},
            {"op": "linear", "name": "fc2", "in": 128, "out": 10, "bias": True},
        ],
    )


def conv_target() -> dict[str, Any]:
    return _doc(
        [3, 16, 16],
        [
            {"op": "conv2d", "name": "c0", "in": 3, "out": 8, "kernel": 3, "stride": 1, "padding": 1, "bias": True},
            {"op": "relu"},
            {"op": "conv2d", "name": "c1", "in": 8, "out": 8, "kernel": 3, "stride": 2, "padding": 1, "bias": True},
            {"op": "relu"},
            {"op": "flatten"},
            {"op": "linear", "name": "fc", "in": 512, "out": 10, "bias": True},
        ],
    )


def _doc(input_shape: list[int], layers: list[dict[str, Any]]) -> dict[str, Any]:
    params = [p for layer in layers if "name" in layer for p in (f"{layer['name']}.weight", f"{layer['name']}.bias")]
    return {
        "hyperkit_spec": SPEC_VERSION,
        "condition": {"kind": "task_id", "num": 8, "dim": 16},
        "hypernet": {
            "type": "chunked_mlp",
            "hidden": [64, 64],
            "activation": "relu",
            "chunk": {"size": 1024, "emb_dim": 8},
        },
        "target": {"input": input_shape, "layers": layers},
        "slots": [{"param": p, "mode": "full"} for p in params],
    }


def timed(fn: Any, iters: int) -> float:
    """Median-free mean seconds per call over ``iters`` calls (one round)."""
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def bench_case(name: str, doc: dict[str, Any], batch: int, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    gen = random_generator(doc, seed=0)
    src = tmp / f"{name}.safetensors"
    hyperkit.save(gen, src, force=True)
    module = GeneratorModule.from_generator(gen).eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, *gen.spec.input_shape)).astype(np.float32))

    def eager() -> torch.Tensor:
        with torch.no_grad():
            return module(x, task_id=TASK)

    t0 = time.perf_counter()
    compiled_fn = torch.compile(lambda inp: module(inp, task_id=TASK))

    def compiled() -> torch.Tensor:
        with torch.no_grad():
            return compiled_fn(x)

    compiled()
    compile_s = time.perf_counter() - t0
    out = tmp / f"{name}.onnx"
    bake_generator(src, str(TASK), out, force=True, tolerance=1e-4)
    t0 = time.perf_counter()
    session = open_session(out, prefer_gpu=False, threads=args.threads)
    session_s = time.perf_counter() - t0
    feeds = {"x": x.numpy()}

    def ort() -> Any:
        return session.run(feeds)

    ref = eager().numpy()
    variants = {"eager (generate θ, then run f)": eager, "torch.compile": compiled, "baked ONNX, ORT CPU": ort}
    parity = {
        "eager (generate θ, then run f)": 0.0,
        "torch.compile": float(np.abs(compiled().numpy() - ref).max()),
        "baked ONNX, ORT CPU": float(np.abs(ort()[0] - ref).max()),
    }
    for fn in variants.values():  # warm-up
        timed(fn, max(1, args.iters // 10))
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for key, fn in variants.items():
            samples[key].append(timed(fn, args.iters))
    eager_s = statistics.median(samples["eager (generate θ, then run f)"])
    rows = []
    for key in variants:
        med = statistics.median(samples[key])
        one_time = {
            "torch.compile": f"compile {compile_s:.1f} s",
            "baked ONNX, ORT CPU": f"session {session_s * 1e3:.0f} ms",
        }
        rows.append(
            {
                "target": name,
                "batch": batch,
                "variant": key,
                "median_ms": med * 1e3,
                "speedup_vs_eager": eager_s / med,
                "max_abs_vs_eager": parity[key],
                "one_time": one_time.get(key, ""),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, doc in (("MLP 64-128-128-10", mlp_target()), ("conv 3x16x16 -> 2 conv -> fc", conv_target())):
            for batch in (1, 64):
                rows += bench_case(name.split()[0].lower(), doc, batch, args, Path(tmp))
                rows[-3]["target"] = rows[-2]["target"] = rows[-1]["target"] = name
    print(
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, Python "
        f"{platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}, {platform.system()} {platform.release()}; "
        f"medians of {args.rounds} interleaved rounds of {args.iters} calls.\n"
    )
    print("| target | batch | variant | median | vs eager | max abs vs eager | one-time cost |")
    print("|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['target']} | {r['batch']} | {r['variant']} | {r['median_ms']:.3f} ms | "
            f"{r['speedup_vs_eager']:.2f}× | {r['max_abs_vs_eager']:.1e} | {r['one_time']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
