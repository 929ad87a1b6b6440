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
    shared_dims = 0                     # only the first K dims take part in osmosis; 0: all

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
    threshold = 7.0                     # flag a step whose robust z-score exceeds this
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
from osml.files import check_private
from osml.net.transport import BrokerSettings
from osml.trainer.settings import ARCHITECTURE_NAMES, DEFAULT_ARCHITECTURE, settings_from_map
from osml.wire.codec import MAX_ROUND
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


# Bounds of the numeric keys. tomllib reads nan, inf and integers of any size, and nan passes
# every comparison, so each number is checked against a closed range (and for finiteness) when
# a section is built: a deadline of nan made an agent spin, an interval of inf raised deep in
# the loop, 2**70 windows would be allocated.
DAY = 86400.0
WEEK = 7 * DAY
MAX_SEED = 2**63 - 1
MAX_TIME = 1e10  # a Unix time (the year 2286): replay clocks start below it


def _bounded(default: Any, lo: float, hi: float, *, above: bool = False, also: Any = None) -> Any:
    """A dataclass field whose value must lie in [lo, hi] (``above``: (lo, hi]), or be ``also``."""
    return field(default=default, metadata={"bounds": (lo, hi, above, also)})


def _wanted(value: Any, lo: float, hi: float, above: bool, also: Any) -> str:
    if isinstance(value, int):
        text = f"an integer from {int(lo)} to {int(hi)}"
    else:
        text = f"a finite number {'>' if above else '>='} {lo:g} and <= {hi:g}"
    return text if also is None else f"{also} or {text}"


