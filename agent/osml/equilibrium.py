"""Equilibrium detection: an agent's own view of whether it has settled.

An agent is *at equilibrium* when, for ``patience`` consecutive rounds, its embeddings of the
round's steps moved by less than ``tolerance`` (relative change, :func:`relative_change`) and its
sub-context did not change. It keeps running afterwards: the equilibrium is dynamic, and a change
in the data or the neighbours simply resets the count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
    streak: int = 0
    last_subcontext: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.tolerance <= 0 or self.patience < 1:
            raise ValueError("tolerance must be > 0 and patience >= 1")

    def update(self, change: float | None, subcontext: Iterable[str]) -> bool:
        """Record one round; returns whether the agent is now at equilibrium.

        ``change`` is None on the first round (nothing to compare with)."""
        sub = tuple(sorted(subcontext))
        steady = change is not None and change < self.tolerance and sub == self.last_subcontext
        self.streak = self.streak + 1 if steady else 0
        self.last_subcontext = sub
        return self.at_equilibrium

    @property
    def at_equilibrium(self) -> bool:
        return self.streak >= self.patience

    def to_dict(self) -> dict[str, object]:
        return {"streak": self.streak, "last_subcontext": list(self.last_subcontext or [])}
