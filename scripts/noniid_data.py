"""A heterogeneous (non-IID) fleet for scripts/study_noniid.py, pure numpy, seeded.

The fleet is ``groups`` groups of ``members`` devices each, plus ``noise`` unrelated devices.
Device ids are ``g<G>m<M>`` (member M of group G) and ``n<K>`` (noise device K).

Per group, independent of every other group (own random stream):

* a hidden **regime** ``z_t`` in ``0 .. regimes - 1``: a slow Markov chain that stays put with
  probability ``stay`` (mean dwell ``1 / (1 - stay)`` steps) and otherwise jumps to another state
  drawn uniformly;
* ``sources`` latent sources ``s_j``, each a stationary AR(1) path (its own time constant,
  ``phi`` from 0.8 to 0.97) plus a sine, where the regime sets both the source's level and the
  sine's period: ``s_j(t) = level[j, z_t] + ar_j(t) + 0.8 sin(phase_j(t))``, the phase advancing
  by ``2 pi / period[j, z_t]`` per step (levels and periods drawn per group).

A member's reading, per feature ``f`` (``features`` of them):
``x_f(t) = gain_f * sum_j w_fj s_j(t) + offset_f + noise_f(t)``, with white noise of std 0.3,
and the mixture weights ``w`` given by the heterogeneity level:

* ``iid``: every member of the group sees the same mixture (uniform over the group's sources),
  gain 1 and offset 0: the members differ only by their own noise;
* ``dirichlet:ALPHA``: each member's weights over the group's sources, per feature, are drawn
  from Dirichlet(ALPHA, ..., ALPHA): ALPHA = 10 stays close to uniform (mild), ALPHA = 0.3 puts
  most weight on one source (strong, members see different mixtures); gain 1, offset 0;
* ``regimes``: uniform mixtures, but each member observes its group's process only in some of
  the regimes (a random non-empty proper subset; in the others its sensor reads its own local
  AR(1) disturbance instead) and has a strongly different gain (0.3 to 3, either sign) and offset
  (+-5) per feature.

A noise device reads its own AR(1) path plus white noise: related to nobody.

Labels. Every group has its own regime chain, so there is one label per step *per group*
(:attr:`Fleet.regimes`); a probe on any member's embeddings should recover its group's regime.
The paper format allows one label column for all agents: :func:`write_fleet` writes group 0's
regime to ``train_labels.csv`` / ``test_labels.csv`` (so ``osml simulate --data DIR`` probes
group 0 meaningfully) and every group's regime to ``regimes.csv`` with the true grouping in
``groups.json``; the study scores each group on its own regime.

The test rows are the genuine continuation of the training rows (one run of
``n_train + n_test`` steps, split).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["HETEROGENEITY_HELP", "Fleet", "generate_fleet", "parse_heterogeneity", "write_fleet"]

HETEROGENEITY_HELP = (
    "iid (same mixture, own noise), dirichlet:ALPHA (member mixtures ~ Dirichlet(ALPHA): 10 mild, "
    "0.3 strong), regimes (members observe their group only in some regimes, strong gain/offset)"
)

_NOISE_STD = 0.3
_SINE_AMPLITUDE = 0.8


def parse_heterogeneity(spec: str) -> tuple[str, float]:
    """``"iid"`` -> ("iid", 0); ``"dirichlet:0.3"`` -> ("dirichlet", 0.3); ``"regimes"``.
    ValueError naming the accepted forms otherwise."""
    kind, _, arg = spec.partition(":")
    if kind in ("iid", "regimes") and not arg:
        return kind, 0.0
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if np.isfinite(alpha) and alpha > 0:
            return kind, alpha
    raise ValueError(f"heterogeneity {spec!r} not understood: use {HETEROGENEITY_HELP}")


@dataclass(frozen=True)
class Fleet:
    """A generated fleet: per device (train, test) arrays, the true groups and the regimes."""

    ids: list[str]
    train: dict[str, np.ndarray]  # id -> (n_train, features)
    test: dict[str, np.ndarray]  # id -> (n_test, features)
    group_of: dict[str, int]  # id -> group index, -1 for a noise device
    regimes: np.ndarray  # (groups, n_train + n_test) int, each group's regime per step
    n_train: int
    heterogeneity: str

    @property
    def groups(self) -> list[list[str]]:
        """The true groups (noise devices are not in any)."""
        count = int(self.regimes.shape[0])
        return [[a for a in self.ids if self.group_of[a] == g] for g in range(count)]

    def labels(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """Group ``group``'s regime as (train labels, test labels)."""
        z = self.regimes[group]
        return z[: self.n_train], z[self.n_train :]


def _ar1(rng: np.random.Generator, n: int, phi: float, std: float) -> np.ndarray:
    out = np.empty(n)
    shocks = rng.standard_normal(n) * std * np.sqrt(1.0 - phi * phi)
    out[0] = rng.standard_normal() * std
    for t in range(1, n):
        out[t] = phi * out[t - 1] + shocks[t]
    return out


def _regime_chain(rng: np.random.Generator, n: int, k: int, stay: float) -> np.ndarray:
    z = np.empty(n, dtype=np.int64)
    z[0] = rng.integers(k)
    for t in range(1, n):
        if k > 1 and rng.random() > stay:
            z[t] = (z[t - 1] + 1 + rng.integers(k - 1)) % k  # another state, uniformly
        else:
            z[t] = z[t - 1]
    return z


