"""``osml broker``: the click commands over :mod:`osml.ops.brokers`.

osml broker init    fleet file -> DIR/passwd, DIR/acl, DIR/credentials/, DIR/mosquitto.conf
osml broker start   run mosquitto on DIR in the foreground (Ctrl-C stops it)
osml broker certs   private CA, server certificate (with SANs) and client certificates
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from osml.cli.errors import one_line_errors
from osml.ops.brokers import (
    ACL,
    CONF,
    CREDENTIALS,
    PASSWD,
    init_broker_dir,
    make_certs,
    prepare_start,
    run_foreground,
)

__all__ = ["broker"]

BROKER_EPILOG = """\b
Examples:
  osml broker certs --out broker/certs --host broker.lan --ip 192.168.50.1 --client lab.0
  osml broker init --fleet fleet.toml --out broker --certs broker/certs
  osml broker start --dir broker
"""


@click.group("broker", epilog=BROKER_EPILOG)
def broker() -> None:
    """Set up a Mosquitto broker for a fleet: users, ACL, certificates, a lab run.

    The fleet file (see broker-config/fleet.example.toml) lists contexts, agents and
    neighbours; each agent logs in as <context>.<agent id> and may only write its
    neighbours' inboxes (as itself), its own status and metrics, and read its own inbox.
    """


INIT_EPILOG = """\b
Examples:
  osml broker init --fleet fleet.toml --out /etc/mosquitto/osml --bind 0.0.0.0
  osml broker init --fleet fleet.toml --out lab-broker --run-as root --port 18830

\b
Writes OUT/passwd (hashed), OUT/acl, OUT/mosquitto.conf, OUT/data/ and
OUT/credentials/<user>.pass: the PLAINTEXT passwords (mode 0600) to copy onto each
device (password_file in the agent's [broker] section), and
OUT/credentials/<context>.key: each context's frame-signing key (key_file in the
agent's [signing] section). Keep that directory private. Running init again keeps
existing passwords and keys and rewrites the rest.
"""


@broker.command("init", epilog=INIT_EPILOG)
@click.option(
    "--fleet",
    "fleet_path",
    required=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The fleet file (TOML).",
)
@click.option(
    "--out",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the broker's files (created if missing).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=1883,
    show_default=True,
    help="Port of the plain MQTT listener.",
)
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDRESS",
    help="Address of the plain listener: 127.0.0.1, the lab network's address, or 0.0.0.0.",
)
@click.option(
    "--certs",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Add a TLS listener using the files of `osml broker certs --out DIR`.",
)
@click.option(
    "--tls-port",
    type=click.IntRange(1, 65535),
    default=8883,
    show_default=True,
    help="Port of the TLS listener (with --certs).",
)
@click.option(
    "--tls-bind",
    default="",
    metavar="ADDRESS",
    help="Address of the TLS listener.  [default: every interface]",
)
@click.option(
    "--run-as",
    default="mosquitto",
    show_default=True,
    metavar="USER",
    help="User mosquitto switches to when started as root (root: keep root, labs only).",
)
@one_line_errors
def init_command(
    fleet_path: Path,
    out: Path,
    port: int,
    bind: str,
    certs: Path | None,
    tls_port: int,
    tls_bind: str,
    run_as: str,
) -> None:
    """Write password file, ACL, credentials and mosquitto.conf for a fleet."""
    result = init_broker_dir(
        fleet_path,
        out,
        port=port,
        bind=bind,
        run_as=run_as,
        certs=certs,
        tls_port=tls_port,
        tls_bind=tls_bind,
    )
    listeners = f"{bind}:{port}" + (f" and TLS {tls_bind}:{tls_port}" if certs is not None else "")
    click.echo(f"wrote {out / PASSWD} ({len(result.users)} users, hashed)")
    click.echo(f"      {out / ACL}")
    click.echo(f"      {out / CONF} (listener {listeners})")
    click.echo(
        f"      {out / CREDENTIALS}/<user>.pass: {len(result.new_credentials)} new, "
        f"{len(result.kept_credentials)} kept; plaintext (0600): copy each to its device"
    )
    click.echo(
        f"      {out / CREDENTIALS}/<context>.key: frame-signing keys "
        f"({len(result.new_keys)} new); copy to the context's devices as [signing] key_file"
    )
    if result.stale_credentials:
        click.echo(
            f"note: {', '.join(result.stale_credentials)} left the fleet and can no longer log "
            f"in; delete their files in {out / CREDENTIALS}"
        )
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"start it: osml broker start --dir {out}")


START_EPILOG = """\b
Examples:
  osml broker start --dir lab-broker
  osml broker start --dir lab-broker --port 18830

\b
For a lab. In production run mosquitto as a service with DIR/mosquitto.conf.
"""


@broker.command("start", epilog=START_EPILOG)
@click.option(
    "--dir",
    "directory",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="A directory made by osml broker init.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    metavar="N",
    help="Listen on this port instead of the one in DIR/mosquitto.conf.",
)
@one_line_errors
def start_command(directory: Path, port: int | None) -> None:
    """Run mosquitto on DIR in the foreground; Ctrl-C stops it."""
    start = prepare_start(directory, port)

    def started(pid: int) -> None:
        click.echo(
            f"mosquitto -c {start.conf} running (pid {pid}); log: {start.log}; Ctrl-C stops it"
        )
        sys.stdout.flush()  # a parent reading our pipe learns the PID before anything else

    if run_foreground(start, started):
        click.echo("mosquitto stopped")


CERTS_EPILOG = """\b
Examples:
  osml broker certs --out certs --host broker.lan --ip 192.168.50.1
  osml broker certs --out certs --host broker.lan --client lab.0 --client lab.1

\b
Makes OUT/ca.crt + ca.key (a private CA, kept on later runs), OUT/server.crt +
server.key (SANs: --host and every --ip) and OUT/clients/<ID>.crt + .key.
Certificates that exist are kept: delete them to issue new ones. Keys are 0600. \
Copy ca.crt to every device; keep ca.key offline. Use the broker
user name (<context>.<agent>) as client ID if the broker maps certificates to
users (use_identity_as_username).
"""


@broker.command("certs", epilog=CERTS_EPILOG)
@click.option(
    "--out",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the CA, server and client files.",
)
@click.option("--host", required=True, metavar="NAME", help="The broker's DNS name (CN and SAN).")
@click.option(
    "--ip",
    "ips",
    multiple=True,
    metavar="ADDRESS",
    help="An IP address clients use (SAN); repeatable.",
)
@click.option(
    "--client",
    "clients",
    multiple=True,
    metavar="ID",
    help="Make a client certificate; repeatable.",
)
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=825,
    show_default=True,
    help="Validity of server and client certificates.",
)
@one_line_errors
def certs_command(
    out: Path, host: str, ips: tuple[str, ...], clients: tuple[str, ...], days: int
) -> None:
    """Make a private CA, a server certificate and client certificates (openssl)."""
    for path, what in make_certs(out, host, ips, clients, days):
        click.echo(f"{path}  {what}")
