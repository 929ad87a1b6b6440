"""Agent configuration: a TOML file loaded into frozen, validated dataclasses.

Every problem is reported as one :class:`~osml.errors.ConfigError` line that names the key and
says how to fix it. Example (all keys but ``agent.id``, ``agent.context``, ``data.source`` and the
neighbours have defaults)::

    [agent]
    id = "0"
    context = "lab"
    state_dir = "/var/lib/osml/0"

    [broker]
    url = "mqtts://broker.lan:8883"     # or mqtt://HOST:PORT
    username = "0"
    password_file = "/etc/osml/0.pass"  # or password = "..."
    ca_file = "/etc/osml/ca.crt"
    protocol = "5"                      # or "3.1.1"

    [neighbours]
    ids = ["1", "2"]                    # or: topology = "ring" with all = ["0", "1", "2"]

    [data]
    source = "csv:/data/sensor.csv"     # or paper:DIR (with agent = "0"), generated:simple|complex
    test = "/data/sensor-test.csv"      # optional held-out file for csv sources

    [model]
    architecture = "mlp"                # mlp | gru | conv
    window = 10
    embedding_dim = 5

    [rounds]
    count = 0                           # 0: run forever
    deadline = 10.0                     # seconds to wait for the neighbours' frames
    train_wait = 30.0                   # seconds to wait for the trainer's new model

    [trainer]                           # leave it out (or socket = "") with model.path set
    socket = "/run/osml/trainer.sock"   # for a device that never trains: inference only

    [signing]                           # optional: HMAC-SHA256 frame signatures (osml.wire.signing)
    key_file = "/etc/osml/lab.key"      # this context's key; sign and verify with it
    previous_key_file = ""              # also accepted while a key change rolls out
    require = true                      # reject unsigned frames (false only while rolling out)

    [anomaly]                           # optional, live sources: per-step anomaly scores
    threshold = 6.0                     # flag a step whose robust z-score exceeds this
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from osml.agent.sources import SourceSpec, parse_source
from osml.agent.streams.spec import is_stream_spec, parse_stream_spec
from osml.core.anomaly import AnomalySettings
from osml.core.topology import neighbours as topology_neighbours
from osml.errors import ConfigError
from osml.net.transport import BrokerSettings
from osml.trainer.settings import ARCHITECTURE_NAMES, DEFAULT_ARCHITECTURE
from osml.wire.signing import load_key
from osml.wire.topics import NameKind, check_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "AgentConfig",
    "AgentSection",
    "DataSection",
    "ModelSection",
    "RoundsSection",
    "SigningSection",
    "TrainerSection",
    "load_config",
]


def _fail(key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}; {fix}")


@dataclass(frozen=True)
class AgentSection:
    id: str
    context: str
    state_dir: str = "state"

    def __post_init__(self) -> None:
        kinds: tuple[tuple[str, NameKind], ...] = (("id", "agent id"), ("context", "context"))
        for key, kind in kinds:
            try:
                check_name(kind, getattr(self, key))
            except ValueError as exc:
                raise _fail(f"agent.{key}", str(exc), "use a short name without / + #") from None


@dataclass(frozen=True)
class DataSection:
    source: str
    agent: str = ""
    test: str = ""
    seed: int = 0
    # Live sources (mqtt:TOPIC, tail:FILE, exec:COMMAND, stdin) only, see docs/agent.md:
    broker: str = ""  # mqtt: read readings from this broker URL (default: the agent's own)
    features: int = 0  # values per reading (required for a live source)
    step_seconds: float = 1.0  # step k covers [k*s, (k+1)*s) on the Unix epoch
    max_gap: int = 2  # steps without readings filled forward; a longer gap breaks windows
    grace: float = -1.0  # seconds a step stays open after its end (-1: one step)
    aggregate: str = "mean"  # readings of one step: mean, last or median
    capacity: int = 4096  # steps held in memory
    max_ahead_s: float = 10.0  # readings further ahead of the clock are refused (future)
    max_behind_s: float = 3600.0  # ... further behind it (past)
    max_disorder_s: float = 60.0  # ... older than the newest by more than this (disorder)
    stall_after: float = (
        0.0  # seconds without a reading before the source is "stalled" (0: 10 steps)
    )
    # The data's clock: "wall" on a device; "replay" for a recording played back `replay_speed`
    # times faster, data time = replay_start + (time.time() - replay_origin) * replay_speed.
    # Publish each round's embeddings and anomaly scores as JSON on this topic of the data
    # broker (the device's local one; "" = don't): results for local consumers.
    publish_topic: str = ""
    clock: str = "wall"
    replay_speed: float = 1.0
    replay_start: float = 0.0
    replay_origin: float = 0.0

    def __post_init__(self) -> None:
        if self.live:
            parse_stream_spec(self.source)  # ConfigError naming data.source
            if self.features < 1:
                raise _fail(
                    "data.features", "is required for a live source", "set the values per reading"
                )
            if self.step_seconds <= 0 or self.max_gap < 0 or self.capacity < 8:
                raise _fail(
                    "data.step_seconds/max_gap/capacity",
                    "out of range",
                    "step_seconds > 0, max_gap >= 0, capacity >= 8",
                )
            if self.clock not in ("wall", "replay") or self.replay_speed < 1:
                raise _fail(
                    "data.clock",
                    f"{self.clock!r} / speed {self.replay_speed}",
                    'use "wall", or "replay" with replay_speed >= 1',
                )
            for name in ("max_ahead_s", "max_behind_s", "max_disorder_s", "stall_after"):
                if getattr(self, name) < 0:
                    raise _fail(f"data.{name}", "must be >= 0", "use seconds")
            return
        try:
            parse_source(self.source)
        except ValueError as exc:
            raise ConfigError(f"data.source: {exc}") from None

    @property
    def live(self) -> bool:
        """True for a live sensor source (not a recorded file)."""
        return is_stream_spec(self.source)

    @property
    def step_grace(self) -> float:
        return self.step_seconds if self.grace < 0 else self.grace

    @property
    def spec(self) -> SourceSpec:
        """The parsed :attr:`source`."""
        return parse_source(self.source)


@dataclass(frozen=True)
class ModelSection:
    architecture: str = DEFAULT_ARCHITECTURE
    window: int = 10
    embedding_dim: int = 5
    seed: int = 0
    anchor_norm: float = 3.8
    path: str = ""  # an initial model (ONNX + card) to start from; default: the trainer makes one

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURE_NAMES:
            raise _fail(
                "model.architecture",
                f"{self.architecture!r} unknown",
                f"use {' or '.join(ARCHITECTURE_NAMES)}",
            )
        if self.window < 1 or self.embedding_dim < 1:
            raise _fail("model.window/embedding_dim", "must be >= 1", "set positive integers")
        if self.anchor_norm < 0:
            raise _fail("model.anchor_norm", "must be >= 0", "set e.g. 3.8")


@dataclass(frozen=True)
class RoundsSection:
    count: int = 0
    steps: int = 0  # windows per round (the latest ones); 0 = all training windows
    deadline: float = 10.0
    train_wait: float = 30.0
    interval: float = 0.0
    max_frame_bytes: int = 256 * 1024
    eval_dir: str = ""  # write per-round train/test embeddings here (osml run uses it)
    # Live sources: round r covers the data time [r*period, (r+1)*period) and runs once that
    # has passed (every agent of a context must use the same period).
    period: float = 0.0  # seconds per round (0: 10 steps)
    replay: int = -1  # older steps a round embeds again (-1: three periods, at least a window)
    max_windows: int = 512  # windows per round at most
    buffer: int = 4096  # windows (with their latest targets) a training job draws on
    # Rounds a window's target stays in the buffer: 0 trains on the windows this round re-targeted
    # (its new steps and its replay); older targets pull toward a consensus the fleet has left.
    target_age: int = 0
    # Rounds in which every neighbour is a member while the encoders find each other (-1: two
    # for a file; for a live source, enough rounds to have seen warmup_steps steps, at least two).
    warmup: int = -1
    warmup_steps: int = 500
    max_lag: int = 8  # rounds behind the clock before an agent skips to the current one

    def __post_init__(self) -> None:
        if self.count < 0 or self.steps < 0:
            raise _fail("rounds.count/steps", "must be >= 0", "use 0 for 'forever' / 'all'")
        if self.deadline <= 0 or self.train_wait < 0 or self.interval < 0:
            raise _fail("rounds.deadline", "timings must be positive", "e.g. deadline = 10.0")
        if self.max_frame_bytes < 1024:
            raise _fail("rounds.max_frame_bytes", "too small", "use at least 1024")
        if self.period < 0 or self.max_windows < 1 or self.buffer < 1 or self.max_lag < 1:
            raise _fail(
                "rounds.period/max_windows/buffer/max_lag",
                "out of range",
                "period >= 0, max_windows, buffer and max_lag >= 1",
            )
        if self.target_age < 0:
            raise _fail("rounds.target_age", "out of range", "use 0 or more rounds")
        if self.warmup < -1 or self.warmup > 1_000_000 or self.warmup_steps < 0:
            raise _fail(
                "rounds.warmup/warmup_steps",
                "out of range",
                "warmup >= -1 (auto), warmup_steps >= 0",
            )


@dataclass(frozen=True)
class AnomalySection:
    """Live anomaly scores (:mod:`osml.core.anomaly`): flag a step when its robust z-score
    against the device's own recent history exceeds ``threshold``."""

    threshold: float = 6.0
    history: int = 512  # clean deviations kept for the calibration
    min_history: int = 64  # no flags until this many have been seen
    novelty_window: int = 64  # recent clean embeddings an agent alone compares with

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.threshold > 1e6:
            raise _fail("anomaly.threshold", "out of range", "use a z-score such as 6.0")
        if not 1 <= self.min_history <= self.history <= 1_000_000 or self.novelty_window < 1:
            raise _fail(
                "anomaly.history/min_history/novelty_window",
                "out of range",
                "1 <= min_history <= history <= 1000000 and novelty_window >= 1",
            )

    def settings(self) -> AnomalySettings:
        return AnomalySettings(
            threshold=self.threshold,
            history=self.history,
            min_history=self.min_history,
            novelty_window=self.novelty_window,
        )


