"""Tests of osml.ops.report: run directories written and read back, the summary table. No torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from osml.errors import DataError
from osml.ops import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_result(rows: int = 12, dim: int = 5) -> dict[str, object]:
    """A small dict shaped like the one osml.ops.simulate.simulate returns, numpy values in it."""
    rng = np.random.default_rng(0)
    agents = ["0", "1", "M0"]
    subcontexts = {"0": ["0", "1"], "1": ["0", "1"], "M0": ["M0"]}

    def pairs(value: float) -> dict[str, dict[str, float]]:
        return {a: {b: np.float64(value) for b in agents if b != a} for a in agents}

    rounds = [
        {
            "round": r,
            "strict_alignment": pairs(0.5 + 0.2 * r),
            "centered_alignment": pairs(0.1 + 0.3 * r),
            "probe_r2": {a: np.float32(0.9) for a in agents},
            "spread": {a: 0.2 for a in agents},
            "subcontexts": subcontexts,
            "equilibrium": {a: np.bool_(False) for a in agents},
            "embedding_change": {a: None for a in agents},
            "bytes_sent": {a: np.int64(1000) for a in agents},
            "elapsed_s": 0.1 * r,
        }
        for r in range(3)
    ]
    final = {
        "round": 2,
        "subcontexts": subcontexts,
        "strict_alignment": pairs(0.9),
        "centered_alignment": pairs(0.7),
        "probe_r2": {"0": 0.95, "1": 0.93, "M0": float("nan")},
        "spread": {a: 0.2 for a in agents},
        "osmosis_weights": {"0": {"0": 0.5, "1": 0.5}},
    }
    return {
        "dataset": "fake",
        "agents": agents,
        "topology": "full",
        "neighbours": {a: tuple(b for b in agents if b != a) for a in agents},
        "weights_vector": np.arange(3, dtype=np.float32),
        "rounds": rounds,
        "final": final,
        "embeddings": {a: rng.standard_normal((rows, dim)).astype(np.float32) for a in agents},
    }


def test_write_then_load_roundtrip(tmp_path: Path) -> None:
    # Prepare
    result = fake_result()

    # Execute
    out = report.write_run(tmp_path / "run", result)
    loaded = report.load_run(out)

    # Assert
    assert out == tmp_path / "run"
    assert set(loaded["embeddings"]) == {"0", "1", "M0"}
    for agent, emb in result["embeddings"].items():  # type: ignore[attr-defined]
        np.testing.assert_array_equal(loaded["embeddings"][agent], emb)
        assert loaded["embeddings"][agent].dtype == np.float32
    assert loaded["agents"] == ["0", "1", "M0"]
    assert loaded["neighbours"]["0"] == ["1", "M0"]
    assert loaded["weights_vector"] == [0.0, 1.0, 2.0]
    assert loaded["rounds"][1]["bytes_sent"]["0"] == 1000
    assert loaded["rounds"][0]["equilibrium"]["0"] is False
    assert loaded["final"]["probe_r2"]["M0"] is None  # NaN is not JSON


def test_report_json_is_strict_json_without_embeddings(tmp_path: Path) -> None:
    report.write_run(tmp_path, fake_result())

    text = (tmp_path / report.REPORT_FILE).read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))

    assert "embeddings" not in data
    assert data["final"]["subcontexts"]["M0"] == ["M0"]
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_embeddings_are_plain_npy(tmp_path: Path) -> None:
    report.write_run(tmp_path, fake_result(rows=7, dim=3))

    emb = np.load(tmp_path / "embeddings" / "M0.npy", allow_pickle=False)

    assert emb.shape == (7, 3)


def test_load_run_rejects_mismatched_rows(tmp_path: Path) -> None:
    # Prepare
    report.write_run(tmp_path, fake_result(rows=12))
    bad = tmp_path / "embeddings" / "1.npy"
    np.save(bad, np.zeros((11, 5), dtype=np.float32), allow_pickle=False)

    # Execute / Assert
    with pytest.raises(DataError, match=r"1\.npy.*11 rows.*'0' has 12"):
        report.load_run(tmp_path)


def test_load_run_rejects_non_2d_embeddings(tmp_path: Path) -> None:
    report.write_run(tmp_path, fake_result())
    np.save(tmp_path / "embeddings" / "0.npy", np.zeros(12, dtype=np.float32), allow_pickle=False)

    with pytest.raises(DataError, match=r"0\.npy.*2-D"):
        report.load_run(tmp_path)


def test_load_run_rejects_missing_embeddings(tmp_path: Path) -> None:
    report.write_run(tmp_path, fake_result())
    (tmp_path / "embeddings" / "M0.npy").unlink()

    with pytest.raises(DataError, match=r"M0\.npy.*missing"):
        report.load_run(tmp_path)


def test_load_run_refuses_pickled_arrays(tmp_path: Path) -> None:
    report.write_run(tmp_path, fake_result())
    np.save(
        tmp_path / "embeddings" / "0.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True
    )

    with pytest.raises(DataError, match=r"0\.npy"):
        report.load_run(tmp_path)


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]"])
def test_load_run_rejects_bad_report(tmp_path: Path, content: str) -> None:
    (tmp_path / report.REPORT_FILE).write_text(content)

    with pytest.raises(DataError, match="report.json"):
        report.load_run(tmp_path)


def test_load_run_on_a_missing_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        report.load_run(tmp_path / "absent")


@pytest.mark.parametrize("agent", ["../x", "a/b", ".hidden", ""])
def test_agent_ids_that_are_not_file_names_are_refused(tmp_path: Path, agent: str) -> None:
    result = fake_result()
    result["embeddings"] = {agent: np.zeros((2, 2), dtype=np.float32)}

    with pytest.raises(DataError, match="file name"):
        report.write_run(tmp_path / "run", result)
    assert not (tmp_path / "x.npy").exists()


def test_to_jsonable_rejects_unknown_types() -> None:
    with pytest.raises(TypeError, match=r"report\.final\.x"):
        report.to_jsonable({"final": {"x": object()}})


def test_summary_table_lists_every_agent_with_best_member_alignment() -> None:
    table = report.summary_table(report.to_jsonable(fake_result()))

    lines = table.splitlines()
    assert lines[0].split() == [
        "agent",
        "sub-context",
        "probe",
        "R^2",
        "spread",
        "best",
        "strict",
        "best",
        "centered",
    ]
    row0 = lines[2].split()
    assert row0 == ["0", "0,1", "0.950", "0.200", "0.900", "0.700"]
    rowm = lines[4].split()
    assert rowm == ["M0", "M0", "-", "0.200", "-", "-"]  # alone, NaN probe
    assert "after round 2" in lines[-1]


def test_shared_pairs_come_from_any_agents_view() -> None:
    pairs = report.shared_pairs({"0": ["0", "1"], "1": ["1", "0"], "2": ["2", "3"], "3": ["3"]})

    assert pairs == [("0", "1"), ("2", "3")]


def test_plots_are_written_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")

    report.write_run(tmp_path, fake_result())

    for name in (report.SIMILARITY_PLOT, report.ALIGNMENT_PLOT):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE, name


def test_write_plots_keeps_existing_files_unless_asked(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / report.SIMILARITY_PLOT).write_bytes(b"old")

    written = report.write_plots(tmp_path, report.to_jsonable(fake_result()), overwrite=False)

    assert written == [tmp_path / report.ALIGNMENT_PLOT]
    assert (tmp_path / report.SIMILARITY_PLOT).read_bytes() == b"old"


def test_without_matplotlib_plots_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: make every matplotlib import fail, as on a machine without the plot extra
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)

    # Execute
    report.write_run(tmp_path, fake_result())

    # Assert
    assert not report.plots_available()
    assert (tmp_path / report.REPORT_FILE).is_file()
    assert not list(tmp_path.glob("*.png"))
