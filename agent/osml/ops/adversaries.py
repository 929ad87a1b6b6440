"""Hostile neighbours for ``osml simulate --adversary`` and the drills: what a compromised agent
could send.

An adversary is linked to every honest agent, sends a real frame to each of them every round and
never learns. What it sends is a :data:`Behaviour`::

    fn(round, dst, honest, history) -> (steps, dim) embeddings for dst

``round`` is the round number, ``dst`` the honest agent the frame goes to, ``honest`` maps each
honest agent to the (steps, dim) float32 embeddings it sends this round, and ``history`` is the
list of earlier rounds' ``honest`` maps, oldest first. An attack may send every victim something
of its own (``to=each``, the default) or the same matrix to all (``to=all``).

A spec names a kind and its arguments, ``KIND[:ARG...]``: positional in the order of
:data:`KINDS` or by name (``rotate-copy:angle=45:noise=1e-2``), or ``MODULE:FUNCTION`` for a
behaviour written elsewhere (imported, then called as above). Arguments every kind takes:

* ``src``: whose embeddings are copied; an honest agent's id, or ``closest`` (the default): for
  each victim, the *other* honest agent whose current embeddings are most like the victim's
  (linear CKA), which is what an attacker who sees everything would pick;
* ``noise``: Gaussian noise added to a copy, as a fraction of the copied rows' RMS variation;
* ``to``: ``each`` (per victim: own source and rotation for each) or ``all`` (one matrix for all);
* ``seed``: for rotations and noise.

Rotations turn the copied rows' variation about their mean (the mean, which holds the context
anchor, stays): an orthogonal map whose every principal angle is ``angle`` degrees, in a random
set of planes fixed per victim (per attack with ``to=all``).
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from osml.core.similarity import linear_cka

__all__ = [
    "KINDS",
    "Adversary",
    "Behaviour",
    "Kind",
    "describe",
    "kinds_help",
    "parse_adversary",
    "parse_adversary_option",
    "rotation",
    "turned_toward",
]

Behaviour = Callable[
    [int, str, Mapping[str, np.ndarray], Sequence[Mapping[str, np.ndarray]]], np.ndarray
]

Honest = Mapping[str, np.ndarray]
History = Sequence[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Adversary:
    """A named behaviour: ``spec`` is what the report shows."""

    spec: str
    send: Behaviour

    def __call__(self, rnd: int, dst: str, honest: Honest, history: History) -> np.ndarray:
        return self.send(rnd, dst, honest, history)


# ---------------------------------------------------------------------------------- helpers


def rotation(dim: int, angle_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A (dim, dim) orthogonal matrix turning ``dim // 2`` random orthogonal planes by
    ``angle_deg`` each (an odd dimension's last axis stays); the identity for ``dim < 2``."""
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    q = q * np.sign(np.diag(r))  # a uniformly random basis
    theta = math.radians(angle_deg)
    block = np.eye(dim)
    c, s = math.cos(theta), math.sin(theta)
    for i in range(0, dim - 1, 2):
        block[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
    rot: np.ndarray = q @ block @ q.T
    return rot


def turned_toward(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``x`` with its variation about its mean turned by the orthogonal map that brings it
    closest (least squares) to ``target``'s variation about its own mean (orthogonal
    Procrustes): an exact affine copy of ``x`` that agrees as well as any turn of it can with
    ``target``."""
    mu = x.mean(axis=0)
    u, _, vt = np.linalg.svd((x - mu).T @ (target - target.mean(axis=0)))
    turned: np.ndarray = mu + (x - mu) @ (u @ vt)
    return turned


def _rng(seed: int, *parts: object) -> np.random.Generator:
    """A generator seeded by ``seed`` and ``parts`` (stable across processes, unlike hash())."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _turn(x: np.ndarray, rot: np.ndarray | None) -> np.ndarray:
    if rot is None:
        return x
    mu = x.mean(axis=0)
    turned: np.ndarray = mu + (x - mu) @ rot.T
    return turned


def _noised(x: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    if noise <= 0:
        return x
    rms = float(np.sqrt(np.mean((x - x.mean(axis=0)) ** 2)))
    noised: np.ndarray = x + noise * rms * rng.normal(size=x.shape)
    return noised


# ------------------------------------------------------------------------------------ kinds


@dataclass(frozen=True)
class Param:
    name: str
    default: str
    help: str


_COMMON = (
    Param("src", "closest", "honest id to copy, or closest (per victim: its most similar peer)"),
    Param("noise", "0", "Gaussian noise, as a fraction of the copy's RMS variation"),
    Param("to", "each", "each (a matrix per victim) or all (the same to every victim)"),
    Param("seed", "0", "seed for rotations and noise"),
)


@dataclass(frozen=True)
class Kind:
    name: str
    help: str
    params: tuple[Param, ...]  # its own, in positional order; the common ones follow

    def all_params(self) -> tuple[Param, ...]:
        own = {p.name for p in self.params}
        return (*self.params, *(p for p in _COMMON if p.name not in own))


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("constant", "every row the context anchor", ()),
        Kind(
            "scaled",
            "a copy times FACTOR",
            (Param("src", "closest", ""), Param("factor", "1e6", "scale")),
        ),
        Kind(
            "replay",
            "a copy from LAG rounds ago",
            (Param("src", "closest", ""), Param("lag", "3", "rounds back")),
        ),
        Kind(
            "rotate-copy",
            "a current copy of another honest agent, its variation turned by ANGLE degrees",
            (Param("angle", "90", "degrees"), Param("noise", "1e-3", "")),
        ),
        Kind(
            "noisy-replay",
            "a copy from LAG rounds ago plus NOISE",
            (Param("lag", "3", "rounds back"), Param("noise", "1e-2", "")),
        ),
        Kind(
            "echo",
            "the victim's own current embeddings, turned by ANGLE, plus NOISE",
            (Param("angle", "0", "degrees"), Param("noise", "1e-3", "")),
        ),
        Kind(
            "drift",
            "a current copy turned by RATE degrees more every round",
            (Param("rate", "10", "degrees per round"), Param("noise", "1e-3", "")),
        ),
        Kind(
            "in-band-scale",
            "a current copy times FACTOR (inside the screening band)",
            (Param("factor", "5", "scale"), Param("noise", "1e-3", "")),
        ),
        Kind(
            "aligned-copy",
            "a current copy turned (orthogonal Procrustes) to agree as well as it can with the "
            "victim's own embeddings (AGAINST=1: to vary against them), plus NOISE",
            (Param("against", "0", "1: turn it to vary against"), Param("noise", "1e-3", "")),
        ),
        Kind(
            "reflect",
            "a current copy with every coordinate's variation reflected about its mean "
            "(2*mean - x: in an odd dimension no turn does that), plus NOISE",
            (Param("noise", "1e-3", ""),),
        ),
        Kind("copy", "a current, exact copy of another honest agent (same round)", ()),
    )
}


