#!/usr/bin/env python3
"""Time one ONNX export per architecture: osml's graph builder vs torch's dynamo exporter.

    python scripts/bench_export.py [--repeat 20]

Both paths include the onnxruntime-vs-torch parity check on 64 windows, i.e. what a trainer does
every round. Prints a markdown table (median of --repeat runs for the builder; dynamo is run 3
times, its first call includes one-off warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

from osml.trainer.encoders import ARCHITECTURES, build_encoder
from osml.trainer.export import export_onnx


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((64, 10, 2)).astype(np.float32)
    print(
        "| encoder | builder median (ms) | dynamo first call (s) | dynamo later calls (s) "
        "| max abs diff |"
    )
    print("| --- | --- | --- | --- | --- |")
    for arch in ARCHITECTURES:
        enc = build_encoder(arch, 10, 2, 5, seed=0)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            _, _, diff = export_onnx(enc, windows, 1)
            times.append(time.perf_counter() - t0)
        dyn = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(3):
                t0 = time.perf_counter()
                export_onnx(enc, windows, 1, exporter="dynamo")
                dyn.append(time.perf_counter() - t0)
        print(
            f"| {arch} | {1000 * statistics.median(times):.1f} | {dyn[0]:.2f} "
            f"| {statistics.median(dyn[1:]):.2f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
