"""What to score: a manifest (CSV, JSONL, Parquet) or a folder of images with embedded prompts.

Both become one list of :class:`Row` in input order. A problem with the manifest as a whole (not
a manifest format, unreadable, no ``image``/``prompt`` column) raises :class:`BadInputError`
(exit 3); a problem with one row (missing file, empty prompt, duplicate) is recorded in that
row's ``error`` and the run goes on, so the report lists every bad row with its reason.

Example:
    >>> a1111_prompt("a cat, oil painting\\nNegative prompt: blurry\\nSteps: 20, Seed: 42, Size: 512x512")
    ('a cat, oil painting', 42)
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperkit.errors import BadInputError
from hyperkit.paths import check_input, is_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
#: Other spellings accepted for the two required columns (the reference's manifests use these).
ALIASES = {"image_path": "image", "path": "image", "file": "image", "caption": "prompt", "text": "prompt"}
KNOWN = ("image", "prompt", "variant", "prompt_id", "seed", "strength", "reference", "style_prompt")
DEFAULT_VARIANT = "default"


@dataclass
class Row:
    """One image to score, as the manifest or the folder described it."""

    row: int  # 1-based data row (CSV/Parquet) or line (JSONL) number, for error messages
    image: str  # as written in the manifest (relative paths kept, for the report)
    path: Path  # resolved against the manifest's folder
    prompt: str | None
    variant: str = DEFAULT_VARIANT
    prompt_id: str | None = None
    seed: int | None = None
    strength: float | None = None
    style_prompt: str | None = None
    references: list[Path] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def fail(self, reason: str) -> None:
        """Record a reason this row cannot be (fully) scored; the first reason wins."""
        if not self.error:
            self.error = reason


def load_rows(source: str | os.PathLike[str]) -> list[Row]:
    """Rows from a manifest file or an image folder, validated (see :func:`validate`).

    Example:
        >>> load_rows("missing.csv")
        Traceback (most recent call last):
        ...
        hyperkit.errors.BadInputError: missing.csv: no such file
    """
    src = Path(source)
    rows = scan_folder(src) if is_folder(src) else read_manifest(src)
    if not rows:
        raise BadInputError(f"{src}: nothing to evaluate (no rows)")
    validate(rows)
    return rows


def read_manifest(path: Path) -> list[Row]:
    """Parse a CSV, JSONL or Parquet manifest; relative paths resolve against its folder."""
    check_input(path)
    kind = MANIFEST_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise BadInputError(
            f"{path}: not a manifest (expected .csv, .jsonl or .parquet, or a folder of images)",
            hint="columns: image, prompt, and optionally variant, prompt_id, seed, strength, reference, style_prompt",
        )
    records = _read_records(path, kind)
    columns = _columns(path, records)
    return [_row(path, number, rec, columns) for number, rec in records]


def _read_records(path: Path, kind: str) -> list[tuple[int, dict[str, Any]]]:
    import pandas as pd

    try:
        if kind == "jsonl":
            out = []
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise BadInputError(f"{path}: line {number} is not a JSON object")
                    out.append((number, rec))
            return out
        if kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        else:
            frame = pd.read_parquet(path)
    except BadInputError:
        raise
    except (ValueError, UnicodeDecodeError, OSError, pd.errors.ParserError) as e:
        raise BadInputError(f"{path}: not a readable {kind.upper()} manifest: {_first_line(e)}") from None
    except Exception as e:  # pyarrow's own error types for a corrupt Parquet file
        raise BadInputError(f"{path}: not a readable {kind.upper()} manifest: {_first_line(e)}") from None
    return [(i + 1, rec) for i, rec in enumerate(frame.to_dict("records"))]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _columns(path: Path, records: list[tuple[int, dict[str, Any]]]) -> dict[str, str]:
    """Map of canonical name -> manifest column; a missing ``image`` or ``prompt`` is exit 3."""
    seen: dict[str, None] = {}
    for _, rec in records:
        seen.update(dict.fromkeys(str(k) for k in rec))
    mapping: dict[str, str] = {}
    for name in seen:
        canon = ALIASES.get(name.strip().lower(), name.strip().lower())
        if canon in KNOWN or canon == "references":
            mapping.setdefault("reference" if canon == "references" else canon, name)
    missing = [c for c in ("image", "prompt") if c not in mapping]
    if missing:
        found = ", ".join(repr(c) for c in seen) or "none"
        raise BadInputError(
            f"{path}: no {' and no '.join(repr(m) for m in missing)} column (columns found: {found})",
            hint="a manifest needs 'image' (path, relative to the manifest) and 'prompt'; optional: "
            + ", ".join(KNOWN[2:]),
        )
    return mapping


def _value(rec: dict[str, Any], column: str | None) -> Any:
    if column is None:
        return None
    v = rec.get(column)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, str) and not v.strip():
        return None
    return v


def _row(manifest: Path, number: int, rec: dict[str, Any], columns: dict[str, str]) -> Row:
    base = manifest.parent
    image = _value(rec, columns["image"])
    prompt = _value(rec, columns["prompt"])
    row = Row(row=number, image=str(image) if image is not None else "", path=base, prompt=None)
    if image is None:
        row.fail("no image path")
    else:
        row.path = base / str(image)
    if prompt is None:
        row.fail("missing prompt")
    else:
        row.prompt = str(prompt)
    if (variant := _value(rec, columns.get("variant"))) is not None:
        row.variant = str(variant)
    if (pid := _value(rec, columns.get("prompt_id"))) is not None:
        row.prompt_id = str(pid)
    if (seed := _value(rec, columns.get("seed"))) is not None:
        try:
            row.seed = int(str(seed).strip()) if not isinstance(seed, (int, float)) else int(seed)
        except ValueError:
            row.fail(f"seed {str(seed)!r} is not an integer")
    if (strength := _value(rec, columns.get("strength"))) is not None:
        try:
            row.strength = float(strength)
        except (TypeError, ValueError):
            row.fail(f"strength {str(strength)!r} is not a number")
    if (style := _value(rec, columns.get("style_prompt"))) is not None:
        row.style_prompt = str(style)
    refs = _value(rec, columns.get("reference"))
    if refs is not None:
        items = (
            [str(r) for r in refs] if hasattr(refs, "__iter__") and not isinstance(refs, str) else str(refs).split("|")
        )
        row.references = [base / r.strip() for r in items if r.strip()]
    used = set(columns.values())
    row.extra = {k: _plain(v) for k, v in rec.items() if k not in used}
    return row


def _plain(v: Any) -> Any:
    """A pass-through value as a scalar a Parquet column can hold (lists and dicts as JSON)."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    try:
        return json.dumps(v if not hasattr(v, "tolist") else v.tolist())
    except TypeError:
        return str(v)


