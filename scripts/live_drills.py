#!/usr/bin/env python3
"""Drills and measurements of ``osml run --live`` (one PASS/FAIL line per drill, plus figures).

Each drill runs ``python -m osml.cli run ...`` as a subprocess (one run at a time), reads what
the run left (``report.json``, the agents' ``state/rounds.jsonl``, ``state/embeddings``,
``agent.toml``) and prints its verdict; ``--json`` collects every drill's figures.

    python scripts/live_drills.py compare --data generated:complex --period 100
    python scripts/live_drills.py compare --data /tmp/drills/daphnet --period 100
    python scripts/live_drills.py drift
    python scripts/live_drills.py anomaly --kinds stuck,spike,offset,noise
    python scripts/live_drills.py skew --data generated:complex --period 100
    python scripts/live_drills.py day --out-data /tmp/drills/day

Logs and run directories go under ``--work`` (default /tmp/drills). Export
``PYTHONPATH=$PWD/agent`` first so the runs import this checkout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))

from osml.agent.data import load_dataset  # noqa: E402
from osml.agent.embstore import EmbeddingStore  # noqa: E402
from osml.agent.records import RoundRecord  # noqa: E402
from osml.agent.state import read_rounds  # noqa: E402
from osml.ops.replay import parse_fault, replay_rows  # noqa: E402

SUMMARY: dict[str, Any] = {}


def verdict(name: str, ok: bool, figures: str, data: dict[str, Any]) -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {figures}", flush=True)
    SUMMARY[name] = {"pass": ok, "figures": figures, **data}
    return ok


ROUNDS_EXTRA: list[str] = []  # --rounds-config: more [rounds] lines for every agent


def osml_cmd() -> list[str]:
    """``python -m osml.cli``, or this script's launcher when [rounds] lines are to be added."""
    if ROUNDS_EXTRA:
        return [sys.executable, __file__, "--rounds-config", ";".join(ROUNDS_EXTRA), "osml"]
    return [sys.executable, "-m", "osml.cli"]


def as_osml(extra: list[str], argv: list[str]) -> int:
    """Run the osml CLI with ``extra`` lines added to the ``[rounds]`` table of every agent's
    config (a config lever ``osml run`` has no flag for, e.g. ``replay = 400``)."""
    from osml.cli.main import main as osml_main
    from osml.ops import fleet

    plain = fleet.agent_toml

    def patched(*args: Any, **kwargs: Any) -> str:
        return plain(*args, **kwargs).replace(
            "[rounds]\n", "[rounds]\n" + "".join(f"{x}\n" for x in extra), 1
        )

    fleet.agent_toml = patched
    sys.argv = ["osml", *argv]
    osml_main()
    return 0


def osml_run(work: Path, name: str, args: list[str], timeout: float = 900) -> tuple[Path, float]:
    """Run ``osml run ARGS --out WORK/runs/NAME`` to completion; the run dir and wall seconds."""
    if ROUNDS_EXTRA:
        name += "-" + "-".join(x.replace(" ", "").replace("=", "") for x in ROUNDS_EXTRA)
    out = work / "runs" / name
    log = work / f"{name}.log"
    cmd = [*osml_cmd(), "run", *args, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
    shown = f" [rounds] {'; '.join(ROUNDS_EXTRA)}" if ROUNDS_EXTRA else ""
    print(f"$ osml run {' '.join(args)}{shown}   (log {log})", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    return out, time.monotonic() - t0


def report(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "report.json").read_text()))


def groups(final: dict[str, Any]) -> list[tuple[str, ...]]:
    """The distinct final sub-contexts, as sorted tuples."""
    return sorted({tuple(sorted(v)) for v in final["subcontexts"].values()})


def group_alignment(final: dict[str, Any]) -> dict[str, float]:
    """Mean pairwise centred alignment within each sub-context of two or more agents."""
    c = final["centered_alignment"]
    out: dict[str, float] = {}
    for g in groups(final):
        pairs = [(a, b) for i, a in enumerate(g) for b in g[i + 1 :]]
        if pairs:
            out[",".join(g)] = float(np.mean([c[a][b] for a, b in pairs]))
    return out


def agents_dir(run: Path) -> Path:
    return run / "fleet" / "agents"


def rounds_of(run: Path, agent: str) -> list[RoundRecord]:
    return read_rounds(agents_dir(run) / agent / "state")


