"""Tests for osml.core.metrics and osml.core.similarity: alignment, spread, CKA, ridge probe."""

from __future__ import annotations

import numpy as np
import pytest

from osml.core.metrics import pairwise, paper_similarity, ridge_probe_r2, spread
from osml.core.similarity import centered_alignment, linear_cka, strict_alignment


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_strict_alignment_of_identical_is_one() -> None:
    e = np.random.default_rng(0).standard_normal((50, 6))

    assert strict_alignment(e, e) == pytest.approx(1.0, abs=1e-12)


def test_strict_alignment_of_negated_is_minus_one() -> None:
    e = np.random.default_rng(1).standard_normal((50, 6))

    assert strict_alignment(e, -e) == pytest.approx(-1.0, abs=1e-12)


def test_strict_alignment_is_mean_of_per_step_cosines_by_hand() -> None:
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 1.0]])  # cos 1 then 0

    assert strict_alignment(a, b) == pytest.approx(0.5)


def test_centered_alignment_ignores_shared_offset() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 8))
    b = rng.standard_normal((300, 8))
    offset = 50.0 * rng.standard_normal(8)

    strict_before, centred_before = strict_alignment(a, b), centered_alignment(a, b)
    strict_after, centred_after = (
        strict_alignment(a + offset, b + offset),
        centered_alignment(a + offset, b + offset),
    )

    assert abs(strict_before) < 0.2
    assert strict_after > 0.9
    assert centred_after == pytest.approx(centred_before, abs=1e-9)


def test_centered_alignment_of_identical_is_one() -> None:
    e = np.random.default_rng(3).standard_normal((40, 4)) + 7.0

    assert centered_alignment(e, e) == pytest.approx(1.0, abs=1e-12)


def test_paper_similarity_of_identical_pair_is_one() -> None:
    e = np.random.default_rng(4).standard_normal((30, 5))

    assert paper_similarity([e, e.copy()]) == pytest.approx(1.0)


def test_paper_similarity_squares_away_the_sign() -> None:
    e = np.random.default_rng(5).standard_normal((30, 5))

    assert paper_similarity([e, -e]) == pytest.approx(1.0)


def test_paper_similarity_includes_the_diagonal() -> None:
    # Exactly orthogonal at every step: off-diagonal 0, diagonal 1 -> mean of [[1,0],[0,1]] = 0.5.
    a = np.tile([1.0, 0.0], (10, 1))
    b = np.tile([0.0, 1.0], (10, 1))

    assert paper_similarity([a, b]) == pytest.approx(0.5)


def test_paper_similarity_of_independent_agents_is_at_least_half() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((100, 16)), rng.standard_normal((100, 16))

    assert paper_similarity([a, b]) >= 0.5


def test_paper_similarity_of_one_agent_is_one() -> None:
    assert paper_similarity([np.ones((3, 2))]) == 1.0


def test_spread_of_constant_rows_is_zero() -> None:
    e = np.tile([3.0, -1.0, 2.0], (20, 1))

    assert spread(e) == pytest.approx(0.0, abs=1e-12)


def test_spread_of_zero_mean_rows_is_one() -> None:
    x = np.random.default_rng(7).standard_normal((20, 3))
    e = x - x.mean(axis=0)

    assert spread(e) == pytest.approx(1.0, abs=1e-12)


def test_spread_by_hand() -> None:
    # rows [1,0] and [3,0]: mean [2,0]; variation energy 1 per row, total energy (1 + 9) / 2 = 5.
    e = np.array([[1.0, 0.0], [3.0, 0.0]])

    assert spread(e) == pytest.approx(0.2)


def test_spread_of_all_zero_is_zero() -> None:
    assert spread(np.zeros((4, 3))) == 0.0


def test_linear_cka_invariant_to_rotation_and_scale() -> None:
    rng = np.random.default_rng(8)
    a = rng.standard_normal((200, 6))
    b = a @ rng.standard_normal((6, 6)) + 0.5 * rng.standard_normal((200, 6))
    q = random_rotation(6, rng)

    base = linear_cka(a, b)

    assert linear_cka(a, b @ q) == pytest.approx(base, abs=1e-10)
    assert linear_cka(a, 7.5 * b) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.0 * a @ random_rotation(6, rng), b) == pytest.approx(base, abs=1e-10)


