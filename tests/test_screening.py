"""A bad neighbour cannot take over: screening, and honest agents learning next to an adversary."""

from __future__ import annotations

import numpy as np
import pytest

from osml.core.anchor import context_anchor
from osml.core.learner import OsmoticLearner
from osml.core.screening import CopyDetector, median_norm, relative_spread, screen
from osml.ops.adversaries import KINDS, parse_adversary, parse_adversary_option, rotation

RNG = np.random.default_rng(7)
ANCHOR = context_anchor("sim", 5, 3.8)


def test_rotation_turns_every_plane_by_the_angle() -> None:
    r = rotation(5, 30.0, np.random.default_rng(3))
    np.testing.assert_allclose(r @ r.T, np.eye(5), atol=1e-12)
    eig = np.linalg.eigvals(r)
    angles = sorted(np.degrees(np.abs(np.angle(eig))))
    np.testing.assert_allclose(angles, [0, 30, 30, 30, 30], atol=1e-9)
    np.testing.assert_allclose(rotation(1, 90.0, np.random.default_rng(0)), [[1.0]])


def honest_pair(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two agents that see the same thing: anchor plus a shared signal plus a little noise."""
    signal = RNG.normal(size=(n, 5))
    a = ANCHOR + signal + 0.1 * RNG.normal(size=(n, 5))
    b = ANCHOR + signal + 0.1 * RNG.normal(size=(n, 5))
    return a.astype(np.float32), b.astype(np.float32)


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


def test_copy_detector_names_replays_and_echoes_but_not_repeats() -> None:
    a, b = honest_pair()
    det = CopyDetector(memory=4)
    assert det.copies({"b": b}, "a", a) == {}
    assert det.copies({"b": b, "x": b}, "a", a) == {"x": "b"}  # b's matrix of an earlier round
    assert det.copies({"b": b}, "a", a) == {}  # a neighbour repeating itself (no new model) is fine
    assert det.copies({"x": a}, "a", a) == {"x": "a"}  # an echo of our own embeddings
    assert CopyDetector(memory=0).copies({"x": a}, "a", a) == {}


@pytest.mark.parametrize("attack", ["constant", "scaled", "replay"])
def test_learner_gives_an_adversary_no_weight(attack: str) -> None:
    """Pure numpy: honest a and b, adversary x; x never pulls on a, a's target stays a's size."""
    learner = OsmoticLearner("a", ["b", "x"])
    spec = {"constant": "constant", "scaled": "scaled:b:1e6", "replay": "replay:b:2"}[attack]
    behave = parse_adversary(spec, ANCHOR, ["a", "b"])
    history: list[dict[str, np.ndarray]] = []
    for _ in range(8):
        a, b = honest_pair()
        honest = {"a": a, "b": b}
        x = behave(len(history), "a", honest, history)
        history.append(honest)
        out = learner.step(a, {"b": b, "x": x})
        assert median_norm(out.target) <= 1.05 * median_norm(a)  # never inflated
    assert out.subcontext == ["a", "b"]
    assert out.weights.get("x", 0.0) == 0.0
    assert "x" in out.screened or out.memory["x"] < 0.45


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


def test_an_attack_from_elsewhere_is_imported_by_name() -> None:
    behave = parse_adversary("test_screening:mirror", ANCHOR, ["a", "b"])
    a, b = honest_pair(20)
    np.testing.assert_array_equal(behave(0, "a", {"a": a, "b": b}, []), -b)


def mirror(rnd: int, dst: str, honest: dict, history: list) -> np.ndarray:
    """An attack written elsewhere: the other agent's embeddings, negated."""
    return -next(v for k, v in honest.items() if k != dst)


# -- with the real trainer ------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["constant", "scaled:0:1e6", "replay:0:3"])
@pytest.mark.usefixtures("needs_torch")
def test_honest_agents_keep_their_subcontext_next_to_an_adversary(attack: str) -> None:
    """Generated simple context, agents 0 and 1 (correlated), adversary x linked to both."""
    from osml.agent.data import load_dataset
    from osml.ops.simulate import SimulationSettings, simulate
    from osml.trainer.settings import TrainerSettings

    ds = load_dataset("generated:simple", seed=3)
    settings = SimulationSettings(rounds=6, seed=3, trainer=TrainerSettings(steps_per_round=80))
    rep = simulate(
        ds, settings, ["0", "1"], adversaries={"x": parse_adversary(attack, ANCHOR, ["0", "1"])}
    )
    assert rep.adversaries == {"x": attack}
    final = rep.final
    assert final.subcontexts == {"0": ["0", "1"], "1": ["0", "1"]}
    assert all(w.get("x", 0.0) == 0.0 for w in final.osmosis_weights.values())
    assert final.centered_alignment["0"]["1"] >= 0.95
    norms = [median_norm(e) for e in rep.embeddings.values()]
    assert max(norms) < 3 * np.linalg.norm(ANCHOR)  # no inflation through the blend
    screened = {
        r for rnd in rep.rounds for per in (rnd.screened or {}).values() for r in per.values()
    }
    assert screened  # the adversary was noticed, not merely outvoted
