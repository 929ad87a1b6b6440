"""An in-process trainer for ``osml simulate``: the same jobs as the trainer process, run at once.

Implements :class:`osml.agent.round.Trainer` over an :class:`~osml.trainer.fit.EncoderTrainer`,
so a simulated agent runs the very round an agent on a device runs.
"""

from __future__ import annotations

import numpy as np

from osml.agent.round import TrainResult
from osml.trainer.fit import EncoderTrainer

__all__ = ["LocalTrainer"]


class LocalTrainer:
    inference_only = False

    def __init__(self, trainer: EncoderTrainer, agent: str, context: str) -> None:
        self.trainer = trainer
        self.agent = agent
        self.context = context
        self._done: TrainResult | None = None

    @property
    def busy(self) -> bool:
        return self._done is not None

    def initial(self, windows: np.ndarray) -> TrainResult:
        model, card, _ = self.trainer.export(windows, agent=self.agent, context=self.context)
        return TrainResult(model, card, {})

    def submit(self, rnd: int, windows: np.ndarray, targets: np.ndarray, version: int) -> None:
        losses = self.trainer.fit(windows, targets)
        self.trainer.version = version - 1  # the agent numbers its models
        model, card, _ = self.trainer.export(windows, agent=self.agent, context=self.context)
        self._done = TrainResult(model, card, losses)

    def result(self, wait: float) -> TrainResult | None:
        done, self._done = self._done, None
        return done
