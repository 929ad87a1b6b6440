#!/usr/bin/env python3
"""Peak memory (RSS) and import time of an agent-like process; prints a markdown table.

The measured process is scripts/bench_agent_memory_child.py: what ``osml agent`` does in one
round (onnxruntime inference with the mlp and gru encoders, frames, MQTT through a private
Mosquitto), without torch. Reported: the child's ru_maxrss from os.wait4 and its own VmHWM, and
whether 'torch' was in its sys.modules. The child is started by a tiny launcher, because Linux
carries a forking parent's RSS into the child's ru_maxrss. Two reference rows: a bare interpreter,
and the same child that also imports torch.

    python scripts/bench_agent_memory.py              # quick (1 run per row)
    python scripts/bench_agent_memory.py --repeat 3   # as in docs/benchmarks.md

Needs torch and onnx (to build the models, in a process of their own) and the mosquitto binary.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import benchlib

CHILD = benchlib.SCRIPTS / "bench_agent_memory_child.py"

# The launcher: the measured child is forked from it (~10 MB), not from this script.
_LAUNCHER = r"""
import json, os, sys, time
argv = sys.argv[1:]
r, w = os.pipe()
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.dup2(w, 1)
    os.execv(argv[0], argv)
os.close(w)
out = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    out += chunk
_, status, ru = os.wait4(pid, 0)
print(json.dumps({"status": os.waitstatus_to_exitcode(status), "ru_maxrss_kb": ru.ru_maxrss,
                  "wall_s": time.perf_counter() - t0, "stdout": out.decode(errors="replace")}))
"""


def launch(argv: list[str]) -> dict[str, Any]:
    """Runs ``argv`` under the launcher; its exit status, ru_maxrss, wall time and stdout."""
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if res.returncode != 0:
        raise RuntimeError(f"launcher failed: {res.stderr}")
    out: dict[str, Any] = json.loads(res.stdout)
    if out["status"] != 0:
        raise RuntimeError(f"measured child {argv} exited with {out['status']}")
    return out


def _mb(kb: list[float]) -> str:
    return f"{np.median(kb) / 1024:.1f}"


def measure(repeat: int) -> list[list[object]]:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="osml-bench-rss-") as tmp:
        model_dir = Path(tmp) / "models"
        # A process of its own (spawned, not forked) so that torch never enters this one.
        builder = multiprocessing.get_context("spawn").Process(
            target=benchlib.build_models, args=(model_dir,)
        )
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            raise SystemExit(f"building the ONNX models failed (exit code {builder.exitcode})")
        with benchlib.mosquitto(Path(tmp) / "broker") as broker:
            base = [launch([sys.executable, "-c", "pass"]) for _ in range(repeat)]
            wall = np.median([b["wall_s"] for b in base])
            bare: list[object] = ["bare `python -c pass`", _mb([b["ru_maxrss_kb"] for b in base])]
            rows.append([*bare, "-", "-", "-", f"{wall:.2f}"])
            for label, extra in (
                ("agent-like (mlp + gru, 900 windows, frames, MQTT)", []),
                ("same, plus `import torch`", ["--with-torch"]),
            ):
                runs = []
                for _ in range(repeat):
                    out = launch([sys.executable, str(CHILD), str(model_dir), broker.url, *extra])
                    child = json.loads(out["stdout"].strip().splitlines()[-1])
                    runs.append((out, child))
                loaded = {c["torch_loaded"] for _, c in runs}
                torch_col = {frozenset({True}): "yes", frozenset({False}): "no"}
                rows.append(
                    [
                        label,
                        _mb([o["ru_maxrss_kb"] for o, _ in runs]),
                        _mb([c["vmhwm_kb"] for _, c in runs]),
                        torch_col.get(frozenset(loaded), "mixed"),
                        f"{np.median([c['import_s'] for _, c in runs]):.2f}",
                        f"{np.median([o['wall_s'] for o, _ in runs]):.2f}",
                    ]
                )
    return rows


HEADER = [
    "process",
    "ru_maxrss via os.wait4 (MB)",
    "child's own VmHWM (MB)",
    "'torch' in sys.modules",
    "imports (s)",
    "wall incl. startup (s)",
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="child processes per row, median (default 1)"
    )
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    benchlib.print_machine()
    with benchlib.section("rss"):
        rows = measure(args.repeat)
        print("## Peak RSS of an agent-like process\n")
        print(benchlib.table(HEADER, rows))
        print(
            f"\nMedian of {args.repeat} runs each; MB = 1024 kB. The agent-like child loads mlp "
            f"and gru ONNX encoders (window {benchlib.WINDOW}x1, embedding {benchlib.EMB}), "
            "encodes 900 windows with each, encodes an 891x5 frame per model, sends both to its "
            "own inbox through a private Mosquitto, receives and decodes them.\n"
        )


if __name__ == "__main__":
    main()
