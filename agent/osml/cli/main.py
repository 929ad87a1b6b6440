"""The ``osml`` command line. Thin: parse flags, call library code, print one line per error.

One module per command (:mod:`osml.cli.simulate`, :mod:`~osml.cli.run`, :mod:`~osml.cli.agent`,
:mod:`~osml.cli.trainer`, :mod:`~osml.cli.report`, :mod:`~osml.cli.monitor`,
:mod:`~osml.cli.broker`); this module only builds the group and registers them.

Every :class:`~osml.errors.OsmlError` (and the ``ValueError`` a settings object raises when it
checks itself) ends the command with ``error: <message>`` on stderr and exit code 2, never a
traceback. torch is imported only inside the commands that train.
"""

from __future__ import annotations

import click

from osml import __version__
from osml.cli.agent import agent_command
from osml.cli.broker import broker
from osml.cli.embed import embed_command
from osml.cli.monitor import monitor_command
from osml.cli.progress import LINE_WIDTH
from osml.cli.report import report_command
from osml.cli.run import run_command
from osml.cli.simulate import simulate
from osml.cli.trainer import trainer_command

__all__ = ["main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": LINE_WIDTH}
)
@click.version_option(__version__, "--version", prog_name="osml")
def main() -> None:
    """osml: decentralized Osmotic Learning.

    Agents learn a shared, context-aware representation of their private time series by
    exchanging embeddings only, never raw data or weights.

    \b
    Try it without a broker:
      osml simulate --data generated:simple --rounds 10 --out runs/demo
      osml report runs/demo

    \b
    On a device: osml agent --config agent.toml (with osml trainer on hosts that train);
    watch a fleet with osml monitor; embed a recording with osml embed.
    """


for _command in (
    simulate,
    run_command,
    agent_command,
    trainer_command,
    report_command,
    embed_command,
    monitor_command,
    broker,
):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