def agent_config(run: Path, agent: str) -> dict[str, Any]:
    return tomllib.loads((agents_dir(run) / agent / "agent.toml").read_text())


def first_step(run: Path, agent: str) -> int:
    """The absolute step index of the replay's first row (row i is step first + i)."""
    d = agent_config(run, agent)["data"]
    return math.floor(d["replay_start"] / d["step_seconds"] + 1e-9)


def live_args(a: argparse.Namespace, skew: float) -> list[str]:
    return [
        "--live",
        "--speed",
        str(a.speed),
        "--max-skew",
        str(skew),
        "--drop-readings",
        str(a.drop),
        "--period",
        str(a.period),
        "--rounds",
        str(a.live_rounds),
    ]


# -- 1. live vs file ------------------------------------------------------------------------------


def drill_compare(a: argparse.Namespace) -> bool:
    """A file run and a live run per seed. PASS: the same sub-contexts in every seed, and each
    group's centred alignment, averaged over the seeds, within 0.03 of the file runs' average
    (one run of the complex context moves by 0.01-0.05 with any change of its early rounds, file
    runs across seeds by 0.1, so the per-seed differences are printed but not the verdict)."""
    tag = Path(a.data).name.replace(":", "-")
    seeds = [int(x) for x in str(a.seeds).split(",")]
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        sfx = f"-s{seed}" if seeds != [0] else ""
        frun, fsec = osml_run(
            a.work,
            f"{tag}-file{sfx}",
            ["--data", a.data, "--rounds", str(a.rounds), "--seed", str(seed)],
        )
        lrun, lsec = osml_run(
            a.work,
            f"{tag}-live-p{a.period}{sfx}",
            ["--data", a.data, *live_args(a, a.skew), "--seed", str(seed)],
        )
        f, live = report(frun)["final"], report(lrun)["final"]
        per_seed.append(
            {
                "seed": seed,
                "file": {"run": str(frun), "groups": group_alignment(f), "s": fsec},
                "live": {"run": str(lrun), "groups": group_alignment(live), "s": lsec},
                "file_subcontexts": groups(f),
                "live_subcontexts": groups(live),
                "live_rounds": len(report(lrun)["rounds"]) - 1,
            }
        )
    same = all(r["file_subcontexts"] == r["live_subcontexts"] for r in per_seed)
    keys = set.intersection(*(set(r["file"]["groups"]) for r in per_seed))
    mean = lambda side, g: float(np.mean([r[side]["groups"][g] for r in per_seed]))  # noqa: E731
    have = [g for g in sorted(keys) if all(g in r["live"]["groups"] for r in per_seed)]
    diffs = {g: mean("live", g) - mean("file", g) for g in have}
    ok = same and len(have) == len(keys) and all(abs(d) <= 0.03 for d in diffs.values())
    fmt = lambda d: " ".join(f"{{{g}}} {v:.3f}" for g, v in d.items()) or "-"  # noqa: E731
    subs = lambda gs: " ".join("{" + ",".join(g) + "}" for g in gs)  # noqa: E731
    lines = []
    for r in per_seed:
        dd = {g: r["live"]["groups"][g] - r["file"]["groups"][g] for g in have}
        lines.append(
            f"seed {r['seed']}: file [{subs(r['file_subcontexts'])}]"
            f" {fmt(r['file']['groups'])} ({r['file']['s']:.0f} s) | live {r['live_rounds']} rounds"
            f" [{subs(r['live_subcontexts'])}]"
            f" {fmt(r['live']['groups'])} ({r['live']['s']:.0f} s) | live - file"
            f" {' '.join(f'{{{g}}} {v:+.3f}' for g, v in dd.items())}"
        )
    for line in lines:
        print("  " + line, flush=True)
    tag_extra = f" [rounds] {'; '.join(ROUNDS_EXTRA)}" if ROUNDS_EXTRA else ""
    return verdict(
        f"compare {a.data}",
        ok,
        f"{tag_extra.strip()} seeds {','.join(map(str, seeds))}: file {a.rounds} rounds, live"
        f" rounds of {a.period} steps; mean file {fmt({g: mean('file', g) for g in have})} |"
        f" mean live {fmt({g: mean('live', g) for g in have})} | mean live - file"
        f" {' '.join(f'{{{g}}} {v:+.3f}' for g, v in diffs.items())} | same sub-contexts {same}",
        {"seeds": per_seed, "mean_diff": diffs},
    )


# -- 2. drift --------------------------------------------------------------------------------------


