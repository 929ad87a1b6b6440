"""Broker configuration: fleet files, the generated ACL and password file, certificates, and a
real Mosquitto started from the generated config proving what the ACL allows and refuses.

Tiers: pure parsing and text generation (no binaries); ``osml broker init``/``certs`` (need
``mosquitto_passwd``/``openssl``); integration against ``osml broker start`` (needs ``mosquitto``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
import pytest
from click.testing import Result
from paho.mqtt.enums import CallbackAPIVersion

from clihelp import run_command
from osml.cli.broker import broker
from osml.errors import BrokerRefusedError, ConfigError
from osml.net.broker import free_port
from osml.net.transport import BrokerSettings, Message, Transport
from osml.ops.brokers import TUNING, broker_conf, run_logins, with_port
from osml.ops.fleetfile import (
    Fleet,
    acl_text,
    find_mosquitto_passwd,
    load_fleet,
    parse_fleet,
    passwords,
)
from osml.wire import topics
from osml.wire.signing import load_key

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "broker-config" / "mosquitto.conf"
EXAMPLE = REPO / "broker-config" / "fleet.example.toml"

needs_passwd = pytest.mark.skipif(
    find_mosquitto_passwd() is None, reason="mosquitto_passwd not installed"
)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

F = TypeVar("F", bound=Callable[..., object])


def needs_mosquitto(test: F) -> F:
    """The test starts a Mosquitto with a password file: marked ``broker`` (tests/conftest.py)."""
    return pytest.mark.usefixtures("needs_mosquitto")(needs_passwd(test))


RING3 = """\
[contexts.lab]
agents = ["a", "b", "c"]
topology = "ring"

