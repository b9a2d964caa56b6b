"""The parity report of a bake: a Markdown table per attention layer, and its JSON form.

Example:
    >>> from pathlib import Path
    >>> from hyperkit.bake.sd import BakeResult
    >>> from hyperkit.bake.fold import LayerParity
    >>> row = LayerParity("mid.attn2", "attn2", 768, 2e-7, 1e-7, 1e-7, 1e-7)
    >>> r = BakeResult(Path("b.safetensors"), Path("o.safetensors"), "safetensors", "fold", "float32",
    ...                [{"file": "a.pt", "strength": 1.0}], [row], 1e-4)
    >>> print(render_bake(r).splitlines()[-1])
    parity: ok, max abs error 2e-07 ≤ tolerance 0.0001 over 1 attention layer(s)
"""

from __future__ import annotations

from typing import Any

from hyperkit.bake.sd import BakeResult


def _e(x: float) -> str:
    return f"{x:.2g}"


def render_bake(result: BakeResult) -> str:
    """Human-readable report: what was baked, one row per layer, the verdict."""
    hns = ", ".join(f"{h['file']} (strength {h['strength']:g})" for h in result.hypernetworks)
    how = "folded exactly into the weights" if result.method == "fold" else "inserted as a subgraph"
    lines = [
        f"baked {hns} into {result.base} → {result.output}",
        f"{how}; base dtype {result.dtype}; {len(result.layers)} attention layer(s) changed"
        + (f"; {result.seconds:.2f} s" if result.seconds else ""),
        "",
        f"| layer | kind | width | max abs | max rel | fold ({result.precision}) | cast to base dtype |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in result.layers:
        errors = " | ".join(_e(x) for x in (p.max_abs, p.max_rel, p.fold_abs, p.cast_abs))
        lines.append(f"| {p.layer} | {p.kind} | {p.width} | {errors} |")
    verdict = "ok" if result.passed else "FAILED"
    sign = "≤" if result.passed else ">"
    lines += [
        "",
        f"parity: {verdict}, max abs error {_e(result.max_abs)} {sign} tolerance {result.tolerance:g} "
        f"over {len(result.layers)} attention layer(s)",
    ]
    return "\n".join(lines)


def bake_dict(result: BakeResult) -> dict[str, Any]:
    """The report as plain JSON-able data."""
    return {
        "base": str(result.base),
        "output": str(result.output),
        "container": result.container,
        "method": result.method,
        "dtype": result.dtype,
        "precision": result.precision,
        "hypernetworks": result.hypernetworks,
        "tolerance": result.tolerance,
        "max_abs": result.max_abs,
        "passed": result.passed,
        "seconds": result.seconds,
        "warnings": result.warnings,
        "layers": [
            {
                "layer": p.layer,
                "kind": p.kind,
                "width": p.width,
                "max_abs": p.max_abs,
                "max_rel": p.max_rel,
                "fold_abs": p.fold_abs,
                "cast_abs": p.cast_abs,
            }
            for p in result.layers
        ],
    }