def long_data(work: Path, kind: str, rows: int) -> Path:
    """``generated:KIND`` with ``rows`` training rows, written once under ``work``: long enough
    for the live warm-up (``[rounds] warmup_steps``) and a settled calibration before a fault."""
    out = work / f"long-{kind}-{rows}"
    if not (out / "train_data.csv").exists():
        write_day(out, rows, kind)
    return out


def drill_drift(a: argparse.Namespace) -> bool:
    me, to = a.agent, a.to
    fault = f"{me}:switch@{a.at}:{to}"
    data = long_data(a.work, a.kind, a.rows)
    run, sec = osml_run(
        a.work,
        f"drift-{a.kind}-p{a.period}",
        ["--data", str(data), *live_args(a, a.skew), "--inject-fault", fault],
    )
    s0 = first_step(run, me)
    fault_step = s0 + a.at
    names = sorted(p.name for p in agents_dir(run).iterdir() if p.is_dir())
    recs = {x: rounds_of(run, x) for x in names}
    by_round = {x: {r.round: r for r in recs[x]} for x in names}
    # Round r covers steps [r*period, (r+1)*period): the first round holding switched steps.
    fault_round = fault_step // a.period
    before = [r for r in recs[me] if r.round < fault_round]
    old = set(before[-1].subcontext) - {me} if before else set()
    lines, left, joined, counted = [], None, None, None
    eq_before = eq_left = eq_back = None
    for r1 in recs[me]:
        rel = r1.round - fault_round
        other = by_round[to].get(r1.round)
        lines.append(
            f"r{rel:+d} {me}:{','.join(r1.subcontext)} eq={r1.equilibrium} "
            f"{to}:{','.join(other.subcontext) if other else '?'}"
        )
        if rel < 0:
            eq_before = r1.equilibrium
            continue
        mine = set(r1.subcontext)
        if left is None and old and not (old & mine):
            left = rel
        if joined is None and to in mine and not (old - {to}) & mine:
            joined = rel
        if counted is None and other is not None and me in other.subcontext:
            counted = rel
        if eq_left is None and eq_before and not r1.equilibrium:
            eq_left = rel
        if eq_left is not None and eq_back is None and r1.equilibrium and rel > eq_left:
            eq_back = rel
    for line in lines:
        print("   ", line)
    ok = joined is not None and counted is not None and max(joined, counted) <= a.target
    return verdict(
        "drift",
        ok,
        f"{fault} on generated:{a.kind} ({a.rows} rows; step {fault_step}, round r+0 = first "
        f"round with switched steps): {me} leaves {{{','.join(sorted(old))}}} after {left} "
        f"rounds, joins {to}'s sub-context after {joined}, {to} counts {me} after {counted} "
        f"(target <= {a.target}); in equilibrium just before the switch: {eq_before}, left at "
        f"r+{eq_left}, re-entered at r+{eq_back}; rounds at equilibrium "
        f"{sum(r.equilibrium for r in recs[me])}/{len(recs[me])} ({sec:.0f} s)",
        {
            "run": str(run),
            "left": left,
            "joined": joined,
            "counted": counted,
            "eq_left": eq_left,
            "eq_back": eq_back,
        },
    )


# -- 3. anomaly ------------------------------------------------------------------------------------


