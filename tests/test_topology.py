"""Tests for osml.core.topology (neighbour lists) and osml.core.anchor (context anchors)."""

from __future__ import annotations

import numpy as np
import pytest

from osml.core.anchor import context_anchor
from osml.core.topology import neighbours, parse_topology
from osml.errors import ConfigError

IDS = [f"agent-{i}" for i in range(10)]


def assert_symmetric_simple(graph: dict[str, list[str]]) -> None:
    for a, nbs in graph.items():
        assert a not in nbs, f"{a} lists itself"
        assert len(nbs) == len(set(nbs)), f"{a} lists a neighbour twice"
        for b in nbs:
            assert a in graph[b], f"{a} lists {b} but not the other way round"


# --- parse_topology -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("full", ("full", 0)),
        ("ring", ("ring", 0)),
        ("random:1", ("random", 1)),
        ("random:12", ("random", 12)),
    ],
)
def test_parse_topology(spec: str, expected: tuple[str, int]) -> None:
    assert parse_topology(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "star",
        "random",
        "random:",
        "random:0",
        "random:-1",
        "random:x",
        "random:2.5",
        "full:2",
        "ring:1",
        "Full",
    ],
)
def test_parse_topology_rejects_malformed(spec: str) -> None:
    with pytest.raises(ConfigError, match="topology"):
        parse_topology(spec)


def test_neighbours_rejects_bad_spec() -> None:
    with pytest.raises(ConfigError):
        neighbours(IDS, "mesh")


# --- full / ring ----------------------------------------------------------------------------


def test_full_everyone_but_self() -> None:
    graph = neighbours(IDS, "full")

    assert set(graph) == set(IDS)
    for a in IDS:
        assert sorted(graph[a]) == sorted(set(IDS) - {a})
    assert_symmetric_simple(graph)


def test_ring_follows_file_order_with_wraparound() -> None:
    ids = ["c", "a", "d", "b"]  # deliberately not sorted

    graph = neighbours(ids, "ring")

    # ring c - a - d - b - c; each list in file order
    assert graph == {"c": ["a", "b"], "a": ["c", "d"], "d": ["a", "b"], "b": ["c", "d"]}


def test_ring_degrees_and_symmetry() -> None:
    graph = neighbours(IDS, "ring")

    assert all(len(nbs) == 2 for nbs in graph.values())
    assert graph["agent-0"] == ["agent-1", "agent-9"]
    assert graph["agent-9"] == ["agent-0", "agent-8"]
    assert_symmetric_simple(graph)


def test_ring_of_two_lists_the_other_once() -> None:
    assert neighbours(["x", "y"], "ring") == {"x": ["y"], "y": ["x"]}


def test_ring_of_three_is_a_triangle() -> None:
    assert neighbours(["x", "y", "z"], "ring") == {
        "x": ["y", "z"],
        "y": ["x", "z"],
        "z": ["x", "y"],
    }


@pytest.mark.parametrize("spec", ["full", "ring", "random:3"])
def test_single_agent_has_no_neighbours(spec: str) -> None:
    assert neighbours(["solo"], spec) == {"solo": []}


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(ConfigError, match="unique"):
        neighbours(["a", "b", "a"], "full")


# --- random:K -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("n", "k"), [(10, 3), (10, 2), (8, 1), (6, 4), (12, 4)])
def test_random_is_k_regular_and_symmetric(n: int, k: int, seed: int) -> None:
    ids = [f"n{i}" for i in range(n)]

    graph = neighbours(ids, f"random:{k}", seed=seed)

    assert set(graph) == set(ids)
    assert all(len(nbs) == k for nbs in graph.values())
    assert_symmetric_simple(graph)


def test_random_is_deterministic_per_seed() -> None:
    assert neighbours(IDS, "random:3", seed=5) == neighbours(IDS, "random:3", seed=5)


def test_random_differs_across_seeds() -> None:
    graphs = {
        tuple(sorted((a, tuple(sorted(b))) for a, b in neighbours(IDS, "random:3", seed=s).items()))
        for s in range(6)
    }

    assert len(graphs) > 1


@pytest.mark.parametrize(("n", "k"), [(5, 5), (5, 7), (5, 3), (7, 1)])
def test_random_impossible_k_raises(n: int, k: int) -> None:
    ids = [f"n{i}" for i in range(n)]

    with pytest.raises(ConfigError):
        neighbours(ids, f"random:{k}")


def test_random_dense_valid_k_succeeds() -> None:
    ids = [f"n{i}" for i in range(8)]

    graph = neighbours(ids, "random:7", seed=0)

    assert all(len(nbs) == 7 for nbs in graph.values())


# --- anchor ---------------------------------------------------------------------------------


def test_anchor_deterministic_per_context() -> None:
    a = context_anchor("kitchen", 16, 2.0)
    b = context_anchor("kitchen", 16, 2.0)

    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (16,)


@pytest.mark.parametrize("norm", [0.5, 1.0, 3.0])
def test_anchor_has_requested_norm(norm: float) -> None:
    v = context_anchor("ctx", 8, norm)

    assert float(np.linalg.norm(v.astype(np.float64))) == pytest.approx(norm, rel=1e-6)


def test_anchor_zero_norm_is_zero_vector() -> None:
    assert not np.any(context_anchor("ctx", 4, 0.0))


def test_anchor_differs_between_contexts() -> None:
    a = context_anchor("kitchen", 32, 1.0).astype(np.float64)
    b = context_anchor("garage", 32, 1.0).astype(np.float64)

    assert not np.allclose(a, b)
    assert abs(float(a @ b)) < 0.9  # unrelated directions, not just a sign flip


def test_anchor_same_direction_for_different_norms() -> None:
    a = context_anchor("ctx", 8, 1.0)
    b = context_anchor("ctx", 8, 4.0)

    np.testing.assert_allclose(b, 4.0 * a, rtol=1e-6)


@pytest.mark.parametrize(("dim", "norm"), [(0, 1.0), (-3, 1.0), (4, -0.1)])
def test_anchor_rejects_bad_arguments(dim: int, norm: float) -> None:
    with pytest.raises(ValueError):
        context_anchor("ctx", dim, norm)
