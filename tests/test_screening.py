"""A bad neighbour cannot take over: screening, copy detection, and honest agents learning next to
an adversary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from osml.core.anchor import context_anchor
from osml.core.learner import LearnerSettings, OsmoticLearner
from osml.core.screening import (
    CopyDetector,
    ScreenSettings,
    centred_agreement,
    median_norm,
    relative_spread,
    screen,
)
from osml.core.subcontext import SubcontextMemory
from osml.ops.adversaries import (
    KINDS,
    parse_adversary,
    parse_adversary_option,
    rotation,
    turned_toward,
)

RNG = np.random.default_rng(7)
ANCHOR = context_anchor("sim", 5, 3.8)
Q = rotation(5, 40.0, np.random.default_rng(1))


def honest_pair(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two agents that see the same thing through different encoders: anchor plus a shared
    signal, one linear and one bent (so neither is an affine copy of the other), plus noise."""
    signal = RNG.normal(size=(n, 5))
    a = ANCHOR + signal + 0.05 * RNG.normal(size=(n, 5))
    b = ANCHOR + np.tanh(signal @ Q) + 0.05 * RNG.normal(size=(n, 5))
    return a.astype(np.float32), b.astype(np.float32)


def turned(x: np.ndarray, angle: float, noise: float, seed: int = 0) -> np.ndarray:
    """``x``'s variation turned by ``angle`` degrees about its mean, plus relative noise."""
    rng = np.random.default_rng(seed)
    mu = x.mean(axis=0)
    y = mu + (x - mu) @ rotation(x.shape[1], angle, rng).T
    rms = np.sqrt(np.mean((x - mu) ** 2))
    return (y + noise * rms * rng.normal(size=x.shape)).astype(np.float32)


def test_relative_spread_and_median_norm() -> None:
    a, _ = honest_pair()
    assert relative_spread(np.tile(a[0], (50, 1))) == pytest.approx(0.0, abs=1e-7)
    assert relative_spread(np.zeros((4, 5))) == 0.0
    assert 0.2 < relative_spread(a) < 1.0
    assert median_norm(3 * a) == pytest.approx(3 * median_norm(a), rel=1e-6)


def test_screen_leaves_out_constant_and_scaled_and_rescales_the_rest() -> None:
    a, b = honest_pair()
    kept, out = screen(
        a, {"b": 2 * b, "c": np.tile(ANCHOR, (len(a), 1)), "s": 1e6 * b, "t": 1e-6 * b}
    )
    assert out == {"c": "constant", "s": "scale", "t": "scale"}
    assert median_norm(kept["b"]) == pytest.approx(median_norm(a), rel=1e-5)  # 2x brought back


def test_rotation_turns_every_plane_by_the_angle() -> None:
    r = rotation(5, 30.0, np.random.default_rng(3))
    np.testing.assert_allclose(r @ r.T, np.eye(5), atol=1e-12)
    eig = np.linalg.eigvals(r)
    angles = sorted(np.degrees(np.abs(np.angle(eig))))
    np.testing.assert_allclose(angles, [0, 30, 30, 30, 30], atol=1e-9)
    np.testing.assert_allclose(rotation(1, 90.0, np.random.default_rng(0)), [[1.0]])


# -- copy detection ---------------------------------------------------------------------------


def test_copy_detector_names_turned_noisy_echoes_and_replays() -> None:
    a, b = honest_pair()
    det = CopyDetector(memory=4)
    assert det.copies({"b": b}, "a", a).found == {}
    a2, b2 = a + 0.01, b + 0.01  # next round: both honest agents moved a little
    found = det.copies(
        {"b": b2, "x": turned(b, 90, 1e-2), "e": turned(a2, 60, 1e-2)}, "a", a2
    ).found
    assert found == {"x": "b", "e": "a"}  # x: b's last round, turned; e: our own, turned


def test_a_noisy_echo_seen_in_the_first_round_is_screened_once_the_agent_moves() -> None:
    a, b = honest_pair()
    det = CopyDetector(memory=4)
    first = det.copies({"b": b, "x": turned(a, 0, 0.1, 1)}, "a", a)
    assert first.found == {} and det.suspects == {"x"}  # a suspect: not screened yet,
    assert first.outvoted == {"x": "a"}  # but no vote in the first round
    a2, b2 = honest_pair()
    # An agent that only infers does not move: devices sharing a shipped model start close.
    still = det.copies({"b": b, "x": turned(a, 0, 0.1, 2)}, "a", a, moved=False)
    assert still.found == {} and still.outvoted == {}
    got = det.copies({"b": b2, "x": turned(a2, 0, 0.1, 3)}, "a", a2, moved=True)
    assert got.found == {"x": "a"}
    # Honest encoders are never that close in the first round; a noisy echo that starts later is
    # not recognised (its residual, 0.1, is that of a well aligned honest neighbour).
    late = CopyDetector(memory=4)
    late.copies({"b": b}, "a", a)
    assert late.copies({"b": b2, "x": turned(a2, 0, 0.1, 4)}, "a", a2).found == {}
    assert late.suspects == set()


