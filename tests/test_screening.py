"""A bad neighbour cannot take over: screening, and honest agents learning next to an adversary."""

from __future__ import annotations

import numpy as np
import pytest

from osml.core.anchor import context_anchor
from osml.core.learner import OsmoticLearner
from osml.core.screening import CopyDetector, median_norm, relative_spread, screen
from osml_testing.adversary import constant, parse_adversary, replay, scaled

RNG = np.random.default_rng(7)
ANCHOR = context_anchor("sim", 5, 3.8)


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
    behave = {"constant": constant(ANCHOR), "scaled": scaled("b", 1e6), "replay": replay("b", 2)}[
        attack
    ]
    history: list[dict[str, np.ndarray]] = []
    for _ in range(8):
        a, b = honest_pair()
        honest = {"a": a, "b": b}
        x = behave(len(history), honest, history)
        history.append(honest)
        out = learner.step(a, {"b": b, "x": x})
        assert median_norm(out.target) <= 1.05 * median_norm(a)  # never inflated
    assert out.subcontext == ["a", "b"]
    assert out.weights.get("x", 0.0) == 0.0
    assert "x" in out.screened or out.memory["x"] < 0.45


def test_parse_adversary_errors_name_the_forms() -> None:
    assert callable(parse_adversary("replay:0:2", ANCHOR, ["0", "1"]))
    for bad in ("nonsense", "scaled", "scaled:9", "replay:0:zero", "constant:1"):
        with pytest.raises(ValueError, match="adversary"):
            parse_adversary(bad, ANCHOR, ["0", "1"])


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
