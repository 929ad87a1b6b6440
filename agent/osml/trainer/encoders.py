"""Encoders: (batch, window, features) -> (batch, embedding_dim).

Every encoder standardises its input with the agent's own training statistics (fixed buffers, so
the ONNX file takes raw windows) and adds a fixed ``offset`` to its output (the context anchor, see
:func:`osml.core.anchor.context_anchor`). Agents may use different architectures; only the embedding
size is shared.

* ``gru``  - the paper's choice: a GRU over the window, its last hidden state through a linear head.
* ``mlp``  - for tabular rows (window 1) or short windows: flatten, one tanh hidden layer.
* ``conv`` - for sensor windows: two 1-D convolutions (ReLU), mean over time, linear head. Cheaper
  than a GRU per window and insensitive to where in the window a pattern sits.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import torch
from torch import nn

from osml.trainer.settings import ARCHITECTURE_NAMES

__all__ = ["ARCHITECTURES", "ConvEncoder", "Encoder", "GRUEncoder", "MLPEncoder", "build_encoder"]


class Encoder(nn.Module):
    architecture = "base"
    # Buffers registered in __init__ (nn.Module's __getattr__ would type them as Tensor | Module).
    in_mean: torch.Tensor
    in_std: torch.Tensor
    offset: torch.Tensor
    # Every architecture ends in a linear head (set by the subclass; the trainer rescales it).
    head: nn.Linear

    def __init__(self, window: int, n_features: int, embedding_dim: int) -> None:
        super().__init__()
        self.window, self.n_features, self.embedding_dim = window, n_features, embedding_dim
        self.register_buffer("in_mean", torch.zeros(n_features))
        self.register_buffer("in_std", torch.ones(n_features))
        self.register_buffer("offset", torch.zeros(embedding_dim))

    def set_normalisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        std = np.where(np.asarray(std) > 1e-6, std, 1.0)
        self.in_mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.in_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def set_offset(self, offset: np.ndarray) -> None:
        self.offset.copy_(torch.as_tensor(np.asarray(offset), dtype=torch.float32))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.in_mean) / self.in_std

    def features(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalise(x)) + self.offset


class GRUEncoder(Encoder):
    architecture = "gru"

    def __init__(self, window: int, n_features: int, embedding_dim: int, hidden: int = 32) -> None:
        super().__init__(window, n_features, embedding_dim)
        self.gru = nn.GRU(n_features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, embedding_dim)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(z)
        out: torch.Tensor = self.head(h[-1])
        return out


class MLPEncoder(Encoder):
    architecture = "mlp"

    def __init__(self, window: int, n_features: int, embedding_dim: int, hidden: int = 128) -> None:
        super().__init__(window, n_features, embedding_dim)
        self.hidden = nn.Linear(window * n_features, hidden)
        self.head = nn.Linear(hidden, embedding_dim)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.hidden(z.flatten(1))))
        return out


class ConvEncoder(Encoder):
    architecture = "conv"

    def __init__(
        self, window: int, n_features: int, embedding_dim: int, channels: int = 24
    ) -> None:
        super().__init__(window, n_features, embedding_dim)
        self.conv1 = nn.Conv1d(n_features, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.head = nn.Linear(2 * channels, embedding_dim)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(z.transpose(1, 2)))
        h = torch.relu(self.conv2(h))
        # Mean over time plus the last step: position-free summary and the freshest reading.
        out: torch.Tensor = self.head(torch.cat([h.mean(dim=2), h[:, :, -1]], dim=1))
        return out


# The union (not type[Encoder]) is what tells the type checker that each built-in class takes an
# optional fourth argument, the width, which build_encoder passes on.
_EncoderClass: TypeAlias = type[GRUEncoder | MLPEncoder | ConvEncoder]
_CLASSES: dict[str, _EncoderClass] = {
    cls.architecture: cls for cls in (GRUEncoder, MLPEncoder, ConvEncoder)
}
# One class per name in osml.trainer.settings (a KeyError here means the two disagree).
ARCHITECTURES: dict[str, _EncoderClass] = {name: _CLASSES[name] for name in ARCHITECTURE_NAMES}


def build_encoder(
    architecture: str, window: int, n_features: int, embedding_dim: int, seed: int, width: int = 0
) -> Encoder:
    """A freshly initialised encoder; ``seed`` makes the initial weights reproducible."""
    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return (
            cls(window, n_features, embedding_dim, width)
            if width > 0
            else cls(window, n_features, embedding_dim)
        )
    finally:
        torch.random.set_rng_state(gen_state)