[monitor]
user = "watcher"
"""


def fleet_of(text: str) -> Fleet:
    import tomllib

    return parse_fleet(tomllib.loads(textwrap.dedent(text)))


def invoke(*args: str) -> Result:
    return run_command(broker, *args)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# -------------------------------------------------------------------------------- fleet files


def test_topology_context_gets_symmetric_neighbours_and_usernames() -> None:
    fleet = fleet_of(RING3)

    agents = {a.id: a for a in fleet.agents()}
    assert agents["a"].neighbours == ("b", "c")
    assert agents["b"].neighbours == ("a", "c")
    assert agents["a"].username == "lab.a"
    assert fleet.users() == ["lab.a", "lab.b", "lab.c", "watcher"]
    assert fleet.monitor is not None and fleet.monitor.contexts == ("lab",)


def test_explicit_links_and_random_topology() -> None:
    fleet = fleet_of("""\
        [contexts.field]
        agents = ["n", "s", "e"]
        [contexts.field.neighbours]
        n = ["s"]
        s = ["n", "e"]
        e = ["s"]

        [contexts.big]
        agents = ["0", "1", "2", "3", "4", "5"]
        topology = "random:3"
        seed = 7
    """)

    by_name = {(a.context, a.id): a.neighbours for a in fleet.agents()}
    assert by_name[("field", "s")] == ("n", "e")
    assert by_name[("field", "e")] == ("s",)
    big = [nbs for (ctx, _), nbs in by_name.items() if ctx == "big"]
    assert all(len(nbs) == 3 for nbs in big)
    assert fleet.monitor is None


def test_example_fleet_file_is_valid() -> None:
    fleet = load_fleet(EXAMPLE)

    assert [c.name for c in fleet.contexts] == ["greenhouse", "field"]
    assert fleet.monitor is not None and fleet.monitor.user == "monitor"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["[contexts]", "missing"]),
        (
            'monitr = {user = "m"}\n[contexts.lab]\nagents = ["a"]\ntopology = "full"\n',
            ["monitr", "did you mean 'monitor'"],
        ),
        ('[contexts.lab]\ntopology = "ring"\n', ["contexts.lab.agents", "missing"]),
        ('[contexts.lab]\nagents = ["a", "b"]\n', ["contexts.lab", "either topology"]),
        (
            '[contexts.lab]\nagents = ["a", "b"]\ntopology = "ring"\n[contexts.lab.neighbours]\na '
            '= ["b"]\nb = ["a"]\n',
            ["contexts.lab", "not both"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "b"]\ntopolgy = "ring"\n',
            ["contexts.lab.topolgy", "did you mean 'topology'"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "b"]\ntopology = "star"\n',
            ["contexts.lab.topology", "full, ring or random:K"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "b", "c"]\ntopology = "random:3"\n',
            ["contexts.lab.topology", "impossible"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "b c"]\ntopology = "ring"\n',
            ["contexts.lab.agents", "'b c'"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "x/y"]\ntopology = "ring"\n',
            ["contexts.lab.agents", "'x/y'"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "a"]\ntopology = "ring"\n',
            ["contexts.lab.agents", "twice"],
        ),
        (
            '[contexts.lab]\nagents = "a"\ntopology = "ring"\n',
            ["contexts.lab.agents", "list of strings"],
        ),
        ('[contexts."l+b"]\nagents = ["a"]\ntopology = "ring"\n', ["contexts", "'l+b'"]),
        (
            '[contexts.lab]\nagents = ["a", "b"]\nseed = 1\n[contexts.lab.neighbours]\na = '
            '["b"]\nb = ["a"]\n',
            ["contexts.lab.seed"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "b", "c"]\n[contexts.lab.neighbours]\na = ["b"]\nb = '
            '["c"]\nc = ["b"]\n',
            ["contexts.lab.neighbours.a", "does not list 'a'", "symmetric"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "b"]\n[contexts.lab.neighbours]\na = ["b", "z"]\nb = '
            '["a"]\n',
            ["contexts.lab.neighbours.a", "'z'"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "b"]\n[contexts.lab.neighbours]\na = ["b"]\n',
            ["contexts.lab.neighbours", "no entry for agent 'b'"],
        ),
        (
            '[contexts.lab]\nagents = ["a", "b"]\n[contexts.lab.neighbours]\na = ["a"]\nb = []\n',
            ["contexts.lab.neighbours.a", "itself"],
        ),
        (
            '[contexts.lab]\nagents = ["a"]\ntopology = "full"\n[monitor]\ncontexts = ["lab"]\n',
            ["monitor.user", "missing"],
        ),
        (
            '[contexts.lab]\nagents = ["a"]\ntopology = "full"\n[monitor]\nuser = "lab.a"\n',
            ["monitor.user", "'lab.a'"],
        ),
        (
            '[contexts.lab]\nagents = ["a"]\ntopology = "full"\n[monitor]\nuser = "m"\ncontexts = '
            '["farm"]\n',
            ["monitor.contexts", "'farm'"],
        ),
        (
            '[contexts."a.b"]\nagents = ["c"]\ntopology = "full"\n[contexts.a]\nagents = '
            '["b.c"]\ntopology = "full"\n',
            ["broker user 'a.b.c'", "rename"],
        ),
    ],
)
def test_bad_fleet_files_name_the_key(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)

    with pytest.raises(ConfigError) as info:
        load_fleet(path)

    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_fleet(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[contexts\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_fleet(tmp_path / "bad.toml")


# ------------------------------------------------------------------------------------- the ACL


def _blocks(acl: str) -> dict[str, list[str]]:
    """``user`` name -> its rule lines (comments and blank lines dropped)."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in acl.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("user "):
            current = blocks.setdefault(line[5:], [])
        else:
            assert current is not None, f"rule before any user block (applies to anonymous): {line}"
            current.append(line)
    return blocks


def test_acl_for_a_three_agent_ring() -> None:
    blocks = _blocks(acl_text(fleet_of(RING3)))

    assert blocks["lab.a"] == [
        "topic write osml/lab/b/in/a",
        "topic write osml/lab/c/in/a",
        "topic write osml/lab/a/status",
        "topic write osml/lab/a/metrics",
        "topic read osml/lab/a/in/#",
        "topic write osml/lab/a/in/b",
        "topic write osml/lab/a/in/c",
    ]
    assert blocks["lab.c"] == [
        "topic write osml/lab/a/in/c",
        "topic write osml/lab/b/in/c",
        "topic write osml/lab/c/status",
        "topic write osml/lab/c/metrics",
        "topic read osml/lab/c/in/#",
        "topic write osml/lab/c/in/a",
        "topic write osml/lab/c/in/b",
    ]
    assert blocks["watcher"] == ["topic read osml/lab/+/status", "topic read osml/lab/+/metrics"]
    assert set(blocks) == {"lab.a", "lab.b", "lab.c", "watcher"}


def test_acl_grants_nothing_broad() -> None:
    acl = acl_text(load_fleet(EXAMPLE))

    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert not [r for r in rules if r.startswith("pattern") or "readwrite" in r]
    assert not [
        r for r in rules if r.startswith("topic write") and "+" in r or r.endswith(" osml/#")
    ]
    # every agent's writes to inboxes carry its own id as the source level, or are in its own
    # inbox (to clear retained messages there)
    user = ""
    for rule in rules:
        if rule.startswith("user "):
            user = rule[5:]
        elif rule.startswith("topic write") and "/in/" in rule:
            me = user.split(".", 1)[1]
            assert rule.endswith("/in/" + me) or f"/{me}/in/" in rule, rule