def test_an_honest_agent_continuing_its_own_embeddings_is_no_copy() -> None:
    """x sent a turned copy of b's embeddings; b's next ones are close to an affine map of what
    x sent, but closer still to b's own: b is no replay of x."""
    a, b = honest_pair()
    det = CopyDetector(memory=4)
    det.copies({"b": b, "x": turned(b, 90, 0.5)}, "a", a)  # too noisy to be a copy
    b_next = b + 0.005 * RNG.normal(size=b.shape).astype(np.float32)
    assert "b" not in det.copies({"b": b_next}, "a", a).found
    assert det.copies({"b": b_next}, "a", a).found == {}  # repeating itself (no new model)
    assert CopyDetector(memory=0).copies({"x": a}, "a", a).found == {}


def test_same_round_twins_share_a_vote_whichever_agrees_better_with_own() -> None:
    """Neither twin can be told from the other by its coordinates: they share one vote in the
    warm-up whatever they agree, and afterwards while the one that agrees less keeps gaining
    on the agent (an original the shared vote pulls the agent toward, next to a copy turned
    toward the agent's own embeddings). A twin that agrees less and has stopped gaining (a
    turned copy of an aligned original) is outvoted, and stays so while it is behind."""
    a, _ = honest_pair()
    b = honest_pair()[1]  # b's encoder not yet aligned with a's: it agrees with a about 0
    x = turned(b, 90, 1e-3, seed=6)
    assert max(centred_agreement(a, m) for m in (b, x)) < 0.3
    det = CopyDetector(memory=4)
    got = det.copies({"b": b, "x": x}, "a", a)
    assert got.found == {} and got.twins == [("b", "x")] and got.outvoted == {}
    own = a + 0.5 * np.tanh(a)
    aligned = (a + 0.1 * RNG.normal(size=a.shape)).astype(np.float32)
    y = turned(aligned, 45, 1e-3, seed=45)
    assert centred_agreement(own, aligned) > centred_agreement(own, y) + 0.1
    got = det.copies({"b": aligned, "x": y}, "a", own)  # the warm-up's second round
    assert got.found == {} and got.twins == [("b", "x")] and got.outvoted == {}
    got = det.copies({"b": aligned, "x": turned(aligned, 45, 1e-3, seed=45)}, "a", own)
    assert got.found == {} and got.twins == [] and got.outvoted == {"x": "b"}
    # Once stalled, a twin stays outvoted while it is behind by the margin, even as it gains.
    closer = turned(aligned, 30, 1e-3, seed=45)
    assert centred_agreement(own, closer) > centred_agreement(own, y) + 0.02
    assert centred_agreement(own, aligned) > centred_agreement(own, closer) + 0.03
    got = det.copies({"b": aligned, "x": closer}, "a", own)
    assert got.twins == [] and got.outvoted == {"x": "b"}
    fresh = CopyDetector(memory=4)
    for angle in (45, 40, 35):  # without that history, a twin that gains shares the vote
        x = turned(aligned, angle, 1e-3, seed=45)
        got = fresh.copies({"b": aligned, "x": x}, "a", own, first_round=False)
    assert got.twins == [("b", "x")] and got.outvoted == {}
    # The copy agrees better: b's embeddings turned toward a's own (what a copier who sees
    # everything sends). b, pulled toward a by the shared vote, gains every round: no verdict.
    det = CopyDetector(memory=4)
    for rnd, pull in enumerate((0.0, 0.2, 0.4, 0.55)):
        partly = turned(a + (1.0 - pull) * RNG.normal(size=a.shape), 60 * (1 - pull), 0.0, 11)
        z = (turned_toward(partly, a) + 1e-3 * RNG.normal(size=a.shape)).astype(np.float32)
        assert centred_agreement(a, z) > centred_agreement(a, partly) + 0.03
        got = det.copies({"b": partly, "z": z}, "a", a)
        assert got.found == {} and got.twins == [("b", "z")] and got.outvoted == {}, rnd
    # Had b stopped gaining, it would be outvoted: the warm-up and the rise are what keep a
    # crafted twin from taking an honest neighbour's vote while the two come into line.
    got = det.copies({"b": partly, "z": z}, "a", a)
    assert got.outvoted == {"b": "z"}


