"""The agent process: decentralized osmosis rounds over MQTT, one per device.

Each round, with no coordinator anywhere, an agent

1. installs a newer model if its trainer has delivered one (verified: card, sha256, shapes);
2. embeds the round's windows with onnxruntime and sends one frame (chunked when large) to each
   neighbour's inbox ``osml/<ctx>/<nb>/in/<me>``;
3. collects its neighbours' frames for the *same* round until all arrived or ``rounds.deadline``
   passes - a frame for an older round is counted late and dropped, one for a future round is
   kept for later;
4. runs :class:`~osml.core.learner.OsmoticLearner` on what it has (missing neighbours are simply absent);
5. hands the windows and osmosis targets to its trainer over a local socket and waits up to
   ``rounds.train_wait`` for the next model; if the trainer is slow, dead or absent the agent
   goes on with its current model and says so in its status;
6. saves its state (a SIGKILL at any point resumes from the last finished round) and publishes
   its metrics and retained status.

Raw data never leaves the process: only embeddings go on the network, and training windows go
only to the trainer on the same host.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np

from osml.agent.config import AgentConfig
from osml.agent.data import load_dataset, read_agent_csv, read_paper_dir, windows
from osml.agent.inference import OnnxEncoder
from osml.agent.modelcard import ModelCard, card_path, write_model
from osml.agent.state import append_round, load_state, save_state
from osml.agent.trainer_client import TrainerClient
from osml.core.anchor import context_anchor
from osml.core.learner import LearnerSettings, OsmoticLearner
from osml.core.subcontext import SubcontextMemory
from osml.errors import ModelError, TrainerError, TransportError
from osml.files import write_atomic
from osml.net.transport import Transport
from osml.wire import topics
from osml.wire.codec import Frame, encode_frame
from osml.wire.inbox import Inbox

__all__ = ["AgentRuntime", "chunk_rows", "load_series"]

log = logging.getLogger("osml.agent")


def load_series(cfg: AgentConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """The agent's own (train, test) series from its data source."""
    kind, _, rest = cfg.data.source.partition(":")
    who = cfg.data.agent or cfg.agent.id
    if kind == "csv":
        train = read_agent_csv(rest)
        test = read_agent_csv(cfg.data.test) if cfg.data.test else None
        return train, test
    ds = (
        read_paper_dir(rest)
        if kind == "paper"
        else load_dataset(f"generated:{rest}", seed=cfg.data.seed)
    )
    return np.asarray(ds[who].train), np.asarray(ds[who].test)


