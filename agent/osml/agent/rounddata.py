"""What a round embeds and trains on: windows with absolute step indices, and a bounded buffer.

Every window is named by the absolute index of its last step. For a file source that is the
row index (row ``t`` of every agent is the same moment, by the data's convention); for a live
stream it is the step of the Unix epoch (``step k`` covers ``[k*s, (k+1)*s)``, see
:mod:`osml.agent.streams.steps`), so devices agree on "step k" without talking.

* :class:`FileWindows`: the windows of a recorded series; every round embeds the same ones (all,
  or the latest ``steps``).
* :class:`LiveWindows`: a live :class:`~osml.agent.streams.sources.StreamSource` bucketed into a
  :class:`~osml.agent.streams.steps.StepSeries`; a round embeds the windows completed since the
  previous round plus a bounded replay of older ones (``replay`` steps), at most ``max_windows``.
* :class:`TrainingBuffer`: the recent windows with their latest osmosis targets, what a training
  job draws on. Bounded: ``capacity`` windows, the oldest steps dropped first.

:func:`align` matches a neighbour's rows to this agent's by step index, not by position.
:func:`scale_moved` says when a live stream has left the input scaling its encoder was given.
Memory: a live agent holds ``capacity * n_features`` float64 in its series, the buffer's
``capacity * (window * n_features + d) * 4`` bytes, and at most ``max_windows`` windows per round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from osml.agent.streams.sources import StreamSource
from osml.agent.streams.steps import StepSeries, step_of

__all__ = [
    "FileWindows",
    "LiveWindows",
    "RoundWindows",
    "TrainingBuffer",
    "align",
    "rows_for_steps",
]


class RoundWindows(Protocol):
    """Where a round's windows come from."""

    @property
    def window(self) -> int: ...

    def windows_for(self, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        """``(end_steps int64 (n,), windows float32 (n, window, features))``, steps increasing."""
        ...


class FileWindows:
    """The windows of a recorded series: the same ones every round (all, or the latest
    ``steps``); window ``i`` ends at row ``i + window - 1``."""

    def __init__(self, windows: np.ndarray, window: int, steps: int = 0) -> None:
        self.all = np.ascontiguousarray(windows, dtype=np.float32)
        self.window = window
        n = steps or len(self.all)
        first = max(0, len(self.all) - n)
        self._wins = self.all[first:]
        self._ends = np.arange(first, len(self.all), dtype=np.int64) + window - 1

    def windows_for(self, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        return self._ends, self._wins


class LiveWindows:
    """A live stream bucketed into steps; each round takes what completed since the last one.

    ``clock`` gives "now" in the data's time: the wall clock on a device, or the newest
    reading's time when a recording is replayed faster than real time (``data_clock``).
    """

    def __init__(
        self,
        source: StreamSource,
        series: StepSeries,
        window: int,
        *,
        period: float = 0.0,
        replay: int = 0,
        max_windows: int = 512,
        data_clock: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if replay < 0 or max_windows < 1:
            raise ValueError("replay >= 0 and max_windows >= 1 are required")
        self.source = source
        self.series = series
        self.window = window
        self.period = period
        self.replay = replay
        self.max_windows = max_windows
        self.data_clock = data_clock
        self._clock = clock
        self._newest = -math.inf  # the newest reading's time
        self._last_end: int | None = None  # the last step embedded so far

    def now(self) -> float:
        """The current time in the data's clock."""
        if self.data_clock:
            return self._newest
        return self._clock()

    def pump(self) -> int:
        """Move the source's readings into the series (never blocks); how many arrived."""
        readings = self.source.drain()
        for r in readings:
            self._newest = max(self._newest, r.t)
        # A batch arrived before now: add it in arrival order, then let the clock close steps
        # (closing first would turn the batch's own earlier readings into "late" ones).
        for r in readings:
            self.series.add(r, None)
        now = self.now()
        if math.isfinite(now):
            self.series.advance(now)
        return len(readings)

    def step_now(self) -> int | None:
        now = self.now()
        return step_of(now, self.series.step_seconds) if math.isfinite(now) else None

    def round_steps(self, rnd: int) -> tuple[int, int]:
        """The first and last step of round ``rnd``'s period (``period`` > 0)."""
        s = self.series.step_seconds
        return math.ceil(rnd * self.period / s - 1e-9), math.ceil(
            (rnd + 1) * self.period / s - 1e-9
        ) - 1

    @property
    def period_steps(self) -> int:
        """The steps a period covers (0 without a period)."""
        return math.ceil(self.period / self.series.step_seconds) if self.period > 0 else 0

    @property
    def full_round(self) -> int:
        """How many windows a round holds while the stream flows: its period's steps and the
        replay, at most ``max_windows``."""
        return min(self.max_windows, self.period_steps + self.replay)

    def windows_for(self, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        """With a ``period``: the windows ending in round ``rnd``'s period plus the ``replay``
        steps before it (every agent of the context picks the same steps); without: those
        completed since the last call plus the replay."""
        self.pump()
        if self.period > 0:
            lo, hi = self.round_steps(rnd)
            ends, wins = self.series.windows(self.window, since_step=lo - 1 - self.replay)
            keep = ends <= hi
            ends, wins = ends[keep], wins[keep]
        else:
            since = None if self._last_end is None else self._last_end - self.replay
            ends, wins = self.series.windows(self.window, since_step=since)
        if len(ends) > self.max_windows:
            ends, wins = ends[-self.max_windows :], wins[-self.max_windows :]
        if len(ends):
            self._last_end = int(ends[-1])
        return ends, wins


class TrainingBuffer:
    """The latest ``capacity`` windows by step, each with its latest osmosis target.

    A target is what the sub-context agreed on in the round that set it; once the encoders have
    moved on it pulls toward a consensus the fleet has left. So a training job draws on the
    windows whose target is at most ``max_age`` rounds older than the newest (``max_age`` None:
    all of them), topped up with the most recently targeted others to at least ``min_windows``:
    a round with few windows (a stream that paused or ended) does not train on a handful."""

    def __init__(
        self, capacity: int = 4096, max_age: int | None = None, min_windows: int = 0
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if max_age is not None and max_age < 0:
            raise ValueError("max_age must be >= 0 or None")
        if min_windows < 0:
            raise ValueError("min_windows must be >= 0")
        self.capacity = capacity
        self.max_age = max_age
        self.min_windows = min(min_windows, capacity)
        self._items: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._newest = 0

    def __len__(self) -> int:
        return len(self._items)

    def update(
        self, steps: np.ndarray, windows: np.ndarray, targets: np.ndarray, rnd: int = 0
    ) -> None:
        """Set the targets of ``steps`` in round ``rnd``; the oldest steps past ``capacity`` go."""
        for k, w, t in zip(steps.tolist(), windows, targets):
            self._items[int(k)] = (w, t, rnd)
        if len(steps):
            self._newest = max(self._newest, rnd)
        if len(self._items) > self.capacity:
            for k in sorted(self._items)[: len(self._items) - self.capacity]:
                del self._items[k]

    def _chosen(self) -> list[int]:
        if self.max_age is None:
            return sorted(self._items)
        oldest = self._newest - self.max_age
        fresh = [k for k, item in self._items.items() if item[2] >= oldest]
        if len(fresh) < self.min_windows:
            rest = sorted(
                (k for k, item in self._items.items() if item[2] < oldest),
                key=lambda k: (self._items[k][2], k),
                reverse=True,
            )
            fresh += rest[: self.min_windows - len(fresh)]
        return sorted(fresh)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps, windows, targets)`` of what a training job draws on, ordered by step."""
        keys = self._chosen()
        if not keys:
            return (
                np.zeros(0, dtype=np.int64),
                np.zeros((0, 0, 0), dtype=np.float32),
                np.zeros((0, 0), dtype=np.float32),
            )
        return (
            np.asarray(keys, dtype=np.int64),
            np.stack([self._items[k][0] for k in keys]),
            np.stack([self._items[k][1] for k in keys]),
        )


def rows_for_steps(steps: np.ndarray, rows: np.ndarray) -> tuple[int, np.ndarray]:
    """One contiguous block covering ``steps``: ``(first step, (last - first + 1, d) rows)``,
    with zero rows for the steps that have no window (a zero row is "no data" on the wire)."""
    if len(steps) == 0:
        return 0, np.zeros((0, rows.shape[1] if rows.ndim == 2 else 0), dtype=np.float32)
    first = int(steps[0])
    block = np.zeros((int(steps[-1]) - first + 1, rows.shape[1]), dtype=np.float32)
    block[steps - first] = rows
    return first, block


def align(steps: np.ndarray, step_start: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A neighbour's block of rows (starting at ``step_start``) matched to our ``steps``:
    ``(rows (len(steps), d) with zeros where it has nothing, present bool (len(steps),))``.
    A zero row in the block is a step the neighbour had no window for."""
    out = np.zeros((len(steps), rows.shape[1]), dtype=np.float32)
    idx = steps - step_start
    inside = (idx >= 0) & (idx < len(rows))
    got = rows[idx[inside]]
    out[inside] = got
    present = np.zeros(len(steps), dtype=bool)
    present[inside] = np.any(got != 0, axis=1)
    return out, present


# A stream has left its scaling when a feature's recent median is this many reference standard
# deviations away, or its recent spread (interquartile) this many times the reference: an
# encoder whose inputs sit 10-20 deviations out saturates, so a device moved to another room (a
# process changed) would embed its new data as a near-constant and never find the devices it
# now shares a context with. Medians and quartiles, so that a burst of spikes (fewer than a
# quarter of the steps) moves neither; a spread that shrinks (a stuck or idle sensor) never
# counts: it saturates nothing, and rescaling to it would blow up every later reading.
SCALE_SHIFT = 6.0
SCALE_RATIO = 4.0
_IQR_TO_STD = 1.349  # the interquartile range of a normal distribution, in standard deviations


def scale_moved(
    mean: np.ndarray,
    std: np.ndarray,
    recent: np.ndarray,
    shift: float = SCALE_SHIFT,
    ratio: float = SCALE_RATIO,
) -> bool:
    """True if ``recent`` (steps x features) has left the scaling (``mean``, ``std`` per
    feature): some feature's median moved by more than ``shift`` reference deviations, or its
    interquartile spread grew past ``ratio`` times the reference deviation. A reference
    deviation of (nearly) 0, a constant feature, counts as 1, as in the encoder's scaling."""
    recent = np.asarray(recent, dtype=np.float64)
    if recent.ndim != 2 or len(recent) < 4:
        return False
    std = np.asarray(std, dtype=np.float64)
    ref = np.where(std > 1e-6, std, 1.0)
    q1, med, q3 = np.percentile(recent, [25.0, 50.0, 75.0], axis=0)
    moved = np.abs(med - np.asarray(mean, dtype=np.float64)) > shift * ref
    wider = (q3 - q1) / _IQR_TO_STD > ratio * ref
    return bool(np.any(moved | wider))
