"""``osml run``: a whole fleet on one machine, every agent its own process, over a real broker.

The orchestrator only *starts* things and *watches*: a private Mosquitto on a free loopback port
(unless ``--broker`` names one), one trainer process (or ``FleetOptions.trainers`` of them, agent
``i`` served by trainer ``i % trainers``), one ``osml agent`` process per agent with its own TOML
config and state directory. The agents run their rounds on their own, talking only
through the broker; the orchestrator follows their ``metrics`` topics to print a live line per
round, waits for them to finish, stops everything by PID, and assembles the same run directory
as ``osml simulate`` from what the agents left in their state directories.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from osml.agent.data import Dataset, windows
from osml.agent.embstore import read_store
from osml.agent.records import RoundRecord
from osml.agent.sources import SourceSpec
from osml.agent.state import read_rounds
from osml.agent.trainer_client import TrainerClient
from osml.core.similarity import centered_alignment, strict_alignment
from osml.core.topology import neighbours as topology_neighbours
from osml.errors import ConfigError, OsmlError, TransportError
from osml.files import check_private
from osml.net.broker import MosquittoProcess, find_mosquitto, tail_lines
from osml.net.embedded_broker import EmbeddedBroker, amqtt_available
from osml.net.transport import BrokerSettings, Transport
from osml.ops.brokers import run_logins
from osml.ops.live import LiveOptions, LiveReplay, assemble_live
from osml.ops.rows import FIGURES, FinalSection, ReportRound, RunResult, evaluate, report_round
from osml.ops.simulate import SimulationSettings
from osml.wire import topics

__all__ = [
    "SIGNING_KEY_FILE",
    "BrokerAccess",
    "FleetOptions",
    "FleetProcess",
    "agent_toml",
    "run_fleet",
    "spawn",
    "start_trainers",
    "stop_processes",
    "write_signing_key",
]

SIGNING_KEY_FILE = "signing.key"  # in the fleet's work directory, when FleetOptions.sign is set


Login = tuple[str | None, Path | None]  # broker user name and its password file


@dataclass(frozen=True)
class BrokerAccess:
    """How the processes of a run log in to ``--broker``: one ``username`` and
    ``password_file`` for all, or with ``broker_dir`` (made by ``osml broker init``) each agent
    as its own user ``<context>.<id>`` and the orchestrator as the monitor user; TLS with
    ``ca_file`` and an optional client certificate (``cert_file`` + ``key_file``) for all."""

    username: str | None = None
    password_file: Path | None = None
    broker_dir: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if self.broker_dir is not None and (self.username or self.password_file):
            raise ConfigError(
                "--broker-dir gives every agent its own user: leave out --username and "
                "--password-file"
            )
        if self.password_file is not None and self.username is None:
            raise ConfigError("--password-file needs --username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("--cert and --key go together (a client certificate and its key)")
        for path, what in ((self.password_file, "--password-file"), (self.key_file, "--key")):
            if path is not None:
                check_private(path, what)

    @property
    def given(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    def logins(
        self, context: str, links: Mapping[str, Sequence[str]]
    ) -> tuple[dict[str, Login], Login]:
        """Each agent's login and the orchestrator's (ConfigError if --broker-dir lacks one)."""
        if self.broker_dir is None:
            login = (self.username, self.password_file)
            return {a: login for a in links}, login
        found = run_logins(self.broker_dir, context, {a: list(n) for a, n in links.items()})
        return dict(found.agents), found.monitor

    def broker_lines(self, login: Login) -> list[str]:
        """The ``[broker]`` keys of an agent's config for ``login``, besides url and protocol."""
        user, password = login
        keys = [
            ("username", user),
            ("password_file", password),
            ("ca_file", self.ca_file),
            ("cert_file", self.cert_file),
            ("key_file", self.key_file),
        ]
        return [f"{k} = {_q(str(v))}" for k, v in keys if v is not None]

    def settings(self, url: str, protocol: str, login: Login) -> BrokerSettings:
        user, password = login
        return BrokerSettings(
            url=url,
            protocol=protocol,
            username=user,
            password=None if password is None else password.read_text().strip(),
            ca_file=None if self.ca_file is None else str(self.ca_file),
            cert_file=None if self.cert_file is None else str(self.cert_file),
            key_file=None if self.key_file is None else str(self.key_file),
        )


