"""Time-aligned steps: buckets on the epoch, completion, gaps and fill-forward, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osml.agent.streams.readings import Reading, ReadingFilter, ReadingLimits
from osml.agent.streams.steps import StepSeries, step_of
from osml.errors import ConfigError

T0 = 1_700_000_000.0  # a multiple of 1, 2, 5 and 10 s


def r(t: float, *v: float) -> Reading:
    return Reading(t, np.array(v, dtype=np.float64))


def test_step_of_is_on_the_epoch() -> None:
    assert step_of(0.0, 2.0) == 0
    assert step_of(1.999, 2.0) == 0
    assert step_of(2.0, 2.0) == 1
    assert step_of(-0.5, 2.0) == -1
    assert step_of(T0 + 0.25, 0.5) == int(T0 / 0.5)


def test_mean_per_step_and_completion_by_a_later_reading() -> None:
    s = StepSeries(1.0, 2, grace=0.5)
    assert s.add(r(T0 + 0.1, 1, 10)) is None
    assert s.add(r(T0 + 0.9, 3, 30)) is None
    assert s.latest_step is None  # the first step is still open
    s.add(r(T0 + 1.2, 5, 50))
    k0 = step_of(T0, 1.0)
    # Declared, so that mypy forgets the "is None" above (a property, changed by add()).
    latest: int | None = s.latest_step
    assert latest == k0 and s.open_step == k0 + 1
    steps, values, filled, gap = s.held()
    assert steps.tolist() == [k0]
    np.testing.assert_allclose(values, [[2, 20]])
    assert not filled.any() and not gap.any()


def test_completion_by_time_with_grace() -> None:
    s = StepSeries(1.0, 1, grace=0.5)
    s.add(r(T0 + 0.5, 1))
    s.advance(T0 + 1.4)  # end + grace not reached: a late reading still counts
    assert s.latest_step is None
    assert s.add(r(T0 + 0.9, 3), now=T0 + 1.4) is None
    s.advance(T0 + 1.5)
    latest: int | None = s.latest_step  # declared: advance() changed it since the "is None"
    assert latest == step_of(T0, 1.0)
    assert s.add(r(T0 + 0.95, 100), now=T0 + 1.6) == "late"
    np.testing.assert_allclose(s.held()[1], [[2.0]])
    assert s.late == 1


@pytest.mark.parametrize(("aggregate", "want"), [("mean", 3.0), ("last", 1.0), ("median", 2.0)])
def test_aggregates(aggregate: str, want: float) -> None:
    s = StepSeries(10.0, 1, aggregate=aggregate)
    for t, v in [(T0 + 1, 2.0), (T0 + 9, 1.0), (T0 + 3, 6.0)]:  # the latest t says 1.0
        s.add(r(t, v))
    s.advance(T0 + 20)
    np.testing.assert_allclose(s.held()[1], [[want]])


def test_gaps_are_filled_up_to_max_gap_and_windows_skip_longer_gaps() -> None:
    s = StepSeries(1.0, 1, max_gap=2, grace=0.0)
    # observed steps 0..3, gap of 2 (filled), 6..8, gap of 3 (2 filled + 1 gap), 12..14
    for i in [0, 1, 2, 3, 6, 7, 8, 12, 13, 14]:
        s.add(r(T0 + i + 0.5, float(i)))
    s.advance(T0 + 15.0)
    k0 = step_of(T0, 1.0)
    steps, values, filled, gap = s.held()
    assert (steps - k0).tolist() == list(range(15))
    assert (steps[filled] - k0).tolist() == [4, 5, 9, 10]
    assert (steps[gap] - k0).tolist() == [11]
    np.testing.assert_allclose(values[filled, 0], [3, 3, 8, 8])  # the last value repeated
    assert s.filled == 4 and s.gaps == 1

    ends, win = s.windows(3)
    # every window of 3 that does not contain step 11
    assert (ends - k0).tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 10, 14]
    assert win.shape == (10, 3, 1) and win.dtype == np.float32
    np.testing.assert_allclose(win[0, :, 0], [0, 1, 2])
    np.testing.assert_allclose(win[-1, :, 0], [12, 13, 14])
    ends2, win2 = s.windows(3, since_step=int(k0 + 8))
    assert (ends2 - k0).tolist() == [9, 10, 14]


def test_no_fill_forward_by_default() -> None:
    s = StepSeries(1.0, 1, grace=0.0)
    for i in [0, 1, 3, 4]:
        s.add(r(T0 + i, float(i)))
    s.advance(T0 + 5)
    ends, _ = s.windows(2)
    assert (ends - step_of(T0, 1.0)).tolist() == [1, 4]


def test_capacity_bounds_memory_and_stale_readings_are_dropped() -> None:
    s = StepSeries(1.0, 1, capacity=5, grace=0.0)
    for i in range(20):
        s.add(r(T0 + i, float(i)))
    s.advance(T0 + 20)
    k0 = step_of(T0, 1.0)
    steps, values, _, _ = s.held()
    assert (steps - k0).tolist() == [15, 16, 17, 18, 19]
    np.testing.assert_allclose(values[:, 0], [15, 16, 17, 18, 19])
    assert s.add(r(T0 + 3, 0.0)) == "stale"
    assert s.add(r(T0 + 17, 0.0)) == "late"
    assert (s.stale, s.late) == (1, 1)
    ends, win = s.windows(6)  # longer than the series holds
    assert ends.shape == (0,) and win.shape == (0, 6, 1)


def test_a_long_silence_costs_capacity_not_steps() -> None:
    s = StepSeries(0.001, 1, capacity=8, max_gap=3)
    s.add(r(T0, 1.0))
    s.add(r(T0 + 86_400.0, 2.0))  # 86.4 million empty steps later
    assert s.filled == 3 and s.gaps == 86_400_000 - 1 - 3
    _, _, filled, gap = s.held()
    assert gap.all() and not filled.any()


def test_median_is_bounded_per_step() -> None:
    s = StepSeries(60.0, 1, aggregate="median", max_per_step=3)
    outcomes = [s.add(r(T0 + i, float(i))) for i in range(5)]
    assert outcomes == [None, None, None, "crowded", "crowded"]
    s.add(r(T0 + 60, 9.0))  # the next step completes the crowded one
    np.testing.assert_allclose(s.held()[1][-1], [1.0])


def test_bad_readings_are_programming_errors() -> None:
    s = StepSeries(1.0, 2)
    with pytest.raises(ValueError):
        s.add(r(T0, 1.0))
    with pytest.raises(ValueError):
        s.add(r(T0, 1.0, float("nan")))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step_seconds": 0.0},
        {"step_seconds": float("nan")},
        {"n_features": 0},
        {"capacity": 0},
        {"max_gap": -1},
        {"grace": float("inf")},
        {"aggregate": "max"},
    ],
)
def test_settings_check_themselves(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"step_seconds": 1.0, "n_features": 1, **kwargs}
    with pytest.raises(ConfigError):
        StepSeries(**args)  # type: ignore[arg-type]


_line = st.one_of(
    st.binary(max_size=60),
    st.builds(
        lambda t, vs: f"{T0 + t},{','.join(repr(v) for v in vs)}",
        st.floats(-50, 50),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=3),
    ),
    st.builds(
        lambda t, v: f'{{"t": {T0 + t!r}, "v": {v!r}}}',
        st.floats(-50, 50),
        st.floats(allow_nan=True, allow_infinity=True, width=64),
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.tuples(_line, st.floats(0, 2)), max_size=60),
    capacity=st.integers(1, 12),
    max_gap=st.integers(0, 3),
    aggregate=st.sampled_from(["mean", "last", "median"]),
)
def test_arbitrary_lines_never_raise_nor_reach_a_window_non_finite(
    lines: list[tuple[bytes | str, float]], capacity: int, max_gap: int, aggregate: str
) -> None:
    f = ReadingFilter(ReadingLimits(n_features=1, max_ahead_s=30, max_disorder_s=20))
    s = StepSeries(2.0, 1, capacity=capacity, max_gap=max_gap, grace=0.5, aggregate=aggregate)
    now = T0
    for line, dt in lines:
        now += dt
        reading = f.offer(line, now)
        if reading is not None:
            s.add(reading, now)
        s.advance(now)
        steps, values, _, _ = s.held()
        assert len(steps) <= capacity
        assert np.all(np.diff(steps) == 1)
        for w in (1, 2, 3):
            ends, win = s.windows(w)
            assert win.shape == (len(ends), w, 1)
            assert np.all(np.isfinite(win))
    assert s._vals.shape == (capacity, 1)  # the ring never grows
