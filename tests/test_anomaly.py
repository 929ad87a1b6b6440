"""Tests for osml.core.anomaly: consensus, robust z, the detector on simulated sensor faults."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.lib.stride_tricks import sliding_window_view

from osml.core.anchor import context_anchor
from osml.core.anomaly import (
    AnomalyDetector,
    AnomalySettings,
    consensus_deviation,
    robust_scale,
    robust_z,
    weighted_median,
)

WINDOW = 10  # samples per embedded window
DIM = 8
ANCHOR = context_anchor("anomaly-sim", DIM, 4.0).astype(np.float64)
ENCODER = np.random.default_rng(3).standard_normal((DIM, WINDOW)) / np.sqrt(WINDOW)
FAULT_AT = 800  # first faulty sample
N_SAMPLES = 1200
ROUND = 20  # steps per round


# --- simulated devices ----------------------------------------------------------------------


def sensor_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Two correlated sensors: a shared periodic + AR(1) signal, own gain and noise each."""
    rng = np.random.default_rng(seed)
    shocks = rng.normal(0.0, 0.3, n)
    ar = np.zeros(n)
    for i in range(1, n):
        ar[i] = 0.9 * ar[i - 1] + shocks[i]
    common = np.sin(2 * np.pi * np.arange(n) / 37) + ar
    return common + 0.1 * rng.normal(size=n), 0.9 * common + 0.1 * rng.normal(size=n), rng


def embed(x: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed linear encoder around the anchor; step = index of a window's last sample."""
    windows = sliding_window_view(x, WINDOW)
    return scale * (ANCHOR + windows @ ENCODER.T), np.arange(WINDOW - 1, len(x), dtype=np.int64)


def inject(x: np.ndarray, kind: str, at: int, rng: np.random.Generator) -> np.ndarray:
    x = x.copy()
    if kind == "stuck":
        x[at:] = x[at]
    elif kind == "spike":
        x[[at, at + 3, at + 11]] += 8.0
    elif kind == "offset":
        x[at:] += 1.0
    elif kind == "noise":
        x[at:] += rng.normal(0.0, 1.0, len(x) - at)
    else:
        raise ValueError(kind)
    return x


def faulty_steps(kind: str, steps: np.ndarray) -> np.ndarray:
    """Steps whose window holds a faulty sample."""
    if kind != "spike":
        return steps >= FAULT_AT
    hit = np.zeros(len(steps), dtype=bool)
    for p in (FAULT_AT, FAULT_AT + 3, FAULT_AT + 11):
        hit |= (steps >= p) & (steps < p + WINDOW)
    return hit


def run_rounds(
    det: AnomalyDetector,
    steps: np.ndarray,
    own: np.ndarray,
    members: dict[str, np.ndarray],
) -> np.ndarray:
    flagged = np.zeros(len(steps), dtype=bool)
    for s in range(0, len(steps), ROUND):
        part = slice(s, s + ROUND)
        scores = det.score(steps[part], own[part], {k: v[part] for k, v in members.items()})
        flagged[part] = scores.flagged
    return flagged


def fault_run(kind: str, seed: int) -> dict[str, float]:
    """Device a (faulty from FAULT_AT) scored against its one sub-context member b."""
    a, b, rng = sensor_pair(N_SAMPLES, seed)
    own, steps = embed(inject(a, kind, FAULT_AT, rng))
    member, _ = embed(b, 1.1)  # b's encoder is 10% larger: the per-agent scaling removes it
    det = AnomalyDetector()
    flagged = run_rounds(det, steps, own, {"b": member})
    bad = faulty_steps(kind, steps)
    judged = steps >= steps[0] + det.settings.min_history  # after the warm-up
    clean = judged & (steps < FAULT_AT)
    tp = int((flagged & bad).sum())
    first = int(steps[flagged & bad].min()) if tp else None
    return {
        "delay": float("inf") if first is None else first - FAULT_AT,
        "false_positive_rate": float((flagged & clean).sum() / clean.sum()),
        "precision": tp / max(int((flagged & judged).sum()), 1),
        "recall": tp / int(bad.sum()),
    }


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.0},
        {"threshold": float("nan")},
        {"history": 0},
        {"history": True},
        {"min_history": 600},
        {"mad_floor": 0.0},
        {"novelty_window": 0},
    ],
)
def test_settings_reject_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AnomalySettings(**kwargs)


# --- pure functions -------------------------------------------------------------------------


