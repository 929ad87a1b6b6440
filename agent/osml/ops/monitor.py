"""``osml monitor``: a live, read-only table of a fleet's agents, from what they publish.

Agents publish a retained JSON status on ``osml/<ctx>/<id>/status`` (the broker's last will
``{"state": "offline", "agent": id}`` replaces it when an agent vanishes) and one JSON metrics
record per round on ``osml/<ctx>/<id>/metrics``. The monitor subscribes to both, never publishes,
and connects with a non-persistent client id, so it leaves nothing behind on the broker.

The core is pure and testable without a broker:

* :class:`FleetView` folds messages into a per-agent view (``update(message, now)``) and turns it
  into JSON-ready rows (``rows(now, stall_after)``);
* :func:`render_table` draws the rows as a fixed-width table, marking offline and stalled agents
  with a word (``OFFLINE``, ``STALLED``) and, only when asked, with ANSI colour.

:func:`monitor` wires it to a broker; :mod:`osml.cli.monitor` is the ``osml monitor`` command.

Payloads come from the network and are never trusted: malformed JSON is counted and skipped,
fields of the wrong type show as unknown, and control characters are stripped before anything
reaches the terminal.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from osml.agent.records import RoundRecord
from osml.net.transport import BrokerSettings, Transport
from osml.wire import topics

__all__ = [
    "DEFAULT_STALL_AFTER",
    "FleetView",
    "monitor",
    "render_table",
]

DEFAULT_STALL_AFTER = 60.0  # seconds, until a round period has been observed
STALL_FACTOR = 3.0  # stalled after this many median round periods without news
MIN_STALL_AFTER = 5.0  # floor of the automatic threshold: fast rounds must not flap
_PERIODS_KEPT = 20  # round periods remembered per agent for the median

_RED = "\x1b[1;31m"
_YELLOW = "\x1b[1;33m"
_GREEN = "\x1b[32m"
_RESET = "\x1b[0m"
_CLEAR = "\x1b[H\x1b[2J"
_LEGEND = "affinity: mean affinity memory with sub-context peers; errors: late + invalid frames"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _MessageLike(Protocol):
    # Read-only properties, so that frozen messages (osml.net.transport.Message) match too.
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def retain(self) -> bool: ...


# ------------------------------------------------------------------------ untrusted values


def _clean(value: object, limit: int = 128) -> str:
    """A string safe for a terminal: no control characters (no escape sequences), bounded."""
    return _CONTROL.sub("", str(value))[:limit]


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value)


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _ids(value: object) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [_clean(v) for v in value if isinstance(v, str)]


def _natural(agent: str) -> list[tuple[int, int | str]]:
    """Sort key putting agent 2 before agent 10."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", agent) if p]


# ------------------------------------------------------------------------------ the view


@dataclass
class _Agent:
    status: dict[str, Any] | None = None
    metrics: RoundRecord | None = None
    last_seen: float | None = None  # unix seconds of the agent's latest news
    periods: deque[float] = field(default_factory=lambda: deque(maxlen=_PERIODS_KEPT))
    last_round_time: tuple[int, float] | None = None  # (round, time) of the previous metrics


