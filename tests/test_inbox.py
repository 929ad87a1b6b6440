"""Frames from the network are hostile until checked: the inbox and the decoder under attack.

Property-based (hypothesis) and hand-made hostile inputs go through :class:`osml.wire.inbox.Inbox`,
the object the agent feeds every received message to. The properties: ``offer`` never raises,
every message is either kept or counted under exactly one known reason, nothing hostile is ever
returned by ``complete`` (so it cannot reach the osmosis targets), and memory stays bounded.
"""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osml.errors import FrameError
from osml.wire import topics
from osml.wire.codec import Frame, decode_frame, encode_frame, signed_bytes
from osml.wire.inbox import CHUNK_OVERHEAD, REASONS, Inbox
from osml.wire.signing import sign

CTX, ME, NB = "lab", "0", "1"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
TOPIC = topics.inbox(CTX, ME, NB)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_inbox(**kw: object) -> Inbox:
    return Inbox(context=CTX, me=ME, neighbours=[NB, "2"], dim=5, **kw)  # type: ignore[arg-type]


def frame(
    rnd: int = 3, src: str = NB, ctx: str = CTX, n: int = 8, d: int = 5, s0: int = 9, **kw: Any
) -> Frame:
    emb = np.random.default_rng(rnd).normal(size=(n, d)).astype(np.float32)
    return Frame(
        context=ctx, source=src, round=rnd, step_start=s0, model_version=1, embeddings=emb, **kw
    )


def doc_of(data: bytes) -> dict[str, object]:
    out: dict[str, object] = msgpack.unpackb(data, raw=False)
    return out


def pack(doc: dict[str, object]) -> bytes:
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def assert_accounted(box: Inbox, offered: int) -> None:
    """Every offered message was either kept or counted under one known reason."""
    kept = sum(len(parts) for parts in box._chunks.values())
    assert kept + sum(box.rejected.values()) == offered
    assert set(box.rejected) <= set(REASONS)


# -- hand-made hostile frames: one reason each -----------------------------------------------------


def hostile_cases() -> dict[str, tuple[str, bytes]]:
    good = encode_frame(frame())
    doc = doc_of(good)
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(64 << 20))
    nan = dict(doc, p=bytes(8 * 5) + np.full(8, np.nan, "<f4").tobytes())
    return {
        "malformed": (TOPIC, b"\x00garbage\xff" * 10),
        "oversize": (TOPIC, bytes(2 << 20)),
        "version": (TOPIC, pack(dict(doc, v=2))),
        "schema": (TOPIC, pack(dict(doc, rnd="3"))),
        "shape": (TOPIC, pack(dict(doc, n=9))),
        "zstd": (TOPIC, pack(dict(doc, z=True, p=bomb))),
        "nonfinite": (TOPIC, pack(nan)),
        "topic": (TOPIC, encode_frame(frame(src="2"))),
        "context": (topics.inbox("elsewhere", ME, NB), good),
        "not_neighbour": (topics.inbox(CTX, ME, "9"), encode_frame(frame(src="9"))),
        "late": (TOPIC, encode_frame(frame(rnd=1))),
        "future": (TOPIC, encode_frame(frame(rnd=10**9))),
        "dimension": (TOPIC, encode_frame(frame(d=7))),
        "chunk": (TOPIC, encode_frame(frame(chunk=0, n_chunks=5000))),
    }


