"""The report's rows, typed: one :class:`ReportRound` per round and the :class:`FinalSection`.

``osml simulate`` and ``osml run`` build their rows with the same function,
:func:`report_round`, from the same inputs: every agent's train and test embeddings at the start
of the round (the evaluation, report-only: agents never see it) and every agent's
:class:`~osml.agent.records.RoundRecord` of the round. Row ``r`` is the state *before* the r-th
exchange, so round 0 shows the encoders as initialised; the last row has no exchange.
JSON (``report.json``) stays the on-disk format: :meth:`ReportRound.to_json` leaves out the
fields a row does not have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from osml.agent.records import RoundRecord, finite_or_none
from osml.core.metrics import paper_similarity, ridge_probe_r2, spread
from osml.core.similarity import centered_alignment, strict_alignment
from osml.ops.downstream import Downstream

__all__ = ["FIGURES", "FinalSection", "ReportRound", "RunResult", "evaluate", "report_round"]

Matrix = dict[str, dict[str, float]]

# The evaluation figures of a row, also copied into the final section.
FIGURES = ("strict_alignment", "centered_alignment", "paper_similarity", "probe_r2", "spread")


@dataclass(frozen=True)
class ReportRound:
    round: int
    strict_alignment: Matrix
    centered_alignment: Matrix
    paper_similarity: dict[str, float]
    probe_r2: dict[str, float]
    spread: dict[str, float]
    subcontexts: dict[str, list[str]]
    model_versions: dict[str, int]
    # What the round's exchange recorded, per agent (None on the last row, which has none).
    osmosis_weights: dict[str, dict[str, float]] | None = None
    affinity: dict[str, dict[str, float]] | None = None
    affinity_memory: dict[str, dict[str, float]] | None = None
    equilibrium: dict[str, bool] | None = None
    embedding_change: dict[str, float | None] | None = None
    screened: dict[str, dict[str, str]] | None = None
    losses: dict[str, dict[str, float] | None] | None = None
    bytes_sent: dict[str, int] | None = None
    missing_frames: dict[str, list[str]] | None = None
    late_frames: dict[str, int] | None = None
    trainer: dict[str, str] | None = None
    round_s: dict[str, float] | None = None
    # Live sources only: steps each agent flagged as anomalous this round.
    anomalies: dict[str, int] | None = None
    elapsed_s: float | None = None

    @property
    def exchanged(self) -> bool:
        """True for a row with an exchange (all but the last)."""
        return self.osmosis_weights is not None

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: finite_or_none(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportRound:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class FinalSection:
    round: int
    subcontexts: dict[str, list[str]]
    osmosis_weights: dict[str, dict[str, float]]
    strict_alignment: Matrix
    centered_alignment: Matrix
    paper_similarity: dict[str, float]
    probe_r2: dict[str, float]
    spread: dict[str, float]

    @classmethod
    def of(cls, rows: Sequence[ReportRound]) -> FinalSection:
        """The final section of a run whose rows are ``rows`` (at least one)."""
        last = rows[-1]
        weights = next((r.osmosis_weights for r in reversed(rows) if r.osmosis_weights), {})
        return cls(
            round=last.round,
            subcontexts=last.subcontexts,
            osmosis_weights=weights,
            **{k: getattr(last, k) for k in FIGURES},
        )

    def to_json(self) -> dict[str, Any]:
        return {f.name: finite_or_none(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FinalSection:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunResult:
    """What ``osml simulate`` and ``osml run`` return: the report and the final embeddings."""

    dataset: str
    agents: list[str]
    topology: str
    neighbours: dict[str, list[str]]
    rounds: list[ReportRound]
    final: FinalSection
    embeddings: dict[str, np.ndarray]  # agent -> (test steps, dim), the final models
    elapsed_s: float | None = None
    workdir: str | None = None  # osml run: the fleet's work directory
    downstream: Downstream | None = None  # data with labels: the probes (osml.ops.downstream)
    # osml simulate --adversary: hostile agents (id -> spec); linked to every honest agent, never
    # evaluated, so no figure of the report is about them.
    adversaries: dict[str, str] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The report as JSON-ready data, plus ``embeddings`` (what ``write_run`` takes)."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "agents": self.agents,
            "topology": self.topology,
            "neighbours": self.neighbours,
            "rounds": [r.to_json() for r in self.rounds],
            "final": self.final.to_json(),
        }
        if self.elapsed_s is not None:
            out["elapsed_s"] = self.elapsed_s
        if self.workdir is not None:
            out["workdir"] = self.workdir
        if self.downstream is not None:
            out["downstream"] = self.downstream.to_json()
        if self.adversaries:
            out["adversaries"] = dict(self.adversaries)
        out["embeddings"] = self.embeddings
        return out


def evaluate(
    train_emb: Mapping[str, np.ndarray],
    test_emb: Mapping[str, np.ndarray],
    train_last: Mapping[str, np.ndarray],
    test_last: Mapping[str, np.ndarray],
    subcontexts: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """The figures of one round from every agent's train/test embeddings (report only)."""
    ids = list(test_emb)
    strict = {
        a: {b: strict_alignment(test_emb[a], test_emb[b]) for b in ids if b != a} for a in ids
    }
    centred = {
        a: {b: centered_alignment(test_emb[a], test_emb[b]) for b in ids if b != a} for a in ids
    }
    probe = {a: ridge_probe_r2(train_emb[a], train_last[a], test_emb[a], test_last[a]) for a in ids}
    # Groups of evaluated agents only (an adversary in a sub-context has no test embeddings).
    groups = sorted({tuple(a for a in s if a in test_emb) for s in subcontexts.values()})
    return {
        "strict_alignment": strict,
        "centered_alignment": centred,
        # Per sub-context as the agents saw it when these models were trained.
        "paper_similarity": {
            ",".join(g): paper_similarity([test_emb[a] for a in g]) for g in groups if len(g) > 1
        },
        "probe_r2": probe,
        "spread": {a: spread(test_emb[a]) for a in ids},
    }


