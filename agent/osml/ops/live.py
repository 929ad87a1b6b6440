"""``osml run --live``: a recording replayed as live sensor streams into a fleet of agents.

Each device's training rows become readings (:mod:`osml.ops.replay`) that one feeder per device
delivers through a real source (:mod:`osml.ops.feeders`): published on an MQTT topic of the
fleet's broker (``mqtt``), appended to a file the agent tails (``tail``), or printed by a replay
command the agent runs (``exec``). Time runs ``speed`` times faster than the wall clock, so the
agents take "now" from the replay's clock (``[data] clock = "replay"``); devices may get clock
skew, jitter and dropped readings, and faults can be injected into one device's stream. At the
end the final models are evaluated on the dataset's test rows exactly as in a file run.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from osml.agent.data import Dataset, windows
from osml.agent.inference import OnnxEncoder
from osml.agent.records import RoundRecord
from osml.errors import ConfigError
from osml.net.transport import BrokerSettings
from osml.ops.feeders import FileFeeder, MqttFeeder, exec_argv, exec_spec
from osml.ops.replay import Fault, ReplayPlan, parse_fault, replay_rows
from osml.ops.rows import FIGURES, FinalSection, ReportRound, RunResult, evaluate, report_round

__all__ = ["SOURCE_KINDS", "LiveOptions", "LiveReplay", "assemble_live", "sensor_topic"]

SOURCE_KINDS = ("mqtt", "tail", "exec")


@dataclass(frozen=True)
class LiveOptions:
    speed: float = 50.0  # times real time
    step_seconds: float = 1.0
    period_steps: int = 40  # steps per round
    source: str = "mqtt"  # how each device's readings reach its agent: mqtt, tail or exec
    max_skew: float = 0.0  # each device's clock off by a random amount in [-max_skew, max_skew] s
    jitter: float = 0.0  # seconds of spread of each reading within its step
    drop_readings: float = 0.0  # share of readings never sent
    faults: tuple[str, ...] = ()  # AGENT:KIND@STEP[:ARG] (stuck, spike, offset, noise, switch)
    lead: float = 4.0  # seconds between starting the agents and the first reading
    skews: dict[str, float] = field(default_factory=dict)  # filled in by LiveReplay

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.speed) and self.speed >= 1, "--speed must be >= 1"),
            (math.isfinite(self.step_seconds) and self.step_seconds > 0, "step must be > 0"),
            (self.period_steps >= 1, "--period must be >= 1 step"),
            (self.source in SOURCE_KINDS, f"--source is one of {', '.join(SOURCE_KINDS)}"),
            (0 <= self.max_skew < self.step_seconds, "--max-skew must be below one step"),
            (0 <= self.jitter < self.step_seconds, "--jitter must be below one step"),
            (0 <= self.drop_readings < 1, "--drop-readings must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for spec in self.faults:
            parse_fault(spec)  # ConfigError with the fix

    @property
    def period(self) -> float:
        return self.period_steps * self.step_seconds


def sensor_topic(context: str, agent: str) -> str:
    """Where a device's raw readings go in a live run (the fleet's own broker, loopback)."""
    return f"sensors/{context}/{agent}"


class LiveReplay:
    """The feeders of one live run and the ``[data]`` lines each agent needs to read them."""

    def __init__(
        self,
        data_spec: str,
        dataset: Dataset,
        ids: Sequence[str],
        options: LiveOptions,
        *,
        context: str,
        seed: int,
        window: int,
        rounds: int,
        workdir: Path,
    ) -> None:
        self.ids = list(ids)
        self.options = options
        self.context = context
        self.workdir = workdir
        self.data_spec = data_spec
        self.seed = seed
        rng = random.Random(seed)
        self.skews = {a: rng.uniform(-options.max_skew, options.max_skew) for a in self.ids}
        self.faults: list[Fault] = [parse_fault(f) for f in options.faults]
        for f in self.faults:
            if f.agent not in self.ids:
                raise ConfigError(f"--inject-fault {f.agent}: no such agent in this run")
        self.rows = replay_rows(dataset, self.faults, seed=seed)
        shortest = min(len(self.rows[a]) for a in self.ids)
        if shortest < 2 * window + options.period_steps:
            raise ConfigError(
                f"the data has {shortest} training rows: too few for rounds of "
                f"{options.period_steps} steps; use --period with fewer steps"
            )
        # Rounds need their period of data plus a warm-up for the first model; a recording too
        # short for the rounds asked for is played again from its start (as one long stream).
        need = (rounds + 3) * options.period_steps
        if shortest < need:
            loops = -(-need // shortest)
            self.rows = {a: np.concatenate([r[:shortest]] * loops) for a, r in self.rows.items()}
        self.rounds = rounds
        self.loops = max(1, -(-need // shortest))
        self.at = time.time() + options.lead
        self.plan = ReplayPlan(
            step_seconds=options.step_seconds,
            speed=options.speed,
            skew=self.skews,
            jitter="uniform" if options.jitter else "none",
            jitter_s=options.jitter,
            drop_rate=options.drop_readings,
            seed=seed,
        ).resolved(self.at)
        self.feeders: list[Any] = []

    def data_lines(self, agent: str, n_features: int) -> list[str]:
        """The agent's ``[data]`` table (as TOML lines) for its live source."""
        o, q = self.options, json.dumps
        if o.source == "mqtt":
            source = f"mqtt:{sensor_topic(self.context, agent)}"
        elif o.source == "tail":
            source = f"tail:{self.feed_file(agent)}"
        else:
            source = exec_spec(
                exec_argv(
                    self.data_spec,
                    agent,
                    self.plan,
                    faults=self.faults,
                    data_seed=self.seed,
                    at=self.at,
                )
            )
        return [
            "[data]",
            f"source = {q(source)}",
            f"features = {n_features}",
            f"step_seconds = {o.step_seconds}",
            'clock = "replay"',
            f"replay_speed = {o.speed}",
            f"replay_start = {self.plan.start_time!r}",
            f"replay_origin = {self.at!r}",
            # The replay's clock is the data's: readings are checked against it.
            f"max_ahead_s = {max(10.0, 2 * o.step_seconds)}",
        ]

    def feed_file(self, agent: str) -> Path:
        return self.workdir / "agents" / agent / "sensor.jsonl"

    def start(self, broker: BrokerSettings) -> None:
        """Start one feeder per device (``exec`` sources run their replay themselves)."""
        o = self.options
        for a in self.ids:
            if o.source == "mqtt":
                feeder: Any = MqttFeeder(
                    self.rows[a],
                    self.plan,
                    a,
                    broker=broker,
                    topic=sensor_topic(self.context, a),
                    qos=1,
                    client_id=f"osml-feeder-{self.context}-{a}",
                )
            elif o.source == "tail":
                feeder = FileFeeder(self.rows[a], self.plan, a, path=self.feed_file(a))
            else:
                continue
            feeder.start(at=self.at)
            self.feeders.append(feeder)

    def stop(self) -> None:
        for f in self.feeders:
            f.stop()
        self.feeders.clear()


