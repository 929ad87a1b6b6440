"""The embedded amqtt broker: the fallback of ``osml run`` when there is no Mosquitto binary.

Skipped as a whole when amqtt is not installed (``pip install 'osml[embedded-broker]'``).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

pytest.importorskip(
    "amqtt", reason="amqtt not installed: pip install 'osml[embedded-broker]' to test the fallback"
)

from osml.errors import TransportError
from osml.net import embedded_broker as eb
from osml.net.broker import bindable
from osml.net.embedded_broker import EmbeddedBroker, amqtt_available
from osml.net.transport import BrokerSettings, Message, Transport

# A real (embedded) broker on a loopback port: the broker tier.
pytestmark = pytest.mark.broker

CTX = "ctx"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def connect(broker: EmbeddedBroker) -> Iterator[Callable[..., Transport]]:
    """``connect(client_id, subscriptions=..., **kwargs)`` -> a connected 3.1.1 Transport."""
    with ExitStack() as stack:

        def make(
            client_id: str, subscriptions: tuple[str, ...] = (), **kwargs: object
        ) -> Transport:
            settings = BrokerSettings(broker.url, protocol=EmbeddedBroker.protocol)
            t = Transport(settings, client_id, subscriptions=subscriptions, **kwargs)  # type: ignore[arg-type]
            stack.callback(t.close)
            t.connect(timeout=5)
            return t

        yield make


def _next(t: Transport, timeout: float = 15.0) -> Message:
    msg = t.get(timeout)
    assert msg is not None, f"{t.client_id}: nothing received within {timeout} s"
    return msg


def _mqtt_str(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _connect_with_will(
    host: str, port: int, client_id: str, topic: str, payload: bytes
) -> socket.socket:
    """A raw MQTT 3.1.1 client with a retained QoS 1 will: it can vanish without DISCONNECT."""
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    body = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    body += _mqtt_str(client_id) + _mqtt_str(topic) + _mqtt_str(payload)
    sock = socket.create_connection((host, port), timeout=3)
    sock.sendall(bytes([0x10, len(body)]) + body)
    connack = sock.recv(4)
    assert connack == b"\x20\x02\x00\x00", connack
    return sock


def running(broker: EmbeddedBroker) -> bool:
    """``broker.running`` read afresh (mypy would keep an earlier ``assert`` on the attribute)."""
    return broker.running


def test_start_stop_idempotent_and_frees_port(tmp_path: Path) -> None:
    assert amqtt_available()
    b = EmbeddedBroker(tmp_path / "broker")
    assert b.url == f"mqtt://127.0.0.1:{b.port}"
    assert b.protocol == "3.1.1"
    assert not running(b)
    b.stop()  # stopping a broker that never started is fine
    with b:
        assert running(b)
        b.start()  # already running: no-op
        assert not bindable(b.host, b.port)
    assert not running(b)
    b.stop()
    b.stop()
    assert bindable(b.host, b.port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((b.host, b.port), timeout=1).close()


def test_stop_with_clients_connected_then_restart(
    broker: EmbeddedBroker, connect: Callable[..., Transport]
) -> None:
    rx = connect("b", (f"osml/{CTX}/b/in/+",))
    port = broker.port
    # amqtt's own shutdown can hang with clients connected: stop() must return anyway (a hang
    # guard with a generous bound, not a speed check).
    stopper = threading.Thread(target=broker.stop, name="stopper")
    stopper.start()
    stopper.join(timeout=60)
    assert not stopper.is_alive(), "EmbeddedBroker.stop() hung with a client connected"
    assert bindable(broker.host, port)
    broker.restart()
    assert broker.running and broker.port == port
    deadline = time.monotonic() + 20
    while not rx.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rx.connected, "the transport did not reconnect (and resubscribe) after the restart"
    connect("a").publish(f"osml/{CTX}/b/in/a", b"after-restart")
    assert _next(rx).payload == b"after-restart"


def test_inbox_roundtrip_qos1(connect: Callable[..., Transport]) -> None:
    rx = connect("b", (f"osml/{CTX}/b/in/+",))
    tx = connect("a")
    other = connect("c", (f"osml/{CTX}/c/in/+",))
    assert tx.publish(f"osml/{CTX}/b/in/a", b"frame-1")
    assert tx.publish(f"osml/{CTX}/b/in/a", b"frame-2")
    assert _next(rx) == Message(f"osml/{CTX}/b/in/a", b"frame-1", False)
    assert _next(rx) == Message(f"osml/{CTX}/b/in/a", b"frame-2", False)
    assert other.get(0.3) is None


def test_retained_status_reaches_late_subscriber_only(connect: Callable[..., Transport]) -> None:
    agent = connect("a")
    watcher = connect("watcher", (f"osml/{CTX}/+/status",), persistent=False)
    agent.publish(f"osml/{CTX}/a/status", b'{"state":"online"}', retain=True)
    assert _next(watcher).payload == b'{"state":"online"}'
    late = connect("late", (f"osml/{CTX}/+/status",), persistent=False)
    assert _next(late) == Message(f"osml/{CTX}/a/status", b'{"state":"online"}', True)
    # amqtt 0.12.1 would replay it to any new client (matching *other* clients' filters).
    bystander = connect("bystander", (f"osml/{CTX}/bystander/in/+",), persistent=False)
    assert bystander.get(0.3) is None
    # An empty retained payload clears it.
    agent.publish(f"osml/{CTX}/a/status", b"", retain=True)
    assert _next(watcher).payload == b""
    later = connect("later", (f"osml/{CTX}/+/status",), persistent=False)
    assert later.get(0.3) is None


def test_last_will_on_abrupt_loss_not_on_close(
    broker: EmbeddedBroker, connect: Callable[..., Transport]
) -> None:
    watcher = connect("watcher", (f"osml/{CTX}/+/status",), persistent=False)
    graceful = connect("g", will=(f"osml/{CTX}/g/status", b"offline"))
    graceful.close()
    assert watcher.get(0.3) is None
    sock = _connect_with_will(broker.host, broker.port, "w", f"osml/{CTX}/w/status", b"offline")
    sock.close()  # no DISCONNECT
    assert _next(watcher) == Message(f"osml/{CTX}/w/status", b"offline", False)
    late = connect("late", (f"osml/{CTX}/w/status",), persistent=False)
    assert _next(late) == Message(f"osml/{CTX}/w/status", b"offline", True)


def test_persistent_session_queues_qos1_while_offline(connect: Callable[..., Transport]) -> None:
    tx = connect("a")
    rx = connect("b", (f"osml/{CTX}/b/in/+",))
    rx.close()
    time.sleep(0.2)  # let the broker see the DISCONNECT, or it may still deliver to the old socket
    tx.publish(f"osml/{CTX}/b/in/a", b"while-offline")
    back = connect("b", (f"osml/{CTX}/b/in/+",))
    msg = _next(back)
    # amqtt delivers messages queued for an offline session with the retain flag set.
    assert (msg.topic, msg.payload) == (f"osml/{CTX}/b/in/a", b"while-offline")


def test_mqtt5_client_is_rejected(broker: EmbeddedBroker) -> None:
    t = Transport(BrokerSettings(broker.url, protocol="5"), "v5")
    with pytest.raises(TransportError):
        t.connect(timeout=1)
    t.close()


def test_port_in_use_is_a_transport_error(broker: EmbeddedBroker, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="already in use"):
        EmbeddedBroker(tmp_path / "second", port=broker.port).start(timeout=5)
    assert broker.running


def test_missing_amqtt_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eb, "amqtt_available", lambda: False)
    with pytest.raises(TransportError, match=r"osml\[embedded-broker\].*mosquitto"):
        EmbeddedBroker(tmp_path / "broker").start()
