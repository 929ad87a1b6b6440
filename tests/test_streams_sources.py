"""Stream sources: specs and line cutting (pure), then each kind against the real thing: a real
Mosquitto, a file another process appends to, rotates and truncates, a command that exits and is
restarted, and a process whose stdin is a pipe.

Waits are bounded polls on the source's counters, never fixed sleeps. Every process a test
starts is stopped by its PID in a ``finally``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from osml.agent.streams.lines import LineSplitter
from osml.agent.streams.readings import Reading, ReadingLimits
from osml.agent.streams.sources import (
    ExecSource,
    MqttSource,
    StreamSource,
    TailSource,
    open_source,
)
from osml.agent.streams.spec import StreamSpec, is_stream_spec, parse_stream_spec
from osml.errors import ConfigError
from osml.net.broker import MosquittoProcess
from osml.net.transport import BrokerSettings, Transport

WAIT = 15.0  # upper bound for anything that should happen within a fraction of a second
AGENT_DIR = str(Path(__file__).resolve().parents[1] / "agent")
LIMITS = ReadingLimits(n_features=2, max_behind_s=1e10, max_disorder_s=1e10)


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def values(readings: list[Reading]) -> list[list[float]]:
    return [r.values.tolist() for r in readings]


class Collect:
    """Drains a source into a list while a test waits for it."""

    def __init__(self, source: StreamSource) -> None:
        self.source = source
        self.got: list[Reading] = []

    def until(self, n: int, timeout: float = WAIT) -> bool:
        def enough() -> bool:
            self.got += self.source.drain()
            return len(self.got) >= n

        return wait_for(enough, timeout)


# -- specs and lines (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "kind", "target"),
    [
        ("mqtt:sensors/room1/+", "mqtt", "sensors/room1/+"),
        ("mqtt:#", "mqtt", "#"),
        ("tail:/var/log/sensor.csv", "tail", "/var/log/sensor.csv"),
        ("exec:read-sensor --port '/dev/tty USB0'", "exec", "read-sensor --port '/dev/tty USB0'"),
        ("stdin", "stdin", ""),
    ],
)
def test_parse_stream_spec(spec: str, kind: str, target: str) -> None:
    s = parse_stream_spec(spec)
    assert s == StreamSpec(kind, target)
    assert is_stream_spec(spec)
    assert str(s) == spec


def test_exec_spec_splits_like_a_shell_without_one() -> None:
    argv = parse_stream_spec("exec:read-sensor --port '/dev/tty USB0' ; rm x").argv
    assert argv == ["read-sensor", "--port", "/dev/tty USB0", ";", "rm", "x"]


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("csv:/data/a.csv", "file source"),
        ("generated:simple", "file source"),
        ("paper:/data", "file source"),
        ("udp:1234", "mqtt:TOPIC"),
        ("mqtt:", "no TOPIC"),
        ("mqtt://broker:1883/t", "[data] broker"),
        ("mqtt:a/#/b", "topic filter"),
        ("mqtt:a/b+", "topic filter"),
        ("tail:", "no FILE"),
        ("exec:   ", "no COMMAND"),
        ("exec:cmd 'unclosed", "quotes"),
        ("stdin:x", "takes no argument"),
        ("", "mqtt:TOPIC"),
    ],
)
def test_bad_specs_name_the_fix(spec: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_stream_spec(spec)
    assert hint in str(info.value) and "data.source" in str(info.value)


def test_file_kinds_are_not_streams() -> None:
    assert not is_stream_spec("csv:/x.csv") and not is_stream_spec("generated:simple")


def test_mqtt_needs_a_broker() -> None:
    with pytest.raises(ConfigError, match="broker"):
        open_source("mqtt:sensors/x")


def test_line_splitter_holds_partial_lines_and_bounds_long_ones() -> None:
    s = LineSplitter(max_line_bytes=8)
    assert s.feed(b"1,2\n3,") == [b"1,2"]
    assert s.partial == 2
    assert s.feed(b"4\r\n") == [b"3,4"]
    out = s.feed(b"0123456789ABCDEF")  # no newline yet, already too long
    assert out == [b"012345678"] and s.partial == 0
    assert s.feed(b"GHIJ\nok\n") == [b"ok"]  # the rest of the long line is skipped
    assert s.feed(b"x") == [] and s.reset() == 1


class _Manual(StreamSource):
    """A source fed by the test itself (no thread): for the queue and the clock logic."""

    kind = "manual"

    def _run(self) -> None:
        self._stopping.wait()


def test_queue_drops_the_oldest_and_drain_never_blocks() -> None:
    clock = [1000.0]
    s = _Manual("m", limits=LIMITS, max_queued=3, clock=lambda: clock[0])
    assert s.drain() == [] and not s.stalled(2000.0, 1.0)  # not started: not stalled
    s.start()
    try:
        assert not s.stalled(1000.5, 1.0) and s.stalled(1001.5, 1.0)
        for i in range(5):
            s._feed(f"{1000 + i},{i},0\n".encode())
        s._feed(b"\n  \nbad\n")  # blank lines are skipped, not counted
        st = s.stats
        assert (st.lines, st.accepted, st.overflow, st.queued) == (6, 5, 2, 3)
        assert st.bad == {"malformed": 1}
        assert values(s.drain(2)) == [[2, 0], [3, 0]]
        assert values(s.drain()) == [[4, 0]]
        clock[0] = 1010.0
        s._feed(b"1010,1,1\n")
        assert s.stats.last_arrival == 1010.0
        assert not s.stalled(1010.5, 1.0) and s.stalled(1012.0, 1.0)
    finally:
        s.stop()
    assert not s.stats.running


# -- mqtt: a real Mosquitto -------------------------------------------------------------------


@pytest.fixture
def publisher(mosquitto: MosquittoProcess) -> Iterator[Callable[[str], Transport]]:
    made: list[Transport] = []

    def make(protocol: str) -> Transport:
        t = Transport(
            BrokerSettings(mosquitto.url, protocol=protocol),
            f"pub-{os.getpid()}-{len(made)}-{time.monotonic_ns()}",
            persistent=False,
        )
        made.append(t)
        t.connect(timeout=WAIT)
        return t

    yield make
    for t in made:
        t.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_mqtt_source_reads_good_and_counts_bad_readings(
    mosquitto: MosquittoProcess,
    publisher: Callable[[str], Transport],
    unique_context: Callable[[str], str],
    protocol: str,
) -> None:
    topic = f"sensors/{unique_context('mqtt')}/temp"
    source = MqttSource(
        topic,
        BrokerSettings(mosquitto.url, protocol=protocol),
        f"src-{unique_context('id')}",
        limits=ReadingLimits(n_features=2),
    )
    source.start()
    try:
        assert wait_for(lambda: source.connected), source.stats
        pub = publisher(protocol)
        now = time.time()
        payloads = [
            json.dumps({"t": now, "v": [1.0, 2.0]}).encode(),
            b"not json",
            json.dumps({"t": now, "v": [1.0]}).encode(),  # width
            b'{"t": %f, "v": [NaN, 1]}' % now,  # nonfinite
            json.dumps({"t": now + 3600, "v": [1.0, 2.0]}).encode(),  # future
            json.dumps({"t": now - 86400 * 2, "v": [1.0, 2.0]}).encode(),  # past
            b"\xff" * 10_000,  # oversize and not UTF-8
            f"{now + 0.5},3,4".encode(),  # CSV
            json.dumps({"v": [5, 6]}).encode(),  # no t: arrival time
        ]
        for p in payloads:
            pub.publish(f"{topic}", p, qos=1)
        collect = Collect(source)
        assert collect.until(3), source.stats
        assert values(collect.got) == [[1, 2], [3, 4], [5, 6]]
        assert wait_for(lambda: sum(source.stats.bad.values()) == 6), source.stats
        st = source.stats
        assert st.bad == {"malformed": 2, "width": 1, "nonfinite": 1, "future": 1, "past": 1}
        assert st.lines == len(payloads) and st.accepted == 3 and st.overflow == 0
        assert st.last_arrival is not None and not source.stalled(time.time(), 60.0)
    finally:
        source.stop()
    assert not source.stats.running and not source.connected


def test_mqtt_source_retries_until_the_broker_is_up(fresh_broker: MosquittoProcess) -> None:
    broker = fresh_broker
    broker.stop()  # the source starts first; the broker comes up later on the same port
    source = MqttSource("sensors/late", BrokerSettings(broker.url), "src-late", connect_timeout=1)
    source.start()
    try:
        assert wait_for(lambda: source.stats.error is not None)  # nobody listens yet
        assert not source.connected
        broker.start()
        assert wait_for(lambda: source.connected, timeout=30.0), source.stats
        assert source.stats.restarts >= 1
    finally:
        source.stop()
        broker.stop()


# -- tail: a file another process appends to, rotates and truncates ------------------------------

_WRITER = textwrap.dedent(
    """
    import os, sys
    path = sys.argv[1]
    for command in sys.stdin:
        op, _, arg = command.strip().partition(" ")
        if op == "append":          # append the text (\\n-escaped) as is
            with open(path, "a") as f:
                f.write(arg.replace("\\\\n", "\\n"))
        elif op == "rotate":        # rename, one last line into the old file, then a new file
            os.rename(path, path + ".1")
            with open(path + ".1", "a") as f:
                f.write(arg.replace("\\\\n", "\\n"))
            open(path, "w").close()
        elif op == "truncate":      # truncate in place (same inode), then write
            with open(path, "r+") as f:
                f.truncate(0)
            with open(path, "a") as f:
                f.write(arg.replace("\\\\n", "\\n"))
        print("done", flush=True)
    """
)


class Writer:
    """Another process that changes the file on command, one acknowledged command at a time."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def do(self, op: str, text: str = "") -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{op} {text.replace(chr(10), chr(92) + 'n')}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def test_tail_follows_appends_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "sensor.csv"
    # from_start: the file may appear before the reader's first look (see the next test)
    source = TailSource(path, poll_s=0.01, from_start=True, limits=LIMITS)
    writer = Writer(path)
    source.start()  # before the file exists
    collect = Collect(source)
    try:
        writer.do("append", "1,1,1\n2,2,2\n")
        assert collect.until(2), source.stats
        writer.do("append", "3,3")  # a partial line: not parsed until completed
        writer.do("append", ",3\n")
        assert collect.until(3), source.stats
        writer.do("rotate", "4,4,4\n")  # the old file's last line, then a new empty file
        writer.do("append", "5,5,5\n")  # into the new file
        assert collect.until(5), source.stats
        writer.do("append", "".join(f"{i},{i},{i}\n" for i in range(6, 30)))
        assert collect.until(29), source.stats
        writer.do("truncate", "30,30,30\n")  # shorter than what was read: from the start again
        assert collect.until(30), source.stats
        assert [v[0] for v in values(collect.got)] == list(range(1, 31))
        assert values(collect.got)[2] == [3, 3]
        st = source.stats
        assert st.bad == {} and st.restarts == 2 and st.lines == 30
    finally:
        source.stop()
        writer.stop()
    assert not source.stats.running


