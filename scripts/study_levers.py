#!/usr/bin/env python3
"""Measure the levers that decide what the embeddings keep (issue 12, item 3).

Each *variant* is a set of extra ``osml simulate`` options (``--embedding-dim 16``,
``--objective masked``, ``--trainer-set var_target=0.3``, ...). Every variant runs on every
labelled data set and seed, one run at a time, and the script prints one table row per (data
set, variant): the sub-contexts, the centred alignment inside them, and the report's downstream
kNN-5 and linear probes next to the raw anchors:

* **knn self**: the worst agent's kNN accuracy on its own embeddings;
* **knn transfer**: the worst fitted-on-a, scored-on-b accuracy inside a sub-context;
* **central**: the raw central anchor of that worst agent (its sub-context's raw windows);
* **gap**: ``knn self - central`` and ``knn transfer - knn self`` at their worst (the goals of
  issue 12: within -0.02 of central, transfer within -0.02 of self); for tabular sets also
  **own raw**: ``knn self - local`` (no device below its own raw features).

    python scripts/study_levers.py --data /tmp/osml-data/basicmotions \\
        --variant base= --variant dim16="--embedding-dim 16" --seeds 0,1,2 --out /tmp/levers

``--data`` is repeatable; ``NAME=ARGS`` names a variant (empty ARGS: the defaults). A data
set's own options (``--window 1`` for tabular sets) go after a colon: ``--data DIR:--window 1``.
Results are appended to ``OUT/levers.jsonl`` (one line per run; a run already there is not
repeated), and the table is written to ``OUT/levers.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def run_once(out: Path, data: str, data_args: list[str], variant: list[str], seed: int) -> Path:
    cmd = [sys.executable, "-m", "osml.cli", "simulate", "--data", data, "--seed", str(seed)]
    cmd += [*data_args, *variant, "--out", str(out), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return out / "report.json"


def groups_of(final: dict[str, Any]) -> list[tuple[str, ...]]:
    return sorted({tuple(v) for v in final["subcontexts"].values()})


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run (worst over agents, transfer only inside a sub-context)."""
    final = report["final"]
    subs = final["subcontexts"]
    ca = final["centered_alignment"]
    inside = [ca[a][b] for a in subs for b in subs[a] if b != a and b in ca.get(a, {})]
    out: dict[str, Any] = {
        "groups": ["".join("{" + ",".join(g) + "}") for g in groups_of(final)],
        "centred_inside": float(np.mean(inside)) if inside else None,
        "centred_inside_min": float(np.min(inside)) if inside else None,
    }
    ds = report.get("downstream")
    if not ds:
        return out
    for probe in ("knn", "linear"):
        table = ds[probe]
        emb = table["embedding"]
        selfs = {a: emb[a][a] for a in emb}
        transfer = [
            (emb[a][b], selfs[a]) for a in emb for b in subs.get(a, [a]) if b != a and b in emb[a]
        ]
        worst = min(selfs, key=lambda a: selfs[a])
        out[probe] = {
            "self": {a: v for a, v in selfs.items()},
            "self_min": selfs[worst],
            "central_of_min": table["central"][worst],
            "gap_central": min(selfs[a] - table["central"][a] for a in selfs),
            "gap_local": min(selfs[a] - table["local"][a] for a in selfs),
            "transfer_min": min((t for t, _ in transfer), default=None),
            "gap_transfer": min((t - s for t, s in transfer), default=None),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Export PYTHONPATH=$PWD/agent first so that the runs import this checkout.",
    )
    ap.add_argument("--data", action="append", required=True, help="DIR[:OPTIONS], repeatable")
    ap.add_argument(
        "--variant", action="append", default=[], help="NAME=OPTIONS, repeatable (default: base=)"
    )
    ap.add_argument("--seeds", default="0", help="comma list")
    ap.add_argument("--out", type=Path, default=Path("/tmp/levers"))
    a = ap.parse_args(argv)
    variants = [v.partition("=") for v in (a.variant or ["base="])]
    seeds = [int(s) for s in a.seeds.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / "levers.jsonl"
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[(r["data"], r["variant"], r["seed"])] = r
    total = len(a.data) * len(variants) * len(seeds)
    k = 0
    for spec in a.data:
        data, _, dargs = spec.partition(":")
        for name, _, vargs in variants:
            for seed in seeds:
                k += 1
                key = (spec, name, seed)
                if key in done:
                    continue
                run_dir = a.out / "runs" / f"{Path(data).name}-{name}-s{seed}"
                t0 = time.monotonic()
                rep = json.loads(
                    run_once(
                        run_dir, data, shlex.split(dargs), shlex.split(vargs), seed
                    ).read_text()
                )
                row = {"data": spec, "variant": name, "args": vargs, "seed": seed}
                row.update(figures(rep), seconds=round(time.monotonic() - t0, 1))
                done[key] = row
                with log.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                knn = row.get("knn", {})
                centred = row["centred_inside"] or 0.0
                print(
                    f"[{k}/{total}] {Path(data).name} {name} seed {seed}: {' '.join(row['groups'])}"
                    f" centred {centred:.3f} knn self {knn.get('self_min', 0):.3f}"
                    f" central {knn.get('central_of_min', 0):.3f} ({row['seconds']} s)",
                    flush=True,
                )
    table = summarise(
        [done[(s, n, seed)] for s in a.data for n, _, _ in variants for seed in seeds]
    )
    (a.out / "levers.md").write_text(table)
    print(table)
    return 0


def summarise(rows: list[dict[str, Any]]) -> str:
    """A markdown table: mean +- std over seeds per (data, variant)."""

    def ms(vals: list[float | None]) -> str:
        v = [x for x in vals if x is not None]
        if not v:
            return "-"
        return f"{np.mean(v):.3f}" + (f" ± {np.std(v):.3f}" if len(v) > 1 else "")

    head = (
        "| data | variant | seeds | sub-contexts | centred inside | knn self (worst) | central |"
        " self - central | transfer - self | self - own raw | linear self (worst) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    out = [head]
    keys: list[tuple[str, str]] = []
    for r in rows:
        if (r["data"], r["variant"]) not in keys:
            keys.append((r["data"], r["variant"]))
    for data, variant in keys:
        rs = [r for r in rows if r["data"] == data and r["variant"] == variant]
        subs = sorted({" ".join(r["groups"]) for r in rs})
        k = [r.get("knn", {}) for r in rs]
        lin = [r.get("linear", {}) for r in rs]
        out.append(
            f"| {Path(data.partition(':')[0]).name} | {variant} | {len(rs)} | {' / '.join(subs)} |"
            f" {ms([r['centred_inside'] for r in rs])} | {ms([x.get('self_min') for x in k])} |"
            f" {ms([x.get('central_of_min') for x in k])} |"
            f" {ms([x.get('gap_central') for x in k])} |"
            f" {ms([x.get('gap_transfer') for x in k])} | {ms([x.get('gap_local') for x in k])} |"
            f" {ms([x.get('self_min') for x in lin])} |\n"
        )
    return "".join(out)


if __name__ == "__main__":
    sys.exit(main())
