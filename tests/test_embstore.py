"""Tests for osml.agent.embstore: bounded segments, latest-wins duplicates, torn segments."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from osml.agent.embstore import SEGMENT_OVERHEAD, EmbeddingStore, bound_bytes

DIM = 4


def rows(start: int, n: int, value: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = np.arange(start, start + n, dtype=np.int64)
    vectors = np.tile(steps[:, None].astype(np.float32), (1, DIM)) + np.float32(value)
    return steps, 1000.0 + steps.astype(np.float64), vectors


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.npz"))


def segment_sizes(directory: Path) -> list[int]:
    sizes = []
    for p in segment_files(directory):
        with np.load(p) as z:
            sizes.append(len(z["step"]))
    return sizes


def test_rows_round_trip_with_scores(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM, segment_rows=8, max_segments=4)
    steps, times, vectors = rows(0, 5)
    z = np.array([0.1, 0.2, 5.0, np.nan, 0.3], np.float32)
    flagged = np.array([False, False, True, False, False])
    store.append(steps, times, vectors, z=z, flagged=flagged)
    store.append(*rows(5, 2))  # no scores: NaN z, not flagged

    got = store.read()
    assert got.step.tolist() == list(range(7))
    assert got.step.dtype == np.int64 and got.time.dtype == np.float64
    assert got.vector.dtype == np.float32 and got.vector.shape == (7, DIM)
    np.testing.assert_array_equal(got.vector[:5], vectors)
    np.testing.assert_array_equal(got.z[:5], z)
    assert np.isnan(got.z[5:]).all()
    assert got.flagged.tolist() == flagged.tolist() + [False, False]
    assert store.read(since_step=4).step.tolist() == [4, 5, 6]
    assert store.latest(2).step.tolist() == [5, 6]
    assert len(store.latest(0)) == 0 and len(store.latest(100)) == 7


def test_store_is_bounded_on_disk_and_drops_the_oldest(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM, segment_rows=10, max_segments=3)
    for start in range(0, 500, 7):  # rounds of 7 rows, segments of 10
        store.append(*rows(start, 7))
        assert len(segment_files(tmp_path)) <= 3
        assert store.disk_bytes() <= store.max_bytes
    got = store.read()
    assert len(got) <= 30
    assert got.step[-1] == 503 and got.step.tolist() == list(range(504 - len(got), 504))
    assert store.max_bytes == bound_bytes(DIM, 10, 3) == 3 * (10 * (8 + 8 + 16 + 5) + 4096)


def test_one_append_larger_than_a_segment_spreads_over_segments(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM, segment_rows=4, max_segments=10)
    store.append(*rows(0, 11))
    assert segment_sizes(tmp_path) == [4, 4, 3]
    assert store.read().step.tolist() == list(range(11))


def test_duplicate_steps_keep_the_latest(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM, segment_rows=6, max_segments=5)
    store.append(*rows(0, 10, value=0.0))
    store.append(*rows(3, 5, value=100.0))  # re-embedded older windows, in both segments
    steps, times, vectors = rows(8, 2, value=200.0)
    store.append(steps[::-1], times[::-1], vectors[::-1])  # any order
    twice = np.array([1, 1], np.int64)
    store.append(
        twice, np.zeros(2), np.stack([np.full(DIM, 5.0), np.full(DIM, 9.0)])
    )  # last one wins

    got = store.read()
    assert got.step.tolist() == list(range(10))
    offset = got.vector[:, 0] - got.step
    expected = [0, 8, 0, 100, 100, 100, 100, 100, 200, 200]
    np.testing.assert_allclose(offset, expected)


def test_a_torn_segment_is_skipped_and_the_store_carries_on(tmp_path: Path) -> None:
    """What a SIGKILL (or a crash of a copy) mid-write can leave: half a segment file."""
    store = EmbeddingStore(tmp_path, DIM, segment_rows=5, max_segments=10)
    store.append(*rows(0, 12))  # segments 0, 1 full; 2 holds two rows
    newest = segment_files(tmp_path)[-1]
    whole = newest.read_bytes()
    torn = tmp_path / "seg-000000000003.npz"
    torn.write_bytes(whole[: len(whole) // 2])
    (tmp_path / ".seg-000000000004.npz.abc.tmp").write_bytes(whole[:100])  # killed write_atomic

    assert EmbeddingStore(tmp_path, DIM, 5, 10).read().step.tolist() == list(range(12))
    reopened = EmbeddingStore(tmp_path, DIM, segment_rows=5, max_segments=10)
    assert not list(tmp_path.glob(".seg-*.tmp"))  # the stale temp file is gone
    reopened.append(*rows(12, 3))
    assert torn.read_bytes() == whole[: len(whole) // 2]  # left alone, new rows went after it
    assert reopened.read().step.tolist() == list(range(15))


@pytest.mark.parametrize("bad", ["garbage", "wrong_dim", "extra_field", "pickle"])
def test_segments_that_are_not_ours_are_skipped(tmp_path: Path, bad: str) -> None:
    store = EmbeddingStore(tmp_path, DIM, segment_rows=5, max_segments=10)
    store.append(*rows(0, 3))
    path = tmp_path / "seg-000000000009.npz"
    if bad == "garbage":
        path.write_bytes(b"not a zip at all")
    else:
        buf = io.BytesIO()
        s, t, v = rows(50, 2)
        arrays: dict[str, np.ndarray] = {
            "step": s,
            "time": t,
            "vector": v[:, :2] if bad == "wrong_dim" else v,
            "z": np.zeros(2, np.float32),
            "flagged": np.zeros(2, bool),
        }
        if bad == "extra_field":
            arrays["more"] = np.zeros(2)
        if bad == "pickle":
            arrays["time"] = np.array([object(), object()], dtype=object)
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        path.write_bytes(buf.getvalue())
    assert store.read().step.tolist() == [0, 1, 2]


def test_continues_the_newest_segment_after_a_restart(tmp_path: Path) -> None:
    EmbeddingStore(tmp_path, DIM, segment_rows=5, max_segments=3).append(*rows(0, 3))
    again = EmbeddingStore(tmp_path, DIM, segment_rows=5, max_segments=3)
    again.append(*rows(3, 4))
    assert segment_sizes(tmp_path) == [5, 2]
    assert again.read().step.tolist() == list(range(7))


def test_rejects_bad_rows_and_settings(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM)
    steps, times, vectors = rows(0, 3)
    with pytest.raises(ValueError, match="vectors"):
        store.append(steps, times, vectors[:, :2])
    with pytest.raises(ValueError, match="time"):
        store.append(steps, times[:2], vectors)
    with pytest.raises(ValueError, match="finite"):
        store.append(steps, times, np.full_like(vectors, np.nan))
    with pytest.raises(ValueError, match="integer"):
        store.append(steps.astype(float), times, vectors)
    with pytest.raises(ValueError):
        EmbeddingStore(tmp_path, 0)
    with pytest.raises(ValueError):
        EmbeddingStore(tmp_path, DIM, max_segments=0)
    store.append(steps[:0], times[:0], vectors[:0])
    assert len(store.read()) == 0 and store.disk_bytes() == 0


def test_overhead_constant_covers_real_segments(tmp_path: Path) -> None:
    for dim, n in [(1, 1), (64, 1000)]:
        store = EmbeddingStore(tmp_path / f"{dim}", dim, segment_rows=n, max_segments=1)
        store.append(np.arange(n), np.zeros(n), np.zeros((n, dim)))
        assert store.disk_bytes() - n * (8 + 8 + 4 * dim + 5) <= SEGMENT_OVERHEAD
