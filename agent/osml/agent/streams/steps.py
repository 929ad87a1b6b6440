"""Time-aligned steps: accepted readings bucketed on the Unix epoch, and the windows they make.

Step ``k`` covers ``[k*s, (k+1)*s)`` seconds since the epoch, ``s`` = ``step_seconds``. Two agents
with the same ``s`` therefore agree on what "step k" means without talking to each other: the
step index replaces the row index that file sources share by convention. (Boundaries are
``k*s`` in floating point: a reading exactly on a boundary may land on either side.)

A :class:`StepSeries` aggregates the readings of each step (``mean``, ``last`` = the latest
``t``, or ``median``) and holds the completed steps in a ring of ``capacity`` steps; older
steps are dropped. A step is *complete* once a reading for a later step arrived, or once
``now`` has passed its end plus ``grace`` seconds; until then a late reading of the current
step still counts. Completion is final: a reading for a completed step that the series still
holds is dropped as ``late``, one for a step older than the series holds as ``stale``.

An empty completed step is a gap. The first ``max_gap`` steps of a run of gaps are filled
forward (the last observed value repeated, and marked as filled); further steps of the run stay
gaps, and no window contains a gap. Decisions are causal: a window, once produced, is never
retracted, so a window may contain the filled beginning of what later turns out to be a longer
gap.

Clock skew: the device's timestamp decides the bucket, the agent's clock decides completion.
A device whose clock is behind the agent's by less than ``grace`` still lands its readings in
the bucket its timestamps name (the bucket is not complete yet when they arrive); one behind by
more loses the readings of the last ``skew - grace`` seconds of each bucket as ``late`` when
nothing later has arrived first. Relative to true time, a skew of ``d`` seconds moves a share
``d / s`` of evenly spread readings into the neighbouring bucket; beyond half a step most
readings land in the neighbouring bucket, so two skewed devices disagree on what step ``k``
saw. A clock ahead by more than the readings filter's ``max_ahead_s`` is refused there
(``future``).

Bounds: memory is ``capacity * n_features`` float64 plus, for ``median``, at most
``max_per_step`` readings of the open step (more are counted as ``crowded`` and dropped). Time
jumps cost O(``capacity``), never O(steps skipped).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from osml.agent.streams.readings import Reading
from osml.errors import ConfigError

__all__ = ["AGGREGATES", "StepSeries", "step_of"]

AGGREGATES = ("mean", "last", "median")
_GAP, _OBSERVED, _FILLED = 0, 1, 2


def step_of(t: float, step_seconds: float) -> int:
    """The index of the step that contains time ``t`` (Unix seconds)."""
    return math.floor(t / step_seconds)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class StepSeries:
    """A bounded series of completed steps built from readings (see the module docstring).

    Not thread-safe: one loop adds readings and reads windows.
    """

    def __init__(
        self,
        step_seconds: float,
        n_features: int,
        *,
        capacity: int = 4096,
        max_gap: int = 0,
        grace: float = 1.0,
        aggregate: str = "mean",
        max_per_step: int = 1000,
    ) -> None:
        if not (_finite(step_seconds) and step_seconds > 0):
            raise ConfigError(f"step_seconds {step_seconds!r}: use a finite number > 0")
        if not (isinstance(n_features, int) and n_features >= 1):
            raise ConfigError(f"n_features {n_features!r}: use an integer >= 1")
        if not (isinstance(capacity, int) and capacity >= 1):
            raise ConfigError(f"capacity {capacity!r}: use an integer >= 1 (steps kept)")
        if not (isinstance(max_gap, int) and max_gap >= 0):
            raise ConfigError(f"max_gap {max_gap!r}: use an integer >= 0 (steps filled forward)")
        if not (_finite(grace) and grace >= 0):
            raise ConfigError(f"grace {grace!r}: use a finite number of seconds >= 0")
        if aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate {aggregate!r}: use one of {', '.join(AGGREGATES)}")
        if not (isinstance(max_per_step, int) and max_per_step >= 1):
            raise ConfigError(f"max_per_step {max_per_step!r}: use an integer >= 1")
        self.step_seconds = float(step_seconds)
        self.n_features = n_features
        self.capacity = capacity
        self.max_gap = max_gap
        self.grace = float(grace)
        self.aggregate = aggregate
        self.max_per_step = max_per_step
        self._vals = np.zeros((capacity, n_features), dtype=np.float64)
        self._kind = np.zeros(capacity, dtype=np.int8)
        self._first: int | None = None  # the first step ever (the held range starts later)
        self._done: int | None = None  # the last completed step
        self._cur: int | None = None  # the open step: always _done + 1 when set
        self._sum = np.zeros(n_features, dtype=np.float64)
        self._count = 0
        self._last_t = -math.inf
        self._last_v = np.zeros(n_features, dtype=np.float64)
        self._samples: list[np.ndarray] = []
        self._last_obs: np.ndarray | None = None  # the last observed step's value
        self._run = 0  # empty steps since the last observed one
        self.readings = 0  # readings counted in a step
        self.late = 0
        self.stale = 0
        self.crowded = 0
        self.filled = 0  # steps filled forward, ever
        self.gaps = 0  # steps left as gaps, ever

    # -- state ----------------------------------------------------------------------------------

    @property
    def latest_step(self) -> int | None:
        """The last completed step, None before any step completed."""
        if self._done is None or self._first is None or self._done < self._first:
            return None
        return self._done

    @property
    def first_step(self) -> int | None:
        """The oldest step still held, None before any step completed."""
        if self.latest_step is None or self._first is None or self._done is None:
            return None
        return max(self._first, self._done - self.capacity + 1)

    @property
    def open_step(self) -> int | None:
        """The step readings are being collected for, if any."""
        return self._cur

    def counts(self) -> dict[str, int]:
        """What happened to readings and steps so far."""
        return {
            "readings": self.readings,
            "late": self.late,
            "stale": self.stale,
            "crowded": self.crowded,
            "filled": self.filled,
            "gaps": self.gaps,
        }

    # -- input ----------------------------------------------------------------------------------

    def add(self, reading: Reading, now: float | None = None) -> str | None:
        """Count one accepted reading in its step; None, or why it was dropped (``late``,
        ``stale``, ``crowded``). ``now`` (Unix seconds) first completes the steps time has
        closed. Raises ValueError for a reading of the wrong width or with non-finite numbers
        (a :class:`~osml.agent.streams.readings.ReadingFilter` never lets one through).
        """
        v = np.asarray(reading.values, dtype=np.float64)
        if v.shape != (self.n_features,):
            raise ValueError(f"reading has shape {v.shape}, expected ({self.n_features},)")
        if not (math.isfinite(reading.t) and bool(np.all(np.isfinite(v)))):
            raise ValueError("reading with a non-finite time or value")
        if now is not None:
            self.advance(now)
        k = step_of(reading.t, self.step_seconds)
        if self._done is None:  # the very first reading opens the series
            self._first, self._done = k, k - 1
            self._open(k)
        elif k <= self._done:
            first = self.first_step
            if first is None or k < first:
                self.stale += 1
                return "stale"
            self.late += 1
            return "late"
        elif self._cur is None:
            self._complete_empty(self._done + 1, k - 1)
            self._open(k)
        elif k > self._cur:
            self._close_current()  # completes the open step: _done = its index
            self._complete_empty(self._done + 1, k - 1)
            self._open(k)
        if not self._accumulate(reading.t, v):
            self.crowded += 1
            return "crowded"
        self.readings += 1
        return None

    def advance(self, now: float) -> None:
        """Complete every step whose end plus ``grace`` is at or before ``now``."""
        if self._done is None or not math.isfinite(now):
            return
        last = step_of(now - self.grace, self.step_seconds) - 1
        if last <= self._done:
            return
        if self._cur is not None:
            self._close_current()
        if last > self._done:
            self._complete_empty(self._done + 1, last)

    # -- output ---------------------------------------------------------------------------------

    def held(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The held steps: ``(steps int64 (n,), values float32 (n, F), filled bool (n,),
        gap bool (n,))``, oldest first. A gap's values are zeros and mean nothing."""
        first, last = self.first_step, self.latest_step
        if first is None or last is None:
            empty = np.zeros(0, dtype=bool)
            return (
                np.zeros(0, dtype=np.int64),
                np.zeros((0, self.n_features), dtype=np.float32),
                empty,
                empty.copy(),
            )
        steps = np.arange(first, last + 1, dtype=np.int64)
        idx = steps % self.capacity
        kind = self._kind[idx]
        return steps, self._vals[idx].astype(np.float32), kind == _FILLED, kind == _GAP

    def windows(self, window: int, since_step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every complete window of ``window`` consecutive held steps without a gap whose last
        step is after ``since_step``: ``(end_steps int64 (n,), windows float32 (n, window, F))``.
        """
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"window {window!r}: use an integer >= 1")
        none = (
            np.zeros(0, dtype=np.int64),
            np.zeros((0, window, self.n_features), dtype=np.float32),
        )
        steps, values, _filled, gap = self.held()
        n = len(steps)
        if n < window:
            return none
        bad = np.concatenate([[0], np.cumsum(gap, dtype=np.int64)])
        ok = (bad[window:] - bad[: n - window + 1]) == 0
        ends = steps[window - 1 :]
        if since_step is not None:
            ok &= ends > since_step
        if not ok.any():
            return none
        # (n - window + 1, F, window) -> (.., window, F)
        views = sliding_window_view(values, window, axis=0).transpose(0, 2, 1)
        return ends[ok].copy(), np.ascontiguousarray(views[ok], dtype=np.float32)

    # -- internals ------------------------------------------------------------------------------

    def _open(self, k: int) -> None:
        self._cur = k
        self._sum[:] = 0.0
        self._count = 0
        self._last_t = -math.inf
        self._samples = []

    def _accumulate(self, t: float, v: np.ndarray) -> bool:
        if self.aggregate == "median":
            if len(self._samples) >= self.max_per_step:
                return False
            self._samples.append(v.copy())
        elif self.aggregate == "last":
            if t >= self._last_t:  # ties: the later arrival wins
                self._last_t, self._last_v = t, v.copy()
        else:
            self._sum += v
        self._count += 1
        return True

    def _close_current(self) -> None:
        k = self._cur
        assert k is not None
        self._cur = None
        if self._count == 0:  # only crowded readings: cannot happen, but stay consistent
            self._complete_empty(k, k)
            return
        if self.aggregate == "median":
            value = np.median(np.stack(self._samples), axis=0)
        elif self.aggregate == "last":
            value = self._last_v
        else:
            value = self._sum / self._count
        i = k % self.capacity
        self._vals[i] = value
        self._kind[i] = _OBSERVED
        self._last_obs = np.array(value, dtype=np.float64)
        self._run = 0
        self._done = k

    def _complete_empty(self, a: int, b: int) -> None:
        """Complete steps ``a..b`` (inclusive) that saw no reading."""
        if b < a:
            return
        n = b - a + 1
        n_fill = 0 if self._last_obs is None else min(n, max(0, self.max_gap - self._run))
        self.filled += n_fill
        self.gaps += n - n_fill
        self._run += n
        self._done = b
        # Only the last `capacity` of them can still be held: O(capacity) for any jump.
        lo = max(a, b - self.capacity + 1)
        steps = np.arange(lo, b + 1, dtype=np.int64)
        idx = steps % self.capacity
        fill = steps < a + n_fill
        self._kind[idx] = np.where(fill, _FILLED, _GAP)
        self._vals[idx] = 0.0
        if self._last_obs is not None and fill.any():
            self._vals[idx[fill]] = self._last_obs
