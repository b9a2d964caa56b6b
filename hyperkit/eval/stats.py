"""Bootstrap confidence intervals over prompts, and paired comparisons.

The prompt is the resampling unit: images of one prompt (its seeds) are not independent, so a
bootstrap over images would give intervals that are too narrow. Every interval here resamples
whole prompts ("cluster bootstrap") with a fixed seed, and reports the percentile interval of the
image-level mean, so the point estimate is the plain mean of the per-image column (what the CI
gate compares) and the interval accounts for prompt clustering.

Example:
    >>> import numpy as np
    >>> lo, hi = cluster_bootstrap(np.array([1.0, 2.0, 3.0, 4.0]), np.array(["a", "a", "b", "b"]))[1:]
    >>> bool(lo <= 2.5 <= hi)
    True
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: Default number of bootstrap resamples and the seed that makes every interval reproducible.
N_RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95


def cluster_bootstrap(
    values: NDArray[np.float64],
    clusters: NDArray[np.object_] | NDArray[np.str_],
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """``(mean, ci_low, ci_high)``: the mean of ``values`` and its percentile bootstrap interval,
    resampling whole clusters (prompts) with replacement. NaN values are ignored; one cluster
    gives a zero-width interval (nothing to resample), none gives NaNs.

    Example:
        >>> cluster_bootstrap(np.array([0.5, 0.5]), np.array(["p", "q"]))
        (0.5, 0.5, 0.5)
    """
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    values = values[keep]
    labels = np.asarray(clusters)[keep]
    if values.size == 0:
        return (float("nan"),) * 3
    mean = float(values.mean())
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(np.float64)
    if sums.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, sums.size, size=(n_resamples, sums.size))
    boot = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return mean, float(lo), float(hi)


def win_values(delta: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-pair wins for a win rate: 1 where the candidate is better (delta > 0), 0.5 for a tie, 0.

    Example:
        >>> win_values(np.array([0.1, 0.0, -0.2])).tolist()
        [1.0, 0.5, 0.0]
    """
    d = np.asarray(delta, dtype=np.float64)
    out = np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))
    out[np.isnan(d)] = np.nan
    return out
