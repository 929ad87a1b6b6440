#!/usr/bin/env python3
"""Non-IID x topology study: objectives x heterogeneity x topology x fleet size x seeds.

    python scripts/study_noniid.py --grid quick --out runs/study-quick      # smoke (< 1 min)
    python scripts/study_noniid.py --grid standard --out runs/study         # the study
    python scripts/study_noniid.py --out runs/x --objectives masked --heterogeneity iid,regimes \\
        --topologies ring,full --fleet 16 --seeds 0,1 --rounds 6            # one explicit grid
    python scripts/study_noniid.py --grid standard --parts b,c --out runs/study  # parts b, c only
    python scripts/study_noniid.py --out runs/study --report-only           # table + plots again

Each run simulates a generated heterogeneous fleet (scripts/noniid_data.py: groups of 4 devices
whose sources share a hidden regime; the heterogeneity level says how differently the members of
a group see them) with ``osml simulate``'s engine, in process, and appends one JSON line to
OUT/results.jsonl. Runs already there are skipped, so an interrupted study resumes. The
datasets are written once per (heterogeneity, fleet, seed) under OUT/data/.

Per run: sub-context accuracy (``link_acc``: share of neighbour links whose membership decision
matches the truth; ``exact``: share of agents whose final sub-context is exactly their true group
as far as their neighbours reach; ``pair_acc``: over every ordered pair of agents), centred
alignment within true groups and across them, the kNN-5 and linear probes of each group's regime
(own embeddings, transfer to the other members, raw local and central anchors), rounds until the
sub-contexts stop changing, rounds until every agent reports equilibrium, wall time.

The standard grid has three parts (a run shared by two parts is run once):
  a) every objective x heterogeneity {iid, dirichlet:10, dirichlet:0.3, regimes} x 3 seeds,
     16 agents (4 groups of 4), full (every agent hears its whole group: no topology effect);
  b) topology {ring, random:2, random:4, random:8, full} x objectives {vc, masked} x 3 seeds,
     16 agents, dirichlet:0.3 (infonce, four times slower, is left out of this sweep);
  c) fleet {8, 16, 32, 64} x 3 seeds, the default objective, random:4, dirichlet:0.3.
Explicit factor flags replace the grid by their full factorial (flags not given keep the quick
grid's single values). OUT/study.md gets the tables (mean +- std over seeds); with matplotlib,
OUT/img/ the plots.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from noniid_data import HETEROGENEITY_HELP, Fleet, generate_fleet, parse_heterogeneity
from osml.agent.data import AgentData, Dataset
from osml.trainer.settings import DEFAULT_OBJECTIVE, OBJECTIVES

GROUP_SIZE = 4
RESULTS_FILE = "results.jsonl"
TABLE_FILE = "study.md"
HETEROGENEITY = ("iid", "dirichlet:10", "dirichlet:0.3", "regimes")
TOPOLOGIES = ("ring", "random:2", "random:4", "random:8", "full")
FLEETS = (8, 16, 32, 64)
# Objectives of part b: the default and masked modelling. infonce costs about four times vc's
# time per run (three encoder passes per step), too much for the sweep on two shared cores; add
# it with --objectives infonce --topologies ... --heterogeneity dirichlet:0.3 --fleet 16.
TOPOLOGY_OBJECTIVES = ("vc", "masked")


@dataclass(frozen=True)
class Cell:
    """One run of the study: a point of the grid and a seed."""

    part: str
    objective: str
    heterogeneity: str
    topology: str
    fleet: int
    seed: int
    rounds: int

    @property
    def key(self) -> str:
        return (
            f"{self.objective}|{self.heterogeneity}|{self.topology}|{self.fleet}|{self.seed}"
            f"|{self.rounds}"
        )


# ----------------------------------------------------------------------------- the grid


def standard_grid(seeds: Sequence[int], rounds: int) -> list[Cell]:
    cells = []
    for o in OBJECTIVES:
        for h in HETEROGENEITY:
            cells += [Cell("a", o, h, "full", 16, s, rounds) for s in seeds]
    for t in TOPOLOGIES:
        for o in (o for o in TOPOLOGY_OBJECTIVES if o in OBJECTIVES):
            cells += [Cell("b", o, "dirichlet:0.3", t, 16, s, rounds) for s in seeds]
    for n in FLEETS:
        cells += [Cell("c", DEFAULT_OBJECTIVE, "dirichlet:0.3", "random:4", n, s, rounds)
                  for s in seeds]  # fmt: skip
    return cells


def explicit_grid(
    objectives: Sequence[str],
    heterogeneity: Sequence[str],
    topologies: Sequence[str],
    fleets: Sequence[int],
    seeds: Sequence[int],
    rounds: int,
    part: str = "x",
) -> list[Cell]:
    return [
        Cell(part, o, h, t, n, s, rounds)
        for o in objectives
        for h in heterogeneity
        for t in topologies
        for n in fleets
        for s in seeds
    ]


def dedupe(cells: Iterable[Cell]) -> list[Cell]:
    """The cells in order, each key once (the part of its first appearance)."""
    seen: set[str] = set()
    out = []
    for c in cells:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


# ----------------------------------------------------------------------------- metrics (pure)


def subcontext_scores(
    subcontexts: Mapping[str, Sequence[str]],
    neighbours: Mapping[str, Sequence[str]],
    group_of: Mapping[str, int],
) -> dict[str, float]:
    """Sub-context accuracy of the final sub-contexts against the true groups (-1: no group).

    ``link_acc``: over every (agent, neighbour) link, is the neighbour a member exactly when it is
    in the agent's true group; ``exact``: share of agents whose sub-context equals their true group
    within their reach (themselves and their neighbours: on a ring, no agent can see its whole
    group); ``pair_acc``: over every ordered pair of distinct agents, member iff same group (so a
    sparse topology loses the pairs it cannot link); ``precision``: share of the members (the
    agent itself left out) that are in the agent's group; ``recall``: share of the group-mates
    among an agent's neighbours that are members."""

    def same(a: str, b: str) -> bool:
        return group_of[a] >= 0 and group_of[a] == group_of[b]

    ids = list(subcontexts)
    links = [(a, b) for a in ids for b in neighbours.get(a, []) if b in group_of]
    link_ok = [(b in subcontexts[a]) == same(a, b) for a, b in links]
    exact = []
    for a in ids:
        reach = [a, *neighbours.get(a, [])]
        truth = {b for b in reach if b == a or same(a, b)}
        exact.append(set(subcontexts[a]) == truth)
    pairs = [(b in subcontexts[a]) == same(a, b) for a in ids for b in ids if b != a]
    members = [same(a, b) for a in ids for b in subcontexts[a] if b != a]
    found = [b in subcontexts[a] for a, b in links if same(a, b)]
    return {
        "link_acc": _mean(link_ok),
        "exact": _mean(exact),
        "pair_acc": _mean(pairs),
        "precision": _mean(members),
        "recall": _mean(found),
    }


