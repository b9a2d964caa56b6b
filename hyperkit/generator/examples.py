"""Small example generators: the spec documents the docs and tests use, with seeded random tensors.

Example:
    >>> g = tiny_generator()
    >>> g.spec.hypernet_type, g.spec.total, [s.mode for s in g.spec.slots]
    ('chunked_mlp', 168, ['full', 'full', 'lora', 'delta', 'static', 'static'])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hyperkit.generator.model import Generator
from hyperkit.generator.spec import SPEC_VERSION, canonical_text, parse_spec


def conv_document(*, hypernet: str = "chunked_mlp", condition: str = "task_id", lora: str = "lora") -> dict[str, Any]:
    """The docs' worked example, scaled down: conv2d -> relu -> flatten -> linear -> layernorm.

    ``lora`` is the mode of ``fc.weight`` (``lora``, ``delta`` or ``full``).
    """
    fc_slot: dict[str, Any] = {"param": "fc.weight", "mode": lora}
    if lora == "lora":
        fc_slot.update(rank=2, alpha=4.0)
    return {
        "hyperkit_spec": SPEC_VERSION,
        "condition": {"kind": "task_id", "num": 4, "dim": 8}
        if condition == "task_id"
        else {"kind": "continuous", "dim": 8},
        "hypernet": {"type": hypernet, "hidden": [16], "activation": "relu"}
        | ({"chunk": {"size": 32, "emb_dim": 4}} if hypernet == "chunked_mlp" else {}),
        "target": {
            "input": [2, 4, 4],
            "layers": [
                {"op": "conv2d", "name": "c0", "in": 2, "out": 3, "kernel": 3, "stride": 1, "padding": 1, "bias": True},
                {"op": "relu"},
                {"op": "flatten"},
                {"op": "linear", "name": "fc", "in": 48, "out": 5, "bias": True},
                {"op": "layernorm", "name": "ln", "shape": [5], "eps": 1e-5},
            ],
        },
        "slots": [
            {"param": "c0.weight", "mode": "full"},
            {"param": "c0.bias", "mode": "full"},
            fc_slot,
            {"param": "fc.bias", "mode": "delta"},
            {"param": "ln.weight", "mode": "static"},
            {"param": "ln.bias", "mode": "static"},
        ],
    }


def mlp_document(*, hypernet: str = "mlp", condition: str = "task_id", mode: str = "full") -> dict[str, Any]:
    """A two-layer MLP target (linear -> tanh -> linear) with every slot in ``mode``."""

    def slot(param: str) -> dict[str, Any]:
        if mode == "lora" and param.endswith("weight"):
            return {"param": param, "mode": "lora", "rank": 2, "alpha": 2.0}
        return {"param": param, "mode": "delta" if mode == "lora" else mode}

    return {
        "hyperkit_spec": SPEC_VERSION,
        "condition": {"kind": "task_id", "num": 3, "dim": 4}
        if condition == "task_id"
        else {"kind": "continuous", "dim": 4},
        "hypernet": {"type": hypernet, "hidden": [12, 12], "activation": "gelu"}
        | ({"chunk": {"size": 16, "emb_dim": 3}} if hypernet == "chunked_mlp" else {}),
        "target": {
            "input": [6],
            "layers": [
                {"op": "linear", "name": "fc0", "in": 6, "out": 8, "bias": True},
                {"op": "tanh"},
                {"op": "linear", "name": "fc1", "in": 8, "out": 3, "bias": True},
            ],
        },
        "slots": [slot(p) for p in ("fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias")],
    }


def random_generator(document: dict[str, Any], seed: int = 0, scale: float = 0.3) -> Generator:
    """A generator for ``document`` with seeded normal float32 tensors (biases and bases included)."""
    spec = parse_spec(document)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in spec.tensor_shapes().items():
        fan_in = shape[-1] if len(shape) > 1 else 1
        std = 1.0 if name == "hnet.cond_table" or name == "hnet.chunk_emb" else scale / np.sqrt(fan_in)
        tensors[name] = (rng.standard_normal(shape) * std).astype(np.float32)
        if name.startswith("target.") and name.endswith("weight"):
            tensors[name] += 1.0  # a layer norm's scale near one, as trained ones are
    return Generator.build(canonical_text(document), tensors)


def tiny_generator(seed: int = 0) -> Generator:
    """The scaled-down worked example (chunked MLP, task ids, conv + linear target, every mode)."""
    return random_generator(conv_document(), seed)
