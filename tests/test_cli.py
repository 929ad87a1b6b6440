"""Tests of the osml command line (click's CliRunner, generated data, few rounds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result

from clihelp import run_command
from osml import __version__
from osml.cli.main import main
from osml.cli.options import parse_agents, parse_architectures, parse_trainer_sets
from osml.cli.progress import progress_line
from osml.errors import ConfigError
from osml_testing.labelled import labelled_dataset, write_paper_dir


def invoke(*args: str) -> Result:
    return run_command(main, *args)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def run_dir(needs_torch: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """One real two-round simulation, shared by the tests that only read what it wrote."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke(
        "simulate",
        "--data",
        "generated:simple",
        "--agents",
        "0,1",
        "--rounds",
        "2",
        "--out",
        str(out),
    )
    return out, result


# ------------------------------------------------------------------------------- simulate


def test_simulate_writes_a_run(run_dir: tuple[Path, Result]) -> None:
    out, result = run_dir
    assert result.exit_code == 0, result.output

    report = json.loads((out / "report.json").read_text())

    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert report["agents"] == ["0", "1"]
    for agent, members in report["final"]["subcontexts"].items():
        assert agent in members
    assert set(report["final"]["subcontexts"]) == {"0", "1"}
    assert report["settings"]["rounds"] == 2
    assert report["data"] == "generated:simple"
    assert "downstream" not in report  # no labels, no probes


def test_simulate_writes_embeddings_of_equal_rows(run_dir: tuple[Path, Result]) -> None:
    out, _ = run_dir

    arrays = [np.load(out / "embeddings" / f"{a}.npy", allow_pickle=False) for a in ("0", "1")]

    assert arrays[0].shape[0] == arrays[1].shape[0] > 0
    assert arrays[0].shape[1] == arrays[1].shape[1] == 5


def test_simulate_prints_progress_and_summary(run_dir: tuple[Path, Result]) -> None:
    out, result = run_dir

    lines = result.stdout.splitlines()

    progress = [line for line in lines if line.startswith("round ")]
    assert len(progress) == 3
    assert all(len(line) <= 100 for line in progress)
    assert any(line.split()[:2] == ["agent", "sub-context"] for line in lines)
    assert str(out / "report.json") in result.stdout


def test_report_command_prints_the_table(run_dir: tuple[Path, Result]) -> None:
    out, _ = run_dir

    result = invoke("report", str(out))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split()[:2] == ["agent", "sub-context"]
    assert any(line.split()[0] == "1" for line in result.stdout.splitlines()[2:4])


@pytest.fixture(scope="module")
def labelled_run(
    needs_torch: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Result]:
    """A one-round simulation on a small dataset with label files."""
    root = tmp_path_factory.mktemp("labelled")
    data = write_paper_dir(labelled_dataset(n_train=200, n_test=160), root / "data")
    out = root / "run"
    result = invoke(
        "simulate", "--data", str(data), "--rounds", "1", "--window", "4", "--out", str(out)
    )
    return out, result


def test_simulate_on_labelled_data_reports_the_probes(labelled_run: tuple[Path, Result]) -> None:
    out, result = labelled_run
    assert result.exit_code == 0, result.output

    report = json.loads((out / "report.json").read_text())

    section = report["downstream"]
    assert section["window"] == 4 and section["classes"] == [0, 1, 2]
    assert section["fit_windows"] + section["score_windows"] <= 160 - 4 + 1
    for probe in ("linear", "knn"):
        table = section[probe]
        assert set(table["embedding"]) == {"a", "b", "n"}
        assert all(set(row) == {"a", "b", "n"} for row in table["embedding"].values())
        assert all(0.0 <= v <= 1.0 for row in table["embedding"].values() for v in row.values())
        assert set(table["local"]) == set(table["central"]) == {"a", "b", "n"}
    assert "downstream accuracy" in result.stdout


def test_report_command_prints_the_probes(labelled_run: tuple[Path, Result]) -> None:
    out, _ = labelled_run

    result = invoke("report", str(out))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("downstream accuracy"))
    assert lines[start + 1].split()[:2] == ["probe", "fitted"]
    probes = [line.split()[0] for line in lines[start + 3 : start + 9]]
    assert probes == ["linear"] * 3 + ["kNN-5"] * 3


def test_report_command_on_a_missing_run(tmp_path: Path) -> None:
    result = invoke("report", str(tmp_path / "nothing"))

    assert_one_line_error(result, "report.json")


# ------------------------------------------------------------------------- bad input: exit 2


def test_bad_data_spec(tmp_path: Path) -> None:
    result = invoke("simulate", "--data", "generated:weird", "--out", str(tmp_path))

    assert_one_line_error(result, "generated:weird")


def test_missing_data_directory(tmp_path: Path) -> None:
    result = invoke("simulate", "--data", str(tmp_path / "absent"), "--out", str(tmp_path))

    assert_one_line_error(result, str(tmp_path / "absent"))


def test_unknown_agent(tmp_path: Path) -> None:
    result = invoke(
        "simulate", "--data", "generated:simple", "--agents", "0,7", "--out", str(tmp_path)
    )

    assert_one_line_error(result, "'7'")


