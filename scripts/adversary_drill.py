#!/usr/bin/env python3
"""Can a hostile neighbour take over? Honest agents with one adversary, screening on and off.

    python scripts/adversary_drill.py                       # generated simple pair + adversary
    python scripts/adversary_drill.py --data generated:complex --agents 0,1,2,3,4 --rounds 12

For each attack (none, constant, scaled:SRC:1e6, replay:SRC:3) it runs ``osml simulate``'s core
with the adversary ``x`` linked to every honest agent (full topology), once with the agents'
screening (the default) and once with it switched off, and prints per run: the honest agents'
sub-contexts, whether ``x`` is in any of them, the largest mean osmosis weight on ``x``, the
centred alignment inside each true group, the honest embeddings' median norm (a scale attack
that gets through inflates it) and what screening left out. Exits 1 if, with screening on, an
attack changes an honest sub-context, lets ``x`` in, or costs a group more than 0.05 of
alignment against the no-attack run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

import numpy as np

from osml.agent.data import load_dataset
from osml.core.anchor import context_anchor
from osml.core.learner import LearnerSettings
from osml.core.screening import ScreenSettings, median_norm
from osml.ops.adversaries import parse_adversary
from osml.ops.simulate import SimulationSettings, simulate

OFF = ScreenSettings(max_scale=float("inf"), min_spread=0.0, copy_memory=0)


def run_once(ds, ids, attack: str | None, screening: bool, rounds: int, seed: int) -> dict:
    settings = SimulationSettings(
        rounds=rounds,
        seed=seed,
        learner=LearnerSettings(screen=ScreenSettings() if screening else OFF),
    )
    advs = {}
    if attack:
        anchor = context_anchor(settings.context, settings.embedding_dim, settings.anchor_norm)
        advs["x"] = parse_adversary(attack, anchor, ids)
    rep = simulate(ds, settings, ids, adversaries=advs)
    final = rep.final
    subs = {a: sorted(s) for a, s in final.subcontexts.items()}
    weights = final.osmosis_weights
    screened = Counter(
        r for rnd in rep.rounds for per in (rnd.screened or {}).values() for r in per.values()
    )
    return {
        "subcontexts": subs,
        "x_inside": any("x" in s for s in subs.values()),
        "max_weight_x": max((w.get("x", 0.0) for w in weights.values()), default=0.0),
        "centered": final.centered_alignment,
        "norm": float(np.median([median_norm(e) for e in rep.embeddings.values()])),
        "screened": dict(screened),
    }


def group_alignment(result: dict, groups: list[list[str]]) -> dict[str, float]:
    c = result["centered"]
    return {
        ",".join(g): float(np.mean([c[a][b] for a in g for b in g if a != b]))
        for g in groups
        if len(g) > 1
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", default="generated:simple", help="dataset spec (default generated:simple)"
    )
    ap.add_argument("--agents", default="0,1,M0", help="honest agents (default 0,1,M0)")
    ap.add_argument("--source", default="0", help="whose embeddings the scaled/replay attacks use")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    ds = load_dataset(args.data, seed=args.seed)
    ids = args.agents.split(",")
    attacks = [None, "constant", f"scaled:{args.source}:1e6", f"replay:{args.source}:3"]
    out, failed = [], False
    baseline = None
    for screening in (True, False):
        for attack in attacks:
            print(
                f"... {attack or 'no attack'}, screening {'on' if screening else 'off'}",
                file=sys.stderr,
                flush=True,
            )
            res = run_once(ds, ids, attack, screening, args.rounds, args.seed)
            if baseline is None:
                baseline = res
            groups = sorted({tuple(s) for s in baseline["subcontexts"].values()})
            res["groups"] = group_alignment(res, [list(g) for g in groups])
            res.update(attack=attack or "none", screening=screening)
            if screening and attack:
                base = group_alignment(baseline, [list(g) for g in groups])
                res["ok"] = (
                    res["subcontexts"] == baseline["subcontexts"]
                    and not res["x_inside"]
                    and all(res["groups"][g] >= base[g] - 0.05 for g in base)
                )
                failed |= not res["ok"]
            out.append(res)
            groups_txt = " ".join(f"{g}={v:.3f}" for g, v in res["groups"].items())
            print(
                f"{res['attack']:<18} screening={'on ' if screening else 'off'} "
                f"x_inside={res['x_inside']!s:<5} "
                f"w(x)={res['max_weight_x']:.3f} norm={res['norm']:.3g} {groups_txt} "
                f"screened={json.dumps(res['screened'])}"
                + ("" if "ok" not in res else f" {'PASS' if res['ok'] else 'FAIL'}"),
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
