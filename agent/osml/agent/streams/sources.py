"""Live stream sources: a background reader thread per source, a bounded queue, never blocking.

Every source (:class:`MqttSource`, :class:`TailSource`, :class:`ExecSource`,
:class:`StdinSource`; :func:`open_source` builds one from a spec) works the same way:

* :meth:`~StreamSource.start` starts a reader thread and returns at once (connecting, opening
  the file or starting the command happen in that thread, retried with backoff);
* the thread cuts the input into lines (:class:`~osml.agent.streams.lines.LineSplitter`),
  checks each with the source's :class:`~osml.agent.streams.readings.ReadingFilter` (arrival
  time = the thread's clock) and queues the accepted readings; the queue holds at most
  ``max_queued`` readings and drops the oldest on overflow (counted as ``overflow``);
* :meth:`~StreamSource.drain` returns the queued readings at once, oldest first: the agent's
  loop never waits on a source;
* :attr:`~StreamSource.stats` is a snapshot (lines, accepted, bad by reason, overflow,
  restarts, last arrival); :meth:`~StreamSource.stalled` says no reading arrived for a while;
* :meth:`~StreamSource.stop` ends the thread (and the command, or the MQTT connection) and
  joins it. Idempotent.

Kinds:

``mqtt:TOPIC``
    one reading per message, through :class:`osml.net.transport.Transport` (a clean session: a
    live sensor's old readings are not worth queueing at the broker);
``tail:FILE``
    follows a file a logger appends to, polling every ``poll_s`` (no inotify). It starts at the
    end of an existing file (``from_start=False``, like ``tail -F``) and reads a file that
    appears later, or replaces it, from its start. Rotation (the path names another inode: the
    old file is read to its end first) and truncation (the size shrinks below the position: read
    again from 0) count as restarts. Not detected: a truncation followed by regrowth past the
    old position between two polls, and lines a logger writes to a renamed file after we
    switched to the new one;
``exec:COMMAND``
    runs the command (no shell) in its own process group and reads its stdout; when it exits it
    is restarted after a backoff (:func:`osml.backoff.delays`, reset after a run longer than the
    cap); stderr goes to the log (the first lines of each run, cut to 200 characters).
    :meth:`~StreamSource.stop` sends SIGTERM to the process group named by the command's PID,
    then SIGKILL after ``kill_after_s``;
``stdin``
    the process's standard input (or any readable file descriptor); EOF ends the source.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from osml.agent.streams.lines import LineSplitter
from osml.agent.streams.readings import Reading, ReadingFilter, ReadingLimits
from osml.agent.streams.spec import StreamSpec, parse_stream_spec
from osml.backoff import delays as backoff_delays
from osml.errors import ConfigError, TransportError
from osml.net.transport import BrokerSettings, Transport

__all__ = [
    "ExecSource",
    "MqttSource",
    "SourceStats",
    "StdinSource",
    "StreamSource",
    "TailSource",
    "open_source",
]

_log = logging.getLogger("osml.agent.streams")
_CHUNK = 65536
_STDERR_LINES = 20  # stderr lines logged per run of an exec: command
_STDERR_CHARS = 200


@dataclass(frozen=True)
class SourceStats:
    """A snapshot of one source's counters (they only grow, except ``queued``)."""

    spec: str
    lines: int  # non-blank lines (or MQTT messages) read
    accepted: int  # readings that passed the filter
    bad: dict[str, int]  # rejected lines by reason (osml.agent.streams.readings.REASONS)
    overflow: int  # readings dropped because the queue was full (oldest first)
    restarts: int  # reconnects, reopenings (rotation, truncation), command restarts
    last_arrival: float | None  # clock time of the last accepted reading
    queued: int  # readings waiting for drain()
    running: bool  # the reader thread is alive
    error: str | None  # the last problem (connect failure, missing command, exit code ...)


