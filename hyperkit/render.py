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
from hyperkit.errors import sanitize
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
    if verdict["loads"] and verdict.get("same_as_a1111") is False:
        word = "yes, but differs from A1111"
    return f"{word}: {sanitize(verdict['reason'])}" if verdict["reason"] else word


def _inspect_head(r: dict[str, Any]) -> list[tuple[str, str]]:
    pickle = r.get("pickle", {})
    rows = [
        ("path", sanitize(r["path"])),
        ("format", r["format"] + (f" ({pickle['container']} archive)" if pickle else "")),
    ]
    if r.get("suffix_mismatch"):
        rows.append(("suffix", f"{r['suffix_mismatch']} (read by its content)"))
    return rows


def _inspect_tail(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("file size", f"{r['file_bytes']:,} bytes"), ("sha256", r["sha256"]), ("autov2", r["autov2"])]
    if pickle := r.get("pickle", {}):
        rows.append(("pickle globals", sanitize(", ".join(pickle["globals"])) or "none"))
        rows.append(("storage locations", sanitize(", ".join(pickle["storage_locations"])) or "none"))
    return rows


def _verdicts(r: dict[str, Any]) -> str:
    names = {
        "a1111": "loads in A1111",
        "comfyui": "loads in ComfyUI",
        "torch_weights_only": "torch.load(weights_only=True)",
    }
    return table([(names[k], _yes_no(v)) for k, v in r["verdicts"].items()], ("tool", "verdict"))


def _render_other(r: dict[str, Any]) -> str:
    """A file that is not a hypernetwork: what it is, its tensors and metadata."""
    rows = [
        *_inspect_head(r),
        ("family", r["family"]),
        ("kind", r["kind"]),
        ("evidence", sanitize(r["kind_evidence"])),
        ("tensors", str(r["tensors"])),
        ("parameters", f"{r['parameters']:,}"),
        ("dtypes", ", ".join(r["dtypes"]) or "none"),
    ]
    out = [table(rows + _inspect_tail(r), ("field", "value")), ""]
    if r["tensor_list"]:
        listed = [(sanitize(t["name"], 100), str(t["shape"]), t["dtype"]) for t in r["tensor_list"]]
        out.append(table(listed, ("tensor", "shape", "dtype")))
        if r["tensors_not_listed"]:
            out.append(f"... and {r['tensors_not_listed']:,} more tensors")
        out.append("")
    meta = [(sanitize(k, 60), sanitize(repr(v), 120)) for k, v in r["metadata"].items()]
    if meta:
        out.append(table(meta, ("metadata", "value")))
        if r["metadata_not_listed"]:
            out.append(f"... and {r['metadata_not_listed']} more metadata entries")
        out.append("")
    out.append(_verdicts(r))
    return "\n".join(out)


def render_inspect(r: dict[str, Any]) -> str:
    """The human form of :func:`hyperkit.inspection.inspect_file`'s report."""
    if r["family"] != "sd-kv":
        return _render_other(r)
    rows = [
        *_inspect_head(r),
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
    ]
    out = [table(rows + _inspect_tail(r), ("field", "value")), ""]
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
    out.append(_verdicts(r))
    return "\n".join(out)


def result_dict(result: ConvertResult | FolderItem | None) -> dict[str, Any]:
    """JSON-ready form of a conversion result, or of one file of a folder conversion.

    Example:
        >>> from pathlib import Path
        >>> result_dict(FolderItem(Path("a.pt"), Path("out/a.onnx"), skipped=True))
        {'src': 'a.pt', 'dst': 'out/a.onnx', 'status': 'skipped'}
    """
    if result is None:
        return {}
    if isinstance(result, FolderItem):
        if result.result:
            return {**result_dict(result.result), "status": "ok"}
        item: dict[str, Any] = {"src": str(result.src), "dst": str(result.dst), "status": result.status}
        if result.error:
            item.update(error=result.message, exit_code=result.exit_code)
        return item
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
    """One line saying what was converted and how it was verified (paths made printable)."""
    check = "bit-exact" if result.max_cast_error == 0 else f"within the cast (max |err| {result.max_cast_error:.3g})"
    return (
        f"{sanitize(str(result.src))} ({result.src_format}) -> {sanitize(str(result.dst))} ({result.dst_format}): "
        f"{result.tensors} tensors, {result.parameters:,} parameters, {result.bytes_written:,} bytes, verified {check}"
    )


def render_folder(items: list[FolderItem]) -> str:
    """Summary table of a folder conversion, then one count line.

    Example:
        >>> from pathlib import Path
        >>> print(render_folder([FolderItem(Path("a.pt"), Path("o/a.pt"), skipped=True)]))
        source  output  status   detail
        ------  ------  -------  -------------
        a.pt    o/a.pt  skipped  output exists
        0 of 1 converted, 1 skipped (output exists)
    """
    rows = []
    for item in items:
        src = sanitize(str(item.src))
        if item.result:
            rows.append((src, sanitize(str(item.result.dst)), "ok", f"{item.result.tensors} tensors"))
        elif item.skipped:
            rows.append((src, sanitize(str(item.dst)), "skipped", "output exists"))
        else:
            rows.append((src, "-", item.status, sanitize(item.message)))
    counts = {s: sum(1 for i in items if i.status == s) for s in ("ok", "skipped", "failed")}
    summary = f"{counts['ok']} of {len(items)} converted"
    if counts["skipped"]:
        summary += f", {counts['skipped']} skipped (output exists)"
    if counts["failed"]:
        summary += f", {counts['failed']} failed"
    return table(rows, ("source", "output", "status", "detail")) + "\n" + summary


def folder_exit_code(items: list[FolderItem]) -> int:
    """0 when no file failed (skipped ones included); otherwise the worst failure's exit code."""
    return max((item.exit_code for item in items), default=0)
