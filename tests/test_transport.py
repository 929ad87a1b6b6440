"""Transport and broker helpers: settings validation (no broker), then integration tests against
a real Mosquitto started by the fixtures in conftest.py.

Waits are bounded polls, never fixed sleeps. "Nothing else arrived" is checked with a marker
message published after the one that must not arrive: the broker keeps per-publisher order, so
if the marker comes first, the other message was never delivered.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from osml.errors import BrokerRefusedError, ConfigError, TransportError
from osml.net.broker import MosquittoProcess, free_port
from osml.net.transport import BrokerSettings, FloodGuard, Message, QueueLimits, Transport
from osml.wire import topics

PROTOCOLS = ["5", "3.1.1"]
WAIT = 10.0  # upper bound for anything that should happen within milliseconds

MakeTransport = Callable[..., Transport]


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def paho_threads(client_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"paho-mqtt-client-{client_id}"]


@pytest.fixture
def make_transport() -> Iterator[MakeTransport]:
    """``make_transport(url, client_id, protocol=..., connect=True, **kw)``, all closed after."""
    made: list[Transport] = []

    def make(
        url: str, client_id: str, *, protocol: str = "5", connect: bool = True, **kwargs: object
    ) -> Transport:
        t = Transport(BrokerSettings(url, protocol=protocol), client_id, **kwargs)  # type: ignore[arg-type]
        made.append(t)
        if connect:
            t.connect(timeout=WAIT)
        return t

    yield make
    for t in made:
        t.close()


# -- BrokerSettings: pure validation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "http://127.0.0.1:1883"}, "scheme"),
        ({"url": "127.0.0.1:1883"}, "scheme"),
        ({"url": "mqtt://127.0.0.1"}, "port"),
        ({"url": "mqtt://127.0.0.1:0"}, "port"),
        ({"url": "mqtt://127.0.0.1:99999"}, "port"),
        ({"url": "mqtt://:1883"}, "host"),
        ({"url": "mqtt://u:p@127.0.0.1:1883"}, "username"),
        ({"url": "mqtt://127.0.0.1:1883/x"}, "path"),
        ({"protocol": "4"}, "protocol"),
        ({"protocol": "3.1"}, "protocol"),
        ({"url": "mqtts://h:8883", "cert_file": "c.pem"}, "key_file"),
        ({"url": "mqtts://h:8883", "key_file": "k.pem"}, "cert_file"),
        ({"ca_file": "ca.pem"}, "mqtts"),
        ({"tls_insecure": True}, "mqtts"),
        ({"password": "secret"}, "username"),
        ({"keepalive": 0}, "keepalive"),
        ({"session_expiry": -1}, "session_expiry"),
    ],
)
def test_settings_reject_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BrokerSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_parse_hosts_ports_and_tls() -> None:
    default = BrokerSettings()
    v6 = BrokerSettings("mqtt://[::1]:1884")
    tls = BrokerSettings("mqtts://broker.lan:8883", ca_file="ca.pem", cert_file="c", key_file="k")

    assert (default.host, default.port, default.tls) == ("127.0.0.1", 1883, False)
    assert (v6.host, v6.port, v6.tls) == ("::1", 1884, False)
    assert (tls.host, tls.port, tls.tls) == ("broker.lan", 8883, True)


def test_transport_rejects_bad_arguments() -> None:
    s = BrokerSettings()
    with pytest.raises(ConfigError, match="client_id"):
        Transport(s, "")
    with pytest.raises(ConfigError, match="drop_rate"):
        Transport(s, "a", drop_rate=1.5)
    with pytest.raises(ConfigError, match="filter"):
        Transport(s, "a", subscriptions=["osml/x#"])
    with pytest.raises(ConfigError, match="will"):
        Transport(s, "a", will=("osml/+/status", b"x"))
    with pytest.raises(TransportError, match="connect"):
        Transport(s, "a").publish("osml/x", b"x")


# -- connection failures ------------------------------------------------------------------------


def test_connect_to_closed_port_raises_quickly() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    t = Transport(BrokerSettings(url), "nobody-home")

    with pytest.raises(TransportError, match="cannot connect") as info:
        t.connect(timeout=2.0)

    assert not isinstance(info.value, BrokerRefusedError)  # a broker may come up: retry
    assert not t.connected
    assert paho_threads("nobody-home") == []
    t.close()


def test_connect_to_silent_server_times_out_and_stops_the_loop() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"mqtt://127.0.0.1:{server.getsockname()[1]}"
        t = Transport(BrokerSettings(url), "silent-server")

        with pytest.raises(TransportError, match="no answer"):
            t.connect(timeout=0.3)

        assert paho_threads("silent-server") == []
        t.close()


@pytest.mark.usefixtures("needs_mosquitto")
def test_bad_credentials_are_named_and_stop_the_loop(tmp_path: Path) -> None:
    if not os.access("/usr/bin/mosquitto_passwd", os.X_OK):
        pytest.skip("mosquitto_passwd needed (apt-get install -y mosquitto)")
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["/usr/bin/mosquitto_passwd", "-c", "-b", str(passwd), "alice", "right"],
        check=True,
        capture_output=True,
    )
    conf = f"allow_anonymous false\npassword_file {passwd}"
    with MosquittoProcess(tmp_path / "broker", extra_conf=conf) as broker:
        for protocol in PROTOCOLS:
            cid = f"alice-{protocol}"
            good = Transport(
                BrokerSettings(broker.url, "alice", "right", protocol=protocol), cid + "-ok"
            )
            bad = Transport(BrokerSettings(broker.url, "alice", "wrong", protocol=protocol), cid)
            try:
                good.connect(timeout=WAIT)
                assert good.connected

                with pytest.raises(TransportError, match="credentials"):
                    bad.connect(timeout=WAIT)

                assert paho_threads(cid) == []
            finally:
                good.close()
                bad.close()


# -- messaging ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_publish_get_roundtrip(
    mosquitto: MosquittoProcess,
    make_transport: MakeTransport,
    unique_context: Callable[[str], str],
    protocol: str,
) -> None:
    ctx = unique_context("rt")
    b = make_transport(
        mosquitto.url, f"{ctx}-b", protocol=protocol, subscriptions=[topics.inbox_filter(ctx, "b")]
    )
    a = make_transport(mosquitto.url, f"{ctx}-a", protocol=protocol)
    topic = topics.inbox(ctx, "b", "a")

    assert a.publish(topic, b"\x00hello\xff") is True
    got = b.get(timeout=WAIT)

    assert got == Message(topic, b"\x00hello\xff", False)
    assert (a.stats.frames_out, a.stats.bytes_out) == (1, 7)
    assert (b.stats.frames_in, b.stats.bytes_in) == (1, 7)
    assert b.get(timeout=0) is None


def test_inbox_filter_receives_only_own_inbox(
    mosquitto: MosquittoProcess, make_transport: MakeTransport, unique_context: Callable[[str], str]
) -> None:
    ctx = unique_context("inbox")
    b = make_transport(mosquitto.url, f"{ctx}-b", subscriptions=[topics.inbox_filter(ctx, "b")])
    a = make_transport(mosquitto.url, f"{ctx}-a")

    a.publish(topics.inbox(ctx, "c", "a"), b"for c")
    a.publish(topics.status(ctx, "b"), b"status, not inbox")
    a.publish(topics.inbox(ctx, "b", "a"), b"for b")
    a.publish(topics.inbox(ctx, "b", "c"), b"marker")

    got = [b.get(timeout=WAIT), b.get(timeout=WAIT)]
    assert [m.payload if m else None for m in got] == [b"for b", b"marker"]


def test_tcp_nodelay_is_set(mosquitto: MosquittoProcess, make_transport: MakeTransport) -> None:
    t = make_transport(mosquitto.url, f"nodelay-{os.getpid()}")

    sock = t._client.socket()  # white-box: paho exposes the socket, osml does not

    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_persistent_session_queues_qos1_while_offline(
    mosquitto: MosquittoProcess,
    make_transport: MakeTransport,
    unique_context: Callable[[str], str],
    protocol: str,
) -> None:
    ctx = unique_context("persist")
    inbox = [topics.inbox_filter(ctx, "b")]
    b1 = make_transport(mosquitto.url, f"{ctx}-b", protocol=protocol, subscriptions=inbox)
    a = make_transport(mosquitto.url, f"{ctx}-a", protocol=protocol)
    b1.close()  # graceful: the session (and its subscription) stays on the broker

    a.publish(topics.inbox(ctx, "b", "a"), b"while you were away", qos=1)
    b2 = make_transport(mosquitto.url, f"{ctx}-b", protocol=protocol, subscriptions=inbox)

    got = b2.get(timeout=WAIT)
    assert got is not None
    assert (got.topic, got.payload) == (topics.inbox(ctx, "b", "a"), b"while you were away")


def test_non_persistent_session_does_not_queue(
    mosquitto: MosquittoProcess, make_transport: MakeTransport, unique_context: Callable[[str], str]
) -> None:
    ctx = unique_context("volatile")
    inbox = [topics.inbox_filter(ctx, "b")]
    b1 = make_transport(mosquitto.url, f"{ctx}-b", subscriptions=inbox, persistent=False)
    b1.close()  # clean session: the broker forgets b and its subscription
    early = make_transport(mosquitto.url, f"{ctx}-a0")
    early.publish(topics.inbox(ctx, "b", "a"), b"lost")
    early.close()  # waits for the PUBACK: "lost" is through the broker before b2 subscribes
    a = make_transport(mosquitto.url, f"{ctx}-a")

    b2 = make_transport(mosquitto.url, f"{ctx}-b", subscriptions=inbox, persistent=False)
    a.publish(topics.inbox(ctx, "b", "a"), b"marker")

    got = b2.get(timeout=WAIT)
    assert got is not None and got.payload == b"marker"


# -- hostile load: floods and retained messages ---------------------------------------------------


def test_a_flooding_sender_never_pushes_out_another_senders_messages(
    mosquitto: MosquittoProcess, make_transport: MakeTransport, unique_context: Callable[[str], str]
) -> None:
    """A reader that is not reading (between rounds) while one sender floods its inbox: the
    flood costs at most the queue's bytes, and the honest sender's messages all wait for it."""
    ctx = unique_context("flood")
    limits = QueueLimits(per_source_bytes=1 << 20, total_bytes=2 << 20)
    victim = make_transport(
        mosquitto.url,
        f"{ctx}-v",
        subscriptions=[topics.inbox_filter(ctx, "v")],
        receive_limits=limits,
        source_of=lambda topic: (topics.parse_inbox(topic) or ("", "", ""))[2],
    )
    flooder = make_transport(mosquitto.url, f"{ctx}-f")
    honest = make_transport(mosquitto.url, f"{ctx}-h")
    big = bytes(64 << 10)

    for i in range(200):
        flooder.publish(topics.inbox(ctx, "v", "f"), big, qos=1)
        if i % 50 == 0:
            honest.publish(topics.inbox(ctx, "v", "h"), b"honest %d" % i, qos=1)
    assert wait_for(lambda: victim.stats.frames_in == 204)

    assert victim.queue_peak_bytes <= limits.total_bytes
    assert victim.queued_bytes <= limits.per_source_bytes + 4 * 1024
    got = []
    while (msg := victim.get(timeout=0)) is not None:
        got.append(msg)
    assert [m.payload for m in got if m.topic.endswith("/h")] == [
        b"honest 0",
        b"honest 50",
        b"honest 100",
        b"honest 150",
    ]
    flood = [m for m in got if m.topic.endswith("/f")]
    assert 0 < len(flood) < 200
    # Served in turn, but each message keeps its place in the order they came in.
    seqs = [m.seq for m in got]
    assert len(set(seqs)) == len(seqs) and all(1 <= q <= 204 for q in seqs)
    for src in ("/h", "/f"):
        mine = [m.seq for m in got if m.topic.endswith(src)]
        assert mine == sorted(mine)
    assert seqs != sorted(seqs)  # the honest ones were served ahead of older flood messages
    assert victim.stats.dropped == {"queue_full": 200 - len(flood)}
    assert victim.stats.dropped_in == 200 - len(flood)
    assert victim.queued_bytes == 0


def drain(t: Transport, quiet: float = 0.5) -> list[Message]:
    """Everything ``t`` receives until nothing came for ``quiet`` seconds."""
    got = []
    while (msg := t.get(timeout=quiet)) is not None:
        got.append(msg)
    return got


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_source_that_keeps_flooding_is_unsubscribed_for_a_while(
    mosquitto: MosquittoProcess,
    make_transport: MakeTransport,
    unique_context: Callable[[str], str],
    protocol: str,
) -> None:
    ctx = unique_context("mute")
    own = {s: topics.inbox(ctx, "v", s) for s in ("f", "h")}
    victim = make_transport(
        mosquitto.url,
        f"{ctx}-v",
        protocol=protocol,
        subscriptions=list(own.values()),
        source_of=lambda topic: (topics.parse_inbox(topic) or ("", "", ""))[2],
        mute_floods=own,
        flood_guard=FloodGuard(burst_messages=20, rate_messages=1, strikes=5, max_s=3600.0),
    )
    flooder = make_transport(mosquitto.url, f"{ctx}-f", protocol=protocol)
    honest = make_transport(mosquitto.url, f"{ctx}-h", protocol=protocol)

    for i in range(200):
        flooder.publish(own["f"], b"flood %d" % i, qos=1)
    assert wait_for(lambda: victim.stats.mutes == 1)
    drain(victim)  # what was on its way before the broker heard of the mute
    flooder.publish(own["f"], b"muted", qos=1)
    flooder.close()  # waits for the PUBACK: the broker has routed it (to nobody)
    honest.publish(own["h"], b"heard", qos=1)

    got = [m.payload for m in drain(victim)]
    assert got == [b"heard"]
    assert victim.stats.mutes == 1 and victim.stats.dropped["muted"] >= 1
    assert victim.muted == ["f"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retired_subscriptions_of_a_persistent_session_are_dropped(
    mosquitto: MosquittoProcess,
    make_transport: MakeTransport,
    unique_context: Callable[[str], str],
    protocol: str,
) -> None:
    """An agent of an earlier version subscribed to in/+; its session remembers that."""
    ctx = unique_context("retired")
    old = make_transport(
        mosquitto.url, f"{ctx}-v", protocol=protocol, subscriptions=[topics.inbox_filter(ctx, "v")]
    )
    old.close()
    new = make_transport(
        mosquitto.url,
        f"{ctx}-v",
        protocol=protocol,
        subscriptions=[topics.inbox(ctx, "v", "n")],
        retired=[topics.inbox_filter(ctx, "v")],
    )
    sender = make_transport(mosquitto.url, f"{ctx}-s", protocol=protocol)

    sender.publish(topics.inbox(ctx, "v", "stranger"), b"not for the new subscriptions", qos=1)
    sender.publish(topics.inbox(ctx, "v", "n"), b"marker", qos=1)

    assert [m.payload for m in drain(new)] == [b"marker"]


def test_a_muted_source_is_heard_again_when_its_time_is_up(
    mosquitto: MosquittoProcess, make_transport: MakeTransport, unique_context: Callable[[str], str]
) -> None:
    ctx = unique_context("unmute")
    own = {"f": topics.inbox(ctx, "v", "f")}
    victim = make_transport(
        mosquitto.url,
        f"{ctx}-v",
        subscriptions=[own["f"]],
        source_of=lambda topic: "f",
        mute_floods=own,
        flood_guard=FloodGuard(burst_messages=5, rate_messages=1, strikes=1, first_s=0.2),
    )
    sender = make_transport(mosquitto.url, f"{ctx}-f")
    for i in range(50):
        sender.publish(own["f"], b"flood %d" % i, qos=1)
    assert wait_for(lambda: victim.stats.mutes >= 1)

    def heard_again() -> bool:
        sender.publish(own["f"], b"again", qos=1)
        return any(m.payload == b"again" for m in drain(victim, quiet=0.2))

    assert wait_for(heard_again)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retained_messages_in_an_inbox_are_refused_and_cleared(
    mosquitto: MosquittoProcess,
    make_transport: MakeTransport,
    unique_context: Callable[[str], str],
    protocol: str,
) -> None:
    ctx = unique_context("retained")
    planted = topics.inbox(ctx, "v", "n")
    planter = make_transport(mosquitto.url, f"{ctx}-p", protocol=protocol)
    planter.publish(planted, b"replayed to every new session", qos=1, retain=True)
    planter.close()  # waits for the PUBACK: the message is stored before anyone subscribes
    neighbour = make_transport(mosquitto.url, f"{ctx}-n", protocol=protocol)
    checker = make_transport(mosquitto.url, f"{ctx}-c1", subscriptions=[planted], persistent=False)
    seen = checker.get(timeout=WAIT)
    assert seen is not None and seen.retain  # it really is stored at the broker

    def victim(name: str, clear: list[str]) -> Transport:
        return make_transport(
            mosquitto.url,
            f"{ctx}-{name}",
            protocol=protocol,
            subscriptions=[topics.inbox_filter(ctx, "v")],
            accept_retained=False,
            clear_retained=clear,
            persistent=False,
        )

    refusing = victim("v1", [])
    neighbour.publish(topics.inbox(ctx, "v", "n"), b"marker", qos=1)
    got = refusing.get(timeout=WAIT)
    assert got is not None and got.payload == b"marker"  # the retained one never came out
    assert refusing.get(timeout=0) is None
    # MQTT 5 asks the broker for none (retain handling 2); 3.1.1 gets it and drops it.
    assert refusing.stats.dropped == ({} if protocol == "5" else {"retained": 1})

    victim("v2", [planted])  # clears its inbox topic on connect
    later = make_transport(mosquitto.url, f"{ctx}-c2", subscriptions=[planted], persistent=False)
    neighbour.publish(planted, b"marker 2", qos=1)
    after = later.get(timeout=WAIT)
    assert after is not None and (after.payload, after.retain) == (b"marker 2", False)


# -- last will ----------------------------------------------------------------------------------

_CHILD = """
import sys
from osml.net.transport import BrokerSettings, Transport
url, cid, topic = sys.argv[1:4]
t = Transport(BrokerSettings(url), cid, will=(topic, b'{"state": "offline"}'))
t.connect(10)
t.publish(topic, b'{"state": "online"}', retain=True)
print("ready", flush=True)
sys.stdin.read()
"""


def test_last_will_is_published_retained_when_client_dies(
    mosquitto: MosquittoProcess, make_transport: MakeTransport, unique_context: Callable[[str], str]
) -> None:
    ctx = unique_context("will")
    status = topics.status(ctx, "dying")
    watcher = make_transport(mosquitto.url, f"{ctx}-watcher", subscriptions=[status])

    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, mosquitto.url, f"{ctx}-dying", status],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            online = watcher.get(timeout=WAIT)
            assert online is not None and online.payload == b'{"state": "online"}'
        finally:
            child.send_signal(signal.SIGKILL)  # the socket dies without a DISCONNECT
            child.wait()

    will = watcher.get(timeout=WAIT)
    late = make_transport(mosquitto.url, f"{ctx}-late", subscriptions=[status])
    retained = late.get(timeout=WAIT)

    assert will is not None and will.payload == b'{"state": "offline"}'
    assert retained == Message(status, b'{"state": "offline"}', True)


def test_graceful_close_does_not_send_the_will(
    mosquitto: MosquittoProcess, make_transport: MakeTransport, unique_context: Callable[[str], str]
) -> None:
    ctx = unique_context("nowill")
    status, marker = topics.status(ctx, "leaver"), topics.metrics(ctx, "leaver")
    leaver = make_transport(mosquitto.url, f"{ctx}-leaver", will=(status, b"offline"))
    leaver.close()
    leaver.close()  # idempotent
    assert not leaver.connected

    # Subscribed after the close: a retained will would arrive before anything published later.
    watcher = make_transport(mosquitto.url, f"{ctx}-watcher", subscriptions=[status, marker])
    watcher.publish(marker, b"marker")

    got = watcher.get(timeout=WAIT)
    assert got is not None and got.topic == marker


# -- reconnects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reconnects_and_resubscribes_after_broker_restart(
    fresh_broker: MosquittoProcess,
    make_transport: MakeTransport,
    unique_context: Callable[[str], str],
    protocol: str,
) -> None:
    ctx = unique_context("restart")
    b = make_transport(
        fresh_broker.url,
        f"{ctx}-b",
        protocol=protocol,
        subscriptions=[topics.inbox_filter(ctx, "b")],
    )
    port = fresh_broker.port

    fresh_broker.restart()  # persistence off: the broker forgets b's session and subscription
    assert fresh_broker.port == port
    assert wait_for(lambda: b.stats.reconnects >= 1 and b.connected), "no reconnect"
    a = make_transport(fresh_broker.url, f"{ctx}-a", protocol=protocol)
    a.publish(topics.inbox(ctx, "b", "a"), b"after restart")

    got = b.get(timeout=WAIT)
    assert got is not None and got.payload == b"after restart"
    assert b.stats.reconnects >= 1


def test_qos1_published_while_offline_goes_out_after_reconnect(
    fresh_broker: MosquittoProcess,
    make_transport: MakeTransport,
    unique_context: Callable[[str], str],
) -> None:
    ctx = unique_context("offline")
    own_inbox = topics.inbox(ctx, "b", "b")
    b = make_transport(fresh_broker.url, f"{ctx}-b", subscriptions=[topics.inbox_filter(ctx, "b")])

    fresh_broker.stop()
    assert wait_for(lambda: not b.connected), "disconnect not noticed"
    queued = b.publish(own_inbox, b"queued", qos=1)
    lost = b.publish(own_inbox, b"qos0 offline", qos=0)
    fresh_broker.start()

    got = b.get(timeout=WAIT)
    assert (queued, lost) == (True, False)
    assert got is not None and got.payload == b"queued"
    assert b.stats.dropped_out == 1


# -- publish options and limits -----------------------------------------------------------------


def test_drop_rate_one_drops_only_droppable(
    mosquitto: MosquittoProcess, make_transport: MakeTransport, unique_context: Callable[[str], str]
) -> None:
    ctx = unique_context("drop")
    t = make_transport(
        mosquitto.url, f"{ctx}-b", subscriptions=[topics.inbox_filter(ctx, "b")], drop_rate=1.0
    )
    topic = topics.inbox(ctx, "b", "b")

    dropped = t.publish(topic, b"droppable", droppable=True)
    kept = t.publish(topic, b"kept")

    got = t.get(timeout=WAIT)
    assert (dropped, kept) == (False, True)
    assert got is not None and got.payload == b"kept"
    assert (t.stats.dropped_out, t.stats.frames_out) == (1, 1)


def test_drop_rate_is_reproducible_with_a_seed(
    mosquitto: MosquittoProcess, make_transport: MakeTransport, unique_context: Callable[[str], str]
) -> None:
    ctx = unique_context("seed")
    runs = []
    for name in ("x", "y"):
        t = make_transport(mosquitto.url, f"{ctx}-{name}", drop_rate=0.5, seed=7)
        runs.append([t.publish(topics.metrics(ctx, name), b"m", droppable=True) for _ in range(40)])

    assert runs[0] == runs[1]
    assert 0 < sum(runs[0]) < 40


@pytest.mark.usefixtures("needs_mosquitto")
def test_publish_rejections_raise_transport_error(
    tmp_path: Path, make_transport: MakeTransport
) -> None:
    with MosquittoProcess(tmp_path, extra_conf="max_packet_size 4096") as broker:
        t = make_transport(broker.url, "limits")

        with pytest.raises(TransportError, match="maximum packet size"):
            t.publish("osml/limits/x", bytes(5000))
        with pytest.raises(TransportError, match="osml/\\+/x"):
            t.publish("osml/+/x", b"wildcards are for filters")
        with pytest.raises(TransportError, match="QoS"):
            t.publish("osml/limits/x", b"x", qos=3)
        assert t.publish("osml/limits/x", bytes(3000)) is True
        t.close()
        with pytest.raises(TransportError, match="close"):
            t.publish("osml/limits/x", b"x")
        with pytest.raises(TransportError, match="closed"):
            t.connect()


# -- broker helper ------------------------------------------------------------------------------


@pytest.mark.usefixtures("needs_mosquitto")
def test_ipv6_loopback_roundtrip(tmp_path: Path, make_transport: MakeTransport) -> None:
    try:
        port = free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with MosquittoProcess(tmp_path, port, host="::1") as broker:
        assert broker.url == f"mqtt://[::1]:{port}"
        t = make_transport(broker.url, "v6", subscriptions=["osml/v6/#"])
        t.publish("osml/v6/x", b"six")
        got = t.get(timeout=WAIT)
        assert got is not None and got.payload == b"six"


def test_broker_start_on_a_taken_port_fails_clearly(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    taken = MosquittoProcess(tmp_path, mosquitto.port)  # the session broker holds this port
    try:
        with pytest.raises(TransportError, match="already in use"):
            taken.start()

        assert taken.pid is None
    finally:
        taken.stop()  # idempotent, also after a failed start


@pytest.mark.usefixtures("needs_mosquitto")
def test_broker_start_failure_reports_the_log(tmp_path: Path) -> None:
    broken = MosquittoProcess(tmp_path, extra_conf="no_such_option 1")
    try:
        with pytest.raises(TransportError, match="(?s)mosquitto exited.*no_such_option"):
            broken.start()

        assert broken.pid is None
    finally:
        broken.stop()


def _open_inet_sockets() -> int:
    """Descriptors of this process that are sockets (paho's wake-up pair is two of them)."""
    fds = os.listdir("/proc/self/fd")
    return sum(
        1
        for fd in fds
        if os.path.exists(f"/proc/self/fd/{fd}")
        and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    )


def test_closing_a_transport_closes_all_its_sockets(mosquitto: MosquittoProcess) -> None:
    # Prepare: one transport opened and closed first, so lazily made resources are settled.
    with Transport(BrokerSettings(mosquitto.url), "sockets-warmup", persistent=False):
        pass
    before = _open_inet_sockets()

    with Transport(BrokerSettings(mosquitto.url), "sockets-counted", persistent=False) as t:
        assert _open_inet_sockets() >= before + 1  # the connection (and paho's wake-up pair)
        t.publish("osml/sockets/test", b"x", qos=1)

    # No garbage collection here: the sockets must be closed by close() itself.
    assert _open_inet_sockets() == before


def test_a_copy_made_from_a_frame_comes_after_it(
    mosquitto: MosquittoProcess, make_transport: MakeTransport, unique_context: Callable[[str], str]
) -> None:
    """What screening's order rule rests on, through a real broker: h sends its frame, chunk by
    chunk, to x first and then to the victim v; x reflects it as soon as it has it whole and
    sends the copy to v. v reads nothing until everything is in (an agent busy training), so
    its receive queue serves the two senders in turn; the inbox still sees h's frame whole
    before x's."""
    import numpy as np

    from osml.wire.chunking import encode_chunks
    from osml.wire.inbox import Inbox

    ctx = unique_context("order")
    src_of = lambda topic: (topics.parse_inbox(topic) or ("", "", ""))[2]  # noqa: E731
    victim = make_transport(
        mosquitto.url, f"{ctx}-v", subscriptions=[topics.inbox_filter(ctx, "v")], source_of=src_of
    )
    copier = make_transport(
        mosquitto.url, f"{ctx}-x", subscriptions=[topics.inbox_filter(ctx, "x")], source_of=src_of
    )
    honest = make_transport(mosquitto.url, f"{ctx}-h")
    emb = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)

    def frames(source: str, rows: np.ndarray, max_bytes: int) -> list[bytes]:
        return encode_chunks(
            context=ctx,
            source=source,
            round=0,
            step_start=0,
            model_version=1,
            embeddings=rows,
            max_frame_bytes=max_bytes,
            key=None,
        )

    def copy() -> None:
        box = Inbox(context=ctx, me="x", neighbours=["h"], dim=8)
        while (whole := box.complete(0, "h")) is None:
            msg = copier.get(timeout=WAIT)
            assert msg is not None
            box.offer(msg.topic, msg.payload, 0, arrived=msg.seq)
        rows = whole.embeddings
        # In one message: served in turn, it would be whole at v long before h's frame.
        for payload in frames("x", 2 * rows.mean(axis=0) - rows, 1 << 20):
            copier.publish(topics.inbox(ctx, "v", "x"), payload, qos=1)

    worker = threading.Thread(target=copy)
    worker.start()
    chunks = frames("h", emb, 1024)  # several chunks
    assert len(chunks) > 2
    for payload in chunks:  # as an agent publishes: chunk by chunk, to every neighbour in turn
        for nb in ("x", "v"):
            honest.publish(topics.inbox(ctx, nb, "h"), payload, qos=1)
    worker.join(timeout=WAIT)
    assert not worker.is_alive()
    assert wait_for(lambda: victim.stats.frames_in == len(chunks) + 1)

    box = Inbox(context=ctx, me="v", neighbours=["h", "x"], dim=8)
    served = []
    while (msg := victim.get(timeout=0)) is not None:
        served.append(src_of(msg.topic))
        assert box.offer(msg.topic, msg.payload, 0, arrived=msg.seq) is None
    assert "x" in served[:2]  # served in turn: x's one message long before h's last chunk
    came_h, came_x = box.arrival(0, "h"), box.arrival(0, "x")
    assert came_h is not None and came_x is not None and came_h < came_x