def test_twins_that_vary_against_each_other_are_told_apart_by_the_order_they_came_in() -> None:
    """A reflected copy of b: the pair's mean has next to none of b's variation, and neither
    twin agrees well enough with the agent for any verdict. The one that came in later is
    outvoted, in the warm-up too, whichever it is; without an order, or with twins that vary
    alike (a turn by 60 degrees, whose mean keeps most of b's variation), they share a vote."""
    a, _ = honest_pair()
    b = honest_pair()[1].astype(np.float32)  # not yet in line with a
    mu = b.mean(axis=0)
    x = (2 * mu - b + 1e-3 * RNG.normal(size=b.shape)).astype(np.float32)
    assert centred_agreement(b, x) < -0.9
    assert max(abs(centred_agreement(a, m)) for m in (b, x)) < 0.5
    got = CopyDetector(memory=4).copies({"b": b, "x": x}, "a", a, arrived=["b", "x"])
    assert got.found == {} and got.twins == [] and got.outvoted == {"x": "b"}
    got = CopyDetector(memory=4).copies({"b": b, "x": x}, "a", a, arrived=["x", "b"])
    assert got.twins == [] and got.outvoted == {"b": "x"}
    got = CopyDetector(memory=4).copies({"b": b, "x": x}, "a", a)
    assert got.twins == [("b", "x")] and got.outvoted == {}
    off = CopyDetector(memory=4, order_below=-1.0)
    got = off.copies({"b": b, "x": x}, "a", a, arrived=["b", "x"])
    assert got.twins == [("b", "x")] and got.outvoted == {}
    y = turned(b, 60, 1e-3, seed=3)
    assert centred_agreement(b, y) > 0.3
    got = CopyDetector(memory=4).copies({"b": b, "y": y}, "a", a, arrived=["b", "y"])
    assert got.twins == [("b", "y")] and got.outvoted == {}
    with pytest.raises(ValueError, match="twin_order_below"):
        ScreenSettings(twin_order_below=float("nan"))


def test_a_twin_the_agent_keeps_chasing_is_outvoted_though_it_gains() -> None:
    """b is in line with the agent; x is b turned by a fixed angle less 5 degrees a round, so it
    gains on the agent every round (no stall). Where the agent stays put, x closes in, and the
    pair shares its vote. Where the agent turns 10 degrees a round toward x (the shared vote
    pulling it, with b turning along as an aligned partner does) while x keeps its distance
    ahead, x moves away from where the agent was as the agent moves toward where x was: after
    two such rounds it is outvoted by b, in the first round after the warm-up."""

    def run(turn_per_round: float) -> list[tuple[list[tuple[str, str]], dict[str, str]]]:
        rng = np.random.default_rng(0)
        sig = rng.normal(size=(200, 6))
        det = CopyDetector(memory=4)
        seen = []
        last = -1.0
        for rnd in range(5):
            turn = rotation(6, turn_per_round * rnd, np.random.default_rng(99))
            own = sig @ turn.T
            b = np.tanh(sig) @ turn.T + 0.05 * rng.normal(size=sig.shape)
            ahead = rotation(6, 60.0 - 5.0 * rnd, np.random.default_rng(99))  # same planes
            x = b @ ahead.T + 1e-3 * rng.normal(size=sig.shape)
            gain, last = centred_agreement(own, x) - last, centred_agreement(own, x)
            assert rnd == 0 or gain > 0.02  # x gains every round
            got = det.copies(
                {"b": b.astype(np.float32), "x": x.astype(np.float32)}, "a", own.astype(np.float32)
            )
            assert centred_agreement(own, b) > 0.9 and got.found == {}
            seen.append((got.twins, got.outvoted))
            sig = sig + 0.6 * np.tanh(sig @ rng.normal(size=(6, 6)) / 2)  # each model moves on
        return seen

    assert run(0.0) == [([("b", "x")], {})] * 5
    assert run(10.0) == [([("b", "x")], {})] * 2 + [([], {"x": "b"})] * 3


def test_a_stale_same_round_copy_is_outvoted_once_its_original_moves_on() -> None:
    """x sends a same-round copy of b in the agent's first round, then keeps resending it (as a
    device that only infers would repeat itself). b trains and moves on: x is stale and gets no
    vote (its affinity stands). A copy with fresh noise next to a converged original, which
    moves by less than the twin bar, makes neither stale."""
    a, b = honest_pair()
    rng = np.random.default_rng(3)
    bs = [b]
    for _ in range(3):  # early training: each round 0.13-0.19 of residual from the last
        prev = bs[-1]
        bend = 0.6 * np.tanh(prev @ rng.normal(size=(5, 5)))
        bs.append((prev + bend + 0.02 * rng.normal(size=prev.shape)).astype(np.float32))
    det = CopyDetector(memory=8)
    det.copies({"b": bs[0], "x": bs[0].copy()}, "a", a)
    for b_now in bs[1:]:
        got = det.copies({"b": b_now, "x": bs[0].copy()}, "a", a)
        assert got.outvoted == {"x": "b"} and got.found == {}
    # A converged original and a noisy turned copy of it, fresh noise each round.
    det = CopyDetector(memory=8)
    own = a + 0.5 * np.tanh(a)
    for rnd in range(4):
        got = det.copies({"b": b, "x": turned(b, 45, 1e-2, seed=20 + rnd)}, "a", own)
        assert "b" not in got.outvoted and "b" not in got.found


