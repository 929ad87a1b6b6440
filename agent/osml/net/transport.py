"""The MQTT connection of one agent. The only osml module that imports paho.

:class:`Transport` wraps one ``paho.mqtt.client.Client`` running its network loop in a thread:

* :meth:`Transport.connect` opens the socket, waits for CONNACK and for the SUBACK of the
  subscriptions, and turns every failure (closed port, DNS, timeout) into a
  :class:`~osml.errors.TransportError`, and a CONNACK that refuses us for good (credentials, not
  authorised) into its subclass :class:`~osml.errors.BrokerRefusedError`, which callers must not
  retry;
* after that, paho reconnects by itself with a short backoff, and every reconnect resubscribes
  (subscriptions are sent from ``on_connect``);
* sessions are persistent by default (MQTT 5: ``clean_start=False`` plus a session expiry;
  MQTT 3.1.1: ``clean_session=False``), so QoS 1 messages sent to an agent while it was briefly
  offline are queued by the broker and delivered when it comes back;
* received messages land in a :class:`~osml.net.fairqueue.FairQueue` read with
  :meth:`Transport.get`: bounded in bytes per source and in total, served source by source, so
  one flooding sender costs bounded memory and never pushes out another sender's messages;
* with ``accept_retained=False`` (an agent's inbox) retained messages are refused: MQTT 5
  subscriptions ask for none (retain handling 2) and any that arrive anyway (3.1.1) are dropped
  and counted; ``clear_retained`` topics get an empty retained message on every connect, which
  deletes whatever a neighbour left there;
* ``mute_floods`` names, per source, its own subscription: a source that sends far more than an
  honest one is unsubscribed for a while (:class:`~osml.net.fairqueue.FloodGuard`), so that
  the broker stops routing its flood to us; what still arrives from it meanwhile is dropped
  (``muted``). Otherwise the broker's one queue for this client, full of the flood, would drop
  or strand the other senders' messages before they reach ours;
* the optional last will is published (retained, QoS 1) by the broker only if the connection is
  lost without a DISCONNECT; :meth:`Transport.close` disconnects gracefully, so no will.

The paho callbacks are tiny adapters: they fill the queue, set events and bump counters.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from osml.errors import BrokerRefusedError, ConfigError, TransportError
from osml.net.fairqueue import OVERHEAD, FairQueue, FloodGuard, QueueLimits

__all__ = [
    "BrokerSettings",
    "FloodGuard",
    "Message",
    "QueueLimits",
    "Transport",
    "TransportStats",
]

_log = logging.getLogger(__name__)


class _QuietAfterDisconnect(logging.Filter):
    """paho's network thread logs "Client is not connected" at ERROR when it runs once more after
    our own DISCONNECT; that is the expected end of a session, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_log.addFilter(_QuietAfterDisconnect())

