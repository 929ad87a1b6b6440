"""``osml report``: the summary of a run directory, and its missing plots."""

from __future__ import annotations

from pathlib import Path

import click

from osml.cli.errors import one_line_errors

__all__ = ["report_command"]

REPORT_EPILOG = "\b\nExample:\n  osml report runs/demo"


@click.command("report", epilog=REPORT_EPILOG)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR")
@click.option("--replot", is_flag=True, help="Redraw the plots even if they exist.")
@one_line_errors
def report_command(run_dir: Path, replot: bool) -> None:
    """Print the final state of a run written by osml simulate; draw missing plots."""
    from osml.ops import report

    run = report.load_run(run_dir)
    click.echo(report.summary_table(run))
    if not report.plots_available():
        click.echo(f"plots skipped: matplotlib is not installed ({report.PLOT_INSTALL_HINT})")
        return
    for path in report.write_plots(run_dir, run, overwrite=replot):
        click.echo(f"wrote {path}")
