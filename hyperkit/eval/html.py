"""The HTML report: one self-contained file (inline CSS, images as data URIs, SVG plots).

No script and no external resource, so it opens offline, in a CI artifact viewer, or attached
to an e-mail. Sections (each a ``<section id=...>``): ``summary``, ``comparisons``, ``plots``
(one SVG per metric: every image as a dot per variant, the mean and its 95% CI as a bar),
``grid`` (thumbnails, prompts × variants, every seed of a cell side by side), ``problems``.

Example:
    >>> svg_strip("clip_t", {"a": [0.1, 0.2]}, {"a": (0.15, 0.1, 0.2)}).startswith("<svg")
    True
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

THUMB = 112  # px, longest side
MAX_PROMPTS = 200  # grid rows; a bigger run shows the first ones and says so
PLOT_METRICS = ("clip_t", "clip_i", "content_keep", "directional")
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #ddd;padding:3px 8px;font-size:13px}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid td{vertical-align:top}.grid img{margin:2px;border:1px solid #ccc}.prompt{max-width:260px}
.cell{display:flex;flex-wrap:wrap}.fig{display:inline-block;text-align:center;font-size:11px;margin:2px}
.bad{color:#a00}.prov{color:#555;font-size:12px}svg{margin:4px 16px 16px 0}
"""


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _esc(v)
    return "" if math.isnan(f) else f"{f:.4f}"


