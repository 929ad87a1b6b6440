"""The ``osml`` command line. Thin: parse flags, call library code, print one line per error.

Every :class:`~osml.errors.OsmlError` (and the ``ValueError`` a settings object raises when it
checks itself) ends the command with ``error: <message>`` on stderr and exit code 2, never a
traceback. torch is imported only inside the commands that train.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from osml import __version__
from osml.cli.errors import one_line_errors
from osml.errors import ConfigError
from osml.trainer.settings import (
    ARCHITECTURE_NAMES,
    DEFAULT_ARCHITECTURE,
    DEFAULT_OBJECTIVE,
    OBJECTIVES,
)

if TYPE_CHECKING:
    from osml.ops.rows import ReportRound, RunResult

__all__ = ["main", "parse_agents", "parse_architectures", "progress_line"]

TRAINER_HINT = "osml simulate needs the trainer extra: pip install 'osml[trainer]'"
LINE_WIDTH = 100

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------ flag parsing


def parse_agents(spec: str | None) -> list[str] | None:
    """``"0,1"`` -> ``["0", "1"]``; None or empty -> None (all agents). ConfigError if malformed."""
    if spec is None or not spec.strip():
        return None
    ids = [part.strip() for part in spec.split(",")]
    if any(not part for part in ids):
        raise ConfigError(f"--agents {spec!r}: empty agent id; use a comma list like 0,1")
    duplicates = sorted({a for a in ids if ids.count(a) > 1})
    if duplicates:
        raise ConfigError(f"--agents {spec!r}: agent {', '.join(duplicates)} given twice")
    return ids


def parse_architectures(spec: str, agents: Sequence[str]) -> tuple[str, dict[str, str]]:
    """``--architecture`` -> (default architecture, per-agent overrides).

    ``"conv"`` sets the default for every agent; ``"0=gru,1=conv"`` sets agents 0 and 1 (the others
    keep the default, ``mlp``); ``"conv,0=gru"`` does both. Names are checked later by TrainerSettings.
    """
    default = DEFAULT_ARCHITECTURE
    overrides: dict[str, str] = {}
    defaults_seen = 0
    for part in (p.strip() for p in spec.split(",")):
        agent, sep, arch = (s.strip() for s in part.partition("="))
        if not sep:
            if not agent:
                raise ConfigError(f"--architecture {spec!r}: empty entry")
            default, defaults_seen = agent, defaults_seen + 1
            continue
        if not agent or not arch:
            raise ConfigError(f"--architecture {spec!r}: expected AGENT=ARCH, got {part!r}")
        if agent not in agents:
            raise ConfigError(
                f"--architecture {spec!r}: agent {agent!r} is not simulated; "
                f"agents are {', '.join(agents)}"
            )
        if agent in overrides:
            raise ConfigError(f"--architecture {spec!r}: agent {agent!r} given twice")
        overrides[agent] = arch
    if defaults_seen > 1:
        raise ConfigError(f"--architecture {spec!r}: more than one default architecture")
    return default, overrides


# ---------------------------------------------------------------------------------- progress


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
    bytes sent in the round, agents at equilibrium, then per sub-context its mean strict/centered
    alignment (a singleton has none).
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


# --------------------------------------------------------------------------------- commands


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
    """


SIMULATE_EPILOG = """\b
Examples:
  osml simulate --data generated:simple --rounds 10 --out runs/demo
  osml simulate --data path/to/simple-context --agents 0,1,M0 --topology ring
  osml simulate --data generated:complex --architecture 0=gru,4=mlp --objective masked

\b
Writes OUT/report.json, OUT/embeddings/<agent>.npy and, with matplotlib
(pip install 'osml[plot]'), OUT/similarity.png and OUT/alignment.png.
"""


