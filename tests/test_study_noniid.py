"""scripts/study_noniid.py and its generator scripts/noniid_data.py: the data, the metrics, a
quick run end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import noniid_data
import study_noniid
from osml.agent.data import read_paper_dir
from osml.trainer.settings import DEFAULT_OBJECTIVE


def _corr(a, b):
    return abs(float(np.corrcoef(a, b)[0, 1]))


def _mean_corr(fleet, same_group):
    values = [
        _corr(fleet.train[a][:, 0], fleet.train[b][:, 0])
        for a in fleet.ids
        for b in fleet.ids
        if a < b and (fleet.group_of[a] == fleet.group_of[b]) == same_group
    ]
    return float(np.mean(values))


# ----------------------------------------------------------------------------- the generator


def test_the_fleet_is_deterministic_per_seed():
    one = noniid_data.generate_fleet("dirichlet:0.3", groups=2, seed=3, n_train=100, n_test=50)
    two = noniid_data.generate_fleet("dirichlet:0.3", groups=2, seed=3, n_train=100, n_test=50)
    other = noniid_data.generate_fleet("dirichlet:0.3", groups=2, seed=4, n_train=100, n_test=50)

    for a in one.ids:
        np.testing.assert_array_equal(one.train[a], two.train[a])
        np.testing.assert_array_equal(one.test[a], two.test[a])
    np.testing.assert_array_equal(one.regimes, two.regimes)
    assert not np.array_equal(one.train["g0m0"], other.train["g0m0"])


def test_groups_are_correlated_inside_and_unrelated_across():
    fleet = noniid_data.generate_fleet("iid", groups=3, noise=1, seed=0)

    assert fleet.groups == [[f"g{g}m{m}" for m in range(4)] for g in range(3)]
    assert fleet.group_of["n0"] == -1
    assert _mean_corr(fleet, same_group=True) > 0.8
    assert _mean_corr(fleet, same_group=False) < 0.15


def test_dirichlet_heterogeneity_lowers_within_group_correlation_as_alpha_falls():
    def within(spec):
        return np.mean(
            [_mean_corr(noniid_data.generate_fleet(spec, groups=3, seed=s), True) for s in (0, 1)]
        )

    iid, mild, strong = within("iid"), within("dirichlet:10"), within("dirichlet:0.3")

    assert iid > mild > strong
    assert within("regimes") < strong


def test_the_regime_is_shared_by_a_group_and_moves_slowly():
    fleet = noniid_data.generate_fleet("iid", groups=2, regimes=3, seed=1)

    assert fleet.regimes.shape == (2, fleet.n_train + len(fleet.test["g0m0"]))
    assert set(np.unique(fleet.regimes)) <= {0, 1, 2}
    switches = np.mean(np.diff(fleet.regimes, axis=1) != 0)
    assert 0.005 < switches < 0.1  # stay = 0.96: a switch every ~25 steps (2/3 of jumps land)


def test_written_fleet_reads_back_with_labels_of_matching_length(tmp_path):
    fleet = noniid_data.generate_fleet("regimes", groups=2, noise=1, seed=0, n_train=60, n_test=30)

    noniid_data.write_fleet(fleet, tmp_path)
    ds = read_paper_dir(tmp_path)
    meta = json.loads((tmp_path / "groups.json").read_text())

    assert sorted(ds.ids) == sorted(fleet.ids)
    assert ds.train_labels is not None and ds.test_labels is not None
    assert len(ds.train_labels) == ds.n_train == 60
    assert len(ds.test_labels) == ds.n_test == 30
    np.testing.assert_array_equal(ds.test_labels, fleet.regimes[0, 60:])
    np.testing.assert_allclose(ds["g1m2"].test, fleet.test["g1m2"], rtol=1e-5, atol=1e-5)
    assert meta["groups"] == fleet.groups and meta["noise"] == ["n0"]
    regimes = (tmp_path / "regimes.csv").read_text().splitlines()
    assert regimes[0] == "group0,group1" and len(regimes) == 91


@pytest.mark.parametrize("spec", ["dirichlet", "dirichlet:0", "dirichlet:x", "iid:1", "other"])
def test_bad_heterogeneity_is_refused_with_the_forms_it_takes(spec):
    with pytest.raises(ValueError, match="dirichlet:ALPHA"):
        noniid_data.parse_heterogeneity(spec)


# ----------------------------------------------------------------------------- the metrics

GROUPS = {"a": 0, "b": 0, "c": 1, "d": 1, "n": -1}


def test_subcontext_scores_on_a_perfect_and_a_wrong_split():
    full = {x: [y for y in GROUPS if y != x] for x in GROUPS}
    perfect = {"a": ["a", "b"], "b": ["a", "b"], "c": ["c", "d"], "d": ["c", "d"], "n": ["n"]}
    merged = {**perfect, "a": ["a", "b", "c"], "n": ["d", "n"]}

    good = study_noniid.subcontext_scores(perfect, full, GROUPS)
    bad = study_noniid.subcontext_scores(merged, full, GROUPS)

    assert good == {"link_acc": 1.0, "exact": 1.0, "pair_acc": 1.0, "precision": 1.0, "recall": 1.0}
    assert bad["exact"] == pytest.approx(3 / 5)
    assert bad["link_acc"] == pytest.approx(18 / 20)  # a->c and n->d are wrong
    assert bad["pair_acc"] == pytest.approx(18 / 20)
    assert bad["precision"] == pytest.approx(4 / 6)  # members b, c; b; d; c; d
    assert bad["recall"] == 1.0


def test_agents_left_alone_lose_recall_not_precision():
    full = {x: [y for y in GROUPS if y != x] for x in GROUPS}
    alone = {x: [x] for x in GROUPS}

    got = study_noniid.subcontext_scores(alone, full, GROUPS)

    assert got["recall"] == 0.0 and math.isnan(got["precision"])
    assert got["link_acc"] == pytest.approx(16 / 20) and got["exact"] == pytest.approx(1 / 5)


def test_rescore_rebuilds_groups_and_topology_from_the_row():
    subs = {"g0m0": ["g0m0", "g0m1"], "g0m1": ["g0m1"], "g1m0": ["g1m0"], "n0": ["n0"]}
    row = {"subcontexts": subs, "topology": "full", "seed": 0, "link_acc": None}

    got = study_noniid.rescore(row)

    assert study_noniid.group_of_ids(subs) == {"g0m0": 0, "g0m1": 0, "g1m0": 1, "n0": -1}
    assert got["precision"] == 1.0 and got["recall"] == 0.5
    assert got["link_acc"] == pytest.approx(11 / 12)


def test_subcontext_scores_judge_each_agent_on_its_reach():
    ring = {"a": ["b", "d"], "b": ["a", "c"], "c": ["b", "d"], "d": ["c", "a"]}
    groups = {"a": 0, "b": 0, "c": 0, "d": 0}
    subs = {"a": ["a", "b", "d"], "b": ["a", "b", "c"], "c": ["b", "c", "d"], "d": ["a", "c", "d"]}

    got = study_noniid.subcontext_scores(subs, ring, groups)

    assert got["link_acc"] == 1.0 and got["exact"] == 1.0
    assert got["pair_acc"] == pytest.approx(8 / 12)  # a and c never meet


def test_alignment_scores_split_within_and_across_groups():
    centred: dict[str, dict[str, float | None]] = {
        "a": {"b": 0.9, "c": 0.1, "d": None},
        "b": {"a": 0.7, "c": 0.3},
        "c": {"d": float("nan")},
    }

    got = study_noniid.alignment_scores(centred, GROUPS)

    assert got["align_within"] == pytest.approx(0.8)
    assert got["align_across"] == pytest.approx(0.2)


def _row(subs, eq):
    return {"subcontexts": subs, "equilibrium": eq}


def test_stability_rounds_from_the_report_rows():
    x, y = {"a": ["a", "b"], "b": ["a", "b"]}, {"a": ["a"], "b": ["b"]}
    rows = [
        _row(x, {"a": False, "b": False}),
        _row(y, {"a": True, "b": False}),
        _row(x, {"a": True, "b": True}),
        _row(x, {"a": True, "b": True}),
        {"subcontexts": x},  # the last row has no exchange
    ]

    got = study_noniid.stability_rounds(rows)

    assert got == {"stable_round": 3.0, "equilibrium_round": 3.0, "equilibrium_share": 1.0}
    never = study_noniid.stability_rounds([_row(x, {"a": False, "b": True})])
    assert never["stable_round"] == 1.0 and math.isnan(never["equilibrium_round"])
    assert never["equilibrium_share"] == 0.5


def test_probe_scores_average_self_transfer_and_anchors_over_groups():
    def section(self_, transfer, central):
        table = {
            "embedding": {"a": {"a": self_, "b": transfer}, "b": {"a": transfer, "b": self_}},
            "local": {"a": 0.5, "b": 0.5},
            "central": {"a": central, "b": central},
        }
        return {"majority": 0.4, "knn": table, "linear": table}

    got = study_noniid.probe_scores([section(0.9, 0.7, 0.8), section(0.7, None, 0.6)])

    assert got["knn_self"] == pytest.approx(0.8)
    assert got["knn_transfer"] == pytest.approx(0.7)  # None (another width) is left out
    assert got["knn_central"] == pytest.approx(0.7)
    assert got["majority"] == pytest.approx(0.4)


def test_aggregate_gives_mean_and_std_over_seeds_and_a_table():
    base = {"part": "a", "objective": "vc", "heterogeneity": "iid", "topology": "full"}
    rows = [
        {**base, "fleet": 8, "rounds": 2, "seed": s, "link_acc": v, "stable_round": None}
        for s, v in ((0, 0.5), (1, 1.0))
    ]

    (agg,) = study_noniid.aggregate(rows)
    table = study_noniid.markdown_table([agg])

    assert agg["seeds"] == 2
    assert agg["link_acc"] == pytest.approx(0.75)
    assert agg["link_acc_std"] == pytest.approx(0.3536, abs=1e-4)
    assert math.isnan(agg["stable_round"])
    assert "| vc | iid | full | 8 | 2 | 2 | 0.75 ± 0.35 |" in table


def test_the_standard_grid_covers_the_three_parts_once_per_run():
    cells = study_noniid.dedupe(study_noniid.standard_grid([0, 1, 2], 6))

    assert len({c.key for c in cells}) == len(cells)
    assert {c.part for c in cells} == {"a", "b", "c"}
    assert {c.fleet for c in cells} == {8, 16, 32, 64}
    assert all(c.topology == "full" for c in cells if c.part == "a")
    assert all(c.topology == "random:4" for c in cells if c.part == "c")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.torch
@pytest.mark.slow
def test_a_quick_study_writes_results_resumes_and_tabulates(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "study"

    assert study_noniid.main(["--grid", "quick", "--out", str(out), "--no-data"]) == 0
    first = capsys.readouterr().out
    assert study_noniid.main(["--grid", "quick", "--out", str(out), "--no-data"]) == 0
    second = capsys.readouterr().out

    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert "1 to go" in first and "1 done, 0 to go" in second
    assert row["fleet"] == 8 and row["rounds"] == 2 and row["parts"] == ["quick"]
    for key in ("link_acc", "exact", "align_within", "align_across", "knn_self", "knn_central"):
        assert 0.0 <= row[key] <= 1.0 or key.startswith("align")
    assert row["stable_round"] in (1.0, 2.0)
    table = (out / "study.md").read_text()
    assert "Fixed: heterogeneity dirichlet:0.3, topology full, fleet 8, rounds 2." in table
    assert f"| {DEFAULT_OBJECTIVE} | 1 |" in table
