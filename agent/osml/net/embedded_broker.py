"""A pure-Python MQTT 3.1.1 broker (amqtt) in a thread: the fallback when there is no Mosquitto.

:class:`EmbeddedBroker` has the surface of :class:`osml.net.broker.MosquittoProcess` where it makes
sense (``start``/``stop``/``restart``, ``url``, ``running``, ``log_tail``, context manager), but
runs `amqtt <https://github.com/Yakifo/amqtt>`_ on its own asyncio loop in a daemon thread of
the calling process. Install it with ``pip install 'osml[embedded-broker]'``.

What osml gets, checked by ``tests/test_embedded_broker.py``:

* anonymous clients on ``host:port`` only, QoS 0 and 1, ``+``/``#`` filters;
* retained messages (a late subscriber gets the last retained status; an empty retained
  payload clears it);
* last will (retained, QoS 1) published when a client vanishes without DISCONNECT, not after a
  graceful DISCONNECT;
* persistent sessions (``clean_session=False``): subscriptions survive a reconnect and QoS 1
  messages sent meanwhile are queued and delivered on reconnect, for
  ``session_expiry`` seconds after the client went away.

Limits, compared with Mosquitto:

* **MQTT 3.1.1 only**: amqtt answers an MQTT 5 CONNECT with a 3.1.1 CONNACK "unacceptable
  protocol version", which paho cannot read, so it retries for ever;
  :meth:`osml.net.transport.Transport.connect` raises TransportError "no answer from broker" after
  its timeout. Use ``BrokerSettings(url, protocol=EmbeddedBroker.protocol)``.
* nothing survives :meth:`EmbeddedBroker.stop`: sessions, queued and retained messages live in
  memory only (no files are written, except the warnings log ``<workdir>/amqtt.log``);
* messages queued for an offline persistent session arrive with the retain flag set;
* no TLS, no access control here; 3-6x slower than Mosquitto under load, and it shares the GIL
  with the process that embeds it.

amqtt 0.12.1 is adjusted here (see :func:`_amqtt_classes`): its anonymous login marks sessions
"anonymous", which it never keeps (``clean_session=False`` would silently act like a clean
session); on every connect it sends the client the retained messages matching *any* client's
subscriptions, not only its own; its shutdown can hang for ever with clients connected, leaving
the port taken; and it leaks the socket of a client that closes before CONNECT.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from osml.errors import TransportError
from osml.net.broker import free_port

__all__ = ["INSTALL_HINT", "EmbeddedBroker", "amqtt_available"]

INSTALL_HINT = "pip install 'osml[embedded-broker]' or install mosquitto"

# amqtt logs every connection and packet at INFO/DEBUG; keep warnings and errors only.
_AMQTT_LOGGERS = ("amqtt", "transitions")
_SHUTDOWN_TIMEOUT = 3.0  # seconds; stop() waits a little longer for the thread
_PLUGIN_PATH = f"{__name__}._OsmlOpenAuthPlugin"
# Under "amqtt" so that the broker's log file and level apply to it too.
_log = logging.getLogger("amqtt.osml")


def amqtt_available() -> bool:
    """True if the ``amqtt`` package can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("amqtt") is not None
    except (ImportError, ValueError):
        return False


def _quiet_amqtt() -> None:
    for name in _AMQTT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


@functools.cache
def _amqtt_classes() -> tuple[type, type]:
    """Build (and cache) the amqtt subclasses; imports amqtt, so only called when it is needed.

    * ``_OsmlOpenAuthPlugin`` lets everybody in without marking the session anonymous, so
      ``clean_session=False`` sessions are kept (amqtt drops anonymous sessions on disconnect
      and never queues messages for them).
    * ``_OsmlBroker`` closes the listener and the client sockets before amqtt's own shutdown
      (see ``osml_shutdown``), closes every client socket when its handler ends (amqtt 0.12.1
      leaks the ones that close before sending CONNECT) and logs handler errors instead of
      letting asyncio print them; it sends retained messages only for filters the client itself
      subscribed to (amqtt 0.12.1 replays, on connect, retained messages for every filter in the
      broker).
    """
    _quiet_amqtt()
    from amqtt.broker import Broker
    from amqtt.plugins.base import BaseAuthPlugin

    class _OsmlOpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped (Any)
        async def authenticate(self, *, session: Any) -> bool:
            return True

    class _OsmlBroker(Broker):  # type: ignore[misc]  # amqtt is untyped (Any)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.osml_connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

        async def stream_connected(
            self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
        ) -> None:
            task = asyncio.current_task()
            if task is not None:
                self.osml_connections[task] = writer
            try:
                await super().stream_connected(reader, writer, listener_name)
            except OSError as exc:  # a client vanished mid-handshake: not the broker's problem
                _log.debug("embedded broker: connection error: %s", exc)
            except Exception:  # noqa: BLE001 -- amqtt would let asyncio print a traceback
                _log.warning("embedded broker: connection handler failed", exc_info=True)
            finally:
                # amqtt leaves the socket open when a client closes before CONNECT.
                if not writer.is_closing():
                    writer.close()
                if task is not None:
                    self.osml_connections.pop(task, None)

        async def osml_shutdown(self, timeout: float) -> None:
            """Stop listening, drop every client, then run amqtt's own shutdown.

            amqtt's shutdown() alone can hang for ever with clients connected (cancelling a
            session's reader task is sometimes lost), and it closes the listener last, so the
            port would stay taken. With the sockets closed first, every session ends normally.
            """
            for server in self._servers.values():
                if server.instance is not None:
                    server.instance.close()
            for writer in self.osml_connections.values():
                writer.close()
            if self.osml_connections:
                await asyncio.wait(list(self.osml_connections), timeout=timeout / 2)
            try:
                await asyncio.wait_for(self.shutdown(), timeout / 2)
            except Exception:  # noqa: BLE001 -- the listener is closed; report and move on
                _log.warning("embedded broker: unclean shutdown", exc_info=True)

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            subscribers = self._subscriptions.get(subscription[0], ())
            if any(s.client_id == session.client_id for s, _qos in subscribers):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    _OsmlOpenAuthPlugin.__module__ = __name__
    _OsmlOpenAuthPlugin.__qualname__ = _OsmlOpenAuthPlugin.__name__
    return _OsmlOpenAuthPlugin, _OsmlBroker