def test_weighted_median_is_the_median_for_equal_weights_and_skips_missing_rows() -> None:
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(5, 7, 3))
    centre, covered = weighted_median(stack)
    np.testing.assert_allclose(centre, np.median(stack, axis=0))
    assert covered.all()
    even, _ = weighted_median(stack[:4])
    np.testing.assert_allclose(even, np.median(stack[:4], axis=0))

    holes = stack.copy()
    holes[0, 2] = np.nan
    holes[:, 4] = np.nan  # nobody has step 4
    centre, covered = weighted_median(holes)
    np.testing.assert_allclose(centre[2], np.median(stack[1:, 2], axis=0))
    assert covered.tolist() == [True] * 4 + [False] + [True] * 2
    assert np.isnan(centre[4]).all()


def test_weighted_median_follows_the_heavy_member_and_ignores_zero_weights() -> None:
    stack = np.array([[[0.0]], [[1.0]], [[10.0]]])
    assert weighted_median(stack, np.array([1.0, 1.0, 5.0]))[0][0, 0] == 10.0
    assert weighted_median(stack, np.array([1.0, 0.0, 1.0]))[0][0, 0] == 5.0  # mean of two
    with pytest.raises(ValueError):
        weighted_median(stack, np.array([1.0, -1.0, 1.0]))


def test_consensus_deviation_is_blind_to_scale_and_anchor_but_sees_a_shift() -> None:
    rng = np.random.default_rng(2)
    signal = rng.normal(size=(50, DIM))
    own = ANCHOR + signal
    same, covered = consensus_deviation(own, [3.0 * (ANCHOR + signal)])
    assert covered.all()
    np.testing.assert_allclose(same, 0.0, atol=1e-12)
    shifted = own.copy()
    shifted[10] += 2.0
    dev, _ = consensus_deviation(shifted, [own, 2.0 * own, 0.5 * own])
    assert dev.argmax() == 10 and dev[10] > 0.3
    assert np.median(dev) < 0.02  # the shifted row moved the own median norm a little


def test_median_consensus_resists_one_faulty_member() -> None:
    """With three or more members one broken member does not move the consensus."""
    a, b, rng = sensor_pair(400, 5)
    own, _ = embed(a)
    honest = [embed(b, 1.1)[0], embed(0.95 * a + 0.05 * rng.normal(size=400))[0]]
    broken = embed(inject(b, "offset", 0, rng) + 3.0)[0]
    clean, _ = consensus_deviation(own, honest + [honest[0]])
    attacked, _ = consensus_deviation(own, honest + [broken])
    assert np.median(attacked) < 1.5 * np.median(clean)


def test_robust_z_uses_median_and_scaled_mad_with_a_floor() -> None:
    history = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    med, scale = robust_scale(history, 1e-3)
    assert med == 3.0 and scale == pytest.approx(1.4826)
    np.testing.assert_allclose(robust_z(np.array([3.0, 3.0 + 1.4826]), history, 1e-3), [0, 1])
    assert robust_scale(np.full(10, 2.0), 0.5) == (2.0, 0.5)
    assert robust_scale(np.array([]), 0.5) == (0.0, 0.5)


# --- the detector ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stuck", "spike", "offset", "noise"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_fault_is_flagged_within_two_windows_with_few_false_alarms(
    kind: str, seed: int
) -> None:
    result = fault_run(kind, seed)
    assert result["delay"] <= 2 * WINDOW
    assert result["false_positive_rate"] <= 0.01
    # A lasting fault stays flagged for most of its length here (fixed encoders, no leaving);
    # at the default threshold 7 the stuck runs sit at 0.795-0.80.
    assert result["recall"] >= 0.75
    assert result["precision"] >= 0.7


def test_clean_device_is_not_flagged_and_warm_up_flags_nothing() -> None:
    a, b, _ = sensor_pair(N_SAMPLES, 11)
    own, steps = embed(a)
    member, _ = embed(b, 0.9)
    det = AnomalyDetector(AnomalySettings(min_history=100))
    first = det.score(steps[:100], own[:100] + 5.0 * (steps[:100, None] == 50), {"b": member[:100]})
    assert not first.flagged.any()  # a spike during the warm-up: scored but not flagged
    assert first.z[steps[:100] == 50][0] > 4.0
    assert det.history("consensus") == 100
    flagged = run_rounds(det, steps[100:], own[100:], {"b": member[100:]})
    assert flagged.mean() <= 0.01


def test_flagged_steps_do_not_enter_the_calibration() -> None:
    a, b, rng = sensor_pair(N_SAMPLES, 4)
    own, steps = embed(inject(a, "offset", FAULT_AT, rng))
    member, _ = embed(b)
    det = AnomalyDetector(AnomalySettings(history=len(steps)))  # never full: every add counts
    run_rounds(det, steps[: FAULT_AT - 9], own[: FAULT_AT - 9], {"b": member[: FAULT_AT - 9]})
    before = list(det.to_dict()["consensus"])
    flagged = run_rounds(
        det, steps[FAULT_AT - 9 :], own[FAULT_AT - 9 :], {"b": member[FAULT_AT - 9 :]}
    )
    after = det.to_dict()["consensus"]
    assert flagged.mean() > 0.9
    assert len(after) - len(before) == int((~flagged).sum())  # only unflagged steps were added
    clipping = AnomalyDetector(AnomalySettings(clip_flagged=True))
    run_rounds(clipping, steps, own, {"b": member})
    assert clipping.history("consensus") == 512  # flagged ones too, clipped