_RUN_OPTIONS = [
    click.option(
        "--data",
        "data_spec",
        required=True,
        metavar="PATH",
        help="A directory with train_data.csv and test_data.csv (paper format, columns "
        "Agent<ID>[<i>]), or generated:simple / generated:complex.",
    ),
    click.option(
        "--agents",
        "agents_spec",
        metavar="IDS",
        help="Comma list of agent ids to simulate, e.g. 0,1,M0.  [default: every agent in the data]",
    ),
    click.option(
        "--rounds",
        type=click.IntRange(min=0),
        default=10,
        show_default=True,
        help="Exchange rounds (the report has rounds + 1 entries: round 0 is before any exchange).",
    ),
    click.option(
        "--topology",
        default="full",
        show_default=True,
        metavar="full|ring|random:K",
        help="Who hears whom: everyone, a ring in --agents order, or a random K-regular graph.",
    ),
    click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed for generated data, encoder initialisation and random topologies.",
    ),
    click.option(
        "--out",
        "out_dir",
        type=click.Path(file_okay=False, path_type=Path),
        metavar="DIR",
        help="Run directory to write.  [default: runs/<timestamp>]",
    ),
    click.option(
        "--window",
        type=click.IntRange(min=1),
        default=10,
        show_default=True,
        help="Steps per input window.",
    ),
    click.option(
        "--embedding-dim",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Embedding size shared by all agents.",
    ),
    click.option(
        "--architecture",
        "architecture_spec",
        default=DEFAULT_ARCHITECTURE,
        show_default=True,
        metavar="|".join(ARCHITECTURE_NAMES),
        help="Encoder for every agent, or per agent as AGENT=ARCH pairs, e.g. 0=gru,1=conv "
        "(agents not named use mlp, or a bare name given too: conv,0=gru).",
    ),
    click.option(
        "--objective",
        default=DEFAULT_OBJECTIVE,
        show_default=True,
        metavar="|".join(OBJECTIVES),
        help="Anti-collapse term: variance-covariance (vc) or masked reconstruction.",
    ),
    click.option(
        "--context",
        default="sim",
        show_default=True,
        help="Context name; it also seeds the anchor every agent embeds around.",
    ),
    click.option("--quiet", "-q", is_flag=True, help="Print only errors and the run directory."),
]


def _run_options(func: F) -> F:
    """The flags osml simulate and osml run share."""
    for option in reversed(_RUN_OPTIONS):
        func = option(func)
    return func


@main.command(epilog=SIMULATE_EPILOG)
@_run_options
@one_line_errors
def simulate(**flags: Any) -> None:
    """Run several agents in one process with an in-memory exchange.

    Everything but the network is the real thing: each agent trains its own encoder, embeds with
    onnxruntime, sends int8 wire frames to its neighbours and decides its sub-context from what
    it alone received.
    """
    from osml.ops.simulate import simulate as run_simulation

    job = _prepare(**flags)

    def progress(row: ReportRound) -> None:
        if not job.quiet:
            click.echo(progress_line(row.to_json(), job.settings.rounds))

    _announce(job)
    result = run_simulation(job.dataset, job.settings, job.agent_ids, progress=progress)
    _finish(job, result)


@dataclasses.dataclass(frozen=True)
class _Job:
    data_spec: str
    dataset: Any
    agent_ids: list[str]
    settings: Any
    out: Path
    quiet: bool


