"""Writing and reading reports: CSV, Parquet, Markdown, HTML — all atomic, none overwritten
without ``force``.

CSV and Parquet hold the per-image table (the contract's ``image, prompt, variant, clip_t``
columns first); Parquet also keeps the run's provenance in its schema metadata and, for a shard,
the embeddings that :func:`merge` needs. Markdown holds the summary, the comparisons, the bad rows
and the per-image table. ``.html`` writes the report page (:mod:`hyperkit.eval.html`).

Example:
    >>> import pandas as pd
    >>> print(markdown_table(pd.DataFrame({"metric": ["clip_t"], "mean": [0.281234]})))
    | metric | mean |
    |---|---:|
    | clip_t | 0.2812 |
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError, UsageProblem
from hyperkit.paths import atomic_output, check_input, check_output

SUFFIXES = (".csv", ".parquet", ".md", ".html")
META_KEY = b"hyperkit.eval"


def check_report_paths(paths: list[Path], *, force: bool) -> None:
    """Refuse unusable outputs before any work: unknown suffix (exit 2), existing without
    ``force``, missing folder (exit 3)."""
    for p in paths:
        if p.suffix.lower() not in SUFFIXES:
            raise UsageProblem(f"{p}: unknown report type '{p.suffix}' (expected {', '.join(SUFFIXES)})")
        check_output(p, force=force)


def write_report(result: Any, path: Path, *, force: bool, keep_embeddings: bool = False) -> None:
    """Write one output, its type from the suffix."""
    suffix = path.suffix.lower()
    with atomic_output(path, force=force) as tmp:
        if suffix == ".csv":
            public(result.frame).to_csv(tmp, index=False)
        elif suffix == ".parquet":
            _write_parquet(result, tmp, keep_embeddings)
        elif suffix == ".md":
            tmp.write_text(render_markdown(result), encoding="utf-8")
        elif suffix == ".html":
            from hyperkit.eval.html import render_html

            tmp.write_text(render_html(result), encoding="utf-8")
        else:
            raise UsageProblem(f"{path}: unknown report type '{path.suffix}'")


def public(frame: Any) -> Any:
    """The per-image table without the in-memory embedding columns."""
    return frame[[c for c in frame.columns if not str(c).startswith("_emb_")]]


def _write_parquet(result: Any, tmp: Path, keep_embeddings: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(public(result.frame), preserve_index=False)
    if keep_embeddings:
        for col in ("_emb_image", "_emb_text", "_emb_target"):
            values = [None if not isinstance(v, np.ndarray) else v.astype(np.float32) for v in result.frame[col]]
            table = table.append_column(col, pa.array(values, type=pa.list_(pa.float32())))
    meta = {
        "provenance": result.provenance,
        "baseline": result.baseline,
        "source": result.source,
        "shard": list(result.shard) if result.shard else None,
        "has_embeddings": keep_embeddings,
    }
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[META_KEY] = json.dumps(meta).encode()
    pq.write_table(table.replace_schema_metadata(schema_meta), tmp)


def read_report(path: Path) -> tuple[Any, dict[str, Any]]:
    """A per-image table written by ``hyperkit eval`` (Parquet or CSV) and its metadata."""
    import pandas as pd

    check_input(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
            frame = table.to_pandas()
        elif suffix == ".csv":
            frame, meta = pd.read_csv(path, keep_default_na=True), {}
            frame["error"] = frame["error"].fillna("") if "error" in frame else ""
        else:
            raise BadInputError(f"{path}: not a report (expected a .parquet or .csv written by hyperkit eval)")
    except BadInputError:
        raise
    except Exception as e:
        raise BadInputError(f"{path}: not a readable report: {str(e).splitlines()[0] if str(e) else e}") from None
    missing = [c for c in ("image", "prompt", "variant", "clip_t") if c not in frame.columns]
    if missing:
        raise BadInputError(f"{path}: not a hyperkit eval report (no column {', '.join(missing)})")
    if "prompt_id" not in frame:
        frame["prompt_id"] = frame["prompt"]
    return frame, meta


def _fmt(v: Any) -> str:
    if v is None or v is pd_na():
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{v:.4f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def pd_na() -> Any:
    import pandas as pd

    return pd.NA


def markdown_table(frame: Any, columns: list[str] | None = None) -> str:
    """A GitHub Markdown table; numbers right-aligned with 4 decimals, ``|`` escaped."""
    import pandas as pd

    cols = columns or [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for rec in frame[cols].itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(None if _isna(v) else v) for v in rec) + " |")
    return "\n".join(lines)


def _isna(v: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def render_summary(result: Any) -> str:
    """The summary and comparison tables (what the command prints)."""
    parts = ["## Summary (mean, bootstrap 95% CI over prompts)", "", markdown_table(result.summary)]
    if result.comparisons is not None and len(result.comparisons):
        parts += ["", f"## Paired comparison against '{result.baseline}'", "", markdown_table(result.comparisons)]
    bad = result.bad_rows
    if len(bad):
        parts += ["", f"## Rows with problems ({len(bad)})", "", markdown_table(bad, ["row", "image", "error"])]
    return "\n".join(parts)


def render_markdown(result: Any) -> str:
    """The whole report as one Markdown document."""
    prov = ", ".join(f"{k} {v}" for k, v in result.provenance.items())
    columns = [
        c
        for c in (
            "row",
            "image",
            "prompt",
            "variant",
            "seed",
            "clip_t",
            "clip_i",
            "content_keep",
            "directional",
            "error",
        )
        if c in result.frame.columns
    ]
    return "\n".join(
        [
            f"# hyperkit eval: {result.source}",
            "",
            prov,
            "",
            render_summary(result),
            "",
            "## Per image",
            "",
            markdown_table(public(result.frame), columns),
            "",
        ]
    )


def merge(paths: list[Path]) -> tuple[Any, dict[str, Any]]:
    """Concatenate shard reports (Parquet with embeddings) in row order, checking that they were
    made by the same model and together cover every shard once."""
    import pandas as pd

    frames, metas = [], []
    for p in paths:
        frame, meta = read_report(p)
        if not meta.get("has_embeddings"):
            raise BadInputError(f"{p}: not a shard report (write shards as .parquet with --shard i/n)")
        frames.append(frame)
        metas.append(meta)
    first = metas[0]
    for p, meta in zip(paths[1:], metas[1:], strict=True):
        for key in ("model", "pretrained_sha256", "precision"):
            if meta["provenance"].get(key) != first["provenance"].get(key):
                raise BadInputError(
                    f"{p}: made with {key} {meta['provenance'].get(key)!r}, "
                    f"{paths[0]} with {first['provenance'].get(key)!r}; cannot merge"
                )
    shards = [tuple(m["shard"]) if m.get("shard") else None for m in metas]
    notes = []
    if all(shards):
        n = shards[0][1] if shards[0] else 0
        seen = sorted(s[0] for s in shards if s)
        if len(set(seen)) != len(seen):
            raise BadInputError(f"{paths[0].parent}: a shard is given twice ({', '.join(map(str, seen))} of {n})")
        if seen != list(range(1, n + 1)):
            missing = sorted(set(range(1, n + 1)) - set(seen))
            notes.append(f"shards {', '.join(map(str, missing))} of {n} are missing; the report covers the rest")
    frame = pd.concat(frames, ignore_index=True).sort_values("row", kind="stable").reset_index(drop=True)
    for col in ("_emb_image", "_emb_text", "_emb_target"):
        frame[col] = [np.asarray(v, dtype=np.float32) if v is not None else None for v in frame[col]]
    return frame, {**first, "notes": notes, "source": os.pathsep.join(str(p) for p in paths)}