class FleetView:
    """What the monitor knows about each agent of one context, built from status and metrics.

    ``update(message, now)`` takes one MQTT message (anything with ``topic``, ``payload`` and
    ``retain``) received at unix time ``now``; ``rows(now, stall_after)`` returns one dict per
    agent, sorted by id, ready for :func:`json.dumps` and :func:`render_table`.

    *Last seen* is ``now`` for a live message; for a retained one (sent by the broker on
    subscribe, possibly long ago) it is the ``time`` inside the payload, if any, never later
    than ``now``. A last-will payload carries no time, so it does not move *last seen*.
    """

    def __init__(self, context: str | None = None) -> None:
        self.context = context
        self.ignored = 0  # messages that were not valid JSON objects
        self._agents: dict[str, _Agent] = {}

    @property
    def agents(self) -> list[str]:
        return sorted(self._agents, key=_natural)

    def update(self, message: _MessageLike, now: float) -> bool:
        """Fold one message into the view; False if it was not for us or not understood."""
        parsed = topics.parse_agent_topic(message.topic)
        if parsed is None:
            return False
        ctx, agent_id, kind = parsed
        if self.context is not None and ctx != self.context:
            return False
        if kind == "status" and not message.payload:
            # An empty retained message deletes the status: the agent was decommissioned.
            agent = self._agents.get(agent_id)
            if agent is not None:
                agent.status = None
                if agent.metrics is None:
                    del self._agents[agent_id]
            return True
        try:
            payload = json.loads(message.payload)
            record = RoundRecord.from_json(payload) if kind == "metrics" else None
        except (ValueError, UnicodeDecodeError):
            payload = record = None
        if not isinstance(payload, dict):
            self.ignored += 1
            return False
        agent = self._agents.setdefault(agent_id, _Agent())
        if record is None:
            # Merge: the will ({"state": "offline", "agent": id}) keeps the last known round,
            # model and sub-context, and only flips the state.
            agent.status = {**(agent.status or {}), **payload}
        else:
            self._observe_period(agent, record)
            agent.metrics = record
        if message.retain:
            sent = _float(payload.get("time"))
            if sent is not None:
                seen = min(sent, now)
                agent.last_seen = seen if agent.last_seen is None else max(agent.last_seen, seen)
        else:
            agent.last_seen = now
        return True

    @staticmethod
    def _observe_period(agent: _Agent, metrics: RoundRecord) -> None:
        rnd, sent = metrics.round, metrics.time
        if not sent:
            return
        if agent.last_round_time is not None:
            last_rnd, last_sent = agent.last_round_time
            if rnd > last_rnd and sent > last_sent:
                agent.periods.append((sent - last_sent) / (rnd - last_rnd))
        agent.last_round_time = (rnd, sent)

    def median_round_period(self) -> float | None:
        """Median seconds between successive rounds over all agents (pause included), if seen."""
        periods = [p for a in self._agents.values() for p in a.periods]
        return statistics.median(periods) if periods else None

    def default_stall_after(self) -> float:
        """3x the median round period (at least 5 s), or 60 s before any period was observed."""
        period = self.median_round_period()
        if period is None:
            return DEFAULT_STALL_AFTER
        return max(STALL_FACTOR * period, MIN_STALL_AFTER)

    def rows(self, now: float, stall_after: float) -> list[dict[str, Any]]:
        """One JSON-ready dict per agent, sorted by id.

        Keys: ``agent``; ``state`` online/offline/unknown (metrics but no status yet);
        ``stalled`` (not offline, and no news for ``stall_after`` seconds); ``round`` (rounds
        finished); ``model_version``; ``equilibrium``; ``subcontext``; ``affinity`` (mean affinity
        memory with the other sub-context members, None when alone or before the first metrics:
        the agents' own affinity, not a test-set alignment); cumulative ``frames_in``,
        ``frames_out``, ``bytes_in``, ``bytes_out``, ``late_frames``, ``invalid_frames`` and
        ``errors`` (late + invalid); ``trainer``; ``missing``; ``reconnects``; ``round_s``;
        ``last_seen`` (unix seconds) and ``last_seen_age_s``. Unknown values are None.
        """
        return [self._row(a, self._agents[a], now, stall_after) for a in self.agents]

    @staticmethod
    def _row(agent_id: str, agent: _Agent, now: float, stall_after: float) -> dict[str, Any]:
        status = agent.status or {}
        rec = agent.metrics

        def latest(key: str) -> Any:
            if key in status:
                return status[key]
            return getattr(rec, key) if rec is not None else None

        state_value = status.get("state")
        state = state_value if state_value in ("online", "offline") else "unknown"
        # A status's round is the next round to run (= rounds finished); metrics name the round
        # just finished.
        status_round, metrics_round = _int(status.get("round")), rec.round if rec else None
        finished = [
            r
            for r in (status_round, None if metrics_round is None else metrics_round + 1)
            if r is not None
        ]
        subcontext = _ids(latest("subcontext"))
        memory = rec.affinity_memory if rec is not None else None
        affinity = None
        if subcontext and memory is not None:
            values = [_float(memory.get(m)) for m in subcontext if m != agent_id]
            numbers = [v for v in values if v is not None]
            affinity = sum(numbers) / len(numbers) if numbers else None
        late, invalid = (rec.late_frames, rec.invalid_frames) if rec else (None, None)
        errors = None if late is None and invalid is None else (late or 0) + (invalid or 0)
        age = None if agent.last_seen is None else max(now - agent.last_seen, 0.0)
        stalled = state != "offline" and age is not None and age > stall_after
        trainer = latest("trainer")
        return {
            "agent": _clean(agent_id),
            "state": state,
            "stalled": stalled,
            "round": max(finished) if finished else None,
            "model_version": _int(latest("model_version")),
            "equilibrium": _bool(latest("equilibrium")),
            "subcontext": subcontext,
            "affinity": None if affinity is None else round(affinity, 4),
            "frames_in": rec.frames_in if rec else None,
            "frames_out": rec.frames_out if rec else None,
            "bytes_in": rec.bytes_in if rec else None,
            "bytes_out": rec.bytes_out if rec else None,
            "late_frames": late,
            "invalid_frames": invalid,
            "errors": errors,
            "trainer": _clean(trainer, 32) if isinstance(trainer, str) else None,
            "missing": _ids(rec.missing) if rec else None,
            "reconnects": rec.reconnects if rec else None,
            "round_s": rec.round_s if rec else None,
            # Live sources: the largest anomaly z of the last round, its flagged steps, and
            # whether the sensor source has gone quiet.
            "anomaly_z": rec.anomaly_z if rec else None,
            "anomalies": rec.anomalies if rec and rec.anomaly_mode else None,
            "source_stalled": rec.source_stalled if rec else None,
            "last_seen": agent.last_seen,
            "last_seen_age_s": None if age is None else round(age, 3),
        }