def _prepare(
    data_spec: str,
    agents_spec: str | None,
    rounds: int,
    topology: str,
    seed: int,
    out_dir: Path | None,
    window: int,
    embedding_dim: int,
    architecture_spec: str,
    objective: str,
    context: str,
    quiet: bool,
) -> _Job:
    """Check every flag (torch-free checks first, so a typo fails in milliseconds)."""
    from osml.agent.data import check_min_rows, load_dataset
    from osml.core.topology import neighbours

    dataset = load_dataset(data_spec, seed=seed)
    agent_ids = parse_agents(agents_spec) or list(dataset.ids)
    dataset = dataset.select(agent_ids)
    check_min_rows(dataset, window)
    neighbours(agent_ids, topology, seed)
    default_arch, per_agent_arch = parse_architectures(architecture_spec, agent_ids)
    _check_wire_names(context, agent_ids)
    out = out_dir if out_dir is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if importlib.util.find_spec("torch") is None:  # looked up, not imported: training needs it
        click.echo(f"error: {TRAINER_HINT} (no module named 'torch')", err=True)
        sys.exit(2)
    from osml.ops.simulate import SimulationSettings
    from osml.trainer.settings import TrainerSettings

    trainer = TrainerSettings(architecture=default_arch, objective=objective)
    for arch in set(per_agent_arch.values()):
        TrainerSettings(architecture=arch, objective=objective)  # checks the name before training
    settings = SimulationSettings(
        rounds=rounds,
        window=window,
        embedding_dim=embedding_dim,
        topology=topology,
        seed=seed,
        context=context,
        architectures=per_agent_arch,
        trainer=trainer,
    )
    return _Job(data_spec, dataset, agent_ids, settings, out, quiet)


def _announce(job: _Job, how: str = "") -> None:
    if job.quiet:
        return
    rounds = job.settings.rounds
    click.echo(
        f"{job.dataset.name}: {len(job.agent_ids)} agents ({', '.join(job.agent_ids)}), "
        f"topology {job.settings.topology}, {rounds} round{'' if rounds == 1 else 's'}{how}; "
        "alignment shown as strict/centered per sub-context"
    )


def _finish(job: _Job, run: RunResult) -> None:
    from osml.ops import report

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
    _print_files(job.out, list(job.agent_ids))


def _check_wire_names(context: str, agent_ids: Sequence[str]) -> None:
    """Context and agent ids travel in every frame and topic: check them before training."""
    from osml.wire import topics

    topics.check_name("context", context)
    for agent in agent_ids:
        topics.check_name("agent id", agent)


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


@main.command("run", epilog=RUN_EPILOG)
@_run_options
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
    job = _prepare(**flags)
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
    _announce(job, how)

    def progress(row: ReportRound) -> None:
        if not job.quiet:
            click.echo(progress_line(row.to_json(), job.settings.rounds))

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
            progress=progress,
            notice=notice,
        )
    except KeyboardInterrupt:
        click.echo("interrupted: every process was stopped", err=True)
        sys.exit(130)
    _finish(job, result)


@main.command("agent", epilog="\b\nExample:\n  osml agent --config /etc/osml/agent.toml")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The agent's TOML config (see the example in docs/agent.md).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
)
@one_line_errors
def agent_command(config_path: Path, log_level: str) -> None:
    """Run one agent: rounds of osmosis with its neighbours over MQTT, until stopped.

    Needs no torch: training is the job of `osml trainer` on the same host.
    SIGTERM or Ctrl-C ends it cleanly after publishing its status as offline.
    """
    import logging
    import signal
    import threading

    from osml.agent.config import load_config
    from osml.agent.runtime import AgentRuntime

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(config_path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        code = AgentRuntime(cfg).run(stop)
    except KeyboardInterrupt:
        stop.set()
        code = 130
    sys.exit(code)


@main.command(
    "trainer",
    epilog="\b\nExample:\n  osml trainer --socket /run/osml/trainer.sock --state-dir /var/lib/osml/trainer",
)
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
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
)
@one_line_errors
def trainer_command(socket_path: Path, state_dir: Path, log_level: str) -> None:
    """Serve training jobs for the agents of this host (needs the trainer extra: torch)."""
    import logging
    import signal
    import threading

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
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


@main.command("report", epilog="\b\nExample:\n  osml report runs/demo")
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


def _register_optional_commands() -> None:
    # Defined in their own modules (they import nothing heavy at module level).
    from osml.cli.broker import broker
    from osml.cli.monitor import monitor_command

    main.add_command(monitor_command)
    main.add_command(broker)


_register_optional_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
