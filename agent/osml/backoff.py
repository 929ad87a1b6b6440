"""Retry schedules as pure generators: the caller sleeps, so tests need no clock."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["delays"]


def delays(first: float = 0.5, cap: float = 10.0, factor: float = 2.0) -> Iterator[float]:
    """``first``, ``first * factor``, ... up to ``cap`` seconds, then ``cap`` for ever."""
    if not (first > 0 and cap >= first and factor >= 1):
        raise ValueError("need first > 0, cap >= first and factor >= 1")
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)