@pytest.mark.parametrize("topology", ["star", "random:x", "random:3"])
def test_bad_topology(tmp_path: Path, topology: str) -> None:
    result = invoke(
        "simulate",
        "--data",
        "generated:simple",
        "--agents",
        "0,1",
        "--topology",
        topology,
        "--out",
        str(tmp_path),
    )

    assert_one_line_error(result)


def test_architecture_for_an_agent_not_simulated(tmp_path: Path) -> None:
    result = invoke(
        "simulate",
        "--data",
        "generated:simple",
        "--agents",
        "0,1",
        "--architecture",
        "M0=conv",
        "--out",
        str(tmp_path),
    )

    assert_one_line_error(result, "'M0'")


@pytest.mark.usefixtures("needs_torch")
def test_unknown_architecture_name(tmp_path: Path) -> None:
    result = invoke(
        "simulate",
        "--data",
        "generated:simple",
        "--agents",
        "0,1",
        "--architecture",
        "0=lstm",
        "--out",
        str(tmp_path),
    )

    assert_one_line_error(result, "lstm")
    assert not (tmp_path / "report.json").exists()


def test_context_that_cannot_be_a_topic_level(tmp_path: Path) -> None:
    result = invoke(
        "simulate", "--data", "generated:simple", "--context", "a/b", "--out", str(tmp_path)
    )

    assert_one_line_error(result, "a/b")


def test_without_torch_the_install_hint_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if the trainer extra were missing

    result = invoke("simulate", "--data", "generated:simple", "--out", str(tmp_path))

    assert_one_line_error(result, "pip install 'osml[trainer]'")


# ------------------------------------------------------------------------------- small parts


def test_version() -> None:
    result = invoke("--version")

    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_simulate_help_shows_every_flag_and_an_example() -> None:
    result = invoke("simulate", "--help")

    for flag in (
        "--data",
        "--agents",
        "--rounds",
        "--topology",
        "--seed",
        "--out",
        "--window",
        "--embedding-dim",
        "--architecture",
        "--objective",
        "--context",
        "--quiet",
        "--trainer-set",
        "--anchor-norm",
        "--shared-dims",
    ):
        assert flag in result.stdout
    assert "osml simulate --data generated:simple" in result.stdout


def test_simulate_help_lists_the_adversary_kinds() -> None:
    from osml.ops.adversaries import KINDS

    result = invoke("simulate", "--help")

    assert "--adversary" in result.stdout
    for kind in KINDS:
        assert kind in result.stdout
    assert "MODULE:FUNCTION" in result.stdout


@pytest.mark.usefixtures("needs_torch")
@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("x", "expected ID=KIND"),
        ("x=spin", "use one of"),
        ("0=copy", "also an honest agent"),
        ("x=rotate-copy:angle=ninety", "rotate-copy"),
        ("x/y=copy", "x/y"),
    ],
)
def test_simulate_bad_adversary_is_one_line(tmp_path: Path, spec: str, fragment: str) -> None:
    result = invoke(
        "simulate",
        "--data",
        "generated:simple",
        "--agents",
        "0,1",
        "--adversary",
        spec,
        "--out",
        str(tmp_path),
    )

    assert_one_line_error(result, fragment)


def test_simulate_adversary_first_needs_an_adversary(tmp_path: Path) -> None:
    result = invoke(
        "simulate", "--data", "generated:simple", "--adversary-first", "--out", str(tmp_path)
    )

    assert_one_line_error(result, "--adversary-first")


def _simulate_one_round_with_a_copier(out: Path, *extra: str) -> tuple[Result, dict]:
    """``osml simulate`` of agents 0 and 1 for one round next to ``x=copy``: the result and the
    report."""
    args = ["--data", "generated:simple", "--agents", "0,1", "--rounds", "1"]
    result = invoke("simulate", *args, "--adversary", "x=copy", *extra, "--out", str(out))
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "report.json").read_text())


@pytest.mark.usefixtures("needs_torch")
def test_simulate_marks_an_adversary_delivered_first(tmp_path: Path) -> None:
    _, report = _simulate_one_round_with_a_copier(tmp_path / "run", "--adversary-first")

    assert report["adversaries"] == {"x": "copy, delivered first"}


@pytest.mark.usefixtures("needs_torch")
def test_simulate_with_an_adversary_marks_it_in_the_report(tmp_path: Path) -> None:
    result, report = _simulate_one_round_with_a_copier(tmp_path / "run")

    assert report["adversaries"] == {"x": "copy"}
    assert report["agents"] == ["0", "1"]  # figures cover the honest agents only
    assert set(report["final"]["centered_alignment"]) == {"0", "1"}
    assert report["neighbours"]["x"] == ["0", "1"]
    assert "x" in report["neighbours"]["0"]
    assert "x: adversary (copy)" in result.stdout
    assert "adversaries x=copy" in result.stdout


