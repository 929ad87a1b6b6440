#!/usr/bin/env python3
"""Kill drill: one agent of a real fleet SIGKILLed at random moments, again and again.

A private Mosquitto on a loopback port, one ``osml trainer`` and two ``osml agent`` processes on
the paper's simple context (the fleet of ``scripts/fault_drills.py``). The victim is SIGKILLed
after a random delay (seeded) - while it starts, loads its model, trains, installs a model, saves
its state - and restarted on the same config and state directory, ``--kills`` times. After each
kill the drill checks what is on disk:

* ``state.json`` loads, and ``next_round`` never goes backwards;
* the model pair verifies (``OnnxEncoder.load``: card, sha256, graph) and its version never goes
  backwards; no model is allowed only before the victim ever had one;
* ``rounds.jsonl`` reads (a torn last line is skipped, anything else is damage);

and after each restart that the agent did not throw its model away (no "ignoring the model" in
its log) and that its rounds run on a model at least as new as the one verified at the kill. At
the end every agent must finish every round and exit 0.

    python scripts/kill_drill.py                 # 50 kills (about ten minutes)
    python scripts/kill_drill.py --kills 100 --seed 7

Every process it starts is stopped by PID at the end, on failure and on Ctrl-C. Logs, configs and
state stay under --out.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_drills import PAPER, ROOT, Env, Fleet  # the fleet of the fault drills
from osml.agent.inference import OnnxEncoder
from osml.agent.modelcard import card_path, read_card, sha256_hex
from osml.agent.state import ROUNDS_FILE, load_state, read_rounds
from osml.errors import OsmlError

VICTIM = "1"
IDS = ["0", "1"]


@dataclass
class Tally:
    kills: int = 0
    restarts_ok: int = 0
    before_first_model: int = 0  # kills that found no model yet
    between_commit_and_rename: int = 0  # card committed, model.onnx still the old bytes
    torn_round_lines: int = 0
    versions: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def check_disk(f: Fleet, last: tuple[int, int], tally: Tally) -> tuple[int, int]:
    """Check the victim's state directory after a kill; returns (next_round, model version)."""
    sdir = f.state(VICTIM)
    state = load_state(sdir, VICTIM, f.settings.context)
    if state.next_round < last[0]:
        raise OsmlError(f"next_round went back from {last[0]} to {state.next_round}")
    model = sdir / "model.onnx"
    version = 0
    if card_path(model).exists():
        version = OnnxEncoder.load(model).version
        if version < last[1]:
            raise OsmlError(f"model went back from v{last[1]} to v{version}")
        if not model.exists() or sha256_hex(model.read_bytes()) != read_card(model).sha256:
            tally.between_commit_and_rename += 1
    elif last[1] or state.model_version:
        raise OsmlError(f"no model, but the agent had v{max(last[1], state.model_version)}")
    else:
        tally.before_first_model += 1
    read_rounds(sdir)
    raw = (sdir / ROUNDS_FILE).read_bytes() if (sdir / ROUNDS_FILE).exists() else b""
    tally.torn_round_lines += bool(raw) and not raw.endswith(b"\n")
    return state.next_round, version


def check_restart(f: Fleet, log_from: int, since_round: int, version: int) -> None:
    """What the victim did since its last restart: kept its model, ran on it (or a newer one)."""
    log = (
        (f.workdir / "agents" / VICTIM / "agent.log")
        .read_bytes()[log_from:]
        .decode(errors="replace")
    )
    if "ignoring the model" in log:
        raise OsmlError(
            "the restarted agent ignored its model: "
            + next(line for line in log.splitlines() if "ignoring the model" in line)
        )
    for rec in read_rounds(f.state(VICTIM)):
        if rec.round >= since_round and rec.model_version < version:
            raise OsmlError(
                f"round {rec.round} ran on model v{rec.model_version}, v{version} was on disk"
            )


