"""The agent's side of training: the local trainer process over its socket, or no trainer.

Both implement :class:`osml.agent.round.Trainer`. :class:`SocketTrainer` runs each job on a
worker thread so that a slow trainer never blocks the round; :class:`NoTrainer` is the trainer of
a device that never trains (it runs inference only, on the model it was given).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from osml.agent.round import TrainResult
from osml.agent.trainer_client import TrainerClient
from osml.errors import TrainerError

__all__ = ["NoTrainer", "SocketTrainer"]

log = logging.getLogger("osml.agent")


class NoTrainer:
    """A device that never trains: jobs are not sent anywhere and no model ever arrives."""

    inference_only = True
    busy = False

    def submit(self, rnd: int, windows: np.ndarray, targets: np.ndarray, version: int) -> None:
        return None

    def result(self, wait: float) -> TrainResult | None:
        return None

    def close(self) -> None:
        return None


class SocketTrainer:
    """Jobs for the trainer process behind ``client``, one at a time, on a worker thread.

    ``register`` (re-)registers the agent with the trainer; a job that fails because the trainer
    restarted and forgot the agent registers again and is retried once.
    """

    inference_only = False

    def __init__(self, client: TrainerClient, agent_id: str, register: Callable[[], int]) -> None:
        self.client = client
        self.agent_id = agent_id
        self.register = register
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"osml-train-{agent_id}")
        self._pending: Future[TrainResult] | None = None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, rnd: int, windows: np.ndarray, targets: np.ndarray, version: int) -> None:
        if self._pending is None:
            self._pending = self._pool.submit(self._job, rnd, windows, targets, version)

    def _job(self, rnd: int, windows: np.ndarray, targets: np.ndarray, version: int) -> TrainResult:
        try:
            model, card, losses = self.client.train(self.agent_id, rnd, windows, targets, version)
        except TrainerError:
            self.register()
            model, card, losses = self.client.train(self.agent_id, rnd, windows, targets, version)
        return TrainResult(model, card, losses)

    def result(self, wait: float) -> TrainResult | None:
        if self._pending is None:
            return None
        try:
            done = self._pending.result(timeout=wait)
        except (TimeoutError, FutureTimeout):  # distinct types before Python 3.11
            return None
        except Exception:
            self._pending = None
            raise
        self._pending = None
        return done

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
