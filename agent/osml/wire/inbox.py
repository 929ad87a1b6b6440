"""An agent's inbox: where untrusted frames from the network become frames the osmosis may use.

Everything that arrives on an agent's inbox topics passes :meth:`Inbox.offer` before anything
else looks at it. A message is either kept (a checked chunk of a neighbour's frame for the
current round or one a little ahead) or rejected with one counted reason; nothing raises, nothing
blocks, and memory stays bounded whatever a sender does. Transport-free and pure, so the same
object is fuzzed in the tests and used by the agent.

Reasons, besides the decoder's (:data:`osml.wire.codec.REASONS`):

=================  ==========================================================================
``topic``          not this agent's inbox, or the frame's ``src`` is not the topic's sender
``context``        the topic or the frame names another context
``not_neighbour``  the sender is not one of this agent's neighbours
``late``           a round this agent has finished (a slow neighbour, or a replay)
``future``         more than ``max_ahead`` rounds ahead of this agent (the round is remembered:
                   see :meth:`Inbox.catch_up`), or a round at or past ``max_round``, which
                   never comes (the configured round count; not remembered)
``duplicate``      a chunk already held (a QoS 1 redelivery, or a replay)
``chunk``          chunks of one frame that disagree (count, dimension, model, step ranges)
``dimension``      an embedding dimension other than this agent's
``flood``          the sender already has ``max_pending_bytes`` waiting here, or all senders
                   together ``max_total_pending_bytes``
``steps``          a complete frame for other steps than this agent's round (see the runtime)
=================  ==========================================================================
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise

import numpy as np

from osml.errors import FrameError
from osml.wire import topics
from osml.wire.codec import MAX_ROUND, Frame, decode_frame
from osml.wire.codec import REASONS as DECODER_REASONS

__all__ = ["REASONS", "Inbox"]

_MAX_CATCH_UP = MAX_ROUND  # never jump to a round state.json would refuse on the next start
# Charged per held chunk besides its embeddings (the Frame and array objects), so that a flood of
# one-row chunks is bounded by the same budget as a few big ones.
CHUNK_OVERHEAD = 512

REASONS = {
    **DECODER_REASONS,
    "topic": "not this agent's inbox, or the frame's src is not the topic's sender",
    "context": "the topic or the frame names another context",
    "not_neighbour": "the sender is not one of this agent's neighbours",
    "late": "a round this agent has finished (a slow neighbour, or a replay)",
    "future": "too many rounds ahead of this agent",
    "duplicate": "a chunk already held (a QoS 1 redelivery, or a replay)",
    "chunk": "chunks of one frame that disagree",
    "dimension": "an embedding dimension other than this agent's",
    "flood": "the sender has too many bytes waiting in this inbox",
    "steps": "a complete frame for other steps than this agent's round",
}
"""Every reason an agent counts a rejected frame under -> description."""

_log = logging.getLogger("osml.wire.inbox")


class Inbox:
    """Checked, reassembled frames per (round, source), and counters of what was rejected.

    ``dim`` is the embedding dimension this agent's model produces (None: any). With ``keys`` a
    frame's signature must verify; with ``require_signature`` unsigned frames are rejected too.
    ``max_ahead`` bounds how many rounds ahead a frame may be; ``max_pending_bytes`` bounds what
    one sender can have waiting (decoded float32 embeddings plus :data:`CHUNK_OVERHEAD` per
    chunk), ``max_total_pending_bytes`` all of them together, and ``max_chunks`` the chunks of
    one frame. ``max_round`` is the
    round count (None: no end); ``catch_up_quorum`` how many neighbours must agree before
    :meth:`catch_up` moves the agent ahead.
    """

    def __init__(
        self,
        *,
        context: str,
        me: str,
        neighbours: Iterable[str],
        dim: int | None = None,
        keys: Sequence[bytes] = (),
        require_signature: bool = False,
        max_frame_bytes: int = 1 << 20,
        max_ahead: int = 8,
        max_chunks: int = 1024,
        max_pending_bytes: int = 32 << 20,
        max_total_pending_bytes: int = 64 << 20,
        max_round: int | None = None,
        catch_up_quorum: int = 2,
    ) -> None:
        self.context = context
        self.me = me
        self.neighbours = frozenset(neighbours)
        self.dim = dim
        self.keys = tuple(keys)
        self.require_signature = require_signature
        self.max_frame_bytes = max_frame_bytes
        self.max_ahead = max_ahead
        self.max_chunks = max_chunks
        self.max_pending_bytes = max_pending_bytes
        self.max_total_pending_bytes = max_total_pending_bytes
        self.max_round = max_round
        self.catch_up_quorum = catch_up_quorum
        self.rejected: Counter[str] = Counter()
        self.frames_in = 0
        self.bytes_in = 0
        self._chunks: dict[tuple[int, str], dict[int, Frame]] = {}
        self._pending: Counter[str] = Counter()  # embedding bytes held per sender
        self._ahead: dict[str, set[int]] = {}  # sender -> rounds it sent beyond max_ahead (a few)
        # (round, sender) -> the latest place in the arrival order of its chunks held
        self._last: dict[tuple[int, str], int] = {}

    # -- counting ---------------------------------------------------------------------------

    def reject(self, reason: str, detail: str = "") -> str:
        """Count one rejection; log the first few of each reason, then every 10x more."""
        self.rejected[reason] += 1
        n = self.rejected[reason]
        if n <= 3 or _is_power_of_ten(n):
            _log.warning("agent %s: rejected frame (%s, %d so far): %s", self.me, reason, n, detail)
        else:
            _log.debug("agent %s: rejected frame (%s): %s", self.me, reason, detail)
        return reason

    @property
    def late(self) -> int:
        return self.rejected["late"]

    @property
    def invalid(self) -> int:
        """Rejections for any reason but lateness."""
        return sum(n for r, n in self.rejected.items() if r != "late")

    # -- admission --------------------------------------------------------------------------

    def offer(
        self, topic: str, payload: bytes, current_round: int, arrived: int | None = None
    ) -> str | None:
        """Check one received message; keep it and return None, or count and return a reason.
        ``arrived`` is its place in the order messages came to the agent (default: the order
        they are offered in), what :meth:`arrival` tells."""
        self.frames_in += 1
        place = self.frames_in if arrived is None else arrived
        self.bytes_in += len(payload) if isinstance(payload, (bytes, bytearray)) else 0
        parsed = topics.parse_inbox(topic) if isinstance(topic, str) else None
        if parsed is None or parsed[1] != self.me:
            return self.reject("topic", f"{topic!r} is not this agent's inbox")
        ctx, _, sender = parsed
        if ctx != self.context:
            return self.reject("context", f"topic {topic!r} is for context {ctx!r}")
        if sender not in self.neighbours:
            # Checked before decoding: a stranger's bytes cost us nothing more than this.
            return self.reject("not_neighbour", f"{sender!r} on {topic!r} is not a neighbour")
        try:
            frame = decode_frame(
                payload,
                max_frame_bytes=self.max_frame_bytes,
                keys=self.keys,
                require_signature=self.require_signature,
            )
        except FrameError as exc:
            return self.reject(exc.reason, f"{topic}: {exc}")
        if frame.source != sender:
            return self.reject("topic", f"frame from {frame.source!r} on {sender!r}'s topic")
        if frame.context != self.context:
            return self.reject("context", f"frame for context {frame.context!r} on {topic}")
        return self._add(frame, current_round, place)

    def _add(self, frame: Frame, current_round: int, place: int) -> str | None:
        src, rnd = frame.source, frame.round
        if rnd < current_round:
            return self.reject("late", f"{src} round {rnd} < current {current_round}")
        if self.max_round is not None and rnd >= self.max_round:
            return self.reject("future", f"{src} round {rnd}: this run ends at {self.max_round}")
        if rnd > current_round + self.max_ahead:
            if rnd < _MAX_CATCH_UP:
                seen = self._ahead.setdefault(src, set())
                seen.add(rnd)
                if len(seen) > 4:
                    seen.discard(min(seen))
            return self.reject(
                "future", f"{src} round {rnd} > current {current_round} + {self.max_ahead}"
            )
        if self.dim is not None and frame.dim != self.dim:
            return self.reject(
                "dimension", f"{src} sent dimension {frame.dim}, this agent uses {self.dim}"
            )
        if frame.n_chunks > self.max_chunks:
            return self.reject(
                "chunk", f"{src} declares {frame.n_chunks} chunks > {self.max_chunks}"
            )
        parts = self._chunks.get((rnd, src), {})
        if frame.chunk in parts:
            return self.reject("duplicate", f"{src} round {rnd} chunk {frame.chunk} again")
        if parts:
            first = next(iter(parts.values()))
            if (first.n_chunks, first.dim, first.model_version) != (
                frame.n_chunks,
                frame.dim,
                frame.model_version,
            ):
                return self.reject(
                    "chunk", f"{src} round {rnd}: chunk {frame.chunk} disagrees with the others"
                )
        size = _held_size(frame)
        if self._pending[src] + size > self.max_pending_bytes:
            return self.reject("flood", f"{src} has {self._pending[src]} bytes waiting")
        if self.pending_bytes + size > self.max_total_pending_bytes:
            return self.reject("flood", f"all senders have {self.pending_bytes} bytes waiting")
        self._chunks.setdefault((rnd, src), parts)[frame.chunk] = frame
        self._pending[src] += size
        self._last[(rnd, src)] = max(self._last.get((rnd, src), place), place)
        return None

    def catch_up(self, current_round: int) -> int | None:
        """The round to jump to when this agent has fallen behind, else None.

        An agent that was down for a while comes back many rounds behind its neighbours; their
        frames are then all too far ahead, and its own are all late for them, so neither side
        would ever hear the other again. Rounds are only exchange slots, so the agent skips
        ahead and the fleet is in step again. What counts as evidence:

        * a neighbour counts when it sent valid frames (from a neighbour, on its own topic,
          signed when signing is on) for at least two different rounds close together, as a
          live neighbour does round after round: one stray frame with a huge round number
          moves nobody;
        * ``catch_up_quorum`` (2) distinct neighbours must be ahead (all of them, for an agent
          with fewer), and the agent goes to one past the round the least advanced of them
          reached: a neighbour that lies about its round moves the agent no further than an
          honest one already is;
        * never to or past ``max_round``: at most to the last round, which it then still runs.
          Frames for rounds past the end were refused on arrival.

        Round numbers only ever grow.
        """
        fronts = sorted(
            (f for f in (_front(r, self.max_ahead) for r in self._ahead.values()) if f is not None),
            reverse=True,
        )
        quorum = min(self.catch_up_quorum, len(self.neighbours))
        if quorum < 1 or len(fronts) < quorum:
            return None
        ahead = fronts[quorum - 1]
        if ahead <= current_round + self.max_ahead:
            return None
        self._ahead.clear()
        target = ahead + 1
        if self.max_round is not None:
            target = min(target, self.max_round - 1)
        return target

    # -- reassembly -------------------------------------------------------------------------

    def complete(self, rnd: int, src: str) -> Frame | None:
        """The whole frame ``src`` sent for round ``rnd`` once every chunk is in, else None.

        Chunk ``i + 1`` must start where chunk ``i`` stops; otherwise the parts are dropped and
        counted under ``chunk``.
        """
        parts = self._chunks.get((rnd, src))
        if not parts:
            return None
        n = next(iter(parts.values())).n_chunks
        if len(parts) < n:
            return None
        ordered = [parts[i] for i in range(n)]
        if any(a.step_stop != b.step_start for a, b in pairwise(ordered)):
            self._drop((rnd, src))
            self.reject("chunk", f"{src} round {rnd}: chunks do not tile one step range")
            return None
        emb = np.concatenate([p.embeddings for p in ordered]) if n > 1 else ordered[0].embeddings
        first = ordered[0]
        return Frame(
            context=first.context,
            source=src,
            round=rnd,
            step_start=first.step_start,
            model_version=first.model_version,
            embeddings=emb,
        )

    def arrival(self, rnd: int, src: str) -> int | None:
        """When ``src``'s frame for ``rnd`` came in whole (the place of its last chunk in the
        order messages came), or None if it has not. A copy of
        a neighbour's frame of this round can only be made once that frame has come, so it
        comes after it (see :meth:`osml.core.screening.CopyDetector.copies`)."""
        parts = self._chunks.get((rnd, src))
        if not parts or len(parts) < next(iter(parts.values())).n_chunks:
            return None
        return self._last.get((rnd, src))

    def forget_before(self, rnd: int) -> None:
        """Drop everything held for rounds before ``rnd``."""
        for key in [k for k in self._chunks if k[0] < rnd]:
            self._drop(key)

    def _drop(self, key: tuple[int, str]) -> None:
        self._last.pop(key, None)
        parts = self._chunks.pop(key, {})
        self._pending[key[1]] -= sum(_held_size(p) for p in parts.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes held for all senders (embeddings plus per-chunk overhead)."""
        return sum(self._pending.values())


def _held_size(frame: Frame) -> int:
    return frame.embeddings.nbytes + CHUNK_OVERHEAD


def _front(rounds: set[int], max_ahead: int) -> int | None:
    """The highest of a sender's far rounds that follows another within ``max_ahead``."""
    ordered = sorted(rounds)
    return max((b for a, b in pairwise(ordered) if b - a <= max_ahead), default=None)


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