def group_of_ids(ids: Iterable[str]) -> dict[str, int]:
    """The true groups from the generator's ids: ``g<G>m<M>`` -> G, a noise device -> -1."""
    return {a: int(a[1:].split("m")[0]) if a.startswith("g") else -1 for a in ids}


def rescore(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its sub-context scores computed again from its final sub-contexts (the
    topology is rebuilt from its name and seed), so that rows written before a score was added
    have it too."""
    from osml.core.topology import neighbours

    subs = row["subcontexts"]
    links = neighbours(list(subs), row["topology"], row["seed"])
    return {**row, **subcontext_scores(subs, links, group_of_ids(subs))}


def alignment_scores(
    centred: Mapping[str, Mapping[str, float | None]], group_of: Mapping[str, int]
) -> dict[str, float]:
    """Mean centred alignment over ordered pairs within one true group and across groups."""
    within: list[float] = []
    across: list[float] = []
    for a, row in centred.items():
        for b, v in row.items():
            if v is None or b == a or not math.isfinite(v):
                continue
            same = group_of[a] >= 0 and group_of[a] == group_of[b]
            (within if same else across).append(v)
    return {"align_within": _mean(within), "align_across": _mean(across)}


def stability_rounds(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """From the report's rows: ``stable_round``, the number of exchanges after which every agent's
    sub-context is already its final one and stays so (``rounds`` if only the last did it; 0 can
    not happen: the first exchange sets the sub-contexts); ``equilibrium_round``, the number of
    exchanges after which every agent reports equilibrium and keeps doing so (nan: never), and
    ``equilibrium_share``, the share of agents in equilibrium after the last exchange."""
    exchanged = [r for r in rows if r.get("equilibrium") is not None]
    if not exchanged:
        return {"stable_round": math.nan, "equilibrium_round": math.nan, "equilibrium_share": 0.0}
    final = {a: sorted(s) for a, s in exchanged[-1]["subcontexts"].items()}
    stable = len(exchanged)
    for i in range(len(exchanged) - 1, -1, -1):
        now = {a: sorted(s) for a, s in exchanged[i]["subcontexts"].items()}
        if now != final:
            break
        stable = i + 1
    eq_round = math.nan
    for i in range(len(exchanged) - 1, -1, -1):
        if not all(exchanged[i]["equilibrium"].values()):
            break
        eq_round = float(i + 1)
    last = exchanged[-1]["equilibrium"]
    return {
        "stable_round": float(stable),
        "equilibrium_round": eq_round,
        "equilibrium_share": _mean(bool(v) for v in last.values()),
    }


def probe_scores(sections: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Means over the per-group downstream sections (each the JSON of
    :class:`osml.ops.downstream.Downstream`, fitted on one group's regime): per probe, ``self``
    (each member on its own embeddings), ``transfer`` (fitted on one member, scored on another's),
    ``local`` and ``central`` (the raw anchors), and ``majority``."""
    out: dict[str, list[float]] = {}

    def add(key: str, value: Any) -> None:
        if value is not None and math.isfinite(value):
            out.setdefault(key, []).append(float(value))

    for sec in sections:
        add("majority", sec.get("majority"))
        for probe in ("knn", "linear"):
            table = sec.get(probe) or {}
            for a, row in (table.get("embedding") or {}).items():
                for b, v in row.items():
                    add(f"{probe}_self" if a == b else f"{probe}_transfer", v)
            for kind in ("local", "central"):
                for v in (table.get(kind) or {}).values():
                    add(f"{probe}_{kind}", v)
    return {k: statistics.fmean(v) for k, v in sorted(out.items())}


def _mean(values: Iterable[Any]) -> float:
    vals = [float(v) for v in values]
    return statistics.fmean(vals) if vals else math.nan


# ----------------------------------------------------------------------------- one run


def fleet_for(cell: Cell) -> Fleet:
    groups, noise = divmod(cell.fleet, GROUP_SIZE)
    return generate_fleet(cell.heterogeneity, groups=groups, members=GROUP_SIZE, noise=noise,
                          seed=cell.seed)  # fmt: skip


def _dataset(fleet: Fleet, ids: Sequence[str], labels: int | None) -> Dataset:
    agents = tuple(AgentData(a, fleet.train[a], fleet.test[a]) for a in ids)
    train, test = fleet.labels(labels) if labels is not None else (None, None)
    return Dataset(f"noniid:{fleet.heterogeneity}", agents, train_labels=train, test_labels=test)


def run_cell(cell: Cell, data_root: Path | None = None) -> dict[str, Any]:
    """Simulate one cell and score it (the JSON line of the results file)."""
    from osml.ops.downstream import downstream
    from osml.ops.simulate import SimulationSettings, simulate
    from osml.trainer import TrainerSettings

    fleet = fleet_for(cell)
    if data_root is not None:
        from noniid_data import write_fleet

        where = data_root / f"{cell.heterogeneity.replace(':', '-')}_n{cell.fleet}_s{cell.seed}"
        if not (where / "groups.json").exists():
            write_fleet(fleet, where)
    settings = SimulationSettings(
        rounds=cell.rounds,
        topology=cell.topology,
        seed=cell.seed,
        trainer=TrainerSettings(objective=cell.objective),
    )
    t0 = time.perf_counter()
    result = simulate(_dataset(fleet, fleet.ids, None), settings)
    wall = time.perf_counter() - t0
    report = result.report()
    final = report["final"]
    sections = []
    for g, members in enumerate(fleet.groups):
        sec = downstream(
            _dataset(fleet, members, g),
            {a: result.embeddings[a] for a in members},
            final["subcontexts"],
            settings.window,
        )
        assert sec is not None
        sections.append(sec.to_json())
    scores: dict[str, Any] = {
        **subcontext_scores(final["subcontexts"], report["neighbours"], fleet.group_of),
        **alignment_scores(final["centered_alignment"], fleet.group_of),
        **stability_rounds(report["rounds"]),
        **probe_scores(sections),
        "wall_s": round(wall, 2),
    }
    return {
        **asdict(cell),
        "key": cell.key,
        **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
           for k, v in scores.items()},
        "subcontexts": final["subcontexts"],
    }  # fmt: skip


