"""The osmosis operator: what each agent's encoder is pulled toward.

Pure numpy. For one agent ``a`` with embeddings ``e_a(t)`` for the steps ``t`` of a round and the
embeddings ``e_j(t)`` that its neighbours ``j`` sent for the *same* steps, the osmosis target is

    target_a(t) = sum_j  w_aj(t) * e_j(t)           (j runs over a itself and its neighbours)

    w_aj(t) = m_aj * exp(cos(e_a(t), e_j(t)) / T) / sum_k m_ak * exp(cos(e_a(t), e_k(t)) / T)

where ``cos`` is the plain same-step cosine, ``T > 0`` the temperature and ``m_aj`` is 1 for the
agent itself and for neighbours inside its sub-context, 0 for neighbours outside it (see
:mod:`osml.core.subcontext`). So a neighbour that agrees at step t pulls more at that step; a
neighbour outside the sub-context never pulls; an agent alone in its sub-context is pulled
toward itself.

A high temperature (the default 1.0) keeps weights near uniform inside the sub-context, which is
what makes independently initialised encoders converge: at round 0 their embedding spaces are
unrelated and same-step cosines say little, so a sharp softmax would let nobody pull anybody.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from osml.core.similarity import same_step_cosine

__all__ = [
    "osmosis_target",
    "osmosis_weights",
    "restore_spread",
    "share_votes",
    "trimmed_target",
    "twin_vote",
]

_EPS = 1e-12


def _stack(neighbours: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(neighbours, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, *shape)
    if arr.shape == shape:  # one neighbour given without the leading axis
        return arr[None]
    if arr.ndim != 3 or arr.shape[1:] != shape:
        raise ValueError(f"neighbours must be (k, {shape[0]}, {shape[1]}), got {arr.shape}")
    return arr


def osmosis_weights(
    own: np.ndarray,
    neighbours: np.ndarray,
    members: np.ndarray,
    temperature: float = 1.0,
    present: np.ndarray | None = None,
) -> np.ndarray:
    """Per-step blend weights, self first: returns (1 + k, n) columns that sum to 1.

    ``own`` is (n, d); ``neighbours`` is (k, n, d) aligned on the same steps; ``members`` is a
    boolean (k,) vector saying which neighbours are in the agent's sub-context; ``present``, if
    given, a boolean (k, n) matrix of the steps each neighbour has data for (weight 0 elsewhere).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    own = np.asarray(own, dtype=np.float64)
    neighbours = _stack(neighbours, own.shape)
    members = np.asarray(members, dtype=bool).reshape(-1)
    if members.shape[0] != neighbours.shape[0]:
        raise ValueError(
            f"{members.shape[0]} membership flags for {neighbours.shape[0]} neighbours"
        )
    cos = np.ones((1 + neighbours.shape[0], own.shape[0]))
    for j, other in enumerate(neighbours):
        cos[1 + j] = same_step_cosine(own, other)
    # Subtracting the per-step maximum keeps exp() finite; cos <= 1 so this is cheap insurance.
    logits = cos / temperature
    logits -= logits.max(axis=0, keepdims=True)
    raw = np.exp(logits)
    raw[1:][~members] = 0.0
    if present is not None:  # (k, n): a neighbour pulls only at the steps it sent data for
        raw[1:][~np.asarray(present, dtype=bool).reshape(raw[1:].shape)] = 0.0
    weights: np.ndarray = raw / raw.sum(axis=0, keepdims=True)
    return weights


