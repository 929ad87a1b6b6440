#!/usr/bin/env python3
"""Convert a real multichannel sensor recording into osml's paper format, one agent per sensor.

Source: the Daphnet Freezing of Gait excerpt ``S06R02E0.csv`` that the ``aeon`` wheel ships
(``aeon/datasets/data/Daphnet_S06R02E0/S06R02E0.csv``; aeon is BSD-3-Clause, the Daphnet data set
is Roggen, Plotnik and Hausdorff, UCI Machine Learning Repository, doi:10.24432/C56K78, CC BY
4.0). It is one continuous recording of 7040 rows at 64 Hz: three 3-axis accelerometers (ankle,
thigh - named ``leg`` in the file - and trunk) on a walking subject, in milli-g.

Output: ``OUT/train_data.csv`` and ``OUT/test_data.csv`` with columns ``Agent<ID>[<i>]``: agent
``ankle``, ``leg`` and ``trunk``, three features each (horizontal forward, vertical, horizontal
lateral). The rows are averaged in blocks of ``--decimate`` (default 4: 16 Hz, so a 10-step
window covers 0.625 s, about half a stride), then split in time: the first ``--train-share``
for training, the rest (the genuine continuation) for testing. Nothing is downloaded: pass the
wheel (``pip download --no-deps aeon==1.6.0``) or the extracted CSV.

    python scripts/convert_recording.py --wheel /tmp/drillwheel/aeon-1.6.0-py3-none-any.whl \\
        --out /tmp/drills/daphnet
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "aeon/datasets/data/Daphnet_S06R02E0/S06R02E0.csv"
SENSORS = ("ankle", "leg", "trunk")
AXES = ("horiz_fwd", "vert", "horiz_lateral")


def read_csv_text(text: str) -> np.ndarray:
    """The nine sensor columns (sensor-major, axes in :data:`AXES` order) as float64 rows."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    cols = [header.index(f"{s}_{a}") for s in SENSORS for a in AXES]
    rows = [[float(r[c]) for c in cols] for r in reader if r]
    return np.asarray(rows, dtype=np.float64)


def decimate(rows: np.ndarray, k: int) -> np.ndarray:
    """Means of consecutive blocks of ``k`` rows (a trailing partial block is dropped)."""
    n = len(rows) // k
    return rows[: n * k].reshape(n, k, rows.shape[1]).mean(axis=1)


def write_paper(path: Path, rows: np.ndarray) -> None:
    header = [f"Agent{s}[{i}]" for s in SENSORS for i in range(len(AXES))]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow([f"{v:.4f}" for v in r])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--wheel", type=Path, help="the aeon wheel (.whl) holding the recording")
    src.add_argument("--csv", type=Path, help="S06R02E0.csv, already extracted")
    ap.add_argument("--out", type=Path, required=True, help="output directory (paper format)")
    ap.add_argument("--decimate", type=int, default=4, help="average blocks of this many rows")
    ap.add_argument("--train-share", type=float, default=0.8, help="first share for training")
    args = ap.parse_args(argv)
    if args.decimate < 1 or not 0 < args.train_share < 1:
        ap.error("--decimate >= 1 and 0 < --train-share < 1")
    if args.wheel:
        with zipfile.ZipFile(args.wheel) as z:
            text = z.read(MEMBER).decode("utf-8")
    else:
        text = args.csv.read_text()
    rows = decimate(read_csv_text(text), args.decimate)
    n_train = int(round(len(rows) * args.train_share))
    args.out.mkdir(parents=True, exist_ok=True)
    write_paper(args.out / "train_data.csv", rows[:n_train])
    write_paper(args.out / "test_data.csv", rows[n_train:])
    print(
        f"{args.out}: agents {', '.join(SENSORS)} (3 features each); "
        f"{n_train} train rows, {len(rows) - n_train} test rows at {64 / args.decimate:g} Hz"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