def check_numbers(section: Any, name: str) -> None:
    """ConfigError (one line naming ``name.key``) for a non-finite number in the dataclass
    ``section``, or one outside the bounds its field declares (:func:`_bounded`)."""
    for f in fields(section):
        value = getattr(section, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        bounds = f.metadata.get("bounds")
        finite = math.isfinite(value)
        if bounds is None:
            if not finite:
                raise ConfigError(f"{name}.{f.name}: must be a finite number, got {value!r}")
            continue
        lo, hi, above, also = bounds
        if also is not None and value == also:
            continue
        if not finite or (value <= lo if above else value < lo) or value > hi:
            raise ConfigError(
                f"{name}.{f.name}: must be {_wanted(value, lo, hi, above, also)}, got {value!r}"
            )


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
    seed: int = _bounded(0, 0, MAX_SEED)
    # Live sources (mqtt:TOPIC, tail:FILE, exec:COMMAND, stdin) only, see docs/agent.md:
    broker: str = ""  # mqtt: read readings from this broker URL (default: the agent's own)
    features: int = _bounded(0, 0, 4096)  # values per reading (required for a live source)
    step_seconds: float = _bounded(1.0, 0.001, DAY)  # step k covers [k*s, (k+1)*s) on the epoch
    max_gap: int = _bounded(2, 0, 1_000_000)  # steps filled forward; a longer gap breaks windows
    grace: float = _bounded(-1.0, 0.0, DAY, also=-1.0)  # seconds a step stays open (-1: one step)
    aggregate: str = "mean"  # readings of one step: mean, last or median
    capacity: int = _bounded(4096, 8, 1_000_000)  # steps held in memory
    max_ahead_s: float = _bounded(10.0, 0.0, 365 * DAY)  # readings further ahead: future
    max_behind_s: float = _bounded(3600.0, 0.0, MAX_TIME)  # ... further behind it (past)
    max_disorder_s: float = _bounded(60.0, 0.0, MAX_TIME)  # ... older than the newest (disorder)
    stall_after: float = _bounded(0.0, 0.0, WEEK)  # seconds without readings: stalled (0: 10 steps)
    # The data's clock: "wall" on a device; "replay" for a recording played back `replay_speed`
    # times faster, data time = replay_start + (time.time() - replay_origin) * replay_speed.
    # Publish each round's embeddings and anomaly scores as JSON on this topic of the data
    # broker (the device's local one; "" = don't): results for local consumers.
    publish_topic: str = ""
    clock: str = "wall"
    replay_speed: float = _bounded(1.0, 1.0, 10_000.0)
    replay_start: float = _bounded(0.0, 0.0, MAX_TIME)
    replay_origin: float = _bounded(0.0, 0.0, MAX_TIME)

    def __post_init__(self) -> None:
        check_numbers(self, "data")
        if self.live:
            parse_stream_spec(self.source)  # ConfigError naming data.source
            if self.features < 1:
                raise _fail(
                    "data.features", "is required for a live source", "set the values per reading"
                )
            if self.capacity * self.features > 1 << 27:
                raise _fail(
                    "data.capacity",
                    f"{self.capacity} steps x {self.features} features would hold more than "
                    "2**27 values (1 GiB)",
                    "lower capacity",
                )
            if self.clock not in ("wall", "replay"):
                raise _fail("data.clock", f"{self.clock!r} unknown", 'use "wall" or "replay"')
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
    window: int = _bounded(10, 1, 4096)  # the trainer's limits (MAX_WINDOW ...)
    embedding_dim: int = _bounded(5, 1, 4096)
    seed: int = _bounded(0, 0, MAX_SEED)
    anchor_norm: float = _bounded(3.8, 0.0, 1e6)
    # Only the first shared_dims dimensions take part in osmosis, in the learner and in the
    # trainer's pull (LearnerSettings / TrainerSettings.shared_dims); 0: all of them.
    shared_dims: int = _bounded(0, 0, 4096)
    path: str = ""  # an initial model (ONNX + card) to start from; default: the trainer makes one

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURE_NAMES:
            raise _fail(
                "model.architecture",
                f"{self.architecture!r} unknown",
                f"use {' or '.join(ARCHITECTURE_NAMES)}",
            )
        check_numbers(self, "model")
        if self.shared_dims > self.embedding_dim:
            raise _fail(
                "model.shared_dims",
                f"{self.shared_dims} is more than embedding_dim {self.embedding_dim}",
                "use a number from 0 (all dimensions) to embedding_dim",
            )


@dataclass(frozen=True)
class RoundsSection:
    count: int = _bounded(0, 0, MAX_ROUND)  # 0: run until stopped
    steps: int = _bounded(0, 0, 100_000_000)  # windows per round (the latest); 0 = all
    deadline: float = _bounded(10.0, 0.0, DAY, above=True)
    train_wait: float = _bounded(30.0, 0.0, DAY)
    interval: float = _bounded(0.0, 0.0, WEEK)
    max_frame_bytes: int = _bounded(256 * 1024, 1024, 64 << 20)
    eval_dir: str = ""  # write per-round train/test embeddings here (osml run uses it)
    # Live sources: round r covers the data time [r*period, (r+1)*period) and runs once that
    # has passed (every agent of a context must use the same period).
    period: float = _bounded(0.0, 0.001, WEEK, also=0.0)  # seconds per round (0: 10 steps)
    replay: int = _bounded(-1, 0, 1_000_000, also=-1)  # older steps re-embedded (-1: 3 periods)
    max_windows: int = _bounded(512, 1, 1_000_000)  # windows per round at most
    buffer: int = _bounded(4096, 1, 1_000_000)  # windows (with targets) held for training jobs
    # A training job draws on the windows whose target is at most target_age rounds older than
    # the newest, topped up to a full round: older targets pull toward a consensus left behind.
    target_age: int = _bounded(0, 0, 1_000_000)
    # Rounds in which every neighbour is a member while the encoders find each other (-1: two
    # for a file; for a live source, enough rounds to have seen warmup_steps steps, at least two).
    warmup: int = _bounded(-1, 0, 1_000_000, also=-1)
    warmup_steps: int = _bounded(500, 0, 100_000_000)
    max_lag: int = _bounded(8, 1, 1_000_000)  # rounds behind the clock before skipping ahead

    def __post_init__(self) -> None:
        check_numbers(self, "rounds")


@dataclass(frozen=True)
class AnomalySection:
    """Live anomaly scores (:mod:`osml.core.anomaly`): flag a step when its robust z-score
    against the device's own recent history exceeds ``threshold``."""

    threshold: float = _bounded(7.0, 0.0, 1e6, above=True)
    history: int = _bounded(512, 1, 1_000_000)  # clean deviations kept for the calibration
    min_history: int = _bounded(64, 1, 1_000_000)  # no flags until this many have been seen
    novelty_window: int = _bounded(64, 1, 1_000_000)  # recent clean rows an agent alone uses

    def __post_init__(self) -> None:
        check_numbers(self, "anomaly")
        if self.min_history > self.history:
            raise _fail(
                "anomaly.min_history",
                "out of range",
                f"must be <= history ({self.history}), or nothing is ever flagged",
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
    timeout: float = _bounded(120.0, 0.0, DAY, above=True)
    settings: dict[str, Any] = field(default_factory=dict)  # osml.trainer.TrainerSettings fields

    def __post_init__(self) -> None:
        check_numbers(self, "trainer")


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
        if want.startswith("float") and isinstance(v, int):
            try:
                values[f.name] = float(v)
            except OverflowError:
                raise ConfigError(f"{name}.{f.name}: {v} is too large; write a number") from None
    try:
        return cls(**values)
    except TypeError as exc:
        raise _fail(f"[{name}]", str(exc), "see the example in osml/agent/config.py") from None
    except ConfigError as exc:
        # BrokerSettings checks itself without knowing it is the [broker] table.
        text = str(exc)
        if text.startswith((f"{name}.", f"{name} ", f"[{name}]")):
            raise
        raise ConfigError(f"[{name}] {text}") from None


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
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise _fail(
                "neighbours.seed",
                f"expected an integer from 0 to {MAX_SEED}, got {seed!r}",
                "write a whole number",
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
    """Read and validate an agent's TOML config.

    Raises ConfigError, one line that starts with the file's path and names the key, on any
    problem.
    """
    p = Path(path)
    try:
        return _load_config(p)
    except ConfigError as exc:
        if str(exc).startswith(f"{p}: "):
            raise
        raise ConfigError(f"{p}: {exc}") from exc


def _load_config(p: Path) -> AgentConfig:
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
        pw_path = Path(pw_file) if Path(pw_file).is_absolute() else base / pw_file
        try:
            broker_raw["password"] = pw_path.read_text().strip()
        except OSError as exc:
            raise _fail(
                "broker.password_file",
                f"cannot read {pw_file} ({exc.strerror})",
                "check the path and permissions",
            ) from exc
        check_private(pw_path, "broker.password_file")
    broker = _section(
        BrokerSettings, broker_raw, "broker", base, ("ca_file", "cert_file", "key_file")
    )
    if broker.key_file is not None:
        try:
            check_private(broker.key_file, "broker.key_file")
        except OSError as exc:
            raise _fail(
                "broker.key_file",
                f"cannot read {broker.key_file} ({exc.strerror})",
                "check the path (the client certificate's private key)",
            ) from exc
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
    if "shared_dims" in trainer.settings:
        raise _fail(
            "trainer.settings.shared_dims",
            "is set by the model",
            "set [model] shared_dims instead (the learner must use the same)",
        )
    try:  # checked here, not in every training job the trainer would refuse
        settings_from_map(trainer.settings, model.architecture)
    except ValueError as exc:
        raise ConfigError(f"trainer.settings.{exc}") from None
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