def kinds_help() -> str:
    """One line per kind with its arguments and defaults (for ``--help``)."""
    lines = []
    for k in KINDS.values():
        args = ":".join(f"{p.name}={p.default}" for p in k.params)
        lines.append(f"{k.name}{':' + args if args else ''}  {k.help}")
    common = ", ".join(f"{p.name} ({p.default})" for p in _COMMON)
    lines.append(f"every kind also takes {common}")
    return "\n".join(lines)


def _source(src: str, rnd: int, dst: str, honest: Honest, to_all: bool) -> tuple[str, np.ndarray]:
    """Whose current embeddings the victim ``dst`` is sent a copy of."""
    if src != "closest":
        return src, np.asarray(honest[src], dtype=np.float64)
    ids = list(honest)
    if to_all:  # one matrix for everyone: the first honest agent's
        return ids[0], np.asarray(honest[ids[0]], dtype=np.float64)
    mine = np.asarray(honest[dst], dtype=np.float64)
    others = [a for a in ids if a != dst] or ids
    best = max(others, key=lambda a: linear_cka(mine, np.asarray(honest[a], dtype=np.float64)))
    return best, np.asarray(honest[best], dtype=np.float64)


def _build(
    kind: str, args: Mapping[str, str], anchor: np.ndarray, honest_ids: Sequence[str]
) -> Behaviour:
    src = args["src"]
    if src != "closest" and src not in honest_ids:
        raise ValueError(f"src {src!r} is not an honest agent ({', '.join(honest_ids)})")
    if args["to"] not in ("each", "all"):
        raise ValueError(f"to must be each or all, not {args['to']!r}")
    to_all = args["to"] == "all"
    noise = float(args["noise"])
    seed = int(args["seed"])
    if not math.isfinite(noise) or noise < 0:
        raise ValueError("noise must be a finite number >= 0")
    angle = float(args.get("angle", "0"))
    rate = float(args.get("rate", "0"))
    factor = float(args.get("factor", "1"))
    lag = int(args.get("lag", "0"))
    against = args.get("against", "0")
    if against not in ("0", "1"):
        raise ValueError(f"against must be 0 or 1, not {against!r}")
    if not all(math.isfinite(v) for v in (angle, rate, factor)):
        raise ValueError("angle, rate and factor must be finite")
    if kind in ("replay", "noisy-replay") and lag < 1:
        raise ValueError("lag must be >= 1")
    if kind == "echo" and to_all:
        raise ValueError("echo sends each victim its own embeddings: to=all makes no sense")
    vec = np.asarray(anchor, dtype=np.float32).reshape(-1)
    rotations: dict[tuple[str, float], np.ndarray] = {}

    def turn_for(dst: str, deg: float, dim: int) -> np.ndarray | None:
        if deg == 0:
            return None
        key = ("" if to_all else dst, deg)
        if key not in rotations:
            # The planes are fixed per victim; only the angle changes (drift).
            planes = _rng(seed, "planes", key[0])
            rotations[key] = rotation(dim, deg, planes)
        return rotations[key]

    def send(rnd: int, dst: str, honest: Honest, history: History) -> np.ndarray:
        n = len(next(iter(honest.values())))
        if kind == "constant":
            return np.tile(vec, (n, 1))
        who = "" if to_all else dst
        noise_rng = _rng(seed, "noise", rnd, who)
        if kind == "echo":
            x = np.asarray(honest[dst], dtype=np.float64)
        elif kind in ("replay", "noisy-replay"):
            past = history[-lag] if len(history) >= lag else (history[0] if history else honest)
            name, _ = _source(src, rnd, dst, honest, to_all)
            x = np.asarray(past[name], dtype=np.float64)
        else:
            _, x = _source(src, rnd, dst, honest, to_all)
        deg = angle if kind != "drift" else rate * rnd
        x = _turn(x, turn_for(dst, deg, x.shape[1]))
        if kind == "reflect":
            x = 2 * x.mean(axis=0) - x
        if kind == "aligned-copy":
            ids = list(honest)
            # to=all: one matrix, turned toward the second honest agent (the first is copied)
            toward = ids[min(1, len(ids) - 1)] if to_all else dst
            mine = np.asarray(honest[toward], dtype=np.float64)
            x = turned_toward(x, 2 * mine.mean(axis=0) - mine if against == "1" else mine)
        if kind in ("scaled", "in-band-scale"):
            x = x * factor
        x = _noised(x, noise, noise_rng)
        return x.astype(np.float32)

    return send