def drill(f: Fleet, kills: int, seed: int, max_delay: float, tally: Tally) -> None:
    rng = random.Random(seed)
    log_path = f.workdir / "agents" / VICTIM / "agent.log"
    last, log_from = (0, 0), 0
    for kill in range(1, kills + 1):
        done = [r.round for r in read_rounds(f.state(VICTIM))]
        if done and done[-1] >= f.rounds - 2:
            raise OsmlError(
                f"the victim is at round {done[-1]} of {f.rounds} after {kill - 1} kills: pass "
                "more --rounds"
            )
        delay = rng.uniform(0.1, max_delay)
        time.sleep(delay)
        proc = f.agents[VICTIM]
        if proc.poll() is not None:
            raise OsmlError(f"the victim exited by itself with {proc.returncode}; see {log_path}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        tally.kills += 1
        try:
            nxt, version = check_disk(f, last, tally)
            check_restart(f, log_from, last[0], last[1])
        except (OsmlError, OSError, ValueError, KeyError) as exc:
            tally.failures.append(f"kill {kill}: {exc}")
            raise
        last = (nxt, version)
        tally.versions.append(version)
        log_from = log_path.stat().st_size if log_path.exists() else 0
        f.start_agent(VICTIM)  # same config, same state directory
        tally.restarts_ok += 1
        print(
            f"kill {kill:3d}  after {delay:4.2f}s  next_round {nxt:3d}  model v{version:<3d} OK",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs of the victim (default 50)")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the random kill delays (default 1)"
    )
    parser.add_argument(
        "--max-delay",
        type=float,
        default=8.0,
        help="longest delay before a kill, seconds (default 8)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=300,
        help=(
            "rounds the fleet runs (default 300: enough for 50 kills, as a restarted agent "
            "catches up)"
        ),
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=2.0,
        help="seconds an agent waits for its neighbours (default 2)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "kill-drill", help="where logs and state go"
    )
    parser.add_argument(
        "--paper", type=Path, default=PAPER, help="the paper's data (simple-context)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="give up waiting for the end after this many seconds",
    )
    args = parser.parse_args()
    if args.kills < 1 or args.rounds < 4:
        parser.error("--kills must be at least 1 and --rounds at least 4")
    if not (args.paper / "simple-context" / "train_data.csv").exists():
        parser.error(f"no paper data at {args.paper / 'simple-context'}: pass --paper DIR")
    env = Env(args.out.resolve(), args.paper.resolve(), args.deadline, args.timeout)
    workdir = env.out / "fleet"
    shutil.rmtree(workdir, ignore_errors=True)
    tally = Tally()
    started = time.perf_counter()
    f = Fleet(env, workdir, "simple-context", IDS, args.rounds)
    finished: dict[str, int | None] = {}
    try:
        f.start()
        print(
            f"fleet up: broker {f.broker.url}, trainer pid {f.trainer.pid if f.trainer else '?'}, "
            f"agents {', '.join(f'{a} pid {p.pid}' for a, p in f.agents.items())}; victim {VICTIM}",
            flush=True,
        )
        drill(f, args.kills, args.seed, args.max_delay, tally)
        print(
            f"{tally.kills} kills done; waiting for the fleet to finish {args.rounds} rounds",
            flush=True,
        )
        finished = f.wait_agents()
    except KeyboardInterrupt:
        tally.failures.append("interrupted")
    except Exception as exc:  # noqa: BLE001  # reported in the summary, after everything is stopped
        if not tally.failures:
            tally.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        f.stop()
    rounds = {a: [r.round for r in read_rounds(f.state(a))] for a in IDS}
    complete = {a: bool(r) and r[-1] == args.rounds - 1 for a, r in rounds.items()}
    if finished and (not all(c == 0 for c in finished.values()) or not all(complete.values())):
        tally.failures.append(
            f"the fleet did not finish: exit codes {finished}, last rounds "
            f"{ {a: r[-1] if r else None for a, r in rounds.items()} }"
        )
    victim_rounds = read_rounds(f.state(VICTIM))
    final_version = victim_rounds[-1].model_version if victim_rounds else None
    ok = not tally.failures and tally.kills >= args.kills and bool(finished)
    print(
        f"\nkill drill {'PASS' if ok else 'FAIL'} in {time.perf_counter() - started:.0f}s (seed "
        f"{args.seed})"
    )
    print(f"  kills {tally.kills}, restarts OK {tally.restarts_ok}")
    print(
        f"  kills before the first model {tally.before_first_model}, between the card's commit and "
        "the "
        f"model's rename {tally.between_commit_and_rename}, with a torn last round line "
        f"{tally.torn_round_lines}"
    )
    print(
        f"  victim's model at the kills v{min(tally.versions, default=0)} .. "
        f"v{max(tally.versions, default=0)}, "
        f"v{final_version} at the end"
    )
    print(
        f"  round records { ({a: len(r) for a, r in rounds.items()}) }, last "
        f"{ ({a: r[-1] if r else None for a, r in rounds.items()}) } "
        f"of {args.rounds}, exit codes {finished or 'n/a'}"
    )
    for failure in tally.failures:
        print(f"  FAIL: {failure}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
