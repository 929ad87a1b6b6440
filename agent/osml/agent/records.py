"""What one agent records of one finished round: the line in ``rounds.jsonl`` and the payload on
its ``metrics`` topic, as one typed record.

JSON stays the on-disk and on-the-wire format. :meth:`RoundRecord.from_json` reads what this and
earlier versions wrote (a key they did not write takes its default) and raises ``ValueError`` for
anything that is not such a record, so readers of records that came over the network (the
monitor) can skip them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["RoundRecord", "finite_or_none"]


@dataclass(frozen=True)
class RoundRecord:
    """One agent's round ``round``, as it ended."""

    round: int
    model_version: int = 0  # the model in use when the round ended (a new one may have arrived)
    embedded_with: int = 0  # the model version that embedded this round's frames
    steps: int = 0  # windows embedded and sent this round
    subcontext: list[str] = field(default_factory=list)
    osmosis_weights: dict[str, float] = field(default_factory=dict)  # mean weight, self included
    affinity: dict[str, float] = field(default_factory=dict)  # this round's, per neighbour heard
    affinity_memory: dict[str, float] = field(default_factory=dict)
    equilibrium: bool = False
    embedding_change: float | None = None  # relative change of own embeddings since last round
    missing: list[str] = field(default_factory=list)  # neighbours not heard from in time
    # neighbour -> what screening found (osml.core.learner.RoundOutcome.screened)
    screened: dict[str, str] = field(default_factory=dict)
    losses: dict[str, float] | None = None  # of the training job whose model arrived this round
    frames_in: int = 0  # cumulative counters from here on
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    late_frames: int = 0
    invalid_frames: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # refused frames by reason
    reconnects: int = 0
    dropped_out: int = 0
    # Live sources: the anomaly score of the round's steps (the largest z, steps flagged, and
    # "consensus" or "novelty"), and the sensor source's health (bad readings by reason).
    anomaly_z: float | None = None
    anomalies: int = 0
    anomaly_mode: str = ""
    source_stalled: bool = False
    source_rejected: dict[str, int] = field(default_factory=dict)
    trainer: str = "unknown"  # ok | busy | unavailable | bad-model | none (inference only)
    round_s: float = 0.0  # seconds the round took
    time: float = 0.0  # Unix time the round ended

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats become None)."""
        return {k: finite_or_none(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: object) -> RoundRecord:
        """Parse a record; ``ValueError`` if ``data`` is not one (unknown keys are ignored)."""
        if not isinstance(data, dict):
            raise ValueError(f"a round record is a JSON object, not {type(data).__name__}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name == "round":
                    raise ValueError("a round record needs 'round'")
                continue
            values[f.name] = _check(f.name, data[f.name])
        return cls(**values)


_INTS = {
    "round",
    "model_version",
    "embedded_with",
    "steps",
    "frames_in",
    "frames_out",
    "bytes_in",
    "bytes_out",
    "late_frames",
    "invalid_frames",
    "reconnects",
    "dropped_out",
    "anomalies",
}
_FLOAT_MAPS = {"osmosis_weights", "affinity", "affinity_memory"}


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(name: str, value: object) -> Any:
    bad = ValueError(f"round record field {name!r}: unexpected {type(value).__name__}")
    if name in _INTS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad
        return value
    if name in _FLOAT_MAPS or name == "losses":
        if value is None and name == "losses":
            return None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and (_number(v) or v is None) for k, v in value.items()
        ):
            raise bad
        return {k: (math.nan if v is None else float(v)) for k, v in value.items()}
    if name in ("subcontext", "missing"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return list(value)
    if name == "screened":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise bad
        return dict(value)
    if name in ("rejected", "source_rejected"):
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            raise bad
        return dict(value)
    if name in ("equilibrium", "source_stalled"):
        if not isinstance(value, bool):
            raise bad
        return value
    if name in ("embedding_change", "anomaly_z"):
        if value is None:
            return None
        if not _number(value):
            raise bad
        return float(value)  # type: ignore[arg-type]
    if name in ("round_s", "time"):
        if not _number(value):
            raise bad
        return float(value)  # type: ignore[arg-type]
    if name in ("trainer", "anomaly_mode"):
        if not isinstance(value, str):
            raise bad
        return value
    raise bad  # pragma: no cover - every field is handled above


def finite_or_none(value: Any) -> Any:
    """``value`` ready for JSON: non-finite floats, also inside dicts, lists and tuples, become
    None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value