def validate(rows: list[Row]) -> None:
    """Mark rows that cannot be scored: missing or empty files, and duplicates of an earlier row
    (the same image, prompt and variant; or the same variant, prompt_id and seed)."""
    first: dict[tuple[Any, ...], int] = {}
    keys: list[tuple[Any, ...]]
    for r in rows:
        if r.prompt_id is None and r.prompt is not None:
            r.prompt_id = r.prompt
        if r.error:
            continue
        try:
            size = r.path.stat().st_size if r.path.is_file() else None
        except OSError:
            size = None
        if size is None:
            r.fail(f"image not found: {r.image}")
        elif size == 0:
            r.fail(f"empty file (0 bytes): {r.image}")
        for ref in r.references:
            if not ref.is_file():
                r.fail(f"reference image not found: {ref}")
        keys = [("same", r.image, r.prompt, r.variant)]
        if r.seed is not None:
            keys.append(("seed", r.variant, r.prompt_id, r.seed))
        for key in keys:
            if key in first:
                what = "image, prompt and variant" if key[0] == "same" else "variant, prompt_id and seed"
                r.fail(f"duplicate of row {first[key]} (same {what})")
            else:
                first.setdefault(key, r.row)


def scan_folder(folder: Path) -> list[Row]:
    """One row per image under ``folder`` (recursively, sorted; hidden files skipped); the
    first-level subfolder is the variant, the prompt comes from the image (A1111 ``parameters``,
    ComfyUI ``prompt`` JSON) or a sidecar ``.txt`` with the same stem."""
    paths = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )
    rows = []
    for number, p in enumerate(paths, 1):
        rel = p.relative_to(folder)
        row = Row(row=number, image=rel.as_posix(), path=p, prompt=None)
        row.variant = rel.parts[0] if len(rel.parts) > 1 else DEFAULT_VARIANT
        prompt, seed = embedded_prompt(p)
        sidecar = p.with_suffix(".txt")
        if prompt is None and sidecar.is_file():
            prompt = sidecar.read_text(encoding="utf-8", errors="replace").strip() or None
        row.prompt, row.seed = prompt, seed
        if prompt is None:
            row.fail("no prompt found (no A1111 'parameters', no ComfyUI 'prompt', no sidecar .txt)")
        rows.append(row)
    return rows