_SCHEMES = {"mqtt": False, "mqtts": True}
_PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
# CONNACK reason codes that mean "your credentials are wrong" (MQTT 5 134/135; 3.1.1 4/5).
_AUTH_REFUSALS = {"Bad user name or password", "Not authorized"}
# CONNACK refusals that the same settings will get again: BrokerRefusedError, never retried.
_PERMANENT_REFUSALS = _AUTH_REFUSALS | {
    "Banned",
    "Bad authentication method",
    "Client identifier not valid",
    "Unsupported protocol version",
}
# Fixed header (<= 5) + topic length (2) + packet id (2) + v5 properties length (<= 4).
_PUBLISH_OVERHEAD = 13


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect. Validated on construction (ConfigError names the fix).

    ``url`` is ``mqtt://HOST:PORT`` or ``mqtts://HOST:PORT`` (TLS); IPv6 hosts go in brackets,
    e.g. ``mqtt://[::1]:1883``. ``tls_insecure`` skips the certificate's hostname check (lab
    certificates). ``session_expiry`` is how long (seconds) an MQTT 5 broker keeps a persistent
    session and its queued messages after the client goes away.
    """

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    protocol: str = "5"
    keepalive: int = 30
    session_expiry: int = 3600

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in _SCHEMES:
            raise ConfigError(
                f"broker url {self.url!r}: scheme must be mqtt:// or mqtts:// (TLS), "
                f"e.g. mqtt://127.0.0.1:1883"
            )
        if not parts.hostname:
            raise ConfigError(f"broker url {self.url!r} has no host: use mqtt://HOST:PORT")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port is None or not 1 <= port <= 65535:
            raise ConfigError(
                f"broker url {self.url!r} needs a port between 1 and 65535: use mqtt://HOST:PORT "
                f"(usually 1883, or 8883 for mqtts)"
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"broker url {self.url!r}: put credentials in username/password, not in the url"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(
                f"broker url {self.url!r}: use mqtt://HOST:PORT with no path or query"
            )
        if self.protocol not in _PROTOCOLS:
            raise ConfigError(f'protocol {self.protocol!r} not supported: use "5" or "3.1.1"')
        if self.password is not None and self.username is None:
            raise ConfigError("password is set without username: set username too")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError(
                "cert_file and key_file go together (client certificate and its private key): "
                "set both or neither"
            )
        uses_tls_files = any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))
        if (uses_tls_files or self.tls_insecure) and not self.tls:
            raise ConfigError(
                f"TLS options (ca_file, cert_file, key_file, tls_insecure) need an mqtts:// url, "
                f"got {self.url!r}"
            )
        if not 5 <= self.keepalive <= 65535:
            raise ConfigError(f"keepalive {self.keepalive} out of range: use 5-65535 seconds")
        if not 0 <= self.session_expiry <= 0xFFFFFFFF:
            raise ConfigError(
                f"session_expiry {self.session_expiry} out of range: use 0-4294967295 seconds"
            )

    @property
    def host(self) -> str:
        """The broker host, without IPv6 brackets."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0

    @property
    def tls(self) -> bool:
        """True for ``mqtts://`` urls."""
        return _SCHEMES.get(urlsplit(self.url).scheme, False)


@dataclass(frozen=True)
class Message:
    """One received MQTT message. ``retain`` is true for retained messages sent on subscribe;
    ``seq`` counts the messages this transport received, in the order they came (the receive
    queue serves senders in turn, so this is what keeps the order they came in)."""

    topic: str
    payload: bytes
    retain: bool
    seq: int = field(default=0, compare=False)  # when it came, not what it is


@dataclass
class TransportStats:
    """Traffic counters, updated by :class:`Transport` (read them any time; they only grow).

    ``frames_out``/``bytes_out`` count publishes handed to paho; ``dropped_out`` counts publishes
    dropped on purpose (``drop_rate``) or QoS 0 publishes lost while offline; ``dropped_in``
    counts received messages dropped before :meth:`Transport.get`, and ``dropped`` the same by
    reason: ``queue_full`` (the sender's share of the receive queue was full: a flood, or a
    reader that stalled), ``queue_total`` (the whole queue was), ``retained`` (a retained
    message where none is accepted), ``muted`` (from a source muted for flooding);
    ``reconnects`` counts successful connections after the first; ``mutes`` how often a
    flooding source was unsubscribed.
    """

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped_out: int = 0
    dropped_in: int = 0
    reconnects: int = 0
    mutes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def _describe(reason: ReasonCode) -> str:
    name = str(reason)
    if name in _AUTH_REFUSALS:
        return (
            f"broker refused the connection: {name} (bad credentials? check username and password)"
        )
    return f"broker refused the connection: {name} (reason code {reason.value})"


