"""Downstream probes: how much of a label a set of features carries. Pure numpy.

A probe is a small classifier fitted on labelled feature rows (embeddings, or raw windows
flattened to rows) and scored on other rows. Two are offered, both on features standardised
with the *fit* rows' mean and standard deviation (a constant feature is only centred):

* :class:`LinearProbe`: ridge regression onto the one-hot labels, in closed form, predicting
  the class with the largest output. ``alpha`` is relative to the number of fit rows.
* :class:`KnnProbe`: the ``k`` nearest fit rows in Euclidean distance vote (``k = 5``); a tie
  goes to the tied class with the nearest row.

A fitted probe keeps its standardisation, so :meth:`predict` on another agent's rows scores
them *in the fitting agent's space*, with no recalibration: that is the transfer test.

Rows of sliding windows overlap (window ``i`` and ``i + d`` share ``w - d`` steps), so a random
split of the rows into fit and score sets puts nearly the same window on both sides.
:func:`block_split` cuts the rows into contiguous blocks instead, fits on alternate blocks,
scores on the others and drops the first ``w - 1`` rows of every block after the first, so no
fit row shares a step with a score row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_BLOCKS",
    "PROBES",
    "KnnProbe",
    "LinearProbe",
    "accuracy",
    "block_split",
    "fit_probe",
    "majority_share",
]

DEFAULT_BLOCKS = 10
PROBES = ("linear", "knn")


def block_split(n_rows: int, window: int, blocks: int = DEFAULT_BLOCKS) -> tuple[np.ndarray, ...]:
    """Fit and score row indices: ``blocks`` contiguous blocks, even ones fit, odd ones score.

    Row ``i`` is the window of steps ``i .. i + window - 1``; the first ``window - 1`` rows of
    every block but the first are dropped, so a fit row and a score row never share a step.
    ValueError if either side would be empty.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if blocks < 2:
        raise ValueError(f"blocks must be at least 2 (one to fit, one to score), got {blocks}")
    gap = window - 1
    fit: list[np.ndarray] = []
    score: list[np.ndarray] = []
    for b, rows in enumerate(np.array_split(np.arange(n_rows, dtype=np.int64), blocks)):
        kept = rows if b == 0 else rows[gap:]
        (fit if b % 2 == 0 else score).append(kept)
    fit_rows, score_rows = np.concatenate(fit), np.concatenate(score)
    if not len(fit_rows) or not len(score_rows):
        raise ValueError(
            f"{n_rows} rows in {blocks} blocks, {gap} dropped at each block start, leave "
            f"{len(fit_rows)} to fit and {len(score_rows)} to score; both must be non-empty"
        )
    return fit_rows, score_rows


def _rows(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        arr = arr.reshape(len(arr), -1)  # windows (n, w, F) -> rows (n, w*F)
    return arr


def _labels(y: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {labels.shape}")
    return labels


@dataclass(frozen=True)
class _Standardiser:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> _Standardiser:
        sd = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(sd > 1e-12, sd, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = _rows(x)
        if rows.shape[1] != len(self.mean):
            raise ValueError(f"probe fitted on {len(self.mean)} features, got {rows.shape[1]}")
        return np.asarray((rows - self.mean) / self.scale)


@dataclass(frozen=True)
class LinearProbe:
    """Ridge regression onto one-hot labels; :meth:`predict` gives the arg-max class."""

    standardise: _Standardiser
    classes: np.ndarray
    coef: np.ndarray  # (features, classes)
    intercept: np.ndarray  # (classes,)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float = 1e-2) -> LinearProbe:
        rows = _rows(x)
        labels = _labels(y, len(rows))
        classes, index = np.unique(labels, return_inverse=True)
        onehot = np.eye(len(classes))[index]
        std = _Standardiser.of(rows)
        z = std(rows)
        target_mean = onehot.mean(axis=0)
        gram = z.T @ z + alpha * len(z) * np.eye(z.shape[1])
        coef = np.linalg.solve(gram, z.T @ (onehot - target_mean))
        return cls(std, classes, coef, target_mean)

    def predict(self, x: np.ndarray) -> np.ndarray:
        scores = self.standardise(x) @ self.coef + self.intercept
        return np.asarray(self.classes[np.argmax(scores, axis=1)])


@dataclass(frozen=True)
class KnnProbe:
    """``k`` nearest neighbours in Euclidean distance on standardised features."""

    standardise: _Standardiser
    rows: np.ndarray  # the standardised fit rows
    index: np.ndarray  # class index of each fit row
    classes: np.ndarray
    k: int

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, k: int = 5) -> KnnProbe:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        rows = _rows(x)
        labels = _labels(y, len(rows))
        classes, index = np.unique(labels, return_inverse=True)
        std = _Standardiser.of(rows)
        return cls(std, std(rows), index, classes, min(k, len(rows)))

    def predict(self, x: np.ndarray, chunk: int = 1024) -> np.ndarray:
        queries = self.standardise(x)
        out = np.empty(len(queries), dtype=np.int64)
        fit_sq = np.sum(self.rows**2, axis=1)
        n_classes = len(self.classes)
        for start in range(0, len(queries), chunk):
            q = queries[start : start + chunk]
            # |q - r|^2 up to the |q|^2 term, which does not change the order
            dist = fit_sq[None, :] - 2.0 * q @ self.rows.T
            near = np.argsort(dist, axis=1, kind="stable")[:, : self.k]  # nearest first
            votes = self.index[near]  # (queries, k)
            counts = np.zeros((len(q), n_classes))
            first = np.full((len(q), n_classes), float(self.k))
            row = np.arange(len(q))
            for rank in range(self.k - 1, -1, -1):  # last write wins: the nearest rank
                counts[row, votes[:, rank]] += 1.0
                first[row, votes[:, rank]] = rank
            # counts are whole numbers and first / (k + 1) < 1: a tie goes to the nearest row
            out[start : start + len(q)] = np.argmax(counts - first / (self.k + 1), axis=1)
        return np.asarray(self.classes[out])


def fit_probe(kind: str, x: np.ndarray, y: np.ndarray) -> LinearProbe | KnnProbe:
    """A fitted ``linear`` or ``knn`` probe with the default settings."""
    if kind == "linear":
        return LinearProbe.fit(x, y)
    if kind == "knn":
        return KnnProbe.fit(x, y)
    raise ValueError(f"unknown probe {kind!r}; use one of {', '.join(PROBES)}")


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose prediction equals the label."""
    pred, true = np.asarray(predicted), np.asarray(labels)
    if pred.shape != true.shape or not len(true):
        raise ValueError(f"need equal, non-empty shapes, got {pred.shape} and {true.shape}")
    return float(np.mean(pred == true))


def majority_share(fit_labels: np.ndarray, score_labels: np.ndarray) -> float:
    """The accuracy of always answering the fit rows' most frequent class (the floor)."""
    classes, counts = np.unique(np.asarray(fit_labels), return_counts=True)
    return float(np.mean(np.asarray(score_labels) == classes[np.argmax(counts)]))