def test_linear_cka_is_one_for_rotated_scaled_shifted_copy() -> None:
    rng = np.random.default_rng(9)
    a = rng.standard_normal((150, 5))
    b = 0.2 * a @ random_rotation(5, rng) + 10.0

    assert linear_cka(a, b) == pytest.approx(1.0, abs=1e-10)


def test_linear_cka_is_symmetric_and_bounded() -> None:
    rng = np.random.default_rng(10)
    a = rng.standard_normal((80, 4))
    b = a @ rng.standard_normal((4, 7)) + rng.standard_normal((80, 7))

    value = linear_cka(a, b)

    assert value == pytest.approx(linear_cka(b, a), abs=1e-12)
    assert 0.0 <= value <= 1.0


def test_linear_cka_small_for_independent_noise() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((5000, 8)), rng.standard_normal((5000, 8))

    assert linear_cka(a, b) < 0.1


def test_linear_cka_of_constant_is_zero() -> None:
    a = np.random.default_rng(12).standard_normal((20, 3))

    assert linear_cka(a, np.ones((20, 3))) == 0.0


def test_ridge_probe_r2_near_one_for_linear_target() -> None:
    rng = np.random.default_rng(13)
    w = rng.standard_normal(6)
    x_train, x_test = rng.standard_normal((400, 6)) * 3 + 1, rng.standard_normal((200, 6)) * 3 + 1
    y_train, y_test = x_train @ w + 4.0, x_test @ w + 4.0

    assert ridge_probe_r2(x_train, y_train, x_test, y_test) > 0.999


def test_ridge_probe_r2_averages_over_targets() -> None:
    rng = np.random.default_rng(14)
    x_train, x_test = rng.standard_normal((400, 4)), rng.standard_normal((200, 4))
    w = rng.standard_normal((4, 2))
    # target 0 is linear in x, target 1 is independent noise: mean R^2 about 0.5
    y_train = np.column_stack([x_train @ w[:, 0], rng.standard_normal(400)])
    y_test = np.column_stack([x_test @ w[:, 0], rng.standard_normal(200)])

    assert ridge_probe_r2(x_train, y_train, x_test, y_test) == pytest.approx(0.5, abs=0.05)


def test_ridge_probe_r2_near_zero_or_below_for_independent_target() -> None:
    rng = np.random.default_rng(15)
    x_train, x_test = rng.standard_normal((400, 6)), rng.standard_normal((400, 6))
    y_train, y_test = rng.standard_normal(400), rng.standard_normal(400)

    assert ridge_probe_r2(x_train, y_train, x_test, y_test) < 0.05


def test_ridge_probe_r2_leaves_out_targets_constant_on_the_test_set() -> None:
    rng = np.random.default_rng(17)
    x_train, x_test = rng.standard_normal((400, 4)), rng.standard_normal((200, 4))
    w = rng.standard_normal(4)
    rare = np.zeros(400)
    rare[7] = 5.0  # a pixel lit once in training and never in the test rows
    y_train = np.column_stack([x_train @ w, rare])
    y_test = np.column_stack([x_test @ w, np.zeros(200)])

    r2 = ridge_probe_r2(x_train, y_train, x_test, y_test)

    assert r2 == pytest.approx(ridge_probe_r2(x_train, y_train[:, 0], x_test, y_test[:, 0]))
    assert r2 > 0.99
    assert np.isnan(ridge_probe_r2(x_train, rare, x_test, np.zeros(200)))


def test_pairwise_covers_every_ordered_pair() -> None:
    rng = np.random.default_rng(16)
    embs = {"a": rng.standard_normal((10, 3)), "b": rng.standard_normal((10, 3))}
    embs["c"] = -embs["a"]

    table = pairwise(embs)

    assert set(table) == {"a", "b", "c"}
    assert all(set(row) == {"a", "b", "c"} for row in table.values())
    assert table["a"]["a"] == pytest.approx(1.0)
    assert table["a"]["c"] == pytest.approx(-1.0)
    assert table["a"]["b"] == pytest.approx(table["b"]["a"])


def test_pairwise_uses_the_given_function() -> None:
    rng = np.random.default_rng(17)
    embs = {"a": rng.standard_normal((30, 3)), "b": rng.standard_normal((30, 3))}

    table = pairwise(embs, fn=linear_cka)

    assert table["a"]["b"] == pytest.approx(linear_cka(embs["a"], embs["b"]))