def html_table(frame: Any, css_class: str = "") -> str:
    """A DataFrame as an escaped HTML table (numbers right-aligned, 4 decimals)."""
    import pandas as pd

    cols = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_float_dtype(frame[c]) for c in frame.columns]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = []
    for rec in frame.itertuples(index=False):
        cells = []
        for v, is_num in zip(rec, numeric, strict=True):
            text = "" if v is None or (not isinstance(v, str) and pd.isna(v)) else (_num(v) if is_num else _esc(v))
            cells.append(f'<td class="num">{text}</td>' if is_num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def thumbnail(path: Path) -> str | None:
    """A small JPEG data URI of the image, or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as src:
            im = src.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except Exception:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def svg_strip(
    metric: str, values: dict[str, list[float]], ci: dict[str, tuple[float, float, float]], width: int = 420
) -> str:
    """A strip plot: one row per variant, a dot per image, the mean (tick) and its CI (bar)."""
    allv = [v for vs in values.values() for v in vs if not math.isnan(v)]
    lo, hi = (min(allv), max(allv)) if allv else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad, left, row_h = (hi - lo) * 0.05, 110, 26
    lo, hi = lo - pad, hi + pad
    height = 30 + row_h * len(values) + 24

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (width - left - 12)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(metric)} per variant"><title>{_esc(metric)}</title>',
        f'<text x="4" y="16" font-size="13" font-weight="bold">{_esc(metric)}</text>',
    ]
    for k, (variant, vs) in enumerate(values.items()):
        y = 30 + k * row_h + row_h / 2
        parts.append(f'<text x="4" y="{y + 4:.1f}" font-size="11">{_esc(variant)[:16]}</text>')
        parts.append(f'<line x1="{left}" x2="{width - 12}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        for i, v in enumerate(vs):
            if not math.isnan(v):
                jitter = ((i * 7919) % 11 - 5) * 1.2  # deterministic spread, no randomness
                parts.append(f'<circle cx="{x(v):.1f}" cy="{y + jitter:.1f}" r="2.5" fill="#4c78a8" opacity="0.6"/>')
        if variant in ci and not math.isnan(ci[variant][0]):
            mean, c_lo, c_hi = ci[variant]
            if not (math.isnan(c_lo) or math.isnan(c_hi)):
                parts.append(
                    f'<line class="ci" x1="{x(c_lo):.1f}" x2="{x(c_hi):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                    'stroke="#e45756" stroke-width="3"/>'
                )
            parts.append(
                f'<line class="mean" x1="{x(mean):.1f}" x2="{x(mean):.1f}" y1="{y - 9:.1f}" y2="{y + 9:.1f}" '
                'stroke="#e45756" stroke-width="2"/>'
            )
    axis_y = 30 + row_h * len(values) + 4
    for t in np.linspace(lo + pad, hi - pad, 5):
        parts.append(f'<text x="{x(t):.1f}" y="{axis_y + 12}" font-size="10" text-anchor="middle">{t:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(result: Any) -> str:
    """The whole report page as one string."""
    from hyperkit.eval.report import public

    frame = public(result.frame)
    base = Path(result.source).parent if Path(result.source).suffix else Path(result.source)
    prov = " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in result.provenance.items())
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hyperkit eval: {_esc(result.source)}</title><style>{CSS}</style></head><body>",
        f"<h1>hyperkit eval: {_esc(result.source)}</h1>",
        f'<p class="prov">{prov}</p>',
        '<section id="summary"><h2>Summary</h2><p>Means with bootstrap 95% confidence intervals over prompts.</p>',
        html_table(result.summary),
        "</section>",
    ]
    if result.comparisons is not None and len(result.comparisons):
        out += [
            f"<section id=\"comparisons\"><h2>Paired comparison against '{_esc(result.baseline)}'</h2>",
            html_table(result.comparisons),
            "</section>",
        ]
    out.append('<section id="plots"><h2>Distributions</h2>')
    scored = frame[frame["error"] == ""]
    for metric in PLOT_METRICS:
        if metric not in scored or scored[metric].isna().all():
            continue
        values = {str(v): g[metric].astype(float).tolist() for v, g in scored.groupby("variant", sort=False)}
        s = result.summary[result.summary["metric"] == metric]
        ci = {str(r.variant): (float(r.mean), float(r.ci_low), float(r.ci_high)) for r in s.itertuples()}
        out.append(svg_strip(metric, values, ci))
    out.append("</section>")
    out.append(_grid(frame, base))
    bad = frame[frame["error"] != ""]
    if len(bad):
        out += [
            f'<section id="problems"><h2 class="bad">Rows with problems ({len(bad)})</h2>',
            html_table(bad[["row", "image", "error"]]),
            "</section>",
        ]
    out.append("</body></html>")
    return "\n".join(out)


def _grid(frame: Any, base: Path) -> str:
    variants = list(dict.fromkeys(frame["variant"]))
    prompts = list(dict.fromkeys(frame["prompt_id"]))
    note = ""
    if len(prompts) > MAX_PROMPTS:
        note = f"<p>Showing the first {MAX_PROMPTS} of {len(prompts)} prompts.</p>"
        prompts = prompts[:MAX_PROMPTS]
    head = "<th>prompt</th>" + "".join(f"<th>{_esc(v)}</th>" for v in variants)
    rows = []
    cells = frame.groupby(["prompt_id", "variant"], sort=False, dropna=False)
    groups = dict(iter(cells))
    for pid in prompts:
        first = frame[frame["prompt_id"] == pid].iloc[0]
        tds = [f'<td class="prompt">{_esc(first["prompt"])}</td>']
        for v in variants:
            g = groups.get((pid, v))
            figs = []
            for r in g.itertuples() if g is not None else []:
                p = Path(str(r.image))
                uri = thumbnail(p if p.is_absolute() else base / p) if not r.error else None
                score = "" if r.error or math.isnan(r.clip_t) else f"clip_t {r.clip_t:.3f}"
                label = f"seed {r.seed}" if not _isna(r.seed) else ""
                img = (
                    f'<img src="{uri}" alt="{_esc(r.image)}" title="{_esc(r.image)}">'
                    if uri
                    else f'<span class="bad" title="{_esc(r.error)}">✗</span>'
                )
                figs.append(f'<div class="fig">{img}<br>{_esc(label)} {_esc(score)}</div>')
            tds.append(f'<td><div class="cell">{"".join(figs)}</div></td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (
        '<section id="grid"><h2>Images</h2>'
        + note
        + f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def _isna(v: Any) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))
