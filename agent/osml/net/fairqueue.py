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

The queue cannot help with what waits *before* it: the broker keeps one queue per client for all
senders (with the production limits, 32 packets or 16 MiB) and drops what does not fit, honest
frames included, while a flood keeps it full (and Mosquitto 2.0.11 even strands QoS 1 messages
for that client until it reconnects). :class:`FloodGuard` is the policy for the remedy: stop
receiving from a source that sends far more than any honest neighbour does (the transport
unsubscribes from that sender's topic, so the broker no longer routes its flood to us) for a
while, twice as long each time it does it again.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["OVERHEAD", "FairQueue", "FloodGuard", "QueueLimits"]

OVERHEAD = 160
"""Bytes charged per message besides payload and topic (the message object, the bytes headers)."""

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


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


class FloodGuard(Generic[K]):
    """When to stop receiving from a source that floods, and for how long.

    Each source has a budget of messages and bytes (token buckets: ``burst_*`` at once, refilled
    at ``rate_*`` per second). :meth:`arrived` is told of every message; one that finds its
    source's budget empty is a strike, and after ``strikes`` of them the source is muted for
    ``first_s`` seconds. Each further mute within ``forgive_s`` of the previous one's end lasts
    twice as long, up to ``max_s``. An honest neighbour sends a few frames per round, far below
    the budget, so muting never touches it; a flooder is mostly muted. The budget is judged on
    arrival, not on how fast the agent reads: a flood must stop even while the agent keeps up,
    since it fills the broker's queue for this client, which the honest frames share. Pure: the
    caller passes the time.
    """

    def __init__(
        self,
        *,
        rate_messages: float = 100.0,
        burst_messages: float = 500.0,
        rate_bytes: float = 16 << 20,
        burst_bytes: float = 32 << 20,
        strikes: int = 16,
        first_s: float = 30.0,
        max_s: float = 960.0,
        forgive_s: float = 3600.0,
    ) -> None:
        rates = (rate_messages, burst_messages, rate_bytes, burst_bytes)
        if any(not r > 0 for r in rates) or strikes < 1 or not 0 < first_s <= max_s:
            raise ValueError(
                "FloodGuard needs positive rates and bursts, strikes >= 1 and 0 < first_s <= max_s"
            )
        if forgive_s < 0:
            raise ValueError(f"FloodGuard forgive_s {forgive_s} < 0")
        self.rate = (float(rate_messages), float(rate_bytes))
        self.burst = (float(burst_messages), float(burst_bytes))
        self.strikes, self.first_s, self.max_s, self.forgive_s = strikes, first_s, max_s, forgive_s
        self._budget: dict[K, tuple[float, float, float]] = {}  # messages, bytes left; when
        self._strikes: Counter[K] = Counter()  # since the source was last muted
        self._until: dict[K, float] = {}  # muted sources -> end of their mute
        self._last: dict[K, tuple[float, float]] = {}  # source -> (end, length) of its last mute

    def muted(self, source: K, now: float) -> bool:
        return self._until.get(source, -1.0) > now

    def arrived(self, source: K, size: int, now: float) -> float | None:
        """Count one message of ``size`` bytes from ``source``; the length of the mute that
        starts now because of it, else None."""
        if source in self._until:
            return None
        messages, nbytes, then = self._budget.get(source, (*self.burst, now))
        elapsed = max(0.0, now - then)
        messages = min(self.burst[0], messages + elapsed * self.rate[0])
        nbytes = min(self.burst[1], nbytes + elapsed * self.rate[1])
        if messages >= 1 and nbytes >= size:
            self._budget[source] = (messages - 1, nbytes - size, now)
            return None
        self._budget[source] = (messages, nbytes, now)
        self._strikes[source] += 1
        if self._strikes[source] < self.strikes:
            return None
        end, length = self._last.get(source, (-float("inf"), 0.0))
        again = now - end <= self.forgive_s
        duration = min(self.max_s, 2 * length) if again and length else self.first_s
        self._until[source] = now + duration
        self._last[source] = (now + duration, duration)
        del self._strikes[source]
        del self._budget[source]  # a full budget again when it is let back in
        return duration

    def release(self, now: float) -> list[K]:
        """The sources whose mute has ended by ``now`` (each reported once)."""
        done = [s for s, until in self._until.items() if until <= now]
        for source in done:
            del self._until[source]
        return done
