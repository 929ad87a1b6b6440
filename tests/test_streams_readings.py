"""Readings from untrusted lines: parsing, the checks in their order, counting and logging."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osml.agent.streams.readings import (
    REASONS,
    BadReading,
    Reading,
    ReadingFilter,
    ReadingLimits,
    parse_reading,
)
from osml.errors import ConfigError

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("line", "t", "values"),
    [
        (b'{"t": 1700000000.5, "v": [1, 2.5]}', NOW + 0.5, [1.0, 2.5]),
        ('{"t": 1700000000, "v": 3.2}', NOW, [3.2]),
        ('{"v": [4]}', NOW, [4.0]),  # no t: arrival time
        ('{"v": 4, "id": "s1"}', NOW, [4.0]),  # other keys are ignored
        ("3.2", NOW, [3.2]),  # a bare number: one feature, now
        ("  1700000001,1,-2e3\n", NOW + 1, [1.0, -2000.0]),
        ("1700000001.25,7", NOW + 1.25, [7.0]),
    ],
)
def test_parse_good_lines(line: bytes | str, t: float, values: list[float]) -> None:
    r = parse_reading(line, NOW)
    assert isinstance(r, Reading)
    assert r.t == pytest.approx(t)
    np.testing.assert_array_equal(r.values, np.array(values))
    assert r.values.dtype == np.float64


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe", "malformed"),
        ("", "malformed"),
        ("   ", "malformed"),
        ("t,a,b", "malformed"),  # a CSV header
        ("1,2,x", "malformed"),
        ("[1, 2]", "malformed"),
        ('"3.2"', "malformed"),
        ('{"t": 1}', "malformed"),  # no v
        ('{"t": "1", "v": [1]}', "malformed"),
        ('{"v": [true]}', "malformed"),
        ('{"v": [[1]]}', "malformed"),
        ('{"v": {"a": 1}}', "malformed"),
        ("[" * 3000, "malformed"),  # deep nesting: bounded, no RecursionError escapes
        ("1," + "1" * 5000, "malformed"),  # longer than max_line_bytes
        ('{"v": [NaN]}', "nonfinite"),
        ('{"t": Infinity, "v": [1]}', "nonfinite"),
        ("1,inf", "nonfinite"),
        ("nan,1", "nonfinite"),
        ("1,1e39", "nonfinite"),  # finite in float64, infinite as float32
        ('{"v": [1' + "0" * 400 + "]}", "nonfinite"),  # a huge integer
    ],
)
def test_parse_bad_lines(line: bytes | str, reason: str) -> None:
    with pytest.raises(BadReading) as info:
        parse_reading(line, NOW)
    assert info.value.reason == reason


def test_filter_applies_the_checks_in_order() -> None:
    f = ReadingFilter(
        ReadingLimits(n_features=2, max_ahead_s=5, max_behind_s=100, max_disorder_s=3)
    )
    assert isinstance(f.check(f"{NOW},1,2", NOW), Reading)
    assert f.check(f"{NOW},1", NOW) == "width"
    assert f.check(f"{NOW},nan", NOW) == "width"  # width is checked before finiteness
    assert f.check(f"{NOW},nan,1", NOW) == "nonfinite"
    assert f.check(f"{NOW + 6},1,2", NOW) == "future"
    assert f.check(f"{NOW + 4},1,2", NOW) != "future"  # within max_ahead_s: accepted
    assert f.check(f"{NOW - 101},1,2", NOW) == "past"
    assert f.check(f"{NOW},1,2", NOW) == "disorder"  # 4 s older than the newest (NOW + 4)
    assert isinstance(f.check(f"{NOW + 1.5},1,2", NOW), Reading)  # 2.5 s older: tolerated
    assert f.check("junk", NOW) == "malformed"
    assert f.accepted == 3
    assert f.counts() == {
        "width": 2,
        "nonfinite": 1,
        "future": 1,
        "past": 1,
        "disorder": 1,
        "malformed": 1,
    }
    assert set(f.counts()) <= set(REASONS)


def test_first_reading_fixes_the_width() -> None:
    f = ReadingFilter()
    assert f.check("bad", NOW) == "malformed"  # a rejected line fixes nothing
    assert isinstance(f.check('{"v": [1, 2, 3]}', NOW), Reading)
    assert f.n_features == 3
    assert f.offer('{"v": [1, 2]}', NOW) is None
    assert f.rejected["width"] == 1


def test_missing_t_is_the_arrival_time() -> None:
    f = ReadingFilter()
    r = f.offer('{"v": 1}', NOW + 7)
    assert r is not None and r.t == NOW + 7


def test_logs_first_few_then_every_tenfold(caplog: pytest.LogCaptureFixture) -> None:
    f = ReadingFilter(name="s1")
    with caplog.at_level(logging.WARNING, logger="osml.agent.streams"):
        for _ in range(1000):
            f.check("junk", NOW)
    counts = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(counts) == 3 + 3  # 1, 2, 3, then 10, 100, 1000
    assert "1000 so far" in counts[-1] and counts[-1].startswith("s1:")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_features": 0},
        {"max_ahead_s": float("nan")},
        {"max_behind_s": -1.0},
        {"max_disorder_s": float("inf")},
        {"max_line_bytes": 1},
    ],
)
def test_limits_check_themselves(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ReadingLimits(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.text(max_size=80)), max_size=30))
def test_arbitrary_lines_never_raise(lines: list[bytes | str]) -> None:
    f = ReadingFilter()
    for line in lines:
        out = f.check(line, NOW)
        if isinstance(out, Reading):
            assert np.isfinite(out.t) and np.all(np.isfinite(out.values.astype(np.float32)))
        else:
            assert out in REASONS
    assert f.accepted + sum(f.rejected.values()) == len(lines)
