"""The osml error hierarchy.

Every error osml raises on purpose derives from :class:`OsmlError`, so a caller (the CLI, an agent
loop) can catch one type and print one line::

    OsmlError
    ├── ConfigError      a setting is missing, malformed or out of range
    ├── DataError        a data file is unreadable or inconsistent (names file, row, column)
    ├── FrameError       a frame from the network failed validation (never trusted)
    ├── ModelError       an ONNX model or its card is missing, corrupt or does not match
    ├── ExportError      the trainer could not export a model that matches torch (parity)
    ├── TransportError   the MQTT broker cannot be reached, dropped the session or refused us
    │   └── BrokerRefusedError   the broker refused us (CONNACK: credentials, not authorised;
    │                            TLS: certificate, handshake): the same settings fail again
    └── TrainerError     the local trainer process is absent, died, or answered nonsense
"""

from __future__ import annotations

__all__ = [
    "BrokerRefusedError",
    "ConfigError",
    "DataError",
    "ExportError",
    "FrameError",
    "ModelError",
    "OsmlError",
    "TrainerError",
    "TransportError",
]


class OsmlError(Exception):
    """Base class of every error osml raises on purpose."""


class ConfigError(OsmlError):
    """A setting is missing, malformed or out of range."""


class DataError(OsmlError):
    """A data file is unreadable or inconsistent."""


class FrameError(OsmlError):
    """A frame received from the network is malformed, oversized, forged or inconsistent.

    ``reason`` is a short stable code (``malformed``, ``oversize``, ``bad_signature`` ...; see
    :mod:`osml.wire.inbox` for the list) that agents count rejections by.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class ModelError(OsmlError):
    """An ONNX model or its card is missing, corrupt or does not match what was expected."""


class ExportError(OsmlError):
    """The trainer could not produce an ONNX model that reproduces the torch encoder."""


class TransportError(OsmlError):
    """The MQTT broker refused the connection, cannot be reached, or a publish failed."""


class BrokerRefusedError(TransportError):
    """The broker answered the connection with a refusal that retrying cannot fix.

    Raised only by :mod:`osml.net.transport`, when the CONNACK says the credentials are wrong, the
    client is not authorised or banned, or the broker rejects the protocol version or client id;
    or when TLS fails for good: the broker's certificate does not verify against ``ca_file``, or
    the handshake is broken off (a plain port reached with ``mqtts://``, a client certificate
    missing). A broker that is busy, unreachable or restarting raises a plain
    :class:`TransportError`.
    """


class TrainerError(OsmlError):
    """The local trainer process is absent, died mid-job, or sent an invalid reply."""
