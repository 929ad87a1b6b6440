"""Tests for osml.core.probes: the fit/score split, the linear and kNN probes, their scores."""

from __future__ import annotations

import numpy as np
import pytest

from osml.core.probes import (
    KnnProbe,
    LinearProbe,
    accuracy,
    block_split,
    fit_probe,
    majority_share,
)


def blobs(n: int, d: int, classes: int, gap: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` Gaussian clusters ``gap`` apart along random directions."""
    rng = np.random.default_rng(seed)
    centres = gap * rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n)
    return centres[y] + rng.standard_normal((n, d)), y


# ------------------------------------------------------------------------------------ split


@pytest.mark.parametrize(("n", "window", "blocks"), [(100, 1, 2), (1000, 10, 10), (57, 4, 5)])
def test_block_split_never_lets_a_fit_window_share_a_step_with_a_score_window(
    n: int, window: int, blocks: int
) -> None:
    fit, score = block_split(n, window, blocks)

    assert len(fit) and len(score)
    assert not set(fit.tolist()) & set(score.tolist())
    # windows i and j share a step exactly when |i - j| < window
    nearest = np.min(np.abs(fit[:, None] - score[None, :]))
    assert nearest >= window
    assert fit.min() >= 0 and max(fit.max(), score.max()) < n


def test_block_split_alternates_blocks_and_drops_only_the_gap() -> None:
    fit, score = block_split(40, 3, 4)  # blocks of 10 rows; 2 rows dropped at blocks 2, 3, 4

    assert fit.tolist() == [*range(0, 10), *range(22, 30)]
    assert score.tolist() == [*range(12, 20), *range(32, 40)]


def test_block_split_refuses_what_leaves_a_side_empty() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        block_split(10, 8, 2)  # the score block (5 rows) loses 7
    with pytest.raises(ValueError, match="at least 2"):
        block_split(10, 1, 1)


# ----------------------------------------------------------------------------------- linear


def test_linear_probe_separates_well_separated_classes() -> None:
    x, y = blobs(600, 6, 4, gap=6.0, seed=0)

    probe = LinearProbe.fit(x[:300], y[:300])

    assert accuracy(probe.predict(x[300:]), y[300:]) > 0.95


def test_linear_probe_is_at_chance_on_labels_unrelated_to_the_features() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2000, 5)), rng.integers(0, 2, 2000)

    probe = LinearProbe.fit(x[:1000], y[:1000])

    assert abs(accuracy(probe.predict(x[1000:]), y[1000:]) - 0.5) < 0.06


def test_linear_probe_ignores_feature_scale_and_offset() -> None:
    x, y = blobs(400, 4, 3, gap=2.0, seed=2)
    scaled = x * np.array([1e3, 1e-3, 1.0, 7.0]) + np.array([5.0, -2.0, 1e4, 0.0])

    plain = LinearProbe.fit(x[:200], y[:200]).predict(x[200:])
    rescaled = LinearProbe.fit(scaled[:200], y[:200]).predict(scaled[200:])

    assert np.array_equal(plain, rescaled)


def test_linear_probe_matches_the_normal_equations_by_hand() -> None:
    x, y = blobs(120, 3, 3, gap=1.5, seed=3)
    alpha = 0.05

    probe = LinearProbe.fit(x, y, alpha=alpha)

    z = (x - x.mean(axis=0)) / x.std(axis=0)
    onehot = (y[:, None] == np.arange(3)[None, :]).astype(float)
    # ridge on centred targets == least squares on rows stacked with sqrt(alpha n) I
    stacked = np.vstack([z, np.sqrt(alpha * len(z)) * np.eye(3)])
    targets = np.vstack([onehot - onehot.mean(axis=0), np.zeros((3, 3))])
    coef = np.linalg.lstsq(stacked, targets, rcond=None)[0]
    assert np.allclose(probe.coef, coef)
    assert np.array_equal(probe.predict(x), np.argmax(z @ coef + onehot.mean(axis=0), axis=1))


def test_a_constant_feature_does_not_break_the_probes() -> None:
    x, y = blobs(200, 3, 2, gap=4.0, seed=4)
    x = np.hstack([x, np.full((200, 1), 3.0)])

    for kind in ("linear", "knn"):
        pred = fit_probe(kind, x[:100], y[:100]).predict(x[100:])
        assert accuracy(pred, y[100:]) > 0.9


def test_windows_are_flattened_to_rows() -> None:
    x, y = blobs(100, 6, 2, gap=4.0, seed=5)

    flat = LinearProbe.fit(x, y).predict(x)
    windowed = LinearProbe.fit(x.reshape(100, 3, 2), y).predict(x.reshape(100, 3, 2))

    assert np.array_equal(flat, windowed)


def test_a_probe_refuses_rows_of_another_width() -> None:
    x, y = blobs(50, 4, 2, gap=2.0, seed=6)

    probe = LinearProbe.fit(x, y)

    with pytest.raises(ValueError, match="4 features"):
        probe.predict(x[:, :3])


# -------------------------------------------------------------------------------------- kNN


def knn_by_hand(x_fit: np.ndarray, y_fit: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """One query at a time: standardise, sort by distance, count, nearest row breaks ties."""
    mean, sd = x_fit.mean(axis=0), x_fit.std(axis=0)
    fit_z, query_z = (x_fit - mean) / sd, (x - mean) / sd
    out = []
    for q in query_z:
        order = np.argsort(np.sum((fit_z - q) ** 2, axis=1), kind="stable")[:k]
        labels = [int(y_fit[i]) for i in order]
        top = max(labels.count(c) for c in set(labels))
        out.append(next(c for c in labels if labels.count(c) == top))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_knn_probe_agrees_with_a_query_by_query_vote(k: int) -> None:
    x, y = blobs(300, 4, 3, gap=1.0, seed=7)  # overlapping classes: many split votes

    probe = KnnProbe.fit(x[:150], y[:150], k=k)

    expected = knn_by_hand(x[:150], y[:150], x[150:], k)
    assert np.array_equal(probe.predict(x[150:], chunk=16), expected)


def test_knn_tie_goes_to_the_nearest_row() -> None:
    x_fit = np.array([[0.0], [1.0], [3.0], [10.0]])
    y_fit = np.array([7, 8, 8, 7])

    probe = KnnProbe.fit(x_fit, y_fit, k=2)

    # from 0.4 the two nearest are 0 (class 7) and 1 (class 8): one vote each, 7 is nearer
    assert probe.predict(np.array([[0.4], [0.6]])).tolist() == [7, 8]


def test_knn_probe_with_fewer_rows_than_k_uses_them_all() -> None:
    probe = KnnProbe.fit(np.array([[0.0], [1.0], [2.0]]), np.array([1, 1, 2]), k=5)

    assert probe.predict(np.array([[2.0]])).tolist() == [1]


def test_labels_keep_their_values() -> None:
    x, y = blobs(200, 3, 2, gap=5.0, seed=8)
    named = np.where(y == 0, 40, -3)

    for kind in ("linear", "knn"):
        assert set(fit_probe(kind, x, named).predict(x).tolist()) <= {40, -3}


# ---------------------------------------------------------------------------------- scoring


def test_accuracy_and_majority_share() -> None:
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 0])) == 0.5
    assert majority_share(np.array([0, 1, 1]), np.array([1, 0, 0, 0])) == 0.25
    with pytest.raises(ValueError):
        accuracy(np.array([1, 2]), np.array([1]))


def test_unknown_probe() -> None:
    with pytest.raises(ValueError, match="linear, knn"):
        fit_probe("forest", np.zeros((3, 1)), np.zeros(3))