def done_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- aggregation

METRICS = (
    ("link_acc", "link acc"),
    ("precision", "members right"),
    ("recall", "mates found"),
    ("exact", "exact group"),
    ("align_within", "align within"),
    ("align_across", "align across"),
    ("knn_self", "kNN self"),
    ("knn_transfer", "kNN transfer"),
    ("knn_central", "kNN central (raw)"),
    ("stable_round", "stable after"),
    ("wall_s", "wall s"),
)
FACTORS = ("objective", "heterogeneity", "topology", "fleet", "rounds")


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean, std and count over seeds per (objective, heterogeneity, topology, fleet, rounds), in
    first-seen order; a metric that is None or nan in a run (never reached, undefined) is left
    out of its mean."""
    cells: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        cells.setdefault(tuple(r[f] for f in FACTORS), []).append(r)
    out = []
    for key, runs in cells.items():
        agg: dict[str, Any] = dict(zip(FACTORS, key))
        agg["seeds"] = len(runs)
        agg["parts"] = sorted({r["part"] for r in runs})
        for m, _ in METRICS:
            vals = [float(r[m]) for r in runs if r.get(m) is not None]
            vals = [v for v in vals if math.isfinite(v)]  # nan: undefined in that run
            agg[m] = statistics.fmean(vals) if vals else math.nan
            agg[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


def _order(agg: Mapping[str, Any]) -> tuple[Any, ...]:
    """Grid order: objectives as registered, the levels and topologies as listed, fleet size."""

    def at(values: Sequence[str], value: str) -> int:
        return values.index(value) if value in values else len(values)

    return (
        at(OBJECTIVES, agg["objective"]),
        at(HETEROGENEITY, agg["heterogeneity"]),
        at(TOPOLOGIES, agg["topology"]),
        agg["fleet"],
        agg["rounds"],
    )


def _cell_text(mean: float, std: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(aggs: Sequence[Mapping[str, Any]], factors: Sequence[str] = FACTORS) -> str:
    heads = [*factors, "seeds", *(label for _, label in METRICS)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for a in aggs:
        cells = [str(a[f]) for f in factors] + [str(a["seeds"])]
        for m, _ in METRICS:
            digits = 1 if m in ("stable_round", "wall_s") else 2
            cells.append(_cell_text(a[m], a[m + "_std"], digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(out: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """OUT/study.md: one table per part of the grid (a run in two parts is in both)."""
    parts = sorted({r["part"] for r in rows})
    text = ["# Non-IID x topology study", ""]
    titles = {
        "a": "a) objective x heterogeneity (16 agents, full)",
        "b": "b) topology (16 agents, dirichlet:0.3)",
        "c": "c) fleet size (default objective, random:4, dirichlet:0.3)",
    }
    for p in parts:
        mine = sorted(aggregate([r for r in rows if p in r.get("parts", [r["part"]])]), key=_order)
        # Factors that do not vary within the part go to one line above the table.
        varying = [f for f in FACTORS if len({a[f] for a in mine}) > 1] or ["objective"]
        fixed = ", ".join(f"{f} {mine[0][f]}" for f in FACTORS if f not in varying)
        text += [f"## {titles.get(p, p)}", "", f"Fixed: {fixed}.", ""]
        text += [markdown_table(mine, varying), ""]
    total = sum(float(r["wall_s"]) for r in rows)
    text += [f"{len(rows)} runs, {total / 60:.1f} min of simulation in all.", ""]
    path = out / TABLE_FILE
    path.write_text("\n".join(text))
    return path


def plot(out: Path, rows: Sequence[Mapping[str, Any]], img: Path) -> list[Path]:
    """Up to three PNGs: metric vs heterogeneity per objective, vs topology per objective, vs
    fleet size; error bars are the std over seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'osml[plot]')")
        return []
    img.mkdir(parents=True, exist_ok=True)
    shown = (("align_within", "centred alignment within groups"),
             ("exact", "agents whose sub-context is their group"),
             ("knn_transfer", "kNN-5 transfer accuracy"))  # fmt: skip
    written = []
    for part, factor, name in (
        ("a", "heterogeneity", "study_heterogeneity.png"),
        ("b", "topology", "study_topology.png"),
        ("c", "fleet", "study_fleet.png"),
    ):
        mine = [r for r in rows if part in r.get("parts", [r["part"]])]
        if not mine:
            continue
        aggs = sorted(aggregate(mine), key=_order)
        levels = list(dict.fromkeys(a[factor] for a in aggs))
        fig, axes = plt.subplots(1, len(shown), figsize=(11, 3.2))
        for ax, (metric, title) in zip(axes, shown):
            for obj in dict.fromkeys(a["objective"] for a in aggs):
                pts = [next((a for a in aggs if a["objective"] == obj and a[factor] == lv), None)
                       for lv in levels]  # fmt: skip
                xs = [i for i, p in enumerate(pts) if p is not None]
                ys = [pts[i][metric] for i in xs]  # type: ignore[index]
                es = [pts[i][metric + "_std"] for i in xs]  # type: ignore[index]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=obj)
            ax.set_xticks(range(len(levels)), [str(lv) for lv in levels], fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(factor, fontsize=8)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = img / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def report(out: Path, img: Path | None = None) -> None:
    rows = load_results(out / RESULTS_FILE)
    if not rows:
        print(f"no results in {out / RESULTS_FILE}")
        return
    # A run shared by two parts of the grid counts in both (resolved from the current grid).
    rows = [rescore(dict(r, parts=r.get("parts") or [r["part"]])) for r in rows]
    print(f"wrote {write_tables(out, rows)}")
    for p in plot(out, rows, img or out / "img"):
        print(f"wrote {p}")


# ----------------------------------------------------------------------------- the CLI


def _list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def build_grid(args: argparse.Namespace) -> list[Cell]:
    explicit = any(
        getattr(args, k) is not None for k in ("objectives", "heterogeneity", "topologies", "fleet")
    )
    seeds = [int(s) for s in _list(args.seeds)] if args.seeds else None
    if args.grid == "standard" and not explicit:
        return standard_grid(seeds or [0, 1, 2], args.rounds or 6)
    quick = args.grid == "quick" and not explicit
    return explicit_grid(
        _list(args.objectives) if args.objectives else [DEFAULT_OBJECTIVE],
        _list(args.heterogeneity) if args.heterogeneity else ["dirichlet:0.3"],
        _list(args.topologies) if args.topologies else ["full"],
        [int(n) for n in _list(args.fleet)] if args.fleet else [8],
        seeds or [0],
        args.rounds or (2 if quick else 6),
        part="quick" if quick else "x",
    )


def check_grid(cells: Sequence[Cell]) -> None:
    """Every name checked before the first run (a typo fails at once)."""
    from osml.core.topology import neighbours

    for c in cells:
        if c.objective not in OBJECTIVES:
            raise SystemExit(f"objective {c.objective!r}: registered ones are {OBJECTIVES}")
        try:
            parse_heterogeneity(c.heterogeneity)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        if c.fleet < 2:
            raise SystemExit(f"fleet {c.fleet}: at least 2 agents")
        try:
            neighbours([str(i) for i in range(c.fleet)], c.topology, c.seed)
        except Exception as exc:  # ConfigError: names the impossible topology
            raise SystemExit(f"fleet {c.fleet}, topology {c.topology}: {exc}") from None


PROGRESS = (
    ("link_acc", "link"),
    ("exact", "exact"),
    ("align_within", "align-in"),
    ("align_across", "align-out"),
    ("knn_transfer", "knn-transfer"),
    ("stable_round", "stable"),
    ("wall_s", "s"),
)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", choices=("quick", "standard"), default="quick",
                        help="quick: 8 agents (two groups), 2 rounds, one run; standard: the "
                        "three-part study above  [default: quick]")  # fmt: skip
    parser.add_argument("--objectives", help=f"comma list from {', '.join(OBJECTIVES)}")
    parser.add_argument("--heterogeneity", help=f"comma list of: {HETEROGENEITY_HELP}")
    parser.add_argument("--topologies", help="comma list of full, ring, random:K")
    parser.add_argument("--fleet", help="comma list of fleet sizes (groups of 4, the rest noise)")
    parser.add_argument("--seeds", help="comma list of seeds  [default: 0,1,2 standard, 0 else]")
    parser.add_argument("--rounds", type=int, help="exchange rounds  [default: 6, quick 2]")
    parser.add_argument("--parts", help="comma list of the standard grid's parts to run, in "
                        "this order, e.g. b,c,a  [default: all, a first]")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="results directory")
    parser.add_argument("--img", type=Path, help="where the plots go  [default: OUT/img]")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="no runs: rewrite OUT/study.md and the plots from the results",
    )
    parser.add_argument("--no-data", action="store_true",
                        help="do not write the datasets under OUT/data")  # fmt: skip
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        cells = dedupe(build_grid(args))
        check_grid(cells)
        results = out / RESULTS_FILE
        done = done_keys(results)
        # A key run in one part serves the others: remember every part it belongs to.
        parts: dict[str, list[str]] = {}
        for c in build_grid(args):
            parts.setdefault(c.key, [])
            if c.part not in parts[c.key]:
                parts[c.key].append(c.part)
        if args.parts:
            # Run the chosen parts of the grid, in the order given (a run keeps every part it
            # belongs to in the whole grid).
            order = _list(args.parts)
            first: dict[str, int] = {}
            for c in cells:
                first.setdefault(c.key, min((order.index(p) for p in parts[c.key] if p in order),
                                            default=-1))  # fmt: skip
            cells = sorted((c for c in cells if first[c.key] >= 0), key=lambda c: first[c.key])
        todo = [c for c in cells if c.key not in done]
        print(f"{len(cells)} runs in the grid, {len(cells) - len(todo)} done, {len(todo)} to go")
        t_all = time.perf_counter()
        for i, cell in enumerate(todo, 1):
            row = run_cell(cell, None if args.no_data else out / "data")
            row["parts"] = parts[cell.key]
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            shown = " ".join(f"{label} {_num(row.get(m))}" for m, label in PROGRESS)
            took = time.perf_counter() - t_all
            print(f"[{i}/{len(todo)}] {cell.key}: {shown} (total {took:.0f}s)", flush=True)
    report(out, args.img)
    return 0


if __name__ == "__main__":
    sys.exit(main())