@dataclass(frozen=True)
class TrainerSection:
    socket: str = "trainer.sock"  # "": no trainer, the agent runs inference only on model.path
    timeout: float = 120.0
    settings: dict[str, Any] = field(default_factory=dict)  # osml.trainer.TrainerSettings fields


@dataclass(frozen=True)
class SigningSection:
    key_file: str = ""  # empty: frames are neither signed nor verified
    previous_key_file: str = ""
    require: bool = True

    def __post_init__(self) -> None:
        if self.previous_key_file and not self.key_file:
            raise _fail(
                "signing.previous_key_file", "set without signing.key_file", "set key_file too"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.key_file)

    def keys(self) -> tuple[bytes, ...]:
        """The keys frames may be signed with, the current one first (ConfigError if unusable)."""
        return tuple(load_key(p) for p in (self.key_file, self.previous_key_file) if p)


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection
    broker: BrokerSettings
    neighbours: tuple[str, ...]
    data: DataSection
    model: ModelSection = field(default_factory=ModelSection)
    rounds: RoundsSection = field(default_factory=RoundsSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    drop_rate: float = 0.0  # [testing] share of outgoing frames dropped at random
    signing: SigningSection = field(default_factory=SigningSection)
    anomaly: AnomalySection = field(default_factory=AnomalySection)

    @property
    def inference_only(self) -> bool:
        """True for a device that never trains: no trainer socket, the model at model.path."""
        return not self.trainer.socket

    @property
    def state_dir(self) -> Path:
        return Path(self.agent.state_dir)


def _section(cls: type, raw: Any, name: str, base: Path, paths: tuple[str, ...] = ()) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(f"[{name}]", "must be a table", f"write it as [{name}]")
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"known keys: {', '.join(sorted(known))}"
            )
            raise _fail(f"{name}.{key}", "unknown key", hint)
    values = dict(raw)
    for f in fields(cls):
        if f.name not in values:
            continue
        want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        v = values[f.name]
        if want.startswith("int") and (isinstance(v, bool) or not isinstance(v, int)):
            raise _fail(
                f"{name}.{f.name}", f"expected an integer, got {v!r}", "write a whole number"
            )
        if want.startswith("float") and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise _fail(f"{name}.{f.name}", f"expected a number, got {v!r}", "write a number")
        if want.startswith("str") and not isinstance(v, str):
            raise _fail(f"{name}.{f.name}", f"expected a string, got {v!r}", "quote the value")
        if want.startswith("bool") and not isinstance(v, bool):
            raise _fail(
                f"{name}.{f.name}", f"expected true or false, got {v!r}", "write true or false"
            )
        if f.name in paths and v and not Path(v).is_absolute():
            values[f.name] = str(base / v)  # relative paths are relative to the config file
        if want.startswith("float") and not math.isfinite(v):
            # tomllib reads nan and inf, and nan passes every range check.
            raise _fail(f"{name}.{f.name}", f"{v!r} is not a finite number", "write a number")
        if want.startswith("float") and isinstance(v, int):
            values[f.name] = float(v)
    try:
        return cls(**values)
    except TypeError as exc:
        raise _fail(f"[{name}]", str(exc), "see the example in osml/agent/config.py") from None