def assemble_live(
    workdir: Path,
    dataset: Dataset,
    ids: list[str],
    links: dict[str, list[str]],
    window: int,
    topology: str,
    elapsed: float,
    started: float,
) -> RunResult:
    """The report of a live run: a row per round from the agents' records (figures come only
    at the end), and a last row that evaluates every agent's final model on the dataset's
    train and test rows, exactly as a file run does."""
    from osml.agent.state import read_rounds  # the agents' records

    records: dict[str, dict[int, RoundRecord]] = {
        a: {r.round: r for r in read_rounds(workdir / "agents" / a / "state")} for a in ids
    }
    common = sorted(set.intersection(*(set(r) for r in records.values()))) if ids else []
    empty: dict[str, Any] = {k: {} for k in FIGURES}
    rows: list[ReportRound] = []
    subcontexts = {a: sorted([a, *links[a]]) for a in ids}
    bytes_before = {a: 0 for a in ids}
    for i, rnd in enumerate(common):
        recs = {a: records[a][rnd] for a in ids}
        row = report_round(
            i,
            empty,
            subcontexts,
            {a: r.embedded_with for a, r in recs.items()},
            recs,
            bytes_before,
            started,
        )
        subcontexts, rows = row.subcontexts, [*rows, row]
        bytes_before = {a: r.bytes_out for a, r in recs.items()}
    encoders = {a: OnnxEncoder.load(workdir / "agents" / a / "state" / "model.onnx") for a in ids}
    train_w = {a: np.asarray(windows(dataset[a].train, window)) for a in ids}
    test_w = {a: np.asarray(windows(dataset[a].test, window)) for a in ids}
    train_emb = {a: encoders[a].encode(train_w[a]) for a in ids}
    test_emb = {a: encoders[a].encode(test_w[a]) for a in ids}
    figures = evaluate(
        train_emb,
        test_emb,
        {a: train_w[a][:, -1, :] for a in ids},
        {a: test_w[a][:, -1, :] for a in ids},
        subcontexts,
    )
    last = report_round(
        len(rows), figures, subcontexts, {a: e.version for a, e in encoders.items()}
    )
    rows.append(last)
    return RunResult(
        dataset=dataset.name,
        agents=ids,
        topology=topology,
        neighbours=links,
        rounds=rows,
        final=FinalSection.of(rows),
        embeddings=test_emb,
        elapsed_s=round(elapsed, 1),
        workdir=str(workdir),
    )
