"""The context anchor: a fixed point every agent of a context embeds around.

An agent's embedding is ``anchor + variation``. The anchor is derived from the context name alone
(sha256 -> seed -> a random direction of a given norm), so every agent of a context knows it
without talking to anyone, and agents of different contexts get unrelated anchors.

Why: the osmosis pull aligns what *varies* across steps; the anchor gives every member the same
mean, so plain same-step cosines are high inside a sub-context. The variation keeps a set share of
the energy (see ``spread`` in :mod:`osml.core.metrics`), so the anchor never hides a collapse: the
centred alignment figure ignores it entirely.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["context_anchor"]


def context_anchor(context: str, dim: int, norm: float) -> np.ndarray:
    if dim < 1 or norm < 0:
        raise ValueError("dim must be >= 1 and norm >= 0")
    seed = int.from_bytes(hashlib.sha256(context.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return (norm * v / np.linalg.norm(v)).astype(np.float32)
