"""Replay feeders: the plan, faults and schedule (pure), then each feeder end to end through the
real source it exercises: MQTT into a real Mosquitto read by ``MqttSource``, a rotating file
read by ``TailSource``, the replay script run by ``ExecSource`` and piped into ``StdinSource``.

No timing assertions: the end-to-end tests replay ~100 rows at 200x and check what arrived
(contents and counts) against the schedule; waits are bounded polls. Every process a test starts
is stopped by its PID in a ``finally`` (the sources' and feeders' ``stop``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from osml.agent.data import load_dataset
from osml.agent.streams import (
    ExecSource,
    MqttSource,
    Reading,
    StdinSource,
    StepSeries,
    StreamSource,
    TailSource,
    parse_reading,
    step_of,
)
from osml.errors import ConfigError
from osml.net.broker import MosquittoProcess
from osml.net.transport import BrokerSettings
from osml.ops.feeders import ExecFeeder, FileFeeder, MqttFeeder, exec_argv, exec_spec
from osml.ops.replay import (
    SPIKE_SHARE,
    Fault,
    ReplayClock,
    ReplayPlan,
    Scheduled,
    apply_fault,
    apply_faults,
    format_line,
    next_boundary,
    parse_fault,
    replay_rows,
    schedule,
)

WAIT = 30.0  # upper bound for a replay of a fraction of a second on a busy machine
AGENT_DIR = str(Path(__file__).resolve().parents[1] / "agent")
DATA = "generated:simple"
ROWS = 100
SPEED = 200.0


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def series(n: int = 200, f: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, f)).cumsum(axis=0)


def plan_at(start: float = 1_000_000.0, **kwargs) -> ReplayPlan:
    return ReplayPlan(start_time=start, **kwargs)


# -- the plan (pure) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step_seconds": 0},
        {"step_seconds": math.nan},
        {"speed": 0.5},
        {"speed": math.inf},
        {"start_time": -1.0},
        {"skew": {"a": math.nan}},
        {"skew": {"": 1.0}},
        {"jitter": "gauss"},
        {"jitter_s": -0.1},
        {"drop_rate": 1.0},
        {"drop_rate": math.nan},
        {"readings_per_step": 0},
        {"readings_per_step": True},
        {"reading_noise": -1.0},
        {"seed": -1},
    ],
)
def test_plan_refuses_bad_settings(kwargs) -> None:
    with pytest.raises(ConfigError):
        ReplayPlan(**kwargs)


def test_plan_resolves_its_start_to_the_next_step_boundary() -> None:
    plan = ReplayPlan(step_seconds=5.0)

    resolved = plan.resolved(now=1003.2)

    assert resolved.start_time == 1005.0
    assert ReplayPlan(step_seconds=5.0).resolved(now=1005.0).start_time == 1010.0
    assert resolved.resolved(now=99999.0) is resolved  # already fixed
    assert next_boundary(7.0, 2.0) == 8.0


def test_plan_copies_the_skew_mapping() -> None:
    skew = {"a": 0.5}
    plan = ReplayPlan(skew=skew)

    skew["a"] = 9.0

    assert plan.skew_of("a") == 0.5
    assert plan.skew_of("b") == 0.0
    with pytest.raises(TypeError):
        plan.skew["a"] = 1.0  # type: ignore[index]


def test_schedule_needs_a_resolved_plan() -> None:
    with pytest.raises(ConfigError, match="resolved"):
        list(schedule(series(), ReplayPlan(), "a"))


def test_schedule_places_one_reading_mid_step_and_paces_it_by_speed() -> None:
    rows = series(10)
    plan = plan_at(step_seconds=2.0, speed=50.0)

    items = list(schedule(rows, plan, "a"))

    assert [it.row for it in items] == list(range(10))
    assert [it.t for it in items] == [1_000_000.0 + 2.0 * i + 1.0 for i in range(10)]
    assert [it.wall_s for it in items] == pytest.approx([(2.0 * i + 1.0) / 50 for i in range(10)])
    assert all(np.array_equal(it.values, rows[i]) for i, it in enumerate(items))
    assert items[3].reading.t == items[3].t


def test_skew_shifts_the_stamps_but_not_the_sending_times() -> None:
    rows = series(50)
    base = plan_at(jitter="uniform", jitter_s=0.2)
    skewed = plan_at(jitter="uniform", jitter_s=0.2, skew={"a": -0.3, "b": 0.7})

    plain = list(schedule(rows, base, "a"))
    late = list(schedule(rows, skewed, "a"))
    ahead = list(schedule(rows, skewed, "b"))
    ahead_plain = list(schedule(rows, base, "b"))

    assert [it.wall_s for it in late] == [it.wall_s for it in plain]
    assert np.allclose([x.t - y.t for x, y in zip(late, plain)], -0.3)
    assert np.allclose([x.t - y.t for x, y in zip(ahead, ahead_plain)], 0.7)


def test_drop_rate_drops_about_that_share_and_more_drops_only_add_to_them() -> None:
    rows = series(2000, 1)

    kept = {rate: list(schedule(rows, plan_at(drop_rate=rate, seed=7), "a")) for rate in (0, 0.2)}
    more = list(schedule(rows, plan_at(drop_rate=0.4, seed=7), "a"))

    assert len(kept[0]) == 2000
    assert 1500 <= len(kept[0.2]) <= 1700  # 1600 expected; binomial sd 18
    assert 1100 <= len(more) <= 1300
    assert {it.row for it in more} <= {it.row for it in kept[0.2]}


@pytest.mark.parametrize("jitter", ["uniform", "normal"])
def test_jitter_spreads_stamps_but_never_out_of_their_step(jitter: str) -> None:
    rows = series(500, 1)
    plan = plan_at(step_seconds=0.5, jitter=jitter, jitter_s=0.4, readings_per_step=3)
    first = step_of(1_000_000.0, 0.5)

    items = list(schedule(rows, plan, "a"))

    assert len(items) == 1500
    assert all(step_of(it.t, 0.5) == first + it.row for it in items)
    offsets = np.array([it.t - 1_000_000.0 - 0.5 * it.row for it in items])
    assert offsets.std() > 0.05  # they do spread
    ts = [it.t for it in items]
    assert ts == sorted(ts)  # sent in time order


def test_several_noisy_readings_per_step_average_to_the_row() -> None:
    rows = series(400, 2)
    plan = plan_at(readings_per_step=4, reading_noise=0.1)

    items = list(schedule(rows, plan, "a"))

    assert len(items) == 1600
    values = np.array([it.values for it in items]).reshape(400, 4, 2)
    assert not np.array_equal(values[:, 0], values[:, 1])
    err = values - rows[:, None, :]
    assert np.allclose(err.std(axis=(0, 1)), 0.1 * rows.std(axis=0), rtol=0.15)


def test_schedule_is_deterministic_per_seed_and_device() -> None:
    rows = series(100, 1)
    plan = plan_at(jitter="normal", jitter_s=0.2, drop_rate=0.1, seed=3)

    def stamps(p: ReplayPlan, device: str) -> list[float]:
        return [it.t for it in schedule(rows, p, device)]

    assert stamps(plan, "a") == stamps(plan, "a")
    assert stamps(plan, "a") != stamps(plan, "b")
    assert stamps(plan, "a") != stamps(plan_at(jitter="normal", jitter_s=0.2, seed=4), "a")


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_lines_read_back_as_exactly_the_scheduled_reading(fmt: str) -> None:
    rows = series(20, 3).astype(np.float32)
    plan = plan_at(jitter="uniform", jitter_s=0.3, skew={"a": 0.123})

    for item in schedule(rows, plan, "a"):
        back = parse_reading(format_line(item, fmt), now=0.0)
        assert back.t == item.t
        assert np.array_equal(back.values, item.values)
    with pytest.raises(ConfigError):
        format_line(Scheduled(0.0, 1.0, np.ones(1), 0), "xml")


def test_replay_clock_runs_speed_times_faster_from_the_start() -> None:
    fake_now = [500.0]
    plan = plan_at(start=1000.0, speed=50.0)
    clock = ReplayClock(1000.0, 50.0, at=500.0, now=lambda: fake_now[0])

    assert clock() == 1000.0
    fake_now[0] = 500.1
    assert clock() == pytest.approx(1005.0)
    assert ReplayClock.for_plan(plan, 500.0).speed == 50.0
    with pytest.raises(ConfigError):
        ReplayClock.for_plan(ReplayPlan(), 0.0)


# -- faults (pure) --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("1:stuck@200", Fault("1", "stuck", 200)),
        ("0:offset@50:2", Fault("0", "offset", 50, arg=2.0)),
        ("M0:spike@3", Fault("M0", "spike", 3, arg=6.0)),
        ("dev:noise@0:0.5", Fault("dev", "noise", 0, arg=0.5)),
        ("1:switch@300:0", Fault("1", "switch", 300, other="0")),
        ("site:a:offset@1:1", Fault("site:a", "offset", 1, arg=1.0)),
    ],
)
def test_parse_fault_reads_each_form_and_writes_it_back(text: str, fault: Fault) -> None:
    parsed = parse_fault(text)

    assert parsed == fault
    assert parse_fault(str(parsed)) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "stuck@3",
        "1:stuck",
        "1:melt@3",
        "1:stuck@-1",
        "1:stuck@x",
        "1:stuck@3:2",
        "1:offset@3:abc",
        "1:noise@3:-1",
        "1:offset@3:nan",
        "1:switch@3",
        "1:switch@3:1",
        ":stuck@3",
    ],
)
def test_parse_fault_refuses_bad_faults(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_fault(text)


STEP = 60


def faulted(kind: str, arg: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    rows = series(200, 2)
    fault = Fault("a", kind, STEP, arg=arg)
    out = apply_fault(rows, fault, np.random.default_rng(0))
    assert np.array_equal(out[:STEP], rows[:STEP])  # every kind: nothing before STEP changes
    assert np.array_equal(rows, series(200, 2))  # and the input is left alone
    return rows, out


def test_stuck_freezes_every_value_at_its_value_in_the_fault_step() -> None:
    rows, out = faulted("stuck")

    assert np.array_equal(out[STEP:], np.broadcast_to(rows[STEP], out[STEP:].shape))
    assert not np.array_equal(out[STEP + 1 :], rows[STEP + 1 :])


def test_offset_adds_arg_stds_from_the_fault_step() -> None:
    rows, out = faulted("offset", 2.0)

    assert np.allclose(out[STEP:] - rows[STEP:], 2.0 * rows.std(axis=0))


def test_noise_adds_white_noise_of_arg_stds_from_the_fault_step() -> None:
    rows, out = faulted("noise", 0.5)
    diff = out[STEP:] - rows[STEP:]

    assert bool(np.all(diff != 0))
    assert np.allclose(diff.std(axis=0), 0.5 * rows.std(axis=0), rtol=0.25)
    assert np.allclose(diff.mean(axis=0), 0.0, atol=0.2 * rows.std(axis=0))


def test_spike_puts_a_few_large_outliers_from_the_fault_step() -> None:
    rows, out = faulted("spike", 8.0)
    diff = out[STEP:] - rows[STEP:]
    hit = np.any(diff != 0, axis=1)

    assert hit[0]  # the fault shows at its step
    assert 1 <= hit.sum() <= 1 + 4 * SPIKE_SHARE * len(hit)
    assert np.allclose(np.abs(diff[hit]), 8.0 * rows.std(axis=0))


def test_a_constant_feature_still_shows_the_fault() -> None:
    rows = np.ones((20, 1))

    out = apply_fault(rows, Fault("a", "offset", 5, arg=1.0), np.random.default_rng(0))

    assert np.array_equal(out[:5], rows[:5])
    assert np.array_equal(out[5:], rows[5:] + 1.0)


def test_a_fault_past_the_end_changes_nothing() -> None:
    rows = series(10)

    out = apply_fault(rows, Fault("a", "offset", 10), np.random.default_rng(0))

    assert np.array_equal(out, rows)


def test_switch_copies_the_other_devices_rows_from_the_fault_step() -> None:
    a, b = series(100, 2, seed=1), series(100, 2, seed=2)

    out = apply_fault(a, Fault("a", "switch", 40, other="b"), np.random.default_rng(0), other=b)

    assert np.array_equal(out[:40], a[:40])
    assert np.array_equal(out[40:], b[40:])
    with pytest.raises(ConfigError):
        apply_fault(a, Fault("a", "switch", 40, other="b"), np.random.default_rng(0))
    with pytest.raises(ConfigError):
        apply_fault(a, Fault("a", "switch", 40, other="b"), np.random.default_rng(0), other=b[:50])


def test_apply_faults_switches_to_the_other_devices_clean_signal() -> None:
    rows = {"a": series(100, 1, seed=1), "b": series(100, 1, seed=2)}
    faults = [parse_fault("b:offset@10:5"), parse_fault("a:switch@50:b")]

    out = apply_faults(rows, faults, seed=0)

    assert np.array_equal(out["a"][:50], rows["a"][:50])
    assert np.array_equal(out["a"][50:], rows["b"][50:])  # b's clean rows, not its offset ones
    assert np.allclose(out["b"][10:] - rows["b"][10:], 5 * rows["b"].std())
    assert np.array_equal(apply_faults(rows, faults, seed=0)["b"], out["b"])
    with pytest.raises(ConfigError, match="no device"):
        apply_faults(rows, [parse_fault("c:stuck@1")])


def test_replay_rows_are_the_training_rows_with_the_faults() -> None:
    ds = load_dataset(DATA)

    rows = replay_rows(ds, [parse_fault("1:stuck@30")], limit=50)

    assert set(rows) == set(ds.ids)
    assert np.array_equal(rows["0"], ds["0"].train[:50])
    assert np.array_equal(rows["1"][:31], ds["1"].train[:31])
    assert np.all(rows["1"][30:] == ds["1"].train[30])


# -- end to end through the real sources ----------------------------------------------------------


def e2e_plan(**kwargs) -> ReplayPlan:
    """A plan for ~100 rows at 200x: a 0.3 s skew (< half of a 1 s step), a little jitter."""
    settings = {
        "step_seconds": 1.0,
        "speed": SPEED,
        "skew": {"1": 0.3},
        "jitter": "uniform",
        "jitter_s": 0.1,
        "drop_rate": 0.1,
        "seed": 5,
    }
    settings.update(kwargs)
    return ReplayPlan(**settings).resolved()  # type: ignore[arg-type]


def e2e_rows() -> np.ndarray:
    return replay_rows(load_dataset(DATA), limit=ROWS)["1"]


class Collect:
    """Drains a source into a list while a test waits for it."""

    def __init__(self, source: StreamSource) -> None:
        self.source = source
        self.got: list[Reading] = []

    def until(self, n: int, timeout: float = WAIT) -> bool:
        def enough() -> bool:
            self.got += self.source.drain()
            return len(self.got) >= n

        return wait_for(enough, timeout)


def assert_replayed(got: list[Reading], items: list[Scheduled], plan: ReplayPlan) -> None:
    """What arrived is the schedule (minus its drops), and buckets into the rows' own steps."""
    assert plan.start_time is not None
    assert 0 < len(items) < ROWS  # some readings were dropped
    assert [r.t for r in got] == [it.t for it in items]
    assert all(np.array_equal(r.values, it.values) for r, it in zip(got, items))

    steps = StepSeries(plan.step_seconds, len(items[0].values), capacity=2 * ROWS, grace=0.0)
    for r in got:
        assert steps.add(r) is None
    steps.advance(plan.start_time + (ROWS + 2) * plan.step_seconds)
    held, values, _filled, gap = steps.held()
    first = step_of(plan.start_time, plan.step_seconds)
    assert (held[~gap] - first).tolist() == [it.row for it in items]
    rows = e2e_rows()
    assert np.array_equal(values[~gap], rows[[it.row for it in items]].astype(np.float32))


