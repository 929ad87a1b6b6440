"""Screening: what an agent checks in its neighbours' embeddings before they may pull on it.

A frame that passed :mod:`osml.wire.inbox` is well formed and really from the neighbour, but the
neighbour itself may be broken or hostile. Before affinity and osmosis, each neighbour's
embeddings for the round are screened against the agent's own (pure numpy):

* ``constant``: no variation across steps (relative spread below ``min_spread``). A constant
  vector carries no information about the steps, yet can have a high plain cosine with every row
  (embeddings share the context anchor) and so draw weight and flatten the target.
* ``scale``: the neighbour's median row norm is more than ``max_scale`` times larger or smaller
  than the agent's own. Inside that band the neighbour is *rescaled* to the agent's own median
  norm, so no neighbour can inflate (or shrink) the target, round after round, by sending larger
  (or smaller) vectors: osmosis moves where embeddings point, not how long they are.
* ``copy``: the neighbour sent (close to) an affine transform of the agent's own embeddings (an
  echo), or of what another neighbour sent in an earlier round (a replay under a new name):
  turned, rescaled or lightly noised copies included (:class:`CopyDetector`). Honest encoders
  never produce one another's embeddings up to an affine map.

Screened neighbours are left out of the blend and count as affinity 0 for the round, so a
neighbour that stays broken leaves the sub-context. :class:`CopyDetector` also names twins
(near-duplicate neighbours, which share one vote in the blend) and outvoted ones (left out of
one round's blend without losing affinity); see :mod:`osml.core.learner`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from osml.core.similarity import linear_residual, same_step_cosine

__all__ = [
    "Copies",
    "CopyDetector",
    "ScreenSettings",
    "centred_agreement",
    "median_norm",
    "relative_spread",
    "screen",
]

_EPS = 1e-12


@dataclass(frozen=True)
class ScreenSettings:
    max_scale: float = 10.0
    min_spread: float = 1e-4
    copy_memory: int = 8  # rounds of embeddings kept to recognise replays
    # Affine-residual bars of CopyDetector (0 turns the check off): a copy of another's
    # embeddings; an echo suspect (in the agent's first round); twins (two neighbours that are
    # near-duplicates of each other, sharing one vote).
    copy_threshold: float = 0.03
    echo_threshold: float = 0.15
    twin_threshold: float = 0.12
    # A twin is outvoted only when the other agrees with the agent's own embeddings by this much
    # more (centred cosine) and it gained less than twin_rise on the agent since its last round
    # (or, two rounds in a row, fell by twin_rise from the agent's last embeddings as the agent
    # moved toward it: chased).
    twin_margin: float = 0.03
    twin_rise: float = 0.02
    # Twins that vary against each other (centred cosine of the two below this) and that no
    # rule above tells apart: the one that came in later is outvoted (a copy of this round's
    # frame comes after it). -1 turns the rule off (such twins share their vote).
    twin_order_below: float = 0.0

    def __post_init__(self) -> None:
        if self.max_scale < 1.0:
            raise ValueError("max_scale must be >= 1")
        if not 0.0 <= self.min_spread < 1.0:
            raise ValueError("min_spread must be in [0, 1)")
        if self.copy_memory < 0:
            raise ValueError("copy_memory must be >= 0")
        for name in ("copy_threshold", "echo_threshold", "twin_threshold"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        for name in ("twin_margin", "twin_rise"):
            if not 0.0 <= getattr(self, name) <= 2.0:  # nan fails too
                raise ValueError(f"{name} must be in [0, 2]")
        if not -1.0 <= self.twin_order_below <= 1.0:
            raise ValueError("twin_order_below must be in [-1, 1]")

    def detector(self) -> CopyDetector:
        """A :class:`CopyDetector` with these settings."""
        return CopyDetector(
            self.copy_memory,
            self.copy_threshold,
            self.echo_threshold,
            self.twin_threshold,
            margin=self.twin_margin,
            rise=self.twin_rise,
            order_below=self.twin_order_below,
        )


def median_norm(x: np.ndarray) -> float:
    """Median Euclidean norm of the rows of ``x`` (steps, dim)."""
    return float(np.median(np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)))


def relative_spread(x: np.ndarray) -> float:
    """How much the rows vary across steps, relative to their size: ``sqrt(mean |x - mean|^2)
    / sqrt(mean |x|^2)``, in [0, 1]; 0 for constant rows (and for all-zero ones)."""
    x = np.asarray(x, dtype=np.float64)
    total = float(np.mean(np.sum(x**2, axis=1)))
    if total <= _EPS:
        return 0.0
    return float(np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1)) / total))


def centred_agreement(own: np.ndarray, other: np.ndarray) -> float:
    """Mean same-step cosine of the centred rows of ``own`` and ``other`` (n, d), in the agent's
    own coordinates: 1 when ``other`` varies from step to step as ``own`` does, about 0 when it
    is unrelated or turned by 90 degrees, -1 when it varies against it."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (own, other))
    return float(np.mean(same_step_cosine(a - a.mean(axis=0), b - b.mean(axis=0))))


