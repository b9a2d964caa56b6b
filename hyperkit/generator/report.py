"""What ``hyperkit inspect`` says about a generator, or about a model ``hyperkit bake`` wrote.

Example:
    >>> from hyperkit.generator.examples import tiny_generator
    >>> r = generator_report(tiny_generator())
    >>> r["family"], r["hypernet"]["type"], r["slots"]["fc.weight"]
    ('generator', 'chunked_mlp', 'lora')
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from hyperkit.generator.model import Generator

#: Tensors listed by name in a report (the count is always complete).
MAX_LISTED = 20


def generator_report(gen: Generator) -> dict[str, Any]:
    """The JSON-ready description of a generator checkpoint (the keys every inspect report has)."""
    s, summary = gen.spec, gen.summary()
    cond = f"task_id x{s.condition_num}" if s.condition_kind == "task_id" else f"continuous[{s.condition_dim}]"
    named = [{"name": n, "shape": list(a.shape), "dtype": a.dtype.name} for n, a in gen.tensors()]
    return {
        "family": "generator",
        "kind": f"weight-generating hypernetwork ({s.hypernet_type}, {cond}; target "
        f"{list(s.input_shape)} -> {list(s.output_shape)}, {s.total:,} generated values)",
        "kind_evidence": "hyperkit.spec " + ", ".join(f"{p} {m}" for p, m in summary["slots"].items()),
        **summary,
        "dtypes": gen.dtypes(),
        "tensors": len(named),
        "parameters": gen.parameter_count,
        "tensor_list": named[:MAX_LISTED],
        "tensors_not_listed": max(0, len(named) - MAX_LISTED),
        "metadata": {"hyperkit.spec": gen.spec_text},
        "metadata_not_listed": 0,
        "spec": s.document,
    }


def baked_report(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The description of a baked target ONNX model, or None when ``path`` is something else."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("hyperkit.family") != "generator-baked":
        return None
    try:
        condition = json.loads(meta.get("hyperkit.condition", "null"))
    except ValueError:
        condition = meta.get("hyperkit.condition")
    named = [{"name": t.name, "shape": list(t.dims), "dtype": "float32"} for t in model.graph.initializer]
    return {
        "family": "generator-baked",
        "kind_evidence": f"metadata_props hyperkit.family; condition {json.dumps(condition)}",
        "tensors": len(named),
        "parameters": sum(int(math.prod(t["shape"])) for t in named),
        "dtypes": ["float32"],
        "tensor_list": named[:MAX_LISTED],
        "tensors_not_listed": max(0, len(named) - MAX_LISTED),
        "metadata": {k: v for k, v in meta.items() if k != "hyperkit.spec"},
        "metadata_not_listed": 0,
        "kind": "static target model baked from a generator (one-way: holds no hypernetwork)",
        "condition": condition,
        "source_sha256": meta.get("hyperkit.source_sha256"),
        "hyperkit_version": meta.get("hyperkit.version"),
        "lora": meta.get("hyperkit.lora"),
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "verdicts": {},
    }
