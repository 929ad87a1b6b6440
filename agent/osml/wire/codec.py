"""Encode and decode the embedding frames that osml agents exchange over MQTT.

A frame carries one agent's embedding matrix for a run of logical steps. The matrix is quantized
to int8 with one float32 scale per row (symmetric: ``scale = max|row| / 127``), which keeps the row
cosine to the original above 0.9999 at about a quarter of the float32 size.

Wire format, version 1
----------------------

A frame is one msgpack map (packed with ``use_bin_type=True``) with exactly these string keys:

=======  ==========  ============================================================================
key      type        meaning
=======  ==========  ============================================================================
``v``    int         format version, currently ``1`` (:data:`FORMAT_VERSION`)
``ctx``  str         context name (1-128 characters, none of ``/ + #`` or NUL)
``src``  str         source agent id (same rules as ``ctx``)
``rnd``  int         round number, >= 0
``s0``   int         first logical step index of row 0, >= 0
``n``    int         number of rows (steps), 1 <= n <= ``max_rows``
``d``    int         embedding dimension, 1 <= d <= ``max_dim``
``mv``   int         version of the model that produced the embeddings, >= 0
``ck``   int         index of this chunk, 0 <= ck < nck
``nck``  int         number of chunks the logical frame was split into, >= 1
``z``    bool        true if ``p`` is zstd-compressed
``p``    bin         payload, see below
``sig``  bin         optional: 32-byte HMAC-SHA256 tag (:mod:`osml.wire.signing`) over
                     :func:`signed_bytes`; present when the sender signs
=======  ==========  ============================================================================

Every int is a msgpack integer below 2**63 (a msgpack bool is not accepted as an int).

The payload, after zstd decompression when ``z`` is true, is exactly ``n*d + 4*n`` bytes:

==================  ==========  ===============================================================
bytes               type        meaning
==================  ==========  ===============================================================
``[0, n*d)``        int8        quantized rows ``q``, row-major (C order), shape ``(n, d)``
``[n*d, n*d+4n)``   float32 LE  per-row scales ``sc``, finite and >= 0, shape ``(n,)``
==================  ==========  ===============================================================

Row ``i`` decodes to ``q[i] * sc[i]`` (float32). A compressed payload is a single zstd frame that
declares its content size, which must equal ``n*d + 4*n``. The encoder compresses only when the
payload is larger than a threshold and compression makes it smaller: zstd gains little on int8
data and makes small payloads larger.

Frames are untrusted network input. :func:`decode_frame` checks the raw size before unpacking,
bounds every msgpack length, checks the signature (when given keys) before touching the payload,
checks ``n``, ``d`` and ``n*d + 4*n`` against limits before decompressing, requires the declared
content size to equal ``n*d + 4*n``, caps the decompressed output at that size and never executes
code (no pickle). Every failure raises :class:`~osml.errors.FrameError` whose ``reason`` is one
of :data:`REASONS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zstandard

from osml.core.quantize import dequantize_int8, quantize_int8
from osml.errors import FrameError
from osml.wire import signing, topics

__all__ = [
    "FORMAT_VERSION",
    "MAX_ROUND",
    "REASONS",
    "Frame",
    "decode_frame",
    "encode_frame",
    "signed_bytes",
]

FORMAT_VERSION = 1
"""The frame format version written by :func:`encode_frame`."""

SUPPORTED_VERSIONS = frozenset({FORMAT_VERSION})

_MAX_INT = 2**63 - 1
MAX_ROUND = 2**48
"""The highest round an agent moves to (2**48: 8900 years at 1000 rounds a second). A frame may
carry any round up to 2**63 - 1, but an agent neither catches up to nor resumes (state.json)
beyond this, and a config's ``rounds.count`` stays below it."""

# Key -> expected Python type after msgpack decoding. Order is the packing order.
_INT_KEYS = ("v", "rnd", "s0", "n", "d", "mv", "ck", "nck")
_STR_KEYS = ("ctx", "src")
_KEYS = frozenset(_INT_KEYS + _STR_KEYS + ("z", "p"))
_SIGNED_ORDER = ("v", "ctx", "src", "rnd", "s0", "n", "d", "mv", "ck", "nck", "z", "p")