@dataclass(frozen=True)
class FleetOptions:
    broker_url: str | None = None  # None: start a private Mosquitto
    drop_rate: float = 0.0
    deadline: float = 10.0
    train_wait: float = 60.0
    protocol: str = "5"
    timeout: float = 3600.0  # give up on the whole run after this many seconds
    env: dict[str, str] = field(default_factory=dict)
    trainers: int = 1  # trainer processes; agent i is served by trainer i % trainers
    steps: int = 0  # rounds.steps: windows per round, the latest ones (0: all)
    interval: float = 0.0  # rounds.interval: minimum seconds per round
    count: int | None = None  # rounds.count; None: settings.rounds (0: run until stopped)
    trainer_settings: dict[str, object] = field(
        default_factory=dict
    )  # more [trainer.settings] keys
    sign: bool = False  # sign frames with a fresh per-run key, and require signatures
    live: LiveOptions | None = None  # replay the data as live sensor streams (osml run --live)
    access: BrokerAccess = field(default_factory=BrokerAccess)  # logins and TLS for --broker

    def __post_init__(self) -> None:
        if self.trainers < 1:
            raise ValueError(f"trainers must be >= 1, got {self.trainers}")
        if self.access.given and not self.broker_url:
            raise ConfigError(
                "--username, --password-file, --broker-dir, --ca, --cert and --key are for "
                "--broker: the private broker needs none"
            )
        if self.access.given and self.live is not None and self.live.source == "mqtt":
            raise ConfigError(
                "--live --source mqtt publishes readings without credentials: use --source "
                "tail or exec with a broker that needs them"
            )
        if self.steps < 0 or self.interval < 0 or (self.count is not None and self.count < 0):
            raise ValueError("steps, interval and count must be >= 0")


