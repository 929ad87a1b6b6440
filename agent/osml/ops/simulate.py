"""``osml simulate``: N agents in one process, the very round a device runs, an in-memory exchange.

Each agent is an :class:`~osml.agent.round.AgentRound`, the same object ``osml agent`` drives
over MQTT. The simulator swaps only its two edges: the exchange is an in-memory hub
(:class:`MemoryHub`) that routes each published frame to the addressee's queue by its inbox
topic, and the trainer is an in-process torch trainer (:class:`~osml.trainer.local.LocalTrainer`).
Frames are real wire frames (int8 quantisation is in the loop), checked by each agent's own
:class:`~osml.wire.inbox.Inbox`, and every agent decides from what it alone received.

Rounds run in lockstep in one thread: every agent's :meth:`~osml.agent.round.AgentRound.begin`
(embed and send), then every agent's :meth:`~osml.agent.round.AgentRound.finish` (collect,
decide, train). For the report only, every agent's models are evaluated on the test set at the
start of each round: row ``r`` is the state *before* the r-th exchange, so round 0 shows the
independently initialised encoders and the gain from osmosis is visible.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from osml.agent.data import Dataset, windows
from osml.agent.inference import OnnxEncoder
from osml.agent.records import RoundRecord
from osml.agent.round import AgentRound, RoundSettings
from osml.agent.rounddata import FileWindows, TrainingBuffer
from osml.core.anchor import context_anchor
from osml.core.learner import LearnerSettings, OsmoticLearner
from osml.core.topology import neighbours as topology_neighbours
from osml.ops.adversaries import Behaviour, describe
from osml.ops.rows import FinalSection, ReportRound, RunResult, evaluate, report_round
from osml.wire import topics
from osml.wire.codec import Frame, encode_frame
from osml.wire.inbox import Inbox

__all__ = ["Behaviour", "MemoryHub", "SimulationSettings", "simulate"]


@dataclass(frozen=True)
class SimulationSettings:
    rounds: int = 10
    window: int = 10
    embedding_dim: int = 5
    topology: str = "full"
    seed: int = 0
    context: str = "sim"
    architectures: dict[str, str] = field(default_factory=dict)  # per agent; default: trainer's
    anchor_norm: float = 3.8
    learner: LearnerSettings = field(default_factory=LearnerSettings)
    trainer: Any = None  # osml.trainer.TrainerSettings; typed loosely to keep torch optional
    # Adversaries' frames reach each agent before the honest ones of the same round, though they
    # are made from them (a copier on a faster path than its original): the worst case for the
    # screening rule that tells twins apart by the order frames came in. Default: after them,
    # as a frame made from this round's frames comes.
    adversary_first: bool = False

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.window < 1 or self.embedding_dim < 1:
            raise ValueError("rounds >= 0, window >= 1 and embedding_dim >= 1 are required")


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    seq: int = 0  # the hub's count of delivered messages: the order they came in


@dataclass
class _Stats:
    reconnects: int = 0
    dropped_out: int = 0
    dropped_in: int = 0


class MemoryHub:
    """An in-memory broker: a queue per agent, filled by inbox topic."""

    def __init__(self) -> None:
        self.queues: dict[str, deque[_Message]] = {}
        self.delivered = 0

    def exchange(self, agent: str) -> _MemoryExchange:
        self.queues.setdefault(agent, deque())
        return _MemoryExchange(self, agent)

    def deliver(self, topic: str, payload: bytes) -> bool:
        parsed = topics.parse_inbox(topic)
        if parsed is None or parsed[1] not in self.queues:
            return False
        self.delivered += 1
        self.queues[parsed[1]].append(_Message(topic, payload, self.delivered))
        return True


class _MemoryExchange:
    """One agent's side of the hub. ``get`` never waits: in lockstep, what is not queued by the
    time an agent collects will not come this round."""

    def __init__(self, hub: MemoryHub, agent: str) -> None:
        self.hub = hub
        self.agent = agent
        self.stats = _Stats()

    def publish(self, topic: str, payload: bytes, *, droppable: bool = False) -> bool:
        return self.hub.deliver(topic, payload)

    def get(self, timeout: float | None = None) -> _Message | None:
        queue = self.hub.queues[self.agent]
        return queue.popleft() if queue else None


def simulate(
    dataset: Dataset,
    settings: SimulationSettings,
    agent_ids: Sequence[str] | None = None,
    progress: Callable[[ReportRound], None] | None = None,
    adversaries: Mapping[str, Behaviour] | None = None,
) -> RunResult:
    """Run the simulation: the report's rows and the final test embeddings.

    ``adversaries`` adds hostile agents (id -> behaviour, see :mod:`osml.ops.adversaries`): each
    is linked to every honest agent, sends each of them a frame every round (the behaviour is
    called once per addressee), never learns and is not evaluated; the report names them and its
    figures cover the honest agents only."""
    from osml.trainer import EncoderTrainer, TrainerSettings  # torch only from here on
    from osml.trainer.local import LocalTrainer

    ids = list(agent_ids) if agent_ids else list(dataset.ids)
    ds = dataset.select(ids)
    adversaries = dict(adversaries or {})
    clash = set(adversaries) & set(ids)
    if clash:
        raise ValueError(f"adversary ids {sorted(clash)} are also honest agents")
    links = topology_neighbours(ids, settings.topology, settings.seed)
    # An adversary is linked to every honest agent, whatever the honest topology.
    for a in adversaries:
        links[a] = list(ids)
        for h in ids:
            links[h] = [*links[h], a]
    tset = settings.trainer if settings.trainer is not None else TrainerSettings()
    anchor = context_anchor(settings.context, settings.embedding_dim, settings.anchor_norm)
    hub = MemoryHub()
    t0 = time.perf_counter()
    wall0 = time.time()
    agents: dict[str, AgentRound] = {}
    tests: dict[str, np.ndarray] = {}
    trains: dict[str, np.ndarray] = {}
    evals: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def evaluator(aid: str) -> Callable[[int, OnnxEncoder], None]:
        def on_evaluate(rnd: int, encoder: OnnxEncoder) -> None:
            train_w = trains[aid]
            evals.setdefault(rnd, {})[aid] = (encoder.encode(train_w), encoder.encode(tests[aid]))

        return on_evaluate

    for i, aid in enumerate(ids):
        data = ds[aid]
        arch = settings.architectures.get(aid, tset.architecture)
        ts = TrainerSettings(**{**tset.__dict__, "architecture": arch})
        fit = EncoderTrainer(
            ts,
            settings.window,
            data.n_features,
            settings.embedding_dim,
            seed=settings.seed * 1000 + i,
            train_data=data.train,
            offset=anchor,
        )
        train_w = np.ascontiguousarray(windows(data.train, settings.window))
        tests[aid] = np.ascontiguousarray(windows(data.test, settings.window))
        trains[aid] = train_w
        trainer = LocalTrainer(fit, aid, settings.context)
        first = trainer.initial(train_w)
        agents[aid] = AgentRound(
            RoundSettings(
                agent_id=aid,
                context=settings.context,
                neighbours=tuple(links[aid]),
                deadline=0.0,  # lockstep: everything sent this round is already queued
                train_wait=0.0,
                max_frame_bytes=1 << 30,  # one frame per round, as the report counts bytes
            ),
            encoder=OnnxEncoder.from_bytes(first.model, first.card),
            data=FileWindows(train_w, settings.window),
            learner=OsmoticLearner(aid, links[aid], settings.learner),
            inbox=Inbox(
                context=settings.context,
                me=aid,
                neighbours=links[aid],
                dim=settings.embedding_dim,
                max_frame_bytes=1 << 30,
            ),
            exchange=hub.exchange(aid),
            trainer=trainer,
            buffer=TrainingBuffer(capacity=max(1, len(train_w))),
            on_evaluate=evaluator(aid),
        )
        agents[aid].trainer_status = "ok"
    for a in adversaries:
        hub.exchange(a)
    train_last = {a: trains[a][:, -1, :] for a in agents}
    test_last = {a: tests[a][:, -1, :] for a in agents}

    rows: list[ReportRound] = []
    subcontexts = {a: sorted([a, *links[a]]) for a in ids}
    history: list[dict[str, np.ndarray]] = []
    bytes_before = {a: 0 for a in ids}

    def figures(rnd: int) -> dict[str, Any]:
        train_emb = {a: evals[rnd][a][0] for a in ids}
        test_emb = {a: evals[rnd][a][1] for a in ids}
        return evaluate(train_emb, test_emb, train_last, test_last, subcontexts)

    for r in range(settings.rounds):
        for ag in agents.values():
            ag.begin(r)
        honest = {a: ag.own for a, ag in agents.items() if ag.own is not None}
        queued = {a: len(q) for a, q in hub.queues.items()} if settings.adversary_first else {}
        for a, behave in adversaries.items():
            for dst in links[a]:
                _send_hostile(
                    hub, settings.context, a, dst, r, behave(r, dst, honest, history), settings
                )
        if settings.adversary_first:  # this round's hostile frames to the front
            for a, q in hub.queues.items():
                seqs = sorted(m.seq for m in q)
                q.rotate(len(q) - queued[a])
                for i, (m, seq) in enumerate(zip(list(q), seqs)):
                    q[i] = replace(m, seq=seq)
        history = [*history[-31:], honest]
        records: dict[str, RoundRecord] = {}
        for a, ag in agents.items():
            rec = ag.finish(r)
            assert rec is not None  # no stop event in a simulation
            records[a] = rec
        row = report_round(
            r,
            figures(r),
            subcontexts,
            {a: rec.embedded_with for a, rec in records.items()},
            records,
            bytes_before,
            wall0,
        )
        subcontexts = row.subcontexts
        bytes_before = {a: rec.bytes_out for a, rec in records.items()}
        rows.append(row)
        evals.pop(r, None)
        if progress:
            progress(row)
    for ag in agents.values():
        ag.conclude(settings.rounds)
    last = report_round(
        settings.rounds,
        figures(settings.rounds),
        subcontexts,
        {a: ag.encoder.version for a, ag in agents.items()},
    )
    last = _with_elapsed(last, time.perf_counter() - t0)
    rows.append(last)
    if progress:
        progress(last)
    return RunResult(
        dataset=ds.name,
        agents=ids,
        topology=settings.topology,
        neighbours=links,
        rounds=rows,
        final=FinalSection.of(rows),
        embeddings={a: evals[settings.rounds][a][1] for a in ids},
        adversaries={
            a: f"{spec}, delivered first" if settings.adversary_first else spec
            for a, spec in describe(adversaries).items()
        },
    )


def _with_elapsed(row: ReportRound, elapsed: float) -> ReportRound:
    return replace(row, elapsed_s=round(elapsed, 3))


def _send_hostile(
    hub: MemoryHub,
    context: str,
    source: str,
    dst: str,
    rnd: int,
    embeddings: np.ndarray,
    settings: SimulationSettings,
) -> None:
    """One adversary frame to ``dst``, covering the same steps as the honest frames (file data:
    the first window ends at step ``window - 1``)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != settings.embedding_dim:
        raise ValueError(
            f"adversary {source} sent {dst} a {emb.shape} matrix; expected (steps, "
            f"{settings.embedding_dim})"
        )
    payload = encode_frame(
        Frame(
            context=context,
            source=source,
            round=rnd,
            step_start=settings.window - 1,
            model_version=0,
            embeddings=emb,
        )
    )
    hub.deliver(topics.inbox(context, dst, source), payload)