@pytest.mark.parametrize("qos", [0, 1])
def test_mqtt_feeder_into_mosquitto_read_by_mqtt_source(
    mosquitto: MosquittoProcess, unique_context: Callable[[str], str], qos: int
) -> None:
    topic = f"sensors/{unique_context('replay')}/1"
    broker = BrokerSettings(mosquitto.url)
    plan = e2e_plan()
    feeder = MqttFeeder(e2e_rows(), plan, "1", broker=broker, topic=topic, qos=qos)
    at = time.time() + 0.2
    source = MqttSource(topic, broker, clock=ReplayClock.for_plan(plan, at))
    collect = Collect(source)
    try:
        source.start()
        assert wait_for(lambda: source.connected)
        feeder.start(at=at)

        assert collect.until(feeder.total)
        assert feeder.wait(WAIT)
    finally:
        feeder.stop()
        source.stop()

    assert feeder.error is None
    assert feeder.sent == feeder.total
    assert source.stats.bad == {}
    assert_replayed(collect.got, list(feeder.items), plan)


def test_file_feeder_with_rotation_read_by_tail_source(tmp_path: Path) -> None:
    path = tmp_path / "sensor.csv"
    plan = e2e_plan()
    feeder = FileFeeder(e2e_rows(), plan, "1", path=path, rotate_every=40)
    at = time.time() + 0.2
    # The file does not exist yet: the source reads it, and every later one, from its start.
    source = TailSource(path, poll_s=0.01, clock=ReplayClock.for_plan(plan, at))
    collect = Collect(source)
    try:
        source.start()
        feeder.start(at=at)

        assert collect.until(feeder.total)
        assert feeder.wait(WAIT)
    finally:
        feeder.stop()
        source.stop()

    assert feeder.error is None
    assert feeder.rotations == (feeder.total - 1) // 40
    assert feeder.rotations >= 2
    assert source.stats.restarts == feeder.rotations
    assert source.stats.bad == {}
    kept = [feeder.rotated_path(i).read_text() for i in range(1, feeder.rotations + 1)]
    assert sum(text.count("\n") for text in kept) == 40 * feeder.rotations
    assert_replayed(collect.got, list(feeder.items), plan)


