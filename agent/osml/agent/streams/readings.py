"""One sensor reading: parsed from an untrusted line or payload, then checked against the clock.

A live source (MQTT, a tailed file, a command's stdout, stdin) delivers lines in one of two forms:

* JSON: ``{"t": <unix seconds>, "v": [f1, f2, ...]}``; ``"v": 3.2`` for one feature; a missing
  ``t`` (and a bare JSON number such as ``3.2``, one feature) means "now", the arrival time;
  other keys are ignored, so loggers may add their own;
* CSV: ``t,f1,f2,...`` (no header; a header line is counted as ``malformed``).

Nothing here trusts the input or raises past :meth:`ReadingFilter.offer`: a bad line is counted
under one reason code and dropped. The checks run in this order:

=============  =================================================================================
``malformed``  not UTF-8, not JSON or CSV, not numeric, wrong types, or longer than
               ``max_line_bytes`` (checked first, before any parsing)
``width``      not ``n_features`` values (when ``n_features`` is None, the first well-formed
               reading fixes it)
``nonfinite``  NaN or infinity in ``t`` or a value, or a value beyond float32's range (windows
               are float32)
``future``     ``t`` more than ``max_ahead_s`` ahead of the arrival time
``past``       ``t`` more than ``max_behind_s`` behind the arrival time
``disorder``   ``t`` older than the newest accepted reading by more than ``max_disorder_s``
=============  =================================================================================

Bounds: a line costs at most ``max_line_bytes`` of parsing; a filter keeps a few counters only.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from osml.errors import ConfigError, DataError

__all__ = [
    "REASONS",
    "BadReading",
    "Reading",
    "ReadingFilter",
    "ReadingLimits",
    "parse_reading",
]

_log = logging.getLogger("osml.agent.streams")

REASONS = ("malformed", "width", "nonfinite", "future", "past", "disorder")
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Reading:
    """One reading: ``t`` in Unix seconds, ``values`` a 1-D float64 array (one per feature)."""

    t: float
    values: np.ndarray


class BadReading(DataError):
    """A line or payload that is not a usable reading; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _number(x: object, what: str) -> float:
    # bool is an int subclass; true/false are not numbers for a sensor.
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise BadReading("malformed", f"{what} is {type(x).__name__}, not a number")
    try:
        return float(x)
    except OverflowError:  # a huge JSON integer: as good as infinite (checked later, in order)
        return math.inf


def _parse_json(text: str, now: float) -> tuple[float, list[float]]:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise BadReading("malformed", "not valid JSON") from None
    if isinstance(obj, dict):
        t = _number(obj["t"], "t") if "t" in obj else now
        if "v" not in obj:
            raise BadReading("malformed", 'JSON object without "v"')
        v = obj["v"]
        if isinstance(v, list):
            return t, [_number(x, "value") for x in v]
        return t, [_number(v, "value")]
    return now, [_number(obj, "value")]  # a bare JSON number: one feature, now


def _parse_csv(text: str) -> tuple[float, list[float]]:
    fields = text.split(",")
    try:
        numbers = [float(f) for f in fields]
    except ValueError:
        raise BadReading("malformed", "a CSV field is not a number") from None
    return numbers[0], numbers[1:]


def _parse(data: bytes | str, now: float, max_line_bytes: int) -> Reading:
    """Syntax only: the reading as written, possibly non-finite (see :func:`parse_reading`)."""
    if not isinstance(data, (bytes, bytearray, str)):
        raise BadReading("malformed", f"a {type(data).__name__}, not bytes or str")
    if len(data) > max_line_bytes:
        raise BadReading("malformed", f"longer than {max_line_bytes} bytes")
    if isinstance(data, str):
        text = data
        if len(text.encode("utf-8", "surrogatepass")) > max_line_bytes:
            raise BadReading("malformed", f"longer than {max_line_bytes} bytes")
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise BadReading("malformed", "not UTF-8") from None
    text = text.strip()
    if not text:
        raise BadReading("malformed", "empty line")
    if text[0] == "{" or "," not in text:
        t, values = _parse_json(text, now)
    else:
        t, values = _parse_csv(text)
    return Reading(t, np.asarray(values, dtype=np.float64))


def _nonfinite(r: Reading) -> str | None:
    if not math.isfinite(r.t):
        return f"t = {r.t!r}"
    # NaN fails the comparison; values beyond float32 would become inf in a float32 window.
    if not bool(np.all(np.abs(r.values) <= _F32_MAX)):
        return "a value is NaN, infinite or beyond float32"
    return None