def test_tail_starts_at_the_end_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text('{"t": 1, "v": [0, 0]}\n')
    source = TailSource(path, poll_s=0.01, limits=LIMITS)
    writer = Writer(path)
    source.start()
    collect = Collect(source)
    try:
        # The source may open the file before or after the append; retry the append with a
        # fresh marker until one arrives, then check that the old line never did.
        for i in range(50):
            writer.do("append", f'{{"t": {10 + i}, "v": [1, {i}]}}\n')
            if collect.until(1, timeout=0.2):
                break
        assert collect.got and all(r.values[0] == 1 for r in collect.got)
    finally:
        source.stop()
        writer.stop()


# -- exec: a real command that exits and is restarted ----------------------------------------------


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_exec_restarts_the_command_when_it_exits(caplog: pytest.LogCaptureFixture) -> None:
    cmd = _script(
        """
        import sys, time
        print(time.time(), 1, 2, sep=",")
        print("junk")
        for i in range(30):
            print("complaint", i, file=sys.stderr)
        print(time.time(), 3, 4, sep=",", flush=True)
        sys.exit(3)
        """
    )
    source = ExecSource(cmd, backoff_first=0.05, backoff_cap=0.2, limits=LIMITS)
    with caplog.at_level(logging.WARNING, logger="osml.agent.streams"):
        source.start()
        collect = Collect(source)
        try:
            assert collect.until(6), source.stats  # three runs of two readings
            assert wait_for(lambda: source.stats.restarts >= 2), source.stats
            assert values(collect.got)[:2] == [[1, 2], [3, 4]]
            st = source.stats
            assert st.bad.get("malformed", 0) >= 3 and set(st.bad) == {"malformed"}
            assert st.error == "command exited with code 3"
        finally:
            source.stop()
    assert not source.stats.running and source.pid is None
    stderr_lines = [r for r in caplog.records if "stderr: complaint" in r.getMessage()]
    # bounded: at most 20 lines per run, then one summary line
    runs = max(1, sum("more stderr lines" in r.getMessage() for r in caplog.records))
    assert 0 < len(stderr_lines) <= 20 * runs