# ----------------------------------------------------------------------------- the table


def _compact(n: int | None) -> str:
    """A count in at most 4 characters: 999, 1.2k, 12k, 123k, 1.2M, ..."""
    if n is None:
        return "-"
    if n < 1000:
        return str(n)
    value = float(n)
    for unit in "kMGTP":
        value /= 1000
        if value < 9.95:
            return f"{value:.1f}{unit}"
        if value < 999.5:
            return f"{value:.0f}{unit}"
    return f"{value:.0f}E"


def _pair(a: int | None, b: int | None) -> str:
    return "-" if a is None and b is None else f"{_compact(a)}/{_compact(b)}"


def _ago(age: float | None) -> str:
    if age is None:
        return "never"
    if age < 60:
        return f"{int(age)}s ago"
    if age < 3600:
        return f"{int(age // 60)}m ago"
    if age < 86400:
        return f"{int(age // 3600)}h ago"
    return f"{int(age // 86400)}d ago"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 2, 0)] + ".."


def _subcontext_text(members: Sequence[str] | None, width: int) -> str:
    """``{0,1,M0}``, or ``{0,1,+3}`` when it does not fit in ``width``."""
    if members is None:
        return "-"
    full = "{" + ",".join(members) + "}"
    if len(full) <= width:
        return full
    for keep in range(len(members) - 1, -1, -1):
        text = "{" + ",".join([*members[:keep], f"+{len(members) - keep}"]) + "}"
        if len(text) <= width:
            return text
    return _fit(full, width)


def _state_text(row: Mapping[str, Any]) -> str:
    if row.get("state") == "offline":
        return "OFFLINE"
    if row.get("stalled"):
        return "STALLED"
    return str(row.get("state") or "unknown")


# (header, right-aligned, minimum width)
_COLUMNS: list[tuple[str, bool, int]] = [
    ("agent", False, 5),
    ("state", False, 7),
    ("round", True, 5),
    ("model", True, 5),
    ("eq", False, 3),
    ("sub-context", False, 11),
    ("affinity", True, 8),
    ("frames i/o", True, 10),
    ("bytes i/o", True, 9),
    ("errors", True, 6),
    ("anomaly", True, 7),  # only with live sources, in place of "bytes i/o"
    ("trainer", False, 7),
    ("last seen", True, 9),
]
_SUB = 5  # index of the sub-context column, which takes whatever width is left