def parse_reading(data: bytes | str, now: float, max_line_bytes: int = 4096) -> Reading:
    """Parse one line or payload (JSON or CSV, see the module docstring) into a :class:`Reading`.

    ``now`` is the arrival time, used when the reading carries no ``t``. Raises
    :class:`BadReading` (``malformed`` or ``nonfinite``); the width and clock checks are
    :class:`ReadingFilter`'s.
    """
    r = _parse(data, now, max_line_bytes)
    problem = _nonfinite(r)
    if problem is not None:
        raise BadReading("nonfinite", problem)
    return r


@dataclass(frozen=True)
class ReadingLimits:
    """What a :class:`ReadingFilter` accepts (see the module docstring for each reason).

    ``n_features`` None: the first well-formed reading fixes the width. Times are seconds.
    """

    n_features: int | None = None
    max_ahead_s: float = 10.0
    max_behind_s: float = 3600.0
    max_disorder_s: float = 60.0
    max_line_bytes: int = 4096

    def __post_init__(self) -> None:
        if self.n_features is not None and not (
            isinstance(self.n_features, int) and self.n_features >= 1
        ):
            raise ConfigError(f"n_features {self.n_features!r}: use an integer >= 1 (or None)")
        for name in ("max_ahead_s", "max_behind_s", "max_disorder_s"):
            value = getattr(self, name)
            # NaN passes a range check; insist on finite.
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} {value!r}: use a finite number of seconds >= 0")
        if not (isinstance(self.max_line_bytes, int) and 16 <= self.max_line_bytes <= 1 << 20):
            raise ConfigError(
                f"max_line_bytes {self.max_line_bytes!r}: use an integer between 16 and 1048576"
            )


@dataclass
class ReadingFilter:
    """Parse and check lines in arrival order; count each rejection by reason.

    Not thread-safe: one source's reader thread owns it (read counters via :meth:`counts`).
    """

    limits: ReadingLimits = field(default_factory=ReadingLimits)
    name: str = "stream"  # names the source in log lines
    rejected: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    newest_t: float | None = None
    n_features: int | None = None

    def __post_init__(self) -> None:
        if self.n_features is None:
            self.n_features = self.limits.n_features

    def reject(self, reason: str, detail: str = "") -> str:
        """Count one rejection; log the first few of each reason, then every 10x more."""
        self.rejected[reason] += 1
        n = self.rejected[reason]
        if n <= 3 or _is_power_of_ten(n):
            _log.warning("%s: rejected reading (%s, %d so far): %s", self.name, reason, n, detail)
        else:
            _log.debug("%s: rejected reading (%s): %s", self.name, reason, detail)
        return reason

    def check(self, data: bytes | str, now: float) -> Reading | str:
        """The accepted reading, or the reason it was rejected (counted). Never raises."""
        lim = self.limits
        try:
            r = _parse(data, now, lim.max_line_bytes)
        except BadReading as exc:
            return self.reject(exc.reason, exc.detail)
        width = self.n_features
        if len(r.values) == 0 or (width is not None and len(r.values) != width):
            return self.reject("width", f"{len(r.values)} values, expected {width or '>= 1'}")
        problem = _nonfinite(r)
        if problem is not None:
            return self.reject("nonfinite", problem)
        if r.t > now + lim.max_ahead_s:
            return self.reject("future", f"t is {r.t - now:.3f} s ahead of the arrival time")
        if r.t < now - lim.max_behind_s:
            return self.reject("past", f"t is {now - r.t:.3f} s behind the arrival time")
        if self.newest_t is not None and r.t < self.newest_t - lim.max_disorder_s:
            return self.reject(
                "disorder", f"t is {self.newest_t - r.t:.3f} s older than the newest reading"
            )
        if width is None:
            self.n_features = len(r.values)
        self.newest_t = r.t if self.newest_t is None else max(self.newest_t, r.t)
        self.accepted += 1
        return r

    def offer(self, data: bytes | str, now: float) -> Reading | None:
        """:meth:`check`, returning None for a rejected reading."""
        out = self.check(data, now)
        return out if isinstance(out, Reading) else None

    def counts(self) -> dict[str, int]:
        """Rejections so far by reason (a copy)."""
        return dict(self.rejected)


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
