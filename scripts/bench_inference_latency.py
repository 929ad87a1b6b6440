#!/usr/bin/env python3
"""Time per inference call, onnxruntime vs torch eager, on one thread; prints a markdown table.

The same weights (build_encoder, exported with build_onnx) for mlp, gru and conv encoders on
windows of 10x1 and 10x2, at batch 1 and batch 900: median time per call of onnxruntime (1 intra-
and 1 inter-op thread) and of torch eager (1 thread, no_grad), and the largest difference between
their outputs.

    python scripts/bench_inference_latency.py                # quick (200 calls at batch 1)
    python scripts/bench_inference_latency.py --calls 2000   # as in docs/benchmarks.md

Needs torch and onnx (the trainer extra); no broker.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import benchlib

ARCHS = ("mlp", "gru", "conv")
BATCHES = (1, 900)
WARMUP = 20


def time_calls(fn: Callable[[], object], calls: int, warmup: int = WARMUP) -> float:
    """Median seconds per call of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def big_batch_calls(calls: int) -> int:
    return max(calls // 20, 20)


def measure(calls: int) -> list[list[object]]:
    import onnxruntime as ort
    import torch

    from osml.trainer.encoders import build_encoder
    from osml.trainer.export import INPUT, OUTPUT, build_onnx

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    window, emb = benchlib.WINDOW, benchlib.EMB
    rng = np.random.default_rng(0)
    rows: list[list[object]] = []
    for arch in ARCHS:
        for nf in (1, 2):
            enc = build_encoder(arch, window, nf, emb, seed=0).eval()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(
                build_onnx(enc), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            for batch in BATCHES:
                x = rng.standard_normal((batch, window, nf)).astype(np.float32)
                xt = torch.from_numpy(x)
                n = calls if batch == 1 else big_batch_calls(calls)

                def run_ort(sess: ort.InferenceSession = sess, x: np.ndarray = x) -> np.ndarray:
                    out: np.ndarray = sess.run([OUTPUT], {INPUT: x})[0]
                    return out

                def run_torch(enc: torch.nn.Module = enc, xt: torch.Tensor = xt) -> torch.Tensor:
                    with torch.no_grad():
                        out: torch.Tensor = enc(xt)
                        return out

                t_ort = time_calls(run_ort, n)
                t_torch = time_calls(run_torch, n)
                diff = float(np.max(np.abs(run_ort() - run_torch().numpy())))
                rows.append(
                    [
                        arch,
                        f"{window}x{nf}",
                        batch,
                        f"{1e6 * t_ort:.1f}",
                        f"{1e6 * t_torch:.1f}",
                        f"{t_torch / t_ort:.1f}",
                        f"{1e6 * t_ort / batch:.2f}",
                        f"{1e6 * t_torch / batch:.2f}",
                        f"{diff:.1e}",
                    ]
                )
    return rows


HEADER = [
    "encoder",
    "window",
    "batch",
    "onnxruntime (µs/call)",
    "torch eager (µs/call)",
    "torch / ort",
    "ort (µs/window)",
    "torch (µs/window)",
    "max abs diff",
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--calls",
        type=int,
        default=200,
        help="timed calls at batch 1; batch 900 uses calls/20, at least 20 (default 200)",
    )
    args = ap.parse_args()
    if args.calls < 1:
        ap.error("--calls must be at least 1")

    benchlib.print_machine()
    with benchlib.section("inference"):
        rows = measure(args.calls)
        print("## Inference, one thread\n")
        print(benchlib.table(HEADER, rows))
        print(
            f"\nMedian of {args.calls} calls (batch 1) or {big_batch_calls(args.calls)} calls "
            f"(batch 900), after {WARMUP} warm-up calls; embedding {benchlib.EMB}; default widths "
            "(gru hidden 32, mlp hidden 128, conv 24 channels); torch.set_num_threads(1), "
            "torch.no_grad(); onnxruntime CPUExecutionProvider, intra_op and inter_op threads 1.\n"
        )


if __name__ == "__main__":
    main()
