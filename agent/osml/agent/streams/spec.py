"""Stream specs in ``[data] source``: ``mqtt:TOPIC``, ``tail:FILE``, ``exec:COMMAND``, ``stdin``.

:func:`parse_stream_spec` checks one spec and names the fix in a
:class:`~osml.errors.ConfigError`. File sources (``csv:``, ``paper:``, ``generated:``) are not
streams and are loaded elsewhere (:mod:`osml.agent.data`); :func:`is_stream_spec` tells the two
apart without raising.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from osml.errors import ConfigError

__all__ = ["STREAM_KINDS", "StreamSpec", "is_stream_spec", "parse_stream_spec"]

STREAM_KINDS = ("mqtt", "tail", "exec", "stdin")
_FILE_KINDS = ("csv", "paper", "generated")
_KEY = "data.source"
_FORMS = "mqtt:TOPIC, tail:FILE, exec:COMMAND or stdin"


@dataclass(frozen=True)
class StreamSpec:
    """A checked stream spec: ``kind`` is one of :data:`STREAM_KINDS`; ``target`` the topic
    filter, the file path or the command line (empty for ``stdin``)."""

    kind: str
    target: str

    @property
    def argv(self) -> list[str]:
        """For ``exec``: the command split like a POSIX shell would (no shell runs it)."""
        return shlex.split(self.target)

    def __str__(self) -> str:
        return self.kind if self.kind == "stdin" else f"{self.kind}:{self.target}"


def is_stream_spec(spec: str) -> bool:
    """True if ``spec`` names a stream kind (it may still be invalid: parse it to know)."""
    kind = spec.partition(":")[0].strip()
    return kind in STREAM_KINDS


def _fail(spec: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{_KEY}: {spec!r} {problem}; {fix}")


def _check_topic(spec: str, topic: str) -> None:
    if topic.startswith("//"):
        raise _fail(
            spec,
            "looks like a broker URL",
            "put the topic after mqtt: (mqtt:sensors/room1) and a separate broker in [data] broker",
        )
    levels = topic.split("/")
    ok = (
        "\0" not in topic
        and len(topic.encode("utf-8", "surrogatepass")) <= 65535
        and all(level in ("+", "#") or not ("+" in level or "#" in level) for level in levels)
        and "#" not in levels[:-1]
    )
    if not ok:
        raise _fail(
            spec,
            "is not a valid topic filter",
            "use e.g. mqtt:sensors/room1 ('+' and '#' only as whole levels, '#' last)",
        )


def parse_stream_spec(spec: str) -> StreamSpec:
    """Check one stream spec (see the module docstring); ConfigError names the fix."""
    if not isinstance(spec, str):
        raise ConfigError(f"{_KEY}: expected a string such as {_FORMS}, got {spec!r}")
    kind, sep, target = spec.partition(":")
    kind = kind.strip()
    if kind == "stdin":
        if target.strip():
            raise _fail(spec, "takes no argument", 'write source = "stdin"')
        return StreamSpec("stdin", "")
    if kind in _FILE_KINDS:
        raise _fail(
            spec,
            "is a file source, not a stream",
            f"file sources are loaded by osml.agent.data; for a live stream use {_FORMS}",
        )
    if kind not in STREAM_KINDS or not sep:
        raise _fail(spec, "is not a stream source", f"use {_FORMS}")
    if not target.strip():
        what = {"mqtt": "TOPIC", "tail": "FILE", "exec": "COMMAND"}[kind]
        raise _fail(spec, f"has no {what}", f"write {kind}:{what}")
    if kind == "mqtt":
        _check_topic(spec, target)
    elif kind == "tail":
        if "\0" in target:
            raise _fail(spec, "has a NUL byte in the path", "write tail:/path/to/file.csv")
    else:
        try:
            argv = shlex.split(target)
        except ValueError as exc:
            raise _fail(spec, f"cannot be split into words ({exc})", "check the quotes") from None
        if not argv:
            raise _fail(spec, "has no command", "write exec:COMMAND ARGS...")
    return StreamSpec(kind, target)
