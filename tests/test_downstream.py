"""Tests of osml.ops.downstream (the report's probes) and its table in ``osml report``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from osml.agent.data import AgentData, Dataset, read_paper_dir, windows
from osml.cli.report import downstream_table
from osml.core.probes import accuracy, block_split, fit_probe
from osml.errors import DataError
from osml.ops.downstream import Downstream, ProbeTable, downstream
from osml_testing.labelled import labelled_dataset, write_paper_dir

W = 4


def raw_windows(ds: Dataset, agent: str) -> np.ndarray:
    x = np.asarray(windows(ds[agent].test, W))
    return x.reshape(len(x), -1)


def hand_embeddings(ds: Dataset) -> dict[str, np.ndarray]:
    """Stand-ins for a run's embeddings: each agent's raw windows, a and b sharing one space."""
    a = raw_windows(ds, "a")
    return {"a": a, "b": a.copy(), "n": raw_windows(ds, "n")}


def acc(table: ProbeTable, fitted: str, scored: str) -> float:
    value = table.embedding[fitted][scored]
    assert value is not None
    return value


def test_no_labels_no_section() -> None:
    ds = labelled_dataset()
    unlabelled = Dataset(ds.name, ds.agents)

    assert downstream(unlabelled, hand_embeddings(ds), {}, W) is None


def test_the_section_is_the_probes_on_the_block_split() -> None:
    ds = labelled_dataset()
    emb = hand_embeddings(ds)
    subcontexts = {"a": ["a", "b"], "b": ["a", "b"], "n": ["n"]}

    section = downstream(ds, emb, subcontexts, W, blocks=6)

    assert section is not None
    assert ds.test_labels is not None
    labels = ds.test_labels[W - 1 :]
    fit, score = block_split(len(labels), W, 6)
    assert (section.fit_windows, section.score_windows) == (len(fit), len(score))
    assert section.classes == [0, 1, 2]
    for kind in ("linear", "knn"):
        table = getattr(section, kind)

        def by_hand(x: np.ndarray, kind: str = kind) -> float:
            probe = fit_probe(kind, x[fit], labels[fit])
            return accuracy(probe.predict(x[score]), labels[score])

        for agent in ("a", "b", "n"):
            assert table.local[agent] == by_hand(raw_windows(ds, agent))
        both = np.concatenate([raw_windows(ds, "a"), raw_windows(ds, "b")], axis=1)
        assert table.central["a"] == table.central["b"] == by_hand(both)
        assert table.central["n"] == table.local["n"]
        # a and b embed into the same space: a probe fitted on one reads the other as well
        assert acc(table, "a", "b") == acc(table, "a", "a") == table.local["a"]
        assert acc(table, "a", "a") > section.majority + 0.3
        assert acc(table, "n", "n") < section.majority + 0.25
        assert table.embedding["a"]["n"] is None  # 8 values per row against 4: no transfer


def test_each_embedding_row_takes_the_label_of_its_windows_last_step() -> None:
    rng = np.random.default_rng(3)
    sign = rng.choice([-1.0, 1.0], size=(400, 1))
    x = sign * (1.0 + rng.random((400, 1)))  # |x| >= 1: the sign is never in doubt
    y = (x[:, 0] > 0).astype(int)  # independent steps: only the step itself tells its label
    ds = Dataset("t", (AgentData("a", x, x),), train_labels=y, test_labels=y)
    last_step = {"a": np.asarray(windows(x, W))[:, -1, :]}

    section = downstream(ds, last_step, {}, W)

    assert section is not None
    assert section.linear.embedding["a"]["a"] == 1.0
    assert section.knn.embedding["a"]["a"] == 1.0
    first_step = {"a": np.asarray(windows(x, W))[:, 0, :]}  # what an off-by-window would use
    shifted = downstream(ds, first_step, {}, W)
    assert shifted is not None and acc(shifted.linear, "a", "a") < 0.7


def test_a_transfer_between_unaligned_spaces_is_poor() -> None:
    ds = labelled_dataset(seed=1)
    emb = hand_embeddings(ds)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((emb["a"].shape[1],) * 2))
    emb["b"] = emb["a"] @ q  # the same information, in a rotated space

    section = downstream(ds, emb, {}, W)

    assert section is not None
    for table in (section.linear, section.knn):
        assert acc(table, "b", "b") > section.majority + 0.3  # b alone reads its own
        assert acc(table, "a", "b") < acc(table, "b", "b") - 0.2


def test_members_without_embeddings_are_left_out_of_the_central_anchor() -> None:
    ds = labelled_dataset()
    emb = hand_embeddings(ds)
    del emb["n"]

    section = downstream(ds, emb, {"a": ["a", "x"], "b": ["a", "b"]}, W)

    assert section is not None
    assert section.central_members == {"a": ["a"], "b": ["a", "b"]}
    assert set(section.knn.embedding) == {"a", "b"}


def test_embeddings_of_the_wrong_length_are_refused() -> None:
    ds = labelled_dataset()
    emb = hand_embeddings(ds)
    emb["b"] = emb["b"][1:]

    with pytest.raises(DataError, match="agent 'b'"):
        downstream(ds, emb, {}, W)


def test_the_section_round_trips_through_strict_json() -> None:
    ds = labelled_dataset()
    section = downstream(ds, hand_embeddings(ds), {"a": ["a", "b"]}, W)
    assert section is not None

    text = json.dumps(section.to_json(), allow_nan=False)

    assert Downstream.from_json(json.loads(text)) == section


def test_the_table_shows_every_probe_agent_and_transfer() -> None:
    ds = labelled_dataset()
    section = downstream(ds, hand_embeddings(ds), {"a": ["a", "b"], "b": ["a", "b"]}, W)
    assert section is not None

    text = downstream_table(section.to_json())

    lines = text.splitlines()
    assert "3 classes" in lines[0]
    header = lines[1].split()
    assert header[:5] == ["probe", "fitted", "on", "sub-context", "raw"]
    assert header[-3:] == ["emb->a", "emb->b", "emb->n"]
    body = [line.split() for line in lines[3:9]]
    assert lines[9].startswith("The test windows in 10 blocks")
    assert all(len(line) <= 100 for line in lines)
    assert [(r[0], r[1]) for r in body] == [
        (p, a) for p in ("linear", "kNN-5") for a in ("a", "b", "n")
    ]
    linear_a = body[0]
    assert linear_a[2] == "a,b"
    assert float(linear_a[3]) == pytest.approx(section.linear.local["a"], abs=5e-4)
    assert float(linear_a[-2]) == pytest.approx(section.linear.embedding["a"]["b"], abs=5e-4)


def test_the_writer_round_trips_labels(tmp_path: Path) -> None:
    ds = labelled_dataset(n_train=50, n_test=30)

    back = read_paper_dir(write_paper_dir(ds, tmp_path / "d"))

    assert back.ids == ds.ids
    assert back.test_labels is not None and ds.test_labels is not None
    assert back.test_labels.tolist() == ds.test_labels.tolist()
    np.testing.assert_allclose(back["a"].test, ds["a"].test, rtol=1e-5, atol=1e-5)
