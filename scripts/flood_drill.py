#!/usr/bin/env python3
"""Flood drill: one neighbour floods a victim's inbox; does the victim still hear the others?

A real broker made by ``osml broker init`` (passwords, ACL, the production limits of
``broker-config/mosquitto.conf``, a signing key) for a context of four: the victim ``v``, its
honest neighbour ``h``, a neighbour ``f`` of both ``v`` and ``s`` whose credentials the flooder
uses (``f`` runs no agent: the broker allows one connection per user), and ``s``, a subscriber
that reads nothing. ``v`` and ``h`` are ``osml agent`` processes (inference only, the shipped
MLP model, signed frames; ``v`` waits ``--deadline`` for ``f`` every round, which paces both).
After ``--warmup`` seconds, the flooder (a paho client logged in as ``f``, publishing on the
only inbox topics its ACL lets it write) runs each phase of ``--phases`` for ``--seconds``:

    small:Q     into v: garbage and unsigned frames of 40-200 bytes, QoS Q, as fast as it can
    big:Q       into v: frames of the broker's maximum packet size (1 MiB), QoS Q
    stalled:Q   into s, connected (persistent session, QoS 1 subscription) and reading nothing:
                what the broker holds for a client that is slower than its flood
    offline:Q   into s after it disconnected (its session stays): what it holds for an offline
                client

then ``--rest`` seconds without a flood. Every 0.5 s it samples VmRSS (``/proc/PID/status``)
of the victim, the honest agent and the broker, and afterwards reads the victim's
``rounds.jsonl``.

    python scripts/flood_drill.py                                  # small:0, big:0, big:1
    python scripts/flood_drill.py --phases big:1 --seconds 10 --json /tmp/flood.json

Goals (PASS/FAIL each, exit code 1 if one fails): the victim's RSS after the rest within 20 MiB
of before, and during every phase within ``--max-victim-growth`` MiB of before; every round of
the victim that ended during a flood or after it heard ``h``; the broker's RSS never above
``--max-broker`` MiB. Logs and state stay under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from osml.agent.state import read_rounds
from osml.net.broker import find_mosquitto, free_port
from osml.ops.brokers import TUNING, init_broker_dir
from osml.ops.fleet import FleetProcess, spawn, stop_processes
from osml.wire import topics
from osml.wire.codec import Frame, encode_frame

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mlp-w10-f1-d5" / "model.onnx"
CTX = "flood"
VICTIM, HONEST, FLOODER, STALLED = "v", "h", "f", "s"
MIB = 1 << 20


# -- measuring ----------------------------------------------------------------------------------


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Sampler:
    """VmRSS of named processes every ``every`` seconds, each sample tagged with the phase."""

    pids: dict[str, int]
    every: float = 0.5
    phase: str = "warmup"
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            row: dict[str, Any] = {"t": time.time(), "phase": self.phase}
            for name, pid in self.pids.items():
                row[name] = rss_mib(pid)
            self.samples.append(row)
            self._stop.wait(self.every)

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self.run, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def values(self, name: str, phase: str) -> list[float]:
        return [s[name] for s in self.samples if s["phase"] == phase and s[name] is not None]


# -- the fleet ----------------------------------------------------------------------------------


def fleet_file(path: Path) -> Path:
    path.write_text(
        f"[contexts.{CTX}]\n"
        f'agents = ["{VICTIM}", "{HONEST}", "{FLOODER}", "{STALLED}"]\n\n'
        f"[contexts.{CTX}.neighbours]\n"
        f'{VICTIM} = ["{HONEST}", "{FLOODER}"]\n'
        f'{HONEST} = ["{VICTIM}"]\n'
        f'{FLOODER} = ["{VICTIM}", "{STALLED}"]\n'
        f'{STALLED} = ["{FLOODER}"]\n'
    )
    return path


def agent_config(out: Path, agent: str, series: str, url: str, args: argparse.Namespace) -> Path:
    creds = out / "broker" / "credentials"
    neighbours = [HONEST, FLOODER] if agent == VICTIM else [VICTIM]
    adir = out / agent
    adir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[agent]",
        f'id = "{agent}"',
        f'context = "{CTX}"',
        f'state_dir = "{adir / "state"}"',
        "[broker]",
        f'url = "{url}"',
        f'username = "{CTX}.{agent}"',
        f'password_file = "{creds / f"{CTX}.{agent}.pass"}"',
        "[neighbours]",
        "ids = [" + ", ".join(f'"{n}"' for n in neighbours) + "]",
        "[data]",
        'source = "generated:simple"',
        f'agent = "{series}"',
        "[model]",
        'architecture = "mlp"',
        "window = 10",
        "embedding_dim = 5",
        f'path = "{MODEL}"',
        "[rounds]",
        "count = 0",
        f"deadline = {args.deadline if agent == VICTIM else args.honest_deadline}",
        f"interval = {args.interval}",
        "[trainer]",
        'socket = ""',
        "[signing]",
        f'key_file = "{creds / f"{CTX}.key"}"',
    ]
    path = adir / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for_port(port: int, proc: FleetProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"broker exited: {proc.log.read_text(errors='replace')[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"broker did not open port {port}")


def rounds_done(config: Path) -> int:
    return len(read_rounds(config.parent / "state"))


# -- the flooder --------------------------------------------------------------------------------


def login(port: int, user: str, password: str, **connect: Any) -> mqtt.Client:
    """A paho MQTT 5 client logged in as ``user``, its network loop driven by the caller."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.connect("127.0.0.1", port, **connect)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not log in as {user}")
        client.loop(timeout=0.1)
    return client


