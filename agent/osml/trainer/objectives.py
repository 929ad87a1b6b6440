"""Training objectives: osmotic alignment plus a self-supervised term that prevents collapse.

All embeddings equal is perfectly "aligned" and useless, so alignment never trains alone:

* ``vc`` (variance-covariance, the default): every embedding dimension keeps a standard deviation
  of at least ``var_target`` over the batch (hinge) and dimensions are decorrelated. It asks for
  *some* information, not for *all* of the agent's own: together with the alignment pull, what an
  encoder keeps is what its sub-context shares. See docs/objectives.md for the measurements.
* ``masked`` (masked reconstruction): a random share of the window's steps is hidden (set to the
  training mean) and a small decoder must rebuild the whole normalised window from the embedding.
  It forces the embedding to describe the agent's own data, noise included.
"""

from __future__ import annotations

import torch

from osml.trainer.settings import OBJECTIVES

__all__ = ["OBJECTIVES", "alignment_loss", "reconstruction_loss", "variance_covariance_loss"]


def alignment_loss(emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance to the osmosis target (summed over dimensions)."""
    return ((emb - target) ** 2).sum(dim=1).mean()


def variance_covariance_loss(
    emb: torch.Tensor, var_target: float, cov_weight: float = 0.1, per_dim: bool = True
) -> torch.Tensor:
    z = emb - emb.mean(dim=0)
    if per_dim:
        std = torch.sqrt(z.var(dim=0) + 1e-4)
    else:
        std = torch.sqrt(z.var(dim=0).mean() + 1e-4)
    var_term = torch.relu(var_target - std).mean()
    cov = (z.T @ z) / max(len(z) - 1, 1)
    off = cov - torch.diag(torch.diag(cov))
    cov_term = (off**2).sum() / emb.shape[1]
    return var_term + cov_weight * cov_term


def reconstruction_loss(
    recon: torch.Tensor, window: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """MSE on the hidden steps, plus a tenth of it on the visible ones."""
    err = (recon - window) ** 2
    m = mask.unsqueeze(-1).expand_as(err).float()
    hidden = (err * m).sum() / m.sum().clamp(min=1.0)
    visible = (err * (1 - m)).sum() / (1 - m).sum().clamp(min=1.0)
    return hidden + 0.1 * visible