def test_rescored_steps_are_not_counted_twice() -> None:
    a, b, _ = sensor_pair(300, 6)
    own, steps = embed(a)
    member, _ = embed(b)
    det = AnomalyDetector(AnomalySettings(min_history=512))  # warm-up: every new step counts
    det.score(steps[:100], own[:100], {"b": member[:100]})
    again = det.score(steps[50:150], own[50:150], {"b": member[50:150]})
    assert det.history("consensus") == 150
    assert det.last_step == int(steps[149])
    assert again.steps.tolist() == steps[50:150].tolist()


def test_a_device_alone_scores_its_novelty() -> None:
    a, _, rng = sensor_pair(N_SAMPLES, 8)
    own, steps = embed(inject(a, "spike", FAULT_AT, rng))
    det = AnomalyDetector()
    flagged = np.zeros(len(steps), dtype=bool)
    for s in range(0, len(steps), ROUND):
        scores = det.score(steps[s : s + ROUND], own[s : s + ROUND], {})
        assert scores.mode == "novelty" and not scores.consensus.any()
        flagged[s : s + ROUND] = scores.flagged
    assert flagged[steps < FAULT_AT].mean() <= 0.01
    assert flagged[(steps >= FAULT_AT) & (steps < FAULT_AT + WINDOW)].any()


def test_steps_without_any_member_row_fall_back_to_novelty() -> None:
    a, b, _ = sensor_pair(300, 9)
    own, steps = embed(a)
    member, _ = embed(b)
    det = AnomalyDetector()
    det.score(steps[:200], own[:200], {"b": member[:200]})
    assert det.history("novelty") == 199  # the first step had no reference yet
    mask = np.ones(50, dtype=bool)
    mask[10:20] = False
    gappy = member[200:250].copy()
    gappy[30] = np.nan
    scores = det.score(steps[200:250], own[200:250], {"b": gappy}, masks={"b": mask})
    assert scores.mode == "consensus"
    assert scores.consensus.tolist() == [not (10 <= i < 20 or i == 30) for i in range(50)]
    assert np.isfinite(scores.z).all()


def test_weights_must_name_every_member_and_shapes_must_match() -> None:
    own = ANCHOR + np.random.default_rng(0).normal(size=(5, DIM))
    det = AnomalyDetector()
    with pytest.raises(ValueError, match="weight"):
        det.score(np.arange(5), own, {"b": own, "c": own}, weights={"b": 1.0})
    with pytest.raises(ValueError, match="sent"):
        det.score(np.arange(5), own, {"b": own[:4]})
    with pytest.raises(ValueError, match="increasing"):
        det.score(np.array([0, 2, 2, 3, 4]), own, {})
    with pytest.raises(ValueError, match="finite"):
        det.score(np.arange(5), np.full((5, DIM), np.nan), {})
    ok = det.score(np.arange(5), own, {"b": own, "c": 2 * own}, weights={"b": 1.0, "c": 0.0})
    np.testing.assert_allclose(ok.deviation, 0.0, atol=1e-12)