# ------------------------------------------------------------------------------- passwords


def test_passwords_keep_existing_and_fill_the_rest() -> None:
    fleet = fleet_of(RING3)

    made = passwords(fleet, {"lab.a": "kept-secret", "gone.user": "x"})

    assert list(made) == ["lab.a", "lab.b", "lab.c", "watcher"]
    assert made["lab.a"] == "kept-secret"
    fresh = [made[u] for u in ("lab.b", "lab.c", "watcher")]
    assert len(set(fresh)) == 3 and all(len(p) >= 32 for p in fresh)


# --------------------------------------------------------------------------- mosquitto.conf


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            found.setdefault(key, []).append(value)
    return found


def test_generated_conf_follows_the_template(tmp_path: Path) -> None:
    template = _directives(TEMPLATE.read_text())
    generated = _directives(broker_conf(tmp_path, port=1999))

    for key, value in TUNING:
        assert template[key] == [value], key
        assert generated[key] == [value], key
    assert template["log_type"] == generated["log_type"] == ["error", "warning", "notice"]
    assert template["password_file"] == ["/etc/mosquitto/osml/passwd"]
    assert template["acl_file"] == ["/etc/mosquitto/osml/acl"]
    assert template["listener"] == ["1883", "8883"] and template["tls_version"] == ["tlsv1.2"]
    assert template["use_username_as_clientid"] == ["true", "true"]
    assert generated["password_file"] == [str(tmp_path.resolve() / "passwd")]
    assert generated["listener"] == ["1999 127.0.0.1"]
    assert "cafile" not in generated


def test_with_port_moves_the_first_listener() -> None:
    conf = "user root\nlistener 1883 127.0.0.1\nuse_username_as_clientid true\nlistener 8883\n"

    assert with_port(conf, 2000) == conf.replace("1883", "2000")
    with pytest.raises(ConfigError, match="--port"):
        with_port("user root\n", 2000)


# ------------------------------------------------------------------------ osml broker init


def _write_fleet(directory: Path, text: str = RING3) -> Path:
    path = directory / "fleet.toml"
    path.write_text(text)
    return path


@needs_passwd
def test_init_writes_hashed_passwd_acl_credentials_and_conf(tmp_path: Path) -> None:
    out = tmp_path / "broker"

    result = invoke(
        "init", "--fleet", str(_write_fleet(tmp_path)), "--out", str(out), "--run-as", "root"
    )

    assert result.exit_code == 0, result.output + result.stderr
    creds = out / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    plain = {}
    for user in ("lab.a", "lab.b", "lab.c", "watcher"):
        path = creds / f"{user}.pass"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        plain[user] = path.read_text().strip()
    passwd = (out / "passwd").read_text()
    assert [line.split(":", 1)[0] for line in passwd.splitlines()] == list(plain)
    assert all(line.split(":", 1)[1].startswith("$7$") for line in passwd.splitlines())
    assert not any(p in passwd for p in plain.values())
    assert "user lab.a" in (out / "acl").read_text()
    conf = _directives((out / "mosquitto.conf").read_text())
    assert conf["acl_file"] == [str((out / "acl").resolve())]
    assert conf["user"] == ["root"]
    assert "4 new, 0 kept" in result.output
    key = creds / "lab.key"  # the context's frame-signing key
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(load_key(key)) == 32
    key_before = load_key(key)

    again = invoke(
        "init",
        "--fleet",
        str(_write_fleet(tmp_path, RING3.replace(', "c"', ""))),
        "--out",
        str(out),
        "--run-as",
        "root",
    )

    assert again.exit_code == 0, again.stderr
    assert (creds / "lab.a.pass").read_text().strip() == plain["lab.a"]
    assert "0 new, 3 kept" in again.output and "lab.c left the fleet" in again.output
    assert load_key(key) == key_before and "(0 new)" in again.output  # kept: devices keep working
    assert "lab.c:" not in (out / "passwd").read_text()


