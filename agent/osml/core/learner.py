"""One agent's osmotic decision state, transport-free.

:class:`OsmoticLearner` is what both ``osml simulate`` (in-memory exchange) and ``osml agent``
(MQTT) run each round: given the agent's own embeddings for the round's steps and the
embeddings its neighbours sent for the same steps, it

0. screens what each neighbour sent (:mod:`osml.core.screening`): constant, wildly scaled or copied
   (echoed, replayed: turned and noised copies included) embeddings are left out, the rest are
   rescaled to the agent's own median norm;
1. measures each neighbour's affinity (linear CKA, :func:`osml.core.similarity.linear_cka`) and
   updates the per-neighbour memory and sub-context (:mod:`osml.core.subcontext`);
2. computes the osmosis weights and target (:mod:`osml.core.osmosis`): members that are
   near-duplicates of each other (twins) share one vote (their mean), whichever agrees better,
   a member that varies against the agent's own embeddings once it has been a member for
   longer than the warm-up is left out (next to one that votes), and with four votes or more
   the largest and smallest value of each coordinate are dropped
   (:func:`~osml.core.osmosis.trimmed_target`);
3. tracks its own equilibrium (:mod:`osml.core.equilibrium`).

It sees only what this agent received: there is no global view anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from osml.core.equilibrium import EquilibriumDetector, relative_change
from osml.core.osmosis import (
    osmosis_target,
    osmosis_weights,
    restore_spread,
    share_votes,
    trimmed_target,
    twin_vote,
)
from osml.core.screening import ScreenSettings, centred_agreement, screen
from osml.core.similarity import linear_cka
from osml.core.subcontext import SubcontextMemory, SubcontextPolicy

__all__ = ["MIN_SHARED_STEPS", "LearnerSettings", "OsmoticLearner", "RoundOutcome"]

# Fewer shared steps than this say nothing about a neighbour's affinity (linear CKA needs a few).
MIN_SHARED_STEPS = 8


@dataclass(frozen=True)
class LearnerSettings:
    temperature: float = 1.0
    # How much of its own step-to-step spread an agent keeps in its target (see restore_spread):
    # "warmup" (default) keeps all of it while sub-contexts form, when embedding spaces are still
    # unrelated and a blend loses variance for no reason, and uses the plain blend afterwards, when
    # lost variance means real disagreement; "always" / "never" as named.
    keep_spread: str = "warmup"
    policy: SubcontextPolicy = field(default_factory=SubcontextPolicy)
    equilibrium_tolerance: float = 0.02
    equilibrium_patience: int = 3
    screen: ScreenSettings = field(default_factory=ScreenSettings)
    # After the warm-up, per step and coordinate, drop the `trim` largest and smallest values of
    # the agent and its members' votes before blending (when there are at least 2 * trim + 2),
    # so that no one neighbour can push the target outside the range of the others' values
    # (osmosis.trimmed_target); 0 is the plain blend.
    trim: int = 1
    # Only the first shared_dims dimensions of an embedding take part in osmosis (screening but
    # the copy check, affinity, sub-contexts, weights and target); the others are the agent's
    # own, and its target there is its own embedding. 0: all dimensions. The trainer's
    # TrainerSettings.shared_dims must say the same, so that it pulls only these dimensions.
    shared_dims: int = 0
    # A member whose embeddings vary against or across the agent's own (mean same-step centred
    # cosine below min_agreement) gets no vote in that round (its affinity stands) once it has
    # been a member for more than policy.warmup_rounds rounds in a row: pulled toward a turned
    # or reflected version of itself, an agent loses what it shares with its honest members.
    # Honest members agree far more by then. -1 turns the rule off. When no member agrees by
    # min_agreement, only those under min_agreement_alone (that vary against the agent) are
    # left out: the agent has no member in line with it yet, and leaving out every member that
    # is still across it would leave it to train alone, never to come into line with any.
    min_agreement: float = 0.5
    min_agreement_alone: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.trim < 0:
            raise ValueError("trim must be >= 0")
        if not -1.0 <= self.min_agreement < 1.0:
            raise ValueError("min_agreement must be in [-1, 1) (-1: off)")
        if not -1.0 <= self.min_agreement_alone < 1.0:
            raise ValueError("min_agreement_alone must be in [-1, 1)")
        if self.shared_dims < 0:
            raise ValueError("shared_dims must be >= 0 (0: all dimensions)")
        if self.keep_spread not in ("warmup", "always", "never"):
            raise ValueError("keep_spread must be warmup, always or never")


@dataclass(frozen=True)
class RoundOutcome:
    target: np.ndarray  # (n, d) osmosis target for the round's steps
    weights: dict[str, float]  # mean osmosis weight per agent (self included) over the steps
    affinity: dict[str, float]  # this round's affinity per neighbour heard from
    memory: dict[str, float]  # affinity memory per neighbour
    subcontext: list[str]  # self plus member neighbours
    change: float | None  # relative change of own embeddings since the last round
    equilibrium: bool
    # neighbour -> what screening found: constant, scale, nonfinite, copy (left out, and
    # affinity 0 for the round), outvoted or opposed (left out of this round's blend only: a
    # near-duplicate that lost to its twin, a lagging or stale replay, or a member whose
    # embeddings vary against the agent's own) or twin (a near-duplicate of another neighbour,
    # with which it shares one vote)
    screened: dict[str, str] = field(default_factory=dict)


class OsmoticLearner:
    def __init__(
        self, agent_id: str, neighbours: list[str], settings: LearnerSettings | None = None
    ) -> None:
        self.agent_id = agent_id
        self.neighbours = list(neighbours)
        self.settings = settings or LearnerSettings()
        self.memory = SubcontextMemory(policy=self.settings.policy)
        self.equilibrium = EquilibriumDetector(
            self.settings.equilibrium_tolerance, self.settings.equilibrium_patience
        )
        self._previous: np.ndarray | None = None
        self._previous_steps: np.ndarray | None = None
        self._copies = self.settings.screen.detector()
        self._member_rounds: dict[str, int] = {}
        self.rounds = 0

    def step(
        self,
        own: np.ndarray,
        received: Mapping[str, np.ndarray],
        present: Mapping[str, np.ndarray] | None = None,
        steps: np.ndarray | None = None,
        arrived: Sequence[str] | None = None,
    ) -> RoundOutcome:
        """One round. ``received`` maps neighbour id -> (n, d) embeddings aligned to the n rows
        of ``own``; neighbours that did not deliver in time are simply absent. ``present``
        (neighbour -> bool (n,)) marks the rows a neighbour had data for (default: all); a
        neighbour with fewer than :data:`MIN_SHARED_STEPS` such rows counts as not heard.
        ``steps`` names the rows (absolute step indices) so that the change since the last
        round is measured on the steps both rounds embedded. ``arrived`` lists the neighbours in
        the order their frames came in, when known (see :meth:`CopyDetector.copies`).

        With :attr:`LearnerSettings.shared_dims` = k > 0 all but that change sees only the first
        k dimensions, and the target keeps the agent's own values in the others."""
        whole = np.asarray(own, dtype=np.float32)
        k = self.settings.shared_dims
        if whole.ndim != 2 or k > whole.shape[1]:
            raise ValueError(f"shared_dims {k} is more than the embedding has: {whole.shape}")
        k = k or whole.shape[1]
        own = whole[:, :k]
        n = len(own)
        masks: dict[str, np.ndarray] = {}
        for nb in self.neighbours:
            if nb not in received:
                continue
            if received[nb].shape != whole.shape:
                raise ValueError(
                    f"{nb} sent {received[nb].shape}, own embeddings are {whole.shape}"
                )
            mask = np.ones(n, dtype=bool) if present is None or nb not in present else present[nb]
            if int(mask.sum()) >= min(MIN_SHARED_STEPS, n) and n > 0:
                masks[nb] = np.asarray(mask, dtype=bool)
        heard = list(masks)
        sent = {nb: np.asarray(received[nb], dtype=np.float32) for nb in heard}
        change = self._change(whole, steps)
        moved = change is not None and change > 1e-6  # an agent that only infers never moves
        # Copies are looked for in whole frames: a copier sends all of them, and in a few shared
        # dimensions honest neighbours that agree can look like affine copies of each other.
        in_warmup = self.rounds < self.settings.policy.warmup_rounds
        copies = self._copies.copies(
            sent,
            self.agent_id,
            whole,
            masks,
            steps,
            self.rounds == 0,
            moved,
            warmup=in_warmup,
            earned={
                nb
                for nb in heard
                if self._member_rounds.get(nb, 0) > self.settings.policy.warmup_rounds
            },
            arrived=arrived,
        )
        mine = {nb: e[:, :k] for nb, e in sent.items()}
        kept: dict[str, np.ndarray] = {}
        screened: dict[str, str] = {}
        for nb in heard:
            m = masks[nb]
            ok, why = screen(own[m], {nb: mine[nb][m]}, self.settings.screen, copies.found)
            screened.update(why)
            if nb in ok:
                full = np.zeros_like(own)
                full[m] = ok[nb]
                kept[nb] = full
        # A screened neighbour told us nothing usable this round: affinity 0, so one that stays
        # broken leaves the sub-context.
        affinity = {
            nb: (linear_cka(own[masks[nb]], kept[nb][masks[nb]]) if nb in kept else 0.0)
            for nb in heard
        }
        self.memory.observe(affinity, own_round=self.rounds + 1)
        heard = [nb for nb in heard if nb in kept]
        # An outvoted twin keeps its affinity but is left out of this round's blend. Twins are
        # named too, so that an operator sees who copies whom.
        screened.update({nb: "twin" for pair in copies.twins for nb in pair if nb in kept})
        screened.update({nb: "outvoted" for nb in copies.outvoted if nb in kept})
        # Members that are near-duplicates of each other (twins) share one vote, so that a copy
        # of a member cannot double its pull; the vote is osmosis.twin_vote (the twins' mean).
        members = [nb for nb in heard if self.memory.is_member(nb) and nb not in copies.outvoted]
        for nb in heard:  # rounds in a row as a member, for the grace of a new member
            self._member_rounds[nb] = (
                self._member_rounds.get(nb, 0) + 1 if self.memory.is_member(nb) else 0
            )
        if self.settings.min_agreement > -1.0:
            # A member in its first warmup_rounds rounds (all of them in the agent's warm-up, and
            # one that joins later, after a drift or a late start) votes whatever it agrees:
            # that is how two latent spaces come to agree at all.
            agree = {
                nb: centred_agreement(own[masks[nb]], kept[nb][masks[nb]])
                for nb in members
                if self._member_rounds[nb] > self.settings.policy.warmup_rounds
            }
            # With no member in line with it, an agent leaves out only members that vary
            # against it: on sparse links a slow warm-up can leave honest partners across each
            # other (generated complex on a ring, seed 2: agents 2 and 3 at 0.46, which left
            # each other out from round 2 on and never came into line).
            graced = len(agree) < len(members)
            bar = (
                self.settings.min_agreement
                if graced or any(a >= self.settings.min_agreement for a in agree.values())
                else min(self.settings.min_agreement_alone, self.settings.min_agreement)
            )
            opposed = [nb for nb, a in agree.items() if a < bar]
            screened.update({nb: "opposed" for nb in opposed})
            members = [nb for nb in members if nb not in opposed]
        groups = share_votes(members, copies.twins)
        stack = np.zeros((len(groups), *own.shape), np.float32)
        rows = np.zeros((len(groups), n), dtype=bool)
        for j, g in enumerate(groups):
            rows[j] = np.any([masks[nb] for nb in g], axis=0)
            if len(g) == 1:
                stack[j] = kept[g[0]]
                continue
            stack[j] = twin_vote(
                np.stack([kept[nb] for nb in g]), np.stack([masks[nb] for nb in g])
            )
        w = osmosis_weights(own, stack, np.ones(len(groups), bool), self.settings.temperature, rows)
        # In the warm-up every neighbour is a member by grace, and trimming its votes only slowed
        # honest groups (generated complex, 0~1: -0.016); afterwards members have earned it.
        if self.settings.trim and not in_warmup:
            target, w = trimmed_target(own, stack, w, self.settings.trim)
        else:
            target = osmosis_target(own, stack, w)
        self.rounds += 1
        mode = self.settings.keep_spread
        if heard and (mode == "always" or (mode == "warmup" and in_warmup)):
            target = restore_spread(target, own)
        if k < whole.shape[1]:
            target = np.concatenate([target, whole[:, k:]], axis=1)
        mean_w = w.mean(axis=1)
        weights = {
            self.agent_id: float(mean_w[0]),
            **{nb: 0.0 for nb in heard},
            **{nb: float(mean_w[1 + j]) / len(g) for j, g in enumerate(groups) for nb in g},
        }
        sub = self.memory.subcontext(self.agent_id)
        eq = self.equilibrium.update(change, sub)
        return RoundOutcome(
            target, weights, affinity, dict(self.memory.affinity), sub, change, eq, screened
        )

    def subcontext(self) -> list[str]:
        return self.memory.subcontext(self.agent_id)

    def screening_state(self) -> dict[str, object]:
        """What screening carries from round to round, for an agent's state across restarts:
        each neighbour's rounds in a row as a member (its grace) and the copy detector's memory
        (:meth:`CopyDetector.to_dict`). Without it a restarted agent would give every member
        the grace of a new one (a member that varies against it votes again) and judge no twin
        for a round."""
        return {"member_rounds": dict(self._member_rounds), **self._copies.to_dict()}

    def restore_screening(self, data: Mapping[str, object]) -> None:
        """Take back what :meth:`screening_state` saved."""
        rounds = data.get("member_rounds", {})
        if isinstance(rounds, dict):
            self._member_rounds = {str(k): int(v) for k, v in rounds.items()}
        self._copies.restore(data)

    def _change(self, own: np.ndarray, steps: np.ndarray | None) -> float | None:
        """Relative change of the own embeddings since the last round, on the steps both
        rounds embedded (all rows when no steps are given); None when there are too few."""
        prev, prev_steps = self._previous, self._previous_steps
        cur = None if steps is None else np.asarray(steps, dtype=np.int64)
        self._previous, self._previous_steps = own, cur
        if prev is None:
            return None
        if cur is None or prev_steps is None:
            return relative_change(prev, own) if prev.shape == own.shape else None
        common, i, j = np.intersect1d(prev_steps, cur, return_indices=True)
        if len(common) < min(MIN_SHARED_STEPS, len(own)) or len(common) == 0:
            return None
        return relative_change(prev[i], own[j])
