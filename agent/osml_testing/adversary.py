"""Hostile neighbours, for drills and tests: what a compromised agent could send.

Each behaviour is a function ``(round, honest, history) -> (steps, dim) embeddings`` where
``honest`` maps every honest agent to its embeddings of this round and ``history`` is the list of
earlier rounds' ``honest`` maps, oldest first. The drills (``scripts/adversary_drill.py``, through
:func:`osml.ops.simulate.simulate`) add such an agent to the fleet: it is linked like any other, its
frames go through the real codec, and it never learns.

Specs: ``constant`` (every row the context anchor, the constant an attacker would pick to look
like the context), ``scaled:SRC[:FACTOR]`` (agent SRC's current embeddings times FACTOR, default
1e6) and ``replay:SRC[:LAG]`` (agent SRC's embeddings from LAG rounds ago, default 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from osml.ops.simulate import Behaviour

__all__ = ["Behaviour", "constant", "parse_adversary", "replay", "scaled"]


def constant(vector: np.ndarray) -> Behaviour:
    """Every step the same ``vector``."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)

    def send(
        rnd: int, honest: Mapping[str, np.ndarray], history: Sequence[Mapping[str, np.ndarray]]
    ) -> np.ndarray:
        n = len(next(iter(honest.values())))
        return np.tile(v, (n, 1))

    return send


def scaled(source: str, factor: float = 1e6) -> Behaviour:
    """``source``'s embeddings of this round, times ``factor``."""

    def send(
        rnd: int, honest: Mapping[str, np.ndarray], history: Sequence[Mapping[str, np.ndarray]]
    ) -> np.ndarray:
        return (np.asarray(honest[source], dtype=np.float64) * factor).astype(np.float32)

    return send


def replay(source: str, lag: int = 3) -> Behaviour:
    """``source``'s embeddings from ``lag`` rounds ago (its oldest ones while there are fewer)."""
    if lag < 1:
        raise ValueError("lag must be >= 1")

    def send(
        rnd: int, honest: Mapping[str, np.ndarray], history: Sequence[Mapping[str, np.ndarray]]
    ) -> np.ndarray:
        past = history[-lag] if len(history) >= lag else (history[0] if history else honest)
        return np.asarray(past[source], dtype=np.float32).copy()

    return send


def parse_adversary(spec: str, anchor: np.ndarray, honest_ids: Sequence[str]) -> Behaviour:
    """A behaviour from ``constant``, ``scaled:SRC[:FACTOR]`` or ``replay:SRC[:LAG]``.

    Raises ValueError with the accepted forms for anything else.
    """
    kind, *args = spec.split(":")
    try:
        if kind == "constant" and not args:
            return constant(anchor)
        if kind in ("scaled", "replay") and 1 <= len(args) <= 2:
            if args[0] not in honest_ids:
                raise ValueError(f"{args[0]!r} is not an honest agent ({', '.join(honest_ids)})")
            if kind == "scaled":
                return scaled(args[0], float(args[1]) if len(args) > 1 else 1e6)
            return replay(args[0], int(args[1]) if len(args) > 1 else 3)
    except ValueError as exc:
        raise ValueError(f"adversary {spec!r}: {exc}") from None
    raise ValueError(f"adversary {spec!r}: use constant, scaled:SRC[:FACTOR] or replay:SRC[:LAG]")
