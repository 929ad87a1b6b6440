"""The agent process against a real Mosquitto: rounds, trainer trouble, SIGKILL, broker restarts.

Every agent and trainer here is a real subprocess (``python -m osml.cli agent|trainer``) on
generated data with two agents; every one is stopped by PID when the test ends, whatever happens.
Waits are bounded polls on the files the agents write (``rounds.jsonl``, ``state.json``), never
fixed sleeps.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agentprocs import Procs
from osml.agent.config import load_config
from osml.agent.data import load_dataset, windows
from osml.agent.inference import OnnxEncoder
from osml.agent.modelcard import card_path, read_card, read_model, write_model
from osml.agent.records import RoundRecord
from osml.agent.runtime import AgentRuntime
from osml.agent.state import read_rounds as state_rounds
from osml.agent.trainer_client import TrainerClient
from osml.core.anchor import context_anchor
from osml.errors import ConfigError
from osml.net.broker import MosquittoProcess
from osml.net.transport import BrokerSettings, Transport
from osml.wire import topics
from osml.wire.codec import Frame, encode_frame

WAIT = 60.0  # upper bound for a whole short run; a healthy one takes a few seconds
IDS = ("0", "1")


def other(agent: str) -> str:
    return IDS[1 - IDS.index(agent)]


# -- processes ----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def start_trainer(procs: Procs, socket: Path, state_dir: Path) -> subprocess.Popen[bytes]:
    p = procs.start(
        ["trainer", "--socket", str(socket), "--state-dir", str(state_dir)],
        state_dir.parent / "trainer.log",
    )
    client = TrainerClient(socket, timeout=5.0)
    wait_until(lambda: client.ping() or p.poll() is not None, "the trainer to answer")
    assert p.poll() is None, procs.log_of(p)
    return p


# -- agents -------------------------------------------------------------------------------------


def write_config(
    root: Path,
    ctx: str,
    agent: str,
    url: str,
    *,
    count: int,
    socket: Path,
    deadline: float = 3.0,
    model_path: Path | None = None,
    interval: float = 0.0,
    neighbours: tuple[str, ...] | None = None,
    signing_key: Path | None = None,
    trainer: bool = True,
) -> Path:
    adir = root / agent
    adir.mkdir(parents=True, exist_ok=True)
    nbs = neighbours if neighbours is not None else (other(agent),)
    lines = [
        "[agent]",
        f'id = "{agent}"',
        f'context = "{ctx}"',
        'state_dir = "state"',
        "[broker]",
        f'url = "{url}"',
        "[neighbours]",
        "ids = [" + ", ".join(f'"{n}"' for n in nbs) + "]",
        "[data]",
        'source = "generated:simple"',
        f'agent = "{agent}"',
        "[model]",
        'architecture = "mlp"',
        "window = 10",
        "embedding_dim = 5",
        f"seed = {IDS.index(agent)}",
        *([f'path = "{model_path}"'] if model_path else []),
        "[rounds]",
        f"count = {count}",
        f"deadline = {deadline}",
        "train_wait = 30.0",
        f"interval = {interval}",
        *(
            [
                "[trainer]",
                f'socket = "{socket}"',
                "timeout = 30.0",
                "[trainer.settings]",
                "steps_per_round = 40",
            ]
            if trainer
            else []
        ),
        *(["[signing]", f'key_file = "{signing_key}"'] if signing_key else []),
    ]
    path = adir / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_agent(procs: Procs, config: Path) -> subprocess.Popen[bytes]:
    return procs.start(["agent", "--config", str(config)], config.parent / "agent.log")


def state_dir(config: Path) -> Path:
    return config.parent / "state"


def read_rounds(config: Path) -> list[RoundRecord]:
    return state_rounds(state_dir(config))  # skips a torn last line: agents may be mid-append


def read_state(config: Path) -> dict[str, Any]:
    return json.loads((state_dir(config) / "state.json").read_text())


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def done_round(config: Path, rnd: int) -> Callable[[], bool]:
    return lambda: any(r.round >= rnd for r in read_rounds(config))


def retained_status(url: str, ctx: str, agents: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The retained status message of each agent, as a new subscriber gets it."""
    t = Transport(
        BrokerSettings(url=url),
        f"status-reader-{ctx}",
        persistent=False,
        subscriptions=[topics.status(ctx, a) for a in agents],
    )
    got: dict[str, dict[str, Any]] = {}
    t.connect()
    try:
        deadline = time.monotonic() + 10
        while len(got) < len(agents) and time.monotonic() < deadline:
            msg = t.get(timeout=0.5)
            if msg is not None:
                parsed = topics.parse_agent_topic(msg.topic)
                assert parsed is not None and msg.retain
                got[parsed[1]] = json.loads(msg.payload)
    finally:
        t.close()
    return got


