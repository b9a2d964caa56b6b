"""The CI gate: ``--fail-under METRIC=VALUE`` and ``--max-drop METRIC=VALUE``.

``--fail-under`` compares the mean of the per-image column over every scored row (DESIGN §5),
and with ``per_variant`` each variant's mean too. ``--max-drop`` compares each variant with the
same variant of an older report (``against``; paired on prompt_id and seed where both have them)
or, without one, with the baseline variant of this run. ``gate_on`` picks the statistic:
``mean`` (the point estimate), ``ci_high`` (fail only when the whole 95% interval is past the
threshold: a significant failure) or ``ci_low`` (fail unless the whole interval clears it).

Example:
    >>> parse_thresholds(["clip_t=0.28"], "--fail-under")
    {'clip_t': 0.28}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hyperkit.errors import UsageProblem
from hyperkit.eval.stats import N_RESAMPLES, cluster_bootstrap

GATE_STATS = ("mean", "ci_low", "ci_high")
SET_METRICS = ("diversity", "cmmd")


def parse_thresholds(items: list[str] | tuple[str, ...], option: str) -> dict[str, float]:
    """``["clip_t=0.28", ...]`` as a dict, or a usage error naming the bad item."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name.strip() or math.isnan(number):
            raise UsageProblem(f"{option} {item}: expected METRIC=VALUE, e.g. clip_t=0.28")
        out[name.strip()] = number
    return out


def _known_metrics(frame: Any) -> list[str]:
    import pandas as pd

    skip = {"row", "seed", "n_tokens", "strength"}
    cols = [
        str(c)
        for c in frame.columns
        if pd.api.types.is_float_dtype(frame[c]) and str(c) not in skip and not str(c).startswith("_")
    ]
    return [*cols, *SET_METRICS]


def _stat(values: np.ndarray, prompts: np.ndarray, gate_on: str, n_resamples: int) -> tuple[float, float, float]:
    return cluster_bootstrap(values, prompts, n_resamples=n_resamples)


def check(
    result: Any,
    *,
    fail_under: dict[str, float],
    max_drop: dict[str, float],
    against: Any | None = None,
    gate_on: str = "mean",
    per_variant: bool = False,
    n_resamples: int = N_RESAMPLES,
) -> Any:
    """One row per check: ``check, variant, metric, mean, ci_low, ci_high, threshold, passed``."""
    import pandas as pd

    if gate_on not in GATE_STATS:
        raise UsageProblem(f"--gate-on {gate_on}: expected one of {', '.join(GATE_STATS)}")
    frame = result.frame[result.frame["error"] == ""]
    known = _known_metrics(result.frame)
    for metric in [*fail_under, *max_drop]:
        if metric not in known:
            raise UsageProblem(f"no metric '{metric}' to gate on (available: {', '.join(known)})")
    rows: list[dict[str, Any]] = []
    for metric, floor in fail_under.items():
        groups: list[tuple[str, Any]] = []
        if metric in SET_METRICS:
            groups = [(str(v), None) for v in result.summary["variant"].unique()]
        else:
            groups = [("(all)", frame)]
            if per_variant:
                groups += [(str(v), g) for v, g in frame.groupby("variant", sort=False)]
        for variant, g in groups:
            if g is None:
                s = result.summary[(result.summary["variant"] == variant) & (result.summary["metric"] == metric)]
                if s.empty:
                    continue
                mean, lo, hi = (float(s.iloc[0][k]) for k in ("mean", "ci_low", "ci_high"))
            else:
                mean, lo, hi = _stat(
                    g[metric].to_numpy(dtype=np.float64), g["prompt_id"].to_numpy(dtype=object), gate_on, n_resamples
                )
            value = {"mean": mean, "ci_low": lo, "ci_high": hi}[gate_on]
            passed = not (math.isnan(value) or value < floor)
            rows.append(_row(f"{metric} ≥ {floor:g}", variant, metric, mean, lo, hi, floor, gate_on, passed))
    for metric, drop in max_drop.items():
        for variant, mean, lo, hi, what in _deltas(result, frame, metric, against, n_resamples):
            value = {"mean": mean, "ci_low": lo, "ci_high": hi}[gate_on]
            passed = not (math.isnan(value) or value < -drop)
            rows.append(
                _row(f"{metric} drop ≤ {drop:g} vs {what}", variant, metric, mean, lo, hi, -drop, gate_on, passed)
            )
    return pd.DataFrame(
        rows, columns=["check", "variant", "metric", "mean", "ci_low", "ci_high", "threshold", "gate_on", "passed"]
    )


def _row(
    name: str, variant: str, metric: str, mean: float, lo: float, hi: float, threshold: float, on: str, ok: bool
) -> dict[str, Any]:
    return {
        "check": name,
        "variant": variant,
        "metric": metric,
        "mean": mean,
        "ci_low": lo,
        "ci_high": hi,
        "threshold": threshold,
        "gate_on": on,
        "passed": ok,
    }


def _deltas(
    result: Any, frame: Any, metric: str, against: Any | None, n: int
) -> list[tuple[str, float, float, float, str]]:
    """(variant, delta mean, ci_low, ci_high, compared-with) for each variant: new − old."""
    if against is None:
        if result.baseline is None:
            raise UsageProblem("--max-drop needs --against OLD_REPORT or a baseline variant (--baseline-variant)")
        cmp = result.comparisons
        sel = cmp[cmp["metric"] == metric] if len(cmp) else cmp
        return [
            (str(r.variant), float(r.delta_mean), float(r.ci_low), float(r.ci_high), f"'{result.baseline}'")
            for r in sel.itertuples()
        ]
    from hyperkit.eval.score import pair_keys

    old = against[against["error"].fillna("") == ""].copy() if "error" in against else against.copy()
    if metric not in old:
        raise UsageProblem(f"--against report has no column '{metric}'")
    new = frame.copy()
    for f in (new, old):
        f["_pair"] = pair_keys(f) if "seed" in f else ""
    out = []
    for variant, g in new.groupby("variant", sort=False):
        o = old[old["variant"] == variant]
        if o.empty:
            continue
        joined = g.merge(o, on=["prompt_id", "_pair"], suffixes=("", "_old"))
        if len(joined):  # paired: same prompts and seeds in both runs
            delta = (joined[metric] - joined[f"{metric}_old"]).to_numpy(dtype=np.float64)
            mean, lo, hi = cluster_bootstrap(delta, joined["prompt_id"].to_numpy(dtype=object), n_resamples=n)
        else:  # unpaired: difference of means, independent bootstraps
            a = cluster_bootstrap(g[metric].to_numpy(np.float64), g["prompt_id"].to_numpy(object), n_resamples=n)
            b = cluster_bootstrap(o[metric].to_numpy(np.float64), o["prompt_id"].to_numpy(object), n_resamples=n)
            mean = a[0] - b[0]
            half = math.hypot(a[2] - a[1], b[2] - b[1]) / 2  # normal approximation of the two widths
            lo, hi = mean - half, mean + half
        out.append((str(variant), mean, lo, hi, "old report"))
    return out
