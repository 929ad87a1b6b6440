"""One agent's osmosis round, written once for every way of running it.

An :class:`AgentRound` holds what one agent decides with: its model, its round windows, its
inbox and its :class:`~osml.core.learner.OsmoticLearner`. It talks to the outside world through
two small interfaces only:

* an :class:`Exchange` carries frames to the neighbours' inboxes and brings theirs back (MQTT in
  ``osml agent``, :class:`~osml.net.transport.Transport`; an in-memory hub in ``osml simulate``);
* a :class:`Trainer` turns (windows, osmosis targets) into the next model (the local trainer
  process over its socket in ``osml agent``; an in-process torch trainer in ``osml simulate``;
  none at all for a device that only infers).

A round is two halves, so that a simulator can run every agent's first half before any second
half in one thread (a process with one agent just calls :meth:`AgentRound.run`):

:meth:`~AgentRound.begin`
    take a model the trainer has finished, embed the round's windows, send one frame (chunked
    when large) to each neighbour's inbox;
:meth:`~AgentRound.finish`
    collect the neighbours' frames for the same round until all arrived or the deadline passed
    (older rounds are late, frames for later rounds are kept), screen them and step the learner,
    hand the windows and targets to the trainer, take its model if it is ready within
    ``train_wait``, and return the round's :class:`~osml.agent.records.RoundRecord`.

Persisting state, publishing status and pacing rounds belong to the caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from osml.agent.inference import OnnxEncoder
from osml.agent.modelcard import ModelCard
from osml.agent.records import RoundRecord
from osml.agent.rounddata import RoundWindows, TrainingBuffer, align, rows_for_steps
from osml.core.learner import OsmoticLearner, RoundOutcome
from osml.errors import ModelError, TrainerError
from osml.wire import topics
from osml.wire.chunking import encode_chunks
from osml.wire.codec import Frame
from osml.wire.inbox import Inbox

__all__ = [
    "AgentRound",
    "Exchange",
    "ExchangeStats",
    "Received",
    "RoundSettings",
    "TrainResult",
    "Trainer",
]

log = logging.getLogger("osml.agent")


class Received(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def seq(self) -> int:
        """The message's place in the order messages came to this agent."""
        ...


class ExchangeStats(Protocol):
    @property
    def reconnects(self) -> int: ...
    @property
    def dropped_out(self) -> int: ...
    @property
    def dropped_in(self) -> int: ...


class Exchange(Protocol):
    """How frames leave for the neighbours' inboxes and how the agent's own inbox is read."""

    @property
    def stats(self) -> ExchangeStats: ...

    def publish(self, topic: str, payload: bytes, *, droppable: bool = False) -> bool:
        """Send one frame; False if it was dropped (on purpose, or while offline)."""
        ...

    def get(self, timeout: float | None = None) -> Received | None:
        """The next message for this agent, or None if none arrives within ``timeout``."""
        ...


@dataclass(frozen=True)
class TrainResult:
    model: bytes
    card: ModelCard
    losses: dict[str, float]


class Trainer(Protocol):
    """Where an agent's training jobs go. ``status`` is ``ok``, ``busy``, ``unavailable`` or
    ``none`` (a device that never trains)."""

    @property
    def busy(self) -> bool:
        """True while a job is running (the agent then sends no new one)."""
        ...

    def submit(self, rnd: int, windows: np.ndarray, targets: np.ndarray, version: int) -> None:
        """Start a job: pull the encoder toward ``targets`` on ``windows``, export ``version``."""
        ...

    def result(self, wait: float) -> TrainResult | None:
        """The finished job's model, waiting up to ``wait`` s; None if none is ready (no job,
        or still running). Raises TrainerError or ModelError if the job failed."""
        ...


@dataclass(frozen=True)
class RoundSettings:
    agent_id: str
    context: str
    neighbours: tuple[str, ...]
    deadline: float = 10.0  # seconds to wait for the neighbours' frames
    train_wait: float = 30.0  # seconds to wait for the trainer's new model
    max_frame_bytes: int = 256 << 10
    sign_key: bytes | None = None