def test_init_reports_a_bad_fleet_in_one_line(tmp_path: Path) -> None:
    fleet = _write_fleet(tmp_path, '[contexts.lab]\nagents = ["a", "b"]\ntopology = "tree"\n')

    result = invoke("init", "--fleet", str(fleet), "--out", str(tmp_path / "out"))

    assert_one_line_error(result, "contexts.lab.topology", "tree")
    assert not (tmp_path / "out").exists()


def test_start_without_init_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        invoke("start", "--dir", str(tmp_path)), "mosquitto.conf not found", "osml broker init"
    )


# ----------------------------------------------------------------------- osml broker certs


def _openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=True)
    return done.stdout


@needs_openssl
def test_certs_make_a_ca_and_a_server_cert_that_verifies(tmp_path: Path) -> None:
    out = tmp_path / "certs"

    result = invoke(
        "certs", "--out", str(out), "--host", "broker.lan", "--ip", "127.0.0.1", "--client", "lab.a"
    )

    assert result.exit_code == 0, result.stderr
    for name in ("ca.crt", "server.crt", "clients/lab.a.crt"):
        assert (
            _openssl("verify", "-CAfile", str(out / "ca.crt"), str(out / name))
            .strip()
            .endswith("OK")
        )
    for key in ("ca.key", "server.key", "clients/lab.a.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    text = _openssl("x509", "-in", str(out / "server.crt"), "-noout", "-text")
    assert "DNS:broker.lan" in text and "IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text
    assert "CA:TRUE" in _openssl("x509", "-in", str(out / "ca.crt"), "-noout", "-text")
    assert "server.crt" in result.output and "ca.key" in result.output
    ca_before = (out / "ca.crt").read_bytes()

    more = invoke("certs", "--out", str(out), "--host", "broker.lan", "--client", "lab.b")

    assert more.exit_code == 0, more.stderr
    assert (out / "ca.crt").read_bytes() == ca_before  # the CA is kept, so old certs stay valid
    assert "(kept)" in more.output
    assert (
        _openssl("verify", "-CAfile", str(out / "ca.crt"), str(out / "clients/lab.b.crt"))
        .strip()
        .endswith("OK")
    )


@needs_openssl
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--host", "broker.lan", "--ip", "not-an-ip"], "--ip 'not-an-ip'"),
        (["--host", "bad host"], "--host 'bad host'"),
        (["--host", "broker.lan", "--client", "a/b"], "--client"),
    ],
)
def test_certs_bad_input_is_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(invoke("certs", "--out", str(tmp_path / "c"), *args), fragment)


# ------------------------------------------------------------ osml run --broker-dir: its logins


def _broker_dir(tmp_path: Path, fleet_text: str) -> Path:
    fleet = fleet_of(fleet_text)
    (tmp_path / "acl").write_text(acl_text(fleet))
    (tmp_path / "credentials").mkdir()
    for user in fleet.users():
        (tmp_path / "credentials" / f"{user}.pass").write_text("pw\n")
    return tmp_path