def test_replay_script_read_by_exec_source(monkeypatch: pytest.MonkeyPatch) -> None:
    # The script must import this tree's osml, not an installed one.
    monkeypatch.setenv("PYTHONPATH", AGENT_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    plan = e2e_plan(skew={"1": -0.3}, jitter="normal", jitter_s=0.05)
    at = time.time() + 1.5  # room for the interpreter to start
    argv = exec_argv(DATA, "1", plan, limit=ROWS, fmt="csv", at=at)
    items = list(schedule(e2e_rows(), plan, "1"))
    source = ExecSource(argv, clock=ReplayClock.for_plan(plan, at))
    collect = Collect(source)
    try:
        source.start()

        assert collect.until(len(items))
        assert wait_for(lambda: source.pid is not None)  # --hold: it waits to be stopped
    finally:
        source.stop()

    assert source.stats.restarts == 0
    assert source.stats.bad == {}
    assert exec_spec(argv).startswith("exec:")
    assert_replayed(collect.got, items, plan)


def test_exec_feeder_pipes_the_replay_into_a_stdin_source(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=AGENT_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    plan = e2e_plan(drop_rate=0.05, seed=9)
    at = time.time() + 1.5
    read_fd, write_fd = os.pipe()
    feeder = ExecFeeder(
        exec_argv(DATA, "1", plan, limit=ROWS, at=at, hold=False), stdout=write_fd, env=env
    )
    source = StdinSource(read_fd, clock=ReplayClock.for_plan(plan, at))
    collect = Collect(source)
    try:
        feeder.start()
        os.close(write_fd)  # the script holds the only write end: its exit is our EOF
        source.start()

        assert wait_for(lambda: feeder.done)
        assert wait_for(lambda: source.eof)
        collect.until(0)
    finally:
        feeder.stop()
        source.stop()
        os.close(read_fd)

    assert feeder.returncode == 0
    items = list(schedule(e2e_rows(), plan, "1"))
    assert_replayed(collect.got, items, plan)


def test_replay_script_refuses_a_bad_fault_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from osml.ops.replay_exec import main

    code = main(["--data", DATA, "--agent", "1", "--fault", "1:melt@3"])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("replay_exec: ") and err.count("\n") == 1


def test_stop_interrupts_a_long_wait_at_once(tmp_path: Path) -> None:
    path = tmp_path / "slow.csv"
    # Live speed, 60 s steps, default start: the first reading is up to 90 s away.
    feeder = FileFeeder(series(10), ReplayPlan(step_seconds=60.0), "a", path=path)
    assert feeder.plan.start_time is not None

    feeder.start()
    assert wait_for(path.exists)
    feeder.stop(timeout=WAIT)

    assert feeder.at == feeder.plan.start_time  # it waits for the wall clock to reach the start
    assert feeder.done
    assert feeder._thread is not None and not feeder._thread.is_alive()
    assert feeder.sent == 0 and feeder.total == 10
    assert path.read_text() == ""
    assert feeder.error is None


def test_mqtt_feeder_without_a_broker_fails_with_a_clear_error() -> None:
    from osml.net.broker import free_port

    broker = BrokerSettings(f"mqtt://127.0.0.1:{free_port()}")
    feeder = MqttFeeder(series(5), e2e_plan(), "1", broker=broker, topic="x/y", connect_timeout=1)
    try:
        feeder.start()
        assert feeder.wait(WAIT)
    finally:
        feeder.stop()

    assert feeder.sent == 0
    assert feeder.error is not None and "cannot connect" in feeder.error


@pytest.mark.parametrize(
    "kwargs",
    [{"qos": 2}, {"topic": "a/+"}, {"topic": ""}],
)
def test_mqtt_feeder_refuses_bad_settings(kwargs) -> None:
    settings = {"broker": BrokerSettings(), "topic": "a/b", **kwargs}
    with pytest.raises(ConfigError):
        MqttFeeder(series(5), e2e_plan(), "1", **settings)


@pytest.mark.parametrize("bad", [0, True, 2.5])
def test_file_feeder_refuses_a_bad_rotation(tmp_path: Path, bad) -> None:
    with pytest.raises(ConfigError):
        FileFeeder(series(5), e2e_plan(), "1", path=tmp_path / "f", rotate_every=bad)
