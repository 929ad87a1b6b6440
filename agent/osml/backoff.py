"""Retry schedules as pure generators: how long to wait before each next attempt.

The caller owns the clock and the sleeping (``stop.wait(delay)``), so the schedule is tested
without waiting::

    for delay in delays():
        try:
            connect()
            break
        except TransportError:
            stop.wait(delay)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

__all__ = ["delays", "full_jitter"]


def delays(first: float = 0.5, cap: float = 10.0, factor: float = 2.0) -> Iterator[float]:
    """``first``, ``first * factor``, ...: geometric growth up to ``cap``, then ``cap`` forever."""
    if not (math.isfinite(first) and math.isfinite(cap) and math.isfinite(factor)):
        raise ValueError("first, cap and factor must be finite")
    if first <= 0 or cap < first or factor < 1:
        raise ValueError(f"need 0 < first <= cap and factor >= 1, got {first}, {cap}, {factor}")
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


def full_jitter(schedule: Iterator[float], rng: random.Random | None = None) -> Iterator[float]:
    """Each delay of ``schedule`` replaced by a uniform draw from [0, delay].

    Many agents that lost the same broker at once then do not all come back in the same instant.
    """
    draw = rng if rng is not None else random.Random()
    for delay in schedule:
        yield draw.uniform(0.0, delay)