def osmosis_target(own: np.ndarray, neighbours: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Blend ``own`` (n, d) and ``neighbours`` (k, n, d) with ``weights`` (1 + k, n) -> (n, d)."""
    own = np.asarray(own, dtype=np.float64)
    stack = np.concatenate([own[None], _stack(neighbours, own.shape)])
    if weights.shape != stack.shape[:2]:
        raise ValueError(f"weights {weights.shape} do not match {stack.shape[:2]}")
    target: np.ndarray = np.einsum("kn,knd->nd", weights, stack).astype(np.float32)
    return target


def share_votes(ids: Sequence[str], twins: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Group ``ids`` so that linked ones (``twins``, pairs; links to ids not in ``ids`` are
    ignored) share one group: the voices of the blend, in the order of ``ids``."""
    parent = {i: i for i in ids}

    def root(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in twins:
        if a in parent and b in parent:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb, key=list(ids).index)] = min(ra, rb, key=list(ids).index)
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def twin_vote(twins: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The one vote of near-duplicate members (twins, ``(k, n, d)``; rows where ``present``
    (k, n) is False are ignored): their coordinate median, the mean of two. Whichever twin is
    the original, the vote is off by half their difference, and no twin can move it by agreeing
    with the agent: the agent's own embeddings stay out of the median, since a copy turned
    toward them would make it the agent's own and cancel the original's pull. Rows no twin has
    are 0 (give them weight 0)."""
    t = np.asarray(twins)  # kept in its own dtype (float32 from the learner)
    have = np.asarray(present, dtype=bool)
    votes = np.where(have[:, :, None], t, np.nan)
    anywhere: np.ndarray = np.any(have, axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan rows: no twin has them
        med = np.nanmedian(votes, axis=0)
    vote: np.ndarray = np.where(anywhere[:, None], med, 0.0)
    return vote


def trimmed_target(
    own: np.ndarray, neighbours: np.ndarray, weights: np.ndarray, trim: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The blend of :func:`osmosis_target` made robust to ``trim`` bad contributors per step.

    At each step and coordinate, among the contributors with weight > 0 (the agent itself and the
    members that sent that step), the ``trim`` largest and ``trim`` smallest values are dropped
    and the rest averaged with their weights (renormalised), when there are at least
    ``2 * trim + 2`` contributors, so that at least two values are averaged; with fewer, nothing
    is dropped (the plain blend). Three contributors are left alone on purpose: their median
    would move an agent between two members all the way to the nearer one, which cost the
    paper's complex context on a ring 0.04 of centred alignment.

    The bound: if at most ``trim`` contributors at a step are hostile and there are enough to
    trim, every coordinate of the target lies between the smallest and the largest value that
    the others (the agent's own included) have there, whatever the hostile ones sent.

    Returns ``(target (n, d) float32, share (1 + k, n))``: ``share`` is each contributor's mean
    weight over the coordinates after trimming (columns sum to 1), what the round reports as
    osmosis weights.
    """
    if trim < 0:
        raise ValueError("trim must be >= 0")
    own = np.asarray(own, dtype=np.float64)
    stack = np.concatenate([own[None], _stack(neighbours, own.shape)])  # (m, n, d)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != stack.shape[:2]:
        raise ValueError(f"weights {w.shape} do not match {stack.shape[:2]}")
    active = w > 0  # (m, n)
    count = active.sum(axis=0)  # (n,)
    # Rank each value among the step's active contributors, per coordinate (inactive rank last).
    keyed = np.where(active[:, :, None], stack, np.inf)
    rank = np.argsort(np.argsort(keyed, axis=0, kind="stable"), axis=0, kind="stable")
    cut = np.where(count >= 2 * trim + 2, trim, 0)[None, :, None]  # (1, n, 1)
    keep = active[:, :, None] & (rank >= cut) & (rank < count[None, :, None] - cut)
    kw = np.where(keep, w[:, :, None], 0.0)  # (m, n, d)
    norm = kw.sum(axis=0, keepdims=True)
    kw = kw / np.where(norm > 0, norm, 1.0)
    target: np.ndarray = np.einsum("mnd,mnd->nd", kw, stack).astype(np.float32)
    share: np.ndarray = kw.mean(axis=2)
    return target, share


def restore_spread(target: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Rescale the target's step-to-step variation, per dimension, to the agent's own.

    Averaging k embeddings that agree only partly shrinks what varies (the disagreeing parts
    cancel), so a plain blend also pulls every encoder toward its mean: a slow collapse that the
    anti-collapse term then has to undo. Keeping the blend's mean and direction of variation but
    the agent's own per-dimension spread makes osmosis move *where* embeddings point, not how much
    they vary. (n, d), (n, d) -> (n, d).
    """
    t = np.asarray(target, dtype=np.float64)
    o = np.asarray(own, dtype=np.float64)
    mu = t.mean(axis=0)
    scale = o.std(axis=0) / np.maximum(t.std(axis=0), 1e-12)
    restored: np.ndarray = (mu + (t - mu) * scale).astype(np.float32)
    return restored