def _import_behaviour(spec: str) -> Behaviour:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name!r} has no function {attr!r}")
    behaviour: Behaviour = fn
    return behaviour


def _kind_args(kind: Kind, parts: Sequence[str]) -> dict[str, str]:
    params = kind.all_params()
    names = [p.name for p in params]
    args = {p.name: p.default for p in params}
    for i, part in enumerate(parts):
        name, eq, value = part.partition("=")
        if not eq:
            if i >= len(kind.params) or any("=" in p for p in parts[:i]):
                raise ValueError(f"{kind.name} takes {len(kind.params)} positional arguments")
            name, value = kind.params[i].name, part
        if name not in names:
            raise ValueError(f"{kind.name} has no argument {name!r} ({', '.join(names)})")
        args[name] = value
    return args


def parse_adversary(spec: str, anchor: np.ndarray, honest_ids: Sequence[str]) -> Adversary:
    """An adversary from ``KIND[:ARG...]`` or ``MODULE:FUNCTION`` (see the module docstring).

    Raises ValueError naming the spec and the accepted forms."""
    kind_name, *parts = spec.split(":")
    try:
        if kind_name in KINDS:
            args = _kind_args(KINDS[kind_name], parts)
            return Adversary(spec, _build(kind_name, args, anchor, honest_ids))
        if len(parts) == 1 and kind_name and parts[0].isidentifier():
            return Adversary(spec, _import_behaviour(spec))
    except ValueError as exc:
        raise ValueError(f"adversary {spec!r}: {exc}") from None
    raise ValueError(
        f"adversary {spec!r}: use one of {', '.join(KINDS)} (KIND[:ARG...]) or MODULE:FUNCTION"
    )


def parse_adversary_option(
    value: str, anchor: np.ndarray, honest_ids: Sequence[str]
) -> tuple[str, Adversary]:
    """``ID=SPEC`` (one ``--adversary`` flag) -> (id, adversary)."""
    ident, eq, spec = value.partition("=")
    if not eq or not ident.strip() or not spec.strip():
        raise ValueError(f"--adversary {value!r}: expected ID=KIND[:ARGS] or ID=MODULE:FUNCTION")
    if ident in honest_ids:
        raise ValueError(f"--adversary {value!r}: {ident!r} is also an honest agent")
    return ident.strip(), parse_adversary(spec.strip(), anchor, honest_ids)


def describe(adversaries: Mapping[str, Any]) -> dict[str, str]:
    """id -> spec (or the function's name) for the report."""
    return {
        a: getattr(b, "spec", getattr(b, "__qualname__", type(b).__name__))
        for a, b in adversaries.items()
    }
