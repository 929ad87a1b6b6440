"""Figures of merit for embeddings: alignment, collapse, the paper's figure. Pure numpy.

All functions take embeddings as (steps, dim) arrays whose row t is the same logical step for
every agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from osml.core.similarity import same_step_cosine, strict_alignment

__all__ = [
    "pairwise",
    "paper_similarity",
    "ridge_probe_r2",
    "spread",
]


def paper_similarity(embeddings: Sequence[np.ndarray]) -> float:
    """The OSM-L paper's figure for one cluster: the mean of the agent-pair matrix of mean
    same-step ``|cos|^2``, diagonal (ones) included. Reported for comparison only: the square,
    the absolute value and the diagonal all flatter it."""
    k = len(embeddings)
    m = np.ones((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            m[i, j] = m[j, i] = float(np.mean(same_step_cosine(embeddings[i], embeddings[j]) ** 2))
    return float(m.mean())


def spread(e: np.ndarray) -> float:
    """Share of the embeddings' energy that varies across steps: mean |e - mean|^2 / mean |e|^2.

    0 means every step has the same embedding (collapse); 1 means zero mean.
    """
    e = np.asarray(e, dtype=np.float64)
    total = float(np.mean(np.sum(e**2, axis=1)))
    if total == 0.0:
        return 0.0
    return float(np.mean(np.sum((e - e.mean(axis=0)) ** 2, axis=1)) / total)


def ridge_probe_r2(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    alpha: float = 1e-3,
) -> float:
    """R^2 on the test set of a ridge regression fitted on the train set (mean over targets).

    Used as the non-collapse figure: how well an agent's embedding predicts its own window's last
    value. Inputs are standardised with train statistics; ``alpha`` is relative to the sample count.
    A target that is constant on the test set has no R^2 and is left out of the mean (NaN when
    every target is): tabular data such as image pixels often has such columns, and dividing by
    their zero variance gave figures like -1e9.
    """
    tx = np.asarray(train_x, dtype=np.float64)
    ty = np.asarray(train_y, dtype=np.float64).reshape(len(tx), -1)
    vx = np.asarray(test_x, dtype=np.float64)
    vy = np.asarray(test_y, dtype=np.float64).reshape(len(vx), -1)
    mu, sd = tx.mean(axis=0), tx.std(axis=0) + 1e-12
    tx, vx = (tx - mu) / sd, (vx - mu) / sd
    ymu = ty.mean(axis=0)
    xtx = tx.T @ tx + alpha * len(tx) * np.eye(tx.shape[1])
    coef = np.linalg.solve(xtx, tx.T @ (ty - ymu))
    pred = vx @ coef + ymu
    ss_res = np.sum((vy - pred) ** 2, axis=0)
    ss_tot = np.sum((vy - vy.mean(axis=0)) ** 2, axis=0)
    varies = ss_tot > 1e-12 * len(vy)
    if not varies.any():
        return float("nan")
    return float(np.mean(1.0 - ss_res[varies] / ss_tot[varies]))


def pairwise(
    embeddings: Mapping[str, np.ndarray],
    fn: Callable[[np.ndarray, np.ndarray], float] = strict_alignment,
) -> dict[str, dict[str, float]]:
    """``fn`` for every ordered pair of agents, as a nested dict (diagonal included)."""
    ids = list(embeddings)
    return {a: {b: fn(embeddings[a], embeddings[b]) for b in ids} for a in ids}