class StreamSource:
    """The common part of every source (see the module docstring); subclasses implement
    :meth:`_run`, which reads until ``self._stopping`` is set."""

    kind = "?"

    def __init__(
        self,
        target: str,
        *,
        limits: ReadingLimits | None = None,
        max_queued: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (isinstance(max_queued, int) and max_queued >= 1):
            raise ConfigError(f"max_queued {max_queued!r}: use an integer >= 1")
        self.target = target
        self.spec = self.kind if self.kind == "stdin" else f"{self.kind}:{target}"
        self.filter = ReadingFilter(limits or ReadingLimits(), name=self.spec)
        self.max_queued = max_queued
        self.clock = clock
        self._splitter = LineSplitter(self.filter.limits.max_line_bytes)
        self._queue: deque[Reading] = deque()
        self._lock = threading.Lock()  # guards the queue, the filter and the counters
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lines = 0
        self._overflow = 0
        self._restarts = 0
        self._last_arrival: float | None = None
        self._started_at: float | None = None
        self._error: str | None = None

    # -- public API -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread; returns at once. A no-op while it runs."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._started_at = self.clock()
        self._thread = threading.Thread(
            target=self._main, name=f"osml-stream-{self.kind}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, end what the source started, and join the thread (up to ``timeout``)."""
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                _log.warning("%s: reader thread did not stop within %g s", self.spec, timeout)
        self._halt()

    def drain(self, max_items: int | None = None) -> list[Reading]:
        """The queued readings (at most ``max_items``), oldest first. Never blocks."""
        with self._lock:
            n = len(self._queue) if max_items is None else min(max_items, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    @property
    def stats(self) -> SourceStats:
        with self._lock:
            return SourceStats(
                spec=self.spec,
                lines=self._lines,
                accepted=self.filter.accepted,
                bad=self.filter.counts(),
                overflow=self._overflow + self._extra_overflow(),
                restarts=self._restarts,
                last_arrival=self._last_arrival,
                queued=len(self._queue),
                running=self._thread is not None and self._thread.is_alive(),
                error=self._error,
            )

    def stalled(self, now: float, after_s: float) -> bool:
        """True if no reading was accepted in the last ``after_s`` seconds (counted from the
        start while none has arrived yet); False before :meth:`start`."""
        with self._lock:
            ref = self._last_arrival if self._last_arrival is not None else self._started_at
        return ref is not None and now - ref > after_s

    def __enter__(self) -> StreamSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    # -- for subclasses -------------------------------------------------------------------------

    def _run(self) -> None:
        raise NotImplementedError

    def _halt(self) -> None:
        """After the thread ended (or did not, in time): release what is left."""

    def _extra_overflow(self) -> int:
        return 0

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a reader thread must not die silently
            _log.exception("%s: reader failed", self.spec)
            self._set_error(f"reader failed: {exc!r}")

    def _set_error(self, error: str) -> None:
        with self._lock:
            self._error = error

    def _restarted(self) -> None:
        with self._lock:
            self._restarts += 1

    def _offer(self, line: bytes, *, skip_blank: bool = True) -> None:
        if skip_blank and not line.strip():
            return
        arrival = self.clock()
        with self._lock:
            self._lines += 1
            reading = self.filter.offer(line, arrival)
            if reading is None:
                return
            if len(self._queue) >= self.max_queued:
                self._queue.popleft()
                self._overflow += 1
            self._queue.append(reading)
            self._last_arrival = arrival

    def _feed(self, data: bytes) -> None:
        for line in self._splitter.feed(data):
            self._offer(line)

    def _drop_partial(self, why: str) -> None:
        n = self._splitter.reset()
        if n:
            with self._lock:
                self.filter.reject("malformed", f"incomplete last line ({n} bytes) {why}")

    def _read_fd(self, fd: int, wait_s: float = 0.1) -> Iterator[bytes]:
        """Chunks from ``fd`` until EOF or stop; waits at most ``wait_s`` between checks."""
        while not self._stopping.is_set():
            ready, _, _ = select.select([fd], [], [], wait_s)
            if not ready:
                continue
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                continue
            if not data:
                return
            yield data


class MqttSource(StreamSource):
    """Readings from MQTT messages on a topic filter (``mqtt:TOPIC``)."""

    kind = "mqtt"

    def __init__(
        self,
        topic: str,
        broker: BrokerSettings,
        client_id: str | None = None,
        *,
        connect_timeout: float = 5.0,
        limits: ReadingLimits | None = None,
        max_queued: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parse_stream_spec(f"mqtt:{topic}")  # a bad topic is a ConfigError here, not later
        super().__init__(topic, limits=limits, max_queued=max_queued, clock=clock)
        self.broker = broker
        self.client_id = client_id or f"osml-stream-{uuid.uuid4().hex[:12]}"
        self.connect_timeout = connect_timeout
        self._transport: Transport | None = None

    @property
    def connected(self) -> bool:
        """True while the subscription is active (readings published now will arrive)."""
        t = self._transport
        return t is not None and t.connected

    def _extra_overflow(self) -> int:
        t = self._transport
        return t.stats.dropped_in if t is not None else 0

    def _run(self) -> None:
        attempts = 0
        transport = Transport(
            self.broker, self.client_id, subscriptions=[self.target], persistent=False
        )
        for delay in backoff_delays(0.5, 10.0):
            if self._stopping.is_set():
                return
            try:
                transport.connect(timeout=self.connect_timeout)
            except TransportError as exc:
                attempts += 1
                self._set_error(str(exc))
                if attempts <= 3 or attempts % 10 == 0:
                    _log.warning("%s: %s; retrying in %g s", self.spec, exc, delay)
                self._stopping.wait(delay)
                continue
            break
        else:  # pragma: no cover - delays() never ends
            return
        self._transport = transport
        if attempts:
            self._restarted()
        seen_reconnects = 0
        try:
            while not self._stopping.is_set():
                msg = transport.get(timeout=0.1)
                if msg is not None:
                    self._offer(msg.payload, skip_blank=False)
                if transport.stats.reconnects != seen_reconnects:
                    seen_reconnects = transport.stats.reconnects
                    self._restarted()
        finally:
            transport.close()


class TailSource(StreamSource):
    """Readings from a file a logger appends to (``tail:FILE``), surviving rotation and
    truncation."""

    kind = "tail"

    def __init__(
        self,
        path: str | Path,
        *,
        poll_s: float = 0.05,
        from_start: bool = False,
        limits: ReadingLimits | None = None,
        max_queued: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parse_stream_spec(f"tail:{path}")
        super().__init__(str(path), limits=limits, max_queued=max_queued, clock=clock)
        self.path = Path(path)
        self.poll_s = poll_s
        self.from_start = from_start

    def _run(self) -> None:
        f: IO[bytes] | None = None
        ident: tuple[int, int] | None = None
        first = True
        try:
            while not self._stopping.is_set():
                if f is None:
                    try:
                        f = open(self.path, "rb", buffering=0)  # closed below
                    except FileNotFoundError:
                        first = False  # a file that appears later is read from its start
                        self._stopping.wait(self.poll_s)
                        continue
                    except OSError as exc:
                        self._set_error(f"cannot open {self.path}: {exc}")
                        self._stopping.wait(max(self.poll_s, 1.0))
                        continue
                    st = os.fstat(f.fileno())
                    ident = (st.st_dev, st.st_ino)
                    if first and not self.from_start:
                        f.seek(0, os.SEEK_END)
                    first = False
                data = f.read(_CHUNK)
                if data:
                    self._feed(data)
                    continue
                # At the end of the file: has the path moved on, or the file shrunk?
                now_at: os.stat_result | None
                try:
                    now_at = os.stat(self.path)
                except OSError:  # renamed and no new file yet: keep reading the old one
                    now_at = None
                if now_at is not None and (now_at.st_dev, now_at.st_ino) != ident:
                    rest = f.read()  # what the logger wrote before it switched files
                    if rest:
                        self._feed(rest)
                    self._drop_partial("at rotation")
                    f.close()
                    f = None
                    self._restarted()
                    _log.info("%s: file replaced (rotation); reading the new one", self.spec)
                    continue
                if now_at is not None and now_at.st_size < f.tell():
                    f.seek(0)
                    self._drop_partial("at truncation")
                    self._restarted()
                    _log.info("%s: file truncated; reading from its start", self.spec)
                    continue
                self._stopping.wait(self.poll_s)
        finally:
            if f is not None:
                f.close()


class ExecSource(StreamSource):
    """Readings from a command's stdout (``exec:COMMAND``), restarted with backoff when it
    exits."""

    kind = "exec"

    def __init__(
        self,
        command: str | list[str],
        *,
        backoff_first: float = 0.5,
        backoff_cap: float = 10.0,
        kill_after_s: float = 2.0,
        limits: ReadingLimits | None = None,
        max_queued: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(command, str):
            argv = parse_stream_spec(f"exec:{command}").argv
            target = command
        else:
            argv = list(command)
            if not argv:
                raise ConfigError("exec source without a command: give one")
            target = shlex.join(argv)
        super().__init__(target, limits=limits, max_queued=max_queued, clock=clock)
        self.argv = argv
        self.backoff_first = backoff_first
        self.backoff_cap = backoff_cap
        self.kill_after_s = kill_after_s
        self._proc: subprocess.Popen[bytes] | None = None
        backoff_delays(backoff_first, backoff_cap)  # checks the arguments now

    @property
    def pid(self) -> int | None:
        """PID of the running command, None between runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _run(self) -> None:
        delays = backoff_delays(self.backoff_first, self.backoff_cap)
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # its own process group: stop() ends its children
                )
            except OSError as exc:
                self._set_error(f"cannot run {self.argv[0]!r}: {exc}")
                _log.warning("%s: cannot run it (%s)", self.spec, exc)
            else:
                self._proc = proc
                try:
                    code = self._read_process(proc)  # kills and reaps it in any case
                finally:
                    self._proc = None
                if self._stopping.is_set():
                    return
                self._set_error(f"command exited with code {code}")
            if time.monotonic() - started > self.backoff_cap:
                delays = backoff_delays(self.backoff_first, self.backoff_cap)  # it ran fine
            delay = next(delays)
            _log.warning("%s: %s; restarting in %g s", self.spec, self._error, delay)
            if self._stopping.wait(delay):
                return
            self._restarted()

    def _read_process(self, proc: subprocess.Popen[bytes]) -> int | None:
        assert proc.stdout is not None and proc.stderr is not None
        errors = threading.Thread(
            target=self._pump_stderr, args=(proc.stderr,), name="osml-stream-stderr", daemon=True
        )
        errors.start()
        try:
            for data in self._read_fd(proc.stdout.fileno()):
                self._feed(data)
            self._drop_partial("when the command ended")
            while not self._stopping.is_set():
                try:
                    return proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    continue  # stdout closed but the process lives on
            return None
        finally:
            self._kill(proc)
            errors.join(1.0)
            proc.stdout.close()
            proc.stderr.close()

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        n = 0
        with contextlib.suppress(OSError, ValueError):
            for raw in iter(lambda: stream.readline(_CHUNK), b""):
                n += 1
                if n <= _STDERR_LINES:
                    text = raw.decode("utf-8", "replace").rstrip()[:_STDERR_CHARS]
                    _log.warning("%s: stderr: %s", self.spec, text)
        if n > _STDERR_LINES:
            _log.warning("%s: %d more stderr lines not logged", self.spec, n - _STDERR_LINES)

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the command's process group, SIGKILL after ``kill_after_s``; reap it."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.kill_after_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        else:
            # The leader is gone; end what is left of its group (its pgid cannot be reused
            # while a member lives).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def _halt(self) -> None:
        proc = self._proc
        if proc is not None:  # the thread did not end in time: do it from here
            self._kill(proc)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(sig)


class StdinSource(StreamSource):
    """Readings from standard input (``stdin``) or another readable file descriptor."""

    kind = "stdin"

    def __init__(
        self,
        fd: int = 0,
        *,
        limits: ReadingLimits | None = None,
        max_queued: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("", limits=limits, max_queued=max_queued, clock=clock)
        self.fd = fd
        self.eof = False

    def _run(self) -> None:
        try:
            for data in self._read_fd(self.fd):
                self._feed(data)
        except OSError as exc:
            self._set_error(f"cannot read stdin: {exc}")
            return
        if not self._stopping.is_set():
            self.eof = True
            self._drop_partial("at the end of input")
            self._set_error("end of input")
            _log.info("%s: end of input", self.spec)


def open_source(
    spec: str | StreamSpec,
    *,
    broker: BrokerSettings | None = None,
    client_id: str | None = None,
    limits: ReadingLimits | None = None,
    max_queued: int = 10_000,
    clock: Callable[[], float] = time.time,
) -> StreamSource:
    """The (not yet started) source for a stream spec. ``mqtt:`` needs ``broker`` (the agent's
    own, or the one in ``[data] broker``) and should get a stable ``client_id``."""
    s = spec if isinstance(spec, StreamSpec) else parse_stream_spec(spec)
    if s.kind == "mqtt":
        if broker is None:
            raise ConfigError(
                f"data.source: {str(s)!r} needs a broker; pass the agent's broker settings "
                f"or set [data] broker"
            )
        return MqttSource(
            s.target, broker, client_id, limits=limits, max_queued=max_queued, clock=clock
        )
    if s.kind == "tail":
        return TailSource(s.target, limits=limits, max_queued=max_queued, clock=clock)
    if s.kind == "exec":
        return ExecSource(s.argv, limits=limits, max_queued=max_queued, clock=clock)
    return StdinSource(limits=limits, max_queued=max_queued, clock=clock)
