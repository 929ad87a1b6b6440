"""A bounded rolling store of an agent's live embeddings, in its state directory.

    <directory>/seg-000000000007.npz    one segment: at most ``segment_rows`` rows

A row is (step int64, time float64, vector float32[dim], z float32, flagged bool); ``z`` is NaN
and ``flagged`` False when no anomaly score came with the row. Rows go into the newest segment;
when it is full, a new one is started, and when there are more than ``max_segments`` the oldest
are deleted. Every :meth:`EmbeddingStore.append` rewrites the newest segment (at most
``segment_rows`` rows) with :func:`osml.files.write_atomic` (temp file, fsync, rename),
so a SIGKILL at any moment leaves the old segment or the new one. A segment that is unreadable
all the same (torn by a copy, a full disk, a bad sector) or holds other shapes is skipped on read.

Bounds. In memory the store holds the newest segment only (at most ``segment_rows`` rows); a
:meth:`~EmbeddingStore.read` returns at most ``max_segments * segment_rows`` rows. On disk, after
every append (see :func:`bound_bytes`)::

    bytes <= K * (N * (8 + 8 + 4 * dim + 4 + 1) + SEGMENT_OVERHEAD)

with ``K = max_segments``, ``N = segment_rows``; during a write one more temp file of at most
one segment exists. Segments are plain uncompressed ``.npz`` files, written and read with
``allow_pickle=False``.

A step stored twice (a round re-embedded older windows) reads back once, with the row written
last: rows of the newest segment are replaced in place, older segments lose to newer ones.
"""

from __future__ import annotations

import io
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osml.files import write_atomic

__all__ = ["SEGMENT_OVERHEAD", "EmbeddingRows", "EmbeddingStore", "bound_bytes", "read_store"]

log = logging.getLogger("osml.agent")

# npz framing per segment: five arrays, each a zip local header + central directory entry (with
# zip64 extras) and an npy header (128 bytes for these shapes), plus the end records. Measured at
# about 1.2 kB; 4 kB leaves room for longer npy headers.
SEGMENT_OVERHEAD = 4096
_SEGMENT = re.compile(r"seg-(\d{12})\.npz")
_FIELDS = ("step", "time", "vector", "z", "flagged")


def bound_bytes(dim: int, segment_rows: int, max_segments: int) -> int:
    """Most bytes the segment files take after an append: ``K * (N * (25 + 4 dim) + overhead)``."""
    return max_segments * (segment_rows * (8 + 8 + 4 * dim + 4 + 1) + SEGMENT_OVERHEAD)


@dataclass(frozen=True)
class EmbeddingRows:
    """Rows sorted by step, one per step."""

    step: np.ndarray  # (n,) int64
    time: np.ndarray  # (n,) float64
    vector: np.ndarray  # (n, dim) float32
    z: np.ndarray  # (n,) float32, NaN where no score was given
    flagged: np.ndarray  # (n,) bool

    def __len__(self) -> int:
        return int(self.step.shape[0])

    @classmethod
    def empty(cls, dim: int) -> EmbeddingRows:
        return cls(
            np.zeros(0, np.int64),
            np.zeros(0, np.float64),
            np.zeros((0, dim), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, bool),
        )

    def take(self, index: np.ndarray | slice) -> EmbeddingRows:
        return EmbeddingRows(
            self.step[index],
            self.time[index],
            self.vector[index],
            self.z[index],
            self.flagged[index],
        )


def _latest_per_step(rows: EmbeddingRows) -> EmbeddingRows:
    """One row per step, the one that comes last in ``rows``; sorted by step."""
    if len(rows) == 0:
        return rows
    reverse = rows.step[::-1]
    _, first = np.unique(reverse, return_index=True)  # first in reverse = last written
    return rows.take(len(rows) - 1 - first)


def _concat(parts: list[EmbeddingRows], dim: int) -> EmbeddingRows:
    if not parts:
        return EmbeddingRows.empty(dim)
    step, time, vector, z, flagged = (
        np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS
    )
    return EmbeddingRows(step, time, vector, z, flagged)


