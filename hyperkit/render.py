"""Plain-text rendering of library results for the CLI (tables without extra dependencies).

Example:
    >>> print(table([("a", "1"), ("bb", "22")], ("name", "n")))
    name  n
    ----  --
    a     1
    bb    22
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hyperkit.conversion import ConvertResult
from hyperkit.errors import ExitCode, HyperkitError
from hyperkit.folder import FolderItem


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Left-aligned columns under a dashed header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _typed(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _yes_no(verdict: dict[str, Any]) -> str:
    word = "yes" if verdict["loads"] else "no"
    return f"{word}: {verdict['reason']}" if verdict["reason"] else word


def render_inspect(r: dict[str, Any]) -> str:
    """The human form of :func:`hyperkit.inspection.inspect_file`'s report."""
    pickle = r.get("pickle", {})
    rows = [
        ("path", r["path"]),
        ("format", r["format"] + (f" ({pickle['container']} archive)" if pickle else "")),
        ("family", r["family"]),
        ("architecture", r["architecture"]),
        ("dims", ", ".join(str(d) for d in r["dims"])),
        ("layer structure", str(r["layer_structure"])),
        ("activation", str(r["activation"])),
        ("layer norm", str(r["layer_norm"])),
        ("dropout", str(r["dropout_structure"])),
        ("activate output", str(r["activate_output"])),
        ("dtypes", ", ".join(r["dtypes"])),
        ("tensors", str(r["tensors"])),
        ("parameters", f"{r['parameters']:,}"),
        ("file size", f"{r['file_bytes']:,} bytes"),
        ("sha256", r["sha256"]),
        ("autov2", r["autov2"]),
    ]
    if pickle:
        rows.append(("pickle globals", ", ".join(pickle["globals"]) or "none"))
        rows.append(("storage locations", ", ".join(pickle["storage_locations"]) or "none"))
    out = [table(rows, ("field", "value")), ""]
    meta = [(k, _typed(v)) for k, v in r["metadata"].items()]
    meta += [(k, f"{_typed(v)}  [missing: A1111 default]") for k, v in r["defaults_applied"].items()]
    out += [table(meta, ("metadata", "value (type)")) if meta else "metadata: none", ""]
    if r.get("unsupported"):
        out.append(f"unsupported: {r['unsupported']}")
    elif r["structure_problems"]:
        out.append("structure problems:")
        out += [f"  - {p}" for p in r["structure_problems"]]
    else:
        out.append("structure: every tensor fits the declared layout")
    if r["nonfinite_tensors"]:
        out.append(f"NaN/Inf in: {', '.join(r['nonfinite_tensors'])}")
    out.append("")
    names = {
        "a1111": "loads in A1111",
        "comfyui": "loads in ComfyUI",
        "torch_weights_only": "torch.load(weights_only=True)",
    }
    out.append(table([(names[k], _yes_no(v)) for k, v in r["verdicts"].items()], ("tool", "verdict")))
    return "\n".join(out)


def result_dict(result: ConvertResult | None) -> dict[str, Any]:
    """JSON-ready form of a conversion result."""
    if result is None:
        return {}
    return {
        "src": str(result.src),
        "dst": str(result.dst),
        "src_format": result.src_format,
        "dst_format": result.dst_format,
        "tensors": result.tensors,
        "parameters": result.parameters,
        "bytes_written": result.bytes_written,
        "dtype": result.dtype,
        "verified": True,
        "max_cast_error": result.max_cast_error,
        "warnings": result.warnings,
    }


def render_convert(result: ConvertResult) -> str:
    """One line saying what was converted and how it was verified."""
    check = "bit-exact" if result.max_cast_error == 0 else f"within the cast (max |err| {result.max_cast_error:.3g})"
    return (
        f"{result.src} ({result.src_format}) -> {result.dst} ({result.dst_format}): {result.tensors} tensors, "
        f"{result.parameters:,} parameters, {result.bytes_written:,} bytes, verified {check}"
    )


def render_folder(items: list[FolderItem]) -> str:
    """Summary table of a folder conversion."""
    rows = []
    for item in items:
        if item.result:
            rows.append((str(item.src), str(item.result.dst), "ok", f"{item.result.tensors} tensors"))
        else:
            msg = item.error.message if isinstance(item.error, HyperkitError) else str(item.error)
            rows.append((str(item.src), "-", "failed", msg))
    ok = sum(1 for i in items if i.result)
    return table(rows, ("source", "output", "status", "detail")) + f"\n{ok} of {len(items)} converted"


def folder_exit_code(items: list[FolderItem]) -> int:
    """0 when every file converted; otherwise the highest exit code among the failures."""
    codes = [
        int(i.error.exit_code) if isinstance(i.error, HyperkitError) else int(ExitCode.INTERNAL)
        for i in items
        if i.error
    ]
    return max(codes, default=0)
