"""The fleet file: which agents exist, who their neighbours are, the broker files derived from it.

A fleet file is TOML (see ``broker-config/fleet.example.toml``)::

    [monitor]
    user = "monitor"                # may read status and metrics, nothing else
    # contexts = ["greenhouse"]     # default: every context below

    [contexts.greenhouse]
    agents = ["0", "1", "2", "3"]
    topology = "ring"               # full | ring | random:K (random also takes seed = N)

    [contexts.field]
    agents = ["north", "south", "east"]
    [contexts.field.neighbours]     # or list the links yourself (they must be symmetric)
    north = ["south"]
    south = ["north", "east"]
    east = ["south"]

:func:`load_fleet` turns it into frozen :class:`Fleet` objects (one
:class:`~osml.errors.ConfigError` naming the key on any problem). :func:`acl_text` writes the
Mosquitto ACL, :func:`passwords` and :func:`write_password_file` the password file.

Broker user names. Each agent connects as ``<context>.<agent id>`` (:func:`agent_username`), e.g.
``greenhouse.0``. Agent ids are only unique within a context, and an agent of one context must not
hold the rights of a namesake in another, so the context is part of the name. The name never
appears in a topic (the ACL lists topics per user, no ``%u`` patterns), so the ``.`` is harmless;
two contexts that would produce the same name (``a.b``/``c`` and ``a``/``b.c``) are refused.

Names in a fleet file are stricter than topic levels (``fleet name`` in
:func:`osml.wire.topics.check_name`): 1-64 characters from letters, digits, ``_``, ``-`` and ``.``,
not starting with ``.`` or ``-``. They also end up in the password file (no ``:``), in ACL lines
(no spaces) and in file names (``credentials/<user>.pass``).
"""

from __future__ import annotations

import difflib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osml.agent.config import MAX_SEED, read_toml
from osml.errors import ConfigError, OsmlError
from osml.wire import topics

__all__ = [
    "Fleet",
    "FleetAgent",
    "FleetContext",
    "Monitor",
    "acl_text",
    "agent_username",
    "check_name",
    "load_fleet",
    "parse_fleet",
    "passwords",
    "write_password_file",
]


