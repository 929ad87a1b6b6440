#!/usr/bin/env python3
"""Check the learning core against the acceptance thresholds, and time it.

Runs each scenario as its own ``osml simulate`` process (so wall time and peak RSS are those of a
real run, imports included) and then grades the run directory it wrote:

    python scripts/validate_core.py                       # paper data + generator, full + ring
    python scripts/validate_core.py --only paper --topologies full
    python scripts/validate_core.py --command run --extra "--drop-rate 0.2"   # over MQTT

Scenarios: simple context agents 0,1 (10 rounds); simple context all four (10 rounds); complex
context (15 rounds). Data: the paper's files (../shared/reference-data/osml-paper, or --paper DIR)
and the generator (held-out test data). Prints one table and writes it as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "reference-data" / "osml-paper"


class Reached(TypedDict):
    """The first round that met the alignment thresholds, and the run's wall time by then."""

    round: int
    elapsed_s: float | None


# Functional syntax: "pass" is a keyword.
Grade = TypedDict(
    "Grade",
    {"pass": bool, "checks": dict[str, bool], "notes": list[str], "reached": Reached | None},
)


def _checks(rep: dict, final: dict, scenario: str) -> tuple[dict[str, bool], list[str]]:
    strict, centred = final["strict_alignment"], final["centered_alignment"]
    sub = {a: set(v) for a, v in final["subcontexts"].items()}
    weights = final.get("osmosis_weights", {})
    checks: dict[str, bool] = {}
    notes: list[str] = []
    if scenario == "pair":
        s, c = strict["0"]["1"], centred["0"]["1"]
        checks["strict>=0.995"] = s >= 0.995
        checks["centered>=0.99"] = c >= 0.99
        checks["probe>=0.9"] = min(final["probe_r2"][a] for a in ("0", "1")) >= 0.9
        checks["spread>=0.1"] = min(final["spread"][a] for a in ("0", "1")) >= 0.1
        notes.append(
            f"strict {s:.4f} centred {c:.4f} probe "
            f"{final['probe_r2']['0']:.3f}/{final['probe_r2']['1']:.3f} "
            f"spread {final['spread']['0']:.3f}/{final['spread']['1']:.3f}"
        )
    elif scenario == "four":
        s = strict["0"]["1"]
        checks["strict01>=0.99"] = s >= 0.99
        checks["0,1 exclude M*"] = all(not ({"M0", "M1"} & sub[a]) for a in ("0", "1"))
        links = rep["neighbours"]
        checks["0,1 together"] = all(
            b in sub[a] for a, b in (("0", "1"), ("1", "0")) if b in links[a]
        )
        w = max(weights.get(a, {}).get(m, 0.0) for a in ("0", "1") for m in ("M0", "M1"))
        checks["weight on M*<0.05"] = w < 0.05
        checks["M0,M1 apart"] = "M1" not in sub["M0"] and "M0" not in sub["M1"]
        notes.append(
            f"strict01 {s:.4f} max weight on M* {w:.3f} subs "
            f"{json.dumps({a: sorted(v) for a, v in sub.items()})}"
        )
    else:
        truth = {
            "0": {"0", "1"},
            "1": {"0", "1"},
            "2": {"2", "3", "4"},
            "3": {"2", "3", "4"},
            "4": {"2", "3", "4"},
        }
        # An agent can only choose among its neighbours: on a ring, its true sub-context as seen
        # through its own links.
        links = rep["neighbours"]
        want = {a: truth[a] & ({a} | set(links[a])) for a in truth}
        checks["subcontexts"] = all(sub[a] == want[a] for a in want)
        pairs = [("0", "1"), ("2", "3"), ("2", "4"), ("3", "4")]
        checks["strict>=0.99"] = all(strict[a][b] >= 0.99 for a, b in pairs)
        checks["centered>=0.8"] = all(centred[a][b] >= 0.8 for a, b in pairs)
        notes.append(" ".join(f"{a}~{b} {strict[a][b]:.3f}/{centred[a][b]:.3f}" for a, b in pairs))
    return checks, notes


