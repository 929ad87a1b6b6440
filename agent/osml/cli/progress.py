"""What ``osml simulate`` and ``osml run`` print: a line per round, then the run summary."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from osml import __version__

if TYPE_CHECKING:
    from osml.cli.options import Job
    from osml.ops.rows import ReportRound, RunResult

__all__ = ["LINE_WIDTH", "announce", "finish", "print_rounds", "progress_line"]

LINE_WIDTH = 100


def _groups(subcontexts: Mapping[str, Sequence[str]]) -> list[tuple[str, ...]]:
    """Distinct sub-contexts as the agents see them, larger first."""
    return sorted({tuple(sorted(s)) for s in subcontexts.values()}, key=lambda g: (-len(g), g))


def _mean_pairwise(matrix: Mapping[str, Mapping[str, float]], group: Sequence[str]) -> float | None:
    values = [(matrix.get(a) or {}).get(b) for a in group for b in group if a != b]
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(numbers) / len(numbers) if numbers else None


def progress_line(entry: Mapping[str, Any], rounds: int, width: int = LINE_WIDTH) -> str:
    """One round of :func:`osml.ops.simulate.simulate` as a line (wrapped to ``width`` columns).

    ``round  3/10    12.4s   14.1 kB  eq 0/4  {0,1} 0.99/0.89  {M0}  {M1}``: round, elapsed time,
    bytes sent in the round, agents at equilibrium (live sources: the agents that flagged
    anomalous steps, ``anom 1:7``), then per sub-context its mean strict/centered alignment (a
    singleton has none).
    """
    n_agents = len(entry.get("strict_alignment") or entry.get("subcontexts") or {})
    sent = entry.get("bytes_sent")
    sent_text = f"{sum(sent.values()) / 1000:6.1f} kB" if isinstance(sent, Mapping) else "     - kB"
    eq = entry.get("equilibrium")
    eq_text = (
        f"eq {sum(bool(v) for v in eq.values())}/{n_agents}" if isinstance(eq, Mapping) else "eq -"
    )
    elapsed = entry.get("elapsed_s")
    elapsed_text = f"{float(elapsed):7.1f}s" if isinstance(elapsed, (int, float)) else "      -s"
    head = f"round {entry.get('round', '?'):>2}/{rounds}  {elapsed_text}  {sent_text}  {eq_text:<7}"
    anomalies = entry.get("anomalies")
    if isinstance(anomalies, Mapping):  # live sources: who flagged steps this round
        flagged = [f"{a}:{n}" for a, n in sorted(anomalies.items()) if n]
        head += "  anom " + (",".join(flagged) if flagged else "-")

    groups = []
    for group in _groups(entry.get("subcontexts") or {}):
        label = "{" + ",".join(group) + "}"
        strict = _mean_pairwise(entry.get("strict_alignment") or {}, group)
        centered = _mean_pairwise(entry.get("centered_alignment") or {}, group)
        if strict is None or centered is None:
            groups.append(label)
        else:
            groups.append(f"{label} {strict:.2f}/{centered:.2f}")
    # Wrap between groups, never inside one; continuation lines start under the first group.
    lines, current = [], head
    for group_text in groups:
        if len(current) + 2 + len(group_text) > width and current.strip():
            lines.append(current)
            current = " " * len(head)
        current += "  " + group_text
    lines.append(current)
    return "\n".join(lines)


def print_rounds(job: Job) -> Callable[[ReportRound], None]:
    """The ``progress`` callback of a run: one :func:`progress_line` per round (none if quiet)."""

    def progress(row: ReportRound) -> None:
        if not job.quiet:
            click.echo(progress_line(row.to_json(), job.settings.rounds))

    return progress


def announce(job: Job, how: str = "") -> None:
    """The line before round 0: data, agents, topology, rounds (and ``how`` they run)."""
    if job.quiet:
        return
    rounds = job.settings.rounds
    click.echo(
        f"{job.dataset.name}: {len(job.agent_ids)} agents ({', '.join(job.agent_ids)}), "
        f"topology {job.settings.topology}, {rounds} round{'' if rounds == 1 else 's'}{how}; "
        "alignment shown as strict/centered per sub-context"
    )


def finish(job: Job, run: RunResult) -> None:
    """Add the downstream probes (data with labels), write the run directory, then print the
    summary table(s) and the files written."""
    from osml.cli.report import downstream_table
    from osml.ops import report
    from osml.ops.downstream import downstream

    if run.downstream is None and job.dataset.labelled:
        section = downstream(
            job.dataset, run.embeddings, run.final.subcontexts, job.settings.window
        )
        run = dataclasses.replace(run, downstream=section)
    result = {
        "osml_version": __version__,
        "data": job.data_spec,
        "settings": job.settings,
        **run.report(),
    }
    report.write_run(job.out, result)
    if job.quiet:
        click.echo(str(job.out))
        return
    click.echo()
    click.echo(report.summary_table(result))
    if run.downstream is not None:
        click.echo()
        click.echo(downstream_table(run.downstream.to_json()))
    _print_files(job.out, list(job.agent_ids))


def _print_files(out: Path, agents: list[str]) -> None:
    from osml.ops import report

    click.echo()
    click.echo(f"wrote {out / report.REPORT_FILE}")
    click.echo(f"      {out / report.EMBEDDINGS_DIR}/<agent>.npy ({len(agents)} agents)")
    if report.plots_available():
        click.echo(f"      {out / report.SIMILARITY_PLOT}")
        click.echo(f"      {out / report.ALIGNMENT_PLOT}")
    else:
        click.echo(f"plots skipped: matplotlib is not installed ({report.PLOT_INSTALL_HINT})")