def report_round(
    rnd: int,
    figures: Mapping[str, Any],
    subcontexts: Mapping[str, Sequence[str]],
    model_versions: Mapping[str, int],
    records: Mapping[str, RoundRecord] | None = None,
    bytes_before: Mapping[str, int] | None = None,
    started: float | None = None,
) -> ReportRound:
    """Row ``rnd``: ``figures`` from :func:`evaluate` of the models the round started with,
    ``subcontexts`` as they stood before it, and - for a round that exchanged - every agent's
    record of it (``bytes_before``: each agent's ``bytes_out`` after the previous round;
    ``started``: the run's Unix start time, for ``elapsed_s``)."""
    base: dict[str, Any] = {
        "round": rnd,
        **{k: figures[k] for k in FIGURES},
        "model_versions": dict(model_versions),
    }
    if records is None:
        return ReportRound(subcontexts={a: list(s) for a, s in subcontexts.items()}, **base)
    before = bytes_before or {}
    recs = dict(records)
    return ReportRound(
        **base,
        subcontexts={a: list(r.subcontext) for a, r in recs.items()},
        osmosis_weights={a: r.osmosis_weights for a, r in recs.items()},
        affinity={a: r.affinity for a, r in recs.items()},
        affinity_memory={a: r.affinity_memory for a, r in recs.items()},
        equilibrium={a: r.equilibrium for a, r in recs.items()},
        embedding_change={a: r.embedding_change for a, r in recs.items()},
        screened={a: r.screened for a, r in recs.items()},
        losses={a: r.losses for a, r in recs.items()},
        bytes_sent={a: r.bytes_out - before.get(a, 0) for a, r in recs.items()},
        missing_frames={a: r.missing for a, r in recs.items()},
        late_frames={a: r.late_frames for a, r in recs.items()},
        trainer={a: r.trainer for a, r in recs.items()},
        round_s={a: r.round_s for a, r in recs.items()},
        anomalies=(
            {a: r.anomalies for a, r in recs.items()}
            if any(r.anomaly_mode for r in recs.values())
            else None
        ),
        elapsed_s=(
            round(max(r.time for r in recs.values()) - started, 3)
            if started is not None and recs
            else None
        ),
    )