def embedded_prompt(path: Path) -> tuple[str | None, int | None]:
    """``(prompt, seed)`` from an image's text chunks, ``(None, None)`` when there are none."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            info = dict(im.info)
    except Exception:
        return None, None  # unreadable: the decoder reports it with the reason
    params = info.get("parameters")
    if isinstance(params, str) and params.strip():
        return a1111_prompt(params)
    graph = info.get("prompt")
    if isinstance(graph, str):
        return comfyui_prompt(graph)
    return None, None


_SEED = re.compile(r"(?:^|,\s*)Seed:\s*(-?\d+)")


def a1111_prompt(text: str) -> tuple[str | None, int | None]:
    """Prompt and seed from A1111's ``parameters`` text: the prompt is everything before the
    ``Negative prompt:`` line (or before the final ``Steps: ...`` line)."""
    lines = text.strip().split("\n")
    seed = None
    if lines and lines[-1].startswith("Steps:"):
        if m := _SEED.search(lines[-1]):
            seed = int(m.group(1))
        lines = lines[:-1]
    prompt_lines = []
    for line in lines:
        if line.startswith("Negative prompt:"):
            break
        prompt_lines.append(line)
    prompt = "\n".join(prompt_lines).strip()
    return (prompt or None), seed


SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")


def comfyui_prompt(graph_json: str) -> tuple[str | None, int | None]:
    """Positive prompt and seed from ComfyUI's API-format ``prompt`` graph: the text of the
    ``CLIPTextEncode`` node wired to a sampler's ``positive`` input (else the first one).

    Example:
        >>> comfyui_prompt('{"3": {"class_type": "KSampler", "inputs": {"seed": 7, "positive": ["6", 0]}},'
        ...                ' "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox"}}}')
        ('a fox', 7)
    """
    try:
        graph = json.loads(graph_json)
    except ValueError:
        return None, None
    if not isinstance(graph, dict):
        return None, None
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, dict)}

    def text_of(node_id: Any, depth: int = 0) -> str | None:
        node = nodes.get(str(node_id))
        if node is None or depth > 8:
            return None
        inputs = node.get("inputs") or {}
        for key in ("text", "text_g", "value", "string", "conditioning", "positive"):
            v = inputs.get(key)
            if isinstance(v, str):
                return v
            if isinstance(v, list) and v:
                found = text_of(v[0], depth + 1)
                if found is not None:
                    return found
        return None

    for node in nodes.values():
        if node.get("class_type") in SAMPLERS:
            inputs = node.get("inputs") or {}
            pos = inputs.get("positive")
            prompt = text_of(pos[0]) if isinstance(pos, list) and pos else None
            seed = inputs.get("seed", inputs.get("noise_seed"))
            if prompt is not None:
                return prompt, seed if isinstance(seed, int) else None
    for node in nodes.values():
        if "CLIPTextEncode" in str(node.get("class_type")) and isinstance((node.get("inputs") or {}).get("text"), str):
            return node["inputs"]["text"], None
    return None, None
