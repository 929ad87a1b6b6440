"""The flags ``osml simulate`` and ``osml run`` share, and checking them into a :class:`Job`.

Every check that needs no torch runs first, so a typo fails in milliseconds; torch itself is
only looked up here (training imports it later).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from osml.errors import ConfigError
from osml.trainer.settings import (
    ARCHITECTURE_NAMES,
    DEFAULT_ARCHITECTURE,
    DEFAULT_OBJECTIVE,
    OBJECTIVES,
)

__all__ = [
    "RUN_OPTIONS",
    "TRAINER_HINT",
    "FiniteFloat",
    "Job",
    "check_wire_names",
    "parse_agents",
    "parse_architectures",
    "parse_trainer_sets",
    "prepare",
    "run_options",
]

TRAINER_HINT = "osml simulate needs the trainer extra: pip install 'osml[trainer]'"

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------ flag parsing


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses nan and inf (a range alone lets nan through)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


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

    ``"conv"`` sets the default for every agent; ``"0=gru,1=conv"`` sets agents 0 and 1 (the
    others keep the default, ``mlp``); ``"conv,0=gru"`` does both. Names are checked later by
    TrainerSettings.
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


def parse_trainer_sets(specs: Sequence[str]) -> dict[str, Any]:
    """``--trainer-set KEY=VALUE`` flags -> {key: value}, each value read as the type of the
    :class:`~osml.trainer.settings.TrainerSettings` field it sets (``true``/``false`` for a
    flag). Ranges are checked later, by TrainerSettings. ConfigError naming the key."""
    from osml.trainer.settings import TrainerSettings

    defaults = {f.name: f.default for f in dataclasses.fields(TrainerSettings)}
    out: dict[str, Any] = {}
    for spec in specs:
        key, sep, text = (part.strip() for part in spec.partition("="))
        if not sep or not key:
            raise ConfigError(f"--trainer-set {spec!r}: expected KEY=VALUE, e.g. temperature=0.1")
        if key not in defaults:
            raise ConfigError(
                f"--trainer-set {key}: unknown key (known: {', '.join(sorted(defaults))})"
            )
        if key in _SET_ELSEWHERE:
            raise ConfigError(f"--trainer-set {key}: use {_SET_ELSEWHERE[key]} instead")
        if key in out:
            raise ConfigError(f"--trainer-set {key}: given twice")
        default = defaults[key]
        try:
            if isinstance(default, bool):
                value: Any = _BOOLEANS[text.lower()]
            elif isinstance(default, int):
                value = int(text)
            elif isinstance(default, float):
                value = float(text)
            else:
                value = text
        except (KeyError, ValueError):
            kind = _KINDS[type(default)]
            raise ConfigError(f"--trainer-set {key}: must be {kind}, got {text!r}") from None
        out[key] = value
    return out


# Fields that a flag of their own sets, because something else must agree with them.
_SET_ELSEWHERE = {
    "architecture": "--architecture",
    "objective": "--objective",
    "shared_dims": "--shared-dims (it sets the learner too)",
}
_KINDS = {bool: "true or false", int: "an integer", float: "a number"}
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


# ------------------------------------------------------------------------------ shared flags


RUN_OPTIONS = [
    click.option(
        "--data",
        "data_spec",
        required=True,
        metavar="PATH",
        help="A directory with train_data.csv and test_data.csv (paper format, columns "
        "Agent<ID>[<i>]), or generated:simple / generated:complex.  With train_labels.csv and "
        "test_labels.csv beside them (a header 'label', then one integer per row), the report "
        "adds downstream probes of the embeddings (see osml report).",
    ),
    click.option(
        "--agents",
        "agents_spec",
        metavar="IDS",
        help="Comma list of agent ids to simulate, e.g. 0,1,M0.  "
        "[default: every agent in the data]",
    ),
    click.option(
        "--rounds",
        type=click.IntRange(0, 1_000_000),
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
        type=click.IntRange(0, 2**32 - 1),
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
        type=click.IntRange(1, 4096),
        default=10,
        show_default=True,
        help="Steps per input window.",
    ),
    click.option(
        "--embedding-dim",
        type=click.IntRange(1, 4096),
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
        type=click.Choice(OBJECTIVES),
        default=DEFAULT_OBJECTIVE,
        show_default=True,
        help="Anti-collapse term: variance-covariance (vc), masked reconstruction (masked), "
        "contrastive InfoNCE on augmented views (infonce) or masked plus an MMD to the osmosis "
        "targets (masked-mmd); see docs/objectives.md.",
    ),
    click.option(
        "--context",
        default="sim",
        show_default=True,
        help="Context name; it also seeds the anchor every agent embeds around.",
    ),
    click.option("--quiet", "-q", is_flag=True, help="Print only errors and the run directory."),
]


def run_options(func: F) -> F:
    """The flags osml simulate and osml run share."""
    for option in reversed(RUN_OPTIONS):
        func = option(func)
    return func


# ------------------------------------------------------------------------------------ checks


@dataclasses.dataclass(frozen=True)
class Job:
    """Checked flags of osml simulate and osml run: what to run, how, and where to write."""

    data_spec: str
    dataset: Any
    agent_ids: list[str]
    settings: Any
    out: Path
    quiet: bool


def prepare(
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
) -> Job:
    """Check every flag (torch-free checks first, so a typo fails in milliseconds)."""
    from osml.agent.data import check_min_rows, load_dataset
    from osml.core.topology import neighbours

    dataset = load_dataset(data_spec, seed=seed)
    agent_ids = parse_agents(agents_spec) or list(dataset.ids)
    dataset = dataset.select(agent_ids)
    check_min_rows(dataset, window)
    neighbours(agent_ids, topology, seed)
    default_arch, per_agent_arch = parse_architectures(architecture_spec, agent_ids)
    check_wire_names(context, agent_ids)
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
    return Job(data_spec, dataset, agent_ids, settings, out, quiet)


def check_wire_names(context: str, agent_ids: Sequence[str]) -> None:
    """Context and agent ids travel in every frame and topic: check them before training."""
    from osml.wire import topics

    topics.check_name("context", context)
    for agent in agent_ids:
        topics.check_name("agent id", agent)


log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
)


def set_up_logging(log_level: str) -> None:
    """Log lines with a time stamp on stderr, from ``--log-level`` on (agent and trainer)."""
    import logging

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