@pytest.mark.parametrize("reason", sorted(hostile_cases()))
def test_each_hostile_frame_is_rejected_with_its_reason(
    reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    box = make_inbox()
    topic, data = hostile_cases()[reason]
    with caplog.at_level(logging.WARNING, logger="osml.wire.inbox"):
        assert box.offer(topic, data, current_round=3) == reason
    assert box.rejected == {reason: 1}
    assert box.complete(3, NB) is None and box.pending_bytes == 0
    assert reason in caplog.text  # logged, with the reason named


def test_a_good_frame_is_kept_and_completed() -> None:
    box = make_inbox()
    f = frame()
    assert box.offer(TOPIC, encode_frame(f), current_round=3) is None
    got = box.complete(3, NB)
    assert got is not None and got.step_start == f.step_start
    np.testing.assert_allclose(got.embeddings, f.embeddings, atol=np.abs(f.embeddings).max() / 127)
    assert not box.rejected


def test_frames_are_ordered_by_when_their_last_chunk_came() -> None:
    """A frame counts as come once it is whole: NB's first chunk is in before "2" sends
    anything, but "2"'s one-chunk frame is whole first."""
    box = make_inbox()
    other = topics.inbox(CTX, ME, "2")
    assert box.offer(TOPIC, encode_frame(frame(n=4, s0=0, chunk=0, n_chunks=2)), 3) is None
    assert box.arrival(3, NB) is None
    assert box.offer(other, encode_frame(frame(src="2", n=8, s0=0)), 3) is None
    assert box.offer(TOPIC, encode_frame(frame(n=4, s0=4, chunk=1, n_chunks=2)), 3) is None
    first, second = box.arrival(3, "2"), box.arrival(3, NB)
    assert first is not None and second is not None and first < second
    assert box.offer(other, encode_frame(frame(rnd=4, src="2")), 3) is None  # a round ahead
    later = box.arrival(4, "2")
    assert later is not None and later > second
    box.forget_before(4)
    assert box.arrival(3, NB) is None and box.arrival(3, "2") is None
    assert box.arrival(4, "2") == later


def test_the_order_messages_came_in_is_kept_when_they_are_offered_in_another() -> None:
    """The receive queue serves senders in turn, so messages reach the inbox in another order
    than they came in: their places in that order (``arrived``) decide."""
    box = make_inbox()
    other = topics.inbox(CTX, ME, "2")
    assert box.offer(other, encode_frame(frame(src="2")), 3, arrived=7) is None
    first = encode_frame(frame(n=4, s0=0, chunk=0, n_chunks=2))
    assert box.offer(TOPIC, first, 3, arrived=2) is None
    assert (
        box.offer(TOPIC, encode_frame(frame(n=4, s0=4, chunk=1, n_chunks=2)), 3, arrived=5) is None
    )
    assert box.arrival(3, NB) == 5 and box.arrival(3, "2") == 7


def test_duplicates_and_replays_are_counted() -> None:
    box = make_inbox()
    data = encode_frame(frame(rnd=3))
    assert box.offer(TOPIC, data, 3) is None
    assert box.offer(TOPIC, data, 3) == "duplicate"
    box.forget_before(4)
    assert box.offer(TOPIC, data, 4) == "late"  # the same frame replayed a round later
    assert box.rejected == {"duplicate": 1, "late": 1}
    assert box.pending_bytes == 0


def test_chunks_must_agree_and_tile_one_range() -> None:
    box = make_inbox()
    a = frame(rnd=3, n=4, s0=0, chunk=0, n_chunks=2)
    assert box.offer(TOPIC, encode_frame(a), 3) is None
    assert (
        box.offer(TOPIC, encode_frame(frame(rnd=3, n=4, s0=4, chunk=1, n_chunks=3)), 3) == "chunk"
    )
    gap = frame(rnd=3, n=4, s0=6, chunk=1, n_chunks=2)  # starts at 6, chunk 0 stops at 4
    assert box.offer(TOPIC, encode_frame(gap), 3) is None
    assert box.complete(3, NB) is None
    assert box.rejected == {"chunk": 2}
    assert box.pending_bytes == 0  # the bad pair was dropped whole


def test_a_flooding_neighbour_fills_only_its_own_budget() -> None:
    held = 8 * 5 * 4 + CHUNK_OVERHEAD  # one 8x5 float32 frame
    box = make_inbox(max_pending_bytes=3 * held)
    kinds = [box.offer(TOPIC, encode_frame(frame(rnd=r)), 3) for r in range(3, 11)]
    assert kinds == [None, None, None] + ["flood"] * 5
    other = topics.inbox(CTX, ME, "2")
    assert box.offer(other, encode_frame(frame(rnd=3, src="2")), 3) is None  # the other is heard
    box.forget_before(11)
    assert box.pending_bytes == 0


def test_all_senders_together_are_bounded_too() -> None:
    held = 8 * 5 * 4 + CHUNK_OVERHEAD
    box = make_inbox(max_pending_bytes=3 * held, max_total_pending_bytes=4 * held)
    other = topics.inbox(CTX, ME, "2")
    kinds = [box.offer(TOPIC, encode_frame(frame(rnd=r)), 3) for r in range(3, 6)]
    kinds += [box.offer(other, encode_frame(frame(rnd=r, src="2")), 3) for r in range(3, 6)]
    assert kinds == [None, None, None, None, "flood", "flood"]
    assert box.pending_bytes == 4 * held


def test_a_flood_of_one_row_chunks_is_charged_its_overhead() -> None:
    box = make_inbox(max_pending_bytes=10 * (5 * 4 + CHUNK_OVERHEAD))
    kinds = [
        box.offer(TOPIC, encode_frame(frame(rnd=3, n=1, s0=9 + i, chunk=i, n_chunks=1000)), 3)
        for i in range(20)
    ]
    assert kinds == [None] * 10 + ["flood"] * 10


# -- signatures ------------------------------------------------------------------------------------


def test_signed_frames_verify_and_forgeries_do_not() -> None:
    box = make_inbox(keys=[KEY], require_signature=True)
    assert box.offer(TOPIC, encode_frame(frame(rnd=3), key=KEY), 3) is None
    assert box.offer(TOPIC, encode_frame(frame(rnd=4)), 3) == "unsigned"
    assert box.offer(TOPIC, encode_frame(frame(rnd=5), key=OTHER_KEY), 3) == "bad_signature"
    # A signed frame whose round was changed afterwards (to replay it as a newer round).
    doc = doc_of(encode_frame(frame(rnd=3), key=KEY))
    assert box.offer(TOPIC, pack(dict(doc, rnd=6)), 3) == "bad_signature"
    # A frame signed by the neighbour, re-sent by someone else as another source.
    relabelled = dict(doc, src="2")
    assert box.offer(topics.inbox(CTX, ME, "2"), pack(relabelled), 3) == "bad_signature"
    assert box.rejected == {"unsigned": 1, "bad_signature": 3}


def test_a_bomb_with_a_bad_signature_is_never_decompressed(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = doc_of(encode_frame(frame()))
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(1 << 20))
    forged = pack(dict(doc, z=True, p=bomb, sig=bytes(32)))

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("decompressed before checking the signature")

    monkeypatch.setattr(zstandard, "frame_content_size", boom)
    with pytest.raises(FrameError) as err:
        decode_frame(forged, keys=[KEY], require_signature=True)
    assert err.value.reason == "bad_signature"


def test_previous_key_is_accepted_during_rotation() -> None:
    box = make_inbox(keys=[OTHER_KEY, KEY], require_signature=True)
    assert box.offer(TOPIC, encode_frame(frame(rnd=3), key=KEY), 3) is None
    assert box.offer(TOPIC, encode_frame(frame(rnd=4), key=OTHER_KEY), 3) is None


def test_signature_covers_every_field() -> None:
    doc = doc_of(encode_frame(frame(), key=KEY))
    for key, value in [
        ("ctx", "x"),
        ("s0", 0),
        ("mv", 9),
        ("ck", 0),
        ("nck", 2),
        ("z", True),
        ("p", b"x"),
    ]:
        if doc[key] == value:
            continue
        tampered = dict(doc, **{key: value})
        assert sign(KEY, signed_bytes(tampered)) != doc["sig"], key


# -- properties ------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096), rnd=st.integers(0, 2**63 - 1))
def test_random_bytes_never_raise_and_never_reach_the_osmosis(data: bytes, rnd: int) -> None:
    box = make_inbox()
    reason = box.offer(TOPIC, data, rnd)
    assert reason in REASONS
    assert_accounted(box, 1)
    assert box.complete(rnd, NB) is None


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    key=st.sampled_from(
        ["v", "ctx", "src", "rnd", "s0", "n", "d", "mv", "ck", "nck", "z", "p", "sig", "extra"]
    ),
    value=msgpack_values,
)
def test_valid_msgpack_with_any_field_replaced_is_rejected_or_consistent(
    key: str, value: object
) -> None:
    """Replace one field of a good frame by anything msgpack can carry: either the result is a
    consistent frame (then what is kept equals what the fields say) or it is rejected."""
    box = make_inbox()
    doc = doc_of(encode_frame(frame(rnd=3)))
    doc[key] = value
    try:
        data = pack(doc)
    except (TypeError, ValueError, OverflowError):
        return  # msgpack cannot carry it, so no peer can send it either
    reason = box.offer(TOPIC, data, 3)
    assert_accounted(box, 1)
    if reason is None:
        got = box.complete(3, NB) if doc.get("nck") == 1 else None
        if got is not None:
            assert got.embeddings.shape == (doc["n"], 5) and np.isfinite(got.embeddings).all()
    else:
        assert box.complete(3, NB) is None