def _table(raw: Any, name: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(f"[{name}]", "must be a table", f"write it as [{name}]")
    return dict(raw)


def _neighbours(raw: Any, agent_id: str) -> tuple[str, ...]:
    if not isinstance(raw, dict):
        raise _fail("[neighbours]", "missing", 'add [neighbours] ids = ["..."] (or topology + all)')
    unknown = set(raw) - {"ids", "topology", "all", "seed"}
    if unknown:
        raise _fail(
            f"neighbours.{sorted(unknown)[0]}", "unknown key", "use ids, or topology + all (+ seed)"
        )
    if "ids" in raw:
        ids = raw["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _fail("neighbours.ids", "must be a list of strings", 'e.g. ids = ["1", "2"]')
        if agent_id in ids:
            raise _fail("neighbours.ids", f"lists the agent itself ({agent_id!r})", "remove it")
        if len(set(ids)) != len(ids):
            raise _fail("neighbours.ids", "has duplicates", "list each neighbour once")
        for i in ids:
            try:
                check_name("agent id", i)
            except ValueError as exc:
                raise _fail("neighbours.ids", str(exc), "fix the id") from None
        return tuple(ids)
    if "topology" in raw and "all" in raw:
        everyone = raw["all"]
        if not isinstance(everyone, list) or agent_id not in everyone:
            raise _fail(
                "neighbours.all", f"must list every agent, including {agent_id!r}", "add it"
            )
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _fail(
                "neighbours.seed", f"expected an integer, got {seed!r}", "write a whole number"
            )
        try:
            links = topology_neighbours([str(x) for x in everyone], str(raw["topology"]), seed)
        except ConfigError as exc:
            raise _fail(
                "neighbours.topology", str(exc), "fix the topology or the list in neighbours.all"
            ) from None
        return tuple(links[agent_id])
    raise _fail("[neighbours]", "needs ids, or topology and all", 'e.g. ids = ["1"]')


def read_toml(path: Path, flag: str) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError (one line, naming the file and ``flag``) otherwise."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}); check the {flag} path") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from exc


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent's TOML config. Raises ConfigError (one line) on any problem."""
    p = Path(path)
    raw = read_toml(p, "--config")
    base = p.resolve().parent
    allowed = {
        "agent",
        "broker",
        "neighbours",
        "data",
        "model",
        "rounds",
        "trainer",
        "testing",
        "signing",
        "anomaly",
    }
    for key in raw:
        if key not in allowed:
            raise _fail(
                f"[{key}]", "unknown section", f"known sections: {', '.join(sorted(allowed))}"
            )
    if "agent" not in raw:
        raise _fail("[agent]", "missing", 'add [agent] with id = "..." and context = "..."')
    agent = _section(AgentSection, raw["agent"], "agent", base, ("state_dir",))
    broker_raw = _table(raw.get("broker"), "broker")
    pw_file = broker_raw.pop("password_file", None)
    if pw_file is not None and not isinstance(pw_file, str):
        raise _fail("broker.password_file", f"expected a string, got {pw_file!r}", "quote the path")
    if pw_file is not None:
        try:
            broker_raw["password"] = (
                (base / pw_file).read_text().strip()
                if not Path(pw_file).is_absolute()
                else Path(pw_file).read_text().strip()
            )
        except OSError as exc:
            raise _fail(
                "broker.password_file",
                f"cannot read {pw_file} ({exc.strerror})",
                "check the path and permissions",
            ) from exc
    broker = _section(
        BrokerSettings, broker_raw, "broker", base, ("ca_file", "cert_file", "key_file")
    )
    nbs = _neighbours(raw.get("neighbours"), agent.id)
    if "data" not in raw:
        raise _fail(
            "[data]", "missing", 'add [data] source = "csv:FILE" (or paper:DIR / generated:simple)'
        )
    data = _section(DataSection, raw["data"], "data", base, ("test",))
    if not data.live:
        resolved = str(data.spec.relative_to(base))
        if resolved != data.source:
            data = dataclasses.replace(data, source=resolved)
    model = _section(ModelSection, raw.get("model"), "model", base, ("path",))
    rounds = _section(RoundsSection, raw.get("rounds"), "rounds", base, ("eval_dir",))
    trainer_raw = _table(raw.get("trainer"), "trainer")
    settings = trainer_raw.pop("settings", {})
    if not isinstance(settings, dict):
        raise _fail("trainer.settings", "must be a table", "write it as [trainer.settings]")
    trainer = _section(TrainerSection, trainer_raw, "trainer", base, ("socket",))
    trainer = TrainerSection(trainer.socket, trainer.timeout, dict(settings))
    if "trainer" not in raw and model.path:
        # A given model and no [trainer] table: a device that never trains (inference only).
        trainer = TrainerSection(socket="")
    if not trainer.socket and not model.path:
        raise _fail(
            "trainer.socket",
            "is empty, so the agent would never train, but model.path names no model",
            "set model.path to an ONNX model (e.g. one under models/) or give a trainer socket",
        )
    testing = _table(raw.get("testing"), "testing")
    for key in testing:
        if key != "drop_rate":
            close = difflib.get_close_matches(key, ["drop_rate"], n=1)
            raise _fail(
                f"testing.{key}",
                "unknown key",
                f"did you mean {close[0]!r}?" if close else "the only key is drop_rate",
            )
    drop = testing.get("drop_rate", 0.0)
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0.0 <= drop < 1.0:
        raise _fail("testing.drop_rate", f"{drop!r} is not in [0, 1)", "use e.g. 0.2")
    signing = _section(
        SigningSection, raw.get("signing"), "signing", base, ("key_file", "previous_key_file")
    )
    signing.keys()  # fail now, with the file named, rather than at the first frame
    if data.live and data.source.startswith("mqtt:") and not data.broker and broker.username:
        # A second connection with the agent's user name would replace the agent's own session
        # (client id = user name on a broker made by osml broker init), and its ACL has no
        # sensor topics: raw readings belong on the device's own broker anyway.
        raise _fail(
            "data.broker",
            "is needed for an mqtt: source when [broker] has a user name",
            'set it to the device\'s local Mosquitto, e.g. broker = "mqtt://127.0.0.1:1883"',
        )
    anomaly = _section(AnomalySection, raw.get("anomaly"), "anomaly", base)
    return AgentConfig(
        agent, broker, nbs, data, model, rounds, trainer, float(drop), signing, anomaly
    )
