"""``osml trainer``: the training service for the agents of one host (needs torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from osml.cli.errors import one_line_errors
from osml.cli.options import log_level_option, set_up_logging

__all__ = ["trainer_command"]

TRAINER_EPILOG = """\b
Example:
  osml trainer --socket /run/osml/trainer.sock --state-dir /var/lib/osml/trainer"""


@click.command("trainer", epilog=TRAINER_EPILOG)
@click.option(
    "--socket",
    "socket_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Unix socket the agents of this host connect to.",
)
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where per-agent weights are checkpointed (survives restarts).",
)
@log_level_option
@one_line_errors
def trainer_command(socket_path: Path, state_dir: Path, log_level: str) -> None:
    """Serve training jobs for the agents of this host (needs the trainer extra: torch)."""
    import signal
    import threading

    set_up_logging(log_level)
    try:
        from osml.trainer.service import serve
    except ImportError as exc:
        click.echo(
            f"error: osml trainer needs the trainer extra: pip install 'osml[trainer]' ({exc})",
            err=True,
        )
        sys.exit(2)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(socket_path, state_dir, stop=stop)
    except KeyboardInterrupt:
        stop.set()