@pytest.mark.parametrize("angle", [90.0, 180.0])
def test_after_the_warm_up_a_member_that_varies_against_the_agent_gets_no_vote(
    angle: float,
) -> None:
    """x sends a's own embeddings turned (or reflected), with noise 0.3: too noisy for an echo
    or a twin, and linear CKA cannot see the turn, so x is a member. Pulling toward it would
    pull a toward a turned version of itself; after the warm-up it gets no vote (but keeps its
    affinity), and without the rule it holds about a third of the blend."""
    with_rule = OsmoticLearner("a", ["b", "x"])
    without = OsmoticLearner("a", ["b", "x"], LearnerSettings(min_agreement=-1.0))
    for rnd in range(4):
        a, b = honest_pair()
        x = turned(a, angle, 0.3, seed=rnd)
        got = with_rule.step(a, {"b": b, "x": x})
        off = without.step(a, {"b": b, "x": x})
        assert got.affinity["x"] > 0.6  # a member by affinity all along
        if rnd < 2:  # the warm-up: every neighbour votes
            assert "x" not in got.screened and got.weights["x"] > 0.2
        else:
            assert got.screened == {"x": "opposed"} and got.weights["x"] == 0.0
            assert got.weights["b"] > 0.4 and "x" in got.subcontext
            assert off.weights["x"] > 0.2 and off.screened == {}


def test_with_no_member_in_line_only_members_that_vary_against_the_agent_lose_their_vote() -> None:
    """b sends a's embeddings turned by 90 degrees, c by 180 (noise 0.3): members whose spaces
    are not in line with a's. With no member in line with it, leaving out every member under
    the bar would leave a to train alone, never to come into line with anyone (honest partners
    on sparse links can still be across each other after the warm-up): b, across a, votes;
    c, against it, does not. Once c agrees (an honest encoder of the same signal), b gets no
    vote either."""
    learner = OsmoticLearner("a", ["b", "c"])
    for rnd in range(7):
        a, h = honest_pair()
        b = turned(a, 90, 0.3, seed=rnd)
        c = turned(a, 180, 0.3, seed=100 + rnd) if rnd < 4 else h
        assert 0.0 < centred_agreement(a, b) < 0.5
        got = learner.step(a, {"b": b, "c": c})
        assert {"b", "c"} <= set(got.subcontext)
        if rnd < 2:  # the warm-up: every member votes
            assert got.screened == {} and min(got.weights["b"], got.weights["c"]) > 0.2
        elif rnd < 4:  # no member in line with a: the one across it votes
            assert got.screened == {"c": "opposed"} and got.weights["b"] > 0.3
        else:
            assert got.screened == {"b": "opposed"} and got.weights["b"] == 0.0
            assert got.weights["c"] > 0.4


def restarted(learner: OsmoticLearner, screening: bool = True) -> OsmoticLearner:
    """A new learner from what an agent saves in state.json (through JSON, as on disk)."""
    again = OsmoticLearner(learner.agent_id, learner.neighbours, learner.settings)
    again.memory = SubcontextMemory.from_dict(
        json.loads(json.dumps(learner.memory.to_dict())), learner.settings.policy
    )
    again.rounds = learner.rounds
    if screening:
        again.restore_screening(json.loads(json.dumps(learner.screening_state())))
    return again


