"""Replay plans: a dataset's training rows as live sensor readings, with faults (pure).

A :class:`ReplayPlan` says how one experiment's rows become readings: row ``i`` of a device is
its step ``i`` after ``start_time`` (steps of ``step_seconds`` on the Unix epoch, as
:mod:`osml.agent.streams.steps` counts them). :func:`schedule` turns one device's rows into the
readings a feeder sends, each with the wall-clock offset at which to send it; the feeders in
:mod:`osml.ops.feeders` only pace and deliver them. Everything here is deterministic given the
plan's ``seed``.

Time, for reading ``j`` of ``readings_per_step`` in row ``i``::

    t_true = start_time + i * step_seconds + offset      # offset in (0, step_seconds)
    t      = t_true + skew[device]                       # the stamp: the device's own clock
    wall_s = (t_true - start_time) / speed               # when it is sent, after the start

``offset`` is the reading's nominal place in its step (``(j + 0.5) / readings_per_step`` of a
step: mid-step for one reading) plus the jitter (``uniform`` in ``[-jitter_s, +jitter_s]`` or
``normal`` with standard deviation ``jitter_s``), clipped so that it never leaves the step. A
skewed device stamps its readings with its own clock but sends them when they happen: skew moves
``t``, never ``wall_s``. A dropped reading (a share ``drop_rate``, drawn independently per
reading) is never sent.

The accelerated clock: with ``speed`` > 1 the *data's* time runs ``speed`` times faster than the
wall clock (``speed=50`` plays a 1 s step every 20 ms), so stamps soon lie far ahead of
``time.time()``. An agent replaying faster than real time must take "now" from the data's time,
not the wall clock: pass a :class:`ReplayClock` as the stream source's ``clock`` and as the
``now`` of :meth:`~osml.agent.streams.steps.StepSeries.advance`, or the readings filter refuses
the stamps as ``future`` and steps complete at the wrong moments. At ``speed=1`` with the
default start (the next step boundary) the replay begins when the wall clock reaches
``start_time`` and the data clock is the wall clock.

Faults (:func:`parse_fault`, ``AGENT:KIND@STEP[:ARG]``) change one device's rows from row
``STEP`` on (:func:`apply_fault`); rows before ``STEP`` are never touched. ``std`` is the
standard deviation of the device's clean series, per feature (1 for a constant feature):

==========  ========================================================================== =======
kind        effect from row STEP on                                                    ARG
==========  ========================================================================== =======
``stuck``   every value frozen at its value in row STEP                                (none)
``spike``   row STEP and about 1 row in 20 after it get ``± ARG * std`` (random sign)  6
``offset``  ``ARG * std`` added to every row                                           3
``noise``   white noise of standard deviation ``ARG * std`` added                      1
``switch``  the device's stream becomes device OTHER's (drift): rows copied from it    OTHER
==========  ========================================================================== =======
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from osml.agent.data import Dataset
from osml.agent.streams.readings import Reading
from osml.errors import ConfigError

__all__ = [
    "FAULT_KINDS",
    "FORMATS",
    "JITTERS",
    "SPIKE_SHARE",
    "Fault",
    "ReplayClock",
    "ReplayPlan",
    "Scheduled",
    "apply_fault",
    "apply_faults",
    "format_csv",
    "format_json",
    "format_line",
    "next_boundary",
    "parse_fault",
    "replay_rows",
    "schedule",
]

JITTERS = ("none", "uniform", "normal")
FORMATS = ("json", "csv")
FAULT_KINDS = ("stuck", "spike", "offset", "noise", "switch")
SPIKE_SHARE = 0.05  # of the rows after STEP that a spike fault hits
_DEFAULT_ARG = {"spike": 6.0, "offset": 3.0, "noise": 1.0}
# Keeps a stamp this share of a step away from the step's edges: k * s in floating point may
# round either way (see osml.agent.streams.steps).
_EDGE = 1e-6


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def next_boundary(now: float, step_seconds: float) -> float:
    """The first step boundary strictly after ``now`` (Unix seconds)."""
    return (math.floor(now / step_seconds) + 1) * step_seconds


@dataclass(frozen=True)
class ReplayPlan:
    """How rows become readings (see the module docstring). Validated on construction.

    ``start_time`` None means the next step boundary after now, fixed by :meth:`resolved`
    (feeders call it when they are built). ``skew`` maps device ids to clock errors in seconds
    (positive: the device's clock is ahead). ``reading_noise`` is the standard deviation, in
    units of the series' std, of noise added to every reading's values (use it with
    ``readings_per_step`` > 1 for several noisy readings per step).
    """

    step_seconds: float = 1.0
    speed: float = 1.0
    start_time: float | None = None
    skew: Mapping[str, float] = field(default_factory=dict)
    jitter: str = "none"
    jitter_s: float = 0.0
    drop_rate: float = 0.0
    readings_per_step: int = 1
    reading_noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (_finite(self.step_seconds) and self.step_seconds > 0):
            raise ConfigError(f"step_seconds {self.step_seconds!r}: use a finite number > 0")
        if not (_finite(self.speed) and self.speed >= 1):
            raise ConfigError(
                f"speed {self.speed!r}: use a finite number >= 1 (times real time; 1 = live)"
            )
        if self.start_time is not None and not (_finite(self.start_time) and self.start_time >= 0):
            raise ConfigError(
                f"start_time {self.start_time!r}: use Unix seconds >= 0, or None for the next "
                f"step boundary"
            )
        if not isinstance(self.skew, Mapping):
            raise ConfigError(f"skew {self.skew!r}: use a mapping of device id to seconds")
        skew: dict[str, float] = {}
        for device, seconds in self.skew.items():
            if not (isinstance(device, str) and device and _finite(seconds)):
                raise ConfigError(
                    f"skew {device!r}: {seconds!r}: use a device id and a finite number of seconds"
                )
            skew[device] = float(seconds)
        # A private read-only copy: a caller's dict changing later must not change the plan.
        object.__setattr__(self, "skew", MappingProxyType(skew))
        if self.jitter not in JITTERS:
            raise ConfigError(f"jitter {self.jitter!r}: use one of {', '.join(JITTERS)}")
        if not (_finite(self.jitter_s) and self.jitter_s >= 0):
            raise ConfigError(f"jitter_s {self.jitter_s!r}: use a finite number of seconds >= 0")
        if not (_finite(self.drop_rate) and 0 <= self.drop_rate < 1):
            raise ConfigError(f"drop_rate {self.drop_rate!r}: use a share in [0, 1)")
        if not (
            isinstance(self.readings_per_step, int)
            and not isinstance(self.readings_per_step, bool)
            and 1 <= self.readings_per_step <= 1000
        ):
            raise ConfigError(
                f"readings_per_step {self.readings_per_step!r}: use an integer between 1 and 1000"
            )
        if not (_finite(self.reading_noise) and self.reading_noise >= 0):
            raise ConfigError(
                f"reading_noise {self.reading_noise!r}: use a finite number >= 0 (series stds)"
            )
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0):
            raise ConfigError(f"seed {self.seed!r}: use an integer >= 0")

    def resolved(self, now: float | None = None) -> ReplayPlan:
        """This plan with ``start_time`` fixed (the next step boundary after ``now``, default
        the wall clock) if it was None."""
        if self.start_time is not None:
            return self
        now = time.time() if now is None else now
        return replace(self, start_time=next_boundary(now, self.step_seconds))

    def skew_of(self, device: str) -> float:
        """The clock error of ``device`` in seconds (0 if not listed)."""
        return self.skew.get(device, 0.0)

    def data_seconds(self, n_rows: int) -> float:
        """How much data time ``n_rows`` rows cover."""
        return n_rows * self.step_seconds

    def wall_seconds(self, n_rows: int) -> float:
        """How long replaying ``n_rows`` rows takes on the wall clock."""
        return n_rows * self.step_seconds / self.speed


@dataclass(frozen=True)
class ReplayClock:
    """The data's time during a replay that began (row 0's step) at Unix time ``at``:
    ``start_time + (now() - at) * speed``. Call it like ``time.time``; give it to the stream
    source (``clock=``) and use it as "now" for the step series when ``speed`` > 1."""

    start_time: float
    speed: float
    at: float
    now: Callable[[], float] = time.time

    def __call__(self) -> float:
        return self.start_time + (self.now() - self.at) * self.speed

    @classmethod
    def for_plan(cls, plan: ReplayPlan, at: float) -> ReplayClock:
        """The clock of ``plan`` (resolved) started at Unix time ``at``."""
        if plan.start_time is None:
            raise ConfigError("plan has no start_time yet: call plan.resolved() first")
        return cls(plan.start_time, plan.speed, at)


class Scheduled(NamedTuple):
    """One reading to send: ``wall_s`` after the replay began, stamped ``t`` (data time, with the
    device's skew), with ``values`` (float64, one per feature), from row ``row``."""

    wall_s: float
    t: float
    values: np.ndarray
    row: int

    @property
    def reading(self) -> Reading:
        """As the :class:`~osml.agent.streams.readings.Reading` a source should deliver."""
        return Reading(self.t, self.values)


def _rng(seed: int, device: str, stream: int) -> np.random.Generator:
    # crc32, not hash(): str hashes change between processes, and the exec script must agree.
    return np.random.default_rng([seed, zlib.crc32(device.encode("utf-8")), stream])


def _scale(rows: np.ndarray) -> np.ndarray:
    """Per-feature std of a series, 1 where a feature is constant (so faults stay visible)."""
    std = rows.std(axis=0) if len(rows) else np.ones(rows.shape[1])
    return np.where(std > 0, std, 1.0)


def _as_rows(rows: np.ndarray | Sequence[Sequence[float]], what: str = "rows") -> np.ndarray:
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ConfigError(f"{what} have shape {arr.shape}: use (n_rows, n_features)")
    if not bool(np.all(np.isfinite(arr))):
        raise ConfigError(f"{what} hold NaN or infinity: a reading must be finite")
    return arr


def schedule(
    rows: np.ndarray | Sequence[Sequence[float]], plan: ReplayPlan, device: str
) -> Iterator[Scheduled]:
    """The readings one device sends, in sending order (see the module docstring for the
    times). ``rows`` is ``(n, f)`` (faults already applied); ``plan`` must be resolved. Dropped
    readings are left out."""
    if plan.start_time is None:
        raise ConfigError("plan has no start_time yet: call plan.resolved() first")
    data = _as_rows(rows)
    n, k, s = len(data), plan.readings_per_step, plan.step_seconds
    jitter_rng, drop_rng, noise_rng = (_rng(plan.seed, device, i) for i in range(3))
    nominal = (np.arange(k) + 0.5) / k * s
    offsets = np.broadcast_to(nominal, (n, k)).copy()
    if plan.jitter == "uniform" and plan.jitter_s > 0:
        offsets += jitter_rng.uniform(-plan.jitter_s, plan.jitter_s, size=(n, k))
    elif plan.jitter == "normal" and plan.jitter_s > 0:
        offsets += jitter_rng.normal(0.0, plan.jitter_s, size=(n, k))
    offsets = np.clip(offsets, _EDGE * s, (1 - _EDGE) * s)
    offsets.sort(axis=1)  # within a step, readings go out in time order
    sent = drop_rng.random(size=(n, k)) >= plan.drop_rate
    values = np.broadcast_to(data[:, None, :], (n, k, data.shape[1])).copy()
    if plan.reading_noise > 0:
        spread = plan.reading_noise * _scale(data)
        values += noise_rng.normal(0.0, 1.0, size=values.shape) * spread
    skew = plan.skew_of(device)
    for i in range(n):
        base = i * s
        for j in range(k):
            if sent[i, j]:
                t_true = base + float(offsets[i, j])
                yield Scheduled(
                    wall_s=t_true / plan.speed,
                    t=plan.start_time + t_true + skew,
                    values=values[i, j].copy(),
                    row=i,
                )


# -- lines ----------------------------------------------------------------------------------------


def format_json(t: float, values: np.ndarray | Sequence[float]) -> str:
    """``{"t": ..., "v": [...]}``, numbers written so that they read back exactly."""
    return json.dumps({"t": float(t), "v": [float(v) for v in values]}, allow_nan=False)


def format_csv(t: float, values: np.ndarray | Sequence[float]) -> str:
    """``t,f1,...``, numbers written so that they read back exactly (shortest repr)."""
    numbers = [float(t), *(float(v) for v in values)]
    if not all(math.isfinite(x) for x in numbers):
        raise ValueError("a reading must be finite")
    return ",".join(repr(x) for x in numbers)


def format_line(item: Scheduled, fmt: str = "json") -> str:
    """One reading as a line (no newline) in ``fmt``, one of :data:`FORMATS`."""
    if fmt == "json":
        return format_json(item.t, item.values)
    if fmt == "csv":
        return format_csv(item.t, item.values)
    raise ConfigError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")


# -- faults ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One fault of one device from row ``step`` on; ``arg`` is the kind's number (see the
    module docstring), ``other`` the device a ``switch`` copies."""

    agent: str
    kind: str
    step: int
    arg: float | None = None
    other: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.agent, str) and self.agent):
            raise ConfigError(f"fault agent {self.agent!r}: name a device")
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"fault kind {self.kind!r}: use one of {', '.join(FAULT_KINDS)}")
        if not (isinstance(self.step, int) and not isinstance(self.step, bool) and self.step >= 0):
            raise ConfigError(f"fault step {self.step!r}: use a row index >= 0")
        if self.kind == "switch":
            if not (isinstance(self.other, str) and self.other) or self.arg is not None:
                raise ConfigError(
                    f"switch fault of {self.agent!r}: name the other device, as "
                    f"{self.agent}:switch@{self.step}:OTHER"
                )
            if self.other == self.agent:
                raise ConfigError(f"switch fault of {self.agent!r}: OTHER must be another device")
            return
        if self.other is not None:
            raise ConfigError(f"{self.kind} fault: only switch takes another device")
        if self.kind == "stuck":
            if self.arg is not None:
                raise ConfigError(f"stuck fault takes no ARG: write {self.agent}:stuck@{self.step}")
            return
        if self.arg is None:
            object.__setattr__(self, "arg", _DEFAULT_ARG[self.kind])
        elif not (_finite(self.arg) and self.arg >= 0):
            raise ConfigError(
                f"{self.kind} fault ARG {self.arg!r}: use a finite number >= 0 (series stds)"
            )
        else:
            object.__setattr__(self, "arg", float(self.arg))

    def __str__(self) -> str:
        if self.kind == "switch":
            tail = f":{self.other}"
        else:  # repr: the exec script must read back the very same number
            tail = "" if self.arg is None else f":{self.arg!r}"
        return f"{self.agent}:{self.kind}@{self.step}{tail}"


def parse_fault(text: str) -> Fault:
    """``AGENT:KIND@STEP[:ARG]`` (``AGENT:switch@STEP:OTHER`` for a switch) as a :class:`Fault`;
    ConfigError names the fix."""
    form = "AGENT:KIND@STEP[:ARG], e.g. 1:stuck@200, 0:offset@50:2 or 1:switch@300:0"
    if not isinstance(text, str):
        raise ConfigError(f"fault {text!r}: write {form}")
    head, at, tail = text.strip().rpartition("@")
    agent, colon, kind = head.rpartition(":")
    step_text, _, arg_text = tail.partition(":")
    if not (at and colon and agent and kind):
        raise ConfigError(f"fault {text!r}: write {form}")
    try:
        step = int(step_text)
    except ValueError:
        raise ConfigError(f"fault {text!r}: STEP {step_text!r} is not a row index") from None
    if kind == "switch":
        return Fault(agent, kind, step, other=arg_text or None)
    arg: float | None = None
    if arg_text:
        try:
            arg = float(arg_text)
        except ValueError:
            raise ConfigError(f"fault {text!r}: ARG {arg_text!r} is not a number") from None
    return Fault(agent, kind, step, arg=arg)


def apply_fault(
    rows: np.ndarray | Sequence[Sequence[float]],
    fault: Fault,
    rng: np.random.Generator,
    *,
    other: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """``rows`` (n, f) with ``fault`` applied from row ``fault.step`` on: a new float64 array;
    rows before the step are unchanged. A ``switch`` needs the other device's rows as
    ``other`` (same shape). A step at or past the end changes nothing."""
    out = _as_rows(rows).copy()
    a = fault.step
    if a >= len(out):
        return out
    scale = _scale(out)
    if fault.kind == "stuck":
        out[a:] = out[a]
    elif fault.kind == "offset":
        assert fault.arg is not None
        out[a:] += fault.arg * scale
    elif fault.kind == "noise":
        assert fault.arg is not None
        out[a:] += rng.normal(0.0, 1.0, size=out[a:].shape) * (fault.arg * scale)
    elif fault.kind == "spike":
        assert fault.arg is not None
        hit = rng.random(len(out) - a) < SPIKE_SHARE
        hit[0] = True  # the fault shows at its step
        signs = rng.choice(np.array([-1.0, 1.0]), size=len(out) - a)
        out[a:][hit] += (signs[hit, None] * fault.arg) * scale
    else:  # switch
        if other is None:
            raise ConfigError(f"switch fault {fault}: give the rows of device {fault.other!r}")
        src = _as_rows(other, f"rows of {fault.other!r}")
        if src.shape != out.shape:
            raise ConfigError(
                f"switch fault {fault}: device {fault.other!r} has rows {src.shape}, "
                f"{fault.agent!r} has {out.shape}; they must match"
            )
        out[a:] = src[a:]
    return out


def apply_faults(
    rows: Mapping[str, np.ndarray], faults: Sequence[Fault], seed: int = 0
) -> dict[str, np.ndarray]:
    """Every device's rows with ``faults`` applied in order (float64 copies). A ``switch`` copies
    the other device's *clean* rows. Each fault draws from its own generator, seeded by
    ``seed``, the device and the fault's position in ``faults``."""
    clean = {device: _as_rows(r, f"rows of {device!r}") for device, r in rows.items()}
    out = {device: r.copy() for device, r in clean.items()}
    for i, fault in enumerate(faults):
        for name in (fault.agent, fault.other):
            if name is not None and name not in clean:
                raise ConfigError(
                    f"fault {fault}: no device {name!r}; devices are {', '.join(clean)}"
                )
        other = clean[fault.other] if fault.other is not None else None
        rng = _rng(seed, fault.agent, 100 + i)
        out[fault.agent] = apply_fault(out[fault.agent], fault, rng, other=other)
    return out


def replay_rows(
    dataset: Dataset, faults: Sequence[Fault] = (), *, seed: int = 0, limit: int | None = None
) -> dict[str, np.ndarray]:
    """The training rows of every device of ``dataset`` (the first ``limit`` rows if given),
    with ``faults`` applied: what the feeders replay."""
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise ConfigError(f"limit {limit!r}: use a number of rows >= 1")
    rows = {a.agent_id: a.train[:limit] for a in dataset.agents}
    return apply_faults(rows, faults, seed)
