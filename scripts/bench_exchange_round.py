#!/usr/bin/env python3
"""Time of one exchange round on loopback through a private Mosquitto; prints a markdown table.

Every agent publishes one QoS 1 message (--payload bytes) to each neighbour's inbox
osml/<ctx>/<nb>/in/<me>; the round ends when every agent has received all its neighbours'
messages. Each agent is one osml.net.transport.Transport (its own paho loop thread) plus one agent
thread; agents are dealt round-robin to worker processes (scripts/bench_exchange_round_worker.py,
column "processes"). The driver starts a round by writing "go" to every worker; the round time is
the latest completion time (CLOCK_MONOTONIC, shared by all processes) minus the time of the first
"go". Runs with the broker's ``set_tcp_nodelay true`` (as MosquittoProcess writes it) and without
it; the clients always set TCP_NODELAY (Transport does).

    python scripts/bench_exchange_round.py     # quick: 8 and 32 agents, 5 rounds each
    python scripts/bench_exchange_round.py --rounds 20 --warmup 3 --procs-128 1,2,4
                                               # as in docs/benchmarks.md (adds 128 agents)

Needs the mosquitto binary; no torch. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import benchlib
from osml.core.topology import neighbours

WORKER = benchlib.SCRIPTS / "bench_exchange_round_worker.py"
SMALL: list[tuple[int, str, int]] = [(8, "full", 1), (8, "random:4", 1), (32, "random:4", 1)]


def run_rounds(
    url: str, tag: str, n: int, topo: str, procs: int, rounds: int, warmup: int, payload: int
) -> list[float]:
    """Seconds per measured round for ``n`` agents in ``procs`` worker processes."""
    ids = [f"a{i:03d}" for i in range(n)]
    nb = neighbours(ids, topo, seed=0)
    groups = [ids[i::procs] for i in range(procs)]
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        for _ in groups
    ]
    pipes = [(w, w.stdin, w.stdout) for w in workers]

    def say(line: str) -> None:
        for _, stdin, _ in pipes:
            assert stdin is not None
            stdin.write(line + "\n")
            stdin.flush()

    try:
        for (_, stdin, _), group in zip(pipes, groups):
            assert stdin is not None
            spec = {"url": url, "tag": tag, "agents": group, "payload": payload}
            spec["neighbours"] = {a: nb[a] for a in group}
            stdin.write(json.dumps(spec) + "\n")
            stdin.flush()
        for w, _, stdout in pipes:
            assert stdout is not None
            if stdout.readline().strip() != "ready":
                raise RuntimeError(f"exchange worker {w.pid} did not start")
        times = []
        for rnd in range(1, warmup + rounds + 1):
            time.sleep(0.02)  # let PUBACKs of the previous round settle
            t_go = time.monotonic()
            say(f"go {rnd}")
            t_done = []
            for w, _, stdout in pipes:
                assert stdout is not None
                parts = stdout.readline().split(maxsplit=2)
                if len(parts) < 3 or parts[0] != "done":
                    raise RuntimeError(f"exchange worker {w.pid}: {' '.join(parts) or 'exited'}")
                t_done.append(float(parts[2]))
            if rnd > warmup:
                times.append(max(t_done) - t_go)
        say("stop")
        for w in workers:
            w.wait(timeout=30)
        return times
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()


def measure(
    configs: list[tuple[int, str, int]],
    nodelay_settings: list[bool],
    rounds: int,
    warmup: int,
    payload: int,
) -> list[list[object]]:
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="osml-bench-exchange-") as tmp:
        for nodelay in nodelay_settings:
            with benchlib.mosquitto(Path(tmp) / f"broker-{int(nodelay)}", nodelay) as broker:
                for i, (n, topo, procs) in enumerate(configs):
                    k = n - 1 if topo == "full" else int(topo.split(":")[1])
                    t = np.array(
                        run_rounds(broker.url, f"c{i}", n, topo, procs, rounds, warmup, payload)
                    )
                    per = -(-n // procs)
                    rows.append(
                        [
                            "on" if nodelay else "off",
                            n,
                            topo,
                            n * k,
                            f"{procs} x {per} agents ({2 * per + 1} threads each)"
                            if procs > 1
                            else f"1 x {n} agents ({2 * n + 1} threads)",
                            f"{1e3 * np.median(t):.1f}",
                            f"{1e3 * np.percentile(t, 90):.1f}",
                            f"{1e3 * t.min():.1f}",
                            f"{1e3 * t.max():.1f}",
                        ]
                    )
                    print(
                        f"exchange: nodelay={nodelay} n={n} {topo} procs={procs}: "
                        f"median {1e3 * np.median(t):.1f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    return rows


HEADER = [
    "broker set_tcp_nodelay",
    "agents",
    "topology",
    "messages / round",
    "processes",
    "median (ms)",
    "p90 (ms)",
    "min (ms)",
    "max (ms)",
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rounds", type=int, default=5, help="measured rounds per configuration (default 5)"
    )
    ap.add_argument("--warmup", type=int, default=2, help="rounds run before measuring (default 2)")
    ap.add_argument(
        "--payload", type=int, default=900, help="message size in bytes, >= 8 (default 900)"
    )
    ap.add_argument(
        "--procs-128",
        default="",
        help="comma-separated worker-process counts for 128 agents, e.g. 1,2,4 (default: none)",
    )
    ap.add_argument(
        "--broker-nodelay",
        choices=("on", "off", "both"),
        default="both",
        help="the broker's set_tcp_nodelay setting(s) to measure (default both)",
    )
    args = ap.parse_args()
    if args.payload < 8:
        ap.error("--payload must be at least 8 bytes (the round number)")
    if args.rounds < 1 or args.warmup < 0:
        ap.error("--rounds must be at least 1 and --warmup at least 0")
    try:
        procs_128 = [int(p) for p in args.procs_128.split(",") if p.strip()]
    except ValueError:
        ap.error(f"--procs-128 must be comma-separated integers, not {args.procs_128!r}")
    if any(p < 1 for p in procs_128):
        ap.error("--procs-128: every process count must be at least 1")
    configs = SMALL + [(128, "random:4", p) for p in procs_128]
    nodelay = {"on": [True], "off": [False], "both": [True, False]}[args.broker_nodelay]

    benchlib.print_machine()
    with benchlib.section("exchange"):
        rows = measure(configs, nodelay, args.rounds, args.warmup, args.payload)
        print("## Exchange round on loopback\n")
        print(benchlib.table(HEADER, rows))
        print(
            f"\n{args.rounds} measured rounds after {args.warmup} warm-up rounds, 20 ms apart; "
            f"payload {args.payload} bytes, QoS 1, not retained, to osml/<ctx>/<nb>/in/<me>. "
            "random:4 = osml.core.topology.neighbours(seed=0). Each agent = one Transport (paho "
            "loop_start thread, client TCP_NODELAY on) + one agent thread; agents dealt "
            "round-robin to worker processes, each with a main thread that relays go/done. One "
            "Mosquitto process (single-threaded) per broker setting.\n"
        )


if __name__ == "__main__":
    main()
