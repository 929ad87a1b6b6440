"""Agents on live sensor streams: a recording replayed into files that the agents tail, over a
real Mosquitto with a real trainer, paced by the replay's clock (50x real time).

Every process is stopped by PID when the test ends; waits are bounded polls, never sleeps.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agentprocs import Procs
from osml.agent.data import load_dataset
from osml.agent.embstore import EmbeddingStore
from osml.agent.records import RoundRecord
from osml.agent.state import read_rounds
from osml.agent.trainer_client import TrainerClient
from osml.net.broker import MosquittoProcess
from osml.net.transport import BrokerSettings, Transport
from osml.ops.feeders import FileFeeder
from osml.ops.replay import ReplayPlan, replay_rows

pytestmark = pytest.mark.usefixtures("needs_broker_and_torch")

IDS = ("0", "1")
SPEED = 50.0
STEP = 1.0
PERIOD = 40.0  # data seconds per round: 0.8 s of wall time at 50x
ROUNDS = 4


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def live_config(
    root: Path,
    ctx: str,
    agent: str,
    url: str,
    socket: Path,
    feed: Path,
    plan: ReplayPlan,
    at: float,
) -> Path:
    adir = root / agent
    adir.mkdir(parents=True, exist_ok=True)
    other = IDS[1 - IDS.index(agent)]
    lines = [
        "[agent]",
        f'id = "{agent}"',
        f'context = "{ctx}"',
        'state_dir = "state"',
        "[broker]",
        f'url = "{url}"',
        "[neighbours]",
        f'ids = ["{other}"]',
        "[data]",
        f'source = "tail:{feed}"',
        "features = 1",
        f"step_seconds = {STEP}",
        'clock = "replay"',
        f'publish_topic = "results/{ctx}/{agent}"',
        f"replay_speed = {SPEED}",
        f"replay_start = {plan.start_time}",
        f"replay_origin = {at}",
        "[model]",
        "window = 10",
        "embedding_dim = 5",
        f"seed = {IDS.index(agent)}",
        "[rounds]",
        f"count = {ROUNDS}",
        f"period = {PERIOD}",
        "deadline = 30.0",  # ends as soon as the neighbour is in; its trainer may be busy
        "train_wait = 30.0",
        "[trainer]",
        f'socket = "{socket}"',
        "timeout = 30.0",
        "[trainer.settings]",
        "steps_per_round = 40",
    ]
    path = adir / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_agents_on_replayed_live_streams_exchange_by_step_and_score_anomalies(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
) -> None:
    ctx = unique_context("live")
    socket = short_dir / "trainer.sock"
    trainer = procs.start(
        ["trainer", "--socket", str(socket), "--state-dir", str(tmp_path / "trainer")],
        tmp_path / "trainer.log",
    )
    client = TrainerClient(socket, timeout=5.0)
    wait_until(lambda: client.ping() or trainer.poll() is not None, "the trainer")
    assert trainer.poll() is None, procs.log_of(trainer)

    rows = replay_rows(load_dataset("generated:simple"), limit=600)
    at = time.time() + 4.0  # the agents are up and tailing before the first reading
    plan = ReplayPlan(step_seconds=STEP, speed=SPEED, skew={"1": 0.3}).resolved(at)
    feeds = {a: tmp_path / f"sensor-{a}.csv" for a in IDS}
    configs = {
        a: live_config(tmp_path, ctx, a, mosquitto.url, socket, feeds[a], plan, at) for a in IDS
    }
    agents = {
        a: procs.start(["agent", "--config", str(c)], c.parent / "agent.log")
        for a, c in configs.items()
    }
    feeders = [FileFeeder(rows[a], plan, a, path=feeds[a]) for a in IDS]
    results = Transport(
        BrokerSettings(url=mosquitto.url),
        f"results-reader-{ctx}",
        persistent=False,
        subscriptions=[f"results/{ctx}/0"],
    )
    results.connect()
    try:
        for f in feeders:
            f.start(at=at)
        # Once agent 0 is tailing and has finished a round, a logger's garbage among the readings.
        wait_until(lambda: (configs["0"].parent / "state" / "rounds.jsonl").exists(), "a round")
        with open(feeds["0"], "ab") as fh:
            fh.write(b"not,a,reading\n")
        for a, p in agents.items():
            try:
                code = p.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pytest.fail(f"agent {a} still running:\n{procs.log_of(p)}")
            assert code == 0, procs.log_of(p)
        published = []
        while (msg := results.get(timeout=0.5)) is not None:
            published.append(json.loads(msg.payload))
    finally:
        results.close()
        for f in feeders:
            f.stop()
    # The live embeddings and scores of every round, on the local results topic.
    assert len(published) == ROUNDS
    assert all(len(m["steps"]) == len(m["embeddings"]) == len(m["z"]) > 0 for m in published)
    assert published[-1]["agent"] == "0" and len(published[-1]["embeddings"][0]) == 5

    recs: dict[str, list[RoundRecord]] = {
        a: read_rounds(c.parent / "state") for a, c in configs.items()
    }
    for a in IDS:
        got = recs[a]
        assert len(got) == ROUNDS, procs.log_of(agents[a])
        rounds = [r.round for r in got]
        assert rounds == sorted(rounds) and rounds[0] > 1_000_000  # rounds come from the clock
        assert all(r.steps > 0 for r in got)  # each round embedded the windows of its period
        assert all(r.trainer in ("ok", "busy") for r in got[1:])
        assert got[-1].missing == [] and got[-1].affinity  # matched by step despite the skew
        assert got[-1].anomaly_mode in ("consensus", "novelty")
        store = EmbeddingStore(configs[a].parent / "state" / "embeddings", 5).read()
        assert len(store.step) >= got[-1].steps and np.isfinite(store.vector).all()
    # Both agents ran the same rounds: their clocks agree on what round r means.
    assert [r.round for r in recs["0"]] == [r.round for r in recs["1"]]
    assert (
        recs["0"][-1].source_rejected.get("malformed", 0)
        + recs["0"][-1].source_rejected.get("width", 0)
        >= 1
    )
