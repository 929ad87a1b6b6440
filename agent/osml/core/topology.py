"""Who talks to whom: neighbour lists for a set of agents. Pure functions.

* ``full``      - everyone is everyone's neighbour;
* ``ring``      - agents in the given order, each linked to the next, the last to the first;
* ``random:K``  - a random K-regular graph (seeded), so each agent has exactly K neighbours.

Links are symmetric: if a lists b, b lists a. An agent only ever learns from its own list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from osml.errors import ConfigError

__all__ = ["neighbours", "parse_topology"]


def parse_topology(spec: str) -> tuple[str, int]:
    """``"full"`` -> ("full", 0); ``"random:3"`` -> ("random", 3). ConfigError if malformed."""
    kind, _, arg = spec.partition(":")
    if kind in ("full", "ring") and not arg:
        return kind, 0
    if kind == "random" and arg.isdigit() and int(arg) >= 1:
        return kind, int(arg)
    raise ConfigError(f"topology {spec!r} not understood: use full, ring or random:K (K >= 1)")


def _random_regular(ids: Sequence[str], k: int, rng: np.random.Generator) -> dict[str, list[str]]:
    n = len(ids)
    if k >= n or (n * k) % 2:
        raise ConfigError(f"random:{k} on {n} agents is impossible: need K < {n} and K * {n} even")
    # Start from a circulant k-regular graph on a random ordering (always valid), then mix it
    # with degree-preserving double-edge swaps: works for sparse and dense k alike.
    order = rng.permutation(n)
    edges: set[tuple[int, int]] = set()
    for i in range(n):
        for step in range(1, k // 2 + 1):
            a, b = order[i], order[(i + step) % n]
            edges.add((min(a, b), max(a, b)))
        if k % 2:
            a, b = order[i], order[(i + n // 2) % n]
            edges.add((min(a, b), max(a, b)))
    edge_list = sorted(edges)
    for _ in range(10 * len(edge_list)):
        i, j = rng.integers(len(edge_list), size=2)
        (a, b), (c, d) = edge_list[i], edge_list[j]
        if rng.random() < 0.5:
            c, d = d, c
        new1, new2 = (min(a, d), max(a, d)), (min(c, b), max(c, b))
        if a == d or c == b or new1 in edges or new2 in edges or new1 == new2:
            continue
        edges -= {edge_list[i], edge_list[j]}
        edges |= {new1, new2}
        edge_list[i], edge_list[j] = new1, new2
    out: dict[str, list[str]] = {x: [] for x in ids}
    for a, b in sorted(edges):
        out[ids[a]].append(ids[b])
        out[ids[b]].append(ids[a])
    return out


def neighbours(ids: Sequence[str], spec: str, seed: int = 0) -> dict[str, list[str]]:
    """Neighbour lists for ``ids`` under topology ``spec``."""
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise ConfigError("agent ids must be unique")
    kind, k = parse_topology(spec)
    if len(ids) < 2:
        return {i: [] for i in ids}
    if kind == "full":
        return {i: [j for j in ids if j != i] for i in ids}
    if kind == "ring":
        n = len(ids)
        return {
            ids[i]: sorted({ids[(i - 1) % n], ids[(i + 1) % n]} - {ids[i]}, key=ids.index)
            for i in range(n)
        }
    return _random_regular(ids, k, np.random.default_rng(seed))
