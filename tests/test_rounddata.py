"""Round windows by absolute step, the training buffer, and matching neighbours by step index."""

from __future__ import annotations

import numpy as np
import pytest

from osml.agent.rounddata import (
    FileWindows,
    LiveWindows,
    TrainingBuffer,
    align,
    rows_for_steps,
    scale_moved,
)
from osml.agent.streams.readings import Reading
from osml.agent.streams.steps import StepSeries
from osml.core.learner import OsmoticLearner


def test_file_windows_are_named_by_the_row_of_their_last_step() -> None:
    wins = np.arange(20 * 3 * 1, dtype=np.float32).reshape(20, 3, 1)

    ends, got = FileWindows(wins, window=3).windows_for(0)
    assert ends.tolist() == list(range(2, 22)) and np.array_equal(got, wins)

    ends, got = FileWindows(wins, window=3, steps=5).windows_for(7)
    assert ends.tolist() == [17, 18, 19, 20, 21] and np.array_equal(got, wins[-5:])


def test_rows_for_steps_fills_gaps_with_zero_rows_and_align_reads_them_as_absent() -> None:
    steps = np.array([10, 11, 14], dtype=np.int64)
    rows = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)

    start, block = rows_for_steps(steps, rows)
    assert start == 10 and block.shape == (5, 2)
    assert np.array_equal(block[[0, 1, 4]], rows) and not block[2:4].any()

    mine = np.array([9, 10, 12, 14, 15], dtype=np.int64)
    got, present = align(mine, start, block)
    assert present.tolist() == [False, True, False, True, False]
    assert np.array_equal(got[1], rows[0]) and np.array_equal(got[3], rows[2])
    assert not got[~present].any()


def test_training_buffer_keeps_the_latest_target_per_step_and_drops_the_oldest() -> None:
    buf = TrainingBuffer(capacity=3)
    w = np.zeros((2, 4, 1), dtype=np.float32)
    buf.update(np.array([1, 2]), w, np.array([[1.0], [2.0]], dtype=np.float32))
    buf.update(np.array([2, 3]), w, np.array([[20.0], [3.0]], dtype=np.float32))
    buf.update(np.array([4]), w[:1], np.array([[4.0]], dtype=np.float32))

    steps, wins, targets = buf.arrays()
    assert steps.tolist() == [2, 3, 4] and len(buf) == 3
    assert targets[:, 0].tolist() == [20.0, 3.0, 4.0] and wins.shape == (3, 4, 1)


def test_training_buffer_draws_on_fresh_targets_topped_up_to_min_windows() -> None:
    buf = TrainingBuffer(capacity=100, max_age=1, min_windows=2)
    w = np.zeros((2, 4, 1), dtype=np.float32)
    buf.update(np.array([1, 2]), w, np.array([[1.0], [2.0]], dtype=np.float32), rnd=5)
    buf.update(np.array([2, 3]), w, np.array([[20.0], [3.0]], dtype=np.float32), rnd=6)
    assert buf.arrays()[0].tolist() == [1, 2, 3]  # round 5's target of step 1 is 1 round old
    buf.update(np.array([3, 4]), w, np.array([[30.0], [4.0]], dtype=np.float32), rnd=7)
    steps, _, targets = buf.arrays()
    assert steps.tolist() == [2, 3, 4]  # step 1 (round 5) is 2 rounds old: left out
    assert targets[:, 0].tolist() == [20.0, 30.0, 4.0]
    buf.update(np.array([9]), w[:1], np.array([[9.0]], dtype=np.float32), rnd=20)
    # One fresh window: topped up with the most recently targeted (step 4 of round 7 ties
    # step 3; the later step wins), never with the stalest.
    assert buf.arrays()[0].tolist() == [4, 9]
    assert len(buf) == 5  # nothing is deleted until capacity says so
    buf.update(np.zeros(0, dtype=np.int64), w[:0], np.zeros((0, 1), dtype=np.float32), rnd=30)
    assert buf.arrays()[0].tolist() == [4, 9]  # a round without windows does not age the rest
    with pytest.raises(ValueError):
        TrainingBuffer(max_age=-1)
    with pytest.raises(ValueError):
        TrainingBuffer(min_windows=-1)