def __getattr__(name: str) -> Any:
    # amqtt loads plugins by dotted path; build the plugin class lazily so that importing this
    # module never imports amqtt.
    if name == "_OsmlOpenAuthPlugin":
        return _amqtt_classes()[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _ThreadLogHandler(logging.FileHandler):
    """Appends the WARNING+ records emitted by one broker thread to ``<workdir>/amqtt.log``."""

    def __init__(self, path: Path, thread_name: str) -> None:
        super().__init__(path, encoding="utf-8", delay=True)
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName == self.thread_name and bool(super().filter(record))


class EmbeddedBroker:
    """An amqtt MQTT 3.1.1 broker on its own asyncio loop in a daemon thread.

    Use it as a context manager (``with EmbeddedBroker(tmp) as broker: ...``) or call
    :meth:`start` and :meth:`stop`. ``port=None`` picks a free port once, at construction, so
    :meth:`restart` comes back on the same port. ``session_expiry`` is how long (seconds) a
    persistent session and its queued QoS 1 messages are kept after the client went away.
    """

    protocol = "3.1.1"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        session_expiry: int = 3600,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.session_expiry = session_expiry
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._stop_requested = threading.Event()
        self._error: BaseException | None = None
        self._log_handler: _ThreadLogHandler | None = None

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT`` for :class:`osml.net.transport.BrokerSettings`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "amqtt.log"

    @property
    def pid(self) -> None:
        """Always None: the broker runs inside this process (kept for MosquittoProcess parity)."""
        return None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._started.is_set()

    def _config(self) -> dict[str, Any]:
        return {
            # amqtt splits "host:port" at the last colon, so IPv6 hosts go without brackets.
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only our plugin: no $SYS publisher, no packet/event loggers, no file persistence.
            "plugins": {_PLUGIN_PATH: {}},
            "session_expiry_interval": self.session_expiry,
        }

    async def _serve(self) -> None:
        _plugin, broker_class = _amqtt_classes()
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        broker = broker_class(self._config(), loop=self._loop)
        try:
            await broker.start()
        except BaseException as exc:  # noqa: BLE001 -- reported by start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            if not self._stop_requested.is_set():
                await self._stop_event.wait()
        finally:
            await broker.osml_shutdown(_SHUTDOWN_TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 -- reported by start()
            if self._error is None:
                self._error = exc
        finally:
            self._started.set()

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker thread and wait until the port accepts connections.

        Raises TransportError if amqtt is not installed (naming the fix), the listener cannot be
        opened (e.g. the port is taken) or the broker is not up within ``timeout`` seconds.
        """
        if self.running:
            return
        if not amqtt_available():
            raise TransportError(f"the embedded MQTT broker needs amqtt: {INSTALL_HINT}")
        try:
            _amqtt_classes()
        except Exception as exc:  # a broken amqtt install, e.g. a missing dependency
            raise TransportError(f"cannot load amqtt ({exc}): {INSTALL_HINT}") from exc
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._error = None
        self._started.clear()
        self._stop_requested.clear()
        name = f"osml-amqtt-{self.port}-{id(self):x}"
        handler = _ThreadLogHandler(self.log_path, name)
        logging.getLogger("amqtt").addHandler(handler)
        self._log_handler = handler
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        # Broker.start() returns once asyncio's server socket is listening, so "started" means
        # the port accepts connections (a probe connection would only make amqtt log an error).
        if not self._started.wait(timeout):
            self.stop()
            raise TransportError(
                f"the embedded MQTT broker did not open {self.host}:{self.port} within "
                f"{timeout:g} s"
            )
        # Declared, not inferred: the broker thread may have set it since start() cleared it.
        error: BaseException | None = self._error
        if error is not None:
            self.stop()
            cause = error.__cause__ or error
            raise TransportError(
                f"cannot start the embedded MQTT broker on {self.host}:{self.port}: {cause}"
            ) from error

    def stop(self, timeout: float = _SHUTDOWN_TIMEOUT + 2.0) -> None:
        """Shut the broker down (clients see the connection drop) and join its thread.

        Idempotent.
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop_requested.set()
            loop, stop_event = self._loop, self._stop_event
            if loop is not None and stop_event is not None:
                try:
                    loop.call_soon_threadsafe(stop_event.set)
                except RuntimeError:  # the loop already closed: the thread is ending
                    pass
            thread.join(timeout)
        self._loop = None
        self._stop_event = None
        self._started.clear()
        handler, self._log_handler = self._log_handler, None
        if handler is not None:
            logging.getLogger("amqtt").removeHandler(handler)
            handler.close()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop, then start again on the same port (sessions and retained messages are lost)."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` warnings the broker logged (for error messages and debugging)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EmbeddedBroker:
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
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker(url={self.url!r}, {state})"
