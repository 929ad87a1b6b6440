"""Synthetic datasets with the structure of the Osmotic Learning paper's two datasets.

The paper's files (see ``read_paper_dir``) have one weakness for evaluation: their test rows repeat
the first training rows. :func:`generate` draws one continuous run of ``n_train + n_test`` steps
of every process and splits it, so the test rows are the genuine continuation of the training
rows, never seen in training.

Generating equations (t = 0 .. n_train + n_test - 1; every ``N(.)`` draw is independent; the
constants were read off the statistics of the paper's files):

Shared by both kinds::

    s_t  = 0.96 s_{t-1} + 0.78 sqrt(1 - 0.96^2) n_t,  s_0 ~ N(0, 0.78^2)   smooth AR(1), std 0.78
    g_t  in {0, 1}                 runs alternate: off U{90..110} steps (the first off run
                                   U{40..70}), on U{45..57} steps
    b_t  = 0.5 g_t sin(2 pi t / 20) with wobble=True, else 0   intermittent wobble, period 20

``simple`` (agents ``0``, ``1``, ``M0``, ``M1``, one feature each)::

    x0 = s,   x1 = s + 1 + b,   M0, M1 ~ N(0, 1) iid (misleading agents)

``complex`` (agents ``0`` .. ``4``; agent 4 has two features)::

    x0 = s,   x1 = s - 3 + b
    u_t  = 0.975 u_{t-1} + sqrt(1 - 0.975^2) m_t,  u_0 ~ N(0, 1)   own AR(1), unit variance
    L_t  = -0.15 s_t / 0.78 + sqrt(1 - 0.15^2) u_t                 shared latent, weakly tied to s
    x2   = 10 + 2.7 L + N(0, 1.0^2)
    x3   = -13 - 2.6 L + N(0, 1.3^2)                                corr(x2, x3) ~ -0.8
    x4_0 = 10 if x3 < -12 else 2                                    two-valued, like Agent4[0]
    x4_1 = -4.3 - 1.6 (x3 + 13) - 0.3 (x4_0 - 6) + N(0, 2.65^2)

The paper's agent 1 is agent 0 plus a constant except on a few runs of steps where a sine of
amplitude 0.5 and period about 20 steps is added; ``b`` reproduces that when asked for
(``wobble=True``), which is why corr(x0, x1) is then about 0.97 rather than 1. In the paper's
complex file ``Agent4[0]`` is exactly ``10`` when ``Agent3[0] < -12`` and ``2`` otherwise.
"""

from __future__ import annotations

from typing import Literal, TypeGuard, get_args

import numpy as np

from osml.agent.data import AgentData, Dataset
from osml.errors import ConfigError

__all__ = ["Kind", "generate", "is_kind"]

Kind = Literal["simple", "complex"]


def is_kind(name: str) -> TypeGuard[Kind]:
    """True if ``name`` names a generated dataset (``simple`` or ``complex``)."""
    return name in get_args(Kind)


# smooth base signal s (agents 0 and 1)
_PHI = 0.96
_BASE_STD = 0.78
# intermittent wobble b on agent 1
_WOBBLE_AMPLITUDE = 0.5
_WOBBLE_PERIOD = 20.0
_OFF_RUN = (90, 110)
_FIRST_OFF_RUN = (40, 70)
_ON_RUN = (45, 57)
# complex context: latent L driving agents 2, 3 and 4
_LATENT_PHI = 0.975
_LATENT_COUPLING = -0.15


def _ar1(rng: np.random.Generator, n: int, phi: float, std: float) -> np.ndarray:
    """A stationary AR(1) path of length ``n`` with marginal standard deviation ``std``."""
    innovations = rng.standard_normal(n)
    out = np.empty(n, dtype=np.float64)
    out[0] = std * innovations[0]
    scale = std * np.sqrt(1.0 - phi * phi)
    for t in range(1, n):
        out[t] = phi * out[t - 1] + scale * innovations[t]
    return out


