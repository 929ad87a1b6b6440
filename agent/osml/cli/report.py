"""``osml report``: the summary of a run directory, its downstream probes, and missing plots."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from osml.cli.errors import one_line_errors

__all__ = ["downstream_table", "report_command"]

REPORT_EPILOG = "\b\nExample:\n  osml report runs/demo"

_PROBE_NAMES = {"linear": "linear", "knn": "kNN-5"}


def _acc(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.3f}"
    return "-"


def downstream_table(section: Mapping[str, Any]) -> str:
    """The report's ``downstream`` section as a plain-text table of accuracies.

    One row per probe and agent it was fitted on: the raw-window anchors (the agent's own
    windows, its sub-context's windows side by side), then the probe fitted on the agent's
    embeddings and scored on each agent's embeddings of the same steps (the transfer matrix).
    """
    members = section.get("central_members") or {}
    agents = list(members) or list((section.get("linear") or {}).get("local") or {})
    header = ["probe", "fitted on", "sub-context", "raw own", "raw sub-ctx"]
    header += [f"emb->{b}" for b in agents]
    rows = []
    for probe, name in _PROBE_NAMES.items():
        table = section.get(probe) or {}
        transfer = table.get("embedding") or {}
        for a in agents:
            rows.append(
                [
                    name,
                    a,
                    ",".join(members.get(a) or [a]),
                    _acc((table.get("local") or {}).get(a)),
                    _acc((table.get("central") or {}).get(a)),
                    *(_acc((transfer.get(a) or {}).get(b)) for b in agents),
                ]
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    classes = section.get("classes") or []
    window = section.get("window")
    gap = window - 1 if isinstance(window, int) else "?"
    majority = _acc(section.get("majority"))
    fit, scored = section.get("fit_windows", "?"), section.get("score_windows", "?")
    title = (
        f"downstream accuracy ({len(classes)} classes, majority {majority}): "
        f"fitted on {fit} test windows, scored on {scored} others"
    )
    dropped = (
        "windows of one step never overlap"
        if gap == 0
        else f"the first {gap} of each block dropped, so no fitted window shares a step with a "
        "scored one"
    )
    how = textwrap.wrap(
        f"The test windows in {section.get('blocks', '?')} blocks, alternately fitted and "
        f"scored; {dropped}. raw own: the agent's raw windows; raw sub-ctx: its sub-context's "
        "side by side; emb->B: fitted on the agent's embeddings, scored on B's.",
        width=100,
    )
    rule = line(["-" * w for w in widths])
    return "\n".join([title, line(header), rule, *map(line, rows), *how])


@click.command("report", epilog=REPORT_EPILOG)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR")
@click.option("--replot", is_flag=True, help="Redraw the plots even if they exist.")
@one_line_errors
def report_command(run_dir: Path, replot: bool) -> None:
    """Print the final state of a run written by osml simulate or osml run; with labelled data,
    the downstream probes too; draw missing plots."""
    from osml.ops import report

    run = report.load_run(run_dir)
    click.echo(report.summary_table(run))
    section = run.get("downstream")
    if isinstance(section, Mapping):
        click.echo()
        click.echo(downstream_table(section))
    if not report.plots_available():
        click.echo(f"plots skipped: matplotlib is not installed ({report.PLOT_INSTALL_HINT})")
        return
    for path in report.write_plots(run_dir, run, overwrite=replot):
        click.echo(f"wrote {path}")