def _sources(rng: np.random.Generator, z: np.ndarray, s: int, k: int) -> np.ndarray:
    """(n, s) latent sources of one group driven by its regime path ``z``."""
    n = len(z)
    phis = np.linspace(0.8, 0.97, s)
    levels = rng.uniform(-2.0, 2.0, size=(s, k))
    periods = rng.uniform(6.0, 40.0, size=(s, k))
    out = np.empty((n, s))
    for j in range(s):
        phase = np.cumsum(2.0 * np.pi / periods[j, z]) + rng.uniform(0, 2 * np.pi)
        out[:, j] = levels[j, z] + _ar1(rng, n, phis[j], 1.0) + _SINE_AMPLITUDE * np.sin(phase)
    return out


def generate_fleet(
    heterogeneity: str,
    *,
    groups: int = 4,
    members: int = 4,
    noise: int = 0,
    sources: int = 3,
    regimes: int = 3,
    features: int = 2,
    stay: float = 0.96,
    n_train: int = 800,
    n_test: int = 400,
    seed: int = 0,
) -> Fleet:
    """Generate the fleet (the equations are in the module docstring). Deterministic per
    ``seed`` and arguments."""
    kind, alpha = parse_heterogeneity(heterogeneity)
    if min(groups, members, sources, regimes, features, n_train, n_test) < 1 or noise < 0:
        raise ValueError("groups, members, sources, regimes, features, n_train, n_test >= 1")
    if kind == "regimes" and regimes < 2:
        raise ValueError("heterogeneity 'regimes' needs regimes >= 2")
    n = n_train + n_test
    root = np.random.SeedSequence([seed, groups, members, noise])
    streams = root.spawn(groups + noise)
    ids: list[str] = []
    series: dict[str, np.ndarray] = {}
    group_of: dict[str, int] = {}
    chains = np.empty((groups, n), dtype=np.int64)
    uniform = np.full((features, sources), 1.0 / sources)
    for g in range(groups):
        rng = np.random.default_rng(streams[g])
        z = _regime_chain(rng, n, regimes, stay)
        chains[g] = z
        src = _sources(rng, z, sources, regimes)
        for m in range(members):
            aid = f"g{g}m{m}"
            gain, offset = np.ones(features), np.zeros(features)
            weights = uniform
            seen = np.ones(n, dtype=bool)
            if kind == "dirichlet":
                weights = rng.dirichlet(np.full(sources, alpha), size=features)
            elif kind == "regimes":
                gain = rng.uniform(0.3, 3.0, features) * rng.choice([-1.0, 1.0], features)
                offset = rng.uniform(-5.0, 5.0, features)
                count = int(rng.integers(1, regimes))  # a non-empty proper subset
                seen = np.isin(z, rng.choice(regimes, size=count, replace=False))
            signal = src @ weights.T  # (n, features)
            if kind == "regimes":
                local = np.stack([_ar1(rng, n, 0.9, 1.0) for _ in range(features)], axis=1)
                signal = np.where(seen[:, None], signal, local)
            x = gain * signal + offset + _NOISE_STD * rng.standard_normal((n, features))
            ids.append(aid)
            series[aid] = x
            group_of[aid] = g
    for k in range(noise):
        rng = np.random.default_rng(streams[groups + k])
        aid = f"n{k}"
        x = np.stack([_ar1(rng, n, 0.9, 1.0) for _ in range(features)], axis=1)
        ids.append(aid)
        series[aid] = x + _NOISE_STD * rng.standard_normal((n, features))
        group_of[aid] = -1
    return Fleet(
        ids=ids,
        train={a: series[a][:n_train].astype(np.float32) for a in ids},
        test={a: series[a][n_train:].astype(np.float32) for a in ids},
        group_of=group_of,
        regimes=chains,
        n_train=n_train,
        heterogeneity=heterogeneity,
    )


def _write_csv(path: Path, ids: list[str], data: dict[str, np.ndarray]) -> None:
    header = [f"Agent{a}[{i}]" for a in ids for i in range(data[a].shape[1])]
    table = np.concatenate([data[a] for a in ids], axis=1)
    lines = [",".join(header)] + [",".join(f"{v:.6g}" for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n")


def write_fleet(fleet: Fleet, directory: Path) -> Path:
    """Write ``fleet`` in the paper format (``train_data.csv``, ``test_data.csv``, labels from
    group 0's regime), plus ``regimes.csv`` (one column per group) and ``groups.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_csv(directory / "train_data.csv", fleet.ids, fleet.train)
    _write_csv(directory / "test_data.csv", fleet.ids, fleet.test)
    train0, test0 = fleet.labels(0)
    for name, labels in (("train_labels.csv", train0), ("test_labels.csv", test0)):
        (directory / name).write_text("label\n" + "".join(f"{int(v)}\n" for v in labels))
    count = fleet.regimes.shape[0]
    rows = [",".join(f"group{g}" for g in range(count))]
    rows += [",".join(str(int(v)) for v in col) for col in fleet.regimes.T]
    (directory / "regimes.csv").write_text("\n".join(rows) + "\n")
    meta = {
        "heterogeneity": fleet.heterogeneity,
        "n_train": fleet.n_train,
        "groups": fleet.groups,
        "noise": [a for a in fleet.ids if fleet.group_of[a] < 0],
    }
    (directory / "groups.json").write_text(json.dumps(meta, indent=1) + "\n")
    return directory