class Stalled:
    """``s``: subscribed to its inbox with a persistent session, and never reading it."""

    def __init__(self, port: int, password: str) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client = login(port, f"{CTX}.{STALLED}", password, clean_start=False, properties=props)
        self.client.subscribe(topics.inbox_filter(CTX, STALLED), qos=1)
        self.client.loop(timeout=0.5)  # sends SUBSCRIBE, reads SUBACK; from now on, nothing

    def leave(self) -> None:
        """Disconnect; the broker keeps the session and queues for it."""
        self.client.disconnect()
        self.client.loop(timeout=0.1)


class Flooder:
    """A paho client logged in as the flooding neighbour, publishing as fast as it can."""

    def __init__(self, port: int, password: str) -> None:
        self.client = login(port, f"{CTX}.{FLOODER}", password)
        self.topic = topics.inbox(CTX, VICTIM, FLOODER)
        self.sent = 0
        self.bytes = 0
        self.rng = random.Random(0)

    def payloads(self, kind: str) -> list[bytes]:
        if kind == "big":  # the largest packet the broker takes, less topic and headers
            size = MIB - len(self.topic) - 64
            return [self.rng.randbytes(size) for _ in range(4)]
        unsigned = [
            encode_frame(
                Frame(
                    context=CTX,
                    source=FLOODER,
                    round=r,
                    step_start=0,
                    model_version=1,
                    embeddings=np.ones((2, 5), np.float32),
                )
            )
            for r in range(4)
        ]
        return unsigned + [self.rng.randbytes(self.rng.randint(40, 200)) for _ in range(4)]

    def flood(self, kind: str, qos: int, seconds: float) -> None:
        self.topic = topics.inbox(CTX, VICTIM if kind in ("small", "big") else STALLED, FLOODER)
        payloads = self.payloads("small" if kind == "small" else "big")
        pending: list[mqtt.MQTTMessageInfo] = []
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            payload = payloads[i % len(payloads)]
            i += 1
            info = self.client.publish(self.topic, payload, qos=qos)
            self.sent += 1
            self.bytes += len(payload)
            if qos:
                pending.append(info)
            # Drive the socket ourselves: bounded memory here, as fast as the broker reads.
            while self.client.want_write():
                self.client.loop_write()
            self.client.loop_read()
            self.client.loop_misc()
            while qos and len(pending) >= 20:
                pending = [p for p in pending if not p.is_published()]
                if len(pending) >= 20:
                    self.client.loop(timeout=0.01)

    def close(self) -> None:
        self.client.disconnect()
        while self.client.want_write():
            self.client.loop_write()


# -- the drill ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out or tempfile.mkdtemp(prefix="osml-flood-"))
    out.mkdir(parents=True, exist_ok=True)
    if find_mosquitto() is None:
        raise SystemExit("mosquitto not found: apt-get install -y mosquitto")
    port = free_port()
    run_as = "root" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
    init_broker_dir(fleet_file(out / "fleet.toml"), out / "broker", port=port, run_as=run_as)
    creds = out / "broker" / "credentials"
    url = f"mqtt://127.0.0.1:{port}"
    procs: list[FleetProcess] = []
    env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "agent")}
    try:
        mosquitto = find_mosquitto()
        assert mosquitto is not None
        broker = spawn(
            "broker", [mosquitto, "-c", str(out / "broker" / "mosquitto.conf")], out / "b.log", env
        )
        procs.append(broker)
        wait_for_port(port, broker)
        configs = {
            VICTIM: agent_config(out, VICTIM, "0", url, args),
            HONEST: agent_config(out, HONEST, "1", url, args),
        }
        for name, cfg in configs.items():
            cmd = [sys.executable, "-m", "osml.cli", "agent", "--config", str(cfg)]
            procs.append(spawn(name, cmd, cfg.parent / "agent.log", env))
        pids = {p.name: p.popen.pid for p in procs}
        deadline = time.monotonic() + 60
        while rounds_done(configs[VICTIM]) < 2:
            if time.monotonic() > deadline or any(p.popen.poll() is not None for p in procs):
                raise RuntimeError(f"the agents did not start; see the logs in {out}")
            time.sleep(0.2)
        flooder = Flooder(port, (creds / f"{CTX}.{FLOODER}.pass").read_text().strip())
        stalled = Stalled(port, (creds / f"{CTX}.{STALLED}.pass").read_text().strip())
        times: dict[str, tuple[float, float]] = {}
        with Sampler(pids).running() as sampler:
            time.sleep(args.warmup)
            for phase in args.phases.split(","):
                kind, _, qos = phase.partition(":")
                if kind not in ("small", "big", "stalled", "offline"):
                    raise SystemExit(f"--phases: unknown kind {kind!r} in {phase!r}")
                if kind == "offline":
                    stalled.leave()
                sampler.phase = phase
                start = time.time()
                flooder.flood(kind, int(qos or 0), args.seconds)
                times[phase] = (start, time.time())
            flooder.close()
            sampler.phase = "rest"
            start = time.time()
            time.sleep(args.rest)
            times["rest"] = (start, time.time())
        alive = {p.name: p.popen.poll() is None for p in procs}
    finally:
        stop_processes(procs)
    records = read_rounds(configs[VICTIM].parent / "state")
    return summarize(args, sampler, times, records, alive, flooder, out)


