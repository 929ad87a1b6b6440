"""``osml run``: a fleet on this machine, every agent its own process, over a real broker."""

from __future__ import annotations

import sys
from typing import Any

import click

from osml.cli.errors import one_line_errors
from osml.cli.options import prepare, run_options
from osml.cli.progress import announce, finish, print_rounds

__all__ = ["run_command"]

RUN_EPILOG = """\b
Examples:
  osml run --data generated:simple --rounds 10 --out runs/fleet
  osml run --data path/to/complex-context --rounds 15 --topology ring
  osml run --data generated:simple --broker mqtt://127.0.0.1:1883 --context lab
  osml run --data generated:complex --trainers 2 --sign

\b
Starts a private Mosquitto on a free loopback port (unless --broker is given),
one trainer process (or --trainers N) and one agent process per agent; writes the
same run directory as osml simulate, plus OUT/fleet/ with each agent's config,
state and log.
"""


@click.command("run", epilog=RUN_EPILOG)
@run_options
@click.option(
    "--broker",
    "broker_url",
    metavar="URL",
    help="Use this broker (mqtt://HOST:PORT or mqtts://HOST:PORT) instead of a private one.",
)
@click.option(
    "--drop-rate",
    type=click.FloatRange(0.0, 0.99),
    default=0.0,
    show_default=True,
    help="Testing: share of outgoing frames each agent drops at random.",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds an agent waits for its neighbours' frames each round.",
)
@click.option(
    "--protocol",
    type=click.Choice(["5", "3.1.1"]),
    default="5",
    show_default=True,
    help="MQTT protocol version.",
)
@click.option(
    "--trainers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Trainer processes; agent i is served by trainer i mod N.",
)
@click.option(
    "--sign",
    is_flag=True,
    help="Sign every frame (HMAC-SHA256) with a fresh key in OUT/fleet/signing.key (mode 0600); "
    "agents require signatures.",
)
@one_line_errors
def run_command(
    broker_url: str | None,
    drop_rate: float,
    deadline: float,
    protocol: str,
    trainers: int,
    sign: bool,
    **flags: Any,
) -> None:
    """Run a fleet on this machine: every agent its own process, talking over MQTT.

    Same flags and outputs as osml simulate; the exchange goes through a real broker.
    """
    from osml.ops.fleet import FleetOptions, run_fleet

    if flags.get("context") == "sim":
        flags["context"] = "run"
    job = prepare(**flags)
    options = FleetOptions(
        broker_url=broker_url,
        drop_rate=drop_rate,
        deadline=deadline,
        protocol=protocol,
        trainers=trainers,
        sign=sign,
    )
    how = (
        ", agents as processes over MQTT"
        + (f" ({drop_rate:.0%} frames dropped)" if drop_rate else "")
        + (", signed frames" if sign else "")
    )
    announce(job, how)

    def notice(text: str) -> None:
        if not job.quiet:
            click.echo(text)

    try:
        result = run_fleet(
            job.data_spec,
            job.dataset,
            job.agent_ids,
            job.settings,
            job.out / "fleet",
            options,
            progress=print_rounds(job),
            notice=notice,
        )
    except KeyboardInterrupt:
        click.echo("interrupted: every process was stopped", err=True)
        sys.exit(130)
    finish(job, result)