def _q(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _q(value)
    raise ValueError(f"cannot write {value!r} as a TOML value: use a string, number or boolean")


def write_signing_key(path: Path) -> Path:
    """A fresh random 32-byte HMAC key, as 64 hex digits, in a file only the owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        os.write(fd, (secrets.token_hex(32) + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return path


def agent_toml(
    agent_id: str,
    index: int,
    data_source: str,
    data_seed: int,
    links: Sequence[str],
    settings: SimulationSettings,
    broker_url: str,
    state_dir: Path,
    eval_dir: Path | None,
    socket: Path,
    options: FleetOptions,
    signing_key: Path | None = None,
    live_data: Sequence[str] | None = None,
    login: Login = (None, None),
) -> str:
    """The config file of one agent of the fleet (``eval_dir``: where it saves per-round
    evaluations, None for none; ``signing_key``: the ``[signing]`` key file; ``live_data``: the
    ``[data]`` table of a live source, replacing the file source; ``login``: its broker user and
    password file, with the TLS files of ``options.access``)."""
    tset = settings.trainer
    arch = settings.architectures.get(agent_id, getattr(tset, "architecture", "mlp"))
    objective = getattr(tset, "objective", "vc")
    count = settings.rounds if options.count is None else options.count
    extra_rounds = ([f"steps = {options.steps}"] if options.steps else []) + (
        [f"interval = {options.interval}"] if options.interval else []
    )
    if options.live is not None:
        extra_rounds.append(f"period = {options.live.period}")
    trainer_extra = [
        f"{k} = {_toml_value(v)}" for k, v in options.trainer_settings.items() if k != "objective"
    ]
    signing = (
        ["", "[signing]", f"key_file = {_q(str(signing_key))}", "require = true"]
        if signing_key
        else []
    )
    return "\n".join(
        [
            "[agent]",
            f"id = {_q(agent_id)}",
            f"context = {_q(settings.context)}",
            f"state_dir = {_q(str(state_dir))}",
            "",
            "[broker]",
            f"url = {_q(broker_url)}",
            f"protocol = {_q(options.protocol)}",
            *options.access.broker_lines(login),
            "",
            "[neighbours]",
            "ids = [" + ", ".join(_q(n) for n in links) + "]",
            "",
            *(
                live_data
                or [
                    "[data]",
                    f"source = {_q(data_source)}",
                    f"agent = {_q(agent_id)}",
                    f"seed = {data_seed}",
                ]
            ),
            "",
            "[model]",
            f"architecture = {_q(arch)}",
            f"window = {settings.window}",
            f"embedding_dim = {settings.embedding_dim}",
            f"seed = {settings.seed * 1000 + index}",
            f"anchor_norm = {settings.anchor_norm}",
            "",
            "[rounds]",
            f"count = {count}",
            *extra_rounds,
            f"deadline = {options.deadline}",
            f"train_wait = {options.train_wait}",
            *([f"eval_dir = {_q(str(eval_dir))}"] if eval_dir else []),
            "",
            "[trainer]",
            f"socket = {_q(str(socket))}",
            "",
            "[trainer.settings]",
            f"objective = {_q(objective)}",
            *trainer_extra,
            "",
            "[testing]",
            f"drop_rate = {options.drop_rate}",
            *signing,
            "",
        ]
    )


@dataclass
class FleetProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


def spawn(name: str, args: list[str], log: Path, env: dict[str, str]) -> FleetProcess:
    """Start ``args`` in a session of its own (Ctrl-C on the terminal reaches only us; we stop it
    by PID), output appended to ``log``."""
    with open(log, "ab") as fh:  # the child keeps its own copy of the descriptor
        p = subprocess.Popen(
            args,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            start_new_session=True,
        )
    return FleetProcess(name, p, log)


def start_trainers(
    workdir: Path, count: int, env: dict[str, str], started: list[FleetProcess]
) -> list[Path]:
    """Start ``count`` trainer processes (state and log in ``workdir/trainer[-k]``) and wait until
    each answers; returns their sockets. Each process is appended to ``started`` as soon as it
    exists, so the caller's cleanup stops it even when a later one fails to start."""
    stamp = f"{os.getpid()}-{int(time.time() * 1000) % 100000}"
    pending: list[tuple[FleetProcess, Path]] = []
    for k in range(count):
        name = "trainer" if k == 0 else f"trainer-{k}"
        # sun_path is short (108 bytes): the sockets live in /tmp, not in the work directory.
        socket = Path(f"/tmp/osml-{stamp}{'' if k == 0 else f'-{k}'}.sock")
        (workdir / name).mkdir(parents=True, exist_ok=True)
        proc = spawn(
            name,
            [
                sys.executable,
                "-m",
                "osml.cli",
                "trainer",
                "--socket",
                str(socket),
                "--state-dir",
                str(workdir / name),
            ],
            workdir / name / "trainer.log",
            env,
        )
        started.append(proc)
        pending.append((proc, socket))
    deadline = time.monotonic() + 60 + 10 * count
    for proc, socket in pending:
        client = TrainerClient(socket, timeout=5.0)
        while not client.ping():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise OsmlError(f"the {proc.name} did not start: {_tail(proc.log)}")
            time.sleep(0.2)
    return [socket for _, socket in pending]


def stop_processes(procs: Sequence[FleetProcess], grace: float = 10.0) -> None:
    """SIGTERM every process still running, SIGKILL those not gone after ``grace`` seconds."""
    for p in procs:
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def _tail(path: Path) -> str:
    """A process log's last lines on one line, for error messages."""
    return " | ".join(tail_lines(path, 5).strip().splitlines())


def run_fleet(
    data_spec: str,
    dataset: Dataset,
    agent_ids: Sequence[str],
    settings: SimulationSettings,
    workdir: Path,
    options: FleetOptions = FleetOptions(),
    progress: Callable[[ReportRound], None] | None = None,
    notice: Callable[[str], None] = lambda s: None,
) -> RunResult:
    """Run the fleet to completion; returns the same result as :func:`osml.ops.simulate.simulate`
    (``progress`` gets a live row per round, with only the alignment figures)."""
    ids = list(agent_ids)
    links = topology_neighbours(ids, settings.topology, settings.seed)
    logins, monitor_login = options.access.logins(settings.context, links)
    workdir = workdir.resolve()
    # A run starts afresh: agents resume from state they find, so clear what a previous run
    # into the same directory left (only the sub-directories this function creates).
    for sub in (
        "agents",
        "broker",
        *(("trainer" if k == 0 else f"trainer-{k}") for k in range(options.trainers)),
    ):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    broker: MosquittoProcess | EmbeddedBroker | None = None
    replay: LiveReplay | None = None
    procs: list[FleetProcess] = []
    monitor: Transport | None = None
    env = {"PYTHONUNBUFFERED": "1", **options.env}
    t0 = time.perf_counter()
    wall0 = time.time()
    try:
        if options.broker_url:
            url = options.broker_url
        elif find_mosquitto() is not None:
            broker = MosquittoProcess(workdir / "broker")
            broker.start()
            url = broker.url
            notice(f"private Mosquitto on {url} (pid {broker.pid})")
        elif amqtt_available():
            broker = EmbeddedBroker(workdir / "broker")
            broker.start()
            url = broker.url
            options = dataclasses.replace(options, protocol=EmbeddedBroker.protocol)
            notice(
                f"no mosquitto binary: using the embedded pure-Python broker on {url} "
                "(MQTT 3.1.1, slower; apt-get install mosquitto for real runs)"
            )
        else:
            raise TransportError(
                "no mosquitto binary found: apt-get install mosquitto, pip install "
                "'osml[embedded-broker]', or pass --broker mqtt://HOST:PORT"
            )
        # The orchestrator connects first: wrong credentials or TLS files fail in one line
        # before any trainer or agent starts.
        monitor = Transport(
            options.access.settings(url, options.protocol, monitor_login),
            f"osml-run-{os.getpid()}",
            subscriptions=[topics.metrics_filter(settings.context)],
            persistent=False,
        )
        monitor.connect()
        sockets = start_trainers(workdir, options.trainers, env, procs)
        key = write_signing_key(workdir / SIGNING_KEY_FILE) if options.sign else None
        source = str(SourceSpec.from_cli(data_spec))
        live = options.live
        if live is not None:
            replay = LiveReplay(
                data_spec,
                dataset,
                ids,
                live,
                context=settings.context,
                seed=settings.seed,
                window=settings.window,
                rounds=settings.rounds,
                workdir=workdir,
            )
            options = dataclasses.replace(options, count=replay.rounds)
            notice(
                f"live: {live.source} streams at {live.speed:g}x, "
                f"{replay.rounds} rounds of {live.period_steps} steps"
                + (f" (the recording played {replay.loops} times)" if replay.loops > 1 else "")
            )
        for i, aid in enumerate(ids):
            adir = workdir / "agents" / aid
            adir.mkdir(parents=True, exist_ok=True)
            cfg = adir / "agent.toml"
            cfg.write_text(
                agent_toml(
                    aid,
                    i,
                    source,
                    settings.seed,
                    links[aid],
                    settings,
                    url,
                    adir / "state",
                    adir / "eval",
                    sockets[i % len(sockets)],
                    options,
                    key,
                    replay.data_lines(aid, dataset[aid].n_features) if replay else None,
                    logins[aid],
                )
            )
        for aid in ids:
            adir = workdir / "agents" / aid
            procs.append(
                spawn(
                    f"agent {aid}",
                    [
                        sys.executable,
                        "-m",
                        "osml.cli",
                        "agent",
                        "--config",
                        str(adir / "agent.toml"),
                    ],
                    adir / "agent.log",
                    env,
                )
            )
        if replay is not None:
            replay.start(BrokerSettings(url=url, protocol=options.protocol))
        seen: dict[int, dict[str, RoundRecord]] = {}
        shown = -1
        sent_before = {a: 0 for a in ids}
        subcontexts = {a: sorted([a, *links[a]]) for a in ids}
        agents = [p for p in procs if p.name.startswith("agent")]
        while any(p.popen.poll() is None for p in agents):
            if time.perf_counter() - t0 > options.timeout:
                raise OsmlError(f"the run did not finish within {options.timeout:.0f} s")
            for p in agents:
                code = p.popen.poll()
                if code not in (None, 0):
                    raise OsmlError(f"{p.name} exited with code {code}: {_tail(p.log)}")
            msg = monitor.get(timeout=0.5)
            if msg is None:
                continue
            parsed = topics.parse_agent_topic(msg.topic)
            if parsed is None:
                continue
            try:
                rec = RoundRecord.from_json(json.loads(msg.payload))
            except ValueError:
                continue
            seen.setdefault(rec.round, {})[parsed[1]] = rec
            if replay is not None:  # live rounds are numbered by the clock: show them in order
                done = sorted(k for k, v in seen.items() if len(v) == len(ids))
                for k in done:
                    recs = seen.pop(k)
                    shown += 1
                    row = report_round(
                        shown,
                        _store_figures(workdir, ids, recs, settings.embedding_dim),
                        subcontexts,
                        {a: r.embedded_with for a, r in recs.items()},
                        recs,
                        sent_before,
                        wall0,
                    )
                    if progress:
                        progress(row)
                    subcontexts = row.subcontexts
                    sent_before = {a: r.bytes_out for a, r in recs.items()}
                continue
            while progress and len(seen.get(shown + 1, {})) == len(ids):
                shown += 1
                recs = seen.pop(shown)
                row = report_round(
                    shown,
                    _live_figures(workdir, ids, shown),
                    subcontexts,
                    {a: r.embedded_with for a, r in recs.items()},
                    recs,
                    sent_before,
                    wall0,
                )
                progress(row)
                subcontexts = row.subcontexts
                sent_before = {a: r.bytes_out for a, r in recs.items()}
        for p in agents:
            if p.popen.returncode != 0:
                raise OsmlError(f"{p.name} exited with code {p.popen.returncode}: {_tail(p.log)}")
    finally:
        if replay is not None:
            replay.stop()
        if monitor is not None:
            monitor.close()
        stop_processes(procs)
        if broker is not None:
            broker.stop()
    elapsed = time.perf_counter() - t0
    if replay is not None:
        return assemble_live(
            workdir, dataset, ids, links, settings.window, settings.topology, elapsed, wall0
        )
    return assemble(workdir, dataset, ids, links, settings, elapsed, wall0)


def _alignment_figures(emb: Mapping[str, np.ndarray], ids: Sequence[str]) -> dict[str, Any]:
    """The display's figures: strict and centred alignment between every pair of agents on the
    same steps (the others left empty until the report is assembled)."""
    figures: dict[str, Any] = {k: {} for k in FIGURES}
    figures["strict_alignment"] = {
        a: {b: strict_alignment(emb[a], emb[b]) for b in ids if b != a} for a in ids
    }
    figures["centered_alignment"] = {
        a: {b: centered_alignment(emb[a], emb[b]) for b in ids if b != a} for a in ids
    }
    return figures


def _store_figures(
    workdir: Path, ids: Sequence[str], recs: Mapping[str, RoundRecord], dim: int
) -> dict[str, Any]:
    """Strict and centred alignment of a live round, for the live display: on the steps every
    agent embedded this round, read from their embedding stores (the report evaluates the final
    models on the test rows instead)."""
    figures: dict[str, Any] = {k: {} for k in FIGURES}
    n = min((r.steps for r in recs.values()), default=0)
    if n < 2:
        return figures
    rows = {}
    for a in ids:
        got = read_store(workdir / "agents" / a / "state" / "embeddings", dim)
        got = got.take(slice(max(len(got) - n, 0), None))
        rows[a] = dict(zip(got.step.tolist(), got.vector))
    common = sorted(set.intersection(*(set(r) for r in rows.values())))
    if len(common) < 2:
        return figures
    return _alignment_figures({a: np.stack([rows[a][k] for k in common]) for a in ids}, ids)


def _live_figures(workdir: Path, ids: Sequence[str], rnd: int) -> dict[str, Any]:
    """Strict and centred test alignment of round ``rnd`` from the agents' eval files, for the
    live display (the orchestrator runs on the same machine; the agents never compute this).
    The other figures are left empty until the report is assembled."""
    figures: dict[str, Any] = {k: {} for k in FIGURES}
    try:
        emb = {
            a: np.load(workdir / "agents" / a / "eval" / f"test-{rnd:04d}.npy", allow_pickle=False)
            for a in ids
        }
    except (OSError, ValueError):
        return figures
    return _alignment_figures(emb, ids)


def assemble(
    workdir: Path,
    dataset: Dataset,
    ids: list[str],
    links: dict[str, list[str]],
    settings: SimulationSettings,
    elapsed: float,
    started: float | None = None,
) -> RunResult:
    """The run's report from what the agents left in their state and eval directories: the same
    rows :func:`osml.ops.simulate.simulate` builds, from the same records."""
    w = settings.window
    train_last = {a: np.asarray(windows(dataset[a].train, w))[:, -1, :] for a in ids}
    test_last = {a: np.asarray(windows(dataset[a].test, w))[:, -1, :] for a in ids}
    records: dict[str, dict[int, RoundRecord]] = {}
    for a in ids:
        records[a] = {}
        for rec in read_rounds(workdir / "agents" / a / "state"):
            records[a][rec.round] = rec  # a resumed agent may repeat a round: keep the last
    rows: list[ReportRound] = []
    subcontexts = {a: sorted([a, *links[a]]) for a in ids}
    versions = {a: 0 for a in ids}
    bytes_before = {a: 0 for a in ids}
    ev = {a: workdir / "agents" / a / "eval" for a in ids}
    for r in range(settings.rounds + 1):
        if not all((ev[a] / f"test-{r:04d}.npy").exists() for a in ids):
            break
        train_emb = {a: np.load(ev[a] / f"train-{r:04d}.npy", allow_pickle=False) for a in ids}
        test_emb = {a: np.load(ev[a] / f"test-{r:04d}.npy", allow_pickle=False) for a in ids}
        figures = evaluate(train_emb, test_emb, train_last, test_last, subcontexts)
        recs = {a: records[a][r] for a in ids if r in records[a]}
        if len(recs) == len(ids):
            row = report_round(
                r,
                figures,
                subcontexts,
                {a: rec.embedded_with for a, rec in recs.items()},
                recs,
                bytes_before,
                started,
            )
            subcontexts = row.subcontexts
            versions = {a: rec.model_version for a, rec in recs.items()}
            bytes_before = {a: rec.bytes_out for a, rec in recs.items()}
        else:
            row = report_round(r, figures, subcontexts, versions)
        rows.append(row)
    if not rows:
        raise OsmlError(f"no agent evaluation found under {workdir / 'agents'}")
    last = rows[-1].round
    final_test = {
        a: np.load(workdir / "agents" / a / "eval" / f"test-{last:04d}.npy", allow_pickle=False)
        for a in ids
    }
    return RunResult(
        dataset=dataset.name,
        agents=ids,
        topology=settings.topology,
        neighbours=links,
        rounds=rows,
        final=FinalSection.of(rows),
        embeddings=final_test,
        elapsed_s=round(elapsed, 1),
        workdir=str(workdir),
    )
