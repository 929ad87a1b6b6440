"""Tests for osml.core.osmosis: per-step osmosis weights and targets, against values by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from osml.core.osmosis import (
    osmosis_target,
    osmosis_weights,
    share_votes,
    trimmed_target,
    twin_vote,
)
from osml.core.similarity import linear_residual, same_step_cosine

E = math.e


def two_step_example() -> tuple[np.ndarray, np.ndarray]:
    # own: step 0 points along x, step 1 along y.
    # nb A agrees at step 0 (cos 1) and is orthogonal at step 1 (cos 0); nb B the opposite.
    own = np.array([[1.0, 0.0], [0.0, 1.0]])
    nbs = np.array(
        [
            [[1.0, 0.0], [1.0, 0.0]],  # A
            [[0.0, 1.0], [0.0, 1.0]],  # B
        ]
    )
    return own, nbs


def test_same_step_cosine_by_hand() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])

    got = same_step_cosine(a, b)

    np.testing.assert_allclose(got, [0.0, 1.0, -1.0], atol=1e-12)


def test_same_step_cosine_of_zero_row_is_zero_not_nan() -> None:
    got = same_step_cosine(np.zeros((1, 3)), np.ones((1, 3)))

    assert got.tolist() == [0.0]


@pytest.mark.parametrize("shapes", [((3, 2), (3, 3)), ((3, 2), (2, 2)), ((3,), (3,))])
def test_same_step_cosine_rejects_bad_shapes(
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    with pytest.raises(ValueError):
        same_step_cosine(np.ones(shapes[0]), np.ones(shapes[1]))


def test_weights_match_hand_computation_two_steps() -> None:
    own, nbs = two_step_example()
    z = 2 * E + 1
    # step 0: logits (self 1, A 1, B 0); step 1: (self 1, A 0, B 1); T = 1.
    expected = np.array([[E / z, E / z], [E / z, 1 / z], [1 / z, E / z]])

    w = osmosis_weights(own, nbs, np.array([True, True]), temperature=1.0)

    assert w.shape == (3, 2)
    np.testing.assert_allclose(w, expected, rtol=1e-12)


def test_weights_match_hand_computation_with_temperature() -> None:
    own, nbs = two_step_example()
    t = 0.5
    a, b = math.exp(1 / t), 1.0  # exp(cos / T) for cos 1 and 0
    z = 2 * a + b

    w = osmosis_weights(own, nbs, np.array([True, True]), temperature=t)

    np.testing.assert_allclose(w[:, 0], [a / z, a / z, b / z], rtol=1e-12)
    np.testing.assert_allclose(w[:, 1], [a / z, b / z, a / z], rtol=1e-12)


def test_target_matches_hand_computation_two_steps() -> None:
    own, nbs = two_step_example()
    z = 2 * E + 1
    # step 0: (e*[1,0] + e*[1,0] + 1*[0,1]) / z ; step 1: (e*[0,1] + 1*[1,0] + e*[0,1]) / z
    expected = np.array([[2 * E / z, 1 / z], [1 / z, 2 * E / z]])

    w = osmosis_weights(own, nbs, np.array([True, True]))
    target = osmosis_target(own, nbs, w)

    assert target.dtype == np.float32
    np.testing.assert_allclose(target, expected, rtol=1e-6)


def test_weights_sum_to_one_per_step() -> None:
    rng = np.random.default_rng(1)
    own = rng.standard_normal((40, 6))
    nbs = rng.standard_normal((5, 40, 6))
    members = np.array([True, False, True, True, False])

    w = osmosis_weights(own, nbs, members, temperature=0.3)

    assert w.shape == (6, 40)
    np.testing.assert_allclose(w.sum(axis=0), np.ones(40), atol=1e-12)
    assert np.all(w >= 0)


def test_excluded_neighbours_get_exactly_zero() -> None:
    rng = np.random.default_rng(2)
    own = rng.standard_normal((10, 4))
    nbs = np.stack([own, own * 2.0, rng.standard_normal((10, 4))])
    members = np.array([False, True, False])

    w = osmosis_weights(own, nbs, members)

    assert np.all(w[1] == 0.0)
    assert np.all(w[3] == 0.0)
    # self and the one member have cos 1 at every step, so they split the weight evenly
    np.testing.assert_allclose(w[0], 0.5, rtol=1e-12)
    np.testing.assert_allclose(w[2], 0.5, rtol=1e-12)


def test_no_neighbours_gives_self_only_and_target_is_own() -> None:
    rng = np.random.default_rng(3)
    own = rng.standard_normal((7, 3))
    none = np.zeros((0, 7, 3))

    w = osmosis_weights(own, none, np.zeros(0, dtype=bool))
    target = osmosis_target(own, none, w)

    np.testing.assert_array_equal(w, np.ones((1, 7)))
    np.testing.assert_allclose(target, own.astype(np.float32), rtol=1e-6)


def test_all_excluded_gives_self_only_and_target_is_own() -> None:
    rng = np.random.default_rng(4)
    own = rng.standard_normal((7, 3))
    nbs = rng.standard_normal((3, 7, 3))

    w = osmosis_weights(own, nbs, np.array([False, False, False]))
    target = osmosis_target(own, nbs, w)

    np.testing.assert_array_equal(w[0], np.ones(7))
    np.testing.assert_array_equal(w[1:], np.zeros((3, 7)))
    np.testing.assert_allclose(target, own.astype(np.float32), rtol=1e-6)


def test_identical_neighbour_gets_same_weight_as_self() -> None:
    rng = np.random.default_rng(5)
    own = rng.standard_normal((12, 4))
    nbs = np.stack([own.copy(), rng.standard_normal((12, 4))])

    w = osmosis_weights(own, nbs, np.array([True, True]), temperature=0.7)

    np.testing.assert_allclose(w[1], w[0], rtol=1e-12)
    assert np.all(w[2] < w[0])  # the random one is less similar than cos = 1 at every step


def test_lower_temperature_concentrates_on_more_similar_neighbour() -> None:
    own = np.array([[1.0, 0.0]])
    close = np.array([[1.0, 0.2]])  # cos ~ 0.98
    far = np.array([[0.3, 1.0]])  # cos ~ 0.29
    nbs = np.stack([close, far])
    members = np.array([True, True])

    ratios = []
    for t in (2.0, 1.0, 0.3, 0.05):
        w = osmosis_weights(own, nbs, members, temperature=t)
        ratios.append(w[1, 0] / w[2, 0])

    assert all(r > 1.0 for r in ratios)
    assert all(later > earlier for earlier, later in itertools.pairwise(ratios))
    w_cold = osmosis_weights(own, nbs, members, temperature=0.01)
    assert w_cold[2, 0] < 1e-20


def test_target_is_mean_when_all_have_equal_similarity() -> None:
    # Positive multiples of own all have cos 1 with it: uniform weights, target = plain mean.
    rng = np.random.default_rng(6)
    own = rng.standard_normal((9, 5))
    nbs = np.stack([2.0 * own, 3.0 * own, 6.0 * own])

    w = osmosis_weights(own, nbs, np.ones(3, dtype=bool))
    target = osmosis_target(own, nbs, w)

    np.testing.assert_allclose(w, 0.25, rtol=1e-12)
    np.testing.assert_allclose(target, 3.0 * own, rtol=1e-5)


def test_single_neighbour_may_be_given_without_leading_axis() -> None:
    own, nbs = two_step_example()

    w_flat = osmosis_weights(own, nbs[0], np.array([True]))
    w_stacked = osmosis_weights(own, nbs[:1], np.array([True]))

    np.testing.assert_array_equal(w_flat, w_stacked)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature: float) -> None:
    own, nbs = two_step_example()

    with pytest.raises(ValueError, match="temperature"):
        osmosis_weights(own, nbs, np.array([True, True]), temperature=temperature)


def test_membership_count_mismatch_raises() -> None:
    own, nbs = two_step_example()

    with pytest.raises(ValueError):
        osmosis_weights(own, nbs, np.array([True, True, True]))


def test_neighbour_with_incompatible_size_raises() -> None:
    own = np.ones((4, 3))

    with pytest.raises(ValueError):
        osmosis_weights(own, np.ones((1, 5, 3)), np.array([True]))


def test_neighbour_with_transposed_shape_raises() -> None:
    own = np.ones((4, 2))
    transposed = np.ones((1, 2, 4))  # (k, d, n) instead of (k, n, d)

    with pytest.raises(ValueError):
        osmosis_weights(own, transposed, np.array([True]))


def test_target_rejects_weights_of_wrong_shape() -> None:
    own, nbs = two_step_example()

    with pytest.raises(ValueError, match="weights"):
        osmosis_target(own, nbs, np.full((2, 2), 0.5))


# --- the robust blend -------------------------------------------------------------------------


def test_trimmed_target_by_hand() -> None:
    """Four contributors: the middle two per coordinate; three or two: the weighted mean."""
    own = np.array([[0.0, 10.0]])
    nbs = np.array([[[1.0, 0.0]], [[-5.0, 4.0]], [[3.0, 3.0]]])

    target, share = trimmed_target(own, nbs, np.full((4, 1), 0.25))

    np.testing.assert_allclose(target, [[0.5, 3.5]])
    np.testing.assert_allclose(share[:, 0], [0.25, 0.25, 0.25, 0.25])
    three, share3 = trimmed_target(own, nbs[:2], np.full((3, 1), 1 / 3))
    np.testing.assert_allclose(three, [[-4 / 3, 14 / 3]], rtol=1e-6)
    np.testing.assert_allclose(share3[:, 0], [1 / 3, 1 / 3, 1 / 3])
    two, share2 = trimmed_target(own, nbs[:1], np.array([[0.25], [0.75]]))
    np.testing.assert_allclose(two, [[0.75, 2.5]])
    np.testing.assert_allclose(share2[:, 0], [0.25, 0.75])


def test_trimmed_target_with_five_drops_one_each_side_and_ignores_zero_weights() -> None:
    own = np.array([[0.0]])
    nbs = np.array([[[1.0]], [[2.0]], [[100.0]], [[-50.0]], [[7.0]]])
    w = np.array([[0.2], [0.2], [0.2], [0.2], [0.2], [0.0]])  # the last one is no member

    target, share = trimmed_target(own, nbs, w)

    np.testing.assert_allclose(target, [[1.0]])  # mean of 0, 1, 2
    np.testing.assert_allclose(share[:, 0], [1 / 3, 1 / 3, 1 / 3, 0, 0, 0])


@pytest.mark.parametrize("seed", range(5))
def test_one_hostile_contributor_cannot_push_the_target_out_of_the_honest_range(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d, k = 40, 4, int(rng.integers(3, 7))  # own plus k neighbours, the last one hostile
    own = rng.normal(size=(n, d))
    honest = rng.normal(size=(k - 1, n, d))
    hostile = rng.normal(scale=1e3, size=(1, n, d))
    w = rng.uniform(0.1, 1.0, size=(k + 1, n))
    w /= w.sum(axis=0)

    target, share = trimmed_target(own, np.concatenate([honest, hostile]), w)

    values = np.concatenate([own[None], honest])
    assert np.all(target >= values.min(axis=0) - 1e-5)
    assert np.all(target <= values.max(axis=0) + 1e-5)
    np.testing.assert_allclose(share.sum(axis=0), 1.0)


def test_trimmed_target_rejects_bad_input() -> None:
    own, nbs = two_step_example()
    with pytest.raises(ValueError, match="trim"):
        trimmed_target(own, nbs, np.full((3, 2), 1 / 3), trim=-1)
    with pytest.raises(ValueError, match="weights"):
        trimmed_target(own, nbs, np.full((2, 2), 0.5))


def test_share_votes_groups_linked_ids_in_order() -> None:
    assert share_votes(["a", "b", "c", "d"], [("c", "b"), ("d", "zz"), ("a", "d")]) == [
        ["a", "d"],
        ["b", "c"],
    ]
    assert share_votes(["a", "b"], []) == [["a"], ["b"]]
    assert share_votes([], [("a", "b")]) == []


def test_linear_residual_sees_through_affine_maps_only() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=(300, 5))
    m = rng.normal(size=(5, 5))
    assert linear_residual(y @ m + 7.0, y) == pytest.approx(0.0, abs=1e-9)  # any affine map
    noisy = y @ m + 0.01 * np.std(y @ m) * rng.normal(size=y.shape)
    assert 0.005 < linear_residual(noisy, y) < 0.02  # about the noise
    assert linear_residual(rng.normal(size=(300, 5)), y) > 0.9  # unrelated
    assert linear_residual(np.tanh(2 * y), y) > 0.2  # bent, not affine
    assert linear_residual(np.ones((300, 5)), y) == 1.0  # nothing to explain
    with pytest.raises(ValueError):
        linear_residual(y[:10], y)


def test_twin_vote_is_the_twins_mean_where_they_have_rows() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 6, 3)).astype(np.float32)
    present = np.ones((2, 6), dtype=bool)
    present[1, 0] = False  # b has no row 0: the vote there is a's
    present[:, 5] = False  # nobody has row 5: 0
    vote = twin_vote(np.stack([a, b]), present)
    np.testing.assert_allclose(vote[1:5], (a[1:5] + b[1:5]) / 2, rtol=1e-6)
    np.testing.assert_array_equal(vote[0], a[0])
    np.testing.assert_array_equal(vote[5], np.zeros(3))
    # three twins: the coordinate median, so one far-off twin cannot drag the vote
    c = a + 1e3
    vote = twin_vote(np.stack([a, b, c]), np.ones((3, 6), dtype=bool))
    np.testing.assert_allclose(vote, np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c)))
