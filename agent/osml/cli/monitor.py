"""``osml monitor``: the click command over :func:`osml.ops.monitor.monitor`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from osml.cli.errors import one_line_errors
from osml.cli.options import FiniteFloat
from osml.net.transport import BrokerSettings
from osml.ops.monitor import monitor
from osml.wire import topics

__all__ = ["monitor_command"]

MONITOR_EPILOG = """\b
Examples:
  osml monitor --broker mqtt://127.0.0.1:1883 --context lab
  osml monitor --broker mqtts://broker.lan:8883 --context lab --username ops \\
      --password-file ~/.osml/ops.pass --ca-file ca.crt
  osml monitor --broker mqtt://127.0.0.1:1883 --context lab --once --json | jq .agents

\b
Columns: round = rounds finished; eq = at equilibrium; affinity = mean affinity
memory with the agent's sub-context peers (not a test alignment); frames/bytes
are cumulative in/out; errors = late + invalid frames; anomaly (agents with a live
sensor source, in place of bytes) = ANOM n steps flagged last round, else its largest
z, src? when the sensor source went quiet. OFFLINE: the agent said so or vanished
(last will); STALLED: online but silent for --stall-after seconds.
"""


@click.command(
    "monitor",
    epilog=MONITOR_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--broker",
    "broker_url",
    default="mqtt://127.0.0.1:1883",
    show_default=True,
    metavar="URL",
    help="The fleet's broker: mqtt://HOST:PORT or mqtts://HOST:PORT (TLS).",
)
@click.option("--context", required=True, metavar="NAME", help="The context (fleet) to watch.")
@click.option("--username", metavar="USER", help="Broker user name.")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="File holding the broker password (needs --username).",
)
@click.option("--ca-file", metavar="FILE", help="CA certificate for mqtts://.")
@click.option(
    "--cert-file", metavar="FILE", help="Client certificate for mqtts:// (with --key-file)."
)
@click.option("--key-file", metavar="FILE", help="Private key of --cert-file.")
@click.option(
    "--tls-insecure",
    is_flag=True,
    help="Skip the certificate's host name check (lab certificates).",
)
@click.option(
    "--protocol",
    type=click.Choice(["5", "3.1.1"]),
    default="5",
    show_default=True,
    help="MQTT protocol version.",
)
@click.option("--once", is_flag=True, help="Print one snapshot and exit instead of refreshing.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="JSON instead of a table: one document, or one per line per refresh.",
)
@click.option(
    "--wait",
    type=FiniteFloat(min=0.0),
    default=2.0,
    show_default=True,
    metavar="S",
    help="With --once: seconds to gather statuses and metrics before printing.",
)
@click.option(
    "--refresh",
    type=FiniteFloat(min=0.1),
    default=2.0,
    show_default=True,
    metavar="S",
    help="Seconds between redraws.",
)
@click.option(
    "--stall-after",
    type=FiniteFloat(min=0.0, min_open=True),
    metavar="S",
    help="Flag an online agent STALLED after this many seconds without news. "
    "[default: 3x the median round period, at least 5 s, or 60 s until known]",
)
@one_line_errors
def monitor_command(
    broker_url: str,
    context: str,
    username: str | None,
    password_file: Path | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    tls_insecure: bool,
    protocol: str,
    once: bool,
    as_json: bool,
    wait: float,
    refresh: float,
    stall_after: float | None,
) -> None:
    """Watch a fleet live: each agent's state, round, model, sub-context and traffic.

    Read-only: it subscribes to the agents' retained status and per-round metrics and never
    publishes. Ctrl-C ends it.
    """
    topics.check_name("context", context)
    password = None
    if password_file is not None:
        password = password_file.expanduser().read_text().strip()
    settings = BrokerSettings(
        url=broker_url,
        username=username,
        password=password,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        tls_insecure=tls_insecure,
        protocol=protocol,
    )
    try:
        monitor(
            settings,
            context,
            once=once,
            as_json=as_json,
            wait=wait,
            refresh=refresh,
            stall_after=stall_after,
            out=sys.stdout,
        )
    except KeyboardInterrupt:
        click.echo()
