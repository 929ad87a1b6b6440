"""The receive queue under floods: bounded in bytes per source and in total, served in turn."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osml.net.fairqueue import FairQueue, FloodGuard, QueueLimits

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


# -- the flood guard: whom to stop receiving from, for how long -----------------------------------


def guard(**kw: float) -> FloodGuard[str]:
    settings = {"rate_messages": 1.0, "burst_messages": 3.0, "rate_bytes": 1e9, "burst_bytes": 1e9}
    return FloodGuard(**{**settings, **kw})  # type: ignore[arg-type]


def test_a_source_is_muted_after_its_strikes_and_longer_each_time() -> None:
    g = guard(strikes=2, first_s=10.0, max_s=35.0, forgive_s=100.0)
    assert [g.arrived("f", 10, 0.0) for _ in range(5)] == [None, None, None, None, 10.0]
    assert g.muted("f", 5.0) and not g.muted("h", 5.0)
    assert g.arrived("f", 10, 5.0) is None  # already muted: nothing more to count
    assert g.release(9.9) == [] and g.release(10.0) == ["f"] and g.release(11.0) == []
    assert [g.arrived("f", 10, 20.0) for _ in range(5)][-1] == 20.0  # doubled
    g.release(40.0)
    assert [g.arrived("f", 10, 50.0) for _ in range(5)][-1] == 35.0  # capped at max_s
    g.release(85.0)
    assert [g.arrived("f", 10, 500.0) for _ in range(5)][-1] == 10.0  # forgiven after a while


def test_an_honest_rate_is_never_muted() -> None:
    g = guard(strikes=1)
    # a message a second forever, with a burst of three now and then
    times = [t + 0.01 * k for t in range(0, 1000, 5) for k in range(3)]
    assert all(g.arrived("h", 10, t) is None for t in times)


def test_bytes_count_as_well_as_messages() -> None:
    g = guard(
        strikes=2, burst_messages=1e6, rate_messages=1e6, burst_bytes=1000.0, rate_bytes=100.0
    )
    assert g.arrived("f", 600, 0.0) is None
    assert g.arrived("f", 600, 0.0) is None  # the first strike: only 400 bytes left
    assert g.arrived("f", 500, 1.0) is None and not g.muted("f", 1.0)  # refilled to 500
    assert g.arrived("f", 600, 1.0) == 30.0  # the second strike


def test_sources_are_judged_apart() -> None:
    g = guard(strikes=1, burst_messages=1.0)
    g.arrived("a", 1, 0.0)
    assert g.arrived("b", 1, 0.0) is None
    assert g.arrived("a", 1, 0.0) == 30.0 and not g.muted("b", 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"strikes": 0}, {"first_s": 0.0}, {"first_s": 10.0, "max_s": 5.0}, {"rate_bytes": 0.0}],
)
def test_flood_guard_checks_its_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FloodGuard(**kwargs)  # type: ignore[arg-type]