@dataclass(frozen=True)
class Copies:
    """What :meth:`CopyDetector.copies` found in one round."""

    # Screened: neighbour -> whose embeddings it copies (the agent's own id for an echo).
    found: dict[str, str]
    # Pairs of neighbours that are near-duplicates with neither shown to be the copy: they share
    # one vote in the blend.
    twins: list[tuple[str, str]] = field(default_factory=list)
    # Near-duplicates of a neighbour that agrees clearly better with the agent's own embeddings,
    # replays that lag behind the neighbour they replay, or stale ones (still resending a
    # same-round copy of a neighbour that has moved on): left out of this round's blend (not
    # screened: their affinity stands).
    outvoted: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Seen:
    owner: str
    rows: np.ndarray  # (n, d) float32
    steps: np.ndarray  # the step of each row
    twin: bool = False  # one of a pair of near-duplicates: cannot make anyone a copy later


def _common(a: _Seen, b: _Seen, min_rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows of ``a`` and ``b`` for the steps both have, if there are ``min_rows`` or more."""
    if len(a.steps) == len(b.steps) and np.array_equal(a.steps, b.steps):
        return (a.rows, b.rows) if len(a.rows) >= min_rows else None
    _, i, j = np.intersect1d(a.steps, b.steps, assume_unique=True, return_indices=True)
    if len(i) < min_rows:
        return None
    return a.rows[i], b.rows[j]


class CopyDetector:
    """Recognises neighbours that send (a transform of) someone else's embeddings.

    The test is the :func:`~osml.core.similarity.linear_residual`: how much of a neighbour's
    embeddings no affine map of another matrix explains. A turned, rescaled or shifted copy
    with noise has about the noise as its residual (int8 quantisation alone leaves about 0.01).
    Honest encoders never send one another's embeddings up to an affine map: on the generated
    data, agents that see the *same* data and have been pulled together for many rounds stay at
    0.07 or above, agents with only part of a context in common at 0.14 or above, and freshly
    initialised encoders at 0.27 or above. So:

    * **echo** (screened): within ``threshold`` (0.03) of the agent's own embeddings of this or
      an earlier round. A neighbour within ``echo_threshold`` (0.15) of them in the agent's
      first round, when its encoder and its neighbours' are fresh and unrelated, is a suspect:
      it gets no vote in that round (outvoted by the agent itself), and is screened in any later
      round in which it is still that close while the agent's own embeddings have moved (the
      agent trains). Devices that share a shipped model and only infer may start that close
      without copying anyone; their embeddings do not move;
    * **replay** (screened): within ``threshold`` of what another neighbour sent in an earlier
      round, unless it is closer still to its own last matrix (an honest agent's next embeddings
      are close to an affine map of what a copier sent before); a noisier replay, within
      ``twin_threshold`` (0.12) of an earlier matrix of a neighbour heard this round, is
      *outvoted* by that neighbour if it is closer to the earlier matrix than to the
      neighbour's current one and than ``lag_ratio`` (0.9) times its own last matrix (it lags
      behind it), and otherwise shares its vote. Two neighbours that would each lag the other
      (honest agents pulled hard toward each other) share a vote instead. A neighbour that
      resends a matrix it sent alike with another (a same-round copy) after the other has moved
      on (``twin_threshold`` or more) is *stale*, outvoted by the other, unless it had sent that
      matrix before the other did;
    * **twins**: two neighbours of this round within ``twin_threshold`` of each other share one
      vote, whichever of them agrees better with the agent's own embeddings. Each is an affine
      map of the other, so nothing in the pair tells the original from the copy but the
      coordinates, and those the copier chooses: a copy turned toward the agent's own
      embeddings (orthogonal Procrustes) always agrees better than its original. So agreeing
      better never wins by itself; the vote is the mean of the two (see
      :func:`osml.core.osmosis.twin_vote`), wrong by least whichever is the original. After
      the warm-up, the twin that agrees *less* is outvoted when the other agrees by
      ``aligned`` (0.5) or more and by ``margin`` (0.03) more than it agrees or disagrees, and
      it has stopped gaining: it agrees by less than ``rise`` (0.02) more than in the agent's
      last round, or the agent is chasing it (see :meth:`_runs_away`) in this round and the
      last. It then stays outvoted while it is that far behind. The shared vote pulls the
      agent toward the original either way, so an original behind a copy keeps gaining; a copy
      turned away from an aligned original stays where its turn puts it, or, turned by a fixed
      angle from the original's current embeddings, keeps its distance as the agent (and the
      original in line with it) turns toward it. Twins that vary against each other (centred
      cosine below ``order_below``, 0), which no such rule tells apart, in the warm-up too,
      are told apart by the order their frames came in: the later is outvoted (see
      :meth:`_later`).

    Every other verdict here rests on residuals of affine maps, which no choice of coordinates
    changes. A neighbour repeating itself (no new model) is no copy. Remembers ``memory``
    rounds.
    """

    def __init__(
        self,
        memory: int = 8,
        threshold: float = 0.03,
        echo_threshold: float = 0.15,
        twin_threshold: float = 0.12,
        margin: float = 0.03,
        aligned: float = 0.5,
        rise: float = 0.02,
        warmup_rounds: int = 2,
        min_rows: int = 16,
        lag_ratio: float = 0.9,
        order_below: float = 0.0,
    ) -> None:
        self._rounds: deque[list[_Seen]] = deque(maxlen=max(memory, 1))
        self.enabled = memory > 0 and max(threshold, echo_threshold, twin_threshold) > 0
        self.threshold = threshold
        self.echo_threshold = echo_threshold
        self.twin_threshold = twin_threshold
        self.lag_ratio = lag_ratio
        self.margin = margin
        self.aligned = aligned
        self.rise = rise
        self.warmup_rounds = warmup_rounds
        self.order_below = order_below
        self._agree: dict[str, float] = {}  # each neighbour's agreement in the last round
        self._stalls: set[tuple[str, str]] = set()  # (outvoted twin, its pair) last round
        self._ran: set[str] = set()  # twins that ran away from the agent last round
        self.min_rows = min_rows
        self.suspects: set[str] = set()  # within echo_threshold of own in the first round
        self.calls = 0

    def to_dict(self) -> dict[str, object]:
        """What the verdicts of the next round rest on besides the matrices (which are not
        kept across restarts): each neighbour's last agreement, the stalled twins, the echo
        suspects and how many rounds were seen (an agent's state across restarts)."""
        return {
            "agree": {
                nb: min(max(a, -1.0), 1.0) for nb, a in self._agree.items() if math.isfinite(a)
            },
            "stalls": [list(pair) for pair in sorted(self._stalls)],
            "suspects": sorted(self.suspects),
            "ran": sorted(self._ran),
            "calls": self.calls,
        }

    def restore(self, data: Mapping[str, object]) -> None:
        """Take back what :meth:`to_dict` saved (checked by :mod:`osml.agent.state`)."""
        agree = data.get("agree", {})
        stalls = data.get("stalls", [])
        suspects = data.get("suspects", [])
        ran = data.get("ran", [])
        calls = data.get("calls", 0)
        self._agree = (
            {str(k): float(v) for k, v in agree.items()} if isinstance(agree, dict) else {}
        )
        self._stalls = (
            {(str(p[0]), str(p[1])) for p in stalls if len(p) == 2}
            if isinstance(stalls, list)
            else set()
        )
        self.suspects = {str(x) for x in suspects} if isinstance(suspects, list) else set()
        self._ran = {str(x) for x in ran} if isinstance(ran, list) else set()
        self.calls = calls if isinstance(calls, int) and calls >= 0 else 0

    def _residual(self, x: _Seen, y: _Seen) -> float:
        pair = _common(x, y, self.min_rows)
        return 1.0 if pair is None else linear_residual(*pair)

    def copies(
        self,
        received: Mapping[str, np.ndarray],
        own_id: str,
        own: np.ndarray,
        present: Mapping[str, np.ndarray] | None = None,
        steps: np.ndarray | None = None,
        first_round: bool | None = None,
        moved: bool = True,
        warmup: bool | None = None,
        earned: Collection[str] = (),
        arrived: Sequence[str] | None = None,
    ) -> Copies:
        """What this round's neighbours copy (see the class docstring). ``received`` holds each
        neighbour's (n, d) rows aligned to ``own``'s, ``present`` (neighbour -> bool (n,)) where
        it had data (default: everywhere), ``steps`` the rows' absolute steps (default: row i is
        step i in every round), ``first_round`` whether this is the agent's very first round,
        with a fresh encoder (default: the first call), ``moved`` whether the agent's own
        embeddings changed since its last round, ``warmup`` whether the agent is in its warm-up,
        when no agreement tells twins apart (default: the first ``warmup_rounds`` calls),
        ``earned`` the neighbours that have been members for longer than the warm-up: an echo
        from one of them is outvoted (by the agent), not screened, since honest agents pulled
        together for many rounds can come that close (generated complex seed 2: agents 0 and 1
        after 20 rounds next to a copy turned toward each, which screened each other and split
        the sub-context), and ``arrived`` the neighbours in the order their frames came in
        (None: not known), which tells apart twins that vary against each other, in the warm-up
        too. Then remembers this round's matrices (not those screened, nor such echoes) and each
        neighbour's agreement."""
        if not self.enabled:
            return Copies({})
        own = np.asarray(own, dtype=np.float32)
        at = np.arange(len(own)) if steps is None else np.asarray(steps, dtype=np.int64)
        mine = _Seen(own_id, own, at)
        now: dict[str, _Seen] = {}
        for nb, x in received.items():
            m = np.ones(len(own), bool) if present is None or nb not in present else present[nb]
            m = np.asarray(m, dtype=bool)
            now[nb] = _Seen(nb, np.asarray(x, dtype=np.float32)[m], at[m])
        first = self.calls == 0 if first_round is None else first_round
        self.calls += 1
        found: dict[str, str] = {}
        shared: set[tuple[str, str]] = set()
        left_out: dict[str, str] = {}
        for nb, seen in now.items():
            owner = self._copied(nb, seen, mine, own_id, first, moved, shared, left_out, now)
            if owner is not None:
                found[nb] = owner
        # Two that each follow the other's earlier matrix (honest agents pulled toward each
        # other) are near-duplicates of one round, not replays: they share a vote.
        for nb, owner in list(left_out.items()):
            if left_out.get(owner) == nb:
                shared.add((nb, owner))
                del left_out[nb], left_out[owner]
        outvoted = {nb: owner for nb, owner in left_out.items() if nb not in found}
        rest = [nb for nb in now if nb not in found]
        pairs = [
            (a, b)
            for i, a in enumerate(rest)
            for b in rest[i + 1 :]
            if a not in left_out
            and b not in left_out  # no vote this round: no twin either
            and self._residual(now[a], now[b]) < self.twin_threshold
        ]
        # Twins share one vote, whichever agrees better with the agent's own embeddings: the
        # copier picks the coordinates of its copy, so it can always make the copy agree better
        # than the original (a turn toward the agent's own, Procrustes; with the copy preferred,
        # an honest pair on generated simple fell from 0.99 to -0.07 of centred alignment).
        # Sharing moves the agent toward the original either way, so an original that agrees
        # less keeps gaining; a turned copy that agrees less has stopped: only that one, after
        # the warm-up, is outvoted (see the class docstring).
        agree = {nb: centred_agreement(*pair) for nb in rest if (pair := _common(mine, now[nb], 1))}
        in_warmup = self.calls <= self.warmup_rounds if warmup is None else warmup
        last = self._rounds[-1] if self._rounds else []
        runs = {nb for a, b in pairs for nb in (a, b) if self._runs_away(now[nb], mine, last)}
        stalls: set[tuple[str, str]] = set()
        rank = {nb: i for i, nb in enumerate(arrived or ())}
        for a, b in pairs:
            lo = self._stalled(a, b, agree, runs) if not in_warmup else None
            if lo is not None:
                stalls.add((lo, b if lo == a else a))
            else:
                lo = self._later(now[a], now[b], rank)
            if lo is None:
                shared.add((a, b))
            else:
                outvoted.setdefault(lo, b if lo == a else a)
        self._agree, self._stalls, self._ran = agree, stalls, runs
        twins = sorted(
            {
                (min(a, b), max(a, b))
                for a, b in shared
                if not {a, b} & set(found) and not {a, b} & set(outvoted)
            }
        )
        paired = {nb for pair in (*twins, *outvoted.items()) for nb in pair}
        self._rounds.append(
            [mine, *(replace(now[nb], twin=nb in paired) for nb in now if nb not in found)]
        )
        echoes = {nb for nb, owner in found.items() if owner == own_id and nb in earned}
        if echoes:
            found = {nb: owner for nb, owner in found.items() if nb not in echoes}
            outvoted = {**outvoted, **{nb: own_id for nb in echoes}}
        return Copies(found, twins, outvoted)

    def _copied(
        self,
        nb: str,
        seen: _Seen,
        mine: _Seen,
        own_id: str,
        first: bool,
        moved: bool,
        shared: set[tuple[str, str]],
        left_out: dict[str, str],
        now: Mapping[str, _Seen],
    ) -> str | None:
        """Whose embeddings ``nb`` copies (screened), or None; noisy replays of a neighbour heard
        this round go to ``shared``, or to ``left_out`` (nb -> the neighbour it replays) when they
        lag behind that neighbour; a first-round echo suspect goes to ``left_out`` too (nb ->
        ``own_id``)."""
        echo = self._residual(seen, mine)
        if echo < self.threshold:
            return own_id
        # In the agent's first round its encoder and its neighbours' are fresh and unrelated, so
        # a noisy echo stands out: a suspect, screened once the agent's embeddings have moved and
        # it is still that close.
        close = echo < self.echo_threshold
        if first and close:
            self.suspects.add(nb)
            left_out.setdefault(nb, own_id)  # no vote in this round
        elif nb in self.suspects and not close:
            self.suspects.discard(nb)
        elif nb in self.suspects and moved:
            return own_id
        aged = [(age, p) for age, round_ in enumerate(reversed(self._rounds)) for p in round_]
        own_last = next((p for _, p in aged if p.owner == nb), None)
        itself = self._residual(seen, own_last) if own_last is not None else 1.0
        for age, other in aged:
            if other.owner == nb:
                continue
            r = self._residual(seen, other)
            if r < self.threshold and self._stale(nb, other, age, aged, now):
                left_out.setdefault(nb, other.owner)
                continue
            if r >= itself and other.owner != own_id:
                continue  # it continues its own embeddings better
            if r < self.threshold and (other.owner == own_id or not other.twin):
                return other.owner
            if r < self.twin_threshold and other.owner in now:
                # A noisy replay. One that follows the earlier matrix more closely than the
                # original's current one, and clearly more closely than its own last one (a
                # copy of *its* last matrix, which a copier may have sent, explains it as well),
                # lags behind it: its vote would pull toward where the original was, so it is
                # left out of the blend (its affinity stands). Otherwise it is as current as its
                # original and shares its vote.
                if r < self.lag_ratio * itself and r < self._residual(seen, now[other.owner]):
                    left_out.setdefault(nb, other.owner)
                else:
                    shared.add((nb, other.owner))
        return None

    def _runs_away(self, seen: _Seen, mine: _Seen, last: list[_Seen]) -> bool:
        """Whether ``seen`` moved away from where the agent was in its last round while the agent
        moved toward where ``seen`` was: its agreement with the agent's last embeddings fell by
        ``rise`` or more since then, and the agent's own embeddings agree better now with its
        last matrix. A twin that does so is being chased: the shared vote pulls the agent
        toward it and it keeps its distance (a copy turned by a fixed angle from an original
        the agent is in line with, which turned the whole pair round by round). An honest
        neighbour moves toward the agent or stays; on steps the two rounds do not share, never
        (the rule then rests on the stall alone)."""
        before = next((p for p in last[1:] if p.owner == seen.owner), None)
        was = self._agree.get(seen.owner)  # its agreement with the agent's last embeddings
        if before is None or was is None:
            return False
        now_then = _common(last[0], seen, self.min_rows)
        then_now = _common(mine, before, self.min_rows)
        if now_then is None or then_now is None:
            return False
        gone, chased = centred_agreement(*now_then), centred_agreement(*then_now)
        return gone < was - self.rise and chased > was

    def _later(self, a: _Seen, b: _Seen, rank: Mapping[str, int]) -> str | None:
        """Of twins ``a`` and ``b`` that vary against each other (centred cosine below
        ``order_below``), the one whose frame came in later, or None. Their shared vote (the
        mean) has next to none of the original's variation, and nothing in their content tells
        which is the original, so every round of sharing is a round without the original's
        pull: with a reflected copy of an agent's only partner, in eight dimensions, the pair
        never came into line. But a copy of this round's frame can only be made once the
        original has come, to the copier as to the agent, so it comes after it; a copy that
        comes first all the same (a copier on a faster path) has the pair's vote to itself."""
        if a.owner not in rank or b.owner not in rank or self.order_below <= -1.0:
            return None
        pair = _common(a, b, self.min_rows)
        if pair is None or centred_agreement(*pair) >= self.order_below:
            return None
        return a.owner if rank[a.owner] > rank[b.owner] else b.owner

    def _stalled(
        self, a: str, b: str, agree: Mapping[str, float], runs: Collection[str] = ()
    ) -> str | None:
        """Which of twins ``a`` and ``b`` has stopped gaining on the agent, or None: the one that
        agrees less with the agent's own embeddings, when the other agrees by ``aligned`` or
        more and by ``margin`` more than the first agrees *or disagrees* (a reflection of an
        original that varies against the agent agrees about as much as the original
        disagrees), and the first agrees by less than ``rise`` more than it did in the agent's
        last round or is in ``runs`` (chased, :meth:`_runs_away`) this round and was the last."""
        if a not in agree or b not in agree:
            return None
        lo, hi = sorted((a, b), key=agree.__getitem__)
        if agree[hi] < max(self.aligned, abs(agree[lo]) + self.margin):
            return None
        if (lo, hi) in self._stalls:  # stalled before, and still behind: stays outvoted
            return lo
        if lo in runs and lo in self._ran:  # chased for two rounds in a row
            return lo
        last = self._agree.get(lo)
        return lo if last is not None and agree[lo] - last < self.rise else None

    def _stale(
        self,
        nb: str,
        other: _Seen,
        age: int,
        aged: list[tuple[int, _Seen]],
        now: Mapping[str, _Seen],
    ) -> bool:
        """Whether ``nb``, which resends (within ``threshold``) ``other``, a matrix that was one of
        a pair of near-duplicates ``age`` rounds ago, is stale: ``other``'s sender has moved on
        since (its matrix of this round is ``twin_threshold`` or more from it) and ``nb`` had not
        sent that matrix before ``other`` was seen. A copier that sent a same-round copy and then
        keeps resending it looks like a device repeating itself; the original, which trains, has
        moved on. A converged original next to a copy with fresh noise moves by less than the
        twin bar, so neither is stale."""
        if not other.twin or other.owner not in now:
            return False
        if self._residual(now[other.owner], other) < self.twin_threshold:
            return False
        return not any(
            a > age and p.owner == nb and self._residual(p, other) < self.threshold for a, p in aged
        )


def screen(
    own: np.ndarray,
    received: Mapping[str, np.ndarray],
    settings: ScreenSettings = ScreenSettings(),
    copies: Mapping[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Split ``received`` into (kept neighbours, rescaled to the own median norm; screened
    neighbours -> reason). ``copies`` is what :meth:`CopyDetector.copies` found this round."""
    own_norm = median_norm(own)
    kept: dict[str, np.ndarray] = {}
    screened: dict[str, str] = {}
    for nb, x in received.items():
        x = np.asarray(x, dtype=np.float32)
        if copies and nb in copies:
            screened[nb] = "copy"
            continue
        if not np.isfinite(x).all():
            screened[nb] = "nonfinite"
            continue
        if relative_spread(x) < settings.min_spread:
            screened[nb] = "constant"
            continue
        norm = median_norm(x)
        if own_norm > _EPS:
            ratio = norm / own_norm
            if not 1.0 / settings.max_scale <= ratio <= settings.max_scale:
                screened[nb] = "scale"
                continue
            x = (x.astype(np.float64) / ratio).astype(np.float32)
        kept[nb] = x
    return kept, screened