def _anomaly_text(row: Mapping[str, Any]) -> str:
    """``ANOM 7`` when the last round flagged steps, ``z 2.1`` otherwise, ``src?`` for a stalled
    sensor source, ``-`` for an agent without a live source."""
    if row.get("source_stalled"):
        return "src?"
    flagged, z = row.get("anomalies"), row.get("anomaly_z")
    if flagged:
        return f"ANOM {flagged}"
    return "-" if z is None else f"z {z:.1f}"


def render_table(rows: Sequence[Mapping[str, Any]], width: int = 100, color: bool = False) -> str:
    """The rows of :meth:`FleetView.rows` as a table about ``width`` columns wide.

    Offline agents say ``OFFLINE`` and stalled ones ``STALLED`` in the state column; with
    ``color`` their whole line is also red or yellow (and ``online`` green). ``affinity`` is
    the mean affinity memory with the agent's sub-context peers; ``errors`` counts late plus
    invalid frames; ``anomaly`` the last round's flagged steps (or its largest z); frames and
    bytes are cumulative in/out.
    """
    columns = _COLUMNS
    live = any(
        r.get("anomaly_z") is not None or r.get("anomalies") is not None or r.get("source_stalled")
        for r in rows
    )
    cells: list[list[str]] = []
    for row in rows:
        eq = row.get("equilibrium")
        model = row.get("model_version")
        affinity = row.get("affinity")
        cells.append(
            [
                _fit(str(row.get("agent", "?")), 16),
                _state_text(row),
                "-" if row.get("round") is None else str(row["round"]),
                "-" if model is None else f"v{model}",
                "-" if eq is None else ("yes" if eq else "no"),
                "",  # sub-context: filled in once its width is known
                "-" if affinity is None else f"{affinity:.2f}",
                _pair(row.get("frames_in"), row.get("frames_out")),
                _pair(row.get("bytes_in"), row.get("bytes_out")),
                "-" if row.get("errors") is None else str(row["errors"]),
                _anomaly_text(row),
                _fit(str(row.get("trainer") or "-"), 11),
                _ago(row.get("last_seen_age_s")),
            ]
        )
    # Agents with a live source show their anomaly score in place of the bytes column (the
    # table stays within its width); the others show no anomaly column.
    drop_name = "bytes i/o" if live else "anomaly"
    drop = next(i for i, c in enumerate(_COLUMNS) if c[0] == drop_name)
    columns = [c for i, c in enumerate(_COLUMNS) if i != drop]
    cells = [[v for i, v in enumerate(c) if i != drop] for c in cells]
    widths = [
        max([minimum, len(header), *(len(c[i]) for c in cells)])
        for i, (header, _right, minimum) in enumerate(columns)
    ]
    fixed = sum(w for i, w in enumerate(widths) if i != _SUB)
    gap = 2 if fixed + 2 * (len(columns) - 1) + widths[_SUB] + 6 <= width else 1
    room = width - fixed - gap * (len(columns) - 1)
    longest = max((len(_subcontext_text(r.get("subcontext"), 10_000)) for r in rows), default=0)
    widths[_SUB] = max(columns[_SUB][2], min(room, longest))
    for c, row in zip(cells, rows):
        c[_SUB] = _subcontext_text(row.get("subcontext"), widths[_SUB])

    def line(values: Sequence[str], online: bool = False) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, (_h, right, _m) in zip(values, widths, columns)
        ]
        if online:
            parts[1] = parts[1].replace("online", f"{_GREEN}online{_RESET}")
        return (" " * gap).join(parts).rstrip()

    lines = [line([h for h, _r, _m in columns])]
    for c in cells:
        text = line(c, online=color and c[1] == "online")
        if color and c[1] == "OFFLINE":
            text = f"{_RED}{text}{_RESET}"
        elif color and c[1] == "STALLED":
            text = f"{_YELLOW}{text}{_RESET}"
        lines.append(text)
    if not rows:
        lines.append("(no agent has published a status or metrics yet)")
    return "\n".join(lines)