REASONS = {
    "oversize": "the raw frame or its declared payload is above the size limits",
    "malformed": "not bytes, not msgpack, or not a msgpack map",
    "version": "a frame format version this agent does not support",
    "schema": "missing or unknown keys, wrong types, invalid names or chunk numbers",
    "unsigned": "signing is required and the frame carries no signature",
    "bad_signature": "the signature does not match under any accepted key",
    "shape": "row count or dimension out of range, or a payload size that disagrees with them",
    "zstd": "a compressed payload that is invalid or declares a size other than n*d + 4*n",
    "nonfinite": "NaN, infinite or negative scales, or values that overflow float32",
}
"""Why :func:`decode_frame` rejects a frame: ``FrameError.reason`` -> description."""


# --------------------------------------------------------------------------- frame


def _is_int(value: object) -> bool:
    # bool is a subclass of int; a flag must never pass for a count or an index.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True, kw_only=True, eq=False)
class Frame:
    """One agent's embeddings for steps ``[step_start, step_stop)`` in one round.

    Construct with keywords. The embeddings are stored as a read-only float32 copy. Invalid
    values raise :class:`ValueError` (:class:`TypeError` if ``embeddings`` is not an array).
    """

    version: int = FORMAT_VERSION
    context: str
    source: str
    round: int
    step_start: int
    model_version: int
    embeddings: np.ndarray
    chunk: int = 0
    n_chunks: int = 1

    def __post_init__(self) -> None:
        topics.check_name("context", self.context)  # both are MQTT topic levels
        topics.check_name("agent id", self.source)
        for name in ("version", "round", "step_start", "model_version", "chunk", "n_chunks"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f"{name} must be an int, got {type(value).__name__}")
            if not 0 <= int(value) <= _MAX_INT:
                raise ValueError(f"{name} must be in [0, 2**63), got {value}")
            object.__setattr__(self, name, int(value))
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported frame version {self.version}")
        if self.n_chunks < 1 or self.chunk >= self.n_chunks:
            raise ValueError(
                f"chunk must satisfy 0 <= chunk < n_chunks, got {self.chunk}/{self.n_chunks}"
            )
        emb = self.embeddings
        if not isinstance(emb, np.ndarray):
            raise TypeError(f"embeddings must be a numpy array, got {type(emb).__name__}")
        if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
            raise ValueError(f"embeddings must be a non-empty 2-D array, got shape {emb.shape}")
        if emb.dtype.kind not in "fiu":
            raise ValueError(f"embeddings must be real-valued, got dtype {emb.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf
            emb32 = np.array(emb, dtype=np.float32, order="C", copy=True)
        if not np.isfinite(emb32).all():
            raise ValueError("embeddings contain NaN or infinite values (after float32 cast)")
        if self.step_start + emb32.shape[0] > _MAX_INT:
            raise ValueError("step_start + n_steps must stay below 2**63")
        emb32.setflags(write=False)
        object.__setattr__(self, "embeddings", emb32)

    @property
    def n_steps(self) -> int:
        """Number of rows (logical steps) in the frame."""
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.embeddings.shape[1])

    @property
    def step_stop(self) -> int:
        """One past the last logical step index: ``step_start + n_steps``."""
        return self.step_start + self.n_steps

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            self.version == other.version
            and self.context == other.context
            and self.source == other.source
            and self.round == other.round
            and self.step_start == other.step_start
            and self.model_version == other.model_version
            and self.chunk == other.chunk
            and self.n_chunks == other.n_chunks
            and np.array_equal(self.embeddings, other.embeddings)
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array: not hashable


# --------------------------------------------------------------------------- encode


def signed_bytes(doc: dict[str, Any]) -> bytes:
    """The bytes a signature covers: every field but ``sig``, as one msgpack array in a fixed
    order, so the tag does not depend on how a sender ordered or encoded its map."""
    out: bytes = msgpack.packb([doc[k] for k in _SIGNED_ORDER], use_bin_type=True)
    return out