def _gate(rng: np.random.Generator, n: int) -> np.ndarray:
    """Alternating off/on runs of random length (0/1), starting with an off run."""
    gate = np.zeros(n, dtype=np.float64)
    t = int(rng.integers(_FIRST_OFF_RUN[0], _FIRST_OFF_RUN[1] + 1))
    while t < n:
        on = int(rng.integers(_ON_RUN[0], _ON_RUN[1] + 1))
        gate[t : t + on] = 1.0
        t += on + int(rng.integers(_OFF_RUN[0], _OFF_RUN[1] + 1))
    return gate


def _split(columns: dict[str, list[np.ndarray]], n_train: int) -> tuple[AgentData, ...]:
    agents = []
    for agent_id, features in columns.items():
        series = np.stack(features, axis=1).astype(np.float32)
        agents.append(AgentData(agent_id, series[:n_train], series[n_train:]))
    return tuple(agents)


def generate(
    kind: Kind, *, seed: int = 0, n_train: int = 900, n_test: int = 200, wobble: bool = False
) -> Dataset:
    """Generate the ``simple`` or ``complex`` dataset (equations in the module docstring).

    Deterministic for a given ``seed`` (``numpy.random.default_rng``). The test rows continue the
    processes after the training rows. For the same seed and lengths, agents ``0`` and ``1`` are
    the same in both kinds, as in the paper's files.

    ``wobble`` adds the paper files' intermittent sine to agent 1 (see the module docstring). It
    is off by default: the datasets are described as "agent 1 is agent 0 shifted by a constant",
    and on held-out data a 10-step window cannot separate that sine from the shared signal, so
    with it agents 0 and 1 cannot be fully aligned (centred alignment about 0.94: docs/results.md).
    ``generated:simple+wobble`` / ``generated:complex+wobble`` select it.
    """
    if kind not in ("simple", "complex"):
        raise ConfigError(f"unknown synthetic dataset kind {kind!r}: use 'simple' or 'complex'")
    for label, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{label} must be a positive integer, got {value!r}")
    n = int(n_train) + int(n_test)
    rng = np.random.default_rng(seed)

    base = _ar1(rng, n, _PHI, _BASE_STD)
    steps = np.arange(n, dtype=np.float64)
    # The gate is drawn either way, so that every other series is the same with or without it.
    amplitude = _WOBBLE_AMPLITUDE if wobble else 0.0
    wobble_b = amplitude * _gate(rng, n) * np.sin(2.0 * np.pi * steps / _WOBBLE_PERIOD)

    columns: dict[str, list[np.ndarray]]
    if kind == "simple":
        columns = {
            "0": [base],
            "1": [base + 1.0 + wobble_b],
            "M0": [rng.standard_normal(n)],
            "M1": [rng.standard_normal(n)],
        }
    else:
        own = _ar1(rng, n, _LATENT_PHI, 1.0)
        c = _LATENT_COUPLING
        latent = c * base / _BASE_STD + np.sqrt(1.0 - c * c) * own
        x2 = 10.0 + 2.7 * latent + 1.0 * rng.standard_normal(n)
        x3 = -13.0 - 2.6 * latent + 1.3 * rng.standard_normal(n)
        x4_0 = np.where(x3 < -12.0, 10.0, 2.0)
        x4_1 = -4.3 - 1.6 * (x3 + 13.0) - 0.3 * (x4_0 - 6.0) + 2.65 * rng.standard_normal(n)
        columns = {
            "0": [base],
            "1": [base - 3.0 + wobble_b],
            "2": [x2],
            "3": [x3],
            "4": [x4_0, x4_1],
        }
    return Dataset(
        name=f"generated:{kind}",
        agents=_split(columns, int(n_train)),
        train_source=f"generated:{kind} seed={seed} (train rows 0..{n_train - 1})",
        test_source=f"generated:{kind} seed={seed} (test rows {n_train}..{n - 1})",
    )