class _ListSource:
    """A stand-in stream (pure unit test): hands out the readings it was given."""

    def __init__(self) -> None:
        self.pending: list[Reading] = []

    def drain(self, max_items: int | None = None) -> list[Reading]:
        out, self.pending = self.pending, []
        return out


def test_live_windows_give_each_round_the_windows_completed_since_the_last() -> None:
    src = _ListSource()
    series = StepSeries(1.0, 1, capacity=64, grace=0.0)
    live = LiveWindows(src, series, window=3, data_clock=True)  # type: ignore[arg-type]
    src.pending = [Reading(1000.0 + k + 0.5, np.array([float(k)])) for k in range(6)]

    ends, wins = live.windows_for(0)
    assert ends.tolist() == [1002, 1003, 1004]  # step 1005 is still open
    assert wins[0, :, 0].tolist() == [0.0, 1.0, 2.0]

    src.pending = [Reading(1000.0 + k + 0.5, np.array([float(k)])) for k in range(6, 9)]
    ends, _ = live.windows_for(1)
    assert ends.tolist() == [1005, 1006, 1007]


def test_live_windows_replay_a_bounded_number_of_older_steps() -> None:
    src = _ListSource()
    series = StepSeries(1.0, 1, capacity=64, grace=0.0)
    live = LiveWindows(src, series, window=2, replay=2, data_clock=True)  # type: ignore[arg-type]
    src.pending = [Reading(k + 0.5, np.array([float(k)])) for k in range(5)]
    assert live.windows_for(0)[0].tolist() == [1, 2, 3]
    src.pending = [Reading(k + 0.5, np.array([float(k)])) for k in range(5, 7)]
    assert live.windows_for(1)[0].tolist() == [2, 3, 4, 5]


def _pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 4)).astype(np.float32) + 3.0
    # Closely related but no affine copy of a (which screening would take for an echo).
    return a, (a + 0.3 * np.sin(2 * a) + 0.01 * rng.normal(size=a.shape)).astype(np.float32)


def test_learner_with_every_row_present_matches_the_learner_without_masks() -> None:
    own, nb = _pair(40)
    plain, masked = OsmoticLearner("a", ["b"]), OsmoticLearner("a", ["b"])

    p = plain.step(own, {"b": nb})
    m = masked.step(own, {"b": nb}, {"b": np.ones(40, dtype=bool)}, np.arange(40))

    assert np.array_equal(p.target, m.target) and p.affinity == m.affinity


def test_a_neighbour_pulls_only_at_the_steps_it_sent() -> None:
    own, nb = _pair(40)
    present = np.zeros(40, dtype=bool)
    present[:30] = True
    learner = OsmoticLearner("a", ["b"])
    for _ in range(4):  # past the warm-up, so the plain blend shows
        out = learner.step(own, {"b": np.where(present[:, None], nb, 0)}, {"b": present})

    assert out.affinity["b"] > 0.9 and "b" in out.subcontext
    assert np.allclose(out.target[30:], own[30:])  # nobody else had those steps
    assert not np.allclose(out.target[:30], own[:30])


def test_too_few_shared_steps_count_as_not_heard() -> None:
    own, nb = _pair(40)
    present = np.zeros(40, dtype=bool)
    present[:3] = True

    out = OsmoticLearner("a", ["b"]).step(own, {"b": nb}, {"b": present})

    assert out.affinity == {} and set(out.weights) == {"a"}


