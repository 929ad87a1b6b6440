"""The project's tooling configuration agrees with the tree: mypy's relaxed list, the test tiers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_test_and_script_module_is_in_mypys_relaxed_list() -> None:
    """tests/ and scripts/ are no packages, so mypy names their files by module name alone: a
    file missing from the list would be checked as strictly as the package."""
    relaxed = {
        module
        for override in PYPROJECT["tool"]["mypy"]["overrides"]
        if override.get("disallow_untyped_defs") is False
        for module in override["module"]
    }
    modules = {p.stem for folder in ("tests", "scripts") for p in (REPO / folder).glob("*.py")}

    assert sorted(modules - relaxed) == []
    assert sorted(relaxed - modules) == []  # no stale names


def test_tier_markers_are_registered() -> None:
    markers = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}

    assert {"unit", "broker", "torch", "slow"} <= markers


def test_this_test_is_in_the_unit_tier(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("broker") is None
