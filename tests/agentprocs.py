"""Starting ``osml`` subprocesses in tests and stopping every one of them by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

WAIT = 60.0  # upper bound for a whole short run; a healthy one takes a few seconds


class Procs:
    """Starts subprocesses with their output in a log file; stops every one of them by PID."""

    def __init__(self) -> None:
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            p = subprocess.Popen(
                [sys.executable, "-m", "osml.cli", *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.started.append((p, log))
        return p

    def log_of(self, p: subprocess.Popen[bytes]) -> str:
        for q, log in self.started:
            if q is p:
                return log.read_text(errors="replace")[-3000:]
        return ""

    def wait_ok(self, p: subprocess.Popen[bytes], timeout: float = WAIT) -> None:
        try:
            code = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pid {p.pid} still running after {timeout:g} s:\n{self.log_of(p)}")
        assert code == 0, f"pid {p.pid} exited with {code}:\n{self.log_of(p)}"

    def stop_all(self) -> None:
        for p, _ in self.started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, _ in self.started:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