class AgentRound:
    """One agent's round logic (see the module docstring)."""

    def __init__(
        self,
        settings: RoundSettings,
        *,
        encoder: OnnxEncoder,
        data: RoundWindows,
        learner: OsmoticLearner,
        inbox: Inbox,
        exchange: Exchange,
        trainer: Trainer,
        buffer: TrainingBuffer | None = None,
        on_install: Callable[[bytes, ModelCard], None] = lambda model, card: None,
        on_evaluate: Callable[[int, OnnxEncoder], None] = lambda rnd, encoder: None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.data = data
        self.buffer = buffer if buffer is not None else TrainingBuffer()
        self.learner = learner
        self.inbox = inbox
        self.exchange = exchange
        self.trainer = trainer
        self.on_install = on_install
        self.on_evaluate = on_evaluate
        self.trainer_status = "none" if _is_none(trainer) else "unknown"
        self.frames_out = 0
        self.bytes_out = 0
        self.own: np.ndarray | None = None  # this round's own embeddings, after begin()
        # The neighbours' rows matched to this round's steps, and where they had data (finish()).
        self.received: dict[str, np.ndarray] = {}
        self.present: dict[str, np.ndarray] = {}
        self.no_data: set[str] = set()  # neighbours that said they had no windows this round
        self._windows: np.ndarray | None = None
        self._steps = np.zeros(0, dtype=np.int64)
        self._started = 0.0
        self._embedded_with = 0
        self._losses: dict[str, float] | None = None

    # -- models -------------------------------------------------------------------------------

    @property
    def steps(self) -> np.ndarray:
        """The absolute step indices of this round's windows (after :meth:`begin`)."""
        return self._steps

    def expected_shape(self) -> tuple[int, int, int]:
        c = self.encoder.card
        return (c.window, c.n_features, c.embedding_dim)

    def verify(self, model: bytes, card: ModelCard) -> OnnxEncoder:
        """The model as an encoder, if it verifies and fits this agent (else ModelError)."""
        return OnnxEncoder.from_bytes(model, card, expect=self.expected_shape())

    def install(self, model: bytes, card: ModelCard) -> None:
        enc = self.verify(model, card)
        self.on_install(model, card)
        self.encoder = enc
        log.info("agent %s: installed model v%d", self.settings.agent_id, card.version)

    def take_model(self, wait: float) -> None:
        """Install the trainer's finished model, waiting up to ``wait`` s for it."""
        if self.trainer_status == "none":
            return
        try:
            done = self.trainer.result(wait)
        except (TrainerError, ModelError) as exc:
            self.trainer_status = "unavailable"
            log.warning(
                "agent %s: training failed (%s); keeping model v%d",
                self.settings.agent_id,
                exc,
                self.encoder.version,
            )
            return
        if done is None:
            if self.trainer.busy:
                self.trainer_status = "busy"
            return
        self._losses = dict(done.losses)
        try:
            self.install(done.model, done.card)
            self.trainer_status = "ok"
        except (ModelError, OSError) as exc:
            self.trainer_status = "bad-model"
            log.warning("agent %s: refused model from trainer (%s)", self.settings.agent_id, exc)

    # -- the round ----------------------------------------------------------------------------

    def begin(self, rnd: int) -> None:
        """Take a finished model, embed the round's windows and send them to every neighbour.

        The frame covers the round's steps as one block from the first to the last; a step with
        no window (a gap in a live stream) goes as a zero row, which receivers read as "no
        data"."""
        self._started = time.monotonic()
        self._losses = None
        self.take_model(0.0)
        self._steps, self._windows = self.data.windows_for(rnd)
        self.own = self.encoder.encode(self._windows)
        self._embedded_with = self.encoder.version
        self.on_evaluate(rnd, self.encoder)
        s = self.settings
        if len(self._steps):
            step_start, block = rows_for_steps(self._steps, self.own)
        else:
            # Nothing completed this round (a stalled sensor): say so with a zero row, "no data",
            # so that neighbours do not wait out their deadline for this agent.
            step_start, block = 0, np.zeros((1, self.own.shape[1]), dtype=np.float32)
        payloads = encode_chunks(
            context=s.context,
            source=s.agent_id,
            round=rnd,
            step_start=step_start,
            model_version=self.encoder.version,
            embeddings=block,
            max_frame_bytes=s.max_frame_bytes,
            key=s.sign_key,
        )
        # Chunk by chunk to every neighbour in turn, so that the frame is whole at each of them
        # at about the same time: a copier that gets it first has only one chunk's head start
        # on the neighbours after it (screening tells a copy from its original by the order).
        for payload in payloads:
            for nb in s.neighbours:
                if self.exchange.publish(
                    topics.inbox(s.context, nb, s.agent_id), payload, droppable=True
                ):
                    self.frames_out += 1
                    self.bytes_out += len(payload)

    def collect(self, rnd: int, stop: threading.Event | None = None) -> dict[str, Frame]:
        """The neighbours' complete frames for ``rnd``, waiting up to the deadline for them, in
        the order they came in whole (:meth:`Inbox.arrival`)."""
        want = self.settings.neighbours
        deadline = time.monotonic() + self.settings.deadline
        got: dict[str, Frame] = {}
        while stop is None or not stop.is_set():
            for nb in want:
                if nb not in got:
                    frame = self.inbox.complete(rnd, nb)
                    if frame is not None:
                        got[nb] = frame
            if len(got) == len(want):
                break
            left = deadline - time.monotonic()
            msg = self.exchange.get(timeout=max(0.0, min(left, 0.25)))
            if msg is not None:
                self.inbox.offer(msg.topic, msg.payload, rnd, arrived=msg.seq)
            elif left <= 0:
                break
        got = dict(sorted(got.items(), key=lambda kv: self.inbox.arrival(rnd, kv[0]) or 0))
        self.inbox.forget_before(rnd + 1)
        return got

    def finish(self, rnd: int, stop: threading.Event | None = None) -> RoundRecord | None:
        """Collect, decide, train; the round's record, or None if ``stop`` was set meanwhile."""
        if self.own is None or self._windows is None:
            raise RuntimeError("finish() before begin()")
        own, windows_r = self.own, self._windows
        frames = self.collect(rnd, stop)
        if stop is not None and stop.is_set():
            return None
        received: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        self.no_data = set()
        if not len(own):  # nothing of our own to match: what came is heard, and unused
            self.received, self.present = {}, {}
            self.no_data = set(frames)
            return self._record(rnd, None, received)
        for nb, f in frames.items():
            if not f.embeddings.any():  # the neighbour had no windows this round
                self.no_data.add(nb)
                continue
            rows, mask = align(self._steps, f.step_start, f.embeddings)
            if mask.any():
                received[nb], present[nb] = rows, mask
            else:
                self.inbox.reject(
                    "steps",
                    f"{nb} sent steps {f.step_start}+{f.n_steps}, none of round {rnd}'s "
                    f"{len(own)} steps",
                )
        self.received, self.present = received, present
        if not len(own):
            return self._record(rnd, None, received)
        # received is in the order the frames came in (collect): the learner breaks ties
        # between a neighbour and a copy of it with that order.
        outcome = self.learner.step(own, received, present, self._steps, list(received))
        self.buffer.update(self._steps, windows_r, outcome.target, rnd)
        if self.trainer_status != "none" and not self.trainer.busy:
            _, train_windows, targets = self.buffer.arrays()
            try:
                self.trainer.submit(rnd, train_windows, targets, self.encoder.version + 1)
            except TrainerError as exc:
                self.trainer_status = "unavailable"
                log.warning(
                    "agent %s: cannot hand over the round (%s)", self.settings.agent_id, exc
                )
        self.take_model(self.settings.train_wait)
        return self._record(rnd, outcome, received)

    def run(self, rnd: int, stop: threading.Event | None = None) -> RoundRecord | None:
        """Both halves: the round of an agent that runs alone in its process."""
        self.begin(rnd)
        return self.finish(rnd, stop)

    def conclude(self, rnd: int) -> None:
        """After the last round: take the last model and evaluate it as round ``rnd``."""
        self.take_model(self.settings.train_wait)
        self.on_evaluate(rnd, self.encoder)

    def rejected(self) -> dict[str, int]:
        """Frames refused so far, by reason (cumulative), with what the exchange dropped before
        the inbox saw it (``queue_full``, ``queue_total``, ``retained``)."""
        out = dict(self.inbox.rejected)
        stats = self.exchange.stats
        # The MQTT transport counts its drops by reason; an exchange that only has the total
        # (the simulator's hub) drops for one reason: its queue was full.
        by_reason: dict[str, int] | None = getattr(stats, "dropped", None)
        if by_reason:
            out.update(by_reason)
        elif stats.dropped_in:
            out["queue_full"] = stats.dropped_in
        return dict(sorted(out.items()))

    def _record(
        self, rnd: int, outcome: RoundOutcome | None, received: dict[str, np.ndarray]
    ) -> RoundRecord:
        """The round's record; ``outcome`` None for a round with no windows (nothing decided)."""
        stats = self.exchange.stats
        me = self.settings.agent_id
        return RoundRecord(
            round=rnd,
            model_version=self.encoder.version,
            embedded_with=self._embedded_with,
            steps=len(self._steps),
            subcontext=list(outcome.subcontext if outcome else self.learner.subcontext()),
            osmosis_weights=dict(outcome.weights) if outcome else {me: 1.0},
            affinity=dict(outcome.affinity) if outcome else {},
            affinity_memory=dict(outcome.memory if outcome else self.learner.memory.affinity),
            equilibrium=bool(outcome.equilibrium if outcome else False),
            embedding_change=outcome.change if outcome else None,
            missing=sorted(set(self.settings.neighbours) - set(received) - self.no_data),
            screened=dict(outcome.screened) if outcome else {},
            losses=self._losses,
            frames_in=self.inbox.frames_in,
            frames_out=self.frames_out,
            bytes_in=self.inbox.bytes_in,
            bytes_out=self.bytes_out,
            late_frames=self.inbox.late,
            invalid_frames=self.inbox.invalid,
            rejected=self.rejected(),
            reconnects=stats.reconnects,
            dropped_out=stats.dropped_out,
            trainer=self.trainer_status,
            round_s=round(time.monotonic() - self._started, 3),
            time=round(time.time(), 3),
        )


def _is_none(trainer: Trainer) -> bool:
    return getattr(trainer, "inference_only", False) is True