def test_a_restarted_agent_keeps_its_verdicts_on_members_and_twins() -> None:
    """What screening has learnt survives a restart. A member that varies against the agent
    stays without a vote (a restart without the saved members' rounds gives every member the
    grace of a new one: it votes again), and a stalled twin stays outvoted (without the saved
    agreements no twin is judged in the first round after it)."""
    learner = OsmoticLearner("a", ["b", "x"])
    frames = []
    for rnd in range(4):
        a, b = honest_pair()
        frames.append((a, {"b": b, "x": turned(a, 180, 0.3, seed=rnd)}))
    for a, got in frames[:3]:
        learner.step(a, got)
    kept, forgot = restarted(learner), restarted(learner, screening=False)
    a, got = frames[3]
    want = learner.step(a, got)
    assert want.screened == {"x": "opposed"} and want.weights["x"] == 0.0
    assert kept.step(a, got).screened == want.screened
    assert "x" not in forgot.step(a, got).screened  # the grace again: x votes
    # A twin outvoted once it stalled, before and after a restart of the detector.
    base = honest_pair()[0]
    own = base + 0.5 * np.tanh(base)
    aligned = (base + 0.1 * RNG.normal(size=base.shape)).astype(np.float32)
    det = CopyDetector(memory=4)
    for _ in range(4):
        x = turned(aligned, 45, 1e-3, seed=45)
        out = det.copies({"b": aligned, "x": x}, "a", own, first_round=False)
    assert out.outvoted == {"x": "b"}
    closer = turned(aligned, 30, 1e-3, seed=45)  # gains, but behind by the margin
    again = CopyDetector(memory=4)
    again.restore(json.loads(json.dumps(det.to_dict())))
    fresh = CopyDetector(memory=4)
    fresh.restore({"calls": det.calls})  # past the warm-up, but nothing else
    assert again.copies({"b": aligned, "x": closer}, "a", own).outvoted == {"x": "b"}
    assert fresh.copies({"b": aligned, "x": closer}, "a", own).outvoted == {}


def test_an_echo_from_a_member_that_earned_its_place_gets_no_vote_but_stays() -> None:
    """Honest agents pulled together for many rounds can come within the echo bar of each other.
    A member for longer than the warm-up that sends (close to) the agent's own embeddings is
    left out of the blend, not screened: its affinity stands and it stays in the sub-context.
    An echo from the first round on is screened as before and never becomes a member."""
    learner = OsmoticLearner("a", ["b", "e"])
    for rnd in range(6):
        a, b = honest_pair()
        echo = (a + 1e-3 * RNG.normal(size=a.shape)).astype(np.float32)
        got = learner.step(a, {"b": b if rnd < 4 else echo, "e": echo})
        if rnd >= 1:
            assert got.screened.get("e") == "copy" and got.affinity["e"] == 0.0
        if rnd >= 4:  # b, a member since round 0, now sends a's own embeddings
            assert got.screened["b"] == "outvoted" and got.weights["b"] == 0.0
            assert got.affinity["b"] > 0.9 and "b" in got.subcontext
    assert "e" not in learner.subcontext()


def test_a_member_that_joins_late_votes_in_its_first_rounds_whatever_it_agrees() -> None:
    """c is unrelated at first (not a member), then sends something a shares (turned: a latent
    space that does not agree with a's yet, as after a drift). Once a member it votes for as many
    rounds as the warm-up has, so that the two spaces can come to agree; then, still turned, it
    gets no vote."""
    learner = OsmoticLearner("a", ["b", "c"])
    votes: list[bool] = []
    for rnd in range(12):
        a, b = honest_pair()
        c = RNG.normal(size=a.shape) if rnd < 4 else turned(a, 180, 0.3, seed=rnd)
        out = learner.step(a, {"b": b, "c": c.astype(np.float32)})
        if rnd >= 4 and "c" in out.subcontext:
            votes.append(out.weights["c"] > 0.0)
            assert out.screened.get("c", "opposed") == "opposed"
    assert votes[:2] == [True, True] and votes[2:] and not any(votes[2:])


def test_a_twin_cannot_make_the_neighbour_it_copied_a_replay() -> None:
    """x sends b's embeddings extrapolated one round ahead; next round b's real ones are within
    the copy bar of what x sent. b is not screened: x's matrix was a twin's."""
    a, b = honest_pair()
    det = CopyDetector(memory=4)
    step = (0.02 * RNG.normal(size=b.shape)).astype(np.float32)
    det.copies({"b": b - step}, "a", a)
    det.copies({"b": b, "x": b + step + 1e-4 * RNG.normal(size=b.shape)}, "a", a)
    got = det.copies({"b": b + step}, "a", a)
    assert got.found == {}


def _moving(b: np.ndarray, rounds: int, seed: int = 11) -> list[np.ndarray]:
    """``b`` as an honest agent that trains sends it over ``rounds`` rounds: each round a new,
    partly non-linear change (no affine map takes one round's matrix to the next exactly)."""
    rng = np.random.default_rng(seed)
    out = [b]
    for _ in range(rounds - 1):
        prev = out[-1]
        bend = 0.15 * np.tanh(prev @ rng.normal(size=(prev.shape[1],) * 2))
        out.append((prev + bend + 0.02 * rng.normal(size=prev.shape)).astype(np.float32))
    return out


