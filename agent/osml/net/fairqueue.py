"""A receive queue bounded in bytes, per source and in total, that serves its sources in turn.

One flooding sender must not cost an agent the frames of another, nor unbounded memory. So
received messages wait in one FIFO sub-queue per *source* (for an agent's inbox: the sending
neighbour, with every other topic sharing one source), and

* a source whose sub-queue would go over ``per_source_bytes`` or ``per_source_messages`` loses
  its *own* oldest messages (reason ``queue_full``), never anyone else's;
* when the whole queue would go over ``total_bytes`` or ``total_messages`` (many sources, or
  topics spoofed within what the broker's ACL allows), the oldest message of the largest
  sub-queue goes (reason ``queue_total``): the flooder's, since an honest sender holds little;
* a message larger than ``per_source_bytes`` alone is refused at once (``queue_full``);
* :meth:`FairQueue.pop` takes one message from each non-empty source in turn (round robin), so
  an honest frame waits behind at most one message of each other source, not behind a flood.

A message's cost is its payload plus topic plus :data:`OVERHEAD` (the Python objects around
them), so a flood of empty messages is bounded too. The byte count never exceeds the limits:
room is made before a message is added. Pure and single-threaded; the transport holds the lock.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["OVERHEAD", "FairQueue", "QueueLimits"]

OVERHEAD = 160
"""Bytes charged per message besides payload and topic (the message object, the bytes headers)."""

T = TypeVar("T")


@dataclass(frozen=True)
class QueueLimits:
    """Bounds of a :class:`FairQueue`; memory held is at most ``total_bytes``.

    The defaults hold four maximum-size (1 MiB) frames per source and 16 MiB in all; an honest
    neighbour has a few kilobytes waiting per round.
    """

    per_source_bytes: int = 4 << 20
    per_source_messages: int = 1000
    total_bytes: int = 16 << 20
    total_messages: int = 10_000

    def __post_init__(self) -> None:
        values = (
            self.per_source_bytes,
            self.per_source_messages,
            self.total_bytes,
            self.total_messages,
        )
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"queue limits must be positive integers, got {self}")
        if self.per_source_bytes > self.total_bytes:
            raise ValueError(
                f"per_source_bytes {self.per_source_bytes} > total_bytes {self.total_bytes}: "
                f"one source could never use its share"
            )


class FairQueue(Generic[T]):
    """Per-source FIFO sub-queues under :class:`QueueLimits`, popped round robin."""

    def __init__(self, limits: QueueLimits | None = None) -> None:
        self.limits = limits or QueueLimits()
        self._queues: dict[Hashable, deque[tuple[T, int]]] = {}
        self._bytes: Counter[Hashable] = Counter()
        self._turn: deque[Hashable] = deque()  # sources with something waiting, next first
        self.bytes = 0
        self.messages = 0
        self.peak_bytes = 0
        self.dropped: Counter[str] = Counter()

    def __len__(self) -> int:
        return self.messages

    def push(self, source: Hashable, item: T, size: int) -> list[tuple[T, str]]:
        """Add ``item`` (costing ``size`` bytes) for ``source``; returns what was dropped, with
        the reason (the item itself when it alone exceeds its source's share)."""
        lim = self.limits
        if size > lim.per_source_bytes:
            self.dropped["queue_full"] += 1
            return [(item, "queue_full")]
        dropped: list[tuple[T, str]] = []
        own = self._queues.get(source)
        while own and (
            self._bytes[source] + size > lim.per_source_bytes
            or len(own) + 1 > lim.per_source_messages
        ):
            dropped.append((self._drop_oldest(source), "queue_full"))
            own = self._queues.get(source)
        while self.bytes + size > lim.total_bytes or self.messages + 1 > lim.total_messages:
            largest = max(self._queues, key=lambda s: (self._bytes[s], len(self._queues[s])))
            dropped.append((self._drop_oldest(largest), "queue_total"))
        queue = self._queues.get(source)
        if queue is None:
            queue = self._queues[source] = deque()
            self._turn.append(source)
        queue.append((item, size))
        self._bytes[source] += size
        self.bytes += size
        self.messages += 1
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        for _, reason in dropped:
            self.dropped[reason] += 1
        return dropped

    def pop(self) -> T | None:
        """The oldest message of the source whose turn it is, or None when empty."""
        if not self._turn:
            return None
        source = self._turn.popleft()
        queue = self._queues[source]
        item, size = queue.popleft()
        self._account(source, size)
        if queue:
            self._turn.append(source)
        return item

    def held(self, source: Hashable) -> int:
        """Bytes waiting for ``source``."""
        return self._bytes.get(source, 0)

    def _drop_oldest(self, source: Hashable) -> T:
        queue = self._queues[source]
        item, size = queue.popleft()
        self._account(source, size)
        if not queue:
            self._turn.remove(source)
        return item

    def _account(self, source: Hashable, size: int) -> None:
        self.bytes -= size
        self.messages -= 1
        self._bytes[source] -= size
        if not self._queues[source]:
            del self._queues[source]
            del self._bytes[source]