def chunk_rows(n_rows: int, dim: int, max_frame_bytes: int) -> int:
    """Rows per chunk so that a frame stays under ``max_frame_bytes`` (int8 rows + f32 scale)."""
    return max(1, (max_frame_bytes - 512) // (dim + 4))


class AgentRuntime:
    def __init__(self, cfg: AgentConfig, *, learner: LearnerSettings | None = None) -> None:
        self.cfg = cfg
        self.id = cfg.agent.id
        self.ctx = cfg.agent.context
        self.state_dir = cfg.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        train, test = load_series(cfg)
        w = cfg.model.window
        self.train_windows = np.ascontiguousarray(windows(train, w))
        self.test_windows = (
            np.ascontiguousarray(windows(test, w)) if test is not None and len(test) >= w else None
        )
        self.train_data = np.asarray(train, dtype=np.float32)
        self.state = load_state(self.state_dir, self.id, self.ctx)
        self.learner = OsmoticLearner(self.id, list(cfg.neighbours), learner)
        if self.state.memory:
            self.learner.memory = SubcontextMemory.from_dict(
                self.state.memory, self.learner.settings.policy
            )
        self.learner.rounds = self.state.learner_rounds
        self.learner.equilibrium.restore(self.state.equilibrium)
        self.trainer = TrainerClient(cfg.trainer.socket, timeout=cfg.trainer.timeout)
        self.trainer_status = "unknown"
        self.encoder: OnnxEncoder | None = None
        self.transport: Transport | None = None
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
        )
        self.frames_out = 0
        self.bytes_out = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"osml-train-{self.id}")
        self._idle_rounds = 0
        self._pending: Future[tuple[bytes, ModelCard, dict[str, float]]] | None = None

    # -- model handling -----------------------------------------------------------------------

    @property
    def model_path(self) -> Path:
        return self.state_dir / "model.onnx"

    def _install(self, model: bytes, card: ModelCard) -> None:
        enc = OnnxEncoder.from_bytes(model, card)  # verifies sha256, names, output shape
        expect = (self.cfg.model.window, self.train_windows.shape[2], self.cfg.model.embedding_dim)
        if (card.window, card.n_features, card.embedding_dim) != expect:
            raise ModelError(
                f"model v{card.version} is for (window, features, dim) "
                f"{(card.window, card.n_features, card.embedding_dim)}, this agent needs {expect}"
            )
        write_model(self.model_path, model, card)
        self.encoder = enc
        self.state.model_version = card.version
        save_state(self.state_dir, self.state)
        log.info("agent %s: installed model v%d", self.id, card.version)

    def _register_with_trainer(self) -> int:
        anchor = context_anchor(self.ctx, self.cfg.model.embedding_dim, self.cfg.model.anchor_norm)
        return self.trainer.init_agent(
            agent_id=self.id,
            context=self.ctx,
            architecture=self.cfg.model.architecture,
            window=self.cfg.model.window,
            n_features=self.train_windows.shape[2],
            embedding_dim=self.cfg.model.embedding_dim,
            seed=self.cfg.model.seed,
            train_data=self.train_data,
            anchor=anchor,
            settings={"architecture": self.cfg.model.architecture, **self.cfg.trainer.settings},
        )

    def _ensure_model(self, stop: threading.Event) -> None:
        # The card alone is enough: a first install killed after its commit has only the staged model.
        if self.model_path.exists() or card_path(self.model_path).exists():
            try:
                self.encoder = OnnxEncoder.load(self.model_path)
                self.state.model_version = self.encoder.version
            except ModelError as exc:  # e.g. killed between writing the model and its card
                log.warning("agent %s: ignoring the model in %s (%s)", self.id, self.state_dir, exc)
        if self.encoder is None and self.cfg.model.path:
            enc = OnnxEncoder.load(self.cfg.model.path)
            self._install(enc.model_bytes, enc.card)
        delay = 0.5
        while not stop.is_set():
            try:
                self._register_with_trainer()
                if self.encoder is None:
                    model, card = self.trainer.initial_model(
                        self.id, self.train_windows, self.state.model_version + 1
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
                delay = min(delay * 2, 10.0)

    def _collect_model(self, wait: float) -> None:
        if self._pending is None:
            return
        try:
            model, card, _ = self._pending.result(timeout=wait)
        except (TimeoutError, FutureTimeout):  # distinct types before Python 3.11
            self.trainer_status = "busy"
            return
        except (TrainerError, ModelError) as exc:
            self.trainer_status = "unavailable"
            log.warning(
                "agent %s: training failed (%s); keeping model v%d",
                self.id,
                exc,
                self.state.model_version,
            )
            self._pending = None
            return
        self._pending = None
        try:
            self._install(model, card)
            self.trainer_status = "ok"
        except (ModelError, OSError) as exc:
            self.trainer_status = "bad-model"
            log.warning("agent %s: refused model from trainer (%s)", self.id, exc)

    def _train_job(
        self, rnd: int, windows_r: np.ndarray, targets: np.ndarray, version: int
    ) -> tuple[bytes, ModelCard, dict[str, float]]:
        # The round's windows (all of them, or the latest rounds.steps), matching the targets.
        try:
            return self.trainer.train(self.id, rnd, windows_r, targets, version)
        except TrainerError:
            # The trainer may have restarted and forgotten us: register again and retry once.
            self._register_with_trainer()
            return self.trainer.train(self.id, rnd, windows_r, targets, version)

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
                "trainer": self.trainer_status,
                "time": time.time(),
            }
        ).encode()

    def _connect(self, stop: threading.Event) -> Transport:
        t = Transport(
            self.cfg.broker,
            f"osml-{self.ctx}-{self.id}",
            subscriptions=[topics.inbox_filter(self.ctx, self.id)],
            will=(
                topics.status(self.ctx, self.id),
                json.dumps({"state": "offline", "agent": self.id}).encode(),
            ),
            drop_rate=self.cfg.drop_rate,
        )
        delay = 0.5
        while True:
            try:
                t.connect()
                return t
            except TransportError as exc:
                if (
                    "broker refused" in str(exc) or stop.is_set()
                ):  # bad credentials or ACL: retrying won't help
                    raise
                log.warning(
                    "agent %s: broker unreachable (%s); retrying in %.1fs", self.id, exc, delay
                )
                stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _send(self, rnd: int, emb: np.ndarray, step_start: int) -> None:
        assert self.transport is not None and self.encoder is not None
        per = chunk_rows(len(emb), emb.shape[1], self.cfg.rounds.max_frame_bytes)
        starts = list(range(0, len(emb), per))
        payloads = [
            encode_frame(
                Frame(
                    context=self.ctx,
                    source=self.id,
                    round=rnd,
                    step_start=step_start + s,
                    model_version=self.encoder.version,
                    embeddings=emb[s : s + per],
                    chunk=i,
                    n_chunks=len(starts),
                ),
                key=self._sign_key,
            )
            for i, s in enumerate(starts)
        ]
        for nb in self.cfg.neighbours:
            for payload in payloads:
                if self.transport.publish(
                    topics.inbox(self.ctx, nb, self.id), payload, droppable=True
                ):
                    self.frames_out += 1
                    self.bytes_out += len(payload)

    def _collect(self, rnd: int, stop: threading.Event) -> dict[str, Frame]:
        assert self.transport is not None
        deadline = time.monotonic() + self.cfg.rounds.deadline
        got: dict[str, Frame] = {}
        while not stop.is_set():
            for nb in self.cfg.neighbours:
                if nb not in got:
                    frame = self.inbox.complete(rnd, nb)
                    if frame is not None:
                        got[nb] = frame
            if len(got) == len(self.cfg.neighbours):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = self.transport.get(timeout=min(left, 0.25))
            if msg is not None:
                self.inbox.offer(msg.topic, msg.payload, rnd)
        self.inbox.forget_before(rnd + 1)
        return got

    def _rejected(self) -> dict[str, int]:
        """Frames refused so far, by reason (cumulative), with receive-queue overflows."""
        out = dict(self.inbox.rejected)
        if self.transport is not None and self.transport.stats.dropped_in:
            out["queue_full"] = self.transport.stats.dropped_in
        return dict(sorted(out.items()))

    # -- the loop -----------------------------------------------------------------------------

    def _round_steps(self) -> tuple[np.ndarray, int]:
        n = self.cfg.rounds.steps or len(self.train_windows)
        first = len(self.train_windows) - n
        return self.train_windows[first:], first + self.cfg.model.window - 1

    def _save_eval(self, rnd: int) -> None:
        if not self.cfg.rounds.eval_dir or self.encoder is None:
            return
        out = Path(self.cfg.rounds.eval_dir)
        parts = [("train", self.train_windows)] + (
            [("test", self.test_windows)] if self.test_windows is not None else []
        )
        for name, wins in parts:
            buf = io.BytesIO()
            np.save(buf, self.encoder.encode(wins), allow_pickle=False)
            write_atomic(
                out / f"{name}-{rnd:04d}.npy", buf.getvalue()
            )  # a kill leaves no torn .npy

    def run(self, stop: threading.Event | None = None) -> int:
        stop = stop or threading.Event()
        # Connect (and so subscribe) first: a neighbour's round-0 frame sent while we are still
        # waiting for our first model is then queued for us instead of lost.
        self.transport = self._connect(stop)
        status_topic = topics.status(self.ctx, self.id)
        count = self.cfg.rounds.count
        try:
            self._ensure_model(stop)
            if self.encoder is None:
                return 1
            self.transport.publish(status_topic, self._status("online"), retain=True)
            while not stop.is_set() and (count == 0 or self.state.next_round < count):
                started = time.monotonic()
                jump = self.inbox.catch_up(self.state.next_round)
                if jump is not None:
                    log.warning(
                        "agent %s: neighbours are at round %d; skipping ahead from round %d",
                        self.id,
                        jump - 1,
                        self.state.next_round,
                    )
                    self.state.next_round = jump
                    save_state(self.state_dir, self.state)
                    if count and jump >= count:
                        break
                rnd = self.state.next_round
                self._collect_model(0.0)
                windows_r, step_start = self._round_steps()
                own = self.encoder.encode(windows_r)
                self._save_eval(rnd)
                self._send(rnd, own, step_start)
                frames = self._collect(rnd, stop)
                if stop.is_set():
                    break
                received = {}
                for nb, f in frames.items():
                    if f.step_start == step_start and f.embeddings.shape == own.shape:
                        received[nb] = f.embeddings
                    else:
                        self.inbox.reject(
                            "steps",
                            f"{nb} sent steps {f.step_start}+{f.n_steps}, "
                            f"round {rnd} is {step_start}+{len(own)}",
                        )
                outcome = self.learner.step(own, received)
                if self._pending is None:
                    self._pending = self._pool.submit(
                        self._train_job,
                        rnd,
                        windows_r,
                        outcome.target,
                        self.state.model_version + 1,
                    )
                self._collect_model(self.cfg.rounds.train_wait)
                record = {
                    "round": rnd,
                    "model_version": self.state.model_version,
                    "subcontext": outcome.subcontext,
                    "osmosis_weights": outcome.weights,
                    "affinity": outcome.affinity,
                    "affinity_memory": outcome.memory,
                    "equilibrium": outcome.equilibrium,
                    "embedding_change": outcome.change,
                    "missing": sorted(set(self.cfg.neighbours) - set(received)),
                    "frames_in": self.inbox.frames_in,
                    "frames_out": self.frames_out,
                    "bytes_in": self.inbox.bytes_in,
                    "bytes_out": self.bytes_out,
                    "late_frames": self.inbox.late,
                    "invalid_frames": self.inbox.invalid,
                    "rejected": self._rejected(),
                    "screened": outcome.screened,
                    "trainer": self.trainer_status,
                    "round_s": round(time.monotonic() - started, 3),
                    "time": round(time.time(), 3),
                    "reconnects": self.transport.stats.reconnects,
                    "dropped_out": self.transport.stats.dropped_out,
                }
                # Only now is the round done: a SIGKILL while waiting for the trainer (above) redoes
                # the round on restart instead of skipping it without a record.
                self.state.next_round = rnd + 1
                self.state.memory = self.learner.memory.to_dict()
                self.state.subcontext = outcome.subcontext
                self.state.equilibrium = self.learner.equilibrium.to_dict()
                self.state.learner_rounds = self.learner.rounds
                save_state(self.state_dir, self.state)
                append_round(self.state_dir, record)
                self.transport.publish(
                    topics.metrics(self.ctx, self.id), json.dumps(record).encode(), qos=0
                )
                self.transport.publish(status_topic, self._status("online"), retain=True)
                log.info(
                    "agent %s: round %d sub=%s heard=%d/%d model=v%d trainer=%s",
                    self.id,
                    rnd,
                    ",".join(outcome.subcontext),
                    len(received),
                    len(self.cfg.neighbours),
                    self.state.model_version,
                    self.trainer_status,
                )
                pause = self.cfg.rounds.interval - (time.monotonic() - started)
                if self.trainer_status == "unavailable":
                    # No trainer, no new model: another round right away would only resend the
                    # same embeddings. Back off (1, 2, 4 ... 30 s) until the trainer is back.
                    self._idle_rounds += 1
                    pause = max(pause, min(30.0, 2.0 ** (self._idle_rounds - 1)))
                else:
                    self._idle_rounds = 0
                if pause > 0 and not (
                    count and self.state.next_round >= count
                ):  # not after the last
                    stop.wait(pause)
            if count and self.state.next_round >= count and not stop.is_set():
                self._collect_model(self.cfg.rounds.train_wait)
                self._save_eval(count)
            self.transport.publish(status_topic, self._status("offline"), retain=True)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self.transport is not None:
                self.transport.close()
        return 0
