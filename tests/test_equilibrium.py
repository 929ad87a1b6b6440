"""Tests for osml.equilibrium: relative change and the patience-based detector."""

from __future__ import annotations

import numpy as np
import pytest

from osml.equilibrium import EquilibriumDetector, relative_change


def test_relative_change_by_hand() -> None:
    # previous rows have norms 5 and 5 (mean 5); the rows move by 0 and 2 (mean 1) -> 0.2
    previous = np.array([[3.0, 4.0], [0.0, 5.0]])
    current = np.array([[3.0, 4.0], [0.0, 7.0]])

    assert relative_change(previous, current) == pytest.approx(0.2)


def test_relative_change_of_identical_is_zero() -> None:
    e = np.random.default_rng(0).standard_normal((10, 3))

    assert relative_change(e, e.copy()) == 0.0


def test_relative_change_is_scale_free() -> None:
    rng = np.random.default_rng(1)
    p, c = rng.standard_normal((10, 3)), rng.standard_normal((10, 3))

    assert relative_change(100.0 * p, 100.0 * c) == pytest.approx(relative_change(p, c))


def test_relative_change_uses_previous_as_scale() -> None:
    # from [[1, 0]] to [[3, 0]]: distance 2 over previous norm 1 -> 2; the other way 2 / 3
    a, b = np.array([[1.0, 0.0]]), np.array([[3.0, 0.0]])

    assert relative_change(a, b) == pytest.approx(2.0)
    assert relative_change(b, a) == pytest.approx(2.0 / 3.0)


def test_relative_change_from_zero_is_finite() -> None:
    value = relative_change(np.zeros((2, 2)), np.ones((2, 2)))

    assert np.isfinite(value) and value > 0


def test_relative_change_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        relative_change(np.zeros((3, 2)), np.zeros((2, 3)))


def test_first_round_is_not_steady() -> None:
    det = EquilibriumDetector(tolerance=0.1, patience=1)

    assert det.update(None, ["a"]) is False
    assert det.streak == 0


def test_needs_patience_consecutive_steady_rounds() -> None:
    det = EquilibriumDetector(tolerance=0.02, patience=3)
    det.update(None, ["a", "b"])

    flags = [det.update(0.01, ["a", "b"]) for _ in range(4)]

    assert flags == [False, False, True, True]
    assert det.streak == 4
    assert det.at_equilibrium


def test_big_change_resets_the_streak() -> None:
    det = EquilibriumDetector(tolerance=0.02, patience=2)
    det.update(None, ["a"])
    det.update(0.01, ["a"])
    assert det.update(0.01, ["a"]) is True

    assert det.update(0.5, ["a"]) is False
    assert det.streak == 0
    assert det.update(0.01, ["a"]) is False
    assert det.update(0.01, ["a"]) is True


def test_change_equal_to_tolerance_is_not_steady() -> None:
    det = EquilibriumDetector(tolerance=0.02, patience=1)
    det.update(None, ["a"])

    assert det.update(0.02, ["a"]) is False
    assert det.update(0.0199, ["a"]) is True


def test_subcontext_change_resets_the_streak() -> None:
    det = EquilibriumDetector(tolerance=0.02, patience=2)
    det.update(None, ["a"])
    det.update(0.0, ["a"])
    assert det.update(0.0, ["a"]) is True

    assert det.update(0.0, ["a", "b"]) is False
    assert det.streak == 0
    det.update(0.0, ["a", "b"])
    assert det.update(0.0, ["a", "b"]) is True


def test_subcontext_order_does_not_matter() -> None:
    det = EquilibriumDetector(tolerance=0.02, patience=2)
    det.update(None, ["b", "a"])

    det.update(0.0, ["a", "b"])

    assert det.update(0.0, ("b", "a")) is True


def test_none_change_after_start_resets() -> None:
    det = EquilibriumDetector(tolerance=0.02, patience=1)
    det.update(None, ["a"])
    assert det.update(0.0, ["a"]) is True

    assert det.update(None, ["a"]) is False


@pytest.mark.parametrize("kwargs", [{"tolerance": 0.0}, {"tolerance": -1.0}, {"patience": 0}])
def test_detector_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EquilibriumDetector(**kwargs)  # type: ignore[arg-type]


def test_to_dict() -> None:
    det = EquilibriumDetector()
    assert det.to_dict() == {"streak": 0, "last_subcontext": []}
    det.update(None, ["z", "a"])
    det.update(0.0, ["a", "z"])

    assert det.to_dict() == {"streak": 1, "last_subcontext": ["a", "z"]}