def drill_anomaly(a: argparse.Namespace) -> bool:
    data = long_data(a.work, "simple", a.rows)
    ds = load_dataset(str(data), seed=0)
    clean = replay_rows(ds, seed=0)
    all_ok = True
    for kind in a.kinds.split(","):
        spec = f"{a.agent}:{kind}@{a.at}"
        run, sec = osml_run(
            a.work,
            f"anomaly-{kind}",
            ["--data", str(data), *live_args(a, a.skew), "--inject-fault", spec],
        )
        faulty = replay_rows(ds, [parse_fault(spec)], seed=0)[a.agent]
        changed = np.any(faulty != clean[a.agent], axis=1)  # rows the fault touched
        s0 = first_step(run, a.agent)
        dim = int(agent_config(run, a.agent)["model"]["embedding_dim"])
        rows = EmbeddingStore(agents_dir(run) / a.agent / "state" / "embeddings", dim).read()
        rel = rows.step - s0  # row index of each window's last step
        w = a.window
        # A window (named by its last row t) is faulty if any of its rows t-w+1..t was changed.
        hit = np.array([bool(changed[max(0, t - w + 1) : t + 1].any()) for t in rel])
        scored = rel >= a.warmup
        flagged = rows.flagged & scored
        clean_steps = scored & (rel < a.at)
        after = scored & (rel >= a.at)
        fp_rate = float(flagged[clean_steps].mean()) if clean_steps.any() else math.nan
        first = rel[flagged & after]
        delay = int(first[0] - a.at) if len(first) else None
        tp = int((flagged & after & hit).sum())
        prec = tp / max(1, int((flagged & (rel >= a.at)).sum()) + int(flagged[clean_steps].sum()))
        rec = tp / max(1, int((after & hit).sum()))
        ok = delay is not None and delay <= 2 * w and fp_rate <= 0.01
        all_ok &= ok
        verdict(
            f"anomaly {kind}",
            ok,
            f"{spec} (step {s0 + a.at}): first flag {delay} steps after the start "
            f"(target <= {2 * w}); clean steps flagged {fp_rate:.2%} of {int(clean_steps.sum())} "
            f"(target <= 1%); precision {prec:.3f} recall {rec:.3f} "
            f"({int(hit[after].sum())} faulty windows scored) ({sec:.0f} s)",
            {
                "run": str(run),
                "delay": delay,
                "clean_flag_rate": fp_rate,
                "precision": prec,
                "recall": rec,
            },
        )
    return all_ok


# -- 4. skew --------------------------------------------------------------------------------------


def drill_skew(a: argparse.Namespace) -> bool:
    tag = Path(a.data).name.replace(":", "-")
    res = {}
    for skew in (0.0, 0.5):
        run, _ = osml_run(
            a.work, f"{tag}-skew{skew:g}-p{a.period}", ["--data", a.data, *live_args(a, skew)]
        )
        final = report(run)["final"]
        res[skew] = (groups(final), group_alignment(final), str(run))
    g0, a0, _ = res[0.0]
    g5, a5, _ = res[0.5]
    diff = {g: a5[g] - a0[g] for g in a0 if g in a5}
    fmt = lambda d: " ".join(f"{{{g}}} {v:.3f}" for g, v in d.items()) or "-"  # noqa: E731
    ok = g0 == g5 and all(abs(d) <= 0.03 for d in diff.values())
    return verdict(
        f"skew {a.data}",
        ok,
        f"max-skew 0: {fmt(a0)} | max-skew 0.5: {fmt(a5)} | difference (0.5 - 0) "
        f"{' '.join(f'{{{g}}} {v:+.3f}' for g, v in diff.items()) or '-'} | "
        f"same sub-contexts {g0 == g5}",
        {"skew0": a0, "skew05": a5, "runs": [res[0.0][2], res[0.5][2]]},
    )


# -- 5. a day of steps ----------------------------------------------------------------------------