@pytest.mark.parametrize("noise", [1e-3, 5e-2])
def test_a_noisy_replay_that_lags_its_original_is_left_out_of_the_blend(noise: float) -> None:
    """x sends b's matrix of three rounds back (its first one until there is one), turned and
    noised: from the second round on closer to where b was than to where b is. It is outvoted by
    b (no pull; its affinity stands), not b's twin, although the matrix it replays was one of a
    pair of near-duplicates (x sent a same-round copy of it) and so cannot make x a copy."""
    a, b = honest_pair()
    bs = _moving(b, 6)
    det = CopyDetector(memory=8)
    for rnd, b_now in enumerate(bs):
        x = turned(bs[max(rnd - 3, 0)], 90, noise, seed=rnd)
        got = det.copies({"b": b_now, "x": x}, "a", a)
        assert "b" not in got.found and "b" not in got.outvoted
        if rnd == 0:  # a same-round copy: b's twin, or outvoted by b (b agrees with a)
            assert got.twins == [("b", "x")] or got.outvoted == {"x": "b"}
        else:
            assert got.outvoted == {"x": "b"} and got.twins == []


def test_a_copier_cannot_make_an_honest_neighbour_look_like_it_lags() -> None:
    """x sends a turned copy of b's matrix (a little ahead of it: 5 % of the way to b's next),
    then switches to copying c. b's next matrix is slightly closer to what x sent than to b's
    own last one, but not clearly (x's was a copy of that): b is no replay of x and keeps its
    vote."""
    a, b = honest_pair()
    bs = _moving(b, 3)
    c = honest_pair()[1]  # an unrelated neighbour
    det = CopyDetector(memory=8)
    det.copies({"b": bs[0], "c": c}, "a", a)
    ahead = bs[1] + 0.05 * (bs[2] - bs[1])
    det.copies({"b": bs[1], "c": c + 0.01, "x": turned(ahead, 90, 0.0, seed=2)}, "a", a)
    got = det.copies({"b": bs[2], "c": c + 0.02, "x": turned(c + 0.02, 90, 1e-3)}, "a", a)
    assert "b" not in got.found and "b" not in got.outvoted


def test_two_honest_agents_pulled_toward_each_other_are_not_replays() -> None:
    """b and c each move most of the way to the other's last matrix (osmosis with a strong pull):
    each is closer to the other's earlier matrix than to its own or the other's current one, and
    neither is left out for it."""
    a, b = honest_pair()
    c = (b + 0.05 * np.tanh(b @ Q)).astype(np.float32)
    det = CopyDetector(memory=8)
    det.copies({"b": b, "c": c}, "a", a)
    for _ in range(3):
        b, c = (0.2 * b + 0.8 * c + 0.01 * np.tanh(c)), (0.2 * c + 0.8 * b + 0.01 * np.tanh(b))
        b, c = b.astype(np.float32), c.astype(np.float32)
        got = det.copies({"b": b, "c": c}, "a", a)
        assert got.found == {} and got.outvoted == {}


# -- the learner ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "constant",
        "scaled:b:1e6",
        "replay:b:2",
        "rotate-copy:angle=90:noise=1e-3",
        "echo:angle=45:noise=1e-1",
        "copy",
        "in-band-scale",
    ],
)
def test_learner_bounds_an_adversary(spec: str) -> None:
    """Pure numpy: honest a and b, adversary x. x's mean weight stays at most a third, and after
    the warm-up (whose targets get a's own spread back, see restore_spread) the target lies
    between a's own value and b's at every step and coordinate; with x a twin of b (a copy
    that passed screening), between the smallest and largest of a's, b's and x's."""
    learner = OsmoticLearner("a", ["b", "x"])
    behave = parse_adversary(spec, ANCHOR, ["a", "b"])
    history: list[dict[str, np.ndarray]] = []
    for rnd in range(6):
        a, b = honest_pair()
        honest = {"a": a, "b": b}
        x = behave(rnd, "a", honest, history)
        history.append(honest)
        out = learner.step(a, {"b": b, "x": x})
        assert median_norm(out.target) <= 1.1 * median_norm(a)  # never inflated
        # Inside [min(a, b), max(a, b)] (b as the learner saw it: rescaled to a's median norm).
        b_seen = b * (median_norm(a) / median_norm(b))
        lo, hi = np.minimum(a, b_seen), np.maximum(a, b_seen)
        if out.screened.get("x") == "twin":  # one vote, the mean of b's and x's
            x_seen = x * (median_norm(a) / median_norm(x))
            lo, hi = np.minimum(lo, x_seen), np.maximum(hi, x_seen)
        if rnd >= 2:
            assert np.all(out.target >= lo - 1e-4) and np.all(out.target <= hi + 1e-4)
        assert out.weights.get("x", 0.0) <= 1 / 3 + 1e-9
    assert out.subcontext in (["a", "b"], ["a", "b", "x"])


