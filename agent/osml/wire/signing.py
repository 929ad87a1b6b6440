"""Frame signatures: HMAC-SHA256 with a per-context key, from the standard library.

The broker's ACL stops a client from publishing on another agent's topics, but anyone who gets
one agent's broker credentials, or any broker-side access, could still write frames that claim to
be from someone else. With signing on, every frame carries a 32-byte tag

    sig = HMAC-SHA256(key, b"osml-frame-v1\\n" + canonical bytes of the frame without sig)

(:func:`osml.wire.codec.signed_bytes` gives the canonical bytes), and an agent rejects frames that
have no tag or a wrong one *before* it decompresses or decodes their payload. The key is shared by
the agents of one context, so it proves "written by a holder of this context's key", not "by agent
X": an agent that holds the key can still sign as another; the ACL, which binds the topic to the
broker user, covers that case (see docs/security.md).

A key file holds the key as hex (64 hex digits for 32 bytes, at least 32 bytes), optionally with
surrounding whitespace. ``osml broker init`` writes one per context; ``osml run --sign`` makes one
for its run. During a key change an agent can accept a previous key as well (``previous_key_file``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from osml.errors import ConfigError
from osml.files import check_private

__all__ = ["KEY_BYTES", "TAG_BYTES", "load_key", "new_key_hex", "sign", "verify"]

KEY_BYTES = 32
"""Minimum (and generated) key length in bytes."""

TAG_BYTES = 32
"""Length of an HMAC-SHA256 tag."""

_DOMAIN = b"osml-frame-v1\n"


def new_key_hex() -> str:
    """A fresh random key, as the 64 hex digits a key file holds."""
    return secrets.token_hex(KEY_BYTES)


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Read a hex key file; :class:`ConfigError` (one line, naming the file) if it is unusable,
    or if anyone but its owner may read it (:func:`osml.files.check_private`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigError(
            f"{p}: cannot read the signing key ({exc.strerror}); check signing.key_file"
        ) from exc
    except UnicodeDecodeError:
        raise ConfigError(
            f"{p}: the signing key must be hex text; make one with `osml broker init`"
        ) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(
            f"{p}: the signing key is not hex; it must hold {2 * KEY_BYTES} hex digits"
        ) from None
    if len(key) < KEY_BYTES:
        raise ConfigError(
            f"{p}: the signing key has {len(key)} bytes; "
            f"use at least {KEY_BYTES} ({2 * KEY_BYTES} hex digits)"
        )
    check_private(p, "signing key")
    return key


def sign(key: bytes, message: bytes) -> bytes:
    """The 32-byte tag for ``message`` under ``key``."""
    return hmac.new(key, _DOMAIN + message, hashlib.sha256).digest()


def verify(keys: Sequence[bytes], message: bytes, tag: bytes) -> bool:
    """True if ``tag`` is the tag of ``message`` under any of ``keys`` (constant-time compare)."""
    if len(tag) != TAG_BYTES:
        return False
    ok = False
    for key in keys:  # no early exit: the time taken does not say which key matched
        ok |= hmac.compare_digest(sign(key, message), tag)
    return ok
