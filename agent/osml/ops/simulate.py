"""``osml simulate``: N agents in one process, the real core, an in-memory exchange.

Everything but the network is the production path: each agent has its own torch trainer
(:mod:`osml.trainer`), embeds with onnxruntime from the ONNX bytes that trainer exported, sends
real wire frames (:mod:`osml.wire.codec`, so int8 quantisation is in the loop) and decides with its own
:class:`~osml.core.learner.OsmoticLearner` from what it alone received. The simulator only delivers
frames along the topology's links and, for the report, evaluates every agent on the test set.

Round ``r`` of the report is the state *before* the r-th exchange: round 0 shows the independently
initialised encoders, so the gain from osmosis is visible.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from osml.agent.data import Dataset, windows
from osml.agent.inference import OnnxEncoder
from osml.core.anchor import context_anchor
from osml.core.learner import LearnerSettings, OsmoticLearner
from osml.core.metrics import paper_similarity, ridge_probe_r2, spread
from osml.core.similarity import centered_alignment, strict_alignment
from osml.core.topology import neighbours as topology_neighbours
from osml.wire.codec import Frame, decode_frame, encode_frame

__all__ = ["Behaviour", "SimulationSettings", "evaluate", "simulate"]

# A hostile neighbour for drills: (round, honest embeddings by agent, earlier rounds) -> embeddings.
Behaviour = Callable[
    [int, Mapping[str, np.ndarray], Sequence[Mapping[str, np.ndarray]]], np.ndarray
]


@dataclass(frozen=True)
class SimulationSettings:
    rounds: int = 10
    window: int = 10
    embedding_dim: int = 5
    topology: str = "full"
    seed: int = 0
    context: str = "sim"
    architectures: dict[str, str] = field(default_factory=dict)  # per-agent override, default gru
    anchor_norm: float = 3.8
    learner: LearnerSettings = field(default_factory=LearnerSettings)
    trainer: object = None  # osml.trainer.TrainerSettings; typed loosely to keep torch optional

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.window < 1 or self.embedding_dim < 1:
            raise ValueError("rounds >= 0, window >= 1 and embedding_dim >= 1 are required")


@dataclass
class _Agent:
    agent_id: str
    train_windows: np.ndarray
    test_windows: np.ndarray
    trainer: object
    learner: OsmoticLearner
    encoder: OnnxEncoder


def evaluate(
    train_emb: dict[str, np.ndarray],
    test_emb: dict[str, np.ndarray],
    train_last: dict[str, np.ndarray],
    test_last: dict[str, np.ndarray],
    subcontexts: dict[str, list[str]],
) -> dict[str, object]:
    """Report figures for one round from every agent's train/test embeddings."""
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


