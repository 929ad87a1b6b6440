"""The MQTT topic layout, in one place.

    osml/<context>/<dst>/in/<src>   a frame from agent <src> to agent <dst> (the inbox of <dst>);
                                    QoS 1, not retained. <dst> subscribes to osml/<context>/<dst>/in/+
    osml/<context>/<id>/status      retained JSON: online/offline, round, model version,
                                    sub-context, equilibrium; the broker publishes the last will
                                    {"state": "offline"} here when an agent vanishes
    osml/<context>/<id>/metrics     JSON per round: alignment, weights, frames and bytes in/out,
                                    late/dropped frames, trainer state; QoS 0, not retained

Context and agent ids are single topic levels: no '/', '+', '#' or NUL, at most 128 characters.
"""

from __future__ import annotations

__all__ = [
    "ROOT",
    "check_level",
    "inbox",
    "inbox_filter",
    "metrics",
    "parse_agent_topic",
    "parse_inbox",
    "status",
]

ROOT = "osml"


def check_level(value: str, what: str) -> str:
    if not value or len(value) > 128 or any(c in value for c in "/+#\0"):
        raise ValueError(f"invalid {what} {value!r}: 1-128 characters, none of / + # or NUL")
    return value


def inbox(context: str, dst: str, src: str) -> str:
    return f"{ROOT}/{check_level(context, 'context')}/{check_level(dst, 'agent id')}/in/{check_level(src, 'agent id')}"


def inbox_filter(context: str, agent: str) -> str:
    return f"{ROOT}/{check_level(context, 'context')}/{check_level(agent, 'agent id')}/in/+"


def status(context: str, agent: str) -> str:
    return f"{ROOT}/{check_level(context, 'context')}/{check_level(agent, 'agent id')}/status"


def metrics(context: str, agent: str) -> str:
    return f"{ROOT}/{check_level(context, 'context')}/{check_level(agent, 'agent id')}/metrics"


def parse_inbox(topic: str) -> tuple[str, str, str] | None:
    """``osml/<ctx>/<dst>/in/<src>`` -> (ctx, dst, src); None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] == ROOT and parts[3] == "in" and all(parts):
        return parts[1], parts[2], parts[4]
    return None


def parse_agent_topic(topic: str) -> tuple[str, str, str] | None:
    """``osml/<ctx>/<id>/status|metrics`` -> (ctx, id, kind); None otherwise."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == ROOT and parts[3] in ("status", "metrics") and all(parts):
        return parts[1], parts[2], parts[3]
    return None