def test_exec_stop_kills_a_command_that_ignores_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    cmd = _script(
        f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print(time.time(), 1, 1, sep=",", flush=True)
        while True:
            time.sleep(1)
        """
    )
    source = ExecSource(cmd, kill_after_s=0.2, limits=LIMITS)
    source.start()
    pid: int | None = None
    try:
        assert Collect(source).until(1), source.stats
        pid = source.pid
        assert pid is not None and pid_file.read_text() == str(pid)
    finally:
        source.stop()
    assert pid is not None
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    assert source.pid is None and source.stats.restarts == 0


def test_exec_with_a_missing_command_keeps_retrying(tmp_path: Path) -> None:
    source = ExecSource([str(tmp_path / "no-such-reader")], backoff_first=0.01, backoff_cap=0.05)
    source.start()
    try:
        assert wait_for(lambda: source.stats.restarts >= 2), source.stats
        error = source.stats.error
        assert error is not None and "cannot run" in error
        assert source.stats.running
    finally:
        source.stop()
    assert not source.stats.running


# -- stdin: a process whose standard input is a pipe -----------------------------------------------

_STDIN_DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from osml.agent.streams.readings import ReadingLimits
    from osml.agent.streams.sources import open_source
    source = open_source("stdin", limits=ReadingLimits(n_features=2, max_behind_s=1e9))
    source.start()
    deadline = time.monotonic() + 30
    while source.stats.running and time.monotonic() < deadline:
        time.sleep(0.01)
    got = [r.values.tolist() for r in source.drain()]
    st = source.stats
    source.stop()
    print(json.dumps({"got": got, "bad": st.bad, "lines": st.lines, "eof": source.eof}))
    """
)


def test_stdin_source_reads_a_pipe_until_eof() -> None:
    env = {**os.environ, "PYTHONPATH": AGENT_DIR}
    proc = subprocess.Popen(
        [sys.executable, "-c", _STDIN_DRIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        now = time.time()
        data = (
            f'{now},1,2\n{{"t": {now}, "v": [3, 4]}}\n\nnonsense\n{now},5\n'
            f"{now},{'9' * 5000}\n{now},7,8\n{now},9"  # long line, good line, partial at EOF
        ).encode()
        out, err = proc.communicate(data, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["got"] == [[1, 2], [3, 4], [7, 8]]
    assert result["eof"] is True
    # nonsense + the long line + the partial line at EOF; width for "5"
    assert result["bad"] == {"malformed": 3, "width": 1}
    assert result["lines"] == 6


def test_open_source_builds_each_kind(tmp_path: Path) -> None:
    assert isinstance(open_source(f"tail:{tmp_path / 'x.csv'}"), TailSource)
    assert isinstance(open_source("exec:true"), ExecSource)
    mqtt = open_source("mqtt:a/b", broker=BrokerSettings(), client_id="x")
    assert isinstance(mqtt, MqttSource) and mqtt.client_id == "x"
