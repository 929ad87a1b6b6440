"""``osml agent``: one agent process over MQTT, until stopped (never imports torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from osml.cli.errors import one_line_errors
from osml.cli.options import log_level_option, set_up_logging

__all__ = ["agent_command"]

AGENT_EPILOG = "\b\nExample:\n  osml agent --config /etc/osml/agent.toml"


@click.command("agent", epilog=AGENT_EPILOG)
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The agent's TOML config (see the example in docs/agent.md).",
)
@log_level_option
@one_line_errors
def agent_command(config_path: Path, log_level: str) -> None:
    """Run one agent: rounds of osmosis with its neighbours over MQTT, until stopped.

    Needs no torch: training is the job of `osml trainer` on the same host.
    SIGTERM or Ctrl-C ends it cleanly after publishing its status as offline.
    """
    import signal
    import threading

    from osml.agent.config import load_config
    from osml.agent.runtime import AgentRuntime

    set_up_logging(log_level)
    cfg = load_config(config_path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        code = AgentRuntime(cfg).run(stop)
    except KeyboardInterrupt:
        stop.set()
        code = 130
    sys.exit(code)
