"""CLIP metrics over embeddings: pure numpy, one function per metric, formula in the docstring.

Every function takes *raw* embeddings (any scale) and L2-normalises them itself in float64, so
callers cannot forget it and the result does not depend on how the embeddings were stored.
Definitions follow the papers' own code (see ``docs/eval.md``): cosines are reported raw; the
×100 and Hessel ×2.5 forms are labelled derived values, never the canonical number.

Example:
    >>> import numpy as np
    >>> round(float(clip_t(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]))[0]), 4)
    0.7071
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: CMMD's kernel bandwidth and output scale (Jayasumana et al. 2024, google-research ``cmmd/``).
CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0
#: Hessel et al.'s CLIPScore weight (a readability rescale of the clamped cosine).
HESSEL_W = 2.5


def normalize(x: ArrayLike) -> NDArray[np.float64]:
    """Rows scaled to unit L2 norm (float64); a zero row stays zero (its cosines become 0, not NaN).

    Example:
        >>> normalize([[3.0, 4.0]]).tolist()
        [[0.6, 0.8]]
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.where(norms == 0, 1.0, norms)


def clip_t(image: ArrayLike, text: ArrayLike) -> NDArray[np.float64]:
    """CLIP-T per row: ``cos(E_I(x_i), E_T(c_i)) = ê_I·ê_T`` (raw cosine, range [-1, 1]).

    Example:
        >>> clip_t([[1.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [1.0, 0.0]]).tolist()
        [1.0, 0.0]
    """
    return np.einsum("nd,nd->n", normalize(image), normalize(text))


def clip_score_x100(cos: ArrayLike) -> NDArray[np.float64]:
    """The "×100" scale: ``100·cos`` per image, *not* clamped (torchmetrics clamps only its mean:
    ``max(mean(100·cos), 0)``, see :func:`torchmetrics_clip_score`).

    Example:
        >>> clip_score_x100([0.31, -0.02]).round(6).tolist()
        [31.0, -2.0]
    """
    return 100.0 * np.asarray(cos, dtype=np.float64)


def hessel_clipscore(cos: ArrayLike, w: float = HESSEL_W) -> NDArray[np.float64]:
    """Hessel et al.'s CLIP-S per image: ``w·max(cos, 0)`` with ``w = 2.5`` (clamp per sample).

    Example:
        >>> hessel_clipscore([0.3, -0.1]).round(6).tolist()
        [0.75, 0.0]
    """
    return w * np.maximum(np.asarray(cos, dtype=np.float64), 0.0)


def torchmetrics_clip_score(cos: ArrayLike) -> float:
    """torchmetrics ``CLIPScore`` as implemented: ``max(mean_i(100·cos_i), 0)`` (clamp of the mean).

    Example:
        >>> torchmetrics_clip_score([0.3, -0.5])
        0.0
    """
    return max(float(np.mean(100.0 * np.asarray(cos, dtype=np.float64))), 0.0)


def clip_i(image: ArrayLike, references: ArrayLike) -> float:
    """CLIP-I of one image: the mean over references r of ``cos(E_I(x), E_I(r))`` (DreamBooth's
    definition averages the full generated × reference matrix; per image this is its row mean).

    Example:
        >>> clip_i([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0]])
        0.5
    """
    return float((normalize(references) @ normalize(image)[0]).mean())


def content_keep(image: ArrayLike, base: ArrayLike) -> NDArray[np.float64]:
    """Content keep per pair: ``cos(E_I(x₁), E_I(x₀))`` between an image and the base variant's
    image of the same prompt and seed (InstructPix2Pix's ``sim_image``).

    Example:
        >>> content_keep([[1.0, 1.0]], [[1.0, 0.0]]).round(4).tolist()
        [0.7071]
    """
    return clip_t(image, base)


def directional(image: ArrayLike, base_image: ArrayLike, text: ArrayLike, base_text: ArrayLike) -> NDArray[np.float64]:
    """Directional similarity per pair (InstructPix2Pix ``sim_direction``):
    ``cos(ê_I(x₁) − ê_I(x₀), ê_T(c₁) − ê_T(c₀))``. NaN where the text direction is zero (the same
    text for both: no direction to follow).

    Example:
        >>> directional([[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]).round(4).tolist()
        [1.0]
    """
    d_img = normalize(image) - normalize(base_image)
    d_txt = normalize(text) - normalize(base_text)
    norm_i = np.linalg.norm(d_img, axis=1)
    norm_t = np.linalg.norm(d_txt, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.einsum("nd,nd->n", d_img, d_txt) / (norm_i * norm_t)
    out[(norm_t < 1e-12) | (norm_i < 1e-12)] = np.nan
    return out


def diversity(images: ArrayLike) -> float:
    """Intra-prompt diversity of k ≥ 2 images (seeds): ``1 − (2/(k(k−1)))·Σ_{i<j} cos(e_i, e_j)``;
    NaN for fewer than two images.

    Example:
        >>> diversity([[1.0, 0.0], [0.0, 1.0]])
        1.0
    """
    e = normalize(images)
    k = e.shape[0]
    if k < 2:
        return float("nan")
    gram = e @ e.T
    return float(1.0 - gram[np.triu_indices(k, 1)].mean())


def cmmd(x: ArrayLike, y: ArrayLike, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD = ``scale·MMD²_b(X, Y)`` with the Gaussian kernel ``k(a,b) = exp(−‖a−b‖²/(2σ²))`` on
    L2-normalised embeddings, σ = 10, scale 1000 and the *biased* estimator (diagonals included):
    ``mean(K_XX) + mean(K_YY) − 2·mean(K_XY)``. It is > 0 even for two samples of one
    distribution and depends on the sample sizes, so compare runs of equal size only.

    Example:
        >>> cmmd([[1.0, 0.0]], [[1.0, 0.0]])
        0.0
    """
    a, b = normalize(x), normalize(y)
    gamma = 1.0 / (2.0 * sigma**2)

    def kernel_mean(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
        # ‖p−q‖² = ‖p‖² + ‖q‖² − 2p·q; clipped at 0 against rounding
        d2 = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * (p @ q.T)
        return float(np.exp(-gamma * np.maximum(d2, 0.0)).mean())

    return scale * (kernel_mean(a, a) + kernel_mean(b, b) - 2.0 * kernel_mean(a, b))