def assert_graceful_status(status: dict[str, Any], rnd: int) -> None:
    """The retained status of an agent that stopped on its own: offline, with its last round."""
    assert status["state"] == "offline"
    # The graceful status (with the round), not the last will's bare {"state": "offline"}.
    assert "round" in status, f"the last will replaced the graceful status: {status}"
    assert status["round"] == rnd


@pytest.fixture(scope="module")
def premade_models(needs_torch: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An initial model (v1) per agent, as a deployment would ship it: ONNX file plus card."""
    from osml.trainer.fit import EncoderTrainer
    from osml.trainer.settings import TrainerSettings

    out = tmp_path_factory.mktemp("models")
    ds = load_dataset("generated:simple")
    paths = {}
    for i, agent in enumerate(IDS):
        train = np.asarray(ds[agent].train)
        tr = EncoderTrainer(
            TrainerSettings(architecture="mlp"),
            10,
            1,
            5,
            seed=i,
            train_data=train,
            offset=context_anchor("premade", 5, 4.5),
        )
        model, card, _ = tr.export(windows(train, 10), agent=agent, context="premade")
        assert card.version == 1
        paths[agent] = out / f"encoder-{agent}.onnx"
        write_model(paths[agent], model, card)
    return paths


# -- tests --------------------------------------------------------------------------------------


def test_two_agents_and_a_trainer_run_to_completion(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
) -> None:
    ctx = unique_context("full")
    sock = short_dir / "t.sock"
    start_trainer(procs, sock, tmp_path / "trainer")
    # A generous deadline costs nothing when every frame arrives: it only bounds a wait.
    configs = {
        a: write_config(tmp_path, ctx, a, mosquitto.url, count=3, socket=sock, deadline=10.0)
        for a in IDS
    }

    agents = {a: start_agent(procs, c) for a, c in configs.items()}
    for p in agents.values():
        procs.wait_ok(p)

    for cfg in configs.values():
        recs = read_rounds(cfg)
        assert [r.round for r in recs] == [0, 1, 2]
        assert all(r.missing == [] for r in recs), [r.missing for r in recs]  # each heard the other
        assert all(r.trainer == "ok" for r in recs)
        assert all(r.invalid_frames == 0 and r.late_frames == 0 for r in recs)
        assert recs[-1].frames_in == 3 and recs[-1].frames_out == 3
        versions = [r.model_version for r in recs]
        assert versions == sorted(versions) and versions[-1] > 1
        state = read_state(cfg)
        assert state["next_round"] == 3
        me = next(a for a, c in configs.items() if c == cfg)
        assert set(state["screening"]["member_rounds"]) == set(IDS) - {me}
        assert state["model_version"] >= versions[-1]
        assert OnnxEncoder.load(state_dir(cfg) / "model.onnx").version == state["model_version"]
    status = retained_status(mosquitto.url, ctx, IDS)
    assert set(status) == set(IDS)
    for s in status.values():
        # A graceful stop publishes the full status (the last will only says "offline").
        assert_graceful_status(s, 3)
        assert s["model_version"] > 1 and s["trainer"] == "ok"


def test_an_agent_that_was_away_for_many_rounds_catches_up(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
    premade_models: dict[str, Path],
) -> None:
    """Agent 1 starts when agent 0 is more than 8 rounds ahead: it skips to agent 0's round
    instead of staying out of step (its frames late for 0, 0's too far ahead for it) for ever."""
    ctx = unique_context("behind")
    sock = short_dir / "t.sock"
    start_trainer(procs, sock, tmp_path / "trainer")
    configs = {
        a: write_config(
            tmp_path,
            ctx,
            a,
            mosquitto.url,
            count=20,
            socket=sock,
            deadline=0.5,
            model_path=premade_models[a],
        )
        for a in IDS
    }
    first = start_agent(procs, configs["0"])
    wait_until(done_round(configs["0"], 10), "agent 0 to run 10 rounds alone")
    second = start_agent(procs, configs["1"])
    for p in (first, second):
        procs.wait_ok(p, timeout=2 * WAIT)

    late = read_rounds(configs["1"])
    assert late[0].round == 0 and late[-1].round == 19
    rounds = [r.round for r in late]
    assert any(b - a > 1 for a, b in itertools.pairwise(rounds)), rounds  # it skipped ahead
    assert len(rounds) < 20
    assert any(r.missing == [] for r in late[1:]), [r.missing for r in late]  # in step again
    assert any(r.missing == [] for r in read_rounds(configs["0"]) if r.round > 10)
    assert "skipping ahead" in (configs["1"].parent / "agent.log").read_text()


def test_without_a_trainer_the_agents_run_on_their_initial_model(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
    premade_models: dict[str, Path],
) -> None:
    ctx = unique_context("notrainer")
    sock = short_dir / "absent.sock"
    configs = {
        a: write_config(
            tmp_path, ctx, a, mosquitto.url, count=3, socket=sock, model_path=premade_models[a]
        )
        for a in IDS
    }

    agents = {a: start_agent(procs, c) for a, c in configs.items()}
    for p in agents.values():
        procs.wait_ok(p)

    assert not sock.exists()
    for a, cfg in configs.items():
        recs = read_rounds(cfg)
        assert [r.round for r in recs] == [0, 1, 2]
        assert all(r.model_version == 1 and r.trainer == "unavailable" for r in recs)
        assert recs[-1].missing == []
        assert read_state(cfg)["model_version"] == 1
        installed = OnnxEncoder.load(state_dir(cfg) / "model.onnx")
        assert installed.card.sha256 == read_card(premade_models[a]).sha256
        assert "trainer unavailable" in (cfg.parent / "agent.log").read_text()


MODELS = Path(__file__).resolve().parents[1] / "models"


def test_an_agent_with_a_shipped_model_and_no_trainer_runs_inference_only(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
) -> None:
    ctx = unique_context("inference")
    shipped = MODELS / "mlp-w10-f1-d5" / "model.onnx"
    configs = {
        a: write_config(
            tmp_path,
            ctx,
            a,
            mosquitto.url,
            count=3,
            socket=short_dir / "unused.sock",
            model_path=shipped,
            trainer=False,
        )
        for a in IDS
    }
    assert load_config(configs["0"]).inference_only

    agents = {a: start_agent(procs, c) for a, c in configs.items()}
    for p in agents.values():
        procs.wait_ok(p)

    status = retained_status(mosquitto.url, ctx, IDS)
    for a, cfg in configs.items():
        recs = read_rounds(cfg)
        assert [r.round for r in recs] == [0, 1, 2]
        assert all(r.trainer == "none" and r.model_version == 1 for r in recs)
        assert all(r.embedded_with == 1 for r in recs)
        assert recs[-1].missing == []  # it still exchanges and decides its sub-context
        assert other(a) in recs[-1].affinity and a in recs[-1].subcontext
        assert status[a]["mode"] == "inference-only" and status[a]["trainer"] == "none"
        installed = OnnxEncoder.load(state_dir(cfg) / "model.onnx")
        assert installed.card.sha256 == read_card(shipped).sha256
        # Installed, the shipped model is this agent's: its card names it (checked on restart).
        assert (installed.card.agent, installed.card.context) == (a, ctx)
        log = (cfg.parent / "agent.log").read_text()
        assert "inference only" in log and "trainer unavailable" not in log


@pytest.mark.parametrize(("owner", "in_context"), [("1", True), ("0", False)])
def test_another_agents_model_in_the_state_directory_stops_the_agent_with_one_line(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    short_dir: Path,
    owner: str,
    in_context: bool,
) -> None:
    ctx = unique_context("foreign")
    cfg = write_config(tmp_path, ctx, "0", mosquitto.url, count=1, socket=short_dir / "t.sock")
    model, card = read_model(MODELS / "mlp-w10-f1-d5" / "model.onnx")
    foreign = dataclasses.replace(card, agent=owner, context=ctx if in_context else "elsewhere")
    state_dir(cfg).mkdir()
    write_model(state_dir(cfg) / "model.onnx", model, foreign)

    done = subprocess.run(
        [sys.executable, "-m", "osml.cli", "agent", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "model.card.json" in errors[0] and f"belongs to agent {owner!r}" in errors[0]
    assert (state_dir(cfg) / "model.onnx").exists()  # left where it was, for the operator


def test_a_flooding_neighbour_is_muted_and_the_honest_one_still_heard(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
) -> None:
    """Agent 0 has neighbours 1 (honest) and 2 (runs no agent: a flooder writes 20 000 junk
    messages on its topic). Agent 0 stops receiving from 2 and hears 1 in every round."""
    ctx = unique_context("flooded")
    shipped = MODELS / "mlp-w10-f1-d5" / "model.onnx"

    def config(agent: str, nbs: tuple[str, ...], deadline: float, interval: float) -> Path:
        return write_config(
            tmp_path,
            ctx,
            agent,
            mosquitto.url,
            count=8,
            socket=short_dir / "unused.sock",
            model_path=shipped,
            trainer=False,
            neighbours=nbs,
            deadline=deadline,
            interval=interval,
        )

    # The victim waits a second for the silent 2 every round, then rests 2 s: the honest 1, which
    # waits for the victim's frame, is then always a round ahead, and its frame for a round is
    # there before the victim starts it, however slow the machine (a victim that ran ahead of 1
    # would refuse its frames as late, flood or not).
    victim = config("0", ("1", "2"), 1.0, 2.0)
    honest = config("1", ("0",), 30.0, 0.0)
    # The honest agent first, subscribed (it connects before it installs its model), so that it
    # cannot miss the victim's round-0 frame and sit out its 30 s deadline in round 0.
    agents = [start_agent(procs, honest)]
    wait_until(
        lambda: "installed model" in _text(honest.parent / "agent.log"), "agent 1 to connect"
    )
    agents.append(start_agent(procs, victim))
    wait_until(done_round(victim, 1), "agent 0 to finish round 1")
    flood_from = read_rounds(victim)[-1].round + 1
    flooder = Transport(BrokerSettings(url=mosquitto.url), f"flooder-{ctx}", persistent=False)
    flooder.connect()
    try:
        for i in range(20_000):
            flooder.publish(topics.inbox(ctx, "0", "2"), b"junk %d" % i, qos=0)
    finally:
        flooder.close()
    for p in agents:
        procs.wait_ok(p)

    recs = read_rounds(victim)
    assert [r.round for r in recs] == list(range(8))
    assert all(r.missing == ["2"] for r in recs if r.round >= flood_from), [
        (r.round, r.missing) for r in recs
    ]
    rejected = recs[-1].rejected
    assert rejected.get("muted", 0) > 0, rejected
    assert sum(rejected.get(k, 0) for k in ("muted", "malformed", "queue_full")) <= 20_000
    assert "floods" in (victim.parent / "agent.log").read_text()


def test_an_agent_with_no_trainer_and_no_model_is_a_config_error(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, "ctx", "0", "mqtt://127.0.0.1:1", count=1, socket=tmp_path / "s", trainer=False
    )
    text = cfg.read_text() + '[trainer]\nsocket = ""\n'
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="model.path"):
        load_config(cfg)


def test_sigkilled_agent_resumes_where_it_stopped(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
) -> None:
    ctx = unique_context("sigkill")
    sock = short_dir / "t.sock"
    start_trainer(procs, sock, tmp_path / "trainer")
    configs = {a: write_config(tmp_path, ctx, a, mosquitto.url, count=6, socket=sock) for a in IDS}
    victim = configs["0"]
    agents = {a: start_agent(procs, c) for a, c in configs.items()}

    wait_until(done_round(victim, 1), "agent 0 to finish round 1")
    os.kill(agents["0"].pid, signal.SIGKILL)
    assert agents["0"].wait(timeout=10) == -signal.SIGKILL
    before = read_rounds(victim)
    resumed_at = read_state(victim)["next_round"]
    assert resumed_at >= 2
    restarted = start_agent(procs, victim)
    procs.wait_ok(restarted)
    procs.wait_ok(agents["1"])

    after = read_rounds(victim)[len(before) :]
    rounds_after = [r.round for r in after]
    assert rounds_after[0] >= 2 and 0 not in rounds_after
    assert rounds_after[0] == resumed_at
    assert rounds_after == list(range(rounds_after[0], 6))
    assert after[0].model_version >= before[-1].model_version > 1  # not reset to v1
    assert read_state(victim)["next_round"] == 6
    # What screening remembers came back too: it saw as many rounds as the learner.
    assert read_state(victim)["screening"]["calls"] == read_state(victim)["learner_rounds"]
    assert [r.round for r in read_rounds(configs["1"])] == list(range(6))
    # The killed agent's last will said "offline"; the restarted one ended gracefully.
    assert_graceful_status(retained_status(mosquitto.url, ctx, ("0",))["0"], 6)


def test_agents_keep_their_last_model_when_the_trainer_is_killed(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
) -> None:
    ctx = unique_context("trainerkill")
    sock = short_dir / "t.sock"
    trainer = start_trainer(procs, sock, tmp_path / "trainer")
    configs = {a: write_config(tmp_path, ctx, a, mosquitto.url, count=5, socket=sock) for a in IDS}
    agents = {a: start_agent(procs, c) for a, c in configs.items()}

    wait_until(
        lambda: all(done_round(c, 0)() for c in configs.values()), "both agents to finish round 0"
    )
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait(timeout=10)
    at_kill = {a: max(r.model_version for r in read_rounds(c)) for a, c in configs.items()}
    for p in agents.values():
        procs.wait_ok(p)

    for a, cfg in configs.items():
        recs = read_rounds(cfg)
        assert [r.round for r in recs] == list(range(5))
        final = read_state(cfg)["model_version"]
        # At most a job that was already done when the trainer died still lands; then no more.
        assert at_kill[a] <= final <= at_kill[a] + 1
        assert recs[-1].model_version == recs[-2].model_version == final
        assert recs[-1].trainer == recs[-2].trainer == "unavailable"
        assert OnnxEncoder.load(state_dir(cfg) / "model.onnx").version == final


def test_agents_ride_out_a_broker_restart(
    fresh_broker: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
    premade_models: dict[str, Path],
) -> None:
    ctx = unique_context("restart")
    # No trainer (rounds are then quick): an interval keeps the run long enough to restart in.
    configs = {
        a: write_config(
            tmp_path,
            ctx,
            a,
            fresh_broker.url,
            count=6,
            socket=short_dir / "none.sock",
            model_path=premade_models[a],
            interval=1.0,
        )
        for a in IDS
    }
    agents = {a: start_agent(procs, c) for a, c in configs.items()}

    wait_until(
        lambda: all(done_round(c, 1)() for c in configs.values()), "both agents to finish round 1"
    )
    fresh_broker.restart()
    for p in agents.values():
        procs.wait_ok(p)

    for cfg in configs.values():
        recs = read_rounds(cfg)
        assert [r.round for r in recs] == list(range(6))
        assert recs[-1].reconnects >= 1
        assert read_state(cfg)["next_round"] == 6


def intrude(
    procs: Procs,
    root: Path,
    url: str,
    ctx: str,
    models: dict[str, Path],
    socket: Path,
    payloads: Callable[[int], list[tuple[str, bytes]]],
    signing_key: Path | None = None,
) -> dict[str, Path]:
    """Run agents 0 and 1 for 5 rounds without a trainer; once agent 0 has finished a round, an
    intruder publishes ``payloads(that round)`` as (topic, bytes). Returns the agents' configs."""
    configs = {
        a: write_config(
            root,
            ctx,
            a,
            url,
            count=5,
            socket=socket,
            model_path=models[a],
            interval=0.5,
            signing_key=signing_key,
        )
        for a in IDS
    }
    agents = {a: start_agent(procs, c) for a, c in configs.items()}
    wait_until(done_round(configs["0"], 0), "agent 0 to finish round 0")
    t = Transport(BrokerSettings(url=url), f"intruder-{ctx}", persistent=False)
    t.connect()
    try:
        for topic, payload in payloads(read_rounds(configs["0"])[-1].round):
            t.publish(topic, payload)
    finally:
        t.close()
    for p in agents.values():
        procs.wait_ok(p)
    return configs


def hostile_frames(ctx: str, done: int) -> list[tuple[str, str, bytes]]:
    """(expected reason, topic, payload) for frames an intruder sends agent 0 after its round
    ``done``; none of them may reach agent 0's osmosis."""
    import msgpack
    import zstandard

    def frame(src: str = "1", rnd: int = 10**6, d: int = 5, c: str = ctx) -> Frame:
        return Frame(
            context=c,
            source=src,
            round=rnd,
            step_start=9,
            model_version=1,
            embeddings=np.ones((8, d), np.float32),
        )

    good = msgpack.unpackb(encode_frame(frame()), raw=False)
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(32 << 20))
    mine = topics.inbox(ctx, "0", "1")
    return [
        ("malformed", mine, b"\x00garbage\xff" * 10),
        ("version", mine, msgpack.packb(dict(good, v=7))),
        ("schema", mine, msgpack.packb(dict(good, n="8"))),
        ("shape", mine, msgpack.packb(dict(good, d=6))),
        ("zstd", mine, msgpack.packb(dict(good, z=True, p=bomb))),
        ("nonfinite", mine, msgpack.packb(dict(good, p=bytes(40) + b"\x00\x00\xc0\x7f" * 8))),
        ("not_neighbour", topics.inbox(ctx, "0", "9"), encode_frame(frame(src="9"))),
        ("topic", mine, encode_frame(frame(src="9"))),
        ("context", mine, encode_frame(frame(c="other"))),
        ("late", mine, encode_frame(frame(rnd=0))),  # a replay of round 0
        ("future", mine, encode_frame(frame(rnd=10**6))),
        ("dimension", mine, encode_frame(frame(rnd=done + 2, d=7))),
    ]


def test_hostile_frames_are_rejected_by_reason_and_never_used(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
    premade_models: dict[str, Path],
) -> None:
    ctx = unique_context("hostile")
    cases: list[tuple[str, str, bytes]] = []

    def payloads(done: int) -> list[tuple[str, bytes]]:
        cases.extend(hostile_frames(ctx, done))
        return [(topic, payload) for _, topic, payload in cases]

    configs = intrude(
        procs, tmp_path, mosquitto.url, ctx, premade_models, short_dir / "none.sock", payloads
    )

    recs = read_rounds(configs["0"])
    assert [r.round for r in recs] == list(range(5))  # it never stopped or stalled
    rejected = recs[-1].rejected
    # The agent subscribes to its neighbours' topics only: a stranger's frame never reaches it.
    assert "not_neighbour" not in rejected
    delivered = [reason for reason, _, _ in cases if reason != "not_neighbour"]
    for reason in delivered:
        assert rejected.get(reason, 0) >= 1, (reason, rejected)
    assert sum(rejected.values()) >= len(delivered)
    assert recs[-1].invalid_frames == sum(n for r, n in rejected.items() if r != "late")
    # The real neighbour was still heard (agents back off without a trainer, so not every round),
    # and nobody else ever pulled.
    assert recs[-1].missing == []
    assert all(set(r.osmosis_weights) <= {"0", "1"} for r in recs)
    assert "Traceback" not in (state_dir(configs["0"]).parent / "agent.log").read_text()


def test_forged_frames_far_ahead_neither_move_nor_end_an_agent(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
    premade_models: dict[str, Path],
) -> None:
    """Frames for rounds 1,000,000 and 1,000,001 once made an agent skip past its round count
    and exit: now they are refused, and the agent runs every round."""
    ctx = unique_context("ahead")

    def forged(done: int) -> list[tuple[str, bytes]]:
        return [
            (
                topics.inbox(ctx, "0", "1"),
                encode_frame(
                    Frame(
                        context=ctx,
                        source="1",
                        round=r,
                        step_start=9,
                        model_version=1,
                        embeddings=np.ones((8, 5), np.float32),
                    )
                ),
            )
            for r in (10**6, 10**6 + 1)
        ]

    configs = intrude(
        procs, tmp_path, mosquitto.url, ctx, premade_models, short_dir / "none.sock", forged
    )

    recs = read_rounds(configs["0"])
    assert [r.round for r in recs] == list(range(5))
    assert recs[-1].rejected.get("future") == 2
    assert read_state(configs["0"])["next_round"] == 5
    assert "skipping ahead" not in (configs["0"].parent / "agent.log").read_text()


def test_signed_fleet_rejects_frames_forged_with_broker_credentials(
    mosquitto: MosquittoProcess,
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
    premade_models: dict[str, Path],
) -> None:
    """With signing on, a client that can publish on agent 1's topic still cannot speak as 1."""
    from osml.wire.signing import new_key_hex

    ctx = unique_context("signed")
    key = tmp_path / "ctx.key"
    key.write_text(new_key_hex())
    key.chmod(0o600)

    def forged(done: int) -> list[tuple[str, bytes]]:
        return [
            (
                topics.inbox(ctx, "0", "1"),
                encode_frame(
                    Frame(
                        context=ctx,
                        source="1",
                        round=r,
                        step_start=9,
                        model_version=1,
                        embeddings=np.full((8, 5), 9.0, np.float32),
                    ),
                    key=k,
                ),
            )
            for r in range(done + 1, done + 4)
            for k in (None, bytes(32))  # unsigned, a guessed key
        ]

    configs = intrude(
        procs,
        tmp_path,
        mosquitto.url,
        ctx,
        premade_models,
        short_dir / "none.sock",
        forged,
        signing_key=key,
    )

    recs = read_rounds(configs["0"])
    assert [r.round for r in recs] == list(range(5))
    assert recs[-1].rejected.get("unsigned") == 3 and recs[-1].rejected.get("bad_signature") == 3
    assert recs[-1].missing == []  # the real, signed frames of 1 got through
    assert read_rounds(configs["1"])[-1].rejected.get("bad_signature", 0) == 0


@pytest.mark.usefixtures("needs_mosquitto")
def test_agent_started_before_the_broker_waits_for_it(
    unique_context: Callable[[str], str],
    tmp_path: Path,
    procs: Procs,
    short_dir: Path,
    premade_models: dict[str, Path],
) -> None:
    broker = MosquittoProcess(tmp_path / "broker")  # port chosen now, broker not started yet
    ctx = unique_context("late")
    configs = {
        a: write_config(
            tmp_path,
            ctx,
            a,
            broker.url,
            count=2,
            socket=short_dir / "none.sock",
            model_path=premade_models[a],
        )
        for a in IDS
    }
    try:
        agents = {a: start_agent(procs, c) for a, c in configs.items()}
        logs = [c.parent / "agent.log" for c in configs.values()]
        wait_until(
            lambda: (
                all(log.exists() and "broker unreachable" in log.read_text() for log in logs)
                or any(p.poll() is not None for p in agents.values())
            ),
            "both agents to retry the broker",
        )
        assert all(p.poll() is None for p in agents.values()), [
            procs.log_of(p) for p in agents.values()
        ]
        broker.start()
        for p in agents.values():
            procs.wait_ok(p)
    finally:
        procs.stop_all()
        broker.stop()
    assert all([r.round for r in read_rounds(c)] == [0, 1] for c in configs.values())


def test_a_torn_model_in_the_state_directory_is_replaced(
    tmp_path: Path,
    short_dir: Path,
    premade_models: dict[str, Path],
) -> None:
    """A SIGKILL between writing model.onnx and its card leaves a pair that does not verify."""
    cfg_path = write_config(
        tmp_path,
        "torn",
        "0",
        "mqtt://127.0.0.1:1",
        count=1,
        socket=short_dir / "none.sock",
        model_path=premade_models["0"],
    )
    sdir = state_dir(cfg_path)
    sdir.mkdir()
    shutil.copy(premade_models["0"], sdir / "model.onnx")
    shutil.copy(card_path(premade_models["0"]), card_path(sdir / "model.onnx"))
    (sdir / "model.onnx").write_bytes((sdir / "model.onnx").read_bytes() + b"torn")

    runtime = AgentRuntime(load_config(cfg_path))
    runtime._ensure_model(threading.Event())

    assert runtime.encoder is not None and runtime.encoder.version == 1
    assert (
        OnnxEncoder.load(sdir / "model.onnx").card.sha256 == read_card(premade_models["0"]).sha256
    )
    assert runtime.trainer_status == "unavailable"
