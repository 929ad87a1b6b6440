"""Tests for osml.backoff: retry schedules, read without sleeping."""

from __future__ import annotations

import itertools
import random

import pytest

from osml.backoff import delays, full_jitter


def test_default_schedule_doubles_from_half_a_second_to_ten() -> None:
    got = list(itertools.islice(delays(), 8))

    assert got == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_custom_schedule() -> None:
    assert list(itertools.islice(delays(first=1.0, cap=5.0, factor=3.0), 4)) == [1, 3, 5, 5]
    assert list(itertools.islice(delays(first=2.0, cap=2.0, factor=1.0), 3)) == [2, 2, 2]


@pytest.mark.parametrize(
    ("first", "cap", "factor"),
    [(0.0, 1.0, 2.0), (-1.0, 1.0, 2.0), (2.0, 1.0, 2.0), (1.0, 2.0, 0.5), (1.0, float("inf"), 2.0)],
)
def test_bad_schedules_are_refused(first: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError):
        next(delays(first, cap, factor))


def test_full_jitter_stays_within_each_delay_and_is_reproducible() -> None:
    base = list(itertools.islice(delays(), 50))

    first = list(itertools.islice(full_jitter(delays(), random.Random(7)), 50))
    again = list(itertools.islice(full_jitter(delays(), random.Random(7)), 50))

    assert first == again
    assert all(0.0 <= j <= d for j, d in zip(first, base))
    assert len(set(first)) > 1
