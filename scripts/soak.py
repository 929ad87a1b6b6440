#!/usr/bin/env python3
"""Soak: a large fleet for many rounds on loopback, with random broker restarts and frame loss.

One private Mosquitto, a few trainer processes and one ``osml agent`` process per agent, all
started by this script (the ``osml run`` machinery in :mod:`osml.ops.fleet`). The generated datasets
have at most five agents, so a fleet of N agents is several contexts of ``--data`` (context ``c``
draws its data with seed ``--seed + c``; the last context may be smaller). Agents run until
stopped (``rounds.count = 0``); the soak

* restarts the broker ``--restarts`` times, at random rounds, each time down for a random
  ``--down-min``..``--down-max`` seconds, while every agent drops ``--drop-rate`` of its frames;
* samples the RSS and open descriptors of every process every ``--sample-every`` seconds;
* once every agent has finished ``--rounds`` rounds, lets the fleet run on (no more faults) for
  up to ``--settle-rounds`` rounds until every agent reports equilibrium, reads every agent's
  retained status from the broker, then stops everything by PID and looks for leftovers.

    python scripts/soak.py                                  # 32 agents, 100 rounds, 10% loss
    python scripts/soak.py --agents 4 --rounds 6 --restarts 1 --out /tmp/soak-small

Checks (each PASS/FAIL, exit code 1 if any fails): every agent finished the rounds and never
exited; every agent reconnected after every restart; every agent's retained status is
``online`` (not the broker's last will); every agent at equilibrium; RSS bounded (last-quartile
mean of the samples at most 10% above the first-quartile mean for the agents' sum, 25% for each
process); descriptors bounded (median of the last quartile at most 4 above the first); after
teardown no started process is alive, no process mentions the run directory and no trainer
socket is left. The result is ``OUT/soak.json`` (and ``OUT/samples.jsonl``); the run directory
keeps every log and state.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from osml.agent.data import GENERATED_SPECS, load_dataset
from osml.agent.records import RoundRecord
from osml.agent.state import read_rounds
from osml.core.topology import neighbours as topology_neighbours
from osml.net.broker import MosquittoProcess
from osml.net.transport import BrokerSettings, Transport
from osml.ops.fleet import (
    FleetOptions,
    FleetProcess,
    agent_toml,
    spawn,
    start_trainers,
    stop_processes,
    write_signing_key,
)
from osml.ops.simulate import SimulationSettings
from osml.wire import topics

ROOT = Path(__file__).resolve().parents[1]
RSS_SUM_GROWTH = 1.10  # agents' summed RSS: last-quartile mean / first-quartile mean
RSS_PROC_GROWTH = 1.25  # any one process, same ratio
FD_GROWTH = 4  # descriptors: last-quartile median - first-quartile median, any one process


@dataclass(frozen=True)
class SoakConfig:
    out: Path
    agents: int = 32
    rounds: int = 100
    drop_rate: float = 0.1
    restarts: int = 6
    seed: int = 0
    data: str = "generated:complex"
    topology: str = "full"
    trainers: int = 2
    train_steps: int = 20  # trainer steps_per_round
    learning_rate: float | None = None  # trainer learning_rate; None: the trainer's default
    # rounds.steps: windows embedded and sent per round (0: all). Not 200 by default: the agent then
    # sends the trainer all training windows but targets for the round's windows only, and the
    # trainer rejects every job ("targets must have shape (891, 5), got (200, 5)").
    window_steps: int = 0
    deadline: float = 3.0
    down: tuple[float, float] = (0.5, 3.0)
    settle_rounds: int = 20
    sample_every: float = 10.0
    timeout: float = 3600.0
    sign: bool = False


@dataclass
class Agent:
    context: str
    id: str
    dir: Path
    proc: FleetProcess | None = None

    @property
    def name(self) -> str:
        return f"{self.context}/{self.id}"

    @property
    def rounds_file(self) -> Path:
        return self.dir / "state" / "rounds.jsonl"


@dataclass
class Soak:
    """Everything the soak started, so that ``teardown`` stops all of it by PID."""

    cfg: SoakConfig
    agents: list[Agent] = field(default_factory=list)
    procs: list[FleetProcess] = field(default_factory=list)  # trainers and agents
    broker: MosquittoProcess | None = None
    broker_pids: list[int] = field(default_factory=list)
    sockets: list[Path] = field(default_factory=list)


# -- reading the agents and the processes -----------------------------------------------------


def last_record(path: Path) -> RoundRecord | None:
    """The last complete line of a rounds.jsonl, reading only the file's tail."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 16384))
            tail = fh.read()
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            return RoundRecord.from_json(json.loads(line))
        except ValueError:
            continue  # a partly written last line, or the cut first one
    return None


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def processes_mentioning(needles: Sequence[str]) -> list[tuple[int, str]]:
    """Processes (not this one or its ancestors) whose command line contains one of ``needles``."""
    mine = _ancestors()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            cmd = (
                Path(f"/proc/{entry}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            continue
        if any(n in cmd for n in needles):
            found.append((int(entry), cmd.strip()))
    return found


def quartile_means(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter of ``values`` (at least one value each)."""
    q = max(1, len(values) // 4)
    return statistics.fmean(values[:q]), statistics.fmean(values[-q:])


def quartile_medians(values: Sequence[float]) -> tuple[float, float]:
    q = max(1, len(values) // 4)
    return statistics.median(values[:q]), statistics.median(values[-q:])


def slope_per_100_rounds(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``ys`` over ``xs`` (rounds), times 100."""
    if len(xs) < 2 or max(xs) == min(xs):
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    den = sum((x - mx) ** 2 for x in xs)
    return 100.0 * num / den


def _mb(kb: float) -> float:
    return round(kb / 1024.0, 1)


# -- the run --------------------------------------------------------------------------------------


def restart_rounds(cfg: SoakConfig, rng: random.Random) -> list[int]:
    """The rounds (reached by the slowest agent) after which the broker is restarted: spread at
    random over the run, none in the first 2 or the last 3 rounds (when it fits)."""
    lo, hi = min(2, cfg.rounds - 1), max(min(2, cfg.rounds - 1) + 1, cfg.rounds - 3)
    pool = list(range(lo, hi))
    picks = (
        rng.sample(pool, cfg.restarts)
        if cfg.restarts <= len(pool)
        else rng.choices(pool, k=cfg.restarts)
    )
    return sorted(picks)


def setup(soak: Soak, log: Callable[[str], None]) -> None:
    cfg = soak.cfg
    if cfg.data not in GENERATED_SPECS:
        raise ValueError(f"--data {cfg.data!r}: use one of {', '.join(GENERATED_SPECS)}")
    out = cfg.out
    env = {"PYTHONUNBUFFERED": "1"}
    soak.broker = MosquittoProcess(out / "broker")
    soak.broker.start()
    assert soak.broker.pid is not None
    soak.broker_pids.append(soak.broker.pid)
    soak.sockets = start_trainers(out, cfg.trainers, env, soak.procs)
    key = write_signing_key(out / "signing.key") if cfg.sign else None
    options = FleetOptions(
        broker_url=soak.broker.url,
        drop_rate=cfg.drop_rate,
        deadline=cfg.deadline,
        count=0,
        steps=cfg.window_steps,
        trainers=cfg.trainers,
        sign=cfg.sign,
        trainer_settings={
            "steps_per_round": cfg.train_steps,
            **({} if cfg.learning_rate is None else {"learning_rate": cfg.learning_rate}),
        },
    )
    index = 0
    c = 0
    while index < cfg.agents:
        ctx = f"soak-{c:02d}"
        ids = list(load_dataset(cfg.data, seed=cfg.seed + c).ids)[: cfg.agents - index]
        settings = SimulationSettings(
            rounds=cfg.rounds, context=ctx, topology=cfg.topology, seed=cfg.seed + c, trainer=None
        )
        links = topology_neighbours(ids, cfg.topology, settings.seed)
        for aid in ids:
            adir = out / "agents" / ctx / aid
            adir.mkdir(parents=True, exist_ok=True)
            (adir / "agent.toml").write_text(
                agent_toml(
                    aid,
                    index,
                    cfg.data,
                    cfg.seed + c,
                    links[aid],
                    settings,
                    soak.broker.url,
                    adir / "state",
                    None,
                    soak.sockets[index % len(soak.sockets)],
                    options,
                    key,
                )
            )
            soak.agents.append(Agent(ctx, aid, adir))
            index += 1
        c += 1
    for a in soak.agents:
        a.proc = spawn(
            f"agent {a.name}",
            [sys.executable, "-m", "osml.cli", "agent", "--config", str(a.dir / "agent.toml")],
            a.dir / "agent.log",
            env,
        )
        soak.procs.append(a.proc)
    log(
        f"started: broker pid {soak.broker.pid} on {soak.broker.url}, {cfg.trainers} trainer(s), "
        f"{len(soak.agents)} agents in {c} contexts of {cfg.data}"
    )


def sample(soak: Soak, rounds: dict[str, int]) -> dict[str, Any]:
    named = {p.name: p.popen.pid for p in soak.procs if p.popen.poll() is None}
    if soak.broker is not None and soak.broker.pid is not None:
        named["broker"] = soak.broker.pid
    rss = {n: rss_kb(pid) for n, pid in named.items()}
    fds = {n: fd_count(pid) for n, pid in named.items()}
    return {
        "time": round(time.time(), 1),
        "min_round": min(rounds.values(), default=-1),
        "max_round": max(rounds.values(), default=-1),
        "rss_kb": {n: v for n, v in rss.items() if v is not None},
        "fds": {n: v for n, v in fds.items() if v is not None},
    }


def read_statuses(url: str, names: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Every agent's retained status, straight from the broker."""
    got: dict[str, dict[str, Any]] = {}
    t = Transport(
        BrokerSettings(url=url),
        f"osml-soak-{os.getpid()}",
        subscriptions=[topics.status_filter()],
        persistent=False,
    )
    t.connect()
    try:
        end = time.monotonic() + timeout
        while set(got) != names and time.monotonic() < end:
            msg = t.get(timeout=0.2)
            parsed = topics.parse_agent_topic(msg.topic) if msg is not None else None
            if msg is None or parsed is None or parsed[2] != "status":
                continue
            try:
                got[f"{parsed[0]}/{parsed[1]}"] = json.loads(msg.payload)
            except ValueError:
                got[f"{parsed[0]}/{parsed[1]}"] = {"state": "unreadable"}
    finally:
        t.close()
    return got


def run_soak(cfg: SoakConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the soak; returns the result (also written to ``cfg.out / "soak.json"``)."""
    rng = random.Random(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    # A soak starts afresh (agents resume from state they find): clear what an earlier one left.
    for old in ("samples.jsonl", "soak.json", "signing.key"):
        (cfg.out / old).unlink(missing_ok=True)
    for sub in cfg.out.iterdir():
        if sub.is_dir() and (sub.name in ("agents", "broker") or sub.name.startswith("trainer")):
            shutil.rmtree(sub)
    soak = Soak(cfg)
    plan = restart_rounds(cfg, rng)
    restarts: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    failures: list[str] = []
    statuses: dict[str, dict[str, Any]] = {}
    start_sample: dict[str, Any] | None = None
    end_sample: dict[str, Any] | None = None
    recs_end: dict[str, RoundRecord | None] = {}
    settled_at: int | None = None
    t0 = time.monotonic()
    last_sample = last_line = -math.inf
    try:
        setup(soak, log)
        assert soak.broker is not None
        names = {a.name for a in soak.agents}
        target = cfg.rounds - 1  # rounds are numbered from 0
        settle_until: int | None = None
        while True:
            if time.monotonic() - t0 > cfg.timeout:
                failures.append(f"timeout: no result within {cfg.timeout:.0f} s")
                break
            exited = [
                (a.name, a.proc.popen.returncode)
                for a in soak.agents
                if a.proc is not None and a.proc.popen.poll() is not None
            ]
            if exited:
                failures.append(f"agents exited: {exited}")
                break
            recs = {a.name: last_record(a.rounds_file) for a in soak.agents}
            rounds = {n: (r.round if r else -1) for n, r in recs.items()}
            lo, hi = min(rounds.values()), max(rounds.values())
            now = time.monotonic()
            if start_sample is None and lo >= 2 or now - last_sample >= cfg.sample_every:
                s = sample(soak, rounds)
                samples.append(s)
                with open(cfg.out / "samples.jsonl", "a") as fh:
                    fh.write(json.dumps(s) + "\n")
                last_sample = now
                if start_sample is None and lo >= 2:
                    start_sample = s
            if now - last_line >= max(cfg.sample_every, 30.0):
                s = samples[-1] if samples else {"rss_kb": {}}
                agents_kb = [v for n, v in s["rss_kb"].items() if n.startswith("agent")]
                trainers_kb = [v for n, v in s["rss_kb"].items() if n.startswith("trainer")]
                log(
                    f"[{now - t0:6.0f}s] rounds {lo}..{hi} of {cfg.rounds}  restarts "
                    f"{len(restarts)}/{cfg.restarts}  "
                    f"RSS agents {_mb(sum(agents_kb))} MB (max {_mb(max(agents_kb, default=0))})  "
                    f"trainers {_mb(sum(trainers_kb))} MB"
                )
                last_line = now
            if plan and lo >= plan[0]:  # the slowest agent: every agent lives through every restart
                plan.pop(0)
                time.sleep(rng.uniform(0.0, cfg.deadline))  # a random moment within the round
                down = rng.uniform(*cfg.down)
                soak.broker.stop()
                time.sleep(down)
                soak.broker.start()
                assert soak.broker.pid is not None
                soak.broker_pids.append(soak.broker.pid)
                restarts.append(
                    {"rounds": [lo, hi], "down_s": round(down, 2), "time": round(time.time(), 1)}
                )
                log(
                    f"[{time.monotonic() - t0:6.0f}s] broker restart "
                    f"{len(restarts)}/{cfg.restarts} at rounds "
                    f"{lo}..{hi}, down {down:.1f} s (new pid {soak.broker.pid})"
                )
                continue
            if lo >= target and not plan:
                if settle_until is None:
                    settle_until = lo + cfg.settle_rounds
                    log(
                        f"[{now - t0:6.0f}s] every agent finished {cfg.rounds} rounds; settling "
                        "(up to round "
                        f"{settle_until}) until every agent reports equilibrium"
                    )
                if all(r and r.equilibrium for r in recs.values()):
                    settled_at = lo
                    break
                if lo >= settle_until:
                    break
            time.sleep(1.0)
        if soak.broker.running and not failures:
            statuses = read_statuses(soak.broker.url, names, timeout=2 * cfg.deadline + 10)
        recs_end = {a.name: last_record(a.rounds_file) for a in soak.agents}
        end_sample = sample(soak, {n: (r.round if r else -1) for n, r in recs_end.items()})
        samples.append(end_sample)
        with open(cfg.out / "samples.jsonl", "a") as fh:
            fh.write(json.dumps(end_sample) + "\n")
    except KeyboardInterrupt:
        failures.append("interrupted")
        log("interrupted: stopping every process")
    except Exception as exc:  # noqa: BLE001  # reported as a failed check; teardown still runs
        failures.append(f"{type(exc).__name__}: {exc}")
        log(f"error: {type(exc).__name__}: {exc}")
    finally:
        # Agents first: a trainer stopped under a running agent would show in its last record.
        stop_processes([p for p in soak.procs if p.name.startswith("agent")])
        stop_processes(soak.procs)
        if soak.broker is not None:
            soak.broker.stop()
    elapsed = time.monotonic() - t0
    result = summarize(
        soak,
        restarts,
        samples,
        start_sample,
        end_sample,
        statuses,
        settled_at,
        failures,
        elapsed,
        recs_end,
    )
    (cfg.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# -- the result ------------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "max": _mb(max(values)),
        "median": _mb(statistics.median(values)),
        "sum": _mb(sum(values)),
    }


def summarize(
    soak: Soak,
    restarts: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    start: dict[str, Any] | None,
    end: dict[str, Any] | None,
    statuses: dict[str, dict[str, Any]],
    settled_at: int | None,
    failures: list[str],
    elapsed: float,
    recs_end: dict[str, RoundRecord | None],
) -> dict[str, Any]:
    """The result. Per-agent figures come from each agent's last record *before* teardown
    (``recs_end``): a round an agent finished while being stopped does not count."""
    cfg = soak.cfg
    history = {a.name: read_rounds(a.dir / "state") for a in soak.agents}
    for n, rec in recs_end.items():
        if rec is not None:
            history[n] = [r for r in history[n] if r.round <= rec.round]
    last = {n: h[-1] for n, h in history.items() if h}
    done = {n: last[n].round + 1 if n in last else 0 for n in history}
    rejected: dict[str, int] = {}
    for rec in last.values():
        for reason, count in rec.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + int(count)
    total = {
        k: sum(int(getattr(r, k)) for r in last.values())
        for k in (
            "frames_in",
            "frames_out",
            "late_frames",
            "invalid_frames",
            "dropped_out",
            "reconnects",
        )
    }
    reconnects = {n: r.reconnects for n, r in last.items()}
    eq_end = {n: r.equilibrium for n, r in last.items()}
    window = 20
    eq_share = [statistics.fmean(r.equilibrium for r in h[-window:]) for h in history.values() if h]
    online = {n: statuses.get(n, {}).get("state") == "online" for n in history}
    first_version = {n: h[0].model_version for n, h in history.items() if h}
    training = {
        n: r.trainer == "ok" and r.model_version > first_version[n] for n, r in last.items()
    }

    # Growth between the start sample (round ~2) and the end, per process that lived throughout.
    span = [s for s in samples if start is not None and s["time"] >= start["time"]]
    names = [
        n
        for n in (start or {}).get("rss_kb", {})
        if n != "broker" and all(n in s["rss_kb"] for s in span)
    ]
    growth: dict[str, float] = {}
    fd_delta: dict[str, float] = {}
    for n in names:
        first, lastq = quartile_means([s["rss_kb"][n] for s in span])
        growth[n] = lastq / first
        f0, f1 = quartile_medians([s["fds"].get(n, 0) for s in span])
        fd_delta[n] = f1 - f0
    agent_names = [n for n in names if n.startswith("agent")]
    sums = [sum(s["rss_kb"][n] for n in agent_names) for s in span]
    sum_first, sum_last = quartile_means(sums) if sums else (0.0, 0.0)
    slope = slope_per_100_rounds([s["min_round"] for s in span], sums)

    def snapshot(s: dict[str, Any] | None) -> dict[str, Any]:
        if s is None:
            return {}
        ag = [v for n, v in s["rss_kb"].items() if n.startswith("agent")]
        tr = [v for n, v in s["rss_kb"].items() if n.startswith("trainer")]
        fa = [v for n, v in s["fds"].items() if n.startswith("agent")]
        ft = [v for n, v in s["fds"].items() if n.startswith("trainer")]
        return {
            "min_round": s["min_round"],
            "rss_mb": {
                "agents": _stats(ag),
                "trainers": _stats(tr),
                "broker": _mb(s["rss_kb"].get("broker", 0)),
            },
            "fds": {
                "agents_max": max(fa, default=0),
                "agents_sum": sum(fa),
                "trainers": ft,
                "broker": s["fds"].get("broker", 0),
            },
        }

    alive = [p.name for p in soak.procs if p.popen.poll() is None]
    if soak.broker is not None and soak.broker.running:
        alive.append("broker")
    needles = [str(cfg.out.resolve()), *(str(s) for s in soak.sockets)]
    leftovers = processes_mentioning(needles)
    stale_sockets = [
        str(s) for s in soak.sockets if s.exists()
    ]  # a trainer removes its socket on exit
    n_agents = len(soak.agents)
    checks = {
        "no errors": not failures,
        f"every agent finished {cfg.rounds} rounds": bool(done)
        and min(done.values()) >= cfg.rounds,
        f"{cfg.restarts} broker restarts survived (every agent reconnected each time)": (
            len(restarts) == cfg.restarts
            and bool(reconnects)
            and len(reconnects) == n_agents
            and min(reconnects.values()) >= len(restarts)
        ),
        "every agent trained (trainer ok at the end, model version advanced)": (
            len(training) == n_agents and all(training.values())
        ),
        "every agent online at the end (retained status)": bool(online) and all(online.values()),
        "every agent at equilibrium at the end": len(eq_end) == n_agents and all(eq_end.values()),
        f"RSS bounded (agents' sum <= x{RSS_SUM_GROWTH}, each process <= x{RSS_PROC_GROWTH})": (
            bool(growth)
            and sum_last <= RSS_SUM_GROWTH * sum_first
            and max(growth.values()) <= RSS_PROC_GROWTH
        ),
        f"descriptors bounded (each process <= +{FD_GROWTH})": bool(fd_delta)
        and max(fd_delta.values()) <= FD_GROWTH,
        "no leaked processes or trainer sockets": not alive and not leftovers and not stale_sockets,
    }
    return {
        "config": {**asdict(cfg), "out": str(cfg.out)},
        "passed": all(checks.values()),
        "checks": checks,
        "failures": failures,
        "elapsed_s": round(elapsed, 1),
        "agents": n_agents,
        "contexts": len({a.context for a in soak.agents}),
        "trainers": cfg.trainers,
        "rounds_completed": {
            "min": min(done.values(), default=0),
            "max": max(done.values(), default=0),
        },
        "settled_at_round": settled_at,
        "restarts": restarts,
        "broker_restarts_survived": len(restarts)
        if checks[next(k for k in checks if "restarts survived" in k)]
        else 0,
        "reconnects": {
            "total": total["reconnects"],
            "min": min(reconnects.values(), default=0),
            "max": max(reconnects.values(), default=0),
        },
        "frames": {
            "in": total["frames_in"],
            "out": total["frames_out"],
            "dropped_out": total["dropped_out"],
        },
        "rejected": {
            **rejected,
            "late_frames": total["late_frames"],
            "invalid_frames": total["invalid_frames"],
        },
        "online_at_end": sum(online.values()),
        "status_states": {
            st: sum(1 for s in statuses.values() if s.get("state") == st)
            for st in sorted({str(s.get("state")) for s in statuses.values()})
        },
        "training_at_end": sum(training.values()),
        "model_versions_at_end": {
            "min": min((r.model_version for r in last.values()), default=0),
            "max": max((r.model_version for r in last.values()), default=0),
        },
        "equilibrium_at_end": sum(eq_end.values()),
        "not_at_equilibrium": sorted(n for n, v in eq_end.items() if not v),
        "equilibrium_share_last_rounds": {
            "rounds": window,
            "min": round(min(eq_share, default=0), 2),
            "mean": round(statistics.fmean(eq_share), 2) if eq_share else 0,
        },
        "start": snapshot(start),
        "end": snapshot(end),
        "rss_growth": {
            "agents_sum_first_quartile_mb": _mb(sum_first),
            "agents_sum_last_quartile_mb": _mb(sum_last),
            "agents_sum_slope_mb_per_100_rounds": None if slope is None else _mb(slope),
            "max_process_ratio": round(max(growth.values(), default=0), 3),
            "max_process": max(growth, key=lambda n: growth[n]) if growth else None,
            "samples": len(span),
        },
        "fd_growth": {
            "max": max(fd_delta.values(), default=0),
            "max_process": max(fd_delta, key=lambda n: fd_delta[n]) if fd_delta else None,
        },
        "leftover_processes": [f"{pid} {cmd[:120]}" for pid, cmd in leftovers] + alive,
        "leftover_sockets": stale_sockets,
    }


def summary_text(r: dict[str, Any]) -> str:
    s, e = r.get("start", {}), r.get("end", {})
    lines = [
        f"soak: {r['agents']} agents in {r['contexts']} contexts, {r['trainers']} trainers, "
        f"{r['elapsed_s']:.0f} s",
        f"rounds completed per agent   min {r['rounds_completed']['min']}  max "
        f"{r['rounds_completed']['max']}"
        + (
            f"  (all at equilibrium at round {r['settled_at_round']})"
            if r["settled_at_round"] is not None
            else ""
        ),
        (
            "broker restarts survived     "
            f"{r['broker_restarts_survived']}/{r['config']['restarts']}  (at rounds "
            f"{', '.join('{}..{}'.format(*x['rounds']) for x in r['restarts'])}; down "
            f"{', '.join(str(x['down_s']) for x in r['restarts'])} s)"
        ),
        f"reconnects                   total {r['reconnects']['total']}  per agent "
        f"{r['reconnects']['min']}..{r['reconnects']['max']}",
        f"frames                       in {r['frames']['in']}  out {r['frames']['out']}  dropped "
        f"on purpose {r['frames']['dropped_out']}",
        "rejected                     " + "  ".join(f"{k} {v}" for k, v in r["rejected"].items()),
        f"online at the end            {r['online_at_end']}/{r['agents']}  (retained states "
        f"{r['status_states']})",
        (
            f"trainer ok, model advanced   {r['training_at_end']}/{r['agents']}  (model versions "
            f"{r['model_versions_at_end']['min']}..{r['model_versions_at_end']['max']})"
        ),
        (
            f"at equilibrium at the end    {r['equilibrium_at_end']}/{r['agents']}  (share of the "
            "last "
            f"{r['equilibrium_share_last_rounds']['rounds']} rounds: mean "
            f"{r['equilibrium_share_last_rounds']['mean']}, "
            f"min {r['equilibrium_share_last_rounds']['min']})"
        ),
    ]
    for label, snap in (("start", s), ("end", e)):
        if snap:
            a, t = snap["rss_mb"]["agents"], snap["rss_mb"]["trainers"]
            lines.append(
                f"RSS {label:<5} (round {snap['min_round']:>3})   agents max {a.get('max')} / "
                f"median {a.get('median')} / "
                f"sum {a.get('sum')} MB; trainers max {t.get('max')} / sum {t.get('sum')} MB; "
                f"broker {snap['rss_mb']['broker']} MB"
            )
            lines.append(
                f"fds {label:<5}                 agents max {snap['fds']['agents_max']} / sum "
                f"{snap['fds']['agents_sum']}; "
                f"trainers {snap['fds']['trainers']}; broker {snap['fds']['broker']}"
            )
    g = r["rss_growth"]
    lines.append(
        f"RSS growth                   agents' sum {g['agents_sum_first_quartile_mb']} -> "
        f"{g['agents_sum_last_quartile_mb']} MB "
        f"(quartile means of {g['samples']} samples; slope "
        f"{g['agents_sum_slope_mb_per_100_rounds']} MB/100 rounds); "
        f"largest process ratio {g['max_process_ratio']} ({g['max_process']})"
    )
    lines.append(
        f"fd growth                    largest {r['fd_growth']['max']} "
        f"({r['fd_growth']['max_process']})"
    )
    if r["leftover_processes"] or r["leftover_sockets"]:
        lines.append(
            f"leftovers                    {r['leftover_processes'] + r['leftover_sockets']}"
        )
    for f in r["failures"]:
        lines.append(f"error: {f}")
    for name, ok in r["checks"].items():
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}")
    lines.append(f"soak {'PASSED' if r['passed'] else 'FAILED'}")
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM ends the soak like Ctrl-C: every process it started is stopped.
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = SoakConfig(out=Path())
    parser.add_argument("--agents", type=int, default=d.agents, help="number of agent processes")
    parser.add_argument(
        "--rounds", type=int, default=d.rounds, help="rounds every agent must finish"
    )
    parser.add_argument(
        "--drop-rate",
        type=float,
        default=d.drop_rate,
        help="share of outgoing frames each agent drops",
    )
    parser.add_argument(
        "--restarts", type=int, default=d.restarts, help="broker restarts, at random rounds"
    )
    parser.add_argument(
        "--down-min", type=float, default=d.down[0], help="shortest broker downtime (s)"
    )
    parser.add_argument(
        "--down-max", type=float, default=d.down[1], help="longest broker downtime (s)"
    )
    parser.add_argument(
        "--seed", type=int, default=d.seed, help="seeds the data, the models and the fault plan"
    )
    parser.add_argument(
        "--data", default=d.data, choices=GENERATED_SPECS, help="generated dataset of each context"
    )
    parser.add_argument(
        "--topology", default=d.topology, help="topology inside each context (full, ring, random:K)"
    )
    parser.add_argument(
        "--trainers", type=int, default=d.trainers, help="trainer processes (agent i uses i mod N)"
    )
    parser.add_argument(
        "--train-steps", type=int, default=d.train_steps, help="trainer steps per round"
    )
    parser.add_argument(
        "--learning-rate", type=float, help="trainer learning rate (default: the trainer's, 1e-2)"
    )
    parser.add_argument(
        "--window-steps",
        type=int,
        default=d.window_steps,
        help="windows embedded and sent per round",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=d.deadline,
        help="seconds an agent waits for its neighbours",
    )
    parser.add_argument(
        "--settle-rounds",
        type=int,
        default=d.settle_rounds,
        help=(
            "after the rounds, run on up to this many rounds for every agent to report equilibrium"
        ),
    )
    parser.add_argument(
        "--sample-every", type=float, default=d.sample_every, help="seconds between RSS/fd samples"
    )
    parser.add_argument(
        "--timeout", type=float, default=d.timeout, help="give up after this many seconds"
    )
    parser.add_argument(
        "--sign",
        action="store_true",
        help="sign frames with a fresh key (agents require signatures)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "runs" / "soak",
        help="run directory (logs, state, soak.json)",
    )
    args = parser.parse_args()
    if args.agents < 1 or args.rounds < 1 or args.restarts < 0 or not 0 <= args.drop_rate < 1:
        parser.error("--agents and --rounds must be >= 1, --restarts >= 0, --drop-rate in [0, 1)")
    if not 0 < args.down_min <= args.down_max:
        parser.error("need 0 < --down-min <= --down-max")
    cfg = SoakConfig(
        out=args.out.resolve(),
        agents=args.agents,
        rounds=args.rounds,
        drop_rate=args.drop_rate,
        restarts=args.restarts,
        seed=args.seed,
        data=args.data,
        topology=args.topology,
        trainers=args.trainers,
        train_steps=args.train_steps,
        learning_rate=args.learning_rate,
        window_steps=args.window_steps,
        deadline=args.deadline,
        down=(args.down_min, args.down_max),
        settle_rounds=args.settle_rounds,
        sample_every=args.sample_every,
        timeout=args.timeout,
        sign=args.sign,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    result = run_soak(cfg, lambda line: print(line, flush=True))
    print(summary_text(result), flush=True)
    print(f"wrote {cfg.out / 'soak.json'}", flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
