#!/usr/bin/env python3
"""Bytes per embedding frame, and the time to encode and decode one; prints a markdown table.

For 50x5, 891x5 (one paper round) and 256x32 float32 matrices of gaussian and random-walk data:
raw float32, msgpack of float lists (float64 and use_single_float), and the osml frame (int8 plus
one float32 scale per row, zstd above the codec's threshold), with and without zstd; the ratio to
float32, the row cosine between original and decoded rows, and the median encode/decode time.

    python scripts/bench_frame_size.py                 # quick (200 timed calls per shape)
    python scripts/bench_frame_size.py --repeat 1000   # as in docs/benchmarks.md

Needs neither torch nor a broker.
"""

from __future__ import annotations

import argparse
import time

import msgpack
import numpy as np

import benchlib
from osml.wire.codec import Frame, decode_frame, encode_frame

SHAPES = ((50, 5), (891, 5), (256, 32))


def measure(repeat: int) -> list[list[object]]:
    rng = np.random.default_rng(0)
    rows: list[list[object]] = []
    for n, d in SHAPES:
        for kind in ("gaussian", "random walk"):
            x = rng.standard_normal((n, d))
            if kind == "random walk":  # consecutive steps close to each other, like a slow series
                x = np.cumsum(0.1 * x, axis=0) + rng.standard_normal(d)
            x = x.astype(np.float32)
            frame = Frame(
                context=benchlib.CONTEXT,
                source="agent-01",
                round=7,
                step_start=0,
                model_version=3,
                embeddings=x,
            )
            data = encode_frame(frame)
            back = decode_frame(data).embeddings
            cos = np.sum(x * back, axis=1) / (
                np.linalg.norm(x, axis=1) * np.linalg.norm(back, axis=1)
            )
            enc_t, dec_t = [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                data = encode_frame(frame)
                t1 = time.perf_counter()
                decode_frame(data)
                t2 = time.perf_counter()
                enc_t.append(t1 - t0)
                dec_t.append(t2 - t1)
            rows.append(
                [
                    f"{n}x{d}",
                    kind,
                    x.nbytes,
                    len(msgpack.packb(x.tolist())),
                    len(msgpack.packb(x.tolist(), use_single_float=True)),
                    len(encode_frame(frame, compress_threshold=1 << 30)),
                    len(data),
                    "yes" if msgpack.unpackb(data)["z"] else "no",
                    f"{len(data) / x.nbytes:.3f}",
                    f"{cos.min():.6f}",
                    f"{cos.mean():.6f}",
                    f"{benchlib.median_us(enc_t):.0f}",
                    f"{benchlib.median_us(dec_t):.0f}",
                ]
            )
    return rows


HEADER = [
    "matrix",
    "data",
    "float32 raw (B)",
    "msgpack float64 lists (B)",
    "msgpack float32 lists (B)",
    "osml frame without zstd (B)",
    "osml frame (B)",
    "zstd used",
    "osml / float32",
    "min row cosine",
    "mean row cosine",
    "encode (µs)",
    "decode (µs)",
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--repeat", type=int, default=200, help="encode/decode calls timed per shape (default 200)"
    )
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    benchlib.print_machine()
    with benchlib.section("frames"):
        print("## Frames\n")
        print(benchlib.table(HEADER, measure(args.repeat)))
        print(
            f"\nEncode/decode: median of {args.repeat} calls of encode_frame / decode_frame "
            "(default compress_threshold=1024, zstd level 3). Data: float32 standard normal, or a "
            "random walk along the steps (cumsum of N(0, 0.1^2) steps plus a random offset).\n"
        )


if __name__ == "__main__":
    main()