def _summary(
    context: str, rows: Sequence[Mapping[str, Any]], stall_after: float, now: float
) -> str:
    online = sum(1 for r in rows if r["state"] == "online" and not r["stalled"])
    offline = sum(1 for r in rows if r["state"] == "offline")
    stalled = sum(1 for r in rows if r["stalled"])
    counts = [f"{online} online"]
    if offline:
        counts.append(f"{offline} OFFLINE")
    if stalled:
        counts.append(f"{stalled} STALLED")
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    return (
        f"context {context}: {len(rows)} agent{'' if len(rows) == 1 else 's'} "
        f"({', '.join(counts)}); stalled after {stall_after:g} s without news; {clock}"
    )


# ----------------------------------------------------------------------------- the loop


def _filters(context: str) -> list[str]:
    return [topics.status_filter(context), topics.metrics_filter(context)]


def monitor(
    settings: BrokerSettings,
    context: str,
    *,
    once: bool = False,
    as_json: bool = False,
    wait: float = 2.0,
    refresh: float = 2.0,
    stall_after: float | None = None,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
    color: bool | None = None,
    clock: Callable[[], float] = time.time,
) -> list[dict[str, Any]]:
    """Watch ``context`` on the broker; return the rows last shown.

    ``once``: gather for ``wait`` seconds (retained statuses arrive at once on subscribe), print
    one table - or with ``as_json`` one JSON document ``{"context", "agents", "time",
    "stall_after"}`` - and return. Otherwise redraw every ``refresh`` seconds (clearing the
    screen when ``out`` is a terminal; JSON mode prints one document per line) until ``stop`` is
    set or Ctrl-C. ``stall_after`` None means :meth:`FleetView.default_stall_after`. ``color``
    None means colour when ``out`` is a terminal and ``NO_COLOR`` is unset.

    Read-only: subscribes to ``osml/<ctx>/+/status`` and ``osml/<ctx>/+/metrics`` with a fresh,
    non-persistent client id, and never publishes. Raises TransportError if the broker cannot be
    reached or refuses us; later connection losses are retried by the transport and shown.
    """
    out = sys.stdout if out is None else out
    stop = threading.Event() if stop is None else stop
    if wait < 0 or refresh <= 0 or (stall_after is not None and stall_after <= 0):
        raise ValueError(
            f"wait {wait:g}, refresh {refresh:g}, stall_after {stall_after}: wait must be >= 0, "
            "refresh and stall_after > 0"
        )
    tty = bool(getattr(out, "isatty", lambda: False)())
    use_color = (tty and "NO_COLOR" not in os.environ) if color is None else color
    view = FleetView(context)
    transport = Transport(
        settings,
        f"osml-monitor-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        subscriptions=_filters(context),
        persistent=False,
    )
    transport.connect()
    rows: list[dict[str, Any]] = []
    try:
        while True:
            deadline = time.monotonic() + (wait if once else refresh)
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                message = transport.get(timeout=min(remaining, 0.25))
                if message is not None:
                    view.update(message, clock())
            now = clock()
            threshold = view.default_stall_after() if stall_after is None else stall_after
            rows = view.rows(now, threshold)
            if as_json:
                document = {
                    "context": context,
                    "agents": rows,
                    "time": now,
                    "stall_after": threshold,
                }
                out.write(json.dumps(document) + "\n")
            else:
                width = shutil.get_terminal_size((100, 24)).columns if tty else 100
                text = _summary(context, rows, threshold, now)
                if not transport.connected:
                    text += "\nbroker connection lost; reconnecting..."
                text += "\n" + render_table(rows, width=width, color=use_color)
                text += "\n" + _LEGEND
                if once:
                    out.write(text + "\n")
                elif tty:
                    out.write(_CLEAR + text + "\n")
                else:
                    out.write(text + "\n\n")
            out.flush()
            if once or stop.is_set():
                return rows
    finally:
        transport.close()