def test_change_is_measured_on_the_steps_two_rounds_share() -> None:
    own, _ = _pair(40)
    learner = OsmoticLearner("a", [])
    learner.step(own[:30], {}, steps=np.arange(30))
    out = learner.step(own[10:], {}, steps=np.arange(10, 40))

    assert out.change == pytest.approx(0.0)


class _Fixed:
    """Round windows given up front (pure unit test stand-in for a stream)."""

    window = 10

    def __init__(self, steps: np.ndarray, wins: np.ndarray) -> None:
        self.steps, self.wins = steps, wins

    def windows_for(self, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        return self.steps, self.wins


def test_an_agent_without_windows_says_so_and_its_neighbour_does_not_count_it_missing() -> None:
    from pathlib import Path

    from osml.agent.inference import OnnxEncoder
    from osml.agent.round import AgentRound, RoundSettings
    from osml.agent.trainers import NoTrainer
    from osml.ops.simulate import MemoryHub
    from osml.wire.inbox import Inbox

    model = Path(__file__).resolve().parents[1] / "models" / "mlp-w10-f1-d5" / "model.onnx"
    hub = MemoryHub()
    rng = np.random.default_rng(0)
    full = _Fixed(np.arange(100, 140), rng.normal(size=(40, 10, 1)).astype(np.float32))
    stalled = _Fixed(np.zeros(0, dtype=np.int64), np.zeros((0, 10, 1), dtype=np.float32))

    def agent(me: str, other: str, data: _Fixed) -> AgentRound:
        return AgentRound(
            RoundSettings(agent_id=me, context="c", neighbours=(other,), deadline=0.0),
            encoder=OnnxEncoder.load(model),
            data=data,
            learner=OsmoticLearner(me, [other]),
            inbox=Inbox(context="c", me=me, neighbours=[other], dim=5),
            exchange=hub.exchange(me),
            trainer=NoTrainer(),
        )

    a, b = agent("a", "b", full), agent("b", "a", stalled)
    a.begin(0)
    b.begin(0)
    rec_a, rec_b = a.finish(0), b.finish(0)

    assert rec_a is not None and rec_b is not None
    assert a.no_data == {"b"} and rec_a.missing == [] and "steps" not in rec_a.rejected
    assert rec_a.steps == 40 and rec_b.steps == 0 and set(rec_a.osmosis_weights) == {"a"}
    assert rec_b.missing == []  # b heard a's frame (it has no steps of its own to match)


def test_scale_moved_by_a_new_level_or_a_wider_spread_not_by_spikes_or_a_stall() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(-3.0, 0.8, size=(1500, 2))
    mean, std = ref.mean(axis=0), ref.std(axis=0)
    same = rng.normal(-3.0, 0.8, size=(100, 2))
    assert not scale_moved(mean, std, same)
    # Moved to another room: one feature now sits 16 deviations away.
    moved = same.copy()
    moved[:, 1] = rng.normal(10.0, 2.7, size=100)
    assert scale_moved(mean, std, moved)
    # The same level but five times the spread.
    wide = rng.normal(-3.0, 4.0, size=(100, 2))
    assert scale_moved(mean, std, wide)
    # A burst of spikes on a tenth of the steps moves neither the median nor the quartiles.
    spiky = same.copy()
    spiky[::10, 0] = 1e3
    assert not scale_moved(mean, std, spiky)
    # A stuck sensor: the spread shrinks to nothing at the old level; that saturates nothing.
    stuck = np.full((100, 2), -3.1)
    assert not scale_moved(mean, std, stuck)
    # A feature that was constant is scaled by 1 (as the encoder does), not by 1e-6.
    const_mean, const_std = np.array([2.0, 0.0]), np.array([0.0, 1.0])
    assert not scale_moved(const_mean, const_std, np.array([[2.5, 0.0]] * 50))
    assert scale_moved(const_mean, const_std, np.array([[10.0, 0.0]] * 50))
    # Too few steps say nothing.
    assert not scale_moved(mean, std, moved[:3])