@FUZZ
@given(cut=st.integers(0, 10_000), flips=st.lists(st.integers(0, 10_000), max_size=6))
def test_truncated_or_bit_flipped_signed_frames_are_all_rejected(
    cut: int, flips: list[int]
) -> None:
    data = bytearray(encode_frame(frame(rnd=3, n=64), key=KEY))
    for pos in flips:
        data[pos % len(data)] ^= 1 << (pos % 8)
    data = data[: len(data) - cut % len(data)] if cut % len(data) else data
    if bytes(data) == encode_frame(frame(rnd=3, n=64), key=KEY):
        return  # the flips cancelled out: the original frame
    box = make_inbox(keys=[KEY], require_signature=True)
    reason = box.offer(TOPIC, bytes(data), 3)
    assert reason is not None and reason in REASONS
    assert box.complete(3, NB) is None


@FUZZ
@given(n=st.integers(1, 70_000), d=st.integers(1, 5000), declared=st.integers(0, 2**40))
def test_declared_sizes_are_bounded_before_any_allocation(n: int, d: int, declared: int) -> None:
    """A compressed payload may declare any size: only exactly n*d + 4n within the limits passes
    to decompression, so the decoder never allocates more than max_payload_bytes."""
    doc = doc_of(encode_frame(frame()))
    payload = zstandard.ZstdCompressor(write_content_size=True).compress(b"\x00" * 64)
    # Patch the declared size into a hand-made frame header (single-segment, 8-byte size field).
    header = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + declared.to_bytes(8, "little")
    forged = pack(dict(doc, n=n, d=d, z=True, p=header + payload[6:]))
    with pytest.raises(FrameError) as err:
        decode_frame(forged, max_frame_bytes=1 << 20)
    assert err.value.reason in {"shape", "oversize", "zstd"}