def grade(run: Path, scenario: str) -> Grade:
    rep = json.loads((run / "report.json").read_text())
    checks, notes = _checks(rep, rep["final"], scenario)
    # First round whose models already meet the alignment thresholds (sub-contexts included), and
    # the wall time the run had spent by then (imports excluded: elapsed_s starts after them).
    reached: Reached | None = None
    for i, entry in enumerate(rep["rounds"]):
        view = dict(entry)
        view["subcontexts"] = rep["rounds"][i - 1]["subcontexts"] if i > 0 else entry["subcontexts"]
        view.setdefault(
            "osmosis_weights", rep["rounds"][i - 1].get("osmosis_weights", {}) if i > 0 else {}
        )
        c, _ = _checks(rep, view, scenario)
        if all(v for k, v in c.items() if not k.startswith(("probe", "spread"))):
            reached = {"round": entry["round"], "elapsed_s": entry.get("elapsed_s")}
            break
    return {"pass": all(checks.values()), "checks": checks, "notes": notes, "reached": reached}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--paper", type=Path, default=PAPER)
    ap.add_argument("--only", choices=["paper", "generated"], default=None)
    ap.add_argument("--topologies", default="full,ring")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "validate")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--scenarios", default="pair,four,complex")
    ap.add_argument(
        "--command",
        choices=["simulate", "run"],
        default="simulate",
        help="osml simulate (one process) or osml run (agent processes over a private Mosquitto)",
    )
    ap.add_argument(
        "--extra", default="", help="extra flags for osml simulate, e.g. '--objective masked'"
    )
    args = ap.parse_args()
    sources = []
    if args.only in (None, "paper"):
        sources += [
            ("paper", str(args.paper / "simple-context"), str(args.paper / "complex-context"))
        ]
    if args.only in (None, "generated"):
        sources += [("generated", "generated:simple", "generated:complex")]
    rows = []
    for label, simple, complex_ in sources:
        for topo in args.topologies.split(","):
            for scenario, data, agents, rounds in (
                ("pair", simple, "0,1", 10),
                ("four", simple, None, 10),
                ("complex", complex_, None, 15),
            ):
                out = args.out / f"{args.command}-{label}-{topo}-{scenario}"
                cmd = [
                    sys.executable,
                    "-m",
                    "osml.cli",
                    args.command,
                    "--data",
                    data,
                    "--rounds",
                    str(rounds),
                    "--topology",
                    topo,
                    "--seed",
                    str(args.seed),
                    "--out",
                    str(out),
                    "--quiet",
                ]
                if scenario not in args.scenarios.split(","):
                    continue
                if agents:
                    cmd += ["--agents", agents]
                cmd += args.extra.split()
                t0 = time.perf_counter()
                with tempfile.TemporaryFile() as err:
                    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
                    # wait4 gives this child's own peak RSS (getrusage would give the max so far).
                    _, status, usage = os.wait4(proc.pid, 0)
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    err.seek(0)
                    stderr = err.read().decode(errors="replace")
                wall = time.perf_counter() - t0
                peak = usage.ru_maxrss
                if proc.returncode != 0:
                    print(
                        f"{label:9} {topo:5} {scenario:8} FAILED TO RUN: {stderr.strip()[-300:]}",
                        flush=True,
                    )
                    rows.append(
                        {
                            "data": label,
                            "topology": topo,
                            "scenario": scenario,
                            "pass": False,
                            "error": stderr[-2000:],
                        }
                    )
                    continue
                g = grade(out, scenario)
                row = {
                    "data": label,
                    "topology": topo,
                    "scenario": scenario,
                    "wall_s": round(wall, 1),
                    "peak_rss_mb": round(peak / 1024),
                    **g,
                }
                rows.append(row)
                failed = [k for k, v in g["checks"].items() if not v]
                reached = g["reached"]
                at = f"r{reached['round']}@{reached['elapsed_s'] or 0:.1f}s" if reached else "never"
                print(
                    f"{label:9} {topo:5} {scenario:8} {'PASS' if g['pass'] else 'FAIL':4} "
                    f"{wall:6.1f}s {at:>11} "
                    f"{row['peak_rss_mb']:5d}MB  {'; '.join(g['notes'])}"
                    + (f"  failed: {failed}" if failed else ""),
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
