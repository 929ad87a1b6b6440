"""Decentralized sub-contexts: which neighbours an agent lets pull on its encoder.

Each agent decides alone, from the frames it receives, with no global view. Per neighbour it keeps
an *affinity memory*: an exponential moving average, over rounds, of the linear CKA
(:func:`osml.core.similarity.linear_cka`) between its own embeddings and the neighbour's for the
same steps. CKA is blind to rotations and scale, so it measures whether the neighbour's data carries
information about the agent's own before their embedding spaces are aligned, and it stays near 0
for a neighbour whose data is unrelated noise however the encoders move.

Decision, with hysteresis so that a neighbour near the line does not flap in and out:

* during the agent's first ``warmup_rounds`` rounds every neighbour is a member (encoders are
  still random; the first pulls are what makes related agents' affinity grow);
* afterwards a non-member joins when its memory has been at ``enter`` or above for
  ``confirm_rounds`` consecutive rounds (one round of high affinity is not enough: a neighbour
  left out as a copy cannot rejoin on the strength of one clean frame), and a member leaves when
  its memory drops below ``leave`` (``leave < enter``);
* an agent left alone (after the warm-up, no neighbour a member) takes the neighbour with the
  highest memory as a member once that memory has been at ``enter_alone`` (below ``enter``) or
  above for ``confirm_rounds`` rounds. A device whose data changed (moved to another room) lands
  in a group whose encoders were trained on its new signal, but its own encoder was trained on
  the old one: their affinity is partial (0.2-0.6 measured) and, without a pull, stays there.
  The pull is one-sided: the group admits it by its own rule once the spaces agree. Unrelated
  data stays near 0 (0.05-0.15 measured), well below.

The pure functions hold the policy; :class:`SubcontextMemory` holds the per-neighbour state and
serialises to plain JSON-able dicts for the agent's state directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SubcontextMemory", "SubcontextPolicy", "decide_member", "update_memory"]


@dataclass(frozen=True)
class SubcontextPolicy:
    """How an agent turns affinities into sub-context membership."""

    memory: float = 0.5
    enter: float = 0.6
    leave: float = 0.45
    warmup_rounds: int = 2
    confirm_rounds: int = 2
    enter_alone: float = 0.3  # an agent with no member takes its best neighbour from here on

    def __post_init__(self) -> None:
        if not 0.0 < self.memory <= 1.0:
            raise ValueError("memory (weight of the newest affinity) must be in (0, 1]")
        if not 0.0 <= self.leave <= self.enter <= 1.0:
            raise ValueError("need 0 <= leave <= enter <= 1")
        if not 0.0 <= self.enter_alone <= self.enter:
            raise ValueError("need 0 <= enter_alone <= enter")
        if self.warmup_rounds < 0:
            raise ValueError("warmup_rounds must be >= 0")
        if self.confirm_rounds < 1:
            raise ValueError("confirm_rounds must be >= 1")


def update_memory(previous: float | None, observed: float, weight: float) -> float:
    """Exponential moving average; the first observation initialises the memory."""
    if previous is None:
        return float(observed)
    return float((1.0 - weight) * previous + weight * observed)


def decide_member(
    is_member: bool,
    memory: float,
    rounds_seen: int,
    policy: SubcontextPolicy,
    rounds_above: int | None = None,
) -> bool:
    """Membership after this round, given the current one and the neighbour's memory;
    ``rounds_above`` is how many consecutive rounds (this one included) the memory has been at
    ``enter`` or above (None: as many as it takes)."""
    if rounds_seen <= policy.warmup_rounds:
        return True
    if is_member:
        return memory >= policy.leave
    confirmed = rounds_above is None or rounds_above >= policy.confirm_rounds
    return memory >= policy.enter and confirmed


@dataclass
class SubcontextMemory:
    """Per-neighbour affinity memory and membership of one agent."""

    policy: SubcontextPolicy = field(default_factory=SubcontextPolicy)
    affinity: dict[str, float] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    members: dict[str, bool] = field(default_factory=dict)
    above: dict[str, int] = field(default_factory=dict)  # consecutive rounds at memory >= enter
    near: dict[str, int] = field(default_factory=dict)  # ... at memory >= enter_alone

    def is_member(self, neighbour: str) -> bool:
        # A neighbour never heard from yet is given the benefit of the doubt (warm-up rule).
        return self.members.get(neighbour, True)

    def observe(
        self, affinities: dict[str, float], own_round: int | None = None
    ) -> dict[str, bool]:
        """Fold in this round's affinities (only neighbours heard from) and decide membership.

        ``own_round`` (1-based) is how many rounds this agent has run: the warm-up is counted in
        the agent's own rounds, so a neighbour whose frames were lost early is judged as soon as
        it is heard after the warm-up, instead of getting a warm-up of its own in which its pull
        could drag the agent toward it. Without it, warm-up counts observations per neighbour.
        """
        for nb, value in affinities.items():
            self.affinity[nb] = update_memory(self.affinity.get(nb), value, self.policy.memory)
            self.seen[nb] = self.seen.get(nb, 0) + 1
            rounds = own_round if own_round is not None else self.seen[nb]
            high = self.affinity[nb] >= self.policy.enter
            self.above[nb] = self.above.get(nb, 0) + 1 if high else 0
            near = self.affinity[nb] >= self.policy.enter_alone
            self.near[nb] = self.near.get(nb, 0) + 1 if near else 0
            self.members[nb] = decide_member(
                self.is_member(nb), self.affinity[nb], rounds, self.policy, self.above[nb]
            )
        alone = self.members and not any(self.members.values())
        if alone and (own_round is None or own_round > self.policy.warmup_rounds):
            best = max(sorted(self.affinity), key=lambda nb: self.affinity[nb])
            if best in self.members and self.near.get(best, 0) >= self.policy.confirm_rounds:
                self.members[best] = True
        return dict(self.members)

    def subcontext(self, self_id: str) -> list[str]:
        """The agent's sub-context as it sees it: itself plus its member neighbours, sorted."""
        return sorted({self_id, *(nb for nb, m in self.members.items() if m)})

    def to_dict(self) -> dict[str, object]:
        return {
            "affinity": dict(self.affinity),
            "seen": dict(self.seen),
            "members": dict(self.members),
            "above": dict(self.above),
            "near": dict(self.near),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], policy: SubcontextPolicy | None = None
    ) -> SubcontextMemory:
        """Rebuild from :meth:`to_dict`'s output, as decoded from JSON (hence ``Any`` values)."""
        mem = cls(policy=policy or SubcontextPolicy())
        mem.affinity = {str(k): float(v) for k, v in dict(data.get("affinity", {})).items()}
        mem.seen = {str(k): int(v) for k, v in dict(data.get("seen", {})).items()}
        mem.members = {str(k): bool(v) for k, v in dict(data.get("members", {})).items()}
        mem.above = {str(k): int(v) for k, v in dict(data.get("above", {})).items()}
        mem.near = {str(k): int(v) for k, v in dict(data.get("near", {})).items()}
        return mem
