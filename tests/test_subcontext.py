"""Tests for osml.core.subcontext (affinity memory, hysteresis) and osml.core.learner (a round)."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest

from osml.core.learner import LearnerSettings, OsmoticLearner
from osml.core.subcontext import SubcontextMemory, SubcontextPolicy, decide_member, update_memory


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# --- policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory": 0.0},
        {"memory": -0.1},
        {"memory": 1.5},
        {"enter": 0.4, "leave": 0.5},
        {"enter": 1.2},
        {"leave": -0.1},
        {"warmup_rounds": -1},
        {"confirm_rounds": 0},
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SubcontextPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory": 1.0},
        {"enter": 0.5, "leave": 0.5},
        {"warmup_rounds": 0},
        {"enter": 1.0, "leave": 0.0},
    ],
)
def test_policy_accepts_boundary_values(kwargs: dict[str, Any]) -> None:
    SubcontextPolicy(**kwargs)


# --- pure functions -------------------------------------------------------------------------


def test_update_memory_first_observation_initialises() -> None:
    assert update_memory(None, 0.3, weight=0.1) == 0.3


def test_update_memory_ema_by_hand() -> None:
    m = update_memory(None, 1.0, 0.25)
    m = update_memory(m, 0.0, 0.25)  # 0.75 * 1 + 0.25 * 0
    assert m == pytest.approx(0.75)
    m = update_memory(m, 0.0, 0.25)  # 0.75 * 0.75
    assert m == pytest.approx(0.5625)
    m = update_memory(m, 1.0, 0.25)  # 0.75 * 0.5625 + 0.25
    assert m == pytest.approx(0.671875)


def test_update_memory_with_weight_one_keeps_only_newest() -> None:
    assert update_memory(0.9, 0.1, 1.0) == pytest.approx(0.1)


def test_decide_member_warmup_keeps_everyone() -> None:
    policy = SubcontextPolicy(warmup_rounds=2)

    assert decide_member(False, 0.0, 1, policy) is True
    assert decide_member(False, 0.0, 2, policy) is True
    assert decide_member(False, 0.0, 3, policy) is False


def test_decide_member_hysteresis_boundaries() -> None:
    p = SubcontextPolicy(enter=0.6, leave=0.45, warmup_rounds=0)

    # a member stays down to leave (inclusive) and goes just below it
    assert decide_member(True, 0.45, 5, p) is True
    assert decide_member(True, 0.4499, 5, p) is False
    # a non-member needs enter (inclusive); between leave and enter it stays out
    assert decide_member(False, 0.5999, 5, p) is False
    assert decide_member(False, 0.6, 5, p) is True
    assert decide_member(False, 0.5, 5, p) is False
    assert decide_member(True, 0.5, 5, p) is True


# --- SubcontextMemory -----------------------------------------------------------------------


def test_memory_warmup_keeps_unrelated_neighbour() -> None:
    mem = SubcontextMemory(policy=SubcontextPolicy(warmup_rounds=2))

    first = mem.observe({"nb": 0.0})
    second = mem.observe({"nb": 0.0})
    third = mem.observe({"nb": 0.0})

    assert first == {"nb": True}
    assert second == {"nb": True}
    assert third == {"nb": False}


def test_memory_hysteresis_sequence() -> None:
    # memory = 1 makes the memory equal the newest affinity, so the hysteresis is visible directly;
    # enter_alone = enter switches off the alone rule (one neighbour: the agent is alone when out).
    mem = SubcontextMemory(
        policy=SubcontextPolicy(
            memory=1.0, enter=0.6, leave=0.45, warmup_rounds=0, confirm_rounds=1, enter_alone=0.6
        )
    )
    sequence = [
        (0.5, True),
        (0.44, False),
        (0.5, False),
        (0.59, False),
        (0.6, True),
        (0.45, True),
        (0.2, False),
    ]

    got = [(value, mem.observe({"nb": value})["nb"]) for value, _ in sequence]

    assert got == sequence


def test_rejoining_needs_consecutive_rounds_at_the_enter_bar() -> None:
    # enter_alone = enter: the alone rule (one neighbour) adds nothing here.
    mem = SubcontextMemory(policy=SubcontextPolicy(memory=1.0, warmup_rounds=0, enter_alone=0.6))
    sequence = [
        (0.2, False),  # leaves
        (0.9, False),  # one clean round is not enough
        (0.3, False),
        (0.9, False),
        (0.95, True),  # two in a row
        (0.5, True),  # hysteresis as before
    ]

    got = [(value, mem.observe({"nb": value})["nb"]) for value, _ in sequence]

    assert got == sequence
    assert mem.above == {"nb": 0}
    assert decide_member(False, 0.9, 5, SubcontextPolicy(), rounds_above=1) is False
    assert decide_member(False, 0.9, 5, SubcontextPolicy(), rounds_above=2) is True
    assert decide_member(False, 0.9, 5, SubcontextPolicy()) is True  # streak unknown


def test_memory_is_member_defaults_true_for_unknown() -> None:
    mem = SubcontextMemory()

    assert mem.is_member("never-heard") is True


def test_memory_ema_and_seen_counts() -> None:
    mem = SubcontextMemory(policy=SubcontextPolicy(memory=0.5))

    mem.observe({"a": 0.8, "b": 0.2})
    mem.observe({"a": 0.4})

    assert mem.affinity["a"] == pytest.approx(0.6)
    assert mem.affinity["b"] == pytest.approx(0.2)
    assert mem.seen == {"a": 2, "b": 1}


def test_memory_subcontext_sorted_with_self_and_members_only() -> None:
    mem = SubcontextMemory(policy=SubcontextPolicy(memory=1.0, warmup_rounds=0))
    mem.observe({"zed": 0.9, "bob": 0.1, "amy": 0.7})

    assert mem.subcontext("kim") == ["amy", "kim", "zed"]


def test_memory_roundtrip_through_json() -> None:
    policy = SubcontextPolicy(memory=0.3, warmup_rounds=1)
    mem = SubcontextMemory(policy=policy)
    mem.observe({"a": 0.9, "b": 0.1})
    mem.observe({"a": 0.8, "b": 0.05})

    restored = SubcontextMemory.from_dict(json.loads(json.dumps(mem.to_dict())), policy=policy)

    assert restored.affinity == mem.affinity
    assert restored.seen == mem.seen
    assert restored.members == mem.members
    assert restored.above == mem.above
    assert restored.policy == policy
    # and both continue identically
    assert restored.observe({"a": 0.5, "b": 0.7}) == mem.observe({"a": 0.5, "b": 0.7})
    assert restored.affinity == mem.affinity


def test_memory_from_empty_dict() -> None:
    mem = SubcontextMemory.from_dict({})

    assert mem.affinity == {} and mem.seen == {} and mem.members == {}
    assert mem.policy == SubcontextPolicy()


# --- OsmoticLearner -------------------------------------------------------------------------


def learner_round(
    rng: np.random.Generator, q: np.ndarray, n: int = 200, d: int = 8
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    own = rng.standard_normal((n, d)).astype(np.float32)
    # Another encoder of the same data: related, but no affine copy of own (that would be an echo).
    related = (1.5 * np.tanh(0.8 * own @ q) + 0.1 * rng.standard_normal((n, d))).astype(np.float32)
    noise = rng.standard_normal((n, d)).astype(np.float32)
    return own, {"related": related, "noise": noise}


def test_learner_excludes_noise_neighbour_after_warmup() -> None:
    rng = np.random.default_rng(20)
    # "related" in the agent's own coordinates, as osmosis leaves a member by the end of the
    # warm-up (a member still turned away from them then gets no vote: test_screening).
    q = np.eye(8)
    learner = OsmoticLearner(
        "me", ["related", "noise"], LearnerSettings(policy=SubcontextPolicy(warmup_rounds=2))
    )

    outcomes = [learner.step(*learner_round(rng, q)) for _ in range(5)]

    for out in outcomes[:2]:
        assert out.subcontext == ["me", "noise", "related"]
        assert out.weights["noise"] > 0.0
    for out in outcomes[2:]:
        assert out.subcontext == ["me", "related"]
        assert out.weights["noise"] == 0.0
        assert out.weights["related"] > 0.0
        assert out.affinity["related"] > 0.9
        assert out.affinity["noise"] < 0.2
    last = outcomes[-1]
    assert sum(last.weights.values()) == pytest.approx(1.0)
    assert last.memory["related"] > 0.9
    assert learner.subcontext() == ["me", "related"]


def test_learner_target_ignores_excluded_neighbour() -> None:
    rng = np.random.default_rng(21)
    q = random_rotation(8, rng)
    learner = OsmoticLearner(
        "me", ["related", "noise"], LearnerSettings(policy=SubcontextPolicy(warmup_rounds=0))
    )
    learner.step(*learner_round(rng, q))  # warm-up 0: noise is out after this round
    twin = copy.deepcopy(learner)
    own, received = learner_round(rng, q)
    louder_noise = dict(received, noise=received["noise"] * 100.0 + 5.0)

    a = learner.step(own, received)
    b = twin.step(own, louder_noise)

    assert a.subcontext == b.subcontext == ["me", "related"]
    np.testing.assert_array_equal(a.target, b.target)


def test_learner_tolerates_missing_neighbour() -> None:
    rng = np.random.default_rng(22)
    q = random_rotation(8, rng)
    learner = OsmoticLearner("me", ["related", "noise", "absent"])
    own, received = learner_round(rng, q)

    out = learner.step(own, received)

    assert "absent" not in out.weights
    assert "absent" not in out.affinity
    assert set(out.weights) == {"me", "related", "noise"}
    assert out.target.shape == own.shape
    # the sub-context lists only neighbours heard from
    assert out.subcontext == ["me", "noise", "related"]


def test_learner_ignores_senders_that_are_not_neighbours() -> None:
    rng = np.random.default_rng(23)
    learner = OsmoticLearner("me", ["a"])
    own = rng.standard_normal((20, 3)).astype(np.float32)

    # A neighbour that agrees closely, but is no affine copy of own (which would be an echo).
    near = (own + 0.3 * np.sin(3 * own)).astype(np.float32)
    out = learner.step(
        own, {"a": near, "stranger": rng.standard_normal((20, 3)).astype(np.float32)}
    )

    assert out.screened == {}
    assert set(out.weights) == {"me", "a"}
    assert out.weights["me"] == pytest.approx(0.5, abs=0.02)


def test_learner_alone_is_pulled_to_itself() -> None:
    own = np.random.default_rng(24).standard_normal((30, 4)).astype(np.float32)
    learner = OsmoticLearner("me", [])

    out = learner.step(own, {})

    assert out.weights == {"me": 1.0}
    np.testing.assert_allclose(out.target, own, rtol=1e-6)
    assert out.subcontext == ["me"]
    assert out.change is None


def test_learner_rejects_wrong_shape_from_neighbour() -> None:
    learner = OsmoticLearner("me", ["a"])

    with pytest.raises(ValueError, match="a sent"):
        learner.step(np.zeros((10, 4)), {"a": np.zeros((10, 5))})


def test_learner_reaches_equilibrium_when_nothing_moves() -> None:
    rng = np.random.default_rng(25)
    own = rng.standard_normal((50, 4)).astype(np.float32)
    settings = LearnerSettings(equilibrium_patience=2)
    learner = OsmoticLearner("me", ["a"], settings)
    # Related but no affine copy of own (a turned copy would be screened as an echo).
    received = {"a": np.tanh(own @ random_rotation(4, rng)).astype(np.float32)}

    flags = [learner.step(own, received) for _ in range(4)]

    assert flags[0].change is None
    assert flags[1].change == pytest.approx(0.0)
    assert [o.equilibrium for o in flags] == [False, False, True, True]


def test_learner_settings_reject_bad_temperature() -> None:
    with pytest.raises(ValueError):
        LearnerSettings(temperature=0.0)


def test_neighbour_first_heard_after_own_warmup_is_judged_at_once() -> None:
    # Prepare: an agent past its warm-up that never heard neighbour "late" (its frames were lost).
    mem = SubcontextMemory(policy=SubcontextPolicy(warmup_rounds=2, enter=0.6, leave=0.45))
    mem.observe({"early": 0.9}, own_round=1)
    mem.observe({"early": 0.9}, own_round=2)
    # Execute: "late" is heard for the first time in round 3 with a low affinity.
    members = mem.observe({"early": 0.9, "late": 0.2}, own_round=3)
    # Assert: no warm-up of its own; excluded at once, the related neighbour stays.
    assert members == {"early": True, "late": False}
    assert mem.subcontext("me") == ["early", "me"]


def test_without_own_round_warmup_counts_observations_per_neighbour() -> None:
    mem = SubcontextMemory(policy=SubcontextPolicy(warmup_rounds=2))
    for _ in range(3):
        mem.observe({"early": 0.9})
    assert mem.observe({"late": 0.2})["late"] is True  # its first observation: still warm-up


def test_an_agent_left_alone_takes_its_best_neighbour_above_enter_alone() -> None:
    policy = SubcontextPolicy(
        memory=1.0, enter=0.6, leave=0.45, warmup_rounds=0, confirm_rounds=1, enter_alone=0.3
    )
    mem = SubcontextMemory(policy=policy)
    assert mem.observe({"a": 0.9, "b": 0.1, "c": 0.35}, own_round=1) == {
        "a": True,
        "b": False,
        "c": False,
    }
    # a drifts away: alone, the agent takes the best of the rest (c at 0.35), not b
    assert mem.observe({"a": 0.05, "b": 0.1, "c": 0.35}, own_round=2) == {
        "a": False,
        "b": False,
        "c": True,
    }
    assert mem.subcontext("me") == ["c", "me"]
    # nobody reaches enter_alone: alone it stays
    assert not any(mem.observe({"a": 0.05, "b": 0.1, "c": 0.2}, own_round=3).values())
    with pytest.raises(ValueError):
        SubcontextPolicy(enter=0.5, enter_alone=0.6)


def test_the_alone_rule_needs_confirm_rounds_at_enter_alone() -> None:
    policy = SubcontextPolicy(
        memory=1.0, enter=0.6, leave=0.45, warmup_rounds=0, confirm_rounds=2, enter_alone=0.3
    )
    mem = SubcontextMemory(policy=policy)
    assert not any(mem.observe({"a": 0.35, "b": 0.1}, own_round=1).values())  # one round: no
    assert mem.observe({"a": 0.35, "b": 0.1}, own_round=2) == {"a": True, "b": False}
    again = SubcontextMemory.from_dict(mem.to_dict(), policy)  # the count survives a restart
    assert again.near == mem.near == {"a": 2, "b": 0}


# --- shared dimensions ----------------------------------------------------------------------


def shared_dims_rounds(
    shared_dims: int, private: str, rounds: int = 4, k: int = 4, d: int = 8
) -> list[Any]:
    """Outcomes of a learner with a related neighbour and a noise neighbour; ``private`` says what
    the related neighbour sends in dimensions k and up: its own related values ("same") or noise
    ("noise"). Every draw is the same for both kinds."""
    rng = np.random.default_rng(30)
    # Block-diagonal, so that the related neighbour's first k dimensions depend on own's first k.
    q = np.zeros((d, d))
    q[:k, :k] = random_rotation(k, rng)
    q[k:, k:] = random_rotation(d - k, rng)
    learner = OsmoticLearner(
        "me",
        ["related", "noise"],
        LearnerSettings(policy=SubcontextPolicy(warmup_rounds=2), shared_dims=shared_dims),
    )
    outcomes = []
    for _ in range(rounds):
        own, received = learner_round(rng, q, d=d)
        scramble = (3.0 * rng.standard_normal((len(own), d - k))).astype(np.float32)
        related = received["related"].copy()
        if private == "noise":
            related[:, k:] = scramble
        outcomes.append(learner.step(own, {**received, "related": related}))
    return outcomes


def test_with_shared_dims_the_private_dims_change_nothing_in_osmosis() -> None:
    same = shared_dims_rounds(4, "same")
    noisy = shared_dims_rounds(4, "noise")

    for a, b in zip(same, noisy, strict=True):
        assert a.weights == b.weights
        assert a.affinity == b.affinity
        assert a.memory == b.memory
        assert a.subcontext == b.subcontext
        np.testing.assert_array_equal(a.target, b.target)
    assert same[-1].subcontext == ["me", "related"]
    assert same[-1].affinity["related"] > 0.9


def test_with_shared_dims_the_target_keeps_the_own_private_dims() -> None:
    rng = np.random.default_rng(31)
    own = rng.standard_normal((40, 6)).astype(np.float32)
    near = (own + 0.3 * np.sin(3 * own)).astype(np.float32)
    learner = OsmoticLearner("me", ["a"], LearnerSettings(shared_dims=2))

    out = learner.step(own, {"a": near})

    assert out.target.shape == own.shape
    np.testing.assert_array_equal(out.target[:, 2:], own[:, 2:])
    assert not np.allclose(out.target[:, :2], own[:, :2])  # the shared part is blended


def test_without_shared_dims_the_private_dims_do_count() -> None:
    # The control for the test above: over all dimensions, a neighbour that sends noise in half
    # of them is a weaker match than one that does not.
    same = shared_dims_rounds(0, "same")
    noisy = shared_dims_rounds(0, "noise")

    assert noisy[-1].affinity["related"] < same[-1].affinity["related"] - 0.1


def test_shared_dims_must_fit_the_embedding() -> None:
    with pytest.raises(ValueError, match="shared_dims"):
        LearnerSettings(shared_dims=-1)
    learner = OsmoticLearner("me", [], LearnerSettings(shared_dims=5))
    with pytest.raises(ValueError, match="shared_dims"):
        learner.step(np.zeros((10, 4), np.float32), {})
