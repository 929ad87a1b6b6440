#!/usr/bin/env python3
"""Fault drills: a real fleet on the paper's data, with things going wrong on purpose.

Every drill runs agents as processes over a private Mosquitto on a loopback port, with one
trainer, and prints one line: name, PASS/FAIL, wall time and the figures that matter.

    drop-simple      osml run, 20% of frames dropped, simple context agents 0,1, 10 rounds
    drop-complex     osml run, 20% of frames dropped, complex context (5 agents), 15 rounds
    broker-restart   run_fleet on a broker we own; restarted when an agent has done round 4
    agent-sigkill    one agent SIGKILLed after round 4 and restarted on the same config
    trainer-sigkill  the trainer SIGKILLed after round 4, restarted once the agents noticed

    python scripts/fault_drills.py                       # all of them (a few minutes)
    python scripts/fault_drills.py --only agent-sigkill  # one (or a comma list)

A drill passes when every agent finishes every round and the sub-contexts come out as the
data says ({0,1} for the simple pair; {0,1} and {2,3,4} for the complex context), plus what
the drill is about: reconnects after the broker restart, a resume (never round 0 again, model
version kept) after the SIGKILL, new models again after the trainer came back. Run directories
(logs, configs, agent state) stay under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osml.agent.data import load_dataset
from osml.agent.state import read_rounds
from osml.agent.trainer_client import TrainerClient
from osml.core.topology import neighbours as topology_neighbours
from osml.net.broker import MosquittoProcess
from osml.ops.fleet import FleetOptions, agent_toml, assemble, run_fleet
from osml.ops.simulate import SimulationSettings

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "reference-data" / "osml-paper"
TRUTH = {
    "simple-context": {"0": {"0", "1"}, "1": {"0", "1"}},
    "complex-context": {
        "0": {"0", "1"},
        "1": {"0", "1"},
        "2": {"2", "3", "4"},
        "3": {"2", "3", "4"},
        "4": {"2", "3", "4"},
    },
}
FAULT_ROUND = 4  # the faults hit once an agent has finished this round
ROUNDS = 10  # rounds of the broker, agent and trainer drills


@dataclass(frozen=True)
class Env:
    out: Path
    paper: Path
    deadline: float
    timeout: float


# -- small helpers ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def groups_text(final: dict[str, Any]) -> str:
    """``{0,1} 0.999/0.990  {M0}``: each sub-context with its mean strict/centered alignment."""
    parts = []
    for group in sorted(
        {tuple(sorted(s)) for s in final["subcontexts"].values()}, key=lambda g: (-len(g), g)
    ):
        pairs = [(a, b) for a in group for b in group if a < b]
        if not pairs:
            parts.append("{" + ",".join(group) + "}")
            continue
        strict = sum(final["strict_alignment"][a][b] for a, b in pairs) / len(pairs)
        centred = sum(final["centered_alignment"][a][b] for a, b in pairs) / len(pairs)
        parts.append("{" + ",".join(group) + f"}} {strict:.3f}/{centred:.3f}")
    return "  ".join(parts)


def subcontexts_ok(final: dict[str, Any], data: str) -> bool:
    truth = TRUTH[data]
    return all(
        set(final["subcontexts"][a]) == want
        for a, want in truth.items()
        if a in final["subcontexts"]
    )


def missing_frames(result: dict[str, Any]) -> tuple[int, int]:
    """(frames missing, frames expected) over the rounds the agents exchanged in."""
    missing = expected = 0
    for entry in result["rounds"]:
        if "missing_frames" in entry:
            missing += sum(len(v) for v in entry["missing_frames"].values())
            expected += sum(len(result["neighbours"][a]) for a in entry["missing_frames"])
    return missing, expected


class Procs:
    """Subprocesses with their output in a log file, all stopped by PID at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            p = subprocess.Popen(
                [sys.executable, "-m", "osml.cli", *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.started.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.started:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@dataclass
class Fleet:
    """A fleet started by hand (broker, trainer, agents), so that the drill holds every PID."""

    env: Env
    workdir: Path
    data: str
    ids: list[str]
    rounds: int
    interval: float = 0.0  # rounds.interval: without a trainer, rounds otherwise take milliseconds

    def __post_init__(self) -> None:
        self.dataset = load_dataset(str(self.env.paper / self.data)).select(self.ids)
        # trainer=None: agent_toml then writes the trainer's defaults (mlp, vc), as osml run does.
        self.settings = SimulationSettings(
            rounds=self.rounds, context=self.workdir.name, trainer=None
        )
        self.links = topology_neighbours(self.ids, self.settings.topology, self.settings.seed)
        self.procs = Procs()
        self.broker = MosquittoProcess(self.workdir / "broker")
        self.sockdir = Path(tempfile.mkdtemp(prefix="osml-drill-", dir="/tmp"))  # sun_path is short
        self.socket = self.sockdir / "trainer.sock"
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.trainer: subprocess.Popen[bytes] | None = None

    def state(self, agent: str) -> Path:
        return self.workdir / "agents" / agent / "state"

    def config(self, agent: str) -> Path:
        return self.workdir / "agents" / agent / "agent.toml"

    def start_trainer(self) -> None:
        trainer = self.procs.start(
            ["trainer", "--socket", str(self.socket), "--state-dir", str(self.workdir / "trainer")],
            self.workdir / "trainer.log",
        )
        self.trainer = trainer
        client = TrainerClient(self.socket, timeout=5.0)
        if not wait_until(lambda: client.ping() or trainer.poll() is not None, 60):
            raise RuntimeError("the trainer did not answer within 60 s")
        if trainer.poll() is not None:
            raise RuntimeError(f"the trainer exited with {trainer.returncode}")

    def start_agent(self, agent: str) -> None:
        self.agents[agent] = self.procs.start(
            ["agent", "--config", str(self.config(agent))],
            self.workdir / "agents" / agent / "agent.log",
        )

    def start(self) -> None:
        self.broker.start()
        self.start_trainer()
        options = FleetOptions(broker_url=self.broker.url, deadline=self.env.deadline)
        source = f"paper:{(self.env.paper / self.data).resolve()}"
        for i, agent in enumerate(self.ids):
            adir = self.workdir / "agents" / agent
            adir.mkdir(parents=True, exist_ok=True)
            text = agent_toml(
                agent,
                i,
                source,
                self.settings.seed,
                self.links[agent],
                self.settings,
                self.broker.url,
                adir / "state",
                adir / "eval",
                self.socket,
                options,
            )
            self.config(agent).write_text(
                text.replace("[rounds]\n", f"[rounds]\ninterval = {self.interval}\n")
            )
        for agent in self.ids:
            self.start_agent(agent)

    def done(self, agent: str, rnd: int) -> bool:
        return any(r.round >= rnd for r in read_rounds(self.state(agent)))

    def wait_agents(self) -> dict[str, int | None]:
        deadline = time.monotonic() + self.env.timeout
        for p in self.agents.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return {a: p.poll() for a, p in self.agents.items()}

    def result(self, started: float) -> dict[str, Any]:
        # The report as JSON-ready data, as broker_restart gets it from run_fleet.
        return assemble(
            self.workdir,
            self.dataset,
            self.ids,
            self.links,
            self.settings,
            time.perf_counter() - started,
        ).report()

    def stop(self) -> None:
        try:
            self.procs.stop_all()
        finally:
            self.broker.stop()
            shutil.rmtree(self.sockdir, ignore_errors=True)


@contextmanager
def fleet(
    env: Env,
    name: str,
    data: str = "simple-context",
    ids: tuple[str, ...] = ("0", "1"),
    interval: float = 0.0,
) -> Iterator[Fleet]:
    workdir = env.out / name
    shutil.rmtree(workdir, ignore_errors=True)
    f = Fleet(env, workdir, data, list(ids), ROUNDS, interval)
    try:
        f.start()
        yield f
    finally:
        f.stop()


def all_rounds(f: Fleet) -> bool:
    return all([r.round for r in read_rounds(f.state(a))][-1:] == [f.rounds - 1] for a in f.ids)


# -- the drills ---------------------------------------------------------------------------------

DRILLS: dict[str, Callable[[Env], tuple[bool, str]]] = {}


def drill(
    name: str,
) -> Callable[[Callable[[Env], tuple[bool, str]]], Callable[[Env], tuple[bool, str]]]:
    def register(func: Callable[[Env], tuple[bool, str]]) -> Callable[[Env], tuple[bool, str]]:
        DRILLS[name] = func
        return func

    return register


def _osml_run_with_drops(
    env: Env, name: str, data: str, agents: str | None, rounds: int
) -> tuple[bool, str]:
    out = env.out / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "osml.cli",
        "run",
        "--data",
        str(env.paper / data),
        "--rounds",
        str(rounds),
        "--drop-rate",
        "0.2",
        "--deadline",
        str(env.deadline),
        "--context",
        name,
        "--out",
        str(out),
        "--quiet",
    ]
    if agents:
        cmd += ["--agents", agents]
    out.mkdir(parents=True)
    with open(out.parent / f"{name}.log", "wb") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            code = p.wait(timeout=env.timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGINT)  # osml run stops its broker, trainer and agents on Ctrl-C
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            return False, f"no result within {env.timeout:.0f} s"
    if code != 0:
        return False, f"osml run exited with {code}: see {out.parent / (name + '.log')}"
    report = json.loads((out / "report.json").read_text())
    missing, expected = missing_frames(report)
    finished = len(report["rounds"]) == rounds + 1
    ok = finished and subcontexts_ok(report["final"], data)
    return (
        ok,
        f"rounds {len(report['rounds']) - 1}/{rounds}  missing {missing}/{expected} frames  final "
        f"{groups_text(report['final'])}",
    )


@drill("drop-simple")
def drop_simple(env: Env) -> tuple[bool, str]:
    return _osml_run_with_drops(env, "drop-simple", "simple-context", "0,1", 10)


@drill("drop-complex")
def drop_complex(env: Env) -> tuple[bool, str]:
    return _osml_run_with_drops(env, "drop-complex", "complex-context", None, 15)


@drill("broker-restart")
def broker_restart(env: Env) -> tuple[bool, str]:
    workdir = env.out / "broker-restart"
    shutil.rmtree(workdir, ignore_errors=True)
    data, ids = "simple-context", ["0", "1"]
    dataset = load_dataset(str(env.paper / data)).select(ids)
    settings = SimulationSettings(rounds=ROUNDS, context="broker-restart", trainer=None)
    broker = MosquittoProcess(workdir / "own-broker")
    finished = threading.Event()
    restarted_at: list[int] = []
    errors: list[str] = []

    def restart_when_due() -> None:
        states = [workdir / "fleet" / "agents" / a / "state" for a in ids]

        def due() -> bool:
            return finished.is_set() or any(
                r.round >= FAULT_ROUND for s in states for r in read_rounds(s)
            )

        if wait_until(due, env.timeout) and not finished.is_set():
            restarted_at.append(max(r.round for s in states for r in read_rounds(s)))
            try:
                broker.restart()
            except Exception as exc:  # noqa: BLE001  # reported on the drill's line
                errors.append(f"restart failed: {exc}")

    watcher = threading.Thread(target=restart_when_due, name="broker-restarter")
    try:
        broker.start()
        watcher.start()
        options = FleetOptions(broker_url=broker.url, deadline=env.deadline, timeout=env.timeout)
        result = run_fleet(
            str(env.paper / data), dataset, ids, settings, workdir / "fleet", options
        ).report()
    finally:
        finished.set()
        if watcher.is_alive():
            watcher.join()
        broker.stop()
    last = {a: read_rounds(workdir / "fleet" / "agents" / a / "state")[-1] for a in ids}
    reconnects = {a: r.reconnects for a, r in last.items()}
    missing, expected = missing_frames(result)
    ok = (
        not errors
        and bool(restarted_at)
        and len(result["rounds"]) == ROUNDS + 1
        and all(v >= 1 for v in reconnects.values())
        and subcontexts_ok(result["final"], data)
    )
    when = f"after round {restarted_at[0]}" if restarted_at else "never"
    return ok, (
        f"restarted {when}  reconnects {reconnects}  missing {missing}/{expected} frames  "
        f"final {groups_text(result['final'])}{'  ' + '; '.join(errors) if errors else ''}"
    )


@drill("agent-sigkill")
def agent_sigkill(env: Env) -> tuple[bool, str]:
    victim = "1"
    started = time.perf_counter()
    with fleet(env, "agent-sigkill") as f:
        if not wait_until(lambda: f.done(victim, FAULT_ROUND), env.timeout):
            return False, f"agent {victim} never finished round {FAULT_ROUND}"
        os.kill(f.agents[victim].pid, signal.SIGKILL)
        f.agents[victim].wait()
        before = read_rounds(f.state(victim))
        f.start_agent(victim)  # same config, same state directory
        codes = f.wait_agents()
        after = read_rounds(f.state(victim))[len(before) :]
        result = f.result(started)
    rounds_after = [r.round for r in after]
    # Resumed: carries on after the last round it recorded, up to the end, never from round 0.
    resumed = (
        bool(rounds_after)
        and rounds_after[0] > before[-1].round
        and rounds_after == list(range(rounds_after[0], ROUNDS))
    )
    kept_model = bool(after) and after[0].model_version >= before[-1].model_version
    missing, expected = missing_frames(result)
    ok = (
        all(c == 0 for c in codes.values())
        and resumed
        and kept_model
        and all_rounds(f)
        and subcontexts_ok(result["final"], f.data)
    )
    first = rounds_after[0] if rounds_after else None
    return ok, (
        f"killed after round {before[-1].round}, resumed at {first} "
        f"(model v{before[-1].model_version} -> v{after[0].model_version if after else '?'}) "
        " "
        f"exit {codes}  missing {missing}/{expected} frames  final {groups_text(result['final'])}"
    )


@drill("trainer-sigkill")
def trainer_sigkill(env: Env) -> tuple[bool, str]:
    # Paced rounds (1 s): without a trainer the agents would race through the rest in milliseconds.
    with fleet(env, "trainer-sigkill", interval=1.0) as f:
        started = time.perf_counter()
        if not wait_until(lambda: all(f.done(a, FAULT_ROUND) for a in f.ids), env.timeout):
            return False, f"the agents never finished round {FAULT_ROUND}"
        assert f.trainer is not None
        os.kill(f.trainer.pid, signal.SIGKILL)
        f.trainer.wait()
        at_kill = {a: read_rounds(f.state(a))[-1] for a in f.ids}

        def noticed(a: str) -> bool:
            return any(
                r.trainer == "unavailable"
                for r in read_rounds(f.state(a))
                if r.round > at_kill[a].round
            )

        seen_down = wait_until(lambda: all(noticed(a) for a in f.ids) or all_rounds(f), env.timeout)
        f.start_trainer()  # same socket, same state directory: the checkpoints are reloaded
        codes = f.wait_agents()
        recs = {a: read_rounds(f.state(a)) for a in f.ids}
        result = f.result(started)
    down = {a: sum(r.trainer == "unavailable" for r in recs[a]) for a in f.ids}
    versions = {a: (at_kill[a].model_version, recs[a][-1].model_version) for a in f.ids}
    back = all(recs[a][-1].trainer == "ok" and versions[a][1] > versions[a][0] for a in f.ids)
    ok = (
        all(c == 0 for c in codes.values())
        and seen_down
        and all(down.values())
        and back
        and all_rounds(f)
        and subcontexts_ok(result["final"], f.data)
    )
    return ok, (
        f"killed after round {min(r.round for r in at_kill.values())}  rounds without trainer "
        f"{down}  "
        f"model v(kill -> end) {versions}  exit {codes}  final {groups_text(result['final'])}"
    )


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", metavar="NAMES", help=f"comma list of drills to run: {', '.join(DRILLS)}"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "fault-drills", help="where run directories go"
    )
    parser.add_argument(
        "--paper",
        type=Path,
        default=PAPER,
        help="the paper's data (simple-context, complex-context)",
    )
    parser.add_argument(
        "--deadline", type=float, default=5.0, help="seconds an agent waits for its neighbours"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up on a drill after this many seconds"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(DRILLS)
    unknown = [n for n in names if n not in DRILLS]
    if unknown:
        parser.error(f"unknown drill(s) {', '.join(unknown)}; choose from {', '.join(DRILLS)}")
    for data in ("simple-context", "complex-context"):
        if not (args.paper / data / "train_data.csv").exists():
            parser.error(f"no paper data at {args.paper / data}: pass --paper DIR")
    env = Env(args.out.resolve(), args.paper.resolve(), args.deadline, args.timeout)
    env.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            ok, figures = DRILLS[name](env)
        except Exception as exc:  # noqa: BLE001  # one broken drill must not hide the others
            ok, figures = False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        failures += not ok
        print(
            f"{name:<16} {'PASS' if ok else 'FAIL'}  {time.perf_counter() - t0:6.1f}s  {figures}",
            flush=True,
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
