"""Each eval metric against an independent numpy computation, on hand-built and random embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hyperkit.eval import metrics as m
from hyperkit.eval.stats import cluster_bootstrap, win_values

finite = st.one_of(st.floats(0.125, 8.0, width=32), st.floats(-8.0, -0.125, width=32))


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.sqrt((v * v).sum(-1, keepdims=True))


@given(arrays(np.float32, (5, 8), elements=finite), arrays(np.float32, (5, 8), elements=finite))
def test_clip_t_is_the_raw_cosine(a, b):
    a64, b64 = a.astype("f8"), b.astype("f8")
    expected = [float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y))) for x, y in zip(a64, b64, strict=True)]
    np.testing.assert_allclose(m.clip_t(a, b), expected, rtol=1e-12, atol=1e-12)


def test_derived_scales_are_labelled_transforms_of_the_cosine():
    cos = np.array([0.31, -0.04, 0.0])
    assert m.clip_score_x100(cos).tolist() == pytest.approx([31.0, -4.0, 0.0])
    assert m.hessel_clipscore(cos).tolist() == pytest.approx([0.775, 0.0, 0.0])  # clamp per sample


def test_torchmetrics_convention_clamps_the_mean_not_each_sample():
    # torchmetrics CLIPScore: update() sums 100*cos per sample, compute() returns max(sum/N, 0)
    cos = np.array([0.30, -0.10, 0.05])
    per_sample_sum = (100 * cos).sum()
    assert m.torchmetrics_clip_score(cos) == pytest.approx(max(per_sample_sum / 3, 0.0))
    assert m.torchmetrics_clip_score(np.array([-0.2, 0.1])) == 0.0
    # ... which differs from clamping each sample first (what Hessel does) when a cosine is < 0
    assert m.torchmetrics_clip_score(cos) < 100 * np.maximum(cos, 0).mean()


def test_clip_i_is_the_mean_over_references():
    rng = np.random.default_rng(1)
    img, refs = rng.standard_normal(16), rng.standard_normal((4, 16))
    expected = np.mean([np.dot(unit(img), unit(r)) for r in refs])
    assert m.clip_i(img, refs) == pytest.approx(expected, abs=1e-12)


def test_directional_and_content_keep_follow_instructpix2pix():
    rng = np.random.default_rng(2)
    x0, x1, t0, t1 = (rng.standard_normal((3, 12)) for _ in range(4))
    di, dt = unit(x1) - unit(x0), unit(t1) - unit(t0)
    expected = [np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(di, dt, strict=True)]
    np.testing.assert_allclose(m.directional(x1, x0, t1, t0), expected, atol=1e-12)
    np.testing.assert_allclose(m.content_keep(x1, x0), (unit(x1) * unit(x0)).sum(1), atol=1e-12)
    # the same text for both: there is no direction, so no number
    assert math.isnan(m.directional(x1[:1], x0[:1], t0[:1], t0[:1])[0])


def test_diversity_is_one_minus_mean_pairwise_cosine():
    rng = np.random.default_rng(3)
    e = rng.standard_normal((5, 10))
    u = unit(e)
    pairs = [np.dot(u[i], u[j]) for i in range(5) for j in range(i + 1, 5)]
    assert m.diversity(e) == pytest.approx(1 - np.mean(pairs), abs=1e-12)
    assert m.diversity(np.tile(e[:1], (3, 1))) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(m.diversity(e[:1]))


def _cmmd_loops(x, y, sigma=10.0):
    """CMMD written out with explicit loops: 1000 * biased MMD² with exp(-|a-b|²/(2σ²))."""
    x, y = unit(x), unit(y)

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * sigma**2))

    kxx = sum(k(a, b) for a in x for b in x) / len(x) ** 2
    kyy = sum(k(a, b) for a in y for b in y) / len(y) ** 2
    kxy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return 1000 * (kxx + kyy - 2 * kxy)


def test_cmmd_matches_loops_and_the_mean_shift_identity():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((20, 16)), rng.standard_normal((20, 16)) + 0.5
    assert m.cmmd(x, y) == pytest.approx(_cmmd_loops(x, y), rel=1e-9)
    # to first order CMMD ≈ 10·‖mean(X̂) − mean(Ŷ)‖² (σ = 10, ×1000)
    shift = 10 * float(((unit(x).mean(0) - unit(y).mean(0)) ** 2).sum())
    assert m.cmmd(x, y) == pytest.approx(shift, rel=0.02)
    assert m.cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert m.cmmd(x[:10], x[10:]) > 0  # the biased estimator: positive for one distribution


def test_bootstrap_is_seeded_and_resamples_prompts():
    rng = np.random.default_rng(5)
    values = rng.normal(0.3, 0.05, 40)
    prompts = np.repeat(np.arange(10).astype(str), 4)
    first = cluster_bootstrap(values, prompts)
    assert first == cluster_bootstrap(values, prompts)  # fixed seed: reproducible to the bit
    mean, lo, hi = first
    assert mean == pytest.approx(values.mean())
    assert lo < mean < hi
    # the same bootstrap by hand: resample the 10 prompts, mean over their images
    r = np.random.default_rng(0)
    idx = r.integers(0, 10, size=(2000, 10))
    sums = np.array([values[prompts == str(p)].sum() for p in range(10)])
    means = sums[idx].sum(1) / (4 * 10)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)
    # seeds of one prompt move together: the interval over prompts is wider than over images
    clustered = np.repeat(rng.normal(0.3, 0.05, 10), 4)
    lo_c, hi_c = cluster_bootstrap(clustered, prompts)[1:]
    lo_i, hi_i = cluster_bootstrap(clustered, np.arange(40).astype(str))[1:]
    assert hi_c - lo_c > 1.5 * (hi_i - lo_i)


def test_bootstrap_edge_cases_and_win_values():
    assert all(math.isnan(v) for v in cluster_bootstrap(np.array([np.nan]), np.array(["a"])))
    assert cluster_bootstrap(np.array([0.2, 0.4]), np.array(["a", "a"])) == pytest.approx((0.3, 0.3, 0.3))
    assert win_values(np.array([0.2, 0.0, -1.0])).tolist() == [1.0, 0.5, 0.0]
