"""What an agent keeps across restarts, in its state directory.

    state_dir/state.json          round, model version, affinity memory, sub-context, equilibrium,
                                  screening memory (members' rounds, twins' agreements)
    state_dir/model.onnx (+ .card.json)   the model in use, verified against its card on load
    state_dir/rounds.jsonl        one JSON line per finished round (what `osml run` reports),
                                  rotated to rounds.jsonl.1 past ROUNDS_MAX_BYTES

state.json and the model pair are written atomically (temp file, fsync, rename; the model's card is
its commit point, see :mod:`osml.agent.modelcard`), so a SIGKILL or power cut at any moment leaves
either the old or the new version, never half of one. rounds.jsonl is appended to and fsynced; a
kill in the middle of an append can leave a torn last line, which :func:`read_rounds` skips, and
:func:`repair_rounds` (at the agent's start) and every :func:`append_round` cut off, reading only
the file's end.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from osml.agent.records import RoundRecord
from osml.core.anomaly import AnomalyDetector
from osml.errors import ConfigError
from osml.files import write_atomic
from osml.wire.codec import MAX_ROUND

__all__ = [
    "ROUNDS_FILE",
    "AgentState",
    "append_round",
    "load_state",
    "read_rounds",
    "repair_rounds",
    "save_state",
]

STATE_FORMAT = 1
ROUNDS_FILE = "rounds.jsonl"
ROUNDS_MAX_BYTES = 8 << 20  # rounds.jsonl is rotated past this size (one older file is kept)
MAX_MODEL_VERSION = 2**62  # what the trainer hands out at most (osml.trainer.service)


@dataclass
class AgentState:
    agent_id: str
    context: str
    next_round: int = 0
    model_version: int = 0
    memory: dict[str, Any] = field(default_factory=dict)  # SubcontextMemory.to_dict()
    subcontext: list[str] = field(default_factory=list)
    equilibrium: dict[str, Any] = field(default_factory=dict)  # EquilibriumDetector.to_dict()
    learner_rounds: int = 0
    anomaly: dict[str, Any] = field(default_factory=dict)  # AnomalyDetector.to_dict() (live)
    screening: dict[str, Any] = field(default_factory=dict)  # OsmoticLearner.screening_state()
    format: int = STATE_FORMAT


def load_state(state_dir: Path, agent_id: str, context: str) -> AgentState:
    """The agent's state from ``state_dir/state.json`` (a fresh one when there is none).

    Every field is checked (type, range; ``next_round`` at most :data:`MAX_ROUND`), because the
    agent acts on it at once: ConfigError, one line naming the file and the key, otherwise.
    """
    path = state_dir / "state.json"
    if not path.exists():
        return AgentState(agent_id, context)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: unreadable agent state ({exc}); move it away to start afresh"
        ) from exc
    if isinstance(data, dict) and "equilibrium_streak" in data:  # state written before 0.1.1
        streak = data.pop("equilibrium_streak")
        data.setdefault("equilibrium", {"streak": streak})
    try:
        state = _checked_state(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}; move it away to start afresh") from None
    if (state.agent_id, state.context) != (agent_id, context):
        raise ConfigError(
            f"{path}: belongs to agent {state.agent_id!r} in context {state.context!r}, not "
            f"{agent_id!r} in {context!r}; give each agent its own agent.state_dir"
        )
    return state


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_map(value: Any, key: str, ok: Any, what: str) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and ok(v) for k, v in value.items()
    ):
        raise ValueError(f"{key} must be a map of agent ids to {what}, got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _checked_state(data: Any) -> AgentState:
    """An :class:`AgentState` from decoded JSON; ValueError naming the first bad key."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {_short(data)}")
    known = {f.name for f in fields(AgentState)}
    for key in data:
        if key not in known:
            raise ValueError(f"unknown key {key!r}")
    for key in ("agent_id", "context"):
        if not isinstance(data.get(key), str):
            raise ValueError(f"{key} must be a string, got {_short(data.get(key))}")
    for key, hi in (
        ("next_round", MAX_ROUND),
        ("learner_rounds", MAX_ROUND),
        ("model_version", MAX_MODEL_VERSION),
    ):
        if key in data and not _is_int(data[key], 0, hi):
            raise ValueError(f"{key} must be an integer from 0 to {hi}, got {_short(data[key])}")
    if data.get("format", STATE_FORMAT) != STATE_FORMAT:
        raise ValueError(f"format {_short(data['format'])} is not {STATE_FORMAT}")
    sub = data.get("subcontext", [])
    if not isinstance(sub, list) or not all(isinstance(x, str) for x in sub):
        raise ValueError(f"subcontext must be a list of agent ids, got {_short(sub)}")
    for key in ("memory", "equilibrium", "anomaly", "screening"):
        if not isinstance(data.get(key, {}), dict):
            raise ValueError(f"{key} must be a JSON object, got {_short(data[key])}")
    memory = data.get("memory", {})
    for key, ok, what in (
        ("affinity", _is_number, "numbers"),
        ("seen", lambda v: _is_int(v, 0, MAX_ROUND), "counts"),
        ("members", lambda v: isinstance(v, bool), "true/false"),
    ):
        if key in memory:
            _check_map(memory[key], f"memory.{key}", ok, what)
    eq = data.get("equilibrium", {})
    if "streak" in eq and not _is_int(eq["streak"], 0, MAX_ROUND):
        raise ValueError(f"equilibrium.streak must be a count, got {_short(eq['streak'])}")
    if "settled" in eq and not isinstance(eq["settled"], bool):
        raise ValueError(f"equilibrium.settled must be true or false, got {_short(eq['settled'])}")
    last = eq.get("last_subcontext", [])
    if not isinstance(last, list) or not all(isinstance(x, str) for x in last):
        raise ValueError(f"equilibrium.last_subcontext must be a list of ids, got {_short(last)}")
    recent = eq.get("recent", [])
    if not isinstance(recent, list) or not all(_is_number(x) for x in recent):
        raise ValueError(f"equilibrium.recent must be a list of numbers, got {_short(recent)}")
    _check_screening(data.get("screening", {}))
    if data.get("anomaly"):
        try:
            AnomalyDetector.from_dict(data["anomaly"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"anomaly: {exc}") from None
    return AgentState(**data)


def _check_screening(scr: dict[str, Any]) -> None:
    for key, ok, what in (
        ("member_rounds", lambda v: _is_int(v, 0, MAX_ROUND), "counts"),
        ("agree", lambda v: _is_number(v) and -1.0 <= v <= 1.0, "numbers from -1 to 1"),
    ):
        if key in scr:
            _check_map(scr[key], f"screening.{key}", ok, what)
    stalls = scr.get("stalls", [])
    if not isinstance(stalls, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in stalls
    ):
        raise ValueError(f"screening.stalls must be a list of id pairs, got {_short(stalls)}")
    for key in ("suspects", "ran"):
        ids = scr.get(key, [])
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise ValueError(f"screening.{key} must be a list of ids, got {_short(ids)}")
    if "calls" in scr and not _is_int(scr["calls"], 0, MAX_ROUND):
        raise ValueError(f"screening.calls must be a count, got {_short(scr['calls'])}")
    unknown = set(scr) - {"member_rounds", "agree", "stalls", "suspects", "ran", "calls"}
    if unknown:
        raise ValueError(f"unknown key 'screening.{sorted(unknown)[0]}'")


def save_state(state_dir: Path, state: AgentState) -> None:
    write_atomic(
        state_dir / "state.json",
        (json.dumps(asdict(state), indent=1, sort_keys=True) + "\n").encode(),
    )
    # The agent is the only writer: a temp file still there is from a save that was killed.
    for stale in state_dir.glob(".state.json.*.tmp"):
        stale.unlink(missing_ok=True)


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return record if isinstance(record, dict) else None


def append_round(state_dir: Path, record: RoundRecord, max_bytes: int = ROUNDS_MAX_BYTES) -> None:
    """Append one round's record to rounds.jsonl and fsync it.

    A previous append killed half-way leaves a last line without its newline: it is completed
    when it parses, cut off otherwise (:func:`repair_rounds`), so the new record never lands
    glued to a torn one. Once the file holds ``max_bytes``, it becomes ``rounds.jsonl.1``
    (replacing the previous one) and a new file begins: the records take at most about twice
    ``max_bytes`` on disk, for ever.
    """
    line = (json.dumps(record.to_json(), sort_keys=True) + "\n").encode()
    path = state_dir / ROUNDS_FILE
    try:
        if path.stat().st_size >= max_bytes:
            os.replace(path, path.with_name(ROUNDS_FILE + ".1"))  # atomic: a kill keeps both
    except FileNotFoundError:
        pass
    with open(path, "a+b") as fh:
        fh.write(_repair_tail(fh) + line)  # "a" mode: at the end, wherever the checks left off
        fh.flush()
        os.fsync(fh.fileno())


def repair_rounds(state_dir: Path) -> None:
    """Make ``state_dir/rounds.jsonl`` end with a whole line: complete a torn last line that
    parses, cut off one that does not. Reads only the end of the file (see
    :func:`_repair_tail`), so a file of any size costs bounded memory. The agent calls it at
    start; :func:`append_round` does the same before every append."""
    path = state_dir / ROUNDS_FILE
    try:
        fh = open(path, "r+b")
    except FileNotFoundError:
        return
    with fh:
        missing = _repair_tail(fh)
        if missing:
            fh.seek(0, os.SEEK_END)
            fh.write(missing)
        fh.flush()
        os.fsync(fh.fileno())


_TAIL_CHUNK = 64 << 10  # bytes read at a time while looking for the last newline
MAX_LINE_BYTES = 1 << 20  # a last line longer than this is not a record of ours: cut, unread


def _repair_tail(fh: IO[bytes]) -> bytes:
    """Truncate a torn last line of the open file ``fh`` (one that does not parse), and return
    the newline a last line that parses is missing (b"" when none is).

    Memory is bounded whatever the file's size: it looks for the last newline backwards in
    chunks of :data:`_TAIL_CHUNK`, and reads the last line itself only when it is at most
    :data:`MAX_LINE_BYTES` long.
    """
    end = fh.seek(0, os.SEEK_END)
    if not end:
        return b""
    fh.seek(end - 1)
    if fh.read(1) == b"\n":
        return b""
    start = 0
    pos = end
    while pos > 0:
        size = min(_TAIL_CHUNK, pos)
        pos -= size
        fh.seek(pos)
        found = fh.read(size).rfind(b"\n")
        if found >= 0:
            start = pos + found + 1
            break
    if end - start <= MAX_LINE_BYTES:
        fh.seek(start)
        if _parse_line(fh.read(end - start)) is not None:
            return b"\n"
    fh.truncate(start)
    return b""


def read_rounds(state_dir: Path) -> list[RoundRecord]:
    """The records in ``state_dir/rounds.jsonl`` (after those of the rotated
    ``rounds.jsonl.1``, if any), oldest first ([] when there is none yet).

    A torn last line (an agent killed in the middle of an append) is skipped; a bad line anywhere
    else is real damage and raises :class:`~osml.errors.ConfigError`.
    """
    older = state_dir / (ROUNDS_FILE + ".1")
    return (_read_file(older) if older.exists() else []) + _read_file(state_dir / ROUNDS_FILE)


def _read_file(path: Path) -> list[RoundRecord]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    lines = data.split(b"\n")
    records: list[RoundRecord] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _parse_line(line)
        if record is None:
            if number == len(lines):  # no newline after it: the append was cut short
                break
            raise ConfigError(
                f"{path}: line {number} is not a JSON object; move the file away to start afresh"
            )
        try:
            records.append(RoundRecord.from_json(record))
        except ValueError as exc:
            raise ConfigError(
                f"{path}: line {number} is not a round record ({exc}); move the file away to "
                "start afresh"
            ) from exc
    return records