@FUZZ
@given(
    ops=st.lists(
        st.tuples(
            st.integers(0, 40),
            st.sampled_from([NB, "2"]),
            st.integers(0, 3),
            st.integers(1, 4),
            st.integers(0, 20),
        ),
        max_size=60,
    )
)
def test_memory_stays_bounded_whatever_arrives(ops: list[tuple[int, str, int, int, int]]) -> None:
    cap = (8 * 5 * 4 + CHUNK_OVERHEAD) * 4
    box = make_inbox(max_pending_bytes=cap, max_ahead=3)
    current = 0
    for rnd, src, chunk, nck, s0 in ops:
        f = frame(rnd=rnd, src=src, s0=s0, chunk=min(chunk, nck - 1), n_chunks=nck)
        reason = box.offer(topics.inbox(CTX, ME, src), encode_frame(f), current)
        assert reason is None or reason in REASONS
        assert all(b <= cap for b in box._pending.values())
        assert all(current <= r <= current + 3 for r, _ in box._chunks)
        if rnd % 7 == 0:
            current += 1
            box.forget_before(current)
    box.forget_before(current + 4)
    assert box.pending_bytes == 0 and not box._chunks


# -- catching up after a long absence --------------------------------------------------------------


def offer_rounds(
    box: Inbox, src: str, rounds: tuple[int, ...], current: int = 0
) -> list[str | None]:
    return [
        box.offer(topics.inbox(CTX, ME, src), encode_frame(frame(rnd=r, src=src)), current)
        for r in rounds
    ]


