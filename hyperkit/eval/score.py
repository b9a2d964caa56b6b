"""From embeddings to the report's tables: per image, per variant (with CIs) and paired.

The per-image frame carries the embeddings in three object columns (``_emb_image``,
``_emb_text``, ``_emb_target``) until it is written, so the metrics that need other rows
(content keep and direction against the base variant, diversity, CMMD) are computed by the same
code whether the rows come from one run or from merged shards.

Example:
    >>> pair_keys(pd.DataFrame({"variant": ["a", "a", "b"], "prompt_id": ["p", "p", "p"],
    ...                         "seed": pd.array([None, None, None], dtype="Int64")})).tolist()
    ['#0', '#1', '#0']
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from hyperkit.eval import metrics as m
from hyperkit.eval.stats import N_RESAMPLES, cluster_bootstrap, win_values

EMB_COLUMNS = ("_emb_image", "_emb_text", "_emb_target")
#: Per-image metric columns, in report order (``clip_t`` is the raw cosine, the contract's column).
IMAGE_METRICS = ("clip_t", "clip_t_x100", "clip_t_hessel", "clip_i", "content_keep", "directional")
#: Metrics compared between a variant and the baseline variant (the others are relative already).
PAIRED_METRICS = ("clip_t", "clip_i")


def pair_keys(frame: pd.DataFrame) -> pd.Series:
    """The key that pairs an image with its base-variant partner within a prompt: the seed, or
    (without seeds) the image's position among its variant's images of that prompt."""
    occurrence = frame.groupby(["variant", "prompt_id"], sort=False, dropna=False).cumcount()
    seeds = frame["seed"]
    return pd.Series(
        [f"seed={s}" if not pd.isna(s) else f"#{k}" for s, k in zip(seeds, occurrence, strict=True)],
        index=frame.index,
        dtype=object,
    )


def _stack(col: pd.Series, rows: Any) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=np.float64) for v in col.loc[rows]])


def _valid(col: pd.Series) -> pd.Series:
    return col.map(lambda v: v is not None and not (isinstance(v, float)) and bool(np.isfinite(v).all()))


def image_metrics(frame: pd.DataFrame, references: dict[int, list[np.ndarray]]) -> None:
    """Fill CLIP-T (raw and derived) and CLIP-I in place, for rows whose embeddings exist."""
    ok = _valid(frame["_emb_image"]) & _valid(frame["_emb_text"])
    for c in IMAGE_METRICS:
        frame[c] = np.nan
    if ok.any():
        idx = frame.index[ok]
        cos = m.clip_t(_stack(frame["_emb_image"], idx), _stack(frame["_emb_text"], idx))
        frame.loc[idx, "clip_t"] = cos
        frame.loc[idx, "clip_t_x100"] = m.clip_score_x100(cos)
        frame.loc[idx, "clip_t_hessel"] = m.hessel_clipscore(cos)
    for i, refs in references.items():
        if ok.loc[i] and refs:
            frame.loc[i, "clip_i"] = m.clip_i(frame.loc[i, "_emb_image"], np.stack(refs))


def cross_metrics(frame: pd.DataFrame, baseline: str | None) -> None:
    """Content keep and directional similarity against the baseline variant's image of the same
    prompt_id and pair key (seed), in place; NaN without a partner or for the baseline itself."""
    frame["content_keep"] = np.nan
    frame["directional"] = np.nan
    if baseline is None:
        return
    keys = pair_keys(frame)
    ok = _valid(frame["_emb_image"]) & _valid(frame["_emb_text"]) & (frame["error"] == "")
    base: dict[tuple[Any, str], Any] = {}
    for i in frame.index[ok & (frame["variant"] == baseline)]:
        base.setdefault((frame.at[i, "prompt_id"], keys[i]), i)
    rows, partners = [], []
    for i in frame.index[ok & (frame["variant"] != baseline)]:
        j = base.get((frame.at[i, "prompt_id"], keys[i]))
        if j is not None:
            rows.append(i)
            partners.append(j)
    if not rows:
        return
    img, base_img = _stack(frame["_emb_image"], rows), _stack(frame["_emb_image"], partners)
    frame.loc[rows, "content_keep"] = m.content_keep(img, base_img)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        frame.loc[rows, "directional"] = m.directional(
            img, base_img, _stack(frame["_emb_target"], rows), _stack(frame["_emb_text"], partners)
        )


def summarize(
    frame: pd.DataFrame,
    baseline: str | None,
    reference_embeddings: np.ndarray | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
) -> tuple[pd.DataFrame, list[str]]:
    """Per (variant, metric): images, prompts, mean, std and the bootstrap 95% CI over prompts;
    plus per-prompt diversity and CMMD (against the baseline variant, else the references)."""
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    scored = frame[frame["error"] == ""] if "error" in frame else frame
    for variant, g in scored.groupby("variant", sort=False):
        for metric in IMAGE_METRICS:
            vals = g[metric].to_numpy(dtype=np.float64)
            if np.isnan(vals).all():
                continue
            mean, lo, hi = cluster_bootstrap(vals, g["prompt_id"].to_numpy(dtype=object), n_resamples=n_resamples)
            keep = ~np.isnan(vals)
            out.append(_line(variant, metric, int(keep.sum()), g["prompt_id"][keep].nunique(), mean, vals, lo, hi))
        div = _diversity(g)
        if div.size:
            pids = np.arange(div.size).astype(str)
            mean, lo, hi = cluster_bootstrap(div, pids, n_resamples=n_resamples)
            out.append(_line(variant, "diversity", len(g), int((~np.isnan(div)).sum()), mean, div, lo, hi))
        cm = _cmmd(scored, str(variant), baseline, reference_embeddings, notes)
        if cm is not None:
            out.append(_line(variant, "cmmd", len(g), g["prompt_id"].nunique(), cm, np.array([cm])))
    columns = ["variant", "metric", "n_images", "n_prompts", "mean", "std", "ci_low", "ci_high"]
    return pd.DataFrame(out, columns=columns), notes


def _line(
    variant: Any,
    metric: str,
    n: int,
    prompts: int,
    mean: float,
    vals: np.ndarray,
    lo: float = np.nan,
    hi: float = np.nan,
) -> dict[str, Any]:
    clean = vals[~np.isnan(vals)]
    std = float(clean.std(ddof=1)) if clean.size > 1 else float("nan")
    return {
        "variant": str(variant),
        "metric": metric,
        "n_images": n,
        "n_prompts": int(prompts),
        "mean": mean,
        "std": std,
        "ci_low": lo,
        "ci_high": hi,
    }


def _diversity(group: pd.DataFrame) -> np.ndarray:
    vals = []
    ok = _valid(group["_emb_image"])
    for _, g in group[ok].groupby("prompt_id", sort=False):
        if len(g) >= 2:
            vals.append(m.diversity(_stack(g["_emb_image"], g.index)))
    return np.asarray(vals, dtype=np.float64)


def _cmmd(
    scored: pd.DataFrame, variant: str, baseline: str | None, refs: np.ndarray | None, notes: list[str]
) -> float | None:
    ok = _valid(scored["_emb_image"])
    x = scored[ok & (scored["variant"] == variant)]
    if baseline is not None and variant != baseline:
        y_rows = scored[ok & (scored["variant"] == baseline)]
        if len(x) < 2 or len(y_rows) < 2:
            return None
        y, against = _stack(y_rows["_emb_image"], y_rows.index), f"baseline variant '{baseline}'"
    elif baseline is None and refs is not None and len(refs) >= 2:
        y, against = refs, "the reference images"
    else:
        return None
    if len(x) != len(y):
        notes.append(
            f"CMMD of variant '{variant}' ({len(x)} images) against {against} ({len(y)} images): sample sizes "
            "differ; the biased estimator is only comparable between runs of equal size"
        )
    return m.cmmd(_stack(x["_emb_image"], x.index), y)


def compare(frame: pd.DataFrame, baseline: str, *, n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Each variant against the baseline, paired on (prompt_id, seed): mean difference
    (variant − baseline) with its bootstrap CI over prompts, and the win rate (ties count ½)."""
    columns = [
        "variant",
        "baseline",
        "metric",
        "n_pairs",
        "n_prompts",
        "delta_mean",
        "ci_low",
        "ci_high",
        "win_rate",
        "win_ci_low",
        "win_ci_high",
    ]
    scored = frame[frame["error"] == ""].copy()
    scored["_pair"] = pair_keys(scored)
    base = scored[scored["variant"] == baseline]
    out = []
    for variant, g in scored.groupby("variant", sort=False):
        if variant == baseline:
            continue
        joined = g.merge(base, on=["prompt_id", "_pair"], suffixes=("", "_base"))
        for metric in PAIRED_METRICS:
            if joined.empty or joined[metric].isna().all():
                continue
            delta = (joined[metric] - joined[f"{metric}_base"]).to_numpy(dtype=np.float64)
            keep = ~np.isnan(delta)
            pids = joined["prompt_id"].to_numpy(dtype=object)
            mean, lo, hi = cluster_bootstrap(delta, pids, n_resamples=n_resamples)
            win, wlo, whi = cluster_bootstrap(win_values(delta), pids, n_resamples=n_resamples)
            n_prompts = int(joined["prompt_id"][keep].nunique())
            out.append([variant, baseline, metric, int(keep.sum()), n_prompts, mean, lo, hi, win, wlo, whi])
    return pd.DataFrame(out, columns=columns)
