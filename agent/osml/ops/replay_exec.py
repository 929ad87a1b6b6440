"""``python -m osml.ops.replay_exec``: one device's replay, paced, on stdout (for ``exec:``).

The agent runs it as its ``[data] source`` (build the command with
:func:`osml.ops.feeders.exec_argv`); it prints one reading per line, flushed, at the pace of
:class:`~osml.ops.replay.ReplayPlan`, deterministically for the same arguments. With ``--hold``
it stays alive, silent, after the last reading until it is terminated (an ``exec:`` source
restarts a command that exits). Errors go to stderr as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from osml.agent.data import load_dataset
from osml.errors import OsmlError
from osml.ops.feeders import WriterFeeder
from osml.ops.replay import FORMATS, JITTERS, ReplayPlan, parse_fault, replay_rows

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m osml.ops.replay_exec",
        description="Print one device's training rows as paced live readings on stdout.",
    )
    p.add_argument("--data", required=True, help="dataset spec, e.g. generated:simple or a dir")
    p.add_argument("--agent", required=True, help="the device (agent id) to replay")
    p.add_argument("--data-seed", type=int, default=0, help="seed of a generated dataset")
    p.add_argument("--limit", type=int, help="replay only the first N rows")
    p.add_argument("--step", type=float, default=1.0, help="step_seconds (default 1)")
    p.add_argument("--speed", type=float, default=1.0, help="times real time (>= 1)")
    p.add_argument("--start-time", type=float, help="Unix time of row 0 (default: next step)")
    p.add_argument("--at", type=float, help="Unix time the replay begins (default: start time)")
    p.add_argument("--skew", type=float, default=0.0, help="the device's clock error, seconds")
    p.add_argument("--jitter", default="none", help=f"KIND:SECONDS, KIND one of {JITTERS}")
    p.add_argument("--drop", type=float, default=0.0, help="share of readings not sent")
    p.add_argument("--per-step", type=int, default=1, help="readings per step")
    p.add_argument("--reading-noise", type=float, default=0.0, help="noise per reading (stds)")
    p.add_argument("--seed", type=int, default=0, help="seed of jitter, drops and noise")
    p.add_argument("--fault", action="append", default=[], help="AGENT:KIND@STEP[:ARG]")
    p.add_argument("--format", choices=FORMATS, default="json", help="line format")
    p.add_argument("--hold", action="store_true", help="stay alive after the last reading")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        kind, _, seconds = args.jitter.partition(":")
        plan = ReplayPlan(
            step_seconds=args.step,
            speed=args.speed,
            start_time=args.start_time,
            skew={args.agent: args.skew},
            jitter=kind,
            jitter_s=float(seconds) if seconds else 0.0,
            drop_rate=args.drop,
            readings_per_step=args.per_step,
            reading_noise=args.reading_noise,
            seed=args.seed,
        )
        faults = [parse_fault(f) for f in args.fault]
        dataset = load_dataset(args.data, seed=args.data_seed)
        rows = replay_rows(dataset, faults, seed=args.seed, limit=args.limit)
        if args.agent not in rows:
            raise OsmlError(f"no agent {args.agent!r} in {args.data}; agents: {', '.join(rows)}")
        feeder = WriterFeeder(rows[args.agent], plan, args.agent, out=sys.stdout.buffer)
    except (OsmlError, ValueError) as exc:
        print(f"replay_exec: {exc}", file=sys.stderr)
        return 2
    feeder.start(args.at)
    try:
        feeder.wait()
        if feeder.error is not None:  # e.g. the reader closed the pipe
            print(f"replay_exec: {feeder.error}", file=sys.stderr)
            return 1
        while args.hold:
            time.sleep(3600)
    except KeyboardInterrupt:
        feeder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
