"""scripts/convert_datasets.py on tiny wheels made here in the real wheels' layout (no download)."""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import convert_datasets  # noqa: E402
from osml.agent.data import read_paper_dir  # noqa: E402

CLASSES = ("Standing", "Running", "Walking", "Badminton")


def metadata(name: str, version: str, license_lines: str) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{license_lines}\n\nReadme.\n"


def ts_text(cases: np.ndarray, labels: list[int]) -> str:
    head = [
        "#A made-up problem with the BasicMotions layout.",
        "@problemName BasicMotions",
        "@univariate false",
        f"@dimensions {cases.shape[1]}",
        "@equalLength true",
        f"@seriesLength {cases.shape[2]}",
        "@classLabel true " + " ".join(CLASSES),
        "@data",
    ]
    body = [
        ":".join(",".join(f"{v:g}" for v in dim) for dim in case) + ":" + CLASSES[y]
        for case, y in zip(cases, labels, strict=True)
    ]
    return "\n".join(head + body) + "\n"


def bm_cases(split: int) -> tuple[np.ndarray, list[int]]:
    """8 cases, 6 dimensions, 5 steps; value = 1000 split + 100 case + 10 dim + step."""
    case, dim, step = np.meshgrid(np.arange(8), np.arange(6), np.arange(5), indexing="ij")
    return 1000.0 * split + 100 * case + 10 * dim + step, [c % 4 for c in range(8)]


@pytest.fixture
def aeon_wheel(tmp_path: Path) -> Path:
    path = tmp_path / "aeon-0.0-py3-none-any.whl"
    license_text = "License: BSD 3-Clause License\n        \n        Copyright (c) someone."
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("aeon-0.0.dist-info/METADATA", metadata("aeon", "0.0", license_text))
        for split, name in ((0, "TRAIN"), (1, "TEST")):
            cases, labels = bm_cases(split)
            z.writestr(convert_datasets.BASICMOTIONS.format(split=name), ts_text(cases, labels))
    return path


@pytest.fixture
def sklearn_wheel(tmp_path: Path) -> Path:
    path = tmp_path / "scikit_learn-0.0-cp311-cp311-linux_x86_64.whl"
    rng = np.random.default_rng(0)
    cancer = np.hstack([rng.random((12, 30)).round(4), (np.arange(12) % 2)[:, None]])
    cancer_text = "12,30,malignant,benign\n" + "\n".join(
        ",".join(f"{v:g}" for v in row[:30]) + f",{int(row[30])}" for row in cancer
    )
    digits = np.hstack([rng.integers(0, 17, (15, 64)), (np.arange(15) % 10)[:, None]])
    digits_text = "\n".join(",".join(str(int(v)) for v in row) for row in digits) + "\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "scikit_learn-0.0.dist-info/METADATA",
            metadata("scikit-learn", "0.0", "License-Expression: BSD-3-Clause"),
        )
        z.writestr(convert_datasets.BREAST_CANCER, cancer_text + "\n")
        z.writestr(convert_datasets.DIGITS, gzip.compress(digits_text.encode()))
    np.save(tmp_path / "cancer.npy", cancer)
    np.save(tmp_path / "digits.npy", digits)
    return path


def test_basicmotions_becomes_two_sensors_with_a_label_per_step(
    aeon_wheel: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bm"

    assert (
        convert_datasets.main(["basicmotions", "--wheel", str(aeon_wheel), "--out", str(out)]) == 0
    )

    ds = read_paper_dir(out)
    assert ds.ids == ("acc", "gyro")
    assert (ds.n_train, ds.n_test) == (40, 40)  # 8 recordings of 5 steps each per split
    assert ds.train_labels is not None and ds.test_labels is not None
    for split, rows, labels in (
        (0, ds["acc"].train, ds.train_labels),
        (1, ds["acc"].test, ds.test_labels),
    ):
        _, case_labels = bm_cases(split)
        steps = rows[:, 0].astype(int)
        case = (steps - 1000 * split) // 100
        # each recording stays whole and in step order, every one once, in some order
        assert sorted(case[::5].tolist()) == list(range(8))
        assert np.array_equal(steps % 10, np.tile(np.arange(5), 8))
        assert labels.tolist() == [case_labels[c] for c in case]
        assert np.array_equal(rows[:, 1] - rows[:, 0], np.full(40, 10.0))  # dims 0, 1, 2
    gyro_dims = (ds["gyro"].train[0] // 10 % 10).astype(int).tolist()
    assert gyro_dims == [3, 4, 5]
    provenance = json.loads((out / "provenance.json").read_text())
    assert (provenance["package"], provenance["version"]) == ("aeon", "0.0")
    assert provenance["license"] == "BSD 3-Clause License"
    assert provenance["classes"] == {str(i): c for i, c in enumerate(CLASSES)}


def test_the_recording_order_follows_the_seed(aeon_wheel: Path, tmp_path: Path) -> None:
    orders: list[list[float]] = []
    for seed in ("0", "0", "1"):
        out = tmp_path / f"bm{len(orders)}"
        convert_datasets.main(
            ["basicmotions", "--wheel", str(aeon_wheel), "--out", str(out), "--seed", seed]
        )
        orders.append(read_paper_dir(out)["acc"].test[::5, 0].tolist())

    assert orders[0] == orders[1] != orders[2]


def test_breast_cancer_becomes_three_feature_groups(sklearn_wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "bc"
    source = np.load(tmp_path / "cancer.npy")

    code = convert_datasets.main(
        ["breast-cancer", "--wheel", str(sklearn_wheel), "--out", str(out), "--train-share", "0.75"]
    )

    assert code == 0
    ds = read_paper_dir(out)
    assert ds.ids == ("mean", "se", "worst")
    assert (ds.n_train, ds.n_test) == (9, 3)
    rows = np.hstack([np.vstack([ds[g].train, ds[g].test]) for g in ds.ids])
    assert ds.train_labels is not None and ds.test_labels is not None
    labels = np.concatenate([ds.train_labels, ds.test_labels])
    # every source row once, its label still beside it
    for row, label in zip(rows, labels, strict=True):
        match = np.flatnonzero(np.all(np.isclose(source[:, :30], row, atol=1e-4), axis=1))
        assert len(match) == 1 and source[match[0], 30] == label
    assert json.loads((out / "provenance.json").read_text())["classes"] == {
        "0": "malignant",
        "1": "benign",
    }


def test_digits_become_two_image_halves(sklearn_wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "dg"
    source = np.load(tmp_path / "digits.npy")

    assert convert_datasets.main(["digits", "--wheel", str(sklearn_wheel), "--out", str(out)]) == 0

    ds = read_paper_dir(out)
    assert ds.ids == ("top", "bottom")
    assert (ds.n_train, ds.n_test) == (10, 5)
    assert ds["top"].n_features == ds["bottom"].n_features == 32
    whole = np.hstack([ds["top"].test, ds["bottom"].test])
    assert ds.test_labels is not None
    for row, label in zip(whole, ds.test_labels, strict=True):
        match = np.flatnonzero(np.all(source[:, :64] == row, axis=1))
        assert len(match) >= 1 and all(source[m, 64] == label for m in match)


def test_a_wheel_without_the_set_is_one_line(
    sklearn_wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = convert_datasets.main(
        ["basicmotions", "--wheel", str(sklearn_wheel), "--out", str(tmp_path / "x")]
    )

    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BasicMotions_TRAIN.ts" in err[0]
    assert not (tmp_path / "x").exists()
