"""The agent process (``osml agent``): decentralized osmosis rounds over MQTT, one per device.

The round itself (embed, send, collect, screen and step the learner, train, install) is
:class:`osml.agent.round.AgentRound`, the same code ``osml simulate`` runs; this module gives it
its exchange (:class:`~osml.net.transport.Transport`: frames go to each neighbour's inbox
``osml/<ctx>/<nb>/in/<me>``) and its trainer (the local trainer process over its socket,
:class:`~osml.agent.trainers.SocketTrainer`, or none for a device that only infers), and around
each round it

1. connects first and retries with backoff until the broker answers (a refusal - credentials,
   not authorised, a TLS certificate or handshake - stops the agent with one line instead);
2. loads the model in its state directory, or the configured one, or asks the trainer for an
   initial model, waiting for the trainer if there is no model at all;
3. skips ahead when its neighbours are far ahead (a restarted or long-absent agent catches up);
4. saves its state after each round (a SIGKILL at any point resumes from the last finished
   round) and appends the round's :class:`~osml.agent.records.RoundRecord` to ``rounds.jsonl``,
   publishes it on its ``metrics`` topic and its retained status;
5. paces rounds (``rounds.interval``) and backs off while the trainer is unavailable.

Raw data never leaves the process: only embeddings go on the network, and training windows go
only to the trainer on the same host.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from osml.agent.config import AgentConfig
from osml.agent.data import windows
from osml.agent.embstore import EmbeddingStore
from osml.agent.inference import OnnxEncoder
from osml.agent.modelcard import (
    ModelCard,
    card_path,
    check_owner,
    read_card,
    read_model,
    write_model,
)
from osml.agent.records import RoundRecord
from osml.agent.round import AgentRound, RoundSettings
from osml.agent.rounddata import FileWindows, LiveWindows, TrainingBuffer, scale_moved
from osml.agent.sources import load_series
from osml.agent.state import append_round, load_state, repair_rounds, save_state
from osml.agent.streams.readings import ReadingLimits
from osml.agent.streams.sources import open_source
from osml.agent.streams.steps import StepSeries
from osml.agent.trainer_client import TrainerClient
from osml.agent.trainers import NoTrainer, SocketTrainer
from osml.backoff import delays as backoff_delays
from osml.core.anchor import context_anchor
from osml.core.anomaly import AnomalyDetector
from osml.core.learner import LearnerSettings, OsmoticLearner
from osml.core.subcontext import SubcontextMemory
from osml.errors import BrokerRefusedError, ModelError, TrainerError, TransportError
from osml.files import write_atomic
from osml.net.transport import BrokerSettings, Transport
from osml.wire import topics
from osml.wire.inbox import Inbox

__all__ = ["AgentRuntime"]

log = logging.getLogger("osml.agent")


class AgentRuntime:
    """One agent on a broker: :class:`~osml.agent.round.AgentRound` over MQTT, with its state
    kept on disk and its status and metrics published."""

    def __init__(self, cfg: AgentConfig, *, learner: LearnerSettings | None = None) -> None:
        self.cfg = cfg
        self.id = cfg.agent.id
        self.ctx = cfg.agent.context
        self.state_dir = cfg.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        w = cfg.model.window
        self.live: LiveWindows | None = None
        self.anomaly: AnomalyDetector | None = None
        self.store: EmbeddingStore | None = None
        if cfg.data.live:
            # A live sensor stream: no windows yet; they arrive step by step.
            self.n_features = cfg.data.features
            self.train_windows = np.zeros((0, w, self.n_features), dtype=np.float32)
            self.test_windows: np.ndarray | None = None
            self.train_data = np.zeros((0, self.n_features), dtype=np.float32)
            self.live = self._open_live(cfg)
        else:
            train, test = load_series(cfg.data, cfg.agent.id)
            self.train_windows = np.ascontiguousarray(windows(train, w))
            self.test_windows = (
                np.ascontiguousarray(windows(test, w))
                if test is not None and len(test) >= w
                else None
            )
            self.train_data = np.asarray(train, dtype=np.float32)
            self.n_features = int(self.train_windows.shape[2])
        self.state = load_state(self.state_dir, self.id, self.ctx)
        repair_rounds(self.state_dir)  # a torn last record from a kill: cut it now
        self.learner = OsmoticLearner(self.id, list(cfg.neighbours), self._learner(learner))
        if self.state.memory:
            self.learner.memory = SubcontextMemory.from_dict(
                self.state.memory, self.learner.settings.policy
            )
        self.learner.rounds = self.state.learner_rounds
        self.learner.equilibrium.restore(self.state.equilibrium)
        self.learner.restore_screening(self.state.screening)
        self.client = TrainerClient(
            cfg.trainer.socket or "trainer.sock", timeout=cfg.trainer.timeout
        )
        self.trainer: SocketTrainer | NoTrainer = (
            NoTrainer()
            if cfg.inference_only
            else SocketTrainer(self.client, self.id, self._register_with_trainer)
        )
        self.trainer_status = "none" if cfg.inference_only else "unknown"
        self.encoder: OnnxEncoder | None = None
        self.transport: Transport | None = None
        self.round: AgentRound | None = None
        keys = cfg.signing.keys()
        self._sign_key = keys[0] if keys else None
        self.inbox = Inbox(
            context=self.ctx,
            me=self.id,
            neighbours=cfg.neighbours,
            dim=cfg.model.embedding_dim,
            keys=keys,
            require_signature=bool(keys) and cfg.signing.require,
            max_frame_bytes=max(cfg.rounds.max_frame_bytes, 1 << 20),
            # Live rounds come from the clock, and a frame never moves them: no end to check.
            max_round=None if cfg.data.live or not cfg.rounds.count else cfg.rounds.count,
        )
        self._idle_rounds = 0
        self._last_record: RoundRecord | None = None
        self.results: Transport | None = None  # [data] publish_topic, live agents only
        self._scaled_on = 0  # live: steps the trainer's input scaling was last set from
        self._scaled_by: tuple[np.ndarray, np.ndarray] | None = None  # and its mean, std
        self._scored_upto = -1  # live: the newest step scored (its verdict is kept, not redone)

    # -- model handling -----------------------------------------------------------------------

    @property
    def model_path(self) -> Path:
        return self.state_dir / "model.onnx"

    @property
    def expected_shape(self) -> tuple[int, int, int]:
        return (self.cfg.model.window, self.n_features, self.cfg.model.embedding_dim)

    def _persist_model(self, model: bytes, card: ModelCard) -> None:
        write_model(self.model_path, model, card)
        self.state.model_version = card.version
        save_state(self.state_dir, self.state)

    def _install(self, model: bytes, card: ModelCard) -> None:
        """Verify and install a model before the rounds start (the round installs later ones)."""
        enc = OnnxEncoder.from_bytes(model, card, expect=self.expected_shape)
        self._persist_model(model, card)
        self.encoder = enc
        log.info("agent %s: installed model v%d", self.id, card.version)

    def _register_with_trainer(self, rescale: bool = False, recent: int | None = None) -> int:
        anchor = context_anchor(self.ctx, self.cfg.model.embedding_dim, self.cfg.model.anchor_norm)
        return self.client.init_agent(
            rescale=rescale,
            agent_id=self.id,
            context=self.ctx,
            architecture=self.cfg.model.architecture,
            window=self.cfg.model.window,
            n_features=self.n_features,
            embedding_dim=self.cfg.model.embedding_dim,
            seed=self.cfg.model.seed,
            train_data=self._train_data(recent),
            anchor=anchor,
            settings=self._trainer_settings(),
        )

    # -- live sources -------------------------------------------------------------------------

    def _clock(self) -> Callable[[], float]:
        """The data's clock: the wall clock, or a recording's replay clock."""
        d = self.cfg.data
        if d.clock == "replay":
            start, origin, speed = d.replay_start, d.replay_origin, d.replay_speed
            return lambda: start + (time.time() - origin) * speed
        return time.time

    def _data_broker(self) -> BrokerSettings:
        """Where readings (mqtt:) and results are read and published: ``[data] broker``, the
        device's local Mosquitto (plain, no credentials), or else the agent's own broker."""
        d = self.cfg.data
        if d.broker:
            return BrokerSettings(url=d.broker, protocol=self.cfg.broker.protocol)
        return self.cfg.broker

    def _open_results(self) -> None:
        """Connect the results publisher (``[data] publish_topic``); a failure is logged, not
        fatal: results are a convenience, the rounds go on without them."""
        if self.live is None or not self.cfg.data.publish_topic:
            return
        results = Transport(
            self._data_broker(), f"osml-{self.ctx}-{self.id}-results", persistent=False
        )
        try:
            results.connect()
            self.results = results
        except TransportError as exc:
            log.warning("agent %s: not publishing results (%s)", self.id, exc)

    def _publish_results(self, steps: np.ndarray, own: np.ndarray, scores: Any) -> None:
        if self.results is None:
            return
        s = self.cfg.data.step_seconds
        payload = {
            "agent": self.id,
            "context": self.ctx,
            "model_version": self.state.model_version,
            "steps": steps.tolist(),
            "time": (steps.astype(np.float64) * s).tolist(),
            "embeddings": np.round(own.astype(np.float64), 6).tolist(),
            "z": [None if not math.isfinite(z) else round(float(z), 4) for z in scores.z],
            "flagged": [bool(f) for f in scores.flagged],
        }
        try:
            self.results.publish(self.cfg.data.publish_topic, json.dumps(payload).encode(), qos=0)
        except TransportError as exc:
            log.warning("agent %s: results not published (%s)", self.id, exc)

    def _open_live(self, cfg: AgentConfig) -> LiveWindows:
        d = cfg.data
        clock = self._clock()
        broker = self._data_broker()
        source = open_source(
            d.source,
            broker=broker,
            client_id=f"osml-{self.ctx}-{self.id}-source",
            limits=ReadingLimits(
                n_features=d.features,
                max_ahead_s=d.max_ahead_s,
                max_behind_s=d.max_behind_s,
                max_disorder_s=d.max_disorder_s,
            ),
            clock=clock,
        )
        series = StepSeries(
            d.step_seconds,
            d.features,
            capacity=d.capacity,
            max_gap=d.max_gap,
            grace=d.step_grace,
            aggregate=d.aggregate,
        )
        r = cfg.rounds
        return LiveWindows(
            source,
            series,
            cfg.model.window,
            period=self.period,
            replay=self._replay_steps(),
            max_windows=r.max_windows,
            clock=clock,
        )

    def _replay_steps(self) -> int:
        """Older steps each live round embeds again: by default three periods (at least a
        window), so that affinity is judged on a few hundred steps, not one period's worth."""
        r = self.cfg.rounds
        if r.replay >= 0:
            return r.replay
        period_steps = round(self.period / self.cfg.data.step_seconds)
        return max(self.cfg.model.window, 3 * period_steps)

    def _trainer_settings(self) -> dict[str, object]:
        """What the trainer is told: ``[trainer.settings]``, plus the model's architecture and
        shared dimensions (the learner blends only those, so the trainer must pull only those)."""
        m = self.cfg.model
        shared = {"shared_dims": m.shared_dims} if m.shared_dims else {}
        return {"architecture": m.architecture, **self.cfg.trainer.settings, **shared}

    def _learner(self, settings: LearnerSettings | None) -> LearnerSettings:
        """The learner's settings with the warm-up of ``[rounds] warmup``: a live round sees a
        period's steps where a file round sees the whole file, so a live warm-up is counted in
        steps (``warmup_steps``), not in rounds; and with ``[model] shared_dims``."""
        settings = settings or LearnerSettings()
        if self.cfg.model.shared_dims:
            settings = replace(settings, shared_dims=self.cfg.model.shared_dims)
        r = self.cfg.rounds
        if r.warmup >= 0:
            rounds = r.warmup
        elif self.live is not None:
            per_round = max(1.0, self.period / self.cfg.data.step_seconds)
            rounds = max(settings.policy.warmup_rounds, math.ceil(r.warmup_steps / per_round))
        else:
            return settings
        return replace(settings, policy=replace(settings.policy, warmup_rounds=rounds))

    @property
    def period(self) -> float:
        """Seconds of data time per round (live sources)."""
        return self.cfg.rounds.period or 10 * self.cfg.data.step_seconds

    def _maybe_rescale(self) -> None:
        """A live agent's first steps may not be typical of its stream (a machine idle at
        start, a patient standing still): each time its held data has doubled since the trainer
        last saw it, up to the series' capacity, the trainer resets the input scaling from it.
        When the last period's steps have left that scaling instead
        (:func:`~osml.agent.rounddata.scale_moved`: the device was moved, its process changed),
        the scaling is reset from the last round's worth of steps only: the older ones describe a
        stream that is gone."""
        if self.live is None or self.cfg.inference_only or self.trainer_status == "none":
            return
        _steps, values, _filled, gap = self.live.series.held()
        observed = int((~gap).sum())
        recent: int | None = None
        if observed < 2 * self._scaled_on or self._scaled_on >= self.live.series.capacity:
            recent = self._moved_steps(values[~gap])
            if recent is None:
                return
        try:
            self._register_with_trainer(rescale=True, recent=recent)
            self._scaled_on = observed
        except TrainerError as exc:
            log.warning("agent %s: trainer could not rescale the inputs (%s)", self.id, exc)

    def _moved_steps(self, observed: np.ndarray) -> int | None:
        """How many of the newest steps to rescale from, if the newest period has left the
        input scaling; None if it has not."""
        assert self.live is not None
        if self._scaled_by is None:
            return None
        period = max(2 * self.cfg.model.window, self.live.period_steps)
        if len(observed) < period or not scale_moved(*self._scaled_by, observed[-period:]):
            return None
        log.info("agent %s: the stream left its input scaling; rescaling", self.id)
        return max(period, self.live.full_round)

    def _train_data(self, recent: int | None = None) -> np.ndarray:
        """What the trainer normalises inputs by: the file's training series, or the steps a
        live stream has delivered so far (the newest ``recent`` of them if given; TrainerError
        until there are a few windows' worth)."""
        if self.live is None:
            return self.train_data
        _steps, values, _filled, gap = self.live.series.held()
        observed = np.asarray(values[~gap], dtype=np.float32)
        if len(observed) < 2 * self.cfg.model.window:
            raise TrainerError(
                f"only {len(observed)} steps of data so far; the trainer needs "
                f"{2 * self.cfg.model.window}"
            )
        self._scaled_on = max(self._scaled_on, len(observed))
        if recent is not None:
            observed = observed[-recent:]
        self._scaled_by = (observed.mean(axis=0), observed.std(axis=0))
        return observed

    def _first_windows(self) -> np.ndarray:
        if self.live is None:
            return self.train_windows
        _ends, wins = self.live.series.windows(self.cfg.model.window)
        return wins

    def _check_owner(self) -> None:
        """Refuse a model pair in the state directory whose card names another agent or context
        (a state directory copied from another device): ModelError, the agent stops. The
        configured initial model, installed as it was by an older version, is accepted."""
        try:
            card = read_card(self.model_path)
        except ModelError:
            return  # unreadable: ignored below with a warning, as a torn install is
        if self.cfg.model.path:
            try:
                if read_card(self.cfg.model.path).sha256 == card.sha256:
                    return
            except ModelError:
                pass
        check_owner(card, self.id, self.ctx, card_path(self.model_path))

    def _ensure_model(self, stop: threading.Event) -> None:
        # The card alone is enough: a first install killed after its commit has only the staged
        # model.
        if self.model_path.exists() or card_path(self.model_path).exists():
            self._check_owner()
            try:
                model, card = read_model(self.model_path)
                self.encoder = OnnxEncoder.from_bytes(model, card, expect=self.expected_shape)
                self.state.model_version = card.version
            except ModelError as exc:  # e.g. killed between writing the model and its card
                log.warning("agent %s: ignoring the model in %s (%s)", self.id, self.state_dir, exc)
        if self.encoder is None and self.cfg.model.path:
            enc = OnnxEncoder.load(self.cfg.model.path)
            # Installed, the model is this agent's: its card says so from now on.
            self._install(enc.model_bytes, replace(enc.card, agent=self.id, context=self.ctx))
        if self.cfg.inference_only:
            log.info(
                "agent %s: inference only (no trainer): model v%d from %s",
                self.id,
                self.state.model_version,
                self.cfg.model.path,
            )
            return
        while self.live is not None and self.encoder is None and not stop.is_set():
            # A live agent's first model waits for a few windows of data (the trainer sets its
            # input scaling from them).
            self.live.pump()
            try:
                self._train_data()
                break
            except TrainerError:
                stop.wait(0.1)
        for delay in backoff_delays(0.5, 10.0):
            if stop.is_set():
                return
            try:
                self._register_with_trainer()
                if self.encoder is None:
                    model, card = self.client.initial_model(
                        self.id, self._first_windows(), self.state.model_version + 1
                    )
                    self._install(model, card)
                self.trainer_status = "ok"
                return
            except TrainerError as exc:
                self.trainer_status = "unavailable"
                if self.encoder is not None:
                    log.warning(
                        "agent %s: trainer unavailable (%s); running on model v%d",
                        self.id,
                        exc,
                        self.encoder.version,
                    )
                    return
                log.warning(
                    "agent %s: no model yet and the trainer is unavailable (%s); retrying",
                    self.id,
                    exc,
                )
                stop.wait(delay)

    # -- network ------------------------------------------------------------------------------

    def _status(self, state: str) -> bytes:
        return json.dumps(
            {
                "state": state,
                "agent": self.id,
                "round": self.state.next_round,
                "model_version": self.state.model_version,
                "subcontext": self.learner.subcontext(),
                "equilibrium": self.learner.equilibrium.at_equilibrium,
                "trainer": self.round.trainer_status if self.round else self.trainer_status,
                "mode": "inference-only" if self.cfg.inference_only else "training",
                **self._live_status(),
                **self._flood_status(),
                "time": time.time(),
            }
        ).encode()

    def _flood_status(self) -> dict[str, Any]:
        """What the transport dropped before the inbox saw it, by reason, and who is muted."""
        if self.transport is None:
            return {}
        return {
            "dropped_in": dict(self.transport.stats.dropped),
            "muted": sorted(self.transport.muted),
        }

    def _live_status(self) -> dict[str, Any]:
        """A live agent's source health and latest anomaly score, for its status."""
        if self.live is None:
            return {}
        after = self.cfg.data.stall_after or 10 * self.cfg.data.step_seconds
        rec = self._last_record
        return {
            "source": "stalled" if self.live.source.stalled(self.live.now(), after) else "ok",
            "anomaly_z": rec.anomaly_z if rec else None,
            "anomalies": rec.anomalies if rec else 0,
        }

    def _sender_of(self, topic: str) -> str:
        """Whose share of the receive queue a message counts against: the neighbour named by
        the inbox topic (the broker's ACL binds that level to the neighbour's login); every
        other topic shares one."""
        parsed = topics.parse_inbox(topic)
        return parsed[2] if parsed is not None and parsed[2] in self.inbox.neighbours else ""

    def _connect(self, stop: threading.Event) -> Transport:
        # One subscription per neighbour (not osml/<ctx>/<me>/in/+), so that a neighbour that
        # floods can be unsubscribed alone, and strangers' topics never reach us at all.
        own = {nb: topics.inbox(self.ctx, self.id, nb) for nb in self.cfg.neighbours}
        t = Transport(
            self.cfg.broker,
            f"osml-{self.ctx}-{self.id}",
            subscriptions=list(own.values()),
            will=(
                topics.status(self.ctx, self.id),
                json.dumps({"state": "offline", "agent": self.id}).encode(),
            ),
            drop_rate=self.cfg.drop_rate,
            source_of=self._sender_of,
            # A retained "frame" in an inbox would be replayed to every new session, even after
            # a broker restart: refuse them, and delete any a neighbour left on our topics.
            accept_retained=False,
            clear_retained=list(own.values()),
            mute_floods=own,
            retired=[topics.inbox_filter(self.ctx, self.id)],  # what earlier versions subscribed
        )
        for delay in backoff_delays(0.5, 10.0):
            try:
                t.connect()
                return t
            except TransportError as exc:
                if isinstance(exc, BrokerRefusedError) or stop.is_set():
                    raise  # credentials or ACL: retrying cannot help
                log.warning(
                    "agent %s: broker unreachable (%s); retrying in %.1fs", self.id, exc, delay
                )
                stop.wait(delay)
        raise AssertionError("unreachable")  # pragma: no cover - backoff_delays never ends

    # -- the loop -----------------------------------------------------------------------------

    def _save_eval(self, rnd: int, encoder: OnnxEncoder) -> None:
        if not self.cfg.rounds.eval_dir or self.live is not None:
            return
        out = Path(self.cfg.rounds.eval_dir)
        parts = [("train", self.train_windows)] + (
            [("test", self.test_windows)] if self.test_windows is not None else []
        )
        for name, wins in parts:
            buf = io.BytesIO()
            np.save(buf, encoder.encode(wins), allow_pickle=False)
            write_atomic(
                out / f"{name}-{rnd:04d}.npy", buf.getvalue()
            )  # a kill leaves no torn .npy

    def _make_round(self, transport: Transport, encoder: OnnxEncoder) -> AgentRound:
        r = self.cfg.rounds
        agent_round = AgentRound(
            RoundSettings(
                agent_id=self.id,
                context=self.ctx,
                neighbours=tuple(self.cfg.neighbours),
                deadline=r.deadline,
                train_wait=r.train_wait,
                max_frame_bytes=r.max_frame_bytes,
                sign_key=self._sign_key,
            ),
            encoder=encoder,
            data=(
                self.live
                if self.live is not None
                else FileWindows(self.train_windows, self.cfg.model.window, r.steps)
            ),
            learner=self.learner,
            inbox=self.inbox,
            exchange=transport,
            trainer=self.trainer,
            buffer=(
                TrainingBuffer(
                    capacity=r.buffer, max_age=r.target_age, min_windows=self.live.full_round
                )
                if self.live is not None
                else TrainingBuffer(capacity=max(1, len(self.train_windows)))
            ),
            on_install=self._persist_model,
            on_evaluate=self._save_eval,
        )
        agent_round.trainer_status = self.trainer_status
        return agent_round

    def _run_live(self, agent_round: AgentRound, stop: threading.Event) -> None:
        """Rounds paced by the data's clock: round r covers [r*period, (r+1)*period) and runs
        once that period (plus the step grace) has passed. No coordinator: every agent derives
        the round from its clock, so a restarted or late agent is simply in the current round
        (it skips ahead when more than ``rounds.max_lag`` rounds behind)."""
        assert self.live is not None and self.transport is not None
        live, period = self.live, self.period
        grace = self.cfg.data.step_grace
        count, done = self.cfg.rounds.count, 0
        speed = self.cfg.data.replay_speed if self.cfg.data.clock == "replay" else 1.0
        status_topic = topics.status(self.ctx, self.id)
        last_status = time.monotonic()
        self.anomaly = (
            AnomalyDetector.from_dict(self.state.anomaly, self.cfg.anomaly.settings())
            if self.state.anomaly
            else AnomalyDetector(self.cfg.anomaly.settings())
        )
        self.store = EmbeddingStore(self.state_dir / "embeddings", self.cfg.model.embedding_dim)
        while not stop.is_set() and (count == 0 or done < count):
            live.pump()
            now = live.now()
            current = math.floor(now / period)
            rnd = self.state.next_round
            if rnd == 0 or current - rnd > self.cfg.rounds.max_lag:
                if rnd:
                    log.warning(
                        "agent %s: %d rounds behind the clock; skipping to round %d",
                        self.id,
                        current - rnd,
                        current,
                    )
                rnd = self.state.next_round = current
            wait = ((rnd + 1) * period + grace - now) / speed
            if wait > 0:
                if time.monotonic() - last_status > 5.0:  # still alive while waiting
                    self.transport.publish(status_topic, self._status("online"), retain=True)
                    last_status = time.monotonic()
                stop.wait(min(wait, 0.25))
                continue
            self._maybe_rescale()
            record = agent_round.run(rnd, stop)
            if record is None:
                break
            record = self._score(agent_round, record)
            self._last_record = record
            self._commit(record)
            done += 1
            self.transport.publish(
                topics.metrics(self.ctx, self.id), json.dumps(record.to_json()).encode(), qos=0
            )
            self.transport.publish(status_topic, self._status("online"), retain=True)
            last_status = time.monotonic()
            log.info(
                "agent %s: round %d steps=%d sub=%s heard=%d/%d model=v%d anomalies=%d z=%s",
                self.id,
                rnd,
                record.steps,
                ",".join(record.subcontext),
                len(self.cfg.neighbours) - len(record.missing),
                len(self.cfg.neighbours),
                self.state.model_version,
                record.anomalies,
                "-" if record.anomaly_z is None else f"{record.anomaly_z:.1f}",
            )

    def _score(self, agent_round: AgentRound, record: RoundRecord) -> RoundRecord:
        """The round's anomaly scores and source health, kept in the record and the store."""
        assert self.live is not None and self.anomaly is not None and self.store is not None
        stats = self.live.source.stats
        after = self.cfg.data.stall_after or 10 * self.cfg.data.step_seconds
        extra: dict[str, Any] = {
            "source_stalled": self.live.source.stalled(self.live.now(), after),
            "source_rejected": dict(stats.bad),
        }
        own, steps = agent_round.own, agent_round.steps
        if own is not None and len(steps):
            members = {
                nb: agent_round.received[nb]
                for nb in record.subcontext
                if nb != self.id and nb in agent_round.received
            }
            masks = {nb: agent_round.present[nb] for nb in members}
            scores = self.anomaly.score(steps, own, members, masks=masks)
            # A step's verdict is the one it got when it was new: rounds that re-embed older
            # steps (replay) re-score them with a calibration that has moved on, and later
            # alone-mode scores would overwrite what the sub-context saw at the time.
            new = steps > self._scored_upto
            self._scored_upto = max(self._scored_upto, int(steps[-1]))
            if new.any():
                self.store.append(
                    steps[new],
                    steps[new].astype(np.float64) * self.cfg.data.step_seconds,
                    own[new],
                    z=scores.z[new].astype(np.float32),
                    flagged=scores.flagged[new],
                )
                self._publish_results(
                    steps[new],
                    own[new],
                    replace(scores, z=scores.z[new], flagged=scores.flagged[new]),
                )
            z = scores.z[new][np.isfinite(scores.z[new])]
            extra.update(
                anomaly_z=float(z.max()) if len(z) else None,
                anomalies=int(scores.flagged[new].sum()),
                anomaly_mode=scores.mode,
            )
            self.state.anomaly = self.anomaly.to_dict()
        return replace(record, **extra)

    def _commit(self, record: RoundRecord) -> None:
        """The round is done only now: a SIGKILL before this redoes it on restart."""
        self.state.next_round = record.round + 1
        self.state.memory = self.learner.memory.to_dict()
        self.state.subcontext = list(record.subcontext)
        self.state.equilibrium = self.learner.equilibrium.to_dict()
        self.state.learner_rounds = self.learner.rounds
        self.state.screening = self.learner.screening_state()
        save_state(self.state_dir, self.state)
        append_round(self.state_dir, record)

    def run(self, stop: threading.Event | None = None) -> int:
        stop = stop or threading.Event()
        # Connect (and so subscribe) first: a neighbour's round-0 frame sent while we are still
        # waiting for our first model is then queued for us instead of lost.
        self.transport = self._connect(stop)
        status_topic = topics.status(self.ctx, self.id)
        count = self.cfg.rounds.count
        try:
            if self.live is not None:
                self.live.source.start()  # its reader thread connects/opens/starts on its own
                self._open_results()
                log.info("agent %s: reading %s", self.id, self.cfg.data.source)
            self._ensure_model(stop)
            if self.encoder is None:
                return 1
            self.round = agent_round = self._make_round(self.transport, self.encoder)
            self.transport.publish(status_topic, self._status("online"), retain=True)
            if self.live is not None:
                self._run_live(agent_round, stop)
                count = 0
            while (
                self.live is None
                and not stop.is_set()
                and (count == 0 or self.state.next_round < count)
            ):
                started = time.monotonic()
                jump = self.inbox.catch_up(self.state.next_round)
                if jump is not None:
                    log.warning(
                        "agent %s: neighbours are at round %d; skipping ahead from round %d",
                        self.id,
                        jump - 1,
                        self.state.next_round,
                    )
                    self.state.next_round = jump  # always a round this run still has
                    save_state(self.state_dir, self.state)
                rnd = self.state.next_round
                record = agent_round.run(rnd, stop)
                if record is None:
                    break
                self._commit(record)
                self.transport.publish(
                    topics.metrics(self.ctx, self.id), json.dumps(record.to_json()).encode(), qos=0
                )
                self.transport.publish(status_topic, self._status("online"), retain=True)
                log.info(
                    "agent %s: round %d sub=%s heard=%d/%d model=v%d trainer=%s",
                    self.id,
                    rnd,
                    ",".join(record.subcontext),
                    len(self.cfg.neighbours) - len(record.missing),
                    len(self.cfg.neighbours),
                    self.state.model_version,
                    record.trainer,
                )
                pause = self.cfg.rounds.interval - (time.monotonic() - started)
                if record.trainer == "unavailable":
                    # No trainer, no new model: another round right away would only resend the
                    # same embeddings. Back off (1, 2, 4 ... 30 s) until the trainer is back.
                    self._idle_rounds += 1
                    pause = max(pause, min(30.0, 2.0 ** (self._idle_rounds - 1)))
                else:
                    self._idle_rounds = 0
                if pause > 0 and not (count and self.state.next_round >= count):  # not after last
                    stop.wait(pause)
            if count and self.state.next_round >= count and not stop.is_set():
                agent_round.conclude(count)
            self.transport.publish(status_topic, self._status("offline"), retain=True)
        finally:
            self.trainer.close()
            if self.live is not None:
                self.live.source.stop()
            if self.results is not None:
                self.results.close()
            if self.transport is not None:
                self.transport.close()
        return 0
