"""``osml embed``: a recording into embeddings with a shipped model, torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clihelp import run_command
from osml.agent.data import load_dataset, windows
from osml.agent.inference import OnnxEncoder
from osml.cli.main import main

MODEL = Path(__file__).resolve().parents[1] / "models" / "mlp-w10-f1-d5"


def recording(path: Path, rows: np.ndarray, header: str = "temperature") -> Path:
    lines = [header] + [",".join(repr(float(v)) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def series() -> np.ndarray:
    return np.asarray(load_dataset("generated:simple")["0"].train, dtype=np.float32)[:200]


def test_embed_writes_the_models_embeddings_of_every_window(
    tmp_path: Path, series: np.ndarray
) -> None:
    data = recording(tmp_path / "day.csv", series)

    npy = run_command(
        main, "embed", "--model", str(MODEL), "--data", str(data), "--out", str(tmp_path / "e.npy")
    )
    csv = run_command(
        main,
        "embed",
        "--model",
        str(MODEL / "model.onnx"),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "e.csv"),
    )

    assert npy.exit_code == 0 and csv.exit_code == 0, npy.output + csv.output
    want = OnnxEncoder.load(MODEL / "model.onnx").encode(windows(series, 10))
    got = np.load(tmp_path / "e.npy", allow_pickle=False)
    assert got.shape == (191, 5) and np.array_equal(got, want)
    lines = (tmp_path / "e.csv").read_text().splitlines()
    assert lines[0] == "step,e0,e1,e2,e3,e4" and len(lines) == 192
    first = [float(v) for v in lines[1].split(",")]
    assert first[0] == 9 and np.allclose(first[1:], want[0])
    assert "191 embeddings of dim 5" in npy.output


def test_embed_refuses_a_recording_of_the_wrong_width_with_one_line(tmp_path: Path) -> None:
    data = recording(tmp_path / "two.csv", np.ones((50, 2)), header="a,b")

    result = run_command(
        main, "embed", "--model", str(MODEL), "--data", str(data), "--out", str(tmp_path / "e.npy")
    )

    assert result.exit_code == 2
    assert "2 features, the model takes 1" in result.stderr
    assert not (tmp_path / "e.npy").exists()


def test_embed_refuses_an_unknown_output_format(tmp_path: Path, series: np.ndarray) -> None:
    data = recording(tmp_path / "day.csv", series)

    result = run_command(
        main, "embed", "--model", str(MODEL), "--data", str(data), "--out", str(tmp_path / "e.txt")
    )

    assert result.exit_code == 2 and ".npy or .csv" in result.stderr
