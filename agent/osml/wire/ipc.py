"""Messages between an agent and the local trainer over a Unix-domain stream socket.

Torch-free: the agent side imports this module, the trainer side too.

Wire format
-----------

A message is a 4-byte big-endian unsigned length ``n`` followed by ``n`` bytes of msgpack
(packed with ``use_bin_type=True``, unpacked with ``raw=False``) whose top-level object is a map
with string keys. ``n`` is at most ``max_bytes`` (256 MiB by default) and at least 1. Arrays travel
as ``{"dtype": "float32", "shape": [...], "data": <bin>}`` (little-endian, C order); see
:func:`pack_array` and :func:`unpack_array`.

Socket contents are treated as untrusted: the length is bounded before anything is allocated,
msgpack never builds custom types (no ext hooks, no pickle), arrays are checked against an
allow-listed dtype, their shape against their byte count, and their values for finiteness. Every
failure raises :class:`~osml.errors.TrainerError`.
"""

from __future__ import annotations

import math
import os
import socket
import struct
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from osml.errors import TrainerError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_NDIM",
    "MAX_SOCKET_PATH",
    "PROTOCOL_VERSION",
    "check_socket_path",
    "pack_array",
    "recv_msg",
    "send_msg",
    "unpack_array",
]

PROTOCOL_VERSION = 1
"""The ``"v"`` every request carries; a trainer refuses requests of another version."""

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Default bound on one message's msgpack body."""

MAX_NDIM = 8
"""Arrays of more dimensions than this are refused."""

MAX_SOCKET_PATH = 107
"""sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL."""

_HEADER = struct.Struct(">I")

# Wire dtype name -> numpy dtype (explicitly little-endian). float32 is all osml exchanges.
_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4")}


def check_socket_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or :class:`~osml.errors.TrainerError` if a Unix socket cannot have it."""
    p = Path(path)
    if len(os.fsencode(p)) > MAX_SOCKET_PATH:
        raise TrainerError(
            f"socket path {str(p)!r} is {len(os.fsencode(p))} bytes; Unix sockets allow "
            f"{MAX_SOCKET_PATH}, choose a shorter path"
        )
    return p


def send_msg(sock: socket.socket, obj: dict[str, Any]) -> None:
    """Pack ``obj`` and send it with its length prefix."""
    if not isinstance(obj, dict):
        raise TrainerError(f"a message must be a dict, got {type(obj).__name__}")
    try:
        body = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TrainerError(f"cannot encode message: {exc}") from exc
    if len(body) > 0xFFFFFFFF:
        raise TrainerError(f"message of {len(body)} bytes is too large to send")
    try:
        sock.sendall(_HEADER.pack(len(body)) + body)
    except TimeoutError as exc:
        raise TrainerError("timed out sending a message") from exc
    except OSError as exc:
        raise TrainerError(f"cannot send message: {exc.strerror or exc}") from exc


def _recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError as exc:
            raise TrainerError(f"timed out waiting for {what}") from exc
        except OSError as exc:
            raise TrainerError(
                f"connection lost while reading {what}: {exc.strerror or exc}"
            ) from exc
        if k == 0:
            if got == 0 and what == "message header":
                raise TrainerError("connection closed by peer")
            raise TrainerError(f"connection closed after {got} of {n} bytes of {what}")
        got += k
    return bytes(buf)


def recv_msg(sock: socket.socket, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Read one length-prefixed msgpack map; raises :class:`TrainerError` on EOF or garbage."""
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, "message header"))
    if n == 0 or n > max_bytes:
        raise TrainerError(f"message length {n} outside 1..{max_bytes} bytes (not an osml peer?)")
    body = _recv_exact(sock, n, "message body")
    try:
        obj = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise TrainerError(f"message is not valid msgpack: {type(exc).__name__}") from exc
    if not isinstance(obj, dict):
        raise TrainerError(f"message must be a map, got {type(obj).__name__}")
    return obj


def pack_array(a: npt.ArrayLike) -> dict[str, Any]:
    """A finite numeric array as a wire dict (cast to little-endian float32, C order)."""
    try:
        arr = np.ascontiguousarray(a, dtype=_DTYPES["float32"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot send as float32: {exc}") from exc
    if arr.ndim > MAX_NDIM:
        raise ValueError(f"arrays of at most {MAX_NDIM} dimensions, got {arr.ndim}")
    if not np.isfinite(arr).all():
        raise ValueError("array holds NaN or infinite values")
    return {"dtype": "float32", "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_array(
    d: object, expect_ndim: int | None = None, name: str = "array"
) -> npt.NDArray[np.float32]:
    """Validate a wire dict and return a fresh, writable float32 array."""
    if not isinstance(d, dict) or set(d) != {"dtype", "shape", "data"}:
        raise TrainerError(f"{name}: expected a map with keys dtype, shape, data")
    dtype_name, shape, data = d["dtype"], d["shape"], d["data"]
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise TrainerError(f"{name}: dtype {dtype_name!r} not allowed (one of {sorted(_DTYPES)})")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise TrainerError(f"{name}: shape must be a list of at most {MAX_NDIM} sizes")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise TrainerError(f"{name}: shape {shape!r} must hold non-negative integers")
    if expect_ndim is not None and len(shape) != expect_ndim:
        raise TrainerError(f"{name}: expected {expect_ndim} dimensions, got shape {shape}")
    if not isinstance(data, bytes):
        raise TrainerError(f"{name}: data must be binary")
    dtype = _DTYPES[dtype_name]
    if math.prod(shape) * dtype.itemsize != len(data):
        raise TrainerError(
            f"{name}: shape {shape} needs {math.prod(shape) * dtype.itemsize} bytes, "
            f"got {len(data)}"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.float32)  # copy: writable
    if not np.isfinite(arr).all():
        raise TrainerError(f"{name}: holds NaN or infinite values")
    return arr