def test_an_agent_far_behind_is_told_where_its_neighbours_are() -> None:
    box = make_inbox(max_ahead=8)
    assert box.catch_up(0) is None
    assert offer_rounds(box, NB, (40, 41)) == ["future", "future"]
    assert box.catch_up(0) is None  # one neighbour alone does not move an agent that has two
    assert offer_rounds(box, "2", (30, 31)) == ["future", "future"]
    assert box.catch_up(0) == 32  # one past the round the least advanced of them reached
    assert box.catch_up(0) is None  # forgotten once used


def test_one_stray_frame_far_ahead_moves_nobody() -> None:
    box = make_inbox()
    offer_rounds(box, "2", (40, 41))
    assert box.offer(TOPIC, encode_frame(frame(rnd=10**6)), 0) == "future"
    assert box.catch_up(0) is None
    assert offer_rounds(box, NB, (40,)) == ["future"]  # far from 10**6: not a live run
    assert box.catch_up(0) is None
    assert offer_rounds(box, NB, (41,)) == ["future"]
    assert box.catch_up(0) == 42


def test_two_forged_frames_far_ahead_move_nobody() -> None:
    """The attack: frames for rounds 1,000,000 and 1,000,001 (valid, from one neighbour)."""
    box = make_inbox()
    assert offer_rounds(box, NB, (10**6, 10**6 + 1)) == ["future", "future"]
    assert box.catch_up(0) is None  # one neighbour of two: no quorum
    assert offer_rounds(box, "2", (12, 13)) == ["future", "future"]
    assert box.catch_up(0) == 14  # the honest neighbour's round, not the forger's

    ended = make_inbox(max_round=20)  # a run of 20 rounds: round 10**6 never comes
    assert offer_rounds(ended, NB, (10**6, 10**6 + 1)) == ["future", "future"]
    assert offer_rounds(ended, "2", (10**6, 10**6 + 1)) == ["future", "future"]
    assert ended.catch_up(0) is None and ended._ahead == {}  # not even remembered


def test_an_agent_with_one_neighbour_follows_it_but_never_past_the_end() -> None:
    box = Inbox(context=CTX, me=ME, neighbours=[NB], dim=5, max_round=20)
    assert offer_rounds(box, NB, (12, 13)) == ["future", "future"]
    assert box.catch_up(0) == 14
    assert offer_rounds(box, NB, (18, 19), current=14) == [None, None]  # within the window
    assert offer_rounds(box, NB, (20, 21)) == ["future", "future"]  # past the end
    assert box.catch_up(0) is None

    near_end = Inbox(context=CTX, me=ME, neighbours=[NB], dim=5, max_round=20)
    offer_rounds(near_end, NB, (18, 19))
    assert near_end.catch_up(0) == 19  # the last round, which the agent then still runs


@given(
    st.lists(st.tuples(st.sampled_from([NB, "2"]), st.integers(0, 2**40)), min_size=1, max_size=40),
    st.integers(1, 2**40),
)
@FUZZ
def test_catch_up_only_moves_ahead_and_never_to_the_end(
    sent: list[tuple[str, int]], end: int
) -> None:
    box = make_inbox(max_round=end)
    current = 0
    for src, rnd in sent:
        offer_rounds(box, src, (rnd,), current)
        jump = box.catch_up(current)
        if jump is not None:
            assert current < jump < end
            current = jump


def test_catch_up_ignores_what_failed_other_checks_and_absurd_rounds() -> None:
    box = make_inbox(keys=[KEY], require_signature=True)
    for r in (50, 51):
        box.offer(TOPIC, encode_frame(frame(rnd=r)), 0)  # unsigned
        box.offer(
            topics.inbox(CTX, ME, "9"), encode_frame(frame(rnd=r, src="9"), key=KEY), 0
        )  # stranger
    for r in (2**63 - 3, 2**63 - 2):
        box.offer(TOPIC, encode_frame(frame(rnd=r), key=KEY), 0)  # would overflow later
    assert box.catch_up(0) is None
    box.offer(TOPIC, encode_frame(frame(rnd=5), key=KEY), 0)  # within the window: no jump needed
    assert box.catch_up(0) is None
