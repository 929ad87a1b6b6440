"""How alike two agents' embeddings of the same steps are. Pure numpy.

Every function takes embeddings as (steps, dim) arrays whose row t is the same logical step for
both sides. The osmosis operator (:mod:`osml.core.osmosis`), the learner's affinity
(:mod:`osml.core.learner`) and the reported figures (:mod:`osml.core.metrics`) all read them here.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "centered_alignment",
    "linear_cka",
    "linear_residual",
    "same_step_cosine",
    "strict_alignment",
]

_EPS = 1e-12


def same_step_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between row t of ``a`` and row t of ``b`` for every t: (n, d), (n, d) -> (n,)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (steps, dim) arrays of one shape, got {a.shape} and {b.shape}")
    num = np.einsum("nd,nd->n", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos: np.ndarray = num / np.maximum(den, _EPS)
    return cos


def strict_alignment(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over steps of the plain cosine of same-step embeddings (no abs, no square)."""
    return float(np.mean(same_step_cosine(a, b)))


def centered_alignment(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`strict_alignment` after removing each agent's own mean embedding.

    A constant offset shared by all embeddings inflates the plain cosine; this figure is blind
    to it and only rewards agreement in what varies from step to step.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return strict_alignment(a - a.mean(axis=0), b - b.mean(axis=0))


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear centred kernel alignment of two representations of the same steps, in [0, 1].

    Invariant to rotations and isotropic scaling of either side, so it says whether two agents'
    embeddings carry the same information even when their embedding spaces are not (yet) aligned.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    cross = np.linalg.norm(a.T @ b) ** 2
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    if den <= 0.0:
        return 0.0
    return float(cross / den)


def linear_residual(x: np.ndarray, y: np.ndarray) -> float:
    """How much of ``x`` no affine map of ``y`` explains: ``|x_c - y_c B| / |x_c|`` for the least
    squares ``B``, where ``_c`` removes each side's mean; in [0, 1].

    0 means ``x`` is exactly an affine transform of ``y`` (a rotated, rescaled or shifted copy);
    independent embeddings give about 1. For a constant ``x`` there is nothing to explain and the
    result is 1 (no evidence of copying).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0] or x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"need two (steps, dim) arrays of as many steps, got {x.shape}, {y.shape}")
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    total = float(np.sum(xc**2))
    if total <= _EPS * max(1, xc.size):
        return 1.0
    b, *_ = np.linalg.lstsq(yc, xc, rcond=None)
    left = float(np.sum((xc - yc @ b) ** 2))
    return float(np.sqrt(min(max(left / total, 0.0), 1.0)))
