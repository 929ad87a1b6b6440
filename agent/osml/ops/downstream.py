"""What the embeddings are worth: the report's downstream probes, for data with labels.

For a dataset with test labels (``test_labels.csv``, see :mod:`osml.agent.data`),
:func:`downstream` fits the probes of :mod:`osml.core.probes` (linear and kNN-5) on the final
test embeddings of the run and scores them, next to two anchors made of raw data:

* **embeddings**, a transfer matrix: a probe fitted on agent ``a``'s embeddings is scored on
  agent ``b``'s embeddings of the same steps, through ``a``'s standardisation (no
  recalibration); the diagonal is each agent on its own embeddings;
* **local**: the same probe on agent ``a``'s raw windows (each window flattened to one row of
  ``window x features`` values), what the agent could do alone without an encoder;
* **central**: on the raw windows of every member of ``a``'s final sub-context side by side
  (their rows concatenated), what a centre holding all their raw data could do.

Embedding row ``i`` is the test window ending at step ``i + window - 1``, and takes that step's
label. The rows are split by :func:`osml.core.probes.block_split`: contiguous blocks, alternate
ones to fit and to score, ``window - 1`` rows dropped at each block start, so no fit window
shares a step with a score window (a random split would: neighbouring windows overlap).
Every probe uses the same rows, so every figure in the section is comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from osml.agent.data import Dataset, windows
from osml.agent.records import finite_or_none
from osml.core.probes import (
    DEFAULT_BLOCKS,
    PROBES,
    accuracy,
    block_split,
    fit_probe,
    majority_share,
)
from osml.errors import DataError

__all__ = ["Downstream", "ProbeTable", "downstream"]


@dataclass(frozen=True)
class ProbeTable:
    """One probe's accuracies: ``embedding[a][b]`` fitted on ``a``, scored on ``b``; the anchors
    ``local[a]`` and ``central[a]`` on raw windows."""

    embedding: dict[str, dict[str, float | None]]
    local: dict[str, float]
    central: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {f.name: finite_or_none(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProbeTable:
        return cls(**{f.name: dict(data.get(f.name) or {}) for f in fields(cls)})


@dataclass(frozen=True)
class Downstream:
    """The report's ``downstream`` section."""

    window: int
    blocks: int
    fit_windows: int
    score_windows: int
    classes: list[int]
    majority: float  # accuracy of always answering the fit rows' most frequent class
    central_members: dict[str, list[str]]  # agent -> whose raw windows form its central anchor
    linear: ProbeTable
    knn: ProbeTable

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in PROBES}
        return {**finite_or_none(out), **{p: getattr(self, p).to_json() for p in PROBES}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Downstream:
        values: dict[str, Any] = {f.name: data[f.name] for f in fields(cls) if f.name not in PROBES}
        for p in PROBES:
            values[p] = ProbeTable.from_json(data.get(p) or {})
        return cls(**values)


def downstream(
    dataset: Dataset,
    embeddings: Mapping[str, np.ndarray],
    subcontexts: Mapping[str, Sequence[str]],
    window: int,
    blocks: int = DEFAULT_BLOCKS,
) -> Downstream | None:
    """The downstream section of a run on ``dataset``, or None when its test rows have no labels.

    ``embeddings``: each evaluated agent's final test embeddings (one row per test window);
    ``subcontexts``: each agent's final sub-context (members without embeddings are left out).
    """
    if dataset.test_labels is None:
        return None
    ids = list(embeddings)
    raw = {a: np.asarray(windows(dataset[a].test, window)) for a in ids}
    n = dataset.n_test - window + 1
    for a in ids:
        if len(embeddings[a]) != n:
            raise DataError(
                f"agent {a!r} has {len(embeddings[a])} test embeddings; {dataset.n_test} test "
                f"rows in windows of {window} make {n}"
            )
    labels = dataset.test_labels[window - 1 :]
    fit, score = block_split(n, window, blocks)
    members = {a: [m for m in subcontexts.get(a, [a]) if m in raw] or [a] for a in ids}

    def flat(agents: Sequence[str]) -> np.ndarray:
        return np.concatenate([raw[m].reshape(n, -1) for m in agents], axis=1)

    def score_of(kind: str, x_fit: np.ndarray, x_score: Sequence[np.ndarray]) -> list[float | None]:
        probe = fit_probe(kind, x_fit, labels[fit])
        # None for rows of another width (agents of one run share the embedding size)
        return [
            accuracy(probe.predict(x), labels[score]) if x.shape[1:] == x_fit.shape[1:] else None
            for x in x_score
        ]

    def one(kind: str, x: np.ndarray) -> float:
        got = score_of(kind, x[fit], [x[score]])[0]
        assert got is not None
        return got

    tables = {}
    for kind in PROBES:
        transfer = {}
        for a in ids:
            scored = score_of(kind, embeddings[a][fit], [embeddings[b][score] for b in ids])
            transfer[a] = dict(zip(ids, scored, strict=True))
        local = {a: one(kind, flat([a])) for a in ids}
        central: dict[str, float] = {}
        by_group: dict[tuple[str, ...], float] = {}
        for a in ids:
            group = tuple(members[a])
            if group not in by_group:
                by_group[group] = one(kind, flat(group))
            central[a] = by_group[group]
        tables[kind] = ProbeTable(transfer, local, central)
    return Downstream(
        window=window,
        blocks=blocks,
        fit_windows=len(fit),
        score_windows=len(score),
        classes=sorted({int(c) for c in labels.tolist()}),
        majority=majority_share(labels[fit], labels[score]),
        central_members=members,
        linear=tables["linear"],
        knn=tables["knn"],
    )
