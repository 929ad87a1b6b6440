"""Tests of osml.agent.synthetic: determinism, shapes, held-out test rows, correlation structure."""

from __future__ import annotations

import numpy as np
import pytest

from osml.agent.data import Dataset
from osml.agent.synthetic import generate
from osml.errors import ConfigError


def columns(ds: Dataset, split: str = "train") -> np.ndarray:
    """All features of all agents side by side, in agent order, as float64."""
    return np.concatenate([getattr(agent, split) for agent in ds], axis=1).astype(np.float64)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def lag1(a: np.ndarray) -> float:
    return corr(a[:-1], a[1:])


@pytest.mark.parametrize("kind", ["simple", "complex"])
def test_deterministic_per_seed(kind: str) -> None:
    first, second = generate(kind, seed=7), generate(kind, seed=7)  # type: ignore[arg-type]
    np.testing.assert_array_equal(columns(first), columns(second))
    np.testing.assert_array_equal(columns(first, "test"), columns(second, "test"))


@pytest.mark.parametrize("kind", ["simple", "complex"])
def test_different_seeds_differ(kind: str) -> None:
    a, b = generate(kind, seed=1), generate(kind, seed=2)  # type: ignore[arg-type]
    for agent_a, agent_b in zip(a, b, strict=True):
        assert not np.array_equal(agent_a.train, agent_b.train), agent_a.agent_id


def test_shapes_names_and_ids() -> None:
    simple = generate("simple")
    assert simple.name == "generated:simple"
    assert simple.ids == ("0", "1", "M0", "M1")
    assert (simple.n_train, simple.n_test) == (900, 200)
    assert all(agent.n_features == 1 for agent in simple)

    complex_ = generate("complex", n_train=300, n_test=50)
    assert complex_.name == "generated:complex"
    assert complex_.ids == ("0", "1", "2", "3", "4")
    assert (complex_.n_train, complex_.n_test) == (300, 50)
    assert [agent.n_features for agent in complex_] == [1, 1, 1, 1, 2]
    for agent in complex_:
        assert agent.train.dtype == np.float32 and agent.test.dtype == np.float32


@pytest.mark.parametrize("kind", ["simple", "complex"])
def test_test_rows_are_held_out_continuation(kind: str) -> None:
    ds = generate(kind, seed=0, n_train=400, n_test=100)  # type: ignore[arg-type]
    train, test = columns(ds), columns(ds, "test")
    # not the paper's shortcut of repeating the first training rows
    assert not np.allclose(test, train[: len(test)])
    # no test row appears among the training rows
    for row in test:
        assert not np.any(np.all(train == row, axis=1))
    # the smooth signal continues across the split: the step from the last train row to the first
    # test row is as small as ordinary steps of the AR(1) process
    steps = np.abs(np.diff(train[:, 0]))
    assert abs(test[0, 0] - train[-1, 0]) < 5 * steps.std() + steps.mean()
    # a longer run with the same seed shares the prefix: the split is just a cut of one run
    longer = generate(kind, seed=0, n_train=450, n_test=100)  # type: ignore[arg-type]
    np.testing.assert_allclose(columns(longer)[:400, 0], train[:, 0])
    np.testing.assert_allclose(columns(longer)[400:450, 0], test[:50, 0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_simple_structure(seed: int) -> None:
    x0, x1, m0, m1 = columns(generate("simple", seed=seed)).T
    assert corr(x0, x1) > 0.9
    assert 0.9 < lag1(x0) < 0.99
    assert 0.5 < x0.std() < 1.1
    # agent 1 is agent 0 plus one, apart from the wobble of amplitude 0.5
    assert np.all(np.abs(x1 - x0 - 1.0) <= 0.5 + 1e-5)
    assert np.mean(np.abs(x1 - x0 - 1.0) < 1e-5) > 0.4
    for noise in (m0, m1):
        assert abs(corr(x0, noise)) < 0.15
        assert abs(corr(x1, noise)) < 0.15
        assert abs(lag1(noise)) < 0.15
        assert abs(noise.mean()) < 0.2 and 0.85 < noise.std() < 1.15
    assert abs(corr(m0, m1)) < 0.15


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_complex_structure(seed: int) -> None:
    x0, x1, x2, x3, f0, f1 = columns(generate("complex", seed=seed)).T
    assert corr(x0, x1) > 0.9
    assert np.all(np.abs(x1 - x0 + 3.0) <= 0.5 + 1e-5)
    assert corr(x2, x3) < -0.6
    assert lag1(x2) > 0.6 and lag1(x3) > 0.6
    assert 8.0 < x2.mean() < 12.0 and -15.0 < x3.mean() < -11.0
    # agent 4: a two-valued feature {2, 10} and a continuous one, both tied to the 2/3 latent
    assert set(np.unique(f0)) == {2.0, 10.0}
    assert corr(x3, f0) < -0.6
    assert corr(x3, f1) < -0.6
    assert corr(x2, f0) > 0.4 and corr(x2, f1) > 0.4
    np.testing.assert_array_equal(f0 == 10.0, x3 < -12.0)
    # the {0, 1} group is only weakly related to {2, 3, 4}
    for other in (x2, x3, f0, f1):
        assert abs(corr(x0, other)) < 0.6


def test_agents_zero_and_one_shared_between_kinds() -> None:
    simple, complex_ = generate("simple", seed=5), generate("complex", seed=5)
    np.testing.assert_array_equal(simple["0"].train, complex_["0"].train)
    np.testing.assert_allclose(simple["1"].train - 4.0, complex_["1"].train, atol=1e-5)


def test_group_similarity_over_many_seeds() -> None:
    # averaged over seeds, the cross-group correlation is small while within-group ones are large
    cross, within = [], []
    for seed in range(20):
        x0, _x1, x2, x3, _f0, _f1 = columns(generate("complex", seed=seed)).T
        cross.append(corr(x0, x2))
        within.append(corr(x2, x3))
    assert abs(np.mean(cross)) < 0.3
    assert np.mean(within) < -0.7


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"kind": "medium"}, "unknown synthetic dataset kind"),
        ({"kind": "simple", "n_train": 0}, "n_train"),
        ({"kind": "simple", "n_test": -1}, "n_test"),
        ({"kind": "complex", "n_test": 2.5}, "n_test"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    kind = kwargs.pop("kind")
    with pytest.raises(ConfigError, match=fragment):
        generate(kind, **kwargs)  # type: ignore[arg-type]


def test_agent_one_is_an_exact_offset_copy_unless_the_wobble_is_asked_for() -> None:
    plain = generate("simple", seed=3)
    wobbly = generate("simple", seed=3, wobble=True)
    diff = plain["1"].train[:, 0] - plain["0"].train[:, 0]
    np.testing.assert_allclose(diff, 1.0, atol=1e-5)
    wdiff = wobbly["1"].train[:, 0] - wobbly["0"].train[:, 0]
    assert np.max(np.abs(wdiff - 1.0)) > 0.3  # the sine of amplitude 0.5 is there
    # Every other series is identical with or without the wobble.
    np.testing.assert_array_equal(plain["0"].train, wobbly["0"].train)
    np.testing.assert_array_equal(plain["M0"].test, wobbly["M0"].test)
