"""One agent's encoder and its optimiser, trained round after round toward osmosis targets."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from osml.agent.modelcard import ModelCard
from osml.trainer.encoders import build_encoder
from osml.trainer.export import export_onnx
from osml.trainer.objectives import (
    alignment_loss,
    augment_windows,
    info_nce_loss,
    mmd_loss,
    reconstruction_loss,
    variance_covariance_loss,
)
from osml.trainer.settings import DECODER_OBJECTIVES, TrainerSettings

__all__ = ["EncoderTrainer"]


class EncoderTrainer:
    """Holds one agent's torch encoder (and decoder, for ``masked`` and ``masked-mmd``) between
    rounds."""

    def __init__(
        self,
        settings: TrainerSettings,
        window: int,
        n_features: int,
        embedding_dim: int,
        *,
        seed: int,
        train_data: np.ndarray,
        offset: np.ndarray | None = None,
    ) -> None:
        if settings.shared_dims > embedding_dim:
            raise ValueError(
                f"shared_dims must be <= the embedding dimension {embedding_dim}, "
                f"got {settings.shared_dims}"
            )
        self.settings = settings
        self.shared = settings.shared_dims or embedding_dim
        torch.set_num_threads(settings.threads)
        self.encoder = build_encoder(
            settings.architecture, window, n_features, embedding_dim, seed, settings.hidden
        )
        data = np.asarray(train_data, dtype=np.float64).reshape(-1, n_features)
        self.encoder.set_normalisation(data.mean(axis=0), data.std(axis=0))
        if offset is not None:
            self.encoder.set_offset(offset)
        self.gen = torch.Generator().manual_seed(seed + 7919)
        params = list(self.encoder.parameters())
        self.decoder: nn.Module | None = None
        if settings.objective in DECODER_OBJECTIVES:
            torch.manual_seed(seed + 104729)
            self.decoder = nn.Sequential(
                nn.Linear(embedding_dim, 64), nn.Tanh(), nn.Linear(64, window * n_features)
            )
            params += list(self.decoder.parameters())
        self.optim = torch.optim.AdamW(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        self.version = 0
        self.fits = 0  # rounds trained
        self._scale_head(data, window)

    @torch.no_grad()
    def _scale_head(self, data: np.ndarray, window: int) -> None:
        # Data-dependent init: rescale the head so that every embedding dimension starts with the
        # standard deviation the anti-collapse term asks for. Without it a fresh encoder's outputs
        # vary by a few hundredths and the first rounds are spent just growing them.
        if len(data) < window + 1:
            return
        x = torch.from_numpy(
            np.lib.stride_tricks.sliding_window_view(data.astype(np.float32), window, axis=0)
            .transpose(0, 2, 1)
            .copy()
        )
        emb = self.encoder.eval()(x) - self.encoder.offset
        std = emb.std(dim=0).clamp(min=1e-3)
        head = self.encoder.head
        factor = (self.settings.init_std / std).unsqueeze(1)
        head.weight.mul_(factor)
        mean_after = (emb - head.bias) * factor.squeeze(1) + head.bias
        head.bias.sub_(mean_after.mean(dim=0))

    def _ssl(self, xb: torch.Tensor, emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The self-supervised term for a batch of windows ``xb``, their embeddings ``emb`` and
        osmosis targets ``targets`` (the shared dimensions only)."""
        s = self.settings
        enc = self.encoder
        if s.objective == "vc":
            return variance_covariance_loss(
                emb - enc.offset, s.var_target, s.cov_weight, s.per_dim_variance
            )
        if s.objective == "infonce":
            z1 = enc(augment_windows(xb, enc.in_mean, enc.in_std, self.gen))
            z2 = enc(augment_windows(xb, enc.in_mean, enc.in_std, self.gen))
            return info_nce_loss(z1, z2, s.temperature)
        assert self.decoder is not None
        mask = torch.rand(xb.shape[:2], generator=self.gen) < s.mask_ratio
        hidden_in = torch.where(mask.unsqueeze(-1), enc.in_mean.expand_as(xb), xb)
        recon = self.decoder(enc(hidden_in) - enc.offset).view_as(xb)
        loss = reconstruction_loss(recon, enc.normalise(xb), mask)
        if s.objective == "masked-mmd":
            loss = loss + s.mmd_weight * mmd_loss(emb[:, : self.shared], targets)
        return loss

    def fit(self, windows: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """``steps_per_round`` optimiser steps on (windows, osmosis targets); the mean losses."""
        s = self.settings
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        self.encoder.train()
        totals = {"align": 0.0, "ssl": 0.0}
        falls = s.lr_end < 1.0 and self.fits >= s.lr_steady_rounds
        self.fits += 1
        for i in range(s.steps_per_round):
            if falls:
                hold = s.lr_hold * (s.steps_per_round - 1)
                phase = max(0.0, i - hold) / max(1.0, s.steps_per_round - 1 - hold)
                scale = s.lr_end + (1.0 - s.lr_end) * 0.5 * (1.0 + math.cos(math.pi * phase))
                for group in self.optim.param_groups:
                    group["lr"] = s.learning_rate * scale
            idx = torch.randint(len(x), (min(s.batch_size, len(x)),), generator=self.gen)
            xb, yb = x[idx], y[idx]
            if s.input_noise > 0:
                xb = xb + s.input_noise * self.encoder.in_std * torch.randn(
                    xb.shape, generator=self.gen
                )
            emb = self.encoder(xb)
            # Only the shared dimensions take part in osmosis; the rest are the agent's own.
            yb = yb[:, : self.shared]
            ssl = self._ssl(xb, emb, yb)
            align = alignment_loss(emb[:, : self.shared], yb)
            loss = s.align_weight * align + s.ssl_weight * ssl
            self.optim.zero_grad(set_to_none=True)
            # torch leaves Tensor.backward unannotated.
            loss.backward()  # type: ignore[no-untyped-call]
            self.optim.step()
            totals["align"] += align.item()
            totals["ssl"] += ssl.item()
        self.encoder.eval()
        return {k: v / s.steps_per_round for k, v in totals.items()}

    def export(
        self, windows: np.ndarray, *, agent: str = "", context: str = ""
    ) -> tuple[bytes, ModelCard, float]:
        """Next model version as ONNX, parity-checked on up to 256 of ``windows``."""
        self.version += 1
        sample = windows[:: max(1, len(windows) // 256)][:256]
        return export_onnx(self.encoder.eval(), sample, self.version, agent=agent, context=context)
