"""Run a private Mosquitto broker: for the integration tests and for ``osml run`` on one machine.

:class:`MosquittoProcess` writes a minimal ``mosquitto.conf`` into a work directory, starts
``mosquitto -c`` on a loopback port, waits until the port accepts TCP connections and stops the
process by PID. The broker logs to ``<workdir>/mosquitto.log`` (its stdout is block-buffered when
redirected, so a file is the only reliable place to read what went wrong).

This module does not import paho: it only manages a process.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from osml.errors import TransportError

__all__ = ["MosquittoProcess", "bindable", "find_mosquitto", "free_port"]

_FALLBACK_PATHS = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary, or None if it is not installed.

    Debian puts it in ``/usr/sbin``, which is often missing from a normal user's ``PATH``.
    """
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in _FALLBACK_PATHS:
        if os.access(path, os.X_OK):
            return path
    return None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def bindable(host: str, port: int) -> bool:
    """True if a listener could bind ``host:port`` now (a port in TIME_WAIT counts as free)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # Same option as mosquitto's listener, so a port in TIME_WAIT after a restart counts free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tail_lines(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (empty if it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class MosquittoProcess:
    """A Mosquitto broker in its own process, listening on ``host:port`` only.

    Use it as a context manager (``with MosquittoProcess(tmp) as broker: ...``) or call
    :meth:`start` and :meth:`stop`. ``port=None`` picks a free port once, at construction, so
    :meth:`restart` comes back on the same port. ``persistence=True`` keeps sessions and queued
    messages across restarts (the database lives in ``workdir``). ``extra_conf`` is appended to
    the generated configuration verbatim (e.g. ``password_file ...``).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        persistence: bool = False,
        extra_conf: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.persistence = persistence
        self.extra_conf = extra_conf
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT`` for :class:`osml.net.transport.BrokerSettings`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running broker, None when stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _config(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to the `mosquitto` user, which may not be able to
            # write the log (or the persistence file) in our work directory.
            lines.append("user root")
        if self.extra_conf:
            lines.append(self.extra_conf.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        """Write the config, start the broker and wait until its port accepts connections.

        Raises TransportError (with the end of the broker's log) if the binary is missing, the
        process exits early (e.g. the port is taken) or the port is not open within ``timeout``.
        """
        if self.running:
            return
        binary = find_mosquitto()
        if binary is None:
            raise TransportError(
                "mosquitto not found: install it (Debian: apt-get install -y mosquitto)"
            )
        if not bindable(self.host, self.port):
            # Probing the port would otherwise find the other listener and report success.
            raise TransportError(
                f"cannot start mosquitto: {self.host}:{self.port} is already in use; "
                f"pick another port (port=None picks a free one)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self._config())
        out_path = self.workdir / "mosquitto.out"
        with open(out_path, "ab") as out:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise TransportError(
                    f"mosquitto exited with code {code} while starting on "
                    f"{self.host}:{self.port}:\n"
                    f"{tail_lines(out_path)}\n{tail_lines(self.log_path)}".rstrip()
                )
            if _accepts(self.host, self.port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TransportError(
                    f"mosquitto did not open {self.host}:{self.port} within {timeout:g} s:\n"
                    f"{tail_lines(self.log_path)}".rstrip()
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout``) and reap it.

        Idempotent.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop, then start again on the same port (clients see the connection drop)."""
        self.stop()
        self.start(timeout)

    def logtail_lines(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the broker log (for error messages and debugging)."""
        return tail_lines(self.log_path, lines)

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MosquittoProcess(url={self.url!r}, pid={self.pid})"
