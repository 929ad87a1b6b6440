#!/usr/bin/env python3
"""The process bench_agent_memory.py measures: what ``osml agent`` does in one round, minus the
learner and the trainer. Prints one JSON line about itself.

It imports what ``osml agent`` imports (osml.agent.runtime -> onnxruntime, paho via
osml.net.transport, numpy, msgpack, zstandard; not torch), loads the mlp and gru ONNX encoders from
MODELS (as benchlib.build_models writes them), encodes 900 windows with each, encodes an 891x5
frame per model, sends both to its own inbox through the broker at URL, receives and decodes them.
``--with-torch`` also imports torch first (the reference row).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import benchlib


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def run(model_dir: Path, url: str, with_torch: bool) -> dict[str, object]:
    t0 = time.perf_counter()
    if with_torch:
        import torch  # noqa: F401
    import msgpack  # noqa: F401
    import onnxruntime  # noqa: F401
    import zstandard  # noqa: F401

    import osml.agent.runtime  # noqa: F401  (what `osml agent` imports)
    from osml.agent.inference import OnnxEncoder
    from osml.net.transport import BrokerSettings, Transport
    from osml.wire import topics
    from osml.wire.codec import Frame, decode_frame, encode_frame

    t_import = time.perf_counter() - t0
    ctx, window = benchlib.CONTEXT, benchlib.WINDOW
    rng = np.random.default_rng(0)
    frames: list[bytes] = []
    for arch in ("mlp", "gru"):
        enc = OnnxEncoder.load(model_dir / f"{arch}.onnx", threads=1)
        series = np.cumsum(rng.standard_normal(900 + window - 1)).astype(np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(series, window)[:, :, None]
        emb = enc.encode(windows)
        assert emb.shape == (900, benchlib.EMB)
        frame = Frame(
            context=ctx, source="me", round=1, step_start=0, model_version=1, embeddings=emb[:891]
        )
        data = encode_frame(frame)
        assert decode_frame(data).n_steps == 891
        frames.append(data)
    tr = Transport(
        BrokerSettings(url=url),
        "rss-child",
        subscriptions=[topics.inbox_filter(ctx, "me")],
        persistent=False,
    )
    tr.connect()
    try:
        for i, data in enumerate(frames):
            tr.publish(topics.inbox(ctx, "me", f"nb{i}"), data)
        for _ in frames:
            msg = tr.get(timeout=10)
            if msg is None:
                raise SystemExit("agent-like child: frames did not come back from the broker")
            decode_frame(msg.payload)
    finally:
        tr.close()
    return {
        "torch_loaded": "torch" in sys.modules,
        "onnxruntime_loaded": "onnxruntime" in sys.modules,
        "paho_loaded": "paho.mqtt.client" in sys.modules,
        "vmhwm_kb": _vm_hwm_kb(),
        "import_s": t_import,
        "total_s": time.perf_counter() - t0,
        "frame_bytes": len(frames[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("models", type=Path, help="directory with mlp.onnx and gru.onnx (and cards)")
    ap.add_argument("url", help="broker URL, e.g. mqtt://127.0.0.1:1883")
    ap.add_argument("--with-torch", action="store_true", help="import torch too")
    args = ap.parse_args()
    print(json.dumps(run(args.models, args.url, args.with_torch)))


if __name__ == "__main__":
    main()