def _tls_refusal(exc: BaseException, s: BrokerSettings) -> str | None:
    """Why a TLS connection attempt failed for good (the same settings fail again), or None.

    A certificate that does not verify, and a handshake the server breaks off (a plain MQTT
    port reached with mqtts://, a client certificate required but not given), are settings to
    fix; a refused port or a timeout is a broker that may yet come up.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            f"check that broker.ca_file ({s.ca_file}) is the CA that signed the broker's "
            f"certificate and that the certificate names {s.host}"
            if s.ca_file
            else "set broker.ca_file to the CA that signed the broker's certificate"
        )
        return (
            f"TLS: the certificate of broker {s.url} does not verify ({exc.verify_message}); {hint}"
        )
    if isinstance(exc, (ssl.SSLError, ConnectionResetError)):
        return (
            f"TLS handshake with broker {s.url} failed ({exc}); is port {s.port} a TLS listener "
            f"(plain MQTT needs mqtt://), and does it want a client certificate (cert_file)?"
        )
    return None


def _check_filter(topic_filter: str) -> str:
    levels = topic_filter.split("/")
    ok = (
        bool(topic_filter)
        and "\0" not in topic_filter
        and all(level in ("+", "#") or not ("+" in level or "#" in level) for level in levels)
        and "#" not in levels[:-1]
    )
    if not ok:
        raise ConfigError(
            f"invalid subscription filter {topic_filter!r}: '+' and '#' must be whole levels, "
            f"'#' only last"
        )
    return topic_filter


class Transport:
    """One MQTT client: connect, publish, receive, reconnect by itself, close.

    ``subscriptions`` are topic filters subscribed with QoS 1 on every (re)connect. ``will`` is
    ``(topic, payload)``, published retained with QoS 1 by the broker if the connection is lost
    without a DISCONNECT. ``drop_rate`` (for tests) drops that share of ``droppable`` publishes at
    random, seeded by ``seed``. ``persistent`` keeps the broker-side session across disconnects,
    keyed by ``client_id``, which must therefore be stable and unique.

    Receiving: ``receive_limits`` bound the receive queue; ``source_of(topic)`` names the
    sender a message counts against (default: its topic); ``accept_retained=False`` refuses
    retained messages; ``clear_retained`` topics are cleared of retained messages on each connect.
    ``mute_floods`` maps a source to its own filter in ``subscriptions``, which is unsubscribed
    while ``flood_guard`` (default :class:`~osml.net.fairqueue.FloodGuard`) says the source is
    flooding. ``retired`` filters are unsubscribed on every connect (a persistent session may
    still hold them from an earlier run).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        *,
        subscriptions: Sequence[str] = (),
        will: tuple[str, bytes] | None = None,
        drop_rate: float = 0.0,
        seed: int | None = None,
        persistent: bool = True,
        receive_limits: QueueLimits | None = None,
        source_of: Callable[[str], str] | None = None,
        accept_retained: bool = True,
        clear_retained: Sequence[str] = (),
        mute_floods: Mapping[str, str] | None = None,
        flood_guard: FloodGuard[str] | None = None,
        retired: Sequence[str] = (),
    ) -> None:
        if not client_id:
            raise ConfigError("client_id is empty: give each agent a stable, unique id")
        if not 0.0 <= drop_rate <= 1.0:
            raise ConfigError(f"drop_rate {drop_rate} out of range: use 0.0-1.0")
        self.settings = settings
        self.client_id = client_id
        self.subscriptions = tuple(_check_filter(f) for f in subscriptions)
        self.persistent = persistent
        self.stats = TransportStats()
        self._drop_rate = drop_rate
        self._rng = random.Random(seed)
        self._v5 = settings.protocol == "5"
        # Bounded in bytes per sender and in total: a flood costs at most total_bytes.
        self._inbox: FairQueue[Message] = FairQueue(receive_limits)
        self._arrived = threading.Condition()  # guards _inbox
        self._source_of: Callable[[str], str] = source_of or (lambda topic: topic)
        self._accept_retained = accept_retained
        self._clear_retained = tuple(clear_retained)
        self._own_clears: Counter[str] = Counter()  # 3.1.1: our clears coming back to us
        self._mute_floods = dict(mute_floods or {})
        stray = set(self._mute_floods.values()) - set(self.subscriptions)
        if stray:
            raise ConfigError(f"mute_floods filters {sorted(stray)} are not in subscriptions")
        self._guard: FloodGuard[str] = flood_guard or FloodGuard()
        self._muted: set[str] = set()  # filters unsubscribed for now (guarded by _lock)
        self._retired = tuple(_check_filter(f) for f in retired)
        self._sub_topics: list[str] = []  # what the last SUBSCRIBE from on_connect asked for
        self._lock = threading.Lock()  # guards stats and the state below
        self._session_up = threading.Event()  # CONNACK ok and subscriptions acknowledged
        self._settled = threading.Event()  # first CONNACK or SUBACK outcome, good or bad
        self._error: str | None = None  # why the first connection attempt failed
        self._refused = False  # ... and whether the CONNACK refused us for good
        self._sub_mid: int | None = None
        self._connects = 0
        self._max_packet: int | None = None  # MQTT 5 broker's Maximum Packet Size
        self._started = False
        self._closed = False

        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=_PROTOCOLS[settings.protocol],
            # MQTT 5 takes clean_start at connect time; paho rejects clean_session for v5.
            clean_session=None if self._v5 else not persistent,
        )
        self._client.enable_logger(_log)
        # paho types min_delay as int but computes with floats; a short first retry matters.
        self._client.reconnect_delay_set(min_delay=0.2, max_delay=5)  # type: ignore[arg-type]
        self._client.max_inflight_messages_set(100)
        self._client.max_queued_messages_set(0)  # 0 = unlimited: publish never refuses
        if settings.username is not None:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            self._setup_tls()
        if will is not None:
            topic, payload = will
            if not topic or any(c in topic for c in "+#\0"):
                raise ConfigError(
                    f"invalid last will topic {topic!r}: a plain topic, no + # or NUL"
                )
            try:
                self._client.will_set(topic, payload, qos=1, retain=True)
            except ValueError as exc:
                raise ConfigError(f"invalid last will {will!r}: {exc}") from exc
        self._client.on_socket_open = self._on_socket_open
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def _setup_tls(self) -> None:
        s = self.settings
        try:
            self._client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"cannot load TLS files (ca_file={s.ca_file!r}, cert_file={s.cert_file!r}, "
                f"key_file={s.key_file!r}): {exc}"
            ) from exc
        if s.tls_insecure:
            self._client.tls_insecure_set(True)

    # -- paho callbacks: tiny adapters, run in paho's loop thread; they must never raise --------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on; bursts of small frames then stall ~40 ms waiting for ACKs.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._lock:
                first = self._connects == 0
                if first:
                    self._error = _describe(reason_code)
                    self._refused = str(reason_code) in _PERMANENT_REFUSALS
            if not first:  # the first one is raised by connect(): no second line for it
                _log.warning("%s: %s", self.client_id, _describe(reason_code))
            self._settled.set()
            return
        with self._lock:
            self._connects += 1
            if self._connects > 1:
                self.stats.reconnects += 1
            self._max_packet = getattr(properties, "MaximumPacketSize", None)
        with self._lock:
            active = [t for t in self.subscriptions if t not in self._muted]
            gone = [*self._retired, *sorted(self._muted)]
            self._sub_topics = active
        if gone:  # the session may still hold them
            client.unsubscribe(gone)
        if not active:
            self._session_up.set()
            self._settled.set()
            return
        self._clear_retained_messages(client)
        try:
            mid = self._subscribe(client, active)
        except ValueError as exc:  # filters are checked in __init__; never kill paho's thread
            with self._lock:
                self._error = f"cannot subscribe to {self.subscriptions}: {exc}"
            self._settled.set()
            return
        with self._lock:
            self._sub_mid = mid

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            if mid != self._sub_mid:
                return
            failed = [
                f"{t}: {rc}" for t, rc in zip(self._sub_topics, reason_codes) if rc.is_failure
            ]
            if failed and self._connects == 1:
                self._error = "broker refused subscription(s): " + "; ".join(failed)
        if failed:
            _log.warning("%s: broker refused subscription(s): %s", self.client_id, failed)
        else:
            self._session_up.set()
        self._settled.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._session_up.clear()
        if not self._closed and self._connects:  # before a first session, connect() reports
            _log.info("%s: connection lost (%s); paho reconnects", self.client_id, reason_code)

    def _subscribe(self, client: mqtt.Client, filters: Sequence[str]) -> int | None:
        """SUBSCRIBE ``filters`` with QoS 1; returns the packet id (None when offline)."""
        if not self._v5:
            return client.subscribe([(t, 1) for t in filters])[1]
        # MQTT 5: resend retained messages only for new subscriptions, not on every reconnect;
        # where none are accepted, never (and do not echo our own clearing publishes back).
        options = (
            SubscribeOptions(qos=1, retainHandling=1)
            if self._accept_retained
            else SubscribeOptions(qos=1, retainHandling=2, noLocal=True)
        )
        return client.subscribe([(t, options) for t in filters])[1]

    def _clear_retained_messages(self, client: mqtt.Client) -> None:
        # Before subscribing: an empty retained message deletes the one stored on that topic.
        for topic in self._clear_retained:
            client.publish(topic, b"", qos=1, retain=True)
            if not self._v5:  # no noLocal on 3.1.1: the (empty) message comes back to us
                with self._lock:
                    self._own_clears[topic] = 1  # one echo per connect at most

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        with self._lock:
            self.stats.frames_in += 1
            self.stats.bytes_in += len(payload)
            message = Message(msg.topic, payload, bool(msg.retain), self.stats.frames_in)
            if not payload and not message.retain and self._own_clears[message.topic] > 0:
                self._own_clears[message.topic] -= 1
                return
        if message.retain and not self._accept_retained:
            self._count_drops(["retained"])
            return
        source = self._source_of(message.topic)
        size = len(payload) + len(message.topic) + OVERHEAD
        if source in self._mute_floods and self._judge(source, size):
            self._count_drops(["muted"])
            return
        with self._arrived:  # never blocks for long: push only drops, it never waits
            dropped = self._inbox.push(source, message, size)
            self._arrived.notify()
        if dropped:
            self._count_drops([reason for _, reason in dropped])

    def _judge(self, source: str, size: int) -> bool:
        """True if ``source`` is muted: already, or from now on because it floods."""
        now = time.monotonic()
        topic_filter = self._mute_floods[source]
        with self._lock:
            if self._guard.muted(source, now):
                return True
            duration = self._guard.arrived(source, size, now)
            if duration is None:
                return False
            self._muted.add(topic_filter)
            self.stats.mutes += 1
        self._client.unsubscribe(topic_filter)  # the broker stops routing its messages to us
        _log.warning(
            "%s: %r floods (more than %g messages or %g MiB a second): not receiving %s for %.0f s",
            self.client_id,
            source,
            self._guard.rate[0],
            self._guard.rate[1] / (1 << 20),
            topic_filter,
            duration,
        )
        return True

    def _release_mutes(self) -> None:
        if not self._mute_floods:
            return
        with self._lock:
            released = [self._mute_floods[s] for s in self._guard.release(time.monotonic())]
            self._muted.difference_update(released)
        for topic_filter in released:
            if self.connected:  # else on_connect subscribes it
                self._subscribe(self._client, [topic_filter])
            _log.info("%s: receiving %s again", self.client_id, topic_filter)

    def _count_drops(self, reasons: list[str]) -> None:
        with self._lock:
            self.stats.dropped_in += len(reasons)
            for reason in reasons:
                self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + 1

    # -- public API -----------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """Connect, start paho's network thread and wait until the subscriptions are active.

        Raises TransportError if the broker cannot be reached (closed port, DNS), refuses a
        subscription, or does not answer within ``timeout`` seconds, and BrokerRefusedError if it
        refuses the connection (bad credentials are named as such) or TLS fails for good (a
        certificate that does not verify, a handshake broken off); the network thread is stopped
        in every such case. Calling it again while connected does nothing.
        """
        if self._closed:
            raise TransportError(f"{self.client_id}: transport is closed; create a new one")
        if self._started:
            return
        s = self.settings
        self._settled.clear()
        with self._lock:
            self._error = None
            self._refused = False
            self._connects = 0
        deadline = time.monotonic() + timeout
        self._client.connect_timeout = max(timeout, 0.1)
        kwargs: dict[str, Any] = {}
        if self._v5:
            # paho leaves Properties.__init__ unannotated.
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry if self.persistent else 0
            kwargs = {"clean_start": not self.persistent, "properties": props}
        try:
            self._client.connect(s.host, s.port, keepalive=s.keepalive, **kwargs)
        except (OSError, ValueError) as exc:
            # OSError covers refused/unreachable ports, DNS (gaierror), timeouts and TLS errors.
            self._client.disconnect()
            refusal = _tls_refusal(exc, s) if s.tls else None
            if refusal is not None:
                raise BrokerRefusedError(f"{self.client_id}: {refusal}") from exc
            raise TransportError(f"cannot connect to broker {s.url}: {exc}") from exc
        self._started = True
        self._client.loop_start()
        self._settled.wait(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            error, refused = self._error, self._refused
        if error is None and not self._session_up.is_set():
            error = f"no answer from broker {s.url} within {timeout:g} s"
        if error is not None:
            # After a refusal paho would retry forever: stop its thread before raising.
            self._shutdown()
            if refused:
                raise BrokerRefusedError(f"{self.client_id}: {error}")
            raise TransportError(f"{self.client_id}: {error}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        droppable: bool = False,
    ) -> bool:
        """Queue one message for sending; never waits for the PUBACK.

        Returns False if the message was dropped: ``droppable`` and picked by ``drop_rate``, or
        QoS 0 while offline. QoS 1 messages published while offline are sent after the
        reconnect. Raises TransportError if paho or the broker's limits reject the message
        (invalid topic or QoS, payload too large) or before :meth:`connect` / after :meth:`close`.
        """
        if not self._started or self._closed:
            raise TransportError(f"{self.client_id}: publish before connect() or after close()")
        if droppable and self._drop_rate > 0.0:
            with self._lock:
                drop = self._rng.random() < self._drop_rate
                if drop:
                    self.stats.dropped_out += 1
            if drop:
                return False
        max_packet = self._max_packet
        size = len(topic.encode("utf-8", "surrogatepass")) + len(payload) + _PUBLISH_OVERHEAD
        if max_packet is not None and size > max_packet:
            # The broker would disconnect us, and paho would resend the message after every
            # reconnect: refuse it here instead.
            raise TransportError(
                f"payload of {len(payload)} bytes to {topic!r} exceeds the broker's maximum "
                f"packet size of {max_packet} bytes"
            )
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, TypeError) as exc:
            raise TransportError(f"cannot publish to {topic!r}: {exc}") from exc
        rc = info.rc
        if rc == mqtt.MQTT_ERR_NO_CONN and qos == 0:
            with self._lock:
                self.stats.dropped_out += 1
            return False
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"cannot publish to {topic!r}: {mqtt.error_string(rc)}")
        with self._lock:
            self.stats.frames_out += 1
            self.stats.bytes_out += len(payload)
            if qos > 0:
                self._last_info = info
        return True

    def get(self, timeout: float | None = None) -> Message | None:
        """The next received message, or None if none arrives within ``timeout`` seconds.

        ``timeout=None`` waits for ever. Messages of different senders come in turn (see
        :class:`~osml.net.fairqueue.FairQueue`). Safe to call from any thread. Also where a
        muted source is let back in once its time is up.
        """
        self._release_mutes()
        with self._arrived:
            if timeout is None:
                self._arrived.wait_for(lambda: len(self._inbox) > 0)
            else:
                self._arrived.wait_for(lambda: len(self._inbox) > 0, max(timeout, 0.0))
            return self._inbox.pop()

    @property
    def muted(self) -> list[str]:
        """The sources not received from for now (see ``mute_floods``)."""
        with self._lock:
            return [s for s, f in self._mute_floods.items() if f in self._muted]

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the receive queue now (payloads, topics and per-message overhead)."""
        with self._arrived:
            return self._inbox.bytes

    @property
    def queue_peak_bytes(self) -> int:
        """The most bytes the receive queue has held at once; never above its total limit."""
        with self._arrived:
            return self._inbox.peak_bytes

    @property
    def connected(self) -> bool:
        """True while the connection is up and the subscriptions are acknowledged."""
        return self._session_up.is_set() and not self._closed

    def close(self) -> None:
        """Disconnect gracefully (so the broker does not publish the will) and stop the thread.

        Messages already handed to paho while connected go out before the DISCONNECT.
        Idempotent.
        """
        if self._closed:
            return
        # Let the last QoS 1 publish be acknowledged first: a DISCONNECT racing its PUBACK makes
        # some Mosquitto versions (< 2.0.22) treat us as lost and publish the will over the final
        # status we just sent.
        last = getattr(self, "_last_info", None)
        if last is not None and self._session_up.is_set():
            try:
                last.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass  # not connected any more: nothing to wait for
        self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        self._session_up.clear()
        self._client.disconnect()
        if self._started:
            self._client.loop_stop()
        self._started = False
        # paho leaves its socket open if its thread was stopped mid-reconnect; close it ourselves.
        sock = self._client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        # loop_start() makes a loopback socket pair to wake its thread, and loop_stop() leaves it
        # open until the client is freed (paho 2.2 Client.__del__). Our callbacks tie the client
        # and this object in a cycle, so that waits for the garbage collector, which may finalise
        # the sockets first (ResourceWarning: unclosed socket) and meanwhile holds two descriptors
        # per closed transport: close the pair now.
        reset = getattr(self._client, "_reset_sockets", None)
        if callable(reset):
            try:
                reset()
            except OSError:
                pass

    def __enter__(self) -> Transport:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self.connected else "offline"
        return f"Transport({self.client_id!r}, {self.settings.url!r}, {state})"