def write_day(out: Path, rows: int, kind: str = "simple") -> None:
    """``generated:KIND`` drawn ``rows`` long (one continuous run), in paper format."""
    from osml.agent.synthetic import generate

    if kind not in ("simple", "complex"):
        raise SystemExit(f"generated:{kind}: use simple or complex")
    ds = generate("simple" if kind == "simple" else "complex", seed=0, n_train=rows, n_test=200)
    out.mkdir(parents=True, exist_ok=True)
    for part in ("train", "test"):
        cols = [(x.agent_id, getattr(x, part)) for x in ds.agents]
        header = ",".join(f"Agent{aid}[{i}]" for aid, v in cols for i in range(v.shape[1]))
        body = np.hstack([v for _, v in cols])
        np.savetxt(
            out / f"{part}_data.csv", body, delimiter=",", header=header, comments="", fmt="%.5f"
        )


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a thread that starts a process is its parent)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], _children(pid)
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(_children(c))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def drill_day(a: argparse.Namespace) -> bool:
    data = a.out_data
    if not (data / "train_data.csv").exists():
        write_day(data, a.steps)
    out = a.work / "runs" / "day"
    log = a.work / "day.log"
    args = [
        "--data",
        str(data),
        "--live",
        "--source",
        "exec",
        "--speed",
        str(a.speed),
        "--period",
        str(a.period),
        "--rounds",
        str(a.live_rounds or a.steps // a.period),
        "--out",
        str(out),
    ]
    print(f"$ osml run {' '.join(args)}   (log {log})", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "osml.cli", "run", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    samples: list[dict[str, Any]] = []
    killed: dict[str, Any] = {}
    stopped: list[int] = []
    wall_total = a.steps / a.speed
    try:
        while proc.poll() is None:
            time.sleep(a.sample)
            agents = {}
            for pid in _children(proc.pid):
                cmd = _cmdline(pid)
                if "agent" in cmd and "--config" in cmd:
                    aid = Path(cmd[cmd.index("--config") + 1]).parent.name
                    agents[aid] = pid
            el = time.monotonic() - t0
            sample: dict[str, Any] = {"t": round(el, 1), "rss_kb": {}, "state_bytes": {}}
            for aid, pid in agents.items():
                sample["rss_kb"][aid] = _rss_kb(pid)
                st = out / "fleet" / "agents" / aid / "state"
                sample["state_bytes"][aid] = {
                    "total": _du(st),
                    "embeddings": _du(st / "embeddings"),
                    "rounds_jsonl": (st / "rounds.jsonl").stat().st_size
                    if (st / "rounds.jsonl").exists()
                    else 0,
                    "rounds": len(read_rounds(st)) if st.exists() else 0,
                }
            samples.append(sample)
            if not killed and a.kill and a.kill in agents and el > a.kill_at * wall_total:
                feeders = [
                    c for c in _descendants(agents[a.kill]) if "osml.ops.replay_exec" in _cmdline(c)
                ]
                # SIGSTOP: a hung feeder (a killed one would be restarted by the exec source and
                # replay again); the agent's source stop SIGKILLs its process group at the end.
                for c in feeders:
                    os.kill(c, signal.SIGSTOP)
                stopped.extend(feeders)
                killed = {"agent": a.kill, "pids": feeders, "at_s": round(el, 1)}
                print(f"    stopped (SIGSTOP) the feeder of agent {a.kill} {feeders} at {el:.0f} s")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
        for c in stopped:  # still there (the fleet should have ended it): end it
            if Path(f"/proc/{c}").exists() and "osml.ops.replay_exec" in _cmdline(c):
                os.kill(c, signal.SIGKILL)
    wall = time.monotonic() - t0
    (a.work / "day-samples.json").write_text(json.dumps(samples))
    ids = sorted({x for smp in samples for x in smp["rss_kb"]})
    samples_all = [smp for smp in samples if set(smp["rss_kb"]) == set(ids)]
    recs = {x: rounds_of(out, x) for x in ids}
    first_rss = next(
        (
            s
            for s in samples
            if all(s["rss_kb"].get(x) for x in ids)
            and all(s["state_bytes"][x]["rounds"] >= 1 for x in ids)
        ),
        None,
    )
    last_rss = next((s for s in reversed(samples) if all(s["rss_kb"].get(x) for x in ids)), None)
    rss = {
        x: (
            (first_rss["rss_kb"][x] // 1024) if first_rss else None,
            (last_rss["rss_kb"][x] // 1024) if last_rss else None,
            max((s["rss_kb"].get(x) or 0) for s in samples) // 1024,
        )
        for x in ids
    }
    sizes = {x: samples_all[-1]["state_bytes"][x] for x in ids} if samples_all else {}
    per_round = {x: sizes[x]["rounds_jsonl"] / max(1, sizes[x]["rounds"]) for x in ids}
    # Rounds of the other agents after the kill: did any wait out its deadline?
    kill_wall = (time.time() - (time.monotonic() - t0) + killed["at_s"]) if killed else None
    slow = {}
    stalled = {}
    for x in ids:
        after = [r for r in recs[x] if kill_wall is not None and r.time > kill_wall]
        slow[x] = max((r.round_s for r in after), default=0.0)
        stalled[x] = sum(r.source_stalled for r in after)
    others = [x for x in ids if x != a.kill]
    ok = bool(killed) and all(slow[x] < 5.0 for x in others) and stalled.get(a.kill, 0) > 0
    steps_done = {x: sum(r.steps for r in recs[x]) for x in ids}
    return verdict(
        "day",
        ok,
        f"{a.steps} steps at {a.speed:g}x in {wall:.0f} s; rounds "
        f"{ {x: len(recs[x]) for x in ids} }; windows embedded {steps_done}; RSS MB "
        f"(first round, end, peak) {rss}; state bytes at the end "
        f"{ {x: (v['total'], v['embeddings'], v['rounds_jsonl']) for x, v in sizes.items()} } "
        f"(total, embeddings, rounds.jsonl); rounds.jsonl bytes/round "
        f"{ {x: round(v) for x, v in per_round.items()} }; killed {killed or 'nothing'}; "
        f"after the kill: longest round_s {slow}, rounds with source_stalled {stalled}; "
        f"agent {ids[0] if ids else '-'} state over time (s: rounds, total, embeddings bytes) "
        + " ".join(
            f"{smp['t']:.0f}:{smp['state_bytes'][ids[0]]['rounds']},"
            f"{smp['state_bytes'][ids[0]]['total']},{smp['state_bytes'][ids[0]]['embeddings']}"
            for smp in samples_all[:: max(1, len(samples_all) // 8)]
        ),
        {"samples": str(a.work / "day-samples.json"), "rss_mb": rss, "sizes": sizes},
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 3 and argv[0] == "--rounds-config" and argv[2] == "osml":
        return as_osml([x for x in argv[1].split(";") if x.strip()], argv[3:])
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/drills"), help="logs and runs")
    ap.add_argument(
        "--json", type=Path, help="write the summary here (default WORK/summary-*.json)"
    )
    ap.add_argument(
        "--rounds-config",
        help="more [rounds] lines for every agent, ';'-separated, e.g. 'replay = 400'",
    )
    sub = ap.add_subparsers(dest="drill", required=True)

    def live(p: argparse.ArgumentParser, speed: float, period: int, rounds: int) -> None:
        p.add_argument("--speed", type=float, default=speed)
        p.add_argument("--period", type=int, default=period, help="live steps per round")
        p.add_argument("--live-rounds", type=int, default=rounds, help="live --rounds")
        p.add_argument("--skew", type=float, default=0.5, help="live --max-skew")
        p.add_argument("--drop", type=float, default=0.05, help="live --drop-readings")

    p = sub.add_parser("compare", help="1. a file run and a live run end alike")
    p.add_argument("--data", default="generated:complex")
    p.add_argument("--rounds", type=int, default=15, help="file run --rounds")
    p.add_argument("--seeds", default="0", help="comma list: a file and a live run per seed")
    live(p, 50, 100, 100)
    p = sub.add_parser("drift", help="2. AGENT:switch@AT:TO on a long generated:complex")
    p.add_argument("--kind", default="complex", help="generated:KIND")
    p.add_argument("--rows", type=int, default=3000, help="training rows of the generated data")
    p.add_argument("--agent", default="1", help="the device whose stream switches")
    p.add_argument("--to", default="2", help="the device whose signal it switches to")
    p.add_argument("--at", type=int, default=1500, help="row of the switch")
    p.add_argument("--target", type=int, default=5, help="rounds allowed")
    live(p, 25, 50, 60)
    p = sub.add_parser("anomaly", help="3. each fault kind on one device of generated:simple")
    p.add_argument("--kinds", default="stuck,spike,offset,noise")
    p.add_argument("--agent", default="1")
    p.add_argument("--rows", type=int, default=3000, help="training rows of generated:simple")
    p.add_argument("--at", type=int, default=1500, help="row the fault starts at")
    p.add_argument("--warmup", type=int, default=1200, help="rows not scored (warm-up)")
    p.add_argument("--window", type=int, default=10)
    live(p, 25, 50, 60)
    p = sub.add_parser("skew", help="4. --max-skew 0 vs 0.5")
    p.add_argument("--data", default="generated:complex")
    live(p, 50, 100, 100)
    p = sub.add_parser("day", help="5. 24 h of 1 s steps, accelerated, a feeder killed midway")
    p.add_argument("--out-data", type=Path, default=Path("/tmp/drills/day"))
    p.add_argument("--steps", type=int, default=86400)
    p.add_argument("--speed", type=float, default=500)
    p.add_argument("--period", type=int, default=2000)
    p.add_argument(
        "--live-rounds", type=int, default=0, help="live --rounds (0: the day, steps // period)"
    )
    p.add_argument("--sample", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--kill", default="M1", help="agent whose feeder is killed ('' for none)")
    p.add_argument("--kill-at", type=float, default=0.5, help="share of the replay")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    ROUNDS_EXTRA.extend(x.strip() for x in (a.rounds_config or "").split(";") if x.strip())
    fn = {
        "compare": drill_compare,
        "drift": drill_drift,
        "anomaly": drill_anomaly,
        "skew": drill_skew,
        "day": drill_day,
    }[a.drill]
    ok = fn(a)
    path = a.json or a.work / f"summary-{a.drill}-{int(time.time())}.json"
    path.write_text(json.dumps(SUMMARY, indent=2, default=str))
    print(f"summary: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
