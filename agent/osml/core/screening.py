"""Screening: what an agent checks in its neighbours' embeddings before they may pull on it.

A frame that passed :mod:`osml.wire.inbox` is well formed and really from the neighbour, but the
neighbour itself may be broken or hostile. Before affinity and osmosis, each neighbour's
embeddings for the round are screened against the agent's own (pure numpy):

* ``constant``: no variation across steps (relative spread below ``min_spread``). A constant
  vector carries no information about the steps, yet can have a high plain cosine with every row
  (embeddings share the context anchor) and so draw weight and flatten the target.
* ``scale``: the neighbour's median row norm is more than ``max_scale`` times larger or smaller
  than the agent's own. Inside that band the neighbour is *rescaled* to the agent's own median
  norm, so no neighbour can inflate (or shrink) the target, round after round, by sending larger
  (or smaller) vectors: osmosis moves where embeddings point, not how long they are.
* ``copy``: the neighbour sent, quantized to int8, exactly what another neighbour sent in an
  earlier round, or what the agent itself sent in this or an earlier round (a replay under a
  new name, or an echo). Honest encoders never produce identical matrices.

Screened neighbours are left out of the blend and count as affinity 0 for the round, so a
neighbour that stays broken leaves the sub-context.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from osml.core.quantize import quantize_int8

__all__ = [
    "CopyDetector",
    "ScreenSettings",
    "fingerprint",
    "median_norm",
    "relative_spread",
    "screen",
]

_EPS = 1e-12


@dataclass(frozen=True)
class ScreenSettings:
    max_scale: float = 10.0
    min_spread: float = 1e-4
    copy_memory: int = 8  # rounds of fingerprints kept to recognise replays

    def __post_init__(self) -> None:
        if self.max_scale < 1.0:
            raise ValueError("max_scale must be >= 1")
        if not 0.0 <= self.min_spread < 1.0:
            raise ValueError("min_spread must be in [0, 1)")
        if self.copy_memory < 0:
            raise ValueError("copy_memory must be >= 0")


def median_norm(x: np.ndarray) -> float:
    """Median Euclidean norm of the rows of ``x`` (steps, dim)."""
    return float(np.median(np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)))


def relative_spread(x: np.ndarray) -> float:
    """How much the rows vary across steps, relative to their size: ``sqrt(mean |x - mean|^2)
    / sqrt(mean |x|^2)``, in [0, 1]; 0 for constant rows (and for all-zero ones)."""
    x = np.asarray(x, dtype=np.float64)
    total = float(np.mean(np.sum(x**2, axis=1)))
    if total <= _EPS:
        return 0.0
    return float(np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1)) / total))


def fingerprint(x: np.ndarray) -> bytes:
    """A digest of ``x`` quantized to int8 the way frames carry it: equal for a re-sent copy."""
    q, _ = quantize_int8(np.asarray(x, dtype=np.float32))
    return hashlib.sha256(q.tobytes()).digest()


class CopyDetector:
    """Remembers who sent which matrix over the last ``memory`` rounds."""

    def __init__(self, memory: int = 8) -> None:
        self._rounds: deque[dict[bytes, str]] = deque(maxlen=max(memory, 1))
        self.enabled = memory > 0

    def copies(
        self, received: Mapping[str, np.ndarray], own_id: str, own: np.ndarray
    ) -> dict[str, str]:
        """Neighbours that sent a matrix first seen from someone else -> that someone: another
        neighbour in an earlier round, or this agent (``own_id``, whose matrix this round is
        ``own``) in this or an earlier round. Then remembers this round's matrices."""
        if not self.enabled:
            return {}
        mine = fingerprint(own)
        prints = {nb: fingerprint(x) for nb, x in received.items()}
        found: dict[str, str] = {}
        for nb, fp in prints.items():
            if fp == mine:
                found[nb] = own_id
                continue
            for seen in self._rounds:
                owner = seen.get(fp)
                if owner is not None and owner != nb:
                    found[nb] = owner
                    break
        now = {fp: nb for nb, fp in prints.items() if nb not in found}
        now[mine] = own_id
        self._rounds.append(now)
        return found


def screen(
    own: np.ndarray,
    received: Mapping[str, np.ndarray],
    settings: ScreenSettings = ScreenSettings(),
    copies: Mapping[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Split ``received`` into (kept neighbours, rescaled to the own median norm; screened
    neighbours -> reason). ``copies`` is what :meth:`CopyDetector.copies` found this round."""
    own_norm = median_norm(own)
    kept: dict[str, np.ndarray] = {}
    screened: dict[str, str] = {}
    for nb, x in received.items():
        x = np.asarray(x, dtype=np.float32)
        if copies and nb in copies:
            screened[nb] = "copy"
            continue
        if not np.isfinite(x).all():
            screened[nb] = "nonfinite"
            continue
        if relative_spread(x) < settings.min_spread:
            screened[nb] = "constant"
            continue
        norm = median_norm(x)
        if own_norm > _EPS:
            ratio = norm / own_norm
            if not 1.0 / settings.max_scale <= ratio <= settings.max_scale:
                screened[nb] = "scale"
                continue
            x = (x.astype(np.float64) / ratio).astype(np.float32)
        kept[nb] = x
    return kept, screened