def _encode(rows: EmbeddingRows) -> bytes:
    buf = io.BytesIO()
    # Plain arrays only: np.load below refuses pickles (allow_pickle=False), so never store objects.
    np.savez(buf, **{f: getattr(rows, f) for f in _FIELDS})
    return buf.getvalue()


def _decode(data: bytes | Path, dim: int, max_rows: int) -> EmbeddingRows:
    """Parse one segment; ValueError when it is torn or holds anything but the expected rows."""
    if isinstance(data, Path):
        data = data.read_bytes()  # bounded; and np.load leaks its file when the zip is torn
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if sorted(z.files) != sorted(_FIELDS):
                raise ValueError(f"fields {sorted(z.files)}")
            arrays = {f: z[f] for f in _FIELDS}
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"unreadable ({exc})") from exc
    n = arrays["step"].shape[0] if arrays["step"].ndim == 1 else -1
    want = {
        "step": (np.dtype(np.int64), (n,)),
        "time": (np.dtype(np.float64), (n,)),
        "vector": (np.dtype(np.float32), (n, dim)),
        "z": (np.dtype(np.float32), (n,)),
        "flagged": (np.dtype(bool), (n,)),
    }
    for f, (dtype, shape) in want.items():
        if arrays[f].dtype != dtype or arrays[f].shape != shape:
            raise ValueError(f"{f} is {arrays[f].dtype} {arrays[f].shape}, want {dtype} {shape}")
    if n > max_rows:
        raise ValueError(f"{n} rows, more than a segment holds ({max_rows})")
    return EmbeddingRows(**arrays)