def test_parse_adversary_errors_name_the_forms() -> None:
    assert callable(parse_adversary("replay:0:2", ANCHOR, ["0", "1"]))
    assert callable(parse_adversary("rotate-copy:45:1e-2:src=1:to=all", ANCHOR, ["0", "1"]))
    for bad in (
        "nonsense",
        "scaled:9",
        "replay:0:zero",
        "constant:1",
        "rotate-copy:angle=x",
        "rotate-copy:to=some",
        "echo:to=all",
        "no_such_module_here:fn",
    ):
        with pytest.raises(ValueError, match="adversary"):
            parse_adversary(bad, ANCHOR, ["0", "1"])
    with pytest.raises(ValueError, match="honest agent"):
        parse_adversary_option("0=copy", ANCHOR, ["0", "1"])
    assert parse_adversary_option("x=copy", ANCHOR, ["0", "1"])[0] == "x"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_sends_a_finite_matrix_of_the_right_shape(kind: str) -> None:
    a, b = honest_pair(30)
    honest = {"a": a, "b": b}
    behave = parse_adversary(kind, ANCHOR, ["a", "b"])
    for rnd in range(3):
        for dst in ("a", "b"):
            x = behave(rnd, dst, honest, [honest] * rnd)
            assert x.shape == a.shape and x.dtype == np.float32 and np.isfinite(x).all()


def test_per_victim_and_alike() -> None:
    a, b = honest_pair(40)
    c = (a + np.sin(a)).astype(np.float32)
    honest = {"a": a, "b": b, "c": c}
    each = parse_adversary("rotate-copy:angle=0:noise=0", ANCHOR, list(honest))
    alike = parse_adversary("rotate-copy:angle=60:to=all", ANCHOR, list(honest))
    np.testing.assert_array_equal(each(0, "b", honest, []), a)  # b's closest peer: a (or c)
    assert not np.array_equal(each(0, "a", honest, []), a)  # never the victim's own
    np.testing.assert_array_equal(alike(0, "a", honest, []), alike(0, "c", honest, []))


def test_reflect_mirrors_every_coordinate_about_the_copys_mean() -> None:
    a, b = honest_pair(40)
    behave = parse_adversary("reflect:noise=0:src=b", ANCHOR, ["a", "b"])
    x = behave(0, "a", {"a": a, "b": b}, [])
    np.testing.assert_allclose(x, 2 * b.mean(axis=0) - b, rtol=1e-5, atol=1e-5)
    assert centred_agreement(b, x) == pytest.approx(-1.0, abs=1e-5)


def test_an_attack_from_elsewhere_is_imported_by_name() -> None:
    behave = parse_adversary("test_screening:mirror", ANCHOR, ["a", "b"])
    a, b = honest_pair(20)
    np.testing.assert_array_equal(behave(0, "a", {"a": a, "b": b}, []), -b)


def mirror(rnd: int, dst: str, honest: dict, history: list) -> np.ndarray:
    """An attack written elsewhere: the other agent's embeddings, negated."""
    return -next(v for k, v in honest.items() if k != dst)


# -- with the real trainer ------------------------------------------------------------------------


def _drill_run(attack: str | None, first: bool = False):  # -> RunResult (torch stays inside)
    from osml.agent.data import load_dataset
    from osml.ops.simulate import SimulationSettings, simulate
    from osml.trainer.settings import TrainerSettings

    ds = load_dataset("generated:simple", seed=3)
    settings = SimulationSettings(
        rounds=6, seed=3, trainer=TrainerSettings(steps_per_round=80), adversary_first=first
    )
    ids = ["0", "1", "M0"]
    advs = {"x": parse_adversary(attack, ANCHOR, ids)} if attack else {}
    return simulate(ds, settings, ids, adversaries=advs)


@pytest.fixture(scope="module")
def no_attack(needs_torch: None):  # -> RunResult
    return _drill_run(None)


