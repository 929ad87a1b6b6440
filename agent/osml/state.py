"""What an agent keeps across restarts, in its state directory.

    state_dir/state.json          round, model version, affinity memory, sub-context, equilibrium
    state_dir/model.onnx (+ .card.json)   the model in use, verified against its card on load
    state_dir/rounds.jsonl        one JSON line per finished round (what `osml run` reports)

Everything is written atomically (temp file + rename), so a SIGKILL at any moment leaves either
the old or the new version, never half of one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from osml.errors import ConfigError
from osml.modelcard import write_atomic

__all__ = ["AgentState", "append_round", "load_state", "save_state"]

STATE_FORMAT = 1


@dataclass
class AgentState:
    agent_id: str
    context: str
    next_round: int = 0
    model_version: int = 0
    memory: dict[str, Any] = field(default_factory=dict)  # SubcontextMemory.to_dict()
    subcontext: list[str] = field(default_factory=list)
    equilibrium_streak: int = 0
    learner_rounds: int = 0
    format: int = STATE_FORMAT


def load_state(state_dir: Path, agent_id: str, context: str) -> AgentState:
    path = state_dir / "state.json"
    if not path.exists():
        return AgentState(agent_id, context)
    try:
        data = json.loads(path.read_text())
        state = AgentState(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable agent state ({exc}); move it away to start afresh") from exc
    if (state.agent_id, state.context) != (agent_id, context):
        raise ConfigError(
            f"{path}: belongs to agent {state.agent_id!r} in context {state.context!r}, not "
            f"{agent_id!r} in {context!r}; give each agent its own agent.state_dir"
        )
    return state


def save_state(state_dir: Path, state: AgentState) -> None:
    write_atomic(state_dir / "state.json", (json.dumps(asdict(state), indent=1, sort_keys=True) + "\n").encode())


def append_round(state_dir: Path, record: dict[str, Any]) -> None:
    with open(state_dir / "rounds.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