def simulate(
    dataset: Dataset,
    settings: SimulationSettings,
    agent_ids: Sequence[str] | None = None,
    progress: Callable[[dict[str, object]], None] | None = None,
    adversaries: Mapping[str, Behaviour] | None = None,
) -> dict[str, object]:
    """Run the simulation; returns the report (rounds, final) and the final test embeddings
    under the key ``"embeddings"`` (a dict agent id -> (steps, dim) array).

    ``adversaries`` adds hostile agents (id -> :mod:`osml_testing.adversary` behaviour): they are linked
    by the topology like the others and send frames every round, but never learn and are not
    evaluated; the report covers the honest agents only."""
    from osml.trainer import EncoderTrainer, TrainerSettings  # torch only from here on

    ids = list(agent_ids) if agent_ids else list(dataset.ids)
    ds = dataset.select(ids)
    adversaries = dict(adversaries or {})
    clash = set(adversaries) & set(ids)
    if clash:
        raise ValueError(f"adversary ids {sorted(clash)} are also honest agents")
    links = topology_neighbours([*ids, *adversaries], settings.topology, settings.seed)
    tset = settings.trainer if settings.trainer is not None else TrainerSettings()
    anchor = context_anchor(settings.context, settings.embedding_dim, settings.anchor_norm)
    t0 = time.perf_counter()
    agents: dict[str, _Agent] = {}
    for i, aid in enumerate(ids):
        data = ds[aid]
        arch = settings.architectures.get(aid, tset.architecture)  # type: ignore[attr-defined]
        ts = TrainerSettings(**{**tset.__dict__, "architecture": arch})  # type: ignore[attr-defined]
        tr = EncoderTrainer(
            ts,
            settings.window,
            data.n_features,
            settings.embedding_dim,
            seed=settings.seed * 1000 + i,
            train_data=data.train,
            offset=anchor,
        )
        train_w = np.ascontiguousarray(windows(data.train, settings.window))
        model, card, _ = tr.export(train_w, agent=aid, context=settings.context)
        agents[aid] = _Agent(
            aid,
            train_w,
            np.ascontiguousarray(windows(data.test, settings.window)),
            tr,
            OsmoticLearner(aid, links[aid], settings.learner),
            OnnxEncoder.from_bytes(model, card),
        )
    train_last = {a: ag.train_windows[:, -1, :] for a, ag in agents.items()}
    test_last = {a: ag.test_windows[:, -1, :] for a, ag in agents.items()}

    rounds: list[dict[str, object]] = []
    subcontexts = {a: sorted([a, *links[a]]) for a in ids}
    history: list[dict[str, np.ndarray]] = []
    for r in range(settings.rounds + 1):
        # Evaluate the models as they stand at the start of this round (report only).
        train_emb = {a: ag.encoder.encode(ag.train_windows) for a, ag in agents.items()}
        test_emb = {a: ag.encoder.encode(ag.test_windows) for a, ag in agents.items()}
        entry: dict[str, object] = {
            "round": r,
            "model_versions": {a: ag.encoder.version for a, ag in agents.items()},
            **evaluate(train_emb, test_emb, train_last, test_last, subcontexts),
        }
        if r == settings.rounds:
            entry["subcontexts"] = subcontexts
            entry["elapsed_s"] = round(time.perf_counter() - t0, 3)
            rounds.append(entry)
            if progress:
                progress(entry)
            break
        # Exchange: one frame per agent, delivered to each neighbour's inbox.
        inbox: dict[str, dict[str, np.ndarray]] = {a: {} for a in [*ids, *adversaries]}
        sent: dict[str, int] = {}
        outgoing = {a: (ag.encoder.version, train_emb[a]) for a, ag in agents.items()}
        for a, behave in adversaries.items():
            outgoing[a] = (0, behave(r, train_emb, history))
        history = [*history[-31:], train_emb]
        for a, (version, emb) in outgoing.items():
            frame = encode_frame(
                Frame(
                    context=settings.context,
                    source=a,
                    round=r,
                    step_start=settings.window - 1,
                    model_version=version,
                    embeddings=emb,
                )
            )
            sent[a] = len(frame) * len(links[a])
            for nb in links[a]:
                inbox[nb][a] = decode_frame(frame).embeddings
        outcomes = {a: ag.learner.step(train_emb[a], inbox[a]) for a, ag in agents.items()}
        subcontexts = {a: o.subcontext for a, o in outcomes.items()}
        losses = {}
        for a, ag in agents.items():
            losses[a] = ag.trainer.fit(ag.train_windows, outcomes[a].target)  # type: ignore[attr-defined]
            model, card, _ = ag.trainer.export(ag.train_windows, agent=a, context=settings.context)  # type: ignore[attr-defined]
            ag.encoder = OnnxEncoder.from_bytes(model, card)
        entry.update(
            {
                "subcontexts": subcontexts,
                "osmosis_weights": {a: o.weights for a, o in outcomes.items()},
                "affinity": {a: o.affinity for a, o in outcomes.items()},
                "affinity_memory": {a: o.memory for a, o in outcomes.items()},
                "equilibrium": {a: o.equilibrium for a, o in outcomes.items()},
                "screened": {a: o.screened for a, o in outcomes.items()},
                "embedding_change": {a: o.change for a, o in outcomes.items()},
                "bytes_sent": sent,
                "losses": losses,
                "elapsed_s": round(time.perf_counter() - t0, 3),
            }
        )
        rounds.append(entry)
        if progress:
            progress(entry)
    final_test = {a: ag.encoder.encode(ag.test_windows) for a, ag in agents.items()}
    last = rounds[-1]
    return {
        "dataset": ds.name,
        "agents": ids,
        "topology": settings.topology,
        "neighbours": links,
        "rounds": rounds,
        "final": {
            "round": last["round"],
            "subcontexts": subcontexts,
            "osmosis_weights": rounds[-2]["osmosis_weights"] if len(rounds) > 1 else {},
            **{
                k: last[k]
                for k in (
                    "strict_alignment",
                    "centered_alignment",
                    "paper_similarity",
                    "probe_r2",
                    "spread",
                )
            },
        },
        "embeddings": final_test,
    }
