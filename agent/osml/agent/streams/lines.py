"""Cut a byte stream into lines, holding at most one bounded partial line (pure).

A line is complete only at ``\\n`` (a trailing ``\\r`` is removed): a partial last line is kept
until its newline arrives. A line longer than ``max_line_bytes`` is returned once, cut to
``max_line_bytes + 1`` bytes (so the readings filter counts it as ``malformed``), and the rest
of it is skipped up to its newline: memory stays bounded whatever the stream holds.
"""

from __future__ import annotations

__all__ = ["LineSplitter"]


class LineSplitter:
    """Feed chunks with :meth:`feed`, get the complete lines back."""

    def __init__(self, max_line_bytes: int = 4096) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be >= 1")
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._skipping = False  # inside an overlong line, until its newline

    @property
    def partial(self) -> int:
        """Bytes of the incomplete last line held."""
        return len(self._buf)

    def reset(self) -> int:
        """Forget the partial line (the file was truncated or replaced); its length in bytes."""
        n = len(self._buf)
        self._buf.clear()
        self._skipping = False
        return n

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by ``data``, without their line ends."""
        out: list[bytes] = []
        limit = self.max_line_bytes
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl
            piece = data[start:end]
            if self._skipping:
                if nl >= 0:
                    self._skipping = False
            else:
                room = limit + 1 - len(self._buf)
                self._buf += piece[:room]
                if len(self._buf) > limit:
                    out.append(bytes(self._buf))
                    self._buf.clear()
                    self._skipping = nl < 0
                elif nl >= 0:
                    line = bytes(self._buf)
                    self._buf.clear()
                    out.append(line[:-1] if line.endswith(b"\r") else line)
            if nl < 0:
                break
            start = nl + 1
        return out
