"""osml monitor: the pure FleetView and table first (injected clock), then a real Mosquitto."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import Result

from clihelp import run_command
from osml.cli.monitor import monitor_command
from osml.net.broker import MosquittoProcess, free_port
from osml.net.transport import BrokerSettings, Message, Transport
from osml.ops.monitor import DEFAULT_STALL_AFTER, FleetView, monitor, render_table
from osml.wire import topics

CTX = "lab"
NOW = 1_000_000.0


def status(agent: str, retain: bool = True, **fields: Any) -> Message:
    payload = {"state": "online", "agent": agent, **fields}
    return Message(topics.status(CTX, agent), json.dumps(payload).encode(), retain)


def will(agent: str) -> Message:
    return Message(
        topics.status(CTX, agent), json.dumps({"state": "offline", "agent": agent}).encode(), True
    )


def metrics(agent: str, **fields: Any) -> Message:
    return Message(topics.metrics(CTX, agent), json.dumps(fields).encode(), False)


def invoke(*args: str) -> Result:
    return run_command(monitor_command, *args, catch_exceptions=True)


def by_agent(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["agent"]: r for r in rows}


# ------------------------------------------------------------------------------ FleetView


def test_online_then_will_goes_offline_and_keeps_last_known_fields() -> None:
    view = FleetView(CTX)
    view.update(
        status(
            "0",
            round=5,
            model_version=2,
            subcontext=["0", "1"],
            equilibrium=True,
            trainer="ok",
            time=NOW - 1,
        ),
        NOW,
    )
    row = view.rows(NOW, 60)[0]
    assert (row["state"], row["round"], row["model_version"], row["stalled"]) == (
        "online",
        5,
        2,
        False,
    )
    assert row["last_seen"] == NOW - 1  # retained: the payload's time, not the arrival time

    view.update(will("0"), NOW + 5)
    row = view.rows(NOW + 5, 60)[0]
    assert row["state"] == "offline"
    assert (row["round"], row["model_version"], row["subcontext"]) == (5, 2, ["0", "1"])
    assert row["last_seen"] == NOW - 1  # the will has no time: not news from the agent
    assert not view.rows(NOW + 10_000, 60)[0]["stalled"]  # offline agents are never "stalled"


def test_stalled_after_silence_with_injected_clock() -> None:
    view = FleetView(CTX)
    view.update(status("0", retain=False, round=1), NOW)
    assert not view.rows(NOW + 59, 60)[0]["stalled"]
    assert view.rows(NOW + 61, 60)[0]["stalled"]
    view.update(metrics("0", round=1, time=NOW + 61), NOW + 61)  # news again
    assert not view.rows(NOW + 62, 60)[0]["stalled"]


def test_default_stall_after_is_three_median_round_periods() -> None:
    view = FleetView(CTX)
    assert view.default_stall_after() == DEFAULT_STALL_AFTER
    for rnd in range(4):
        view.update(metrics("0", round=rnd, time=NOW + 10 * rnd), NOW + 10 * rnd)
    assert view.median_round_period() == pytest.approx(10.0)
    assert view.default_stall_after() == pytest.approx(30.0)
    fast = FleetView(CTX)
    for rnd in range(3):
        fast.update(metrics("0", round=rnd, time=NOW + 0.1 * rnd), NOW)
    assert fast.default_stall_after() == 5.0  # floor: fast rounds must not flap


def test_errors_traffic_and_affinity_from_metrics() -> None:
    view = FleetView(CTX)
    view.update(status("0", round=4, subcontext=["0", "1", "M0"]), NOW)
    view.update(
        metrics(
            "0",
            round=3,
            late_frames=2,
            invalid_frames=5,
            frames_in=10,
            frames_out=12,
            bytes_in=1000,
            bytes_out=2000,
            affinity_memory={"1": 0.9, "M0": 0.5, "2": 0.0},
            time=NOW,
        ),
        NOW,
    )
    row = view.rows(NOW, 60)[0]
    assert row["errors"] == 7 and (row["late_frames"], row["invalid_frames"]) == (2, 5)
    assert (row["frames_in"], row["frames_out"], row["bytes_in"], row["bytes_out"]) == (
        10,
        12,
        1000,
        2000,
    )
    assert row["affinity"] == pytest.approx(0.7)  # mean over sub-context peers 1 and M0 only
    assert row["round"] == 4


def test_metrics_only_agent_round_and_no_affinity_when_alone() -> None:
    view = FleetView(CTX)
    view.update(metrics("7", round=2, subcontext=["7"], affinity_memory={"8": 0.1}), NOW)
    row = view.rows(NOW, 60)[0]
    # A record's counters default to 0: a record that names none had no errors.
    assert (row["state"], row["round"], row["affinity"], row["errors"]) == (
        "unknown",
        3,
        None,
        0,
    )


def test_untrusted_input_is_skipped_or_neutralised() -> None:
    view = FleetView(CTX)
    assert not view.update(Message(topics.status(CTX, "0"), b"not json", True), NOW)
    assert not view.update(Message(topics.status(CTX, "0"), b"[1, 2]", True), NOW)
    assert not view.update(Message(topics.status("other", "0"), b"{}", True), NOW)
    assert not view.update(Message("osml/lab/0/in/1", b"{}", False), NOW)
    assert view.ignored == 2 and view.rows(NOW, 60) == []
    view.update(
        status("0", round="x", model_version=True, trainer="ok\x1b[2J", subcontext="0"), NOW
    )
    row = view.rows(NOW, 60)[0]
    assert (row["round"], row["model_version"], row["subcontext"]) == (None, None, None)
    assert "\x1b" not in row["trainer"]
    # An empty retained status deletes the agent (decommissioned).
    view.update(Message(topics.status(CTX, "0"), b"", True), NOW)
    assert view.rows(NOW, 60) == []


def test_rows_are_json_and_naturally_sorted() -> None:
    view = FleetView(CTX)
    for agent in ("10", "2", "M0"):
        view.update(status(agent, round=1, time=NOW), NOW)
    rows = view.rows(NOW, 60)
    assert [r["agent"] for r in rows] == ["2", "10", "M0"]
    assert json.loads(json.dumps(rows)) == rows


def test_table_marks_offline_and_stalled_with_words_and_optional_colour() -> None:
    view = FleetView(CTX)
    view.update(status("0", retain=False, round=3, model_version=1, subcontext=["0", "1"]), NOW)
    view.update(status("1", retain=False, round=3), NOW - 120)
    view.update(will("2"), NOW)
    rows = view.rows(NOW + 3, 60)
    plain = render_table(rows, width=100, color=False)
    lines = plain.splitlines()
    assert lines[0].split()[:3] == ["agent", "state", "round"] and "affinity" in lines[0]
    assert "online" in lines[1] and "3s ago" in lines[1] and "{0,1}" in lines[1]
    assert "STALLED" in lines[2] and "2m ago" in lines[2]
    assert "OFFLINE" in lines[3] and "never" in lines[3]
    assert "\x1b[" not in plain
    coloured = render_table(rows, width=100, color=True)
    assert "\x1b[" in coloured and "OFFLINE" in coloured and "STALLED" in coloured
    assert all(len(line) <= 100 for line in lines)
    assert "no agent" in render_table([], color=False)


def test_table_shortens_a_long_subcontext() -> None:
    view = FleetView(CTX)
    members = [f"agent-{i}" for i in range(30)]
    view.update(status("agent-0", subcontext=members, round=1), NOW)
    line = render_table(view.rows(NOW, 60), width=100).splitlines()[1]
    assert "{agent-0," in line and ",+" in line and len(line) <= 100


# ------------------------------------------------------------------------ with a broker


@pytest.fixture
def fleet(
    mosquitto: MosquittoProcess, unique_context: Callable[[str], str]
) -> Iterator[tuple[str, str]]:
    """Agent "a" online at round 3 with metrics; agent "b" gone (its will is the status)."""
    ctx = unique_context("mon")
    publisher = Transport(BrokerSettings(mosquitto.url), f"test-publisher-{ctx}", persistent=False)
    publisher.connect(timeout=10)
    publisher.publish(
        topics.status(ctx, "a"),
        json.dumps(
            {
                "state": "online",
                "agent": "a",
                "round": 3,
                "model_version": 2,
                "subcontext": ["a"],
                "equilibrium": False,
                "trainer": "ok",
                "time": time.time(),
            }
        ).encode(),
        retain=True,
    )
    publisher.publish(
        topics.status(ctx, "b"),
        json.dumps({"state": "offline", "agent": "b"}).encode(),
        retain=True,
    )
    publisher.close()  # waits for the last PUBACK: both retained statuses are stored
    try:
        yield mosquitto.url, ctx
    finally:
        cleaner = Transport(BrokerSettings(mosquitto.url), f"test-cleaner-{ctx}", persistent=False)
        cleaner.connect(timeout=10)
        for agent in ("a", "b"):
            cleaner.publish(topics.status(ctx, agent), b"", retain=True)
        cleaner.close()


def check_document(document: dict[str, Any], ctx: str) -> None:
    assert document["context"] == ctx and isinstance(document["time"], float)
    rows = by_agent(document["agents"])
    assert set(rows) == {"a", "b"}
    assert (rows["a"]["state"], rows["a"]["round"], rows["a"]["model_version"]) == ("online", 3, 2)
    assert rows["b"]["state"] == "offline" and rows["b"]["round"] is None


def test_monitor_once_json_sees_retained_statuses(fleet: tuple[str, str]) -> None:
    url, ctx = fleet
    out = io.StringIO()
    once = threading.Thread(
        target=monitor,
        args=(BrokerSettings(url), ctx),
        kwargs=dict(
            once=True, as_json=True, wait=1.0, refresh=1.0, stall_after=None, out=out, stop=None
        ),
    )
    once.start()
    once.join(timeout=60)  # --once returns by itself (a hang guard, not a speed check)
    assert not once.is_alive()
    check_document(json.loads(out.getvalue()), ctx)


def test_monitor_sees_live_metrics_and_redraws_until_stopped(fleet: tuple[str, str]) -> None:
    url, ctx = fleet
    out = io.StringIO()
    stop = threading.Event()
    result: list[list[dict[str, Any]]] = []
    thread = threading.Thread(
        target=lambda: result.append(
            monitor(
                BrokerSettings(url),
                ctx,
                once=False,
                as_json=False,
                wait=1.0,
                refresh=0.2,
                stall_after=30.0,
                out=out,
                stop=stop,
            )
        )
    )
    thread.start()
    try:
        with Transport(BrokerSettings(url), f"test-metrics-{ctx}", persistent=False) as t:
            deadline = time.monotonic() + 10
            # The monitor's subscription may not be active yet: repeat until it shows up.
            while "1/2" not in out.getvalue() and time.monotonic() < deadline:
                t.publish(
                    topics.metrics(ctx, "a"),
                    json.dumps(
                        {
                            "round": 3,
                            "frames_in": 1,
                            "frames_out": 2,
                            "late_frames": 1,
                            "invalid_frames": 1,
                            "time": time.time(),
                        }
                    ).encode(),
                    qos=0,
                )
                time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    text = out.getvalue()
    assert text.count("agent  state") + text.count("agent state") >= 2  # redrawn
    assert "OFFLINE" in text and "1/2" in text and "\x1b[" not in text  # StringIO: no colour
    rows = by_agent(result[0])
    assert (rows["a"]["round"], rows["a"]["errors"]) == (4, 2)


def test_cli_once_json(fleet: tuple[str, str]) -> None:
    url, ctx = fleet
    result = invoke("--broker", url, "--context", ctx, "--once", "--json", "--wait", "1")
    assert result.exit_code == 0, result.stderr
    check_document(json.loads(result.stdout), ctx)


def test_cli_once_table(fleet: tuple[str, str]) -> None:
    url, ctx = fleet
    result = invoke("--broker", url, "--context", ctx, "--once", "--wait", "0.5")
    assert result.exit_code == 0, result.output
    assert f"context {ctx}: 2 agents (1 online, 1 OFFLINE)" in result.output
    assert "OFFLINE" in result.output and "affinity" in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--broker", "http://x:1", "--context", "c", "--once"], "scheme must be mqtt://"),
        (["--broker", "mqtt://127.0.0.1:1883", "--context", "a/b", "--once"], "invalid context"),
        (
            ["--context", "c", "--once", "--password-file", "/nonexistent/pw", "--username", "u"],
            "/nonexistent/pw",
        ),
    ],
)
def test_cli_errors_are_one_line(args: list[str], expected: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_cli_unreachable_broker_is_one_line() -> None:
    result = invoke("--broker", f"mqtt://127.0.0.1:{free_port()}", "--context", "c", "--once")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "cannot connect" in result.stderr


def test_cli_help_has_examples() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "osml monitor --broker mqtt://127.0.0.1:1883 --context lab" in result.output
    assert "--stall-after" in result.output


def test_live_agents_get_an_anomaly_column() -> None:
    view = FleetView(CTX)
    view.update(metrics("0", round=5, anomaly_z=1.2, anomalies=0, anomaly_mode="consensus"), NOW)
    view.update(metrics("1", round=5, anomaly_z=9.5, anomalies=3, anomaly_mode="consensus"), NOW)
    view.update(metrics("2", round=5, source_stalled=True, anomaly_mode="novelty"), NOW)

    rows = view.rows(NOW, 60)
    lines = render_table(rows, width=100).splitlines()

    assert "anomaly" in lines[0]
    assert "z 1.2" in lines[1] and "ANOM 3" in lines[2] and "src?" in lines[3]
    assert rows[1]["anomalies"] == 3 and rows[1]["anomaly_z"] == 9.5
    assert all(len(line) <= 100 for line in lines)


def test_file_fleets_have_no_anomaly_column() -> None:
    view = FleetView(CTX)
    view.update(metrics("0", round=5), NOW)

    assert "anomaly" not in render_table(view.rows(NOW, 60), width=100).splitlines()[0]
