"""``osml run``: a fleet on this machine, every agent its own process, over a real broker."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from osml.cli.errors import one_line_errors
from osml.cli.options import FiniteFloat, prepare, run_options
from osml.cli.progress import announce, finish, print_rounds

__all__ = ["run_command"]

RUN_EPILOG = """\b
Examples:
  osml run --data generated:simple --rounds 10 --out runs/fleet
  osml run --data path/to/complex-context --rounds 15 --topology ring
  osml run --data generated:simple --broker mqtt://127.0.0.1:1883 --context lab
  osml run --data generated:simple --context lab --broker mqtts://127.0.0.1:8883 \\
      --broker-dir broker --ca certs/ca.crt
  osml run --data generated:complex --trainers 2 --sign
  osml run --data generated:complex --live --speed 50 --max-skew 0.5 --drop-readings 0.05
  osml run --data generated:simple --live --inject-fault 1:stuck@300

\b
Starts a private Mosquitto on a free loopback port (unless --broker is given),
one trainer process (or --trainers N) and one agent process per agent; writes the
same run directory as osml simulate, plus OUT/fleet/ with each agent's config,
state and log.

\b
On a broker made by `osml broker init --fleet FLEET --out DIR` (users, ACL,
credentials/): pass --broker-dir DIR, and --context, --agents and --topology as
in FLEET (one of its contexts, which also needs a [monitor] user). On a broker
with one user for everything: --username and --password-file instead.
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
    "--broker-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="DIR",
    help="--broker was made by `osml broker init --out DIR`: each agent logs in as "
    "<context>.<id> with DIR/credentials/<context>.<id>.pass, this command as the fleet "
    "file's [monitor] user; --context, the agents and --topology must match the fleet file.",
)
@click.option("--username", metavar="USER", help="--broker: the user every process logs in as.")
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="--broker: the password of --username (a file only its owner can read).",
)
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="mqtts:// --broker: the CA certificate that signed the broker's certificate.",
)
@click.option(
    "--cert",
    "cert_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="mqtts:// --broker: a client certificate for every process (with --key).",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The private key of --cert (a file only its owner can read).",
)
@click.option(
    "--drop-rate",
    type=FiniteFloat(0.0, 0.99),
    default=0.0,
    show_default=True,
    help="Testing: share of outgoing frames each agent drops at random.",
)
@click.option(
    "--deadline",
    type=FiniteFloat(0.1, 86400.0),
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
@click.option(
    "--live",
    is_flag=True,
    help="Replay the data's training rows as live sensor streams (one feeder per device "
    "through a real source); the final models are evaluated on the test rows as usual.",
)
@click.option(
    "--source",
    "live_source",
    type=click.Choice(["mqtt", "tail", "exec"]),
    default="mqtt",
    show_default=True,
    help="--live: how readings reach each agent: an MQTT topic, a file it tails, or a command.",
)
@click.option(
    "--speed",
    type=FiniteFloat(1.0, 10_000.0),
    default=50.0,
    show_default=True,
    help="--live: times real time.",
)
@click.option(
    "--period",
    "period_steps",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="--live: steps per round.",
)
@click.option(
    "--max-skew",
    type=FiniteFloat(min=0.0),
    default=0.0,
    show_default=True,
    help="--live: each device's clock off by up to this many seconds (one step is 1 s).",
)
@click.option(
    "--jitter",
    type=FiniteFloat(min=0.0),
    default=0.0,
    show_default=True,
    help="--live: seconds of random spread of each reading within its step.",
)
@click.option(
    "--drop-readings",
    type=FiniteFloat(0.0, 0.99),
    default=0.0,
    show_default=True,
    help="--live: share of readings never sent.",
)
@click.option(
    "--inject-fault",
    "faults",
    multiple=True,
    metavar="AGENT:KIND@STEP",
    help="--live: corrupt one device's stream from row STEP on; KIND is stuck, spike, "
    "offset[:STD], noise[:STD] or switch:OTHER (the device starts seeing OTHER's signal). "
    "Repeatable.",
)
@one_line_errors
def run_command(
    broker_url: str | None,
    broker_dir: Path | None,
    username: str | None,
    password_file: Path | None,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    drop_rate: float,
    deadline: float,
    protocol: str,
    trainers: int,
    sign: bool,
    live: bool,
    live_source: str,
    speed: float,
    period_steps: int,
    max_skew: float,
    jitter: float,
    drop_readings: float,
    faults: tuple[str, ...],
    **flags: Any,
) -> None:
    """Run a fleet on this machine: every agent its own process, talking over MQTT.

    Same flags and outputs as osml simulate; the exchange goes through a real broker.
    """
    from osml.ops.fleet import BrokerAccess, FleetOptions, run_fleet

    paths = (broker_dir, password_file, ca_file, cert_file, key_file)
    broker_dir, password_file, ca_file, cert_file, key_file = (
        None if p is None else p.resolve() for p in paths
    )  # the agents run in other directories
    access = BrokerAccess(username, password_file, broker_dir, ca_file, cert_file, key_file)

    if flags.get("context") == "sim":
        flags["context"] = "run"
    job = prepare(**flags)
    from osml.ops.live import LiveOptions

    live_options = (
        LiveOptions(
            speed=speed,
            period_steps=period_steps,
            source=live_source,
            max_skew=max_skew,
            jitter=jitter,
            drop_readings=drop_readings,
            faults=faults,
        )
        if live
        else None
    )
    if not live and faults:
        raise click.UsageError("--inject-fault needs --live")
    options = FleetOptions(
        broker_url=broker_url,
        drop_rate=drop_rate,
        deadline=deadline,
        protocol=protocol,
        trainers=trainers,
        sign=sign,
        live=live_options,
        access=access,
    )
    how = (
        ", agents as processes over MQTT"
        + (f", live {live_source} streams at {speed:g}x" if live else "")
        + (f" ({drop_rate:.0%} frames dropped)" if drop_rate else "")
        + (", signed frames" if sign else "")
    )
    announce(job, how)

    def notice(text: str) -> None:
        if not job.quiet:
            click.echo(text)

    # SIGTERM (systemd, a supervisor, `kill PID`) ends the run as Ctrl-C does: the finally blocks
    # of run_fleet then stop every broker, trainer and agent it started, by PID.
    previous = signal.signal(signal.SIGTERM, _interrupt)
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
    finally:
        signal.signal(signal.SIGTERM, previous)
    finish(job, result)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