def encode_frame(
    frame: Frame, *, compress_threshold: int = 1024, level: int = 3, key: bytes | None = None
) -> bytes:
    """Serialize ``frame`` to bytes (see the module docstring for the layout).

    The payload is zstd-compressed at ``level`` only when it is larger than
    ``compress_threshold`` bytes and compression makes it smaller. With ``key`` the frame is
    signed (:mod:`osml.wire.signing`).
    """
    if not isinstance(frame, Frame):
        raise TypeError(f"expected a Frame, got {type(frame).__name__}")
    if not _is_int(compress_threshold) or compress_threshold < 0:
        raise ValueError(f"compress_threshold must be an int >= 0, got {compress_threshold!r}")
    if not _is_int(level) or not 1 <= level <= 22:
        raise ValueError(f"level must be an int in [1, 22], got {level!r}")
    q, scale = quantize_int8(frame.embeddings)
    payload = q.tobytes(order="C") + scale.astype("<f4").tobytes()
    compressed = False
    if len(payload) > compress_threshold:
        # compress() writes the content size into the frame header; the decoder requires it.
        packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(payload)
        if len(packed) < len(payload):
            payload, compressed = packed, True
    doc: dict[str, Any] = {
        "v": frame.version,
        "ctx": frame.context,
        "src": frame.source,
        "rnd": frame.round,
        "s0": frame.step_start,
        "n": frame.n_steps,
        "d": frame.dim,
        "mv": frame.model_version,
        "ck": frame.chunk,
        "nck": frame.n_chunks,
        "z": compressed,
        "p": payload,
    }
    if key is not None:
        doc["sig"] = signing.sign(key, signed_bytes(doc))
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


# --------------------------------------------------------------------------- decode