def test_state_round_trips_through_json_and_is_bounded() -> None:
    a, b, rng = sensor_pair(N_SAMPLES, 3)
    own, steps = embed(inject(a, "noise", FAULT_AT, rng))
    member, _ = embed(b)
    small = AnomalySettings(history=100, min_history=50, novelty_window=16)
    det = AnomalyDetector(small)
    run_rounds(det, steps[:700], own[:700], {"b": member[:700]})
    data = json.loads(json.dumps(det.to_dict(), allow_nan=False))
    assert len(data["consensus"]) == 100 and len(data["novelty"]) == 100
    assert len(data["reference"]) == 16
    restored = AnomalyDetector.from_dict(data, small)
    rest = slice(700, None)
    got = restored.score(steps[rest], own[rest], {"b": member[rest]})
    want = det.score(steps[rest], own[rest], {"b": member[rest]})
    np.testing.assert_allclose(got.z, want.z)
    assert got.flagged.tolist() == want.flagged.tolist()
    shrunk = AnomalyDetector.from_dict(data, AnomalySettings(history=64, novelty_window=8))
    assert shrunk.history("consensus") == 64 and len(shrunk.to_dict()["reference"]) == 8


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"format": 99},
        {"format": 1, "consensus": [1.0, float("nan")]},
        {"format": 1, "last_step": "7"},
        {"format": 1, "reference": [[1.0, 2.0], [3.0]]},
    ],
)
def test_from_dict_rejects_malformed_state(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AnomalyDetector.from_dict(data)


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    n=st.integers(1, 12),
    d=st.integers(1, 4),
    k=st.integers(0, 3),
    rounds=st.integers(1, 4),
)
def test_any_finite_input_gives_finite_scores_and_bounded_state(
    data: st.DataObject, n: int, d: int, k: int, rounds: int
) -> None:
    small = AnomalySettings(history=8, min_history=3, novelty_window=4)
    det = AnomalyDetector(small)
    start = 0
    for _ in range(rounds):
        gaps = data.draw(hnp.arrays(np.int64, n, elements=st.integers(1, 5)))
        steps = start + np.cumsum(gaps)
        start = int(steps[-1])
        own = data.draw(hnp.arrays(np.float32, (n, d), elements=finite32))
        members = {}
        for j in range(k):
            m = data.draw(hnp.arrays(np.float32, (n, d), elements=finite32))
            missing = data.draw(hnp.arrays(np.bool_, n))
            m[missing] = np.nan
            members[f"m{j}"] = m
        scores = det.score(steps, own, members)
        assert np.isfinite(scores.z).all() and np.isfinite(scores.deviation).all()
        assert scores.flagged.dtype == np.bool_ and scores.z.shape == (n,)
    state = det.to_dict()
    json.dumps(state, allow_nan=False)
    assert len(state["consensus"]) <= 8 and len(state["novelty"]) <= 8
    assert len(state["reference"]) <= 4


def test_motion_cancels_a_fixed_mismatch_between_encoders_and_sees_a_device_stop() -> None:
    from osml.core.anomaly import motion_deviation

    rng = np.random.default_rng(3)
    steps = np.arange(50, dtype=np.int64)
    member = 4.0 + np.cumsum(rng.standard_normal((50, 5)), axis=0) * 0.1
    # Another encoder: offset and twice the scale, moving with its group.
    own = 2.0 * member + np.array([3.0, -1.0, 0.5, 2.0, -2.0])

    together = motion_deviation(own, [member], steps)
    stopped = motion_deviation(np.repeat(own[:1], 50, axis=0), [member], steps)

    assert np.isnan(together[0]) and np.allclose(together[1:], 0.0, atol=1e-9)
    assert np.nanmedian(stopped) == pytest.approx(1.0, rel=0.05)  # the group's typical motion
    gap = np.delete(steps, 20)  # no motion across a gap in the steps
    assert np.isnan(motion_deviation(np.delete(own, 20, 0), [np.delete(member, 20, 0)], gap)[20])


def test_a_stuck_sensor_is_flagged_as_its_windows_stop_moving() -> None:
    a, b, rng = sensor_pair(N_SAMPLES, 5)
    member, _ = embed(b)
    own, steps = embed(inject(a, "stuck", FAULT_AT, rng))
    det = AnomalyDetector()
    flagged = run_rounds(det, steps, own, {"b": member})
    # The first window made only of the frozen sample ends WINDOW - 1 steps after the fault;
    # the step after it is the first whose embedding did not move: within two windows.
    assert flagged[steps == FAULT_AT + WINDOW].all()
    # Clean windows always move: every still step the history holds is one of the stuck ones.
    assert det.to_dict()["still"].count(True) == int((steps >= FAULT_AT + WINDOW).sum())


def test_a_device_that_is_constant_now_and_then_is_flagged_for_it_only_the_first_time() -> None:
    a, _, _ = sensor_pair(N_SAMPLES, 6)
    a = a.copy()
    starts = range(200, N_SAMPLES - 3 * WINDOW, 100)
    for start in starts:  # flat stretches, 100 steps apart
        a[start : start + 2 * WINDOW] = a[start]
    own, steps = embed(a)
    # A member that says exactly what the device says: the level and motion tests never flag,
    # so every flag below is the still test's.
    member = own.copy()
    small = AnomalySettings(history=300, min_history=64)
    det = AnomalyDetector(small)
    still_flags = []
    for s in range(0, len(steps), ROUND):
        part = slice(s, s + ROUND)
        scores = det.score(steps[part], own[part], {"b": member[part]})
        first_still = [st for st in scores.steps if st - WINDOW in starts]
        still_flags += [bool(f) for st, f in zip(scores.steps, scores.flagged) if st in first_still]
        assert int(scores.flagged.sum()) == sum(
            st in first_still for st in scores.steps[scores.flagged]
        )
    # One flag for the first stretch; every later one has an earlier stretch in the history
    # (300 steps) and is not flagged.
    assert len(still_flags) >= 8 and still_flags[0] and not any(still_flags[1:])
    state = json.loads(json.dumps(det.to_dict()))
    assert any(AnomalyDetector.from_dict(state, small).to_dict()["still"])