@pytest.mark.usefixtures("needs_torch")
def test_simulate_with_levers_runs_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "simulate",
        "--data",
        "generated:simple",
        "--agents",
        "0,1",
        "--rounds",
        "1",
        "--embedding-dim",
        "6",
        "--shared-dims",
        "3",
        "--objective",
        "masked-mmd",
        "--trainer-set",
        "mmd_weight=0.5",
        "--trainer-set",
        "steps_per_round=20",
        "--anchor-norm",
        "2.5",
        "--out",
        str(out),
    )

    assert result.exit_code == 0, result.output
    settings = json.loads((out / "report.json").read_text())["settings"]
    assert settings["trainer"]["objective"] == "masked-mmd"
    assert settings["trainer"]["mmd_weight"] == 0.5
    assert settings["trainer"]["steps_per_round"] == 20
    assert settings["trainer"]["shared_dims"] == settings["learner"]["shared_dims"] == 3
    assert settings["anchor_norm"] == 2.5
    arrays = np.load(out / "embeddings" / "0.npy", allow_pickle=False)
    assert arrays.shape[1] == 6  # the report keeps the whole embedding


@pytest.mark.usefixtures("needs_torch")
@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (("--trainer-set", "tempo=1"), "--trainer-set tempo: unknown key"),
        (("--trainer-set", "temperature=0"), "--trainer-set temperature: must be > 0"),
        (("--trainer-set", "mmd_weight=lots"), "--trainer-set mmd_weight: must be a number"),
        (("--trainer-set", "steps_per_round=1.5"), "steps_per_round: must be an integer"),
        (("--trainer-set", "per_dim_variance=maybe"), "per_dim_variance: must be true or false"),
        (("--trainer-set", "shared_dims=2"), "use --shared-dims"),
        (("--trainer-set", "temperature"), "expected KEY=VALUE"),
        (("--shared-dims", "6"), "--shared-dims 6: must be <= --embedding-dim 5"),
    ],
)
def test_simulate_bad_lever_is_one_line(
    tmp_path: Path, flags: tuple[str, ...], fragment: str
) -> None:
    result = invoke(
        "simulate", "--data", "generated:simple", "--agents", "0,1", *flags, "--out", str(tmp_path)
    )

    assert_one_line_error(result, fragment)


def test_simulate_objective_choices_follow_the_trainer() -> None:
    from osml.trainer.settings import OBJECTIVES

    result = invoke("simulate", "--help")
    bad = invoke("simulate", "--data", "generated:simple", "--objective", "simclr")

    for name in OBJECTIVES:
        assert name in result.stdout
    assert bad.exit_code == 2
    assert "masked-mmd" in bad.stderr


def test_parse_trainer_sets() -> None:
    parsed = parse_trainer_sets(
        ["temperature=0.1", "steps_per_round= 40", "per_dim_variance=false", "hidden=0"]
    )

    assert parsed == {
        "temperature": 0.1,
        "steps_per_round": 40,
        "per_dim_variance": False,
        "hidden": 0,
    }
    assert isinstance(parsed["steps_per_round"], int)
    assert parse_trainer_sets([]) == {}
    with pytest.raises(ConfigError, match="temperature: given twice"):
        parse_trainer_sets(["temperature=0.1", "temperature=0.2"])


def test_parse_agents() -> None:
    assert parse_agents(None) is None
    assert parse_agents(" 0, 1 ,M0") == ["0", "1", "M0"]
    with pytest.raises(ConfigError, match="empty"):
        parse_agents("0,,1")
    with pytest.raises(ConfigError, match="twice"):
        parse_agents("0,1,0")


def test_parse_architectures() -> None:
    agents = ["0", "1", "2"]
    assert parse_architectures("gru", agents) == ("gru", {})
    assert parse_architectures("conv", agents) == ("conv", {})
    assert parse_architectures("0=gru,1=conv", agents) == ("mlp", {"0": "gru", "1": "conv"})
    assert parse_architectures("mlp, 2=gru", agents) == ("mlp", {"2": "gru"})
    for bad in ("0=", "=gru", "gru,mlp", "0=gru,0=mlp", "9=gru"):
        with pytest.raises(ConfigError):
            parse_architectures(bad, agents)


def test_progress_line_fits_and_groups_by_subcontext() -> None:
    agents = [f"agent{i:02d}" for i in range(12)]
    groups = [agents[:5], agents[5:9], *([a] for a in agents[9:])]
    sub = {a: g for g in groups for a in g}
    pairs = {a: {b: 0.5 for b in agents if b != a} for a in agents}
    entry = {
        "round": 3,
        "elapsed_s": 12.34,
        "subcontexts": sub,
        "strict_alignment": pairs,
        "centered_alignment": pairs,
        "bytes_sent": {a: 1000 for a in agents},
        "equilibrium": {a: a in agents[:2] for a in agents},
    }

    text = progress_line(entry, rounds=10)

    assert all(len(line) <= 100 for line in text.splitlines())
    assert text.startswith("round  3/10")
    assert "12.0 kB" in text and "eq 2/12" in text
    assert "{" + ",".join(agents[:5]) + "} 0.50/0.50" in text
    assert "{agent11}" in text