def _decompress(payload: bytes, expected: int) -> bytes:
    """Decompress one zstd frame whose declared content size must be exactly ``expected``."""
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise FrameError(f"payload is not a valid zstd frame: {exc}", "zstd") from exc
    if declared < 0:
        # Without a declared size zstandard would grow its output buffer as it goes.
        raise FrameError("compressed payload does not declare its content size", "zstd")
    if declared != expected:
        # Checked before decompressing: with a declared size zstandard allocates it up front.
        raise FrameError(
            f"compressed payload declares {declared} bytes, expected n*d + 4*n = {expected}", "zstd"
        )
    try:
        out = zstandard.ZstdDecompressor().decompress(
            payload, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise FrameError(f"zstd decompression failed: {exc}", "zstd") from exc
    if len(out) != expected:
        raise FrameError(f"decompressed payload is {len(out)} bytes, expected {expected}", "zstd")
    return out


def decode_frame(
    data: bytes | bytearray,
    *,
    max_frame_bytes: int = 1 << 20,
    max_rows: int = 65536,
    max_dim: int = 4096,
    max_payload_bytes: int | None = None,
    keys: Sequence[bytes] = (),
    require_signature: bool = False,
) -> Frame:
    """Parse and validate an untrusted frame; raise :class:`FrameError` on any problem.

    ``max_frame_bytes`` bounds the raw frame, ``max_rows`` and ``max_dim`` the matrix shape, and
    ``max_payload_bytes`` (default ``4 * max_frame_bytes``) the payload size ``n*d + 4*n``, so a
    small compressed frame cannot make the decoder allocate much more than a raw one would.

    With ``keys``, a frame's signature must verify under one of them, and with
    ``require_signature`` an unsigned frame is rejected too. Without keys a signature is
    checked for form only.
    """
    if max_payload_bytes is None:
        max_payload_bytes = 4 * max_frame_bytes
    if require_signature and not keys:
        raise ValueError("require_signature needs at least one key")
    if not isinstance(data, (bytes, bytearray)):
        raise FrameError(f"frame must be bytes, got {type(data).__name__}")
    if len(data) > max_frame_bytes:
        raise FrameError(
            f"frame is {len(data)} bytes, above the limit of {max_frame_bytes}", "oversize"
        )
    try:
        doc = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            max_bin_len=max_frame_bytes,
            max_str_len=4 * topics.MAX_NAME_LEN,  # UTF-8 takes at most 4 bytes per character
            max_array_len=16,
            max_map_len=32,
            max_ext_len=16,
        )
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as exc:
        raise FrameError(f"frame is not valid msgpack: {exc}") from exc

    if not isinstance(doc, dict):
        raise FrameError(f"frame must be a msgpack map, got {type(doc).__name__}")
    # Check the version first: a future version may use other keys.
    if "v" not in doc:
        raise FrameError("frame has no version key 'v'", "schema")
    version = doc["v"]
    if not _is_int(version):
        raise FrameError(f"frame key 'v' must be an int, got {type(version).__name__}", "schema")
    if version not in SUPPORTED_VERSIONS:
        raise FrameError(
            f"unsupported frame version {version} (supported: {sorted(SUPPORTED_VERSIONS)})",
            "version",
        )
    present = set(doc)
    missing = _KEYS - present
    if missing:
        raise FrameError(f"frame is missing keys {sorted(missing)}", "schema")
    unknown = present - _KEYS - {"sig"}
    if unknown:
        raise FrameError(f"frame has unknown keys {sorted(map(repr, unknown))}", "schema")
    for key in _INT_KEYS:
        if not _is_int(doc[key]):
            raise FrameError(
                f"frame key {key!r} must be an int, got {type(doc[key]).__name__}", "schema"
            )
    for key in _STR_KEYS:
        if not isinstance(doc[key], str):
            raise FrameError(
                f"frame key {key!r} must be a str, got {type(doc[key]).__name__}", "schema"
            )
    if not isinstance(doc["z"], bool):
        raise FrameError(f"frame key 'z' must be a bool, got {type(doc['z']).__name__}", "schema")
    payload = doc["p"]
    if not isinstance(payload, bytes):
        raise FrameError(f"frame key 'p' must be bin, got {type(payload).__name__}", "schema")
    _check_signature(doc, keys, require_signature)

    n, d = doc["n"], doc["d"]
    if not 1 <= n <= max_rows:
        raise FrameError(f"frame row count n={n} is outside [1, {max_rows}]", "shape")
    if not 1 <= d <= max_dim:
        raise FrameError(f"frame dimension d={d} is outside [1, {max_dim}]", "shape")
    expected = n * d + 4 * n
    if expected > max_payload_bytes:
        raise FrameError(
            f"frame payload would be {expected} bytes, above the limit of {max_payload_bytes}",
            "oversize",
        )
    if doc["z"]:
        payload = _decompress(payload, expected)
    elif len(payload) != expected:
        raise FrameError(
            f"payload is {len(payload)} bytes, expected n*d + 4*n = {expected} for n={n}, d={d}",
            "shape",
        )

    q = np.frombuffer(payload, dtype=np.int8, count=n * d).reshape(n, d)
    scale = np.frombuffer(payload, dtype="<f4", count=n, offset=n * d)
    if not np.isfinite(scale).all() or (scale < 0).any():
        raise FrameError("frame scales must be finite and >= 0", "nonfinite")
    embeddings = dequantize_int8(q, scale)
    if not np.isfinite(embeddings).all():
        raise FrameError("frame embeddings overflow float32", "nonfinite")
    try:
        return Frame(
            version=version,
            context=doc["ctx"],
            source=doc["src"],
            round=doc["rnd"],
            step_start=doc["s0"],
            model_version=doc["mv"],
            embeddings=embeddings,
            chunk=doc["ck"],
            n_chunks=doc["nck"],
        )
    except (ValueError, TypeError) as exc:
        raise FrameError(f"invalid frame: {exc}", "schema") from exc


def _check_signature(doc: dict[str, Any], keys: Sequence[bytes], required: bool) -> None:
    tag = doc.get("sig")
    if tag is None:
        if required:
            raise FrameError("frame is not signed and this agent requires signatures", "unsigned")
        return
    if not isinstance(tag, bytes) or len(tag) != signing.TAG_BYTES:
        raise FrameError(f"frame key 'sig' must be {signing.TAG_BYTES} bytes of bin", "schema")
    if keys and not signing.verify(keys, signed_bytes(doc), tag):
        raise FrameError(
            "frame signature does not verify under this context's key", "bad_signature"
        )
