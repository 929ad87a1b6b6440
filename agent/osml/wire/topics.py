"""The MQTT topic layout and the rules for the names in it, in one place.

    osml/<context>/<dst>/in/<src>   a frame from agent <src> to agent <dst> (the inbox of <dst>);
                                    QoS 1, not retained. <dst> subscribes to this topic of
                                    each of its neighbours (earlier: osml/<context>/<dst>/in/+)
    osml/<context>/<id>/status      retained JSON: online/offline, round, model version,
                                    sub-context, equilibrium, trainer, mode (and, for live
                                    sources, source health and anomaly score); the broker
                                    publishes the last will {"state": "offline"} here when an
                                    agent vanishes
    osml/<context>/<id>/metrics     the round's RoundRecord as JSON (osml.agent.records); QoS 0,
                                    not retained

Names (:func:`check_name`): contexts and agent ids are single topic levels, 1-128 characters
without ``/``, ``+``, ``#`` or NUL. Broker user names and the names in a fleet file are stricter,
because they also land in password files, ACL lines and file names.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "MAX_NAME_LEN",
    "ROOT",
    "NameKind",
    "check_name",
    "inbox",
    "inbox_filter",
    "inbox_tree",
    "metrics",
    "metrics_filter",
    "parse_agent_topic",
    "parse_inbox",
    "status",
    "status_filter",
]

ROOT = "osml"

MAX_NAME_LEN = 128
"""Maximum length in characters of a context or an agent id."""

NameKind = Literal["context", "agent id", "user name", "fleet name"]
"""What a name is for: a topic level (context, agent id), a broker user name, a fleet-file name."""

_TOPIC_FORBIDDEN = frozenset("/+#\0")
# A fleet-file name: it becomes part of user names, ACL lines and file names.
_FLEET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# A broker user name: a fleet name, or <context>.<agent> made of two.
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,128}")

_RULES: dict[str, str] = {
    "context": f"1-{MAX_NAME_LEN} characters, none of / + # or NUL",
    "agent id": f"1-{MAX_NAME_LEN} characters, none of / + # or NUL",
    "user name": "letters, digits, _ - or ., not starting with . or -",
    "fleet name": "1-64 letters, digits, _ - or ., not starting with . or -",
}


def check_name(kind: NameKind, value: object) -> str:
    """``value`` if it is a valid name of this ``kind``; else :class:`ValueError` naming the rule.

    The one place the name rules live: configs, fleet files, the CLI, frames and the trainer all
    call it (and turn the ValueError into their own error where they need one).
    """
    if kind not in _RULES:
        raise ValueError(f"unknown kind of name {kind!r}; choose one of {sorted(_RULES)}")
    if not isinstance(value, str):
        raise ValueError(f"invalid {kind} {value!r}: expected a string ({_RULES[kind]})")
    if kind in ("context", "agent id"):
        ok = 0 < len(value) <= MAX_NAME_LEN and _TOPIC_FORBIDDEN.isdisjoint(value)
    else:
        ok = (_FLEET_NAME if kind == "fleet name" else _USER_NAME).fullmatch(value) is not None
    if not ok:
        raise ValueError(f"invalid {kind} {value!r}: {_RULES[kind]}")
    return value


def _context(context: str) -> str:
    return check_name("context", context)


def _agent(agent: str) -> str:
    return check_name("agent id", agent)


def inbox(context: str, dst: str, src: str) -> str:
    """Where ``src`` sends its frames for ``dst``: ``osml/<ctx>/<dst>/in/<src>``."""
    return f"{ROOT}/{_context(context)}/{_agent(dst)}/in/{_agent(src)}"


def inbox_filter(context: str, agent: str) -> str:
    """All of ``agent``'s inbox, ``osml/<ctx>/<agent>/in/+`` (what agents subscribed to before they
    subscribed to each neighbour's topic; they now unsubscribe it)."""
    return f"{ROOT}/{_context(context)}/{_agent(agent)}/in/+"


def inbox_tree(context: str, agent: str) -> str:
    """Everything under ``agent``'s inbox, ``osml/<ctx>/<agent>/in/#`` (for ACL lines)."""
    return f"{ROOT}/{_context(context)}/{_agent(agent)}/in/#"


def status(context: str, agent: str) -> str:
    return f"{ROOT}/{_context(context)}/{_agent(agent)}/status"


def metrics(context: str, agent: str) -> str:
    return f"{ROOT}/{_context(context)}/{_agent(agent)}/metrics"


def status_filter(context: str | None = None) -> str:
    """Every agent's status in ``context`` (``osml/<ctx>/+/status``); None: in every context."""
    return f"{ROOT}/{'+' if context is None else _context(context)}/+/status"


def metrics_filter(context: str | None = None) -> str:
    """Every agent's metrics in ``context`` (``osml/<ctx>/+/metrics``); None: in every context."""
    return f"{ROOT}/{'+' if context is None else _context(context)}/+/metrics"


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