def check_name(value: Any, key: str, kind: topics.NameKind = "fleet name") -> str:
    """``value`` if it is a valid ``kind`` (:func:`osml.wire.topics.check_name`), else a
    ConfigError naming the fleet-file key or flag ``key``."""
    try:
        return topics.check_name(kind, value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def agent_username(context: str, agent: str) -> str:
    """The broker user name of ``agent`` in ``context``: ``"<context>.<agent>"``."""
    return f"{context}.{agent}"


@dataclass(frozen=True)
class FleetAgent:
    """One agent of one context and the agents it sends frames to."""

    context: str
    id: str
    neighbours: tuple[str, ...]

    @property
    def username(self) -> str:
        return agent_username(self.context, self.id)


@dataclass(frozen=True)
class FleetContext:
    """A context: its agents (in file order) and the symmetric neighbour lists."""

    name: str
    agents: tuple[str, ...]
    neighbours: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"contexts.{self.name}"
        check_name(self.name, "contexts")
        if not self.agents:
            raise ConfigError(f"{where}.agents: empty; list at least one agent id")
        for agent in self.agents:
            check_name(agent, f"{where}.agents")
        twice = sorted({a for a in self.agents if self.agents.count(a) > 1})
        if twice:
            raise ConfigError(
                f"{where}.agents: {', '.join(twice)} listed twice; list each agent once"
            )
        known = set(self.agents)
        for agent in self.agents:
            if agent not in self.neighbours:
                raise ConfigError(
                    f"{where}.neighbours: no entry for agent {agent!r}; add {agent} = [...] "
                    f"(use [] for none)"
                )
        for agent, nbs in self.neighbours.items():
            key = f"{where}.neighbours.{agent}"
            if agent not in known:
                raise ConfigError(
                    f"{key}: {agent!r} is not in {where}.agents; add it there or remove this line"
                )
            for nb in nbs:
                if nb not in known:
                    raise ConfigError(
                        f"{key}: neighbour {nb!r} is not in {where}.agents; add it there"
                    )
            if agent in nbs:
                raise ConfigError(f"{key}: lists the agent itself; remove {agent!r}")
            if len(set(nbs)) != len(nbs):
                raise ConfigError(f"{key}: has duplicates; list each neighbour once")
            for nb in nbs:
                if agent not in self.neighbours[nb]:
                    raise ConfigError(
                        f"{key}: lists {nb!r} but {where}.neighbours.{nb} does not list {agent!r}; "
                        f"links are symmetric, add it"
                    )

    def members(self) -> tuple[FleetAgent, ...]:
        return tuple(FleetAgent(self.name, a, tuple(self.neighbours[a])) for a in self.agents)


@dataclass(frozen=True)
class Monitor:
    """A read-only user for dashboards: status and metrics of ``contexts``."""

    user: str
    contexts: tuple[str, ...]

    def __post_init__(self) -> None:
        check_name(self.user, "monitor.user")
        for ctx in self.contexts:
            check_name(ctx, "monitor.contexts")


@dataclass(frozen=True)
class Fleet:
    """Every context of a fleet and the optional monitor user. Checks itself on construction."""

    contexts: tuple[FleetContext, ...]
    monitor: Monitor | None = None

    def __post_init__(self) -> None:
        if not self.contexts:
            raise ConfigError(
                "[contexts]: no context defined; add e.g. [contexts.lab] with agents = [...]"
            )
        names = [c.name for c in self.contexts]
        if len(set(names)) != len(names):
            raise ConfigError("[contexts]: a context is defined twice; give each a unique name")
        seen: dict[str, str] = {}
        for agent in self.agents():
            where = f"contexts.{agent.context}.agents ({agent.id!r})"
            if agent.username in seen:
                raise ConfigError(
                    f"{where}: broker user {agent.username!r} is also {seen[agent.username]}; "
                    f"rename a context or an agent"
                )
            seen[agent.username] = where
        if self.monitor is not None:
            if self.monitor.user in seen:
                raise ConfigError(
                    f"monitor.user: {self.monitor.user!r} is already the broker user of "
                    f"{seen[self.monitor.user]}; pick another name"
                )
            for ctx in self.monitor.contexts:
                if ctx not in names:
                    raise ConfigError(
                        f"monitor.contexts: {ctx!r} is not a context of this fleet; "
                        f"known: {', '.join(names)}"
                    )

    def agents(self) -> list[FleetAgent]:
        """Every agent of every context, in file order."""
        return [a for c in self.contexts for a in c.members()]

    def users(self) -> list[str]:
        """Every broker user name: the agents, then the monitor."""
        names = [a.username for a in self.agents()]
        if self.monitor is not None:
            names.append(self.monitor.user)
        return names


# -------------------------------------------------------------------------------------- loading

_TOP_KEYS = ("contexts", "monitor")
_CONTEXT_KEYS = ("agents", "topology", "seed", "neighbours")
_MONITOR_KEYS = ("user", "contexts")


def _unknown(raw: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            raise ConfigError(f"{where}{key}: unknown key; {hint}")


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{key}: must be a list of strings, e.g. ["a", "b"]')
    return tuple(value)


def _context(name: str, raw: Any) -> FleetContext:
    where = f"contexts.{name}"
    check_name(name, "contexts")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table; write it as [{where}]")
    _unknown(raw, _CONTEXT_KEYS, f"{where}.")
    if "agents" not in raw:
        raise ConfigError(f'{where}.agents: missing; add agents = ["a", "b", ...]')
    agents = _string_list(raw["agents"], f"{where}.agents")
    has_topology, has_links = "topology" in raw, "neighbours" in raw
    if has_topology == has_links:
        raise ConfigError(
            f"{where}: set either topology (full, ring or random:K) or a [{where}.neighbours] "
            f"table, {'not both' if has_topology else 'one of them'}"
        )
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"{where}.seed: expected an integer from 0 to {MAX_SEED}, got {seed!r}; "
            "write a whole number"
        )
    if has_links and "seed" in raw:
        raise ConfigError(f'{where}.seed: only used with topology = "random:K"; remove it')
    if has_topology:
        spec = raw["topology"]
        if not isinstance(spec, str):
            raise ConfigError(f'{where}.topology: expected a string, got {spec!r}; e.g. "ring"')
        # Names first: a bad or duplicate id gets a message about the id, not about the graph.
        FleetContext(name, agents, {a: () for a in agents})
        # Imported here: osml.core.topology needs numpy, and `osml --help` should not load it.
        from osml.core.topology import neighbours as topology_neighbours

        try:
            links = topology_neighbours(agents, spec, seed)
        except ConfigError as exc:
            raise ConfigError(f"{where}.topology: {exc}") from None
        return FleetContext(name, agents, {a: tuple(links[a]) for a in agents})
    table = raw["neighbours"]
    if not isinstance(table, dict):
        raise ConfigError(f"{where}.neighbours: must be a table; write it as [{where}.neighbours]")
    explicit = {str(a): _string_list(nbs, f"{where}.neighbours.{a}") for a, nbs in table.items()}
    return FleetContext(name, agents, explicit)


def _monitor(raw: Any, contexts: tuple[FleetContext, ...]) -> Monitor:
    if not isinstance(raw, dict):
        raise ConfigError('monitor: must be a table; write it as [monitor] with user = "..."')
    _unknown(raw, _MONITOR_KEYS, "monitor.")
    if "user" not in raw:
        raise ConfigError('monitor.user: missing; add user = "monitor" (or remove [monitor])')
    ctxs = raw.get("contexts")
    chosen = (
        _string_list(ctxs, "monitor.contexts")
        if ctxs is not None
        else tuple(c.name for c in contexts)
    )
    if not chosen:
        raise ConfigError("monitor.contexts: empty; list contexts or remove the key (= all)")
    return Monitor(check_name(raw["user"], "monitor.user"), chosen)


def parse_fleet(raw: Mapping[str, Any]) -> Fleet:
    """A fleet from an already parsed TOML document (a dict). Raises ConfigError."""
    _unknown(raw, _TOP_KEYS, "")
    table = raw.get("contexts")
    if not isinstance(table, dict) or not table:
        raise ConfigError(
            '[contexts]: missing; add e.g. [contexts.lab] with agents = [...] and topology = "ring"'
        )
    contexts = tuple(_context(str(name), body) for name, body in table.items())
    monitor = _monitor(raw["monitor"], contexts) if "monitor" in raw else None
    return Fleet(contexts, monitor)


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file. Raises ConfigError (one line, naming the key)."""
    p = Path(path)
    raw = read_toml(p, "--fleet")
    try:
        return parse_fleet(raw)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


# ------------------------------------------------------------------------------------------ ACL


def acl_text(fleet: Fleet, source: str = "") -> str:
    """The Mosquitto ``acl_file`` for ``fleet``: one ``user`` block per broker user.

    An agent may write only its neighbours' inboxes, and only under its own id
    (``osml/<ctx>/<nb>/in/<self>``), plus its own status and metrics; it may read only its own
    inbox, and write its neighbours' topics in it (``osml/<ctx>/<self>/in/<nb>``: to clear
    retained messages left there). The monitor may read status and metrics of its contexts,
    and write nothing. Anything not listed is denied (Mosquitto's acl_file is an allow list),
    including ``$SYS``. Last wills are checked too (when the broker publishes them), so an
    agent's will can only be its own status.
    """
    lines = [
        "# Mosquitto ACL for an osml fleet, generated by `osml broker init`"
        + (f" from {source}" if source else "")
        + ". Do not edit: change the fleet file and run it again.",
        "# Not listed = denied. A denied publish is dropped (MQTT 5 clients get PUBACK 135);",
        "# a subscription to a denied filter is granted but delivers nothing.",
    ]
    for agent in fleet.agents():
        ctx, me = agent.context, agent.id
        lines += [
            "",
            f"# agent {me} of context {ctx}: neighbours {', '.join(agent.neighbours) or '(none)'}",
        ]
        lines.append(f"user {agent.username}")
        lines += [f"topic write {topics.inbox(ctx, nb, me)}" for nb in agent.neighbours]
        lines.append(f"topic write {topics.status(ctx, me)}")
        lines.append(f"topic write {topics.metrics(ctx, me)}")
        lines.append(f"topic read {topics.inbox_tree(ctx, me)}")
        # Its own inbox topics too, only so that it can delete a retained message a neighbour
        # left there (an empty retained publish): nobody but itself reads them.
        lines += [f"topic write {topics.inbox(ctx, me, nb)}" for nb in agent.neighbours]
    if fleet.monitor is not None:
        mon = fleet.monitor
        lines += [
            "",
            f"# monitor: reads status and metrics of {', '.join(mon.contexts)}; publishes nothing",
        ]
        lines.append(f"user {mon.user}")
        for ctx in mon.contexts:
            lines.append(f"topic read {topics.status_filter(ctx)}")
            lines.append(f"topic read {topics.metrics_filter(ctx)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ passwords


def passwords(fleet: Fleet, existing: Mapping[str, str] | None = None) -> dict[str, str]:
    """A password for every broker user of ``fleet``: kept from ``existing``, else a new random one.

    New passwords are 32 URL-safe characters (192 bits) from :mod:`secrets`. Users in ``existing``
    that are no longer in the fleet are left out.
    """
    existing = existing or {}
    return {user: existing.get(user) or secrets.token_urlsafe(24) for user in fleet.users()}


def find_mosquitto_passwd() -> str | None:
    """Path of ``mosquitto_passwd``, or None (Debian ships it with the mosquitto package)."""
    return shutil.which("mosquitto_passwd") or next(
        (
            p
            for p in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd")
            if os.access(p, os.X_OK)
        ),
        None,
    )


def write_password_file(path: str | Path, users: Mapping[str, str]) -> Path:
    """Write a Mosquitto ``password_file`` with hashed passwords (via ``mosquitto_passwd``).

    The plaintext goes into a 0600 temporary file next to ``path`` and is hashed in place with
    ``mosquitto_passwd -U``, so no password ever appears on a command line (``-b`` would show it
    in ``ps`` to every local user). The result replaces ``path`` atomically, mode 0640.
    """
    binary = find_mosquitto_passwd()
    if binary is None:
        raise OsmlError(
            "mosquitto_passwd not found: install it (Debian: apt-get install -y mosquitto)"
        )
    target = Path(path)
    for user, password in users.items():
        check_name(user, "user", "user name")
        if not password or any(c in password for c in "\n\r\0"):
            raise ConfigError(f"password of {user!r}: empty or contains a line break; set another")
    fd, tmp_name = tempfile.mkstemp(prefix=".passwd-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as out:  # mkstemp creates the file with mode 0600
            out.writelines(f"{user}:{password}\n" for user, password in users.items())
        done = subprocess.run(
            [binary, "-U", str(tmp)], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            detail = (
                " ".join((done.stderr or done.stdout).split()) or f"exit code {done.returncode}"
            )
            raise OsmlError(f"mosquitto_passwd -U failed: {detail}")
        os.chmod(tmp, 0o640)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
