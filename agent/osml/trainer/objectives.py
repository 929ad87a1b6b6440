"""Training objectives: osmotic alignment plus a self-supervised term that prevents collapse.

All embeddings equal is perfectly "aligned" and useless, so alignment never trains alone:

* ``vc`` (variance-covariance, the default): every embedding dimension keeps a standard deviation
  of at least ``var_target`` over the batch (hinge) and dimensions are decorrelated. It asks for
  *some* information, not for *all* of the agent's own: together with the alignment pull, what an
  encoder keeps is what its sub-context shares. See docs/objectives.md for the measurements.
* ``masked`` (masked reconstruction): a random share of the window's steps is hidden (set to the
  training mean) and a small decoder must rebuild the whole normalised window from the embedding.
  It forces the embedding to describe the agent's own data, noise included.
* ``infonce`` (contrastive): two randomly augmented views of every window of the batch
  (:func:`augment_windows`) are embedded, and each view must pick its twin out of the batch by
  cosine similarity (:func:`info_nce_loss`). No decoder.
* ``masked-mmd``: ``masked`` plus ``mmd_weight`` times the squared maximum mean discrepancy
  (:func:`mmd_loss`) between the batch's embeddings and the batch's osmosis targets, so that the
  local embeddings are pulled toward the *distribution* of the shared latents as a whole, not
  only step by step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from osml.trainer.settings import OBJECTIVES

__all__ = [
    "AUGMENT_JITTER",
    "AUGMENT_MASK",
    "AUGMENT_SCALE",
    "OBJECTIVES",
    "alignment_loss",
    "augment_windows",
    "info_nce_loss",
    "mmd_loss",
    "reconstruction_loss",
    "variance_covariance_loss",
]

AUGMENT_JITTER = 0.1
"""Std of the Gaussian jitter of an augmented view, in feature stds."""

AUGMENT_SCALE = 0.1
"""Each augmented window's deviation from the training mean is scaled by U(1 - s, 1 + s)."""

AUGMENT_MASK = 0.2
"""Chance that a step of an augmented view is hidden (set to the training mean)."""


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


def augment_windows(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """One random view of raw windows ``x`` (batch, steps, features): amplitude scaling around the
    training ``mean``, Gaussian jitter in units of the feature ``std``, then time masking.

    All three are cheap and keep what a sensor window *is* (its level, shape and timing) while
    changing what a reading of it could have looked like; a time shift is left out because the
    alignment target is tied to the window's last step."""
    n = x.shape[0]
    amp = 1.0 + AUGMENT_SCALE * (2.0 * torch.rand((n, 1, 1), generator=gen) - 1.0)
    noise = AUGMENT_JITTER * std * torch.randn(x.shape, generator=gen)
    view = mean + (x - mean) * amp + noise
    hide = torch.rand((*x.shape[:2], 1), generator=gen) < AUGMENT_MASK
    return torch.where(hide, mean.expand_as(view), view)


def info_nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (NT-Xent across the two views): row i of ``z1`` must find row i of
    ``z2`` among all rows of ``z2`` by cosine / ``temperature``, and the other way round.

    Both views are centred on their batch mean first, so that the context anchor (a constant
    offset shared by every embedding) does not make every pair look alike."""
    a = F.normalize(z1 - z1.mean(dim=0), dim=1)
    b = F.normalize(z2 - z2.mean(dim=0), dim=1)
    logits = a @ b.T / temperature
    labels = torch.arange(len(a))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Expanded rather than torch.cdist, whose gradient is undefined at distance 0 (the diagonal).
    return ((a**2).sum(dim=1)[:, None] + (b**2).sum(dim=1)[None, :] - 2 * a @ b.T).clamp(min=0.0)


def mmd_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared maximum mean discrepancy between samples ``x`` (n, d) and ``y`` (m, d), biased
    (V-statistic) estimate, so it is >= 0 and exactly 0 for identical samples. Gradients flow
    into ``x`` only: ``y`` is the osmosis targets, fixed for the round.

    The kernel is a sum of three RBF kernels ``exp(-|u - v|^2 / (s * h))`` for s = 1/4, 1 and 4,
    where ``h`` is the median squared distance between the two samples (the median heuristic,
    taken without gradient), so that no one scale has to be right."""
    y = y.detach()
    dxy = _sq_distances(x, y)
    dxx = _sq_distances(x, x)
    with torch.no_grad():
        h = dxy.median().clamp(min=1e-6)
        dyy = _sq_distances(y, y)

    def kernel(d: torch.Tensor) -> torch.Tensor:
        # exp once, the two narrower bandwidths as its 4th and 16th powers: a third of the cost.
        wide = torch.exp(-d / (4 * h))
        mid = (wide * wide) ** 2
        return wide + mid + (mid * mid) ** 2

    with torch.no_grad():
        kyy = kernel(dyy).mean()
    return kernel(dxx).mean() + kyy - 2 * kernel(dxy).mean()