@pytest.mark.parametrize(
    ("attack", "aligned", "most"),
    [
        ("constant", True, 0.4),
        ("scaled:0:1e6", True, 0.4),
        ("replay:0:3", True, 0.4),
        ("copy", True, 0.4),
        ("rotate-copy:angle=90:noise=1e-3", True, 0.4),
        ("rotate-copy:angle=90:noise=1e-1", True, 0.4),
        ("echo:noise=1e-1", True, 0.4),
        ("noisy-replay:noise=1e-1", True, 0.4),
        # A copy turned toward each victim's own embeddings agrees better than its original:
        # only a vote shared whichever agrees better keeps the original's pull.
        ("aligned-copy:noise=1e-3", True, 0.4),
        ("aligned-copy:against=1:noise=1e-2", True, 0.4),
        # Too noisy for an echo or a twin, and turned by 180 degrees: opposed once the warm-up
        # is over at the pair's agents. M0 has no other member; in 5 dimensions the turn keeps
        # one axis, and pulled toward x in the warm-up M0 comes to vary mostly along it, so
        # that x is across M0 rather than against it (0.07 in round 2): one vote of two there.
        ("echo:angle=180:noise=0.3", True, 0.5),
        # A reflected copy of the pair's other member, beyond the twin bar: the pair starts
        # against each other (-0.26), so the copy agrees better with each victim than its
        # partner does, and comes into line first (0.51 at agent 1 in round 4, the partner at
        # 0.37): the partner is then opposed there and x has one vote of two. The pair ends at
        # 0.22 (0.99 without x): bounded, not aligned (docs/security.md).
        ("rotate-copy:angle=180:noise=0.3", False, 0.5),
        # A reflected copy of a pair's only other member: nothing in the content tells the
        # original from the copy (each is an affine map of the other), and their shared vote
        # would stall the pair; the copy comes in after its original and is outvoted.
        ("rotate-copy:angle=180:noise=1e-3", True, 0.4),
        ("reflect:noise=1e-3", True, 0.4),  # every direction reflected, not all but one
    ],
)
def test_honest_agents_keep_their_subcontext_next_to_an_adversary(
    attack: str, aligned: bool, most: float, no_attack
) -> None:
    """Generated simple context, agents 0 and 1 (correlated) and M0 (not), adversary x linked to
    all: the honest sub-contexts are those of the run without x, x never holds much more than a
    third of an agent's blend (half, where it is the only member in line with the agent), and
    the pair's centred alignment is within 0.01 of the run without x (where the copy can be told
    from the original)."""
    rep = _drill_run(attack)

    final = rep.final
    honest_subs = {a: [m for m in s if m != "x"] for a, s in final.subcontexts.items()}
    assert (
        honest_subs
        == no_attack.final.subcontexts
        == {"0": ["0", "1"], "1": ["0", "1"], "M0": ["M0"]}
    )
    assert rep.adversaries == {"x": attack}
    for row in rep.rounds[:-1]:
        assert row.osmosis_weights is not None
        for w in row.osmosis_weights.values():  # one vote of three (or a shared one), or two
            assert w.get("x", 0.0) <= most
    base = no_attack.final.centered_alignment["0"]["1"]
    if aligned:
        assert final.centered_alignment["0"]["1"] >= base - 0.01
    norms = [median_norm(e) for e in rep.embeddings.values()]
    assert max(norms) < 3 * np.linalg.norm(ANCHOR)  # no inflation through the blend


@pytest.mark.parametrize("attack", ["rotate-copy:angle=180:noise=1e-3", "aligned-copy"])
def test_a_copy_that_comes_before_its_original_takes_at_most_its_vote(attack: str) -> None:
    """The order rule's worst case: x's frames come first though they are made from the
    honest ones (a copier on a faster path). The reflected copy then gets the vote its original
    would have had, and the pair is pulled apart (docs/security.md); but x still holds no more
    than one vote of a blend, and the honest sub-contexts stand."""
    rep = _drill_run(attack, first=True)

    assert rep.adversaries == {"x": f"{attack}, delivered first"}
    honest_subs = {a: [m for m in s if m != "x"] for a, s in rep.final.subcontexts.items()}
    assert honest_subs == {"0": ["0", "1"], "1": ["0", "1"], "M0": ["M0"]}
    for row in rep.rounds[:-1]:
        assert row.osmosis_weights is not None
        for w in row.osmosis_weights.values():
            assert w.get("x", 0.0) <= 0.55


def test_screen_settings_check_the_copy_threshold() -> None:
    with pytest.raises(ValueError, match="copy_threshold"):
        ScreenSettings(copy_threshold=1.5)
    for bad in (float("nan"), -0.1, 3.0):
        with pytest.raises(ValueError, match="twin_threshold"):
            ScreenSettings(twin_threshold=bad)
        with pytest.raises(ValueError, match="twin_margin"):
            ScreenSettings(twin_margin=bad)
        with pytest.raises(ValueError, match="twin_rise"):
            ScreenSettings(twin_rise=bad)


@pytest.mark.parametrize("bad", [float("nan"), -1.5, 1.0])
def test_learner_settings_check_the_agreement_bars(bad: float) -> None:
    with pytest.raises(ValueError, match="min_agreement must"):
        LearnerSettings(min_agreement=bad)
    with pytest.raises(ValueError, match="min_agreement_alone must"):
        LearnerSettings(min_agreement_alone=bad)
