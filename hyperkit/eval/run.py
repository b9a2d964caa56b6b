"""``evaluate()``: inputs → model → embeddings → the report's tables.

Example:
    >>> parse_shard("2/4")
    (2, 4)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError, UsageProblem
from hyperkit.eval.inputs import Row, load_rows
from hyperkit.eval.stats import N_RESAMPLES

PROVENANCE = (
    "model",
    "pretrained_sha256",
    "hyperkit_version",
    "torch_version",
    "open_clip_version",
    "device",
    "precision",
)


@dataclass
class EvalResult:
    """The report: ``frame`` per image (with embeddings until written), ``summary`` per variant
    and metric, ``comparisons`` against the baseline variant, and what the run noticed."""

    frame: Any  # pandas.DataFrame
    summary: Any
    comparisons: Any
    provenance: dict[str, str]
    baseline: str | None
    source: str
    warnings: list[str] = field(default_factory=list)
    shard: tuple[int, int] | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def bad_rows(self) -> Any:
        """The rows that could not be (fully) scored, with their reason in ``error``."""
        return self.frame[self.frame["error"] != ""]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1-based) as a tuple, or a usage error."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UsageProblem(f"--shard {text}: expected i/n, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise UsageProblem(f"--shard {text}: i must be between 1 and n")
    return i, n


def evaluate(
    source: str | os.PathLike[str],
    model: str,
    pretrained: str | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 32,
    workers: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    baseline_variant: str | None = None,
    shard: tuple[int, int] | None = None,
    strict: bool = False,
    n_resamples: int = N_RESAMPLES,
    progress: Callable[[int, float], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    clip: Any = None,
) -> EvalResult:
    """Score every image of a manifest or folder with an open_clip model.

    Bad rows keep their place with the reason in ``error`` (``strict`` turns them into a
    :class:`BadInputError`). ``baseline_variant`` defaults to a variant named ``base`` if any.
    ``clip`` is a model already loaded with :func:`hyperkit.eval.model.load_clip` (``model`` and
    ``pretrained`` are then not used), to score several sets with one model.
    """
    src = str(source)
    rows = load_rows(source)
    if shard is not None:
        i, n = shard
        lo, hi = (len(rows) * (i - 1)) // n, (len(rows) * i) // n
        rows = rows[lo:hi]
    variants = list(dict.fromkeys(r.variant for r in rows))
    if baseline_variant is not None and baseline_variant not in variants:
        raise BadInputError(
            f"{src}: unknown baseline variant '{baseline_variant}' (variants: {', '.join(variants)})",
            hint="--baseline-variant must name a value of the 'variant' column (a subfolder for a folder)",
        )
    baseline_variant = default_baseline(variants, baseline_variant)
    if strict:
        _raise_if_bad(src, rows)
    from hyperkit.eval.model import load_clip

    if clip is None:
        clip = load_clip(model, pretrained, device=device, precision=precision)
    notes = list(clip.warnings)
    frame, ref_embs, stats = _embed(clip, rows, batch_size, workers, cache_dir, use_cache, progress, on_total, notes)
    if strict:
        _raise_if_bad(src, rows)
    result = finish(frame, baseline_variant, ref_embs, clip.provenance, src, n_resamples=n_resamples, notes=notes)
    result.shard, result.stats = shard, stats
    return result


def default_baseline(variants: list[str], given: str | None) -> str | None:
    """The baseline variant: the one given, else a variant named ``base`` when there are others.

    Example:
        >>> default_baseline(["base", "hn"], None), default_baseline(["base"], None)
        ('base', None)
    """
    if given is None and "base" in variants and len(variants) > 1:
        return "base"
    return given


def _raise_if_bad(src: str, rows: list[Row]) -> None:
    bad = [r for r in rows if r.error]
    if bad:
        listed = "; ".join(f"row {r.row} ({r.image or '?'}): {r.error}" for r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise BadInputError(f"{src}: {len(bad)} bad row(s) with --strict: {listed}{more}")


def _embed(
    clip: Any,
    rows: list[Row],
    batch_size: int,
    workers: int | None,
    cache_dir: str | os.PathLike[str] | None,
    use_cache: bool,
    progress: Callable[[int, float], None] | None,
    on_total: Callable[[int], None] | None,
    notes: list[str],
) -> tuple[Any, np.ndarray | None, dict[str, Any]]:
    import pandas as pd

    from hyperkit.eval.cache import EmbeddingCache, default_cache_dir
    from hyperkit.eval.encode import encode_images, encode_texts
    from hyperkit.eval.model import count_tokens

    # every distinct file once (references are usually shared by many rows)
    paths: dict[Path, int] = {}
    for r in rows:
        if not r.error:
            paths.setdefault(r.path, len(paths))
        for ref in r.references:
            if ref.is_file():
                paths.setdefault(ref, len(paths))
    cache = None
    if use_cache:
        identity = {k: clip.provenance[k] for k in ("model", "pretrained_sha256", "precision")}
        identity["device"] = clip.device.split(":")[0]
        identity["preprocess"] = repr(clip.preprocess)
        cache = EmbeddingCache(cache_dir or default_cache_dir(), identity)
    if on_total:
        on_total(len(paths))
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    emb, errors, digests = encode_images(
        clip, list(paths), batch_size=batch_size, workers=n_workers, cache=cache, progress=progress
    )
    texts: dict[str, int] = {}
    for r in rows:
        if r.prompt is not None:
            texts.setdefault(r.prompt, len(texts))
            texts.setdefault(_target(r), len(texts))
    text_emb = encode_texts(clip, list(texts)) if texts else None
    tokens = dict(zip(texts, count_tokens(clip.tokenizer, list(texts), clip.context_length), strict=True))
    long = [t for t in dict.fromkeys(r.prompt for r in rows if r.prompt) if (tokens.get(t) or 0) > clip.context_length]
    if long:
        notes.append(
            f"{len(long)} prompt(s) are longer than the model's {clip.context_length}-token context; they were "
            f"scored on the first {clip.context_length - 2} tokens plus the end token (columns n_tokens, truncated)"
        )
    records, references = [], {}
    all_refs: dict[int, np.ndarray] = {}
    for k, r in enumerate(rows):
        j = paths.get(r.path) if not r.error else None
        if j is not None and errors[j]:
            r.fail(errors[j])
        refs = []
        for ref in r.references:
            q = paths.get(ref)
            if q is not None and not errors[q]:
                refs.append(emb[q])
                all_refs[q] = emb[q]
            elif q is not None:
                r.fail(f"reference {ref}: {errors[q]}")
        references[k] = refs
        n_tok = tokens.get(r.prompt) if r.prompt is not None else None
        records.append(
            {
                "row": r.row,
                "image": r.image,
                "prompt": r.prompt,
                "variant": r.variant,
                "prompt_id": r.prompt_id,
                "seed": r.seed,
                "strength": r.strength,
                "style_prompt": r.style_prompt,
                "reference": "|".join(str(p) for p in r.references) or None,
                "n_tokens": n_tok,
                "truncated": None if n_tok is None else n_tok > clip.context_length,
                "error": r.error,
                "image_sha256": digests[j] if j is not None else "",
                "_emb_image": emb[j] if j is not None and not r.error else None,
                "_emb_text": text_emb[texts[r.prompt]] if text_emb is not None and r.prompt is not None else None,
                "_emb_target": text_emb[texts[_target(r)]] if text_emb is not None and r.prompt is not None else None,
                **{f"x_{k2}" if k2 in _RESERVED else k2: v for k2, v in r.extra.items()},
            }
        )
    frame = pd.DataFrame.from_records(records)
    frame["seed"] = frame["seed"].astype("Int64")
    frame["strength"] = frame["strength"].astype("Float64").astype("float64")
    frame["n_tokens"] = frame["n_tokens"].astype("Int64")
    frame["truncated"] = frame["truncated"].astype("boolean")
    from hyperkit.eval.score import image_metrics

    image_metrics(frame, references)
    stats = {"images": len(paths), "cache_hits": cache.hits if cache else 0, "texts": len(texts)}
    refs_arr = np.stack(list(all_refs.values())) if all_refs else None
    return frame, refs_arr, stats


_RESERVED = {
    "row",
    "error",
    "image_sha256",
    "n_tokens",
    "truncated",
    "clip_t",
    "clip_t_x100",
    "clip_t_hessel",
    "clip_i",
    "content_keep",
    "directional",
    *PROVENANCE,
}


def _target(r: Row) -> str:
    """The text the variant aims for: the prompt plus its style phrase (for directional similarity)."""
    return f"{r.prompt}, {r.style_prompt}" if r.style_prompt else str(r.prompt)


def finish(
    frame: Any,
    baseline: str | None,
    reference_embeddings: np.ndarray | None,
    provenance: dict[str, str],
    source: str,
    *,
    n_resamples: int = N_RESAMPLES,
    notes: list[str] | None = None,
) -> EvalResult:
    """Cross-row metrics, provenance columns, summary and comparisons (shared with merging)."""
    import pandas as pd

    from hyperkit.eval.score import IMAGE_METRICS, compare, cross_metrics, summarize

    cross_metrics(frame, baseline)
    for key in PROVENANCE:
        frame[key] = provenance.get(key, "")
    lead = ["row", "image", "prompt", "variant", "prompt_id", "seed", "strength", *IMAGE_METRICS]
    tail = ["n_tokens", "truncated", "error", "image_sha256", "style_prompt", "reference", *PROVENANCE]
    rest = [c for c in frame.columns if c not in lead and c not in tail]
    frame = frame[[*lead, *tail, *rest]]
    summary, cm_notes = summarize(frame, baseline, reference_embeddings, n_resamples=n_resamples)
    comparisons = compare(frame, baseline, n_resamples=n_resamples) if baseline else pd.DataFrame()
    return EvalResult(frame, summary, comparisons, provenance, baseline, source, [*(notes or []), *cm_notes])