def test_run_logins_give_each_agent_its_user_and_the_run_the_monitor(tmp_path: Path) -> None:
    directory = _broker_dir(tmp_path, RING3)

    logins = run_logins(directory, "lab", {"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]})

    assert logins.agents["b"] == ("lab.b", directory / "credentials" / "lab.b.pass")
    assert logins.monitor == ("watcher", directory / "credentials" / "watcher.pass")


@pytest.mark.parametrize(
    ("fleet_text", "context", "links", "fragment"),
    [
        (RING3, "lab", {"a": ["b"], "x": []}, "no user lab.x"),
        (RING3, "other", {"a": []}, "no user other.a"),
        (
            '[contexts.lab]\nagents = ["a", "b", "c"]\ntopology = "ring"\n',
            "lab",
            {"a": []},
            "add [monitor]",
        ),
    ],
)
def test_run_logins_name_what_does_not_fit_the_broker(
    tmp_path: Path, fleet_text: str, context: str, links: dict[str, list[str]], fragment: str
) -> None:
    directory = _broker_dir(tmp_path, fleet_text)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        run_logins(directory, context, links)


def test_run_logins_refuse_a_link_the_acl_does_not_allow(tmp_path: Path) -> None:
    four = (
        '[contexts.lab]\nagents = ["a", "b", "c", "d"]\ntopology = "ring"\n[monitor]\nuser = "m"\n'
    )
    directory = _broker_dir(tmp_path, four)
    with pytest.raises(ConfigError, match="links agent a to c .*fleet file.s topology"):
        run_logins(directory, "lab", {"a": ["b", "c"]})


# ------------------------------------------------------ integration: a real, ACL-checking broker

AGENTS = ("a", "b", "c", "d")  # a ring: a-b, b-c, c-d, d-a; so c is not a's neighbour


@dataclass
class AclBroker:
    context: str
    url: str
    tls_url: str | None
    ca_file: Path | None
    credentials: dict[str, str]
    log: Path

    def settings(
        self, user: str, *, password: str | None = None, protocol: str = "5"
    ) -> BrokerSettings:
        return BrokerSettings(
            url=self.url,
            username=user,
            password=self.credentials[user] if password is None else password,
            protocol=protocol,
        )

    def user(self, agent: str) -> str:
        return f"{self.context}.{agent}"


def _port_pair() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def _wait_for_port(
    port: int, proc: subprocess.Popen[str], log: Path, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"osml broker start exited early:\n{proc.stdout.read() if proc.stdout else ''}\n"
                f"{log.read_text() if log.exists() else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        f"broker did not open port {port}: {log.read_text() if log.exists() else ''}"
    )


@pytest.fixture(scope="module")
def acl_broker(
    needs_mosquitto: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AclBroker]:
    """`osml broker init` + `osml broker start` (a child process, stopped by PID) for a 4-ring."""
    if find_mosquitto_passwd() is None:
        pytest.skip("mosquitto_passwd not installed (Debian: apt-get install -y mosquitto)")
    tmp = tmp_path_factory.mktemp("aclbroker")
    context = f"acl-{uuid.uuid4().hex[:8]}"
    agents = ", ".join(f'"{a}"' for a in AGENTS)
    fleet = _write_fleet(
        tmp,
        f'[contexts.{context}]\nagents = [{agents}]\ntopology = "ring"\n\n'
        f'[monitor]\nuser = "watcher"\n',
    )
    port, tls_port = _port_pair()
    out = tmp / "broker"
    args = [
        "init",
        "--fleet",
        str(fleet),
        "--out",
        str(out),
        "--port",
        str(port),
        # pytest's tmp directories are 0700: the `mosquitto` user could not read them.
        "--run-as",
        "root",
    ]
    ca_file: Path | None = None
    if shutil.which("openssl") is not None:
        certs = tmp / "certs"
        made = invoke("certs", "--out", str(certs), "--host", "localhost", "--ip", "127.0.0.1")
        assert made.exit_code == 0, made.stderr
        ca_file = certs / "ca.crt"
        args += ["--certs", str(certs), "--tls-port", str(tls_port), "--tls-bind", "127.0.0.1"]
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    credentials = {p.stem: p.read_text().strip() for p in (out / "credentials").glob("*.pass")}
    log = out / "mosquitto.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from osml.cli.broker import broker; broker()",
            "start",
            "--dir",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_port(port, proc, log)
        yield AclBroker(
            context,
            f"mqtt://127.0.0.1:{port}",
            f"mqtts://127.0.0.1:{tls_port}" if ca_file else None,
            ca_file,
            credentials,
            log,
        )
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does; `start` then stops mosquitto
        try:
            output, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        match = re.search(r"\(pid (\d+)\)", output or "")
        if match:  # never leave the broker behind, whatever happened to `start`
            try:
                os.kill(int(match.group(1)), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _agent(
    broker: AclBroker, agent: str, *, subscribe: tuple[str, ...] | None = None, protocol: str = "5"
) -> Transport:
    subs = subscribe if subscribe is not None else (topics.inbox_filter(broker.context, agent),)
    # Not persistent: every test starts from a clean session for the same user (= client id).
    t = Transport(
        broker.settings(broker.user(agent), protocol=protocol),
        f"test-{agent}",
        subscriptions=subs,
        persistent=False,
    )
    t.connect(timeout=5)
    return t


def _next(t: Transport, timeout: float = 5.0) -> Message:
    msg = t.get(timeout=timeout)
    assert msg is not None, f"{t.client_id}: nothing received within {timeout} s"
    return msg


def _v5_publish_reason(broker: AclBroker, user: str, topic: str, payload: bytes) -> int:
    """Publish once with a bare MQTT 5 client and return the PUBACK reason code (osml's Transport
    does not wait for PUBACKs, so it cannot report them)."""
    acks: dict[int, int] = {}
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"probe-{user}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(user, broker.credentials[user])
    client.on_publish = lambda c, ud, mid, rc, props: acks.__setitem__(mid, rc.value)
    client.connect("127.0.0.1", int(broker.url.rsplit(":", 1)[1]))
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)
        deadline = time.monotonic() + 5
        while info.mid not in acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return acks[info.mid]
    finally:
        client.disconnect()
        client.loop_stop()


@needs_mosquitto
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_agent_reaches_its_neighbour_but_not_a_stranger(
    acl_broker: AclBroker, protocol: str
) -> None:
    ctx = acl_broker.context
    b, c = _agent(acl_broker, "b"), _agent(acl_broker, "c")
    a = _agent(acl_broker, "a", subscribe=(), protocol=protocol)
    d = _agent(acl_broker, "d", subscribe=())
    try:
        a.publish(topics.inbox(ctx, "c", "a"), b"to-stranger")  # denied: c is not a's neighbour
        a.publish(topics.inbox(ctx, "b", "a"), b"to-neighbour")
        got = _next(b)
        assert (got.topic, got.payload) == (topics.inbox(ctx, "b", "a"), b"to-neighbour")
        # The broker handles a's publishes in order, so the denied one is settled by now; a marker
        # from c's real neighbour d must be the first thing c sees.
        d.publish(topics.inbox(ctx, "c", "d"), b"marker")
        first = _next(c)
        assert (first.topic, first.payload) == (topics.inbox(ctx, "c", "d"), b"marker")
        assert c.get(timeout=0.3) is None and b.get(timeout=0.1) is None
    finally:
        for t in (a, b, c, d):
            t.close()


@needs_mosquitto
def test_denied_publish_gets_reason_135_on_mqtt5(acl_broker: AclBroker) -> None:
    ctx = acl_broker.context

    stranger = _v5_publish_reason(
        acl_broker, acl_broker.user("a"), topics.inbox(ctx, "c", "a"), b"x"
    )
    spoofed = _v5_publish_reason(
        acl_broker, acl_broker.user("a"), topics.inbox(ctx, "b", "d"), b"x"
    )
    allowed = _v5_publish_reason(
        acl_broker, acl_broker.user("a"), topics.inbox(ctx, "b", "a"), b"x"
    )
    monitor = _v5_publish_reason(acl_broker, "watcher", topics.status(ctx, "a"), b"forged")

    assert (stranger, spoofed, monitor) == (135, 135, 135)
    assert allowed in (0, 16)  # Success, or "No matching subscribers" when b is offline


@needs_mosquitto
def test_agent_cannot_pose_as_another_sender(acl_broker: AclBroker) -> None:
    ctx = acl_broker.context
    b = _agent(acl_broker, "b")
    a = _agent(acl_broker, "a", subscribe=())
    try:
        a.publish(topics.inbox(ctx, "b", "c"), b"i-am-c")  # a writing under c's name
        a.publish(topics.inbox(ctx, "b", "a"), b"i-am-a")
        got = _next(b)
        assert (got.topic, got.payload) == (topics.inbox(ctx, "b", "a"), b"i-am-a")
        assert b.get(timeout=0.3) is None
    finally:
        a.close()
        b.close()


@needs_mosquitto
def test_agent_can_clear_a_retained_message_a_neighbour_left_in_its_inbox(
    acl_broker: AclBroker,
) -> None:
    ctx = acl_broker.context
    planted = topics.inbox(ctx, "a", "b")
    b = _agent(acl_broker, "b", subscribe=())
    try:
        b.publish(planted, b"replayed to every new session", qos=1, retain=True)
        # publish() does not wait for the broker: see the message arrive (retained, or live if
        # this reader subscribed first; either way the broker has stored it) before the
        # clearing agent connects, or its clear could reach the broker first and clear nothing.
        seen = _agent(acl_broker, "a")
        try:
            assert _next(seen).payload == b"replayed to every new session"
        finally:
            seen.close()
        a = Transport(
            acl_broker.settings(acl_broker.user("a")),
            "test-a",
            subscriptions=[topics.inbox_filter(ctx, "a")],
            persistent=False,
            accept_retained=False,
            clear_retained=[planted],
        )
        a.connect(timeout=5)
        a.close()
        reader = _agent(acl_broker, "a")  # accepts retained messages: is one still there?
        try:
            b.publish(planted, b"marker", qos=1)
            got = _next(reader)
            assert (got.payload, got.retain) == (b"marker", False)
        finally:
            reader.close()
    finally:
        b.close()


@needs_mosquitto
def test_agent_cannot_read_another_agents_inbox(acl_broker: AclBroker) -> None:
    ctx = acl_broker.context
    # The broker grants the subscription (SUBACK ok) but delivers nothing on it.
    snoop = _agent(
        acl_broker, "a", subscribe=(topics.inbox_filter(ctx, "b"), topics.inbox_filter(ctx, "a"))
    )
    b = _agent(acl_broker, "b")
    c = _agent(acl_broker, "c", subscribe=())
    try:
        c.publish(topics.inbox(ctx, "b", "c"), b"for-b-only")
        assert _next(b).payload == b"for-b-only"
        b.publish(topics.inbox(ctx, "a", "b"), b"marker")  # after c's message was fanned out
        first = _next(snoop)
        assert (first.topic, first.payload) == (topics.inbox(ctx, "a", "b"), b"marker")
        assert snoop.get(timeout=0.3) is None
    finally:
        for t in (snoop, b, c):
            t.close()


@needs_mosquitto
def test_monitor_reads_status_and_metrics_but_not_frames(acl_broker: AclBroker) -> None:
    ctx = acl_broker.context
    monitor = Transport(
        acl_broker.settings("watcher"),
        "test-watcher",
        subscriptions=[f"{topics.ROOT}/{ctx}/#"],
        persistent=False,
    )
    monitor.connect(timeout=5)
    b = _agent(acl_broker, "b")
    a = _agent(acl_broker, "a", subscribe=())
    try:
        a.publish(topics.inbox(ctx, "b", "a"), b"frame")
        assert _next(b).payload == b"frame"
        a.publish(topics.metrics(ctx, "a"), b'{"round": 1}')
        a.publish(topics.status(ctx, "a"), b'{"state": "online"}', retain=True)
        seen = [_next(monitor), _next(monitor)]
        assert [(m.topic, m.payload) for m in seen] == [
            (topics.metrics(ctx, "a"), b'{"round": 1}'),
            (topics.status(ctx, "a"), b'{"state": "online"}'),
        ]
        assert monitor.get(timeout=0.3) is None
    finally:
        for t in (monitor, a, b):
            t.close()


@needs_mosquitto
@pytest.mark.parametrize("case", ["unknown user", "wrong password"])
def test_bad_credentials_are_refused(acl_broker: AclBroker, case: str) -> None:
    user = "intruder" if case == "unknown user" else acl_broker.user("a")
    settings = BrokerSettings(url=acl_broker.url, username=user, password="not-the-password")

    with pytest.raises(BrokerRefusedError, match="refused"):
        Transport(settings, "test-intruder", persistent=False).connect(timeout=5)


@needs_mosquitto
def test_anonymous_clients_are_refused(acl_broker: AclBroker) -> None:
    with pytest.raises(BrokerRefusedError, match="refused"):
        Transport(BrokerSettings(url=acl_broker.url), "test-anon", persistent=False).connect(
            timeout=5
        )


@needs_mosquitto
def test_agent_connects_over_tls_with_the_generated_ca(acl_broker: AclBroker) -> None:
    if acl_broker.tls_url is None or acl_broker.ca_file is None:
        pytest.skip("openssl not installed: no TLS listener")
    ctx = acl_broker.context
    settings = BrokerSettings(
        url=acl_broker.tls_url,
        username=acl_broker.user("b"),
        password=acl_broker.credentials[acl_broker.user("b")],
        ca_file=str(acl_broker.ca_file),
    )
    b = Transport(
        settings, "test-b-tls", subscriptions=[topics.inbox_filter(ctx, "b")], persistent=False
    )
    b.connect(timeout=5)
    a = _agent(acl_broker, "a", subscribe=())
    try:
        a.publish(topics.inbox(ctx, "b", "a"), b"over-tls")
        assert _next(b).payload == b"over-tls"
    finally:
        a.close()
        b.close()


def _connect_and_vanish(broker: AclBroker, user: str, will_topic: str, payload: bytes) -> None:
    """Connect as ``user`` with a last will, then drop the TCP connection without DISCONNECT."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"vanish-{user}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(user, broker.credentials[user])
    client.will_set(will_topic, payload, qos=1, retain=False)
    connected: list[bool] = []
    client.on_connect = lambda c, ud, flags, rc, props: connected.append(not rc.is_failure)
    client.connect("127.0.0.1", int(broker.url.rsplit(":", 1)[1]))
    deadline = time.monotonic() + 5
    while not connected and time.monotonic() < deadline:
        client.loop(timeout=0.05)
    assert connected == [True]
    sock = client.socket()
    assert sock is not None
    sock.close()  # the broker sees the connection drop: it publishes the will if it may


@needs_mosquitto
def test_last_will_only_on_the_agents_own_status(acl_broker: AclBroker) -> None:
    # Mosquitto 2.0 accepts a CONNECT whose will topic the user may not write, but checks the ACL
    # when it publishes the will: a forged "offline" for another agent never goes out.
    ctx = acl_broker.context
    monitor = Transport(
        acl_broker.settings("watcher"),
        "test-watcher-will",
        subscriptions=[f"{topics.ROOT}/{ctx}/+/status"],
        persistent=False,
    )
    monitor.connect(timeout=5)
    try:
        while monitor.get(timeout=0.2) is not None:  # retained statuses of earlier tests
            pass
        _connect_and_vanish(acl_broker, acl_broker.user("c"), topics.status(ctx, "c"), b"c-offline")
        got = _next(monitor)
        assert (got.topic, got.payload) == (topics.status(ctx, "c"), b"c-offline")

        _connect_and_vanish(acl_broker, acl_broker.user("c"), topics.status(ctx, "d"), b"forged")

        assert monitor.get(timeout=1.0) is None
    finally:
        monitor.close()


# ------------------------------------------ start-up failures of `osml agent`: one line, no retry


def _agent_config(tmp: Path, broker: AclBroker, broker_lines: list[str]) -> Path:
    config = tmp / "agent.toml"
    config.write_text(
        "\n".join(
            [
                "[agent]",
                'id = "a"',
                f'context = "{broker.context}"',
                'state_dir = "state"',
                "[broker]",
                *broker_lines,
                "[neighbours]",
                'ids = ["b"]',
                "[data]",
                'source = "generated:simple"',
                'agent = "0"',
                "[trainer]",
                f'socket = "{tmp / "no-trainer.sock"}"',
                "",
            ]
        )
    )
    return config


def _password_file(tmp: Path, name: str, password: str) -> Path:
    path = tmp / f"{name}.pass"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


@needs_mosquitto
@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("wrong CA", "does not verify"),
        ("no CA", "set broker.ca_file"),
        ("TLS to the plain port", "TLS handshake"),
        ("wrong password", "Not authorized"),
        ("unknown user", "Not authorized"),
    ],
)
def test_osml_agent_stops_on_a_tls_or_credential_failure_with_one_line(
    acl_broker: AclBroker, tmp_path: Path, case: str, fragment: str
) -> None:
    if acl_broker.tls_url is None or acl_broker.ca_file is None:
        pytest.skip("openssl not installed: no TLS listener")
    user = acl_broker.user("a")
    password = _password_file(tmp_path, user, acl_broker.credentials[user])
    tls = [f'url = "{acl_broker.tls_url}"', f'ca_file = "{acl_broker.ca_file}"']
    if case == "wrong CA":
        made = invoke("certs", "--out", str(tmp_path / "other"), "--host", "localhost")
        assert made.exit_code == 0, made.stderr
        tls[1] = f'ca_file = "{tmp_path / "other" / "ca.crt"}"'
    elif case == "no CA":
        tls = tls[:1]
    elif case == "TLS to the plain port":
        tls = [f'url = "{acl_broker.url.replace("mqtt://", "mqtts://")}"', tls[1]]
    elif case == "wrong password":
        password = _password_file(tmp_path, "wrong", "not-the-password")
    elif case == "unknown user":
        user = "intruder"
    config = _agent_config(
        tmp_path, acl_broker, [*tls, f'username = "{user}"', f'password_file = "{password}"']
    )

    done = subprocess.run(
        [sys.executable, "-m", "osml.cli", "agent", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no retries, no log line beside the error
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in done.stderr and "retrying" not in done.stderr


@needs_mosquitto
def test_a_refused_reconnect_after_a_first_connection_is_logged_and_retried(
    acl_broker: AclBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # The first connection succeeded, so a later refusal is an outage: paho keeps retrying and
    # each refusal is a warning, never an exception in the agent's loop.
    t = Transport(acl_broker.settings(acl_broker.user("c")), "test-c-later", persistent=False)
    t.connect(timeout=5)
    try:
        assert t.connected
        t._client.username_pw_set(acl_broker.user("c"), "changed-on-the-broker")
        with caplog.at_level("WARNING", logger="osml.net.transport"):
            sock = t._client.socket()
            assert sock is not None
            sock.close()  # drop the connection: paho reconnects with the new password
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and "refused" not in caplog.text:
                time.sleep(0.05)
        assert "refused the connection" in caplog.text and not t.connected
    finally:
        t.close()
