"""Replay feeders: one device's replay (:func:`osml.ops.replay.schedule`) sent through a real
source kind, so that an agent reads it exactly as it would read a sensor.

* :class:`MqttFeeder` publishes one reading per message on a topic (read by ``mqtt:TOPIC``),
  through :class:`osml.net.transport.Transport`, QoS 0 or 1;
* :class:`FileFeeder` appends lines to a file, flushing each, and optionally rotates it every
  N lines (rename to ``FILE.1``, ``FILE.2``, ... and start a new ``FILE``), for ``tail:FILE``;
* :class:`ExecFeeder` runs the replay script (:mod:`osml.ops.replay_exec`) as a process whose
  stdout goes where the caller says (a pipe into an agent's ``stdin``, a file); for
  ``exec:COMMAND`` the agent runs the script itself, from :func:`exec_argv` / :func:`exec_spec`.

Every feeder has :meth:`~Feeder.start` (returns at once), :meth:`~Feeder.stop` (interrupts any
wait at once, then joins the thread or ends the process by its PID; idempotent),
:attr:`~Feeder.done` and :meth:`~Feeder.wait`. The threaded feeders also count
:attr:`~Feeder.sent` of :attr:`~Feeder.total` readings and keep the last :attr:`~Feeder.error`.

Pacing: the replay begins (row 0's step) at Unix time ``at`` (default: when the wall clock
reaches the plan's ``start_time``, at once if that has passed); each reading is sent when a
monotonic clock reaches ``begin + wall_s``, sleeping on a :class:`threading.Event` in between:
no busy wait, and a stop request ends the sleep at once. A reading whose time has passed (a
slow broker, a late start) is sent at once, so the replay catches up rather than drifts.
:attr:`Feeder.clock` is the data's clock of the replay (see :class:`osml.ops.replay.ReplayClock`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from osml.errors import ConfigError, OsmlError
from osml.net.transport import BrokerSettings, Transport
from osml.ops.replay import (
    FORMATS,
    Fault,
    ReplayClock,
    ReplayPlan,
    Scheduled,
    format_line,
    schedule,
)

__all__ = [
    "ExecFeeder",
    "Feeder",
    "FileFeeder",
    "MqttFeeder",
    "WriterFeeder",
    "exec_argv",
    "exec_spec",
]

_log = logging.getLogger("osml.ops.feeders")


def _begin_at(plan: ReplayPlan, at: float | None) -> float:
    assert plan.start_time is not None
    if at is not None:
        return at
    return max(time.time(), plan.start_time)


class Feeder:
    """Paces one device's readings in a thread and hands each to :meth:`_emit` (subclasses
    deliver them; see the module docstring). ``plan`` is resolved when the feeder is built, so
    :attr:`plan` and :attr:`items` are known before it starts."""

    name = "feeder"

    def __init__(
        self,
        rows: np.ndarray | Sequence[Sequence[float]],
        plan: ReplayPlan,
        device: str,
        *,
        fmt: str = "json",
    ) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
        self.plan = plan.resolved()
        self.device = device
        self.fmt = fmt
        self.items: tuple[Scheduled, ...] = tuple(schedule(rows, self.plan, device))
        self.total = len(self.items)
        self.sent = 0
        self.error: str | None = None
        self.at: float | None = None  # Unix time the replay began (row 0's step)
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        """True once every reading was sent, or the feeder stopped or failed."""
        return self._done.is_set()

    @property
    def clock(self) -> ReplayClock:
        """The data's clock of this replay (after :meth:`start`)."""
        if self.at is None:
            raise RuntimeError(f"{self}: not started; the clock begins with start()")
        return ReplayClock.for_plan(self.plan, self.at)

    def line(self, item: Scheduled) -> str:
        """The line (no newline) this feeder writes for ``item``."""
        return format_line(item, self.fmt)

    def start(self, at: float | None = None) -> None:
        """Begin the replay at Unix time ``at`` (see the module docstring); returns at once.
        A no-op once started."""
        if self._thread is not None:
            return
        self.at = _begin_at(self.plan, at)
        # Pacing runs on the monotonic clock: wall-clock steps must not bunch or stall readings.
        begin = time.monotonic() + (self.at - time.time())
        self._thread = threading.Thread(
            target=self._main, args=(begin,), name=f"osml-{self.name}-{self.device}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the replay, join the thread (up to ``timeout``), release what it holds."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("%s: thread did not stop within %g s", self, timeout)
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` seconds) until :attr:`done`; True if it is."""
        return self._done.wait(timeout)

    def __enter__(self) -> Feeder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.device!r}, sent {self.sent}/{self.total})"

    # -- for subclasses -------------------------------------------------------------------------

    def _open(self) -> None:
        """In the thread, before the first reading."""

    def _emit(self, item: Scheduled) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """In the thread, after the last reading or a stop (also after a failure)."""

    def _main(self, begin: float) -> None:
        try:
            self._open()
            for item in self.items:
                delay = begin + item.wall_s - time.monotonic()
                if delay > 0 and self._stopping.wait(delay):
                    return
                if self._stopping.is_set():
                    return
                self._emit(item)
                self.sent += 1
        except (OsmlError, OSError) as exc:
            self.error = str(exc)
            _log.warning("%s: %s", self, exc)
        except Exception as exc:  # a feeder thread must not die silently
            self.error = repr(exc)
            _log.exception("%s: failed", self)
        finally:
            try:
                self._close()
            except Exception as exc:
                self.error = self.error or repr(exc)
                _log.warning("%s: closing failed: %r", self, exc)
            self._done.set()


class MqttFeeder(Feeder):
    """Publishes one reading per message on ``topic`` with ``qos`` 0 or 1."""

    name = "mqtt-feeder"

    def __init__(
        self,
        rows: np.ndarray | Sequence[Sequence[float]],
        plan: ReplayPlan,
        device: str,
        *,
        broker: BrokerSettings,
        topic: str,
        qos: int = 0,
        client_id: str | None = None,
        fmt: str = "json",
        connect_timeout: float = 5.0,
    ) -> None:
        if qos not in (0, 1):
            raise ConfigError(f"qos {qos!r}: use 0 or 1")
        if not topic or any(c in topic for c in "+#\0"):
            raise ConfigError(f"topic {topic!r}: use a plain topic (no + # or NUL)")
        super().__init__(rows, plan, device, fmt=fmt)
        self.broker = broker
        self.topic = topic
        self.qos = qos
        self.client_id = client_id or f"osml-feed-{uuid.uuid4().hex[:12]}"
        self.connect_timeout = connect_timeout
        self._transport: Transport | None = None

    def _open(self) -> None:
        # Clean session: a replay's readings are not worth queueing for a feeder that left.
        transport = Transport(self.broker, self.client_id, persistent=False)
        transport.connect(timeout=self.connect_timeout)
        self._transport = transport

    def _emit(self, item: Scheduled) -> None:
        assert self._transport is not None
        self._transport.publish(self.topic, self.line(item).encode("utf-8"), qos=self.qos)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # waits for the last QoS 1 acknowledgement
            self._transport = None


class FileFeeder(Feeder):
    """Appends one line per reading to ``path`` (flushed each time); with ``rotate_every`` N,
    after every N lines the file is renamed to ``path.1``, ``path.2``, ... and a new one begun.
    """

    name = "file-feeder"

    def __init__(
        self,
        rows: np.ndarray | Sequence[Sequence[float]],
        plan: ReplayPlan,
        device: str,
        *,
        path: str | Path,
        fmt: str = "csv",
        rotate_every: int | None = None,
    ) -> None:
        if rotate_every is not None and not (
            isinstance(rotate_every, int) and not isinstance(rotate_every, bool)
        ):
            raise ConfigError(f"rotate_every {rotate_every!r}: use a number of lines >= 1")
        if rotate_every is not None and rotate_every < 1:
            raise ConfigError(f"rotate_every {rotate_every!r}: use a number of lines >= 1")
        super().__init__(rows, plan, device, fmt=fmt)
        self.path = Path(path)
        self.rotate_every = rotate_every
        self.rotations = 0
        self._file: IO[bytes] | None = None
        self._lines_in_file = 0

    def rotated_path(self, n: int) -> Path:
        """Where the ``n``-th rotation (from 1) moved the file."""
        return self.path.with_name(f"{self.path.name}.{n}")

    def _open(self) -> None:
        # Unbuffered: each line is one write(2), so a reader never sees half a line for long.
        self._file = open(self.path, "ab", buffering=0)  # closed in _close
        self._lines_in_file = 0

    def _emit(self, item: Scheduled) -> None:
        if self.rotate_every is not None and self._lines_in_file >= self.rotate_every:
            self._rotate()
        assert self._file is not None
        self._file.write((self.line(item) + "\n").encode("utf-8"))
        self._lines_in_file += 1

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        self.rotations += 1
        os.replace(self.path, self.rotated_path(self.rotations))
        self._open()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class WriterFeeder(Feeder):
    """Writes one line per reading to a binary stream ``out`` (flushed each time), e.g. the
    replay script's stdout. ``out`` is not closed."""

    name = "writer-feeder"

    def __init__(
        self,
        rows: np.ndarray | Sequence[Sequence[float]],
        plan: ReplayPlan,
        device: str,
        *,
        out: IO[bytes],
        fmt: str = "json",
    ) -> None:
        super().__init__(rows, plan, device, fmt=fmt)
        self.out = out

    def _emit(self, item: Scheduled) -> None:
        self.out.write((self.line(item) + "\n").encode("utf-8"))
        self.out.flush()


# -- the exec script ------------------------------------------------------------------------------


def exec_argv(
    data: str,
    device: str,
    plan: ReplayPlan,
    *,
    faults: Sequence[Fault] = (),
    data_seed: int = 0,
    limit: int | None = None,
    fmt: str = "json",
    at: float | None = None,
    hold: bool = True,
    python: str | None = None,
) -> list[str]:
    """The command that replays ``device`` of dataset ``data`` (an :func:`osml.agent.data.
    load_dataset` spec) on its stdout. ``plan`` is resolved here, so the command is fixed.
    ``hold`` keeps the process alive after the last reading (an ``exec:`` source restarts a
    command that exits, which would replay it again)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    p = plan.resolved()
    assert p.start_time is not None
    argv = [python or sys.executable, "-m", "osml.ops.replay_exec"]
    argv += ["--data", data, "--agent", device, "--data-seed", str(data_seed)]
    argv += ["--step", repr(p.step_seconds), "--speed", repr(p.speed)]
    argv += ["--start-time", repr(p.start_time), "--skew", repr(p.skew_of(device))]
    if p.jitter != "none":
        argv += ["--jitter", f"{p.jitter}:{p.jitter_s!r}"]
    argv += ["--drop", repr(p.drop_rate), "--per-step", str(p.readings_per_step)]
    argv += ["--reading-noise", repr(p.reading_noise), "--seed", str(p.seed), "--format", fmt]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if at is not None:
        argv += ["--at", repr(at)]
    for fault in faults:
        argv += ["--fault", str(fault)]
    if hold:
        argv.append("--hold")
    return argv


def exec_spec(argv: Sequence[str]) -> str:
    """``exec:COMMAND`` for an agent's ``[data] source``, from :func:`exec_argv`'s command."""
    return "exec:" + shlex.join(argv)


class ExecFeeder:
    """Runs a replay command (:func:`exec_argv`) with its stdout to ``stdout`` (a file object
    or descriptor; None: inherit), in its own process group. :meth:`stop` ends it by its PID:
    SIGTERM to the group, SIGKILL after ``kill_after_s``."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdout: IO[bytes] | int | None = None,
        env: dict[str, str] | None = None,
        kill_after_s: float = 2.0,
    ) -> None:
        if not argv:
            raise ConfigError("exec feeder without a command: give one (see exec_argv)")
        self.argv = list(argv)
        self.stdout = stdout
        self.env = env
        self.kill_after_s = kill_after_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def done(self) -> bool:
        """True once the process has ended (it never ends by itself with ``--hold``)."""
        return self._proc is not None and self._proc.poll() is not None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        """Start the process; a no-op once started."""
        if self._proc is not None:
            return
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self.stdout,
            env=self.env,
            start_new_session=True,  # its own process group: stop() ends what it started too
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout`` seconds) for the process to end; True if it did."""
        if self._proc is None:
            return False
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self) -> None:
        """End the process (by its PID's process group) and reap it. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.kill_after_s)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def __enter__(self) -> ExecFeeder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
