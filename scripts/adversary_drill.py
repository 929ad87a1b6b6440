#!/usr/bin/env python3
"""Can a hostile neighbour split or capture honest agents? The drill matrix.

    python scripts/adversary_drill.py                         # the whole matrix (about 2 h)
    python scripts/adversary_drill.py --quick                 # a few attacks, simple data, seed 0
    python scripts/adversary_drill.py --attacks rotate-copy:angle=90:noise=1e-1 --seeds 0
    python scripts/adversary_drill.py --defences old --quick  # the same, defences as before
    python scripts/adversary_drill.py --data complex --seeds 0,1 --rounds 25 --settle 8
    python scripts/adversary_drill.py --data paper-complex,paper-simple --topology ring

Honest agents (generated simple: 0, 1 and the unrelated M0, 8 rounds; generated complex: 0-4, 12
rounds; or the paper's own data sets, read from ``../shared/reference-data/osml-paper``,
``paper-simple``: 0, 1 and the unrelated M0, M1, 8 rounds, ``paper-complex``: 0-4, 12 rounds;
or ``fleet``, ten devices of scripts/noniid_data.py in three groups and one unrelated; on
the full graph, or ``--topology ring`` or ``random:K`` among the honest agents) run with one
adversary ``x`` that is linked to every honest agent, sends real frames each
round and never learns (``osml simulate --adversary``; the kinds are in
``osml.ops.adversaries``). Every attack runs on every data set and seed next to the run of the
same data and seed with no attack. Per run it prints: the honest sub-contexts (x left out) and
whether they are the no-attack run's, whether x is in any sub-context, the largest mean osmosis
weight any honest agent gave x in any round, the centred alignment inside each true group minus
the no-attack run's, the same for the mean over the run's last ``--settle`` (4) evaluations
("settled": on generated complex a single round's figure swings by 0.01-0.05 from one round to
the next, with or without an attack), and what screening left out. Then a summary per attack:
sub-contexts unchanged in every run (y/n) and the worst deltas, and the count of runs within
``--tolerance`` of each.

``--floor K`` also runs the no-attack run K more times with the temperature changed by 0.1 %
(1.001, 0.999, 1.002, ...): how far the run's own figures move under a change that carries no
information at all. With the constant learning rate used before 2026-12-03, a single generated
complex seed's final figure moved by up to 0.025 that way (seed 1: {0,1} 0.9965 -> 0.9762 at
1.001), so a delta inside that floor said nothing about the attack; with the learning rate that
falls within each round it moves by 0.0004 at most (complex seeds 0-2, ``--floor 2``), so the
drill's deltas are the attack's. Each attack then also counts as within the floor when its
delta is no worse than the floor's worst minus ``--tolerance``.

Exits 1 if, with the defences on, an attack changes an honest sub-context or costs a group more
than ``--tolerance`` (0.01) of centred alignment against the no-attack run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from osml.agent.data import load_dataset
from osml.core.anchor import context_anchor
from osml.core.learner import LearnerSettings
from osml.core.screening import ScreenSettings
from osml.ops.adversaries import parse_adversary
from osml.ops.simulate import SimulationSettings, simulate

PAPER = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "osml-paper"

DATA = {
    "simple": ("generated:simple", ["0", "1", "M0"], 8, [["0", "1"], ["M0"]]),
    "complex": ("generated:complex", ["0", "1", "2", "3", "4"], 12, [["0", "1"], ["2", "3", "4"]]),
    # The paper's own data sets (read from ../shared, never copied into the project).
    "paper-simple": (
        str(PAPER / "simple-context"),
        ["0", "1", "M0", "M1"],
        8,
        [["0", "1"], ["M0"], ["M1"]],
    ),
    "paper-complex": (
        str(PAPER / "complex-context"),
        ["0", "1", "2", "3", "4"],
        12,
        [["0", "1"], ["2", "3", "4"]],
    ),
}


FLEET = {"groups": 3, "members": 3, "noise": 1, "seed": 0}  # ten devices, iid within a group


def fleet_data() -> tuple[str, list[str], int, list[list[str]]]:
    """A larger fleet for ``--data fleet``: scripts/noniid_data.py's generator with
    :data:`FLEET` (three groups of three and one unrelated device), written once to a temporary
    directory (12 rounds)."""
    import tempfile

    import noniid_data

    fleet = noniid_data.generate_fleet("iid", **FLEET)
    name = "osml-drill-fleet-{groups}x{members}+{noise}-{seed}".format(**FLEET)
    where = Path(tempfile.gettempdir()) / name
    if not (where / "test_data.csv").is_file():
        noniid_data.write_fleet(fleet, where)
    noise = [[a] for a in fleet.ids if fleet.group_of[a] < 0]
    return str(where), list(fleet.ids), 12, [*fleet.groups, *noise]


def matrix() -> list[str]:
    """Every attack of the drill: turned copies from 10 to 180 degrees, noise 1e-3 to 1e-1,
    per victim and alike, and the other kinds."""
    out = [f"rotate-copy:angle={a}:noise={n}" for a in (10, 45, 90, 180) for n in ("1e-3", "1e-1")]
    out += ["rotate-copy:angle=45:noise=1e-2"]
    out += ["rotate-copy:angle=90:noise=1e-3:to=all", "rotate-copy:angle=180:noise=1e-1:to=all"]
    out += [f"noisy-replay:noise={n}" for n in ("1e-3", "1e-1")]
    out += ["noisy-replay:noise=1e-2:to=all"]
    out += [f"echo:angle={a}:noise={n}" for a in (0, 90) for n in ("1e-3", "1e-1")]
    out += ["drift:noise=1e-3", "drift:noise=1e-1", "drift:noise=1e-2:to=all"]
    out += ["in-band-scale:noise=1e-3", "in-band-scale:noise=1e-1", "in-band-scale:to=all"]
    out += [f"aligned-copy:noise={n}" for n in ("1e-3", "1e-1")]
    out += ["aligned-copy:against=1:noise=1e-2", "aligned-copy:to=all"]
    out += ["reflect:noise=1e-3", "reflect:noise=1e-1:to=all"]
    out += ["copy", "copy:to=all", "constant", "scaled:factor=1e6", "replay"]
    return out


QUICK = [
    "rotate-copy:angle=90:noise=1e-3",
    "rotate-copy:angle=45:noise=1e-1",
    "echo:noise=1e-1",
    "copy",
]


DEFENCES = ("on", "no-order", "no-twins", "no-trim", "no-opposed", "old", "off")


def learner_settings(defences: str) -> LearnerSettings:
    """``on``: the defaults; ``no-order``: twins that vary against each other share their vote
    whichever came in first (as before 2026-12-04); ``no-twins``: without twins
    (near-duplicate members share no vote);
    ``no-trim``: the plain blend whatever the number of votes; ``no-opposed``: members that
    vary against the agent's own embeddings keep their vote (``min_agreement`` off); ``old``:
    the blend and screening before bounded influence (plain blend, exact copies only); ``off``:
    no screening at all and the plain blend."""
    if defences == "on":
        return LearnerSettings()
    if defences == "no-order":
        return LearnerSettings(screen=ScreenSettings(twin_order_below=-1.0))
    if defences == "no-twins":
        return LearnerSettings(screen=ScreenSettings(twin_threshold=0.0))
    if defences == "no-trim":
        return LearnerSettings(trim=0)
    if defences == "no-opposed":
        return LearnerSettings(min_agreement=-1.0)
    if defences == "old":
        exact = ScreenSettings(copy_threshold=1e-6, echo_threshold=0.0, twin_threshold=0.0)
        return LearnerSettings(trim=0, screen=exact, min_agreement=-1.0)
    off = ScreenSettings(
        max_scale=float("inf"),
        min_spread=0.0,
        copy_memory=0,
        copy_threshold=0.0,
        echo_threshold=0.0,
        twin_threshold=0.0,
    )
    return LearnerSettings(trim=0, screen=off, min_agreement=-1.0)


def floor_temperatures(k: int) -> list[float]:
    """The k perturbed temperatures of ``--floor``: 1.001, 0.999, 1.002, 0.998, ..."""
    return [1.0 + (1 if i % 2 == 0 else -1) * 1e-3 * (i // 2 + 1) for i in range(k)]


@dataclass(frozen=True)
class Setup:
    """What every run of a drill shares besides the data, seed and attack."""

    rounds: int | None = None  # None: the data set's own (DATA)
    topology: str = "full"
    adversary_first: bool = False
    embedding_dim: int = 5


def run_once(
    data: str,
    seed: int,
    attack: str | None,
    learner: LearnerSettings,
    setup: Setup = Setup(),
) -> dict:
    spec, ids, default_rounds, groups = DATA[data]
    rounds = default_rounds if setup.rounds is None else setup.rounds
    ds = load_dataset(spec, seed=seed)
    settings = SimulationSettings(
        rounds=rounds,
        seed=seed,
        learner=learner,
        topology=setup.topology,
        adversary_first=setup.adversary_first,
        embedding_dim=setup.embedding_dim,
    )
    advs = {}
    if attack:
        anchor = context_anchor(settings.context, settings.embedding_dim, settings.anchor_norm)
        advs["x"] = parse_adversary(attack, anchor, ids)
    rep = simulate(ds, settings, ids, adversaries=advs)
    final = rep.final
    screened = Counter(
        r for rnd in rep.rounds for per in (rnd.screened or {}).values() for r in per.values()
    )
    return {
        "subcontexts": {a: [m for m in s if m != "x"] for a, s in final.subcontexts.items()},
        "x_inside": any("x" in s for s in final.subcontexts.values()),
        "max_weight_x": max(
            (w.get("x", 0.0) for row in rep.rounds for w in (row.osmosis_weights or {}).values()),
            default=0.0,
        ),
        "centered": final.centered_alignment,
        # Each true group's centred alignment after every round (the final one last).
        "trajectory": {
            g: [
                v[g]
                for v in (group_alignment(row.centered_alignment, groups) for row in rep.rounds)
            ]
            for g in group_alignment(final.centered_alignment, groups)
        },
        "screened": dict(screened),
    }


def group_alignment(centered: dict, groups: list[list[str]]) -> dict[str, float]:
    c = centered
    return {
        ",".join(g): float(np.mean([c[a][b] for a in g for b in g if a != b]))
        for g in groups
        if len(g) > 1
    }


def settled(result: dict, last: int) -> dict[str, float]:
    """Each group's centred alignment averaged over the run's last ``last`` evaluations: on the
    generated complex data the figure of a single round swings by 0.01-0.05 from one round to
    the next, attack or not."""
    return {g: float(np.mean(v[-last:])) for g, v in result["trajectory"].items()}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        default="simple,complex",
        help=f"comma list of {', '.join(DATA)} or fleet (default: simple,complex; paper-* are "
        "the paper's data sets, read from ../shared/reference-data/osml-paper; fleet: ten "
        "devices in three groups and one unrelated, from scripts/noniid_data.py)",
    )
    ap.add_argument(
        "--topology",
        default="full",
        help="honest agents' links: full, ring or random:K (x is linked to all; default full)",
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--attacks", help="comma list of attack specs (default: the matrix)")
    ap.add_argument("--quick", action="store_true", help=f"attacks {QUICK}, simple data, seed 0")
    ap.add_argument("--defences", choices=DEFENCES, default="on", help="see learner_settings")
    ap.add_argument(
        "--adversary-first",
        action="store_true",
        help="x's frames reach every agent before the honest ones of the round (a copier on a "
        "faster path than its original: the worst case for the order rule)",
    )
    ap.add_argument(
        "--embedding-dim",
        type=int,
        default=5,
        help="embedding size of every agent (default 5; in an even one a turn by 180 degrees "
        "reflects every direction)",
    )
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--rounds", type=int, help="rounds per run (default: 8 simple, 12 complex)")
    ap.add_argument(
        "--settle",
        type=int,
        default=4,
        help="also compare the mean over the last SETTLE evaluations (default 4)",
    )
    ap.add_argument(
        "--floor",
        type=int,
        default=0,
        help="also run the no-attack run FLOOR times with the temperature 0.1%% off (see above)",
    )
    ap.add_argument("--json", help="also write every run's results here")
    args = ap.parse_args()
    if args.settle < 1:
        ap.error("--settle must be >= 1")
    if args.floor < 0:
        ap.error("--floor must be >= 0")
    if args.embedding_dim < 1:
        ap.error("--embedding-dim must be >= 1")
    attacks = args.attacks.split(",") if args.attacks else (QUICK if args.quick else matrix())
    datas = ["simple"] if args.quick else args.data.split(",")
    if "fleet" in datas:
        DATA["fleet"] = fleet_data()
    unknown = [d for d in datas if d not in DATA]
    if unknown:
        ap.error(f"--data: unknown {', '.join(unknown)}; use {', '.join(DATA)} or fleet")
    missing = [d for d in datas if d.startswith("paper-") and not Path(DATA[d][0]).is_dir()]
    if missing:
        ap.error(f"--data {', '.join(missing)}: no data set in {PAPER} (../shared beside the repo)")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    learner = learner_settings(args.defences)
    setup = Setup(args.rounds, args.topology, args.adversary_first, args.embedding_dim)
    out: list[dict] = []
    failed = False
    for data in datas:
        groups = DATA[data][3]
        for seed in seeds:
            base = run_once(data, seed, None, learner, replace(setup, adversary_first=False))
            base_groups = group_alignment(base["centered"], groups)
            base_settled = settled(base, args.settle)
            print(
                f"{data:7} seed {seed} no attack: subs {json.dumps(base['subcontexts'])} "
                + " ".join(f"{g}={v:.4f}" for g, v in base_groups.items())
                + f" (mean of the last {args.settle}: "
                + " ".join(f"{g}={v:.4f}" for g, v in base_settled.items())
                + ")",
                flush=True,
            )
            out.append({"data": data, "seed": seed, "attack": "none", **base})
            floor = {"final": 0.0, "settled": 0.0}  # the worst no-attack deltas of the floor
            for t in floor_temperatures(args.floor):
                nudged = run_once(
                    data,
                    seed,
                    None,
                    replace(learner, temperature=learner.temperature * t),
                    replace(setup, adversary_first=False),
                )
                fin = group_alignment(nudged["centered"], groups)
                fd = {g: v - base_groups[g] for g, v in fin.items()}
                sd = {g: v - base_settled[g] for g, v in settled(nudged, args.settle).items()}
                floor = {
                    "final": min(floor["final"], *fd.values()),
                    "settled": min(floor["settled"], *sd.values()),
                }
                print(
                    f"{data:7} seed {seed} no attack, temperature x{t:g}: subs "
                    f"{'same' if nudged['subcontexts'] == base['subcontexts'] else 'CHANGED'} "
                    + " ".join(f"d{g}={v:+.4f}" for g, v in fd.items())
                    + " settled "
                    + " ".join(f"d{g}={v:+.4f}" for g, v in sd.items()),
                    flush=True,
                )
                out.append(
                    {"data": data, "seed": seed, "attack": f"none, temperature x{t:g}", **nudged}
                )
            for attack in attacks:
                res = run_once(data, seed, attack, learner, setup)
                final = group_alignment(res["centered"], groups)
                deltas = {g: v - base_groups[g] for g, v in final.items()}
                calm = {g: v - base_settled[g] for g, v in settled(res, args.settle).items()}
                res.update(
                    data=data,
                    seed=seed,
                    attack=attack,
                    same_subcontexts=res["subcontexts"] == base["subcontexts"],
                    delta=deltas,
                    worst_delta=min(deltas.values()),
                    settled_delta=calm,
                    worst_settled_delta=min(calm.values()),
                )
                res["ok"] = res["same_subcontexts"] and res["worst_delta"] >= -args.tolerance
                if args.floor:
                    res["floor"] = dict(floor)
                    res["within_floor"] = res["same_subcontexts"] and (
                        res["worst_delta"] >= floor["final"] - args.tolerance
                    )
                    res["settled_within_floor"] = res["same_subcontexts"] and (
                        res["worst_settled_delta"] >= floor["settled"] - args.tolerance
                    )
                failed |= not res["ok"]
                out.append(res)
                print(
                    f"{data:7} seed {seed} {attack:<40} subs "
                    f"{'same' if res['same_subcontexts'] else 'CHANGED'} "
                    f"x_inside={res['x_inside']!s:<5} w(x)={res['max_weight_x']:.3f} "
                    + " ".join(f"d{g}={v:+.4f}" for g, v in deltas.items())
                    + " settled "
                    + " ".join(f"d{g}={v:+.4f}" for g, v in calm.items())
                    + f" screened={json.dumps(res['screened'])} {'ok' if res['ok'] else 'FAIL'}",
                    flush=True,
                )
    print(
        f"\nsummary (defences {args.defences}, topology {args.topology}, "
        f"dimension {args.embedding_dim}"
        f"{', x first' if args.adversary_first else ''}; "
        "delta = centred alignment minus no attack; "
        f"settled: of the mean over the last {args.settle} evaluations)"
    )
    print(
        f"{'attack':<40} {'runs':>4} {'subs same':>9} {'x inside':>8} {'max w(x)':>8} "
        f"{'worst delta':>11} {'worst settled':>13}"
    )
    for attack in attacks:
        runs = [r for r in out if r["attack"] == attack]
        print(
            f"{attack:<40} {len(runs):>4} "
            f"{'y' if all(r['same_subcontexts'] for r in runs) else 'n':>9} "
            f"{sum(r['x_inside'] for r in runs):>8} "
            f"{max(r['max_weight_x'] for r in runs):>8.3f} "
            f"{min(r['worst_delta'] for r in runs):>+11.4f} "
            f"{min(r['worst_settled_delta'] for r in runs):>+13.4f}",
            flush=True,
        )
    attacked = [r for r in out if not r["attack"].startswith("none")]
    for key in ("worst_delta", "worst_settled_delta"):
        within = sum(r[key] >= -args.tolerance for r in attacked)
        worst = min(attacked, key=lambda r: r[key], default=None)
        if worst is not None:
            print(
                f"{key}: {within} of {len(attacked)} runs within {args.tolerance}; worst "
                f"{worst[key]:+.4f} ({worst['data']}, seed {worst['seed']}, {worst['attack']})"
            )
    if args.floor:
        for key in ("within_floor", "settled_within_floor"):
            print(
                f"{key}: {sum(r[key] for r in attacked)} of {len(attacked)} runs no worse than "
                f"the no-attack floor ({args.floor} runs, temperature 0.1% off) minus "
                f"{args.tolerance}"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
    return 1 if failed and args.defences == "on" else 0


if __name__ == "__main__":
    sys.exit(main())