def summarize(
    args: argparse.Namespace,
    sampler: Sampler,
    times: dict[str, tuple[float, float]],
    records: list[Any],
    alive: dict[str, bool],
    flooder: Flooder,
    out: Path,
) -> dict[str, Any]:
    before = {n: statistics.median(sampler.values(n, "warmup")) for n in sampler.pids}
    phases: dict[str, Any] = {}
    for phase, (start, end) in times.items():
        # A round ending in the phase (or up to a round after it) exchanged during the flood.
        recs = [r for r in records if start < r.time <= end]
        vals = {n: sampler.values(n, phase) for n in sampler.pids}
        phases[phase] = {
            "rounds": len(recs),
            "rounds_without_honest": sum(HONEST in r.missing for r in recs),
            "rss_max": {n: max(v, default=None) for n, v in vals.items()},
            "rss_last": {n: (v[-1] if v else None) for n, v in vals.items()},
        }
    last = records[-1] if records else None
    flood_phases = [p for p in times if p != "rest"]
    checks = {
        "victim_after_within_20MiB": phases["rest"]["rss_last"][VICTIM] - before[VICTIM] <= 20,
        "victim_during_bounded": all(
            phases[p]["rss_max"][VICTIM] - before[VICTIM] <= args.max_victim_growth
            for p in flood_phases
        ),
        "every_round_heard_honest": all(phases[p]["rounds_without_honest"] == 0 for p in times)
        and all(phases[p]["rounds"] > 0 for p in times),
        "broker_within_limit": max((phases[p]["rss_max"]["broker"] for p in times), default=0)
        <= args.max_broker,
        "agents_alive": all(alive.values()),
    }
    return {
        "out": str(out),
        "broker_limits": {k: v for k, v in TUNING if k.startswith(("max_", "memory", "message"))},
        "before": before,
        "phases": phases,
        "flooder": {"messages": flooder.sent, "bytes": flooder.bytes},
        "victim_rejected": last.rejected if last else {},
        "victim_mutes": [
            line.split(": ", 1)[-1]
            for line in (out / VICTIM / "agent.log").read_text(errors="replace").splitlines()
            if " floods (" in line
        ],
        "checks": checks,
        "ok": all(checks.values()),
    }


def report(result: dict[str, Any]) -> str:
    b = result["before"]
    lines = [
        f"run directory {result['out']}",
        f"broker limits {result['broker_limits']}",
        f"before: victim {b[VICTIM]:.0f} MiB, honest {b[HONEST]:.0f} MiB, "
        f"broker {b['broker']:.0f} MiB",
        "phase      rounds  without-h  victim max/last MiB  broker max/last MiB",
    ]
    for phase, p in result["phases"].items():
        mx, ls = p["rss_max"], p["rss_last"]
        lines.append(
            f"{phase:<10} {p['rounds']:>6}  {p['rounds_without_honest']:>9}  "
            f"{mx[VICTIM]:>8.0f} / {ls[VICTIM]:<8.0f}  {mx['broker']:>8.0f} / {ls['broker']:.0f}"
        )
    f = result["flooder"]
    lines.append(f"flooder sent {f['messages']} messages, {f['bytes'] / MIB:.0f} MiB")
    lines.append(f"victim rejected {json.dumps(result['victim_rejected'], sort_keys=True)}")
    lines += [f"victim muted: {m}" for m in result["victim_mutes"]]
    lines += [f"{'PASS' if ok else 'FAIL'} {name}" for name, ok in result["checks"].items()]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--phases",
        default="small:0,big:0,big:1,stalled:0,stalled:1,offline:1",
        help="KIND:QOS,... (small, big, stalled, offline)",
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--warmup", type=float, default=6.0, help="seconds measured before")
    ap.add_argument("--rest", type=float, default=10.0, help="seconds measured after")
    ap.add_argument("--deadline", type=float, default=5.0, help="rounds.deadline of the victim")
    ap.add_argument(
        "--honest-deadline",
        type=float,
        default=10.0,
        help="rounds.deadline of the honest agent (longer than the victim's rounds, so that the "
        "victim, who waits for the silent f every round, paces both)",
    )
    ap.add_argument("--interval", type=float, default=0.5, help="rounds.interval of the agents")
    ap.add_argument("--max-victim-growth", type=float, default=40.0, help="MiB during a flood")
    ap.add_argument("--max-broker", type=float, default=128.0, help="MiB of broker RSS")
    ap.add_argument("--out", help="run directory (default: a new temporary one)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    result = run(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