class EmbeddingStore:
    """Rolling embedding rows in ``directory``; one writer (the agent), any number of readers."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        dim: int,
        segment_rows: int = 1024,
        max_segments: int = 8,
    ) -> None:
        for name, value in (("dim", dim), ("segment_rows", segment_rows)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"embedding store: {name} must be an integer >= 1, got {value!r}")
        if not isinstance(max_segments, int) or isinstance(max_segments, bool) or max_segments < 1:
            raise ValueError(f"embedding store: max_segments must be >= 1, got {max_segments!r}")
        self.directory = Path(directory)
        self.dim = dim
        self.segment_rows = segment_rows
        self.max_segments = max_segments
        self.directory.mkdir(parents=True, exist_ok=True)
        # The store is the only writer: a temp file still there is from a write that was killed.
        for stale in self.directory.glob(".seg-*.npz.*.tmp"):
            stale.unlink(missing_ok=True)
        segments = self._segments()
        self._index = segments[-1][0] if segments else 0
        self._open = EmbeddingRows.empty(dim)
        if segments:
            try:
                self._open = _decode(segments[-1][1], dim, segment_rows)
            except ValueError:
                self._index += 1  # leave an unreadable newest segment alone, start after it
            if len(self._open) >= segment_rows:
                self._index += 1
                self._open = EmbeddingRows.empty(dim)

    @property
    def max_bytes(self) -> int:
        """The on-disk bound of this store (see :func:`bound_bytes`)."""
        return bound_bytes(self.dim, self.segment_rows, self.max_segments)

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.directory.iterdir():
            m = _SEGMENT.fullmatch(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def _path(self, index: int) -> Path:
        return self.directory / f"seg-{index:012d}.npz"

    def append(
        self,
        steps: np.ndarray,
        times: np.ndarray,
        vectors: np.ndarray,
        z: np.ndarray | None = None,
        flagged: np.ndarray | None = None,
    ) -> None:
        """Store rows; a step already in the newest segment is replaced, in any order given."""
        step = np.asarray(steps)
        n = step.shape[0] if step.ndim == 1 else -1
        if n < 0 or (n and not np.issubdtype(step.dtype, np.integer)):
            raise ValueError(f"steps must be a 1-d integer array, got {step.dtype} {step.shape}")
        rows = EmbeddingRows(
            step.astype(np.int64),
            np.asarray(times, dtype=np.float64),
            np.asarray(vectors, dtype=np.float32),
            np.full(n, np.nan, np.float32) if z is None else np.asarray(z, dtype=np.float32),
            np.zeros(n, bool) if flagged is None else np.asarray(flagged, dtype=bool),
        )
        if rows.vector.shape != (n, self.dim):
            raise ValueError(f"vectors must be ({n}, {self.dim}), got {rows.vector.shape}")
        for f in ("time", "z", "flagged"):
            if getattr(rows, f).shape != (n,):
                raise ValueError(f"{f} must be ({n},), got {getattr(rows, f).shape}")
        if not (np.isfinite(rows.vector).all() and np.isfinite(rows.time).all()):
            raise ValueError("vectors and times must be finite")
        if n == 0:
            return
        rows = _latest_per_step(rows)
        while len(rows):
            merged = _latest_per_step(_concat([self._open, rows], self.dim))
            if len(merged) <= self.segment_rows:
                self._open, rows = merged, rows.take(slice(0, 0))
            else:
                # Fill the newest segment (replacing its own steps first), carry the rest over.
                fresh = ~np.isin(rows.step, self._open.step)
                room = self.segment_rows - len(self._open)
                keep = np.flatnonzero(~fresh)
                keep = np.concatenate([keep, np.flatnonzero(fresh)[:room]])
                keep.sort()
                self._open = _latest_per_step(_concat([self._open, rows.take(keep)], self.dim))
                rows = rows.take(np.setdiff1d(np.arange(len(rows)), keep))
            write_atomic(self._path(self._index), _encode(self._open))
            if len(rows) or len(self._open) >= self.segment_rows:
                self._index += 1
                self._open = EmbeddingRows.empty(self.dim)
        self._evict()

    def _evict(self) -> None:
        segments = self._segments()
        for _, path in segments[: max(len(segments) - self.max_segments, 0)]:
            path.unlink(missing_ok=True)

    def read(self, since_step: int | None = None) -> EmbeddingRows:
        """Every stored row (one per step, the latest, sorted by step); with ``since_step``
        only rows with ``step >= since_step``. Unreadable segments are skipped (logged)."""
        parts = []
        for _, path in self._segments():
            try:
                parts.append(_decode(path, self.dim, self.segment_rows))
            except FileNotFoundError:
                continue  # evicted while we listed
            except ValueError as exc:
                log.warning("embedding store: skipping %s: %s", path, exc)
        rows = _latest_per_step(_concat(parts, self.dim))
        if since_step is not None:
            rows = rows.take(rows.step >= since_step)
        return rows

    def latest(self, n: int) -> EmbeddingRows:
        """The ``n`` rows with the highest steps."""
        if n < 0:
            raise ValueError("n must be >= 0")
        rows = self.read()
        return rows.take(slice(max(len(rows) - n, 0), None))

    def disk_bytes(self) -> int:
        """Bytes of the segment files (and any temp file of a write in progress)."""
        total = 0
        for p in self.directory.iterdir():
            if _SEGMENT.fullmatch(p.name) or (p.name.startswith(".seg-") and p.suffix == ".tmp"):
                try:
                    total += p.stat().st_size
                except FileNotFoundError:
                    continue
        return total


def read_store(
    directory: str | os.PathLike[str], dim: int, segment_rows: int = 1024
) -> EmbeddingRows:
    """Every row of the store in ``directory``, read-only: for another process (a monitor, a
    user's script) while the agent writes. Touches no file; a segment being replaced or
    evicted meanwhile is skipped."""
    folder = Path(directory)
    try:
        names = sorted(p for p in folder.iterdir() if _SEGMENT.fullmatch(p.name))
    except FileNotFoundError:
        return EmbeddingRows.empty(dim)
    parts = []
    for path in names:
        try:
            parts.append(_decode(path, dim, segment_rows))
        except (FileNotFoundError, ValueError):
            continue
    return _latest_per_step(_concat(parts, dim))
