"""Tests for osml.agent.sources: the data-source spec and an agent's own series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osml.agent.config import DataSection
from osml.agent.sources import SourceSpec, load_series, parse_source


def test_parse_source_kinds() -> None:
    assert parse_source("csv:/data/a.csv") == SourceSpec("csv", "/data/a.csv")
    assert parse_source("paper:rel/dir") == SourceSpec("paper", "rel/dir")
    assert parse_source("generated:complex+wobble") == SourceSpec("generated", "complex+wobble")
    assert str(parse_source("csv:C:/x.csv")) == "csv:C:/x.csv"  # only the first ':' splits


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("medium", "not understood"),
        ("csv:", "not understood"),
        ("ftp:host", "not understood"),
        ("generated:medium", "unknown generator"),
    ],
)
def test_parse_source_refuses(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_source(spec)


def test_from_cli_and_relative_paths(tmp_path: Path) -> None:
    assert SourceSpec.from_cli("generated:simple") == SourceSpec("generated", "simple")
    assert SourceSpec.from_cli(str(tmp_path)) == SourceSpec("paper", str(tmp_path.resolve()))
    assert SourceSpec("csv", "a.csv").relative_to(tmp_path) == SourceSpec(
        "csv", str(tmp_path / "a.csv")
    )
    assert SourceSpec("generated", "simple").relative_to(tmp_path).target == "simple"


def test_load_series_from_csv_and_generated(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("a,b\n1,2\n3,4\n5,6\n")
    test.write_text("a,b\n7,8\n")

    got_train, got_test = load_series(DataSection(f"csv:{train}", test=str(test)), "x")
    only_train, none = load_series(DataSection(f"csv:{train}"), "x")
    gen_train, gen_test = load_series(DataSection("generated:simple", seed=1), "0")

    np.testing.assert_array_equal(got_train, [[1, 2], [3, 4], [5, 6]])
    assert got_test is not None and got_test.shape == (1, 2)
    assert only_train.shape == (3, 2) and none is None
    assert gen_train.ndim == 2 and gen_test is not None and gen_test.shape[1] == gen_train.shape[1]
