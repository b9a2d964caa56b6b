"""Shared helpers of the generator tests: the grid of example specs, and the independent reference.

The reference forward pass here is written from the spec text in plain numpy (not with hyperkit's
torch modules), so the tests compare two implementations of GENERATOR-SPEC's semantics.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from hyperkit.generator.examples import conv_document, mlp_document, random_generator
from hyperkit.generator.model import Generator

CONTAINERS = ("pt", "safetensors", "onnx")


def grid() -> list[tuple[str, dict[str, Any]]]:
    """(id, document): both hypernets x both conditions x every slot mode x conv and linear targets."""
    out = []
    for hnet in ("mlp", "chunked_mlp"):
        for cond in ("task_id", "continuous"):
            for lora in ("lora", "delta", "full"):
                out.append((f"conv-{hnet}-{cond}-{lora}", conv_document(hypernet=hnet, condition=cond, lora=lora)))
            for mode in ("full", "delta", "lora"):
                out.append((f"mlp-{hnet}-{cond}-{mode}", mlp_document(hypernet=hnet, condition=cond, mode=mode)))
    return out


def generator(doc: dict[str, Any], seed: int = 0) -> Generator:
    return random_generator(copy.deepcopy(doc), seed)


def condition_arg(gen: Generator) -> str:
    """A ``--condition`` for ``gen``: task 1, or a fixed vector."""
    if gen.spec.condition_kind == "task_id":
        return "1"
    return ",".join(f"{0.25 * (i - 1):g}" for i in range(gen.spec.condition_dim))


def numpy_reference(gen: Generator, x: np.ndarray, cond: str) -> np.ndarray:
    """f(x; θ(z)) in float64 numpy, straight from the spec's Semantics section."""
    s, t = gen.spec, {k: np.asarray(v, np.float64) for k, v in gen.tensors()}
    z = (
        t["hnet.cond_table"][int(cond)]
        if s.condition_kind == "task_id"
        else np.array([float(v) for v in cond.split(",")])
    )
    act = _act(s.activation)
    if s.hypernet_type == "chunked_mlp":
        emb = t["hnet.chunk_emb"]
        zs = np.repeat(z[None], emb.shape[0], 0)
        h = np.concatenate([emb, zs] if s.input_order[0] == "chunk_emb" else [zs, emb], 1)
    else:
        h = z[None]
    n = len(s.hidden) + 1
    for i in range(n):
        h = h @ t[f"hnet.layers.{i}.weight"].T + t[f"hnet.layers.{i}.bias"]
        h = act(h) if i < n - 1 else h
    theta = h.reshape(-1)[: s.total]
    params = {}
    for slot in s.slots:
        span = theta[slot.offset : slot.offset + slot.numel]
        if slot.mode == "static":
            params[slot.param] = t[f"target.{slot.param}"]
        elif slot.mode == "full":
            params[slot.param] = span.reshape(slot.shape)
        elif slot.mode == "delta":
            params[slot.param] = t[f"base.{slot.param}"] + span.reshape(slot.shape)
        else:
            a = span[: slot.rank * slot.fan_in].reshape(slot.rank, slot.fan_in)
            b = span[slot.rank * slot.fan_in :].reshape(slot.fan_out, slot.rank)
            params[slot.param] = t[f"base.{slot.param}"] + (slot.alpha / slot.rank * (b @ a)).reshape(slot.shape)
    y = x.astype(np.float64)
    for layer in s.layers:
        f, p = layer.fields, layer.name
        if layer.op == "linear":
            y = y @ params[f"{p}.weight"].T + (params[f"{p}.bias"] if f["bias"] else 0)
        elif layer.op == "conv2d":
            y = _conv(y, params[f"{p}.weight"], params.get(f"{p}.bias"), f["stride"], f["padding"])
        elif layer.op == "layernorm":
            axes = tuple(range(-len(f["shape"]), 0))
            mu, var = y.mean(axes, keepdims=True), y.var(axes, keepdims=True)
            y = (y - mu) / np.sqrt(var + f["eps"]) * params[f"{p}.weight"] + params[f"{p}.bias"]
        elif layer.op == "flatten":
            y = y.reshape(y.shape[0], -1)
        else:
            y = _act(layer.op)(y)
    return y


def _act(name: str) -> Any:
    erf = np.vectorize(math.erf)
    return {
        "relu": lambda v: np.maximum(v, 0),
        "gelu": lambda v: 0.5 * v * (1 + erf(v / math.sqrt(2))),
        "tanh": np.tanh,
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
        "silu": lambda v: v / (1 + np.exp(-v)),
        "elu": lambda v: np.where(v > 0, v, np.expm1(v)),
        "leaky_relu": lambda v: np.where(v > 0, v, 0.01 * v),
        "identity": lambda v: v,
    }[name]


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    oh, ow = (x.shape[2] - k) // stride + 1, (x.shape[3] - k) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, :, i, j] = np.einsum("bchw,ochw->bo", patch, w)
    return out + (b[None, :, None, None] if b is not None else 0)
