"""The receive queue under floods: bounded in bytes per source and in total, served in turn."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osml.net.fairqueue import FairQueue, QueueLimits

MIB = 1 << 20


def test_a_flooder_loses_its_own_oldest_and_never_an_honest_message() -> None:
    q: FairQueue[str] = FairQueue(QueueLimits(per_source_bytes=4 * MIB, total_bytes=16 * MIB))
    q.push("honest", "h0", 5_000)
    for i in range(1000):
        q.push("flood", f"f{i}", MIB)

    assert q.held("flood") <= 4 * MIB and q.held("honest") == 5_000
    assert q.dropped == {"queue_full": 1000 - 4}
    assert q.pop() == "h0"  # the honest message first: it was there first, and it is its turn
    assert [q.pop() for _ in range(4)] == ["f996", "f997", "f998", "f999"]  # the newest kept
    assert q.pop() is None and q.bytes == 0 and len(q) == 0


def test_many_sources_share_the_total_and_the_largest_gives_way() -> None:
    q: FairQueue[str] = FairQueue(QueueLimits(per_source_bytes=4 * MIB, total_bytes=8 * MIB))
    q.push("honest", "h", 1_000)
    for s in range(10):  # spoofed sources, each within its share, together over the total
        for i in range(4):
            q.push(f"s{s}", f"s{s}-{i}", MIB - 1)

    assert q.bytes <= 8 * MIB and q.peak_bytes <= 8 * MIB
    assert q.dropped["queue_total"] > 0 and q.held("honest") == 1_000
    items = []
    while (item := q.pop()) is not None:
        items.append(item)
    assert "h" in items


def test_small_messages_are_bounded_by_count() -> None:
    q: FairQueue[int] = FairQueue(QueueLimits(per_source_messages=10, total_messages=15))
    for i in range(100):
        q.push("a", i, 1)
    for i in range(100):
        q.push("b", i, 1)

    assert len(q) == 15
    assert q.dropped["queue_full"] == 90  # a over its own share
    assert sum(q.dropped.values()) == 200 - 15  # then the larger of a and b gives way
    assert {q.pop() for _ in range(15)} >= set(range(93, 100))  # a's newest are still there


def test_pop_serves_sources_in_turn() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(3):
        q.push("a", f"a{i}", 10)
    q.push("b", "b0", 10)
    q.push("c", "c0", 10)

    assert [q.pop() for _ in range(5)] == ["a0", "b0", "c0", "a1", "a2"]


def test_a_message_bigger_than_a_share_is_refused_alone() -> None:
    q: FairQueue[str] = FairQueue(QueueLimits(per_source_bytes=100, total_bytes=1000))
    q.push("a", "small", 50)

    assert q.push("a", "huge", 101) == [("huge", "queue_full")]
    assert q.pop() == "small"


@pytest.mark.parametrize(
    "kwargs",
    [{"per_source_bytes": 0}, {"total_messages": -1}, {"per_source_bytes": 10, "total_bytes": 5}],
)
def test_limits_check_themselves(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        QueueLimits(**kwargs)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from("abcd"), st.integers(1, 300)),
            st.just(("pop", 0)),
        ),
        max_size=300,
    )
)
def test_every_message_is_held_popped_or_dropped_and_bounds_always_hold(
    ops: list[tuple[str, int]],
) -> None:
    lim = QueueLimits(
        per_source_bytes=500, per_source_messages=5, total_bytes=1200, total_messages=12
    )
    q: FairQueue[int] = FairQueue(lim)
    pushed = popped = dropped = 0
    for source, size in ops:
        if source == "pop":
            popped += q.pop() is not None
            continue
        dropped += len(q.push(source, pushed, size))
        pushed += 1
        assert q.bytes <= lim.total_bytes and len(q) <= lim.total_messages
        assert all(q.held(s) <= lim.per_source_bytes for s in "abcd")
    assert pushed == popped + dropped + len(q)
    assert sum(q.dropped.values()) == dropped
