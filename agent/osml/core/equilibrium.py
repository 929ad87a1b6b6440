"""Equilibrium detection: an agent's own view of whether it has settled.

The equilibrium osmosis reaches is *dynamic*: every round the agent trains again on new targets,
so its embeddings keep moving a little (about 1.5% per round at the default learning rate, with
one round in three above 2%). A detector that demands every single round below a threshold
flickers on and off for ever. This one smooths and has hysteresis:

* the *level* of change is the median relative change (:func:`relative_change`) over the last
  ``window`` rounds, so one jumpy round does not count;
* an agent *settles* when the level has been below ``tolerance`` for ``patience`` consecutive
  rounds with an unchanged sub-context;
* a settled agent stays at equilibrium until the level rises above ``leave_factor * tolerance``,
  its sub-context changes, or a round cannot be compared (``change`` is None).

It keeps running afterwards; a real change in the data or the neighbours ends the equilibrium.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EquilibriumDetector", "relative_change"]


def relative_change(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean per-step distance between two embeddings of the same steps, relative to the mean
    norm of the previous ones: (n, d), (n, d) -> float >= 0."""
    p = np.asarray(previous, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    if p.shape != c.shape:
        raise ValueError(f"shapes differ: {p.shape} vs {c.shape}")
    scale = float(np.mean(np.linalg.norm(p, axis=1)))
    return float(np.mean(np.linalg.norm(c - p, axis=1)) / max(scale, 1e-12))


@dataclass
class EquilibriumDetector:
    tolerance: float = 0.02
    patience: int = 3
    window: int = 5
    leave_factor: float = 2.0
    streak: int = 0
    last_subcontext: tuple[str, ...] | None = None
    settled: bool = False
    recent: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.tolerance <= 0 or self.patience < 1 or self.window < 1 or self.leave_factor < 1:
            raise ValueError("tolerance must be > 0, patience and window >= 1, leave_factor >= 1")

    @property
    def level(self) -> float | None:
        """Median relative change over the last ``window`` rounds (None before any)."""
        return float(np.median(self.recent)) if self.recent else None

    def update(self, change: float | None, subcontext: Iterable[str]) -> bool:
        """Record one round; returns whether the agent is now at equilibrium.

        ``change`` is None on the first round (nothing to compare with)."""
        sub = tuple(sorted(subcontext))
        moved = sub != self.last_subcontext
        self.last_subcontext = sub
        if change is None:
            self.recent.clear()
        else:
            self.recent = [*self.recent, float(change)][-self.window :]
        level = self.level
        steady = change is not None and level is not None and level < self.tolerance and not moved
        self.streak = self.streak + 1 if steady else 0
        if self.settled:
            if (
                change is None
                or moved
                or (level is not None and level > self.leave_factor * self.tolerance)
            ):
                self.settled = False
                self.streak = 0
        elif self.streak >= self.patience:
            self.settled = True
        return self.settled

    @property
    def at_equilibrium(self) -> bool:
        return self.settled

    def to_dict(self) -> dict[str, object]:
        return {
            "streak": self.streak,
            "last_subcontext": list(self.last_subcontext or []),
            "settled": self.settled,
            "recent": list(self.recent),
        }

    def restore(self, data: dict[str, object]) -> None:
        """Take back what :meth:`to_dict` saved (an agent's state across restarts)."""
        self.streak = int(data.get("streak", 0))  # type: ignore[call-overload]
        sub = data.get("last_subcontext")
        self.last_subcontext = tuple(str(x) for x in sub) if isinstance(sub, list) and sub else None
        self.settled = bool(data.get("settled", False))
        recent = data.get("recent", [])
        self.recent = [float(x) for x in recent][-self.window :] if isinstance(recent, list) else []
