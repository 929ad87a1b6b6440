"""``osml simulate``: several agents in one process, exchanging over memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import click

from osml.cli.errors import one_line_errors
from osml.cli.options import FiniteFloat, parse_trainer_sets, prepare, run_options
from osml.cli.progress import announce, finish, print_rounds
from osml.errors import ConfigError
from osml.ops.adversaries import kinds_help

__all__ = ["simulate"]

SIMULATE_EPILOG = f"""\b
Examples:
  osml simulate --data generated:simple --rounds 10 --out runs/demo
  osml simulate --data path/to/simple-context --agents 0,1,M0 --topology ring
  osml simulate --data generated:complex --architecture 0=gru,4=mlp --objective masked
  osml simulate --data generated:complex --objective infonce --trainer-set temperature=0.1
  osml simulate --data generated:complex --objective masked-mmd --trainer-set mmd_weight=0.1
  osml simulate --data generated:complex --embedding-dim 8 --shared-dims 5
  osml simulate --data generated:simple --agents 0,1 --adversary x=rotate-copy:angle=90:noise=1e-3
  osml simulate --data generated:simple --adversary x=mypkg.attacks:flip

\b
Adversary kinds (--adversary ID=KIND[:ARG...], arguments positional or NAME=VALUE):
{kinds_help()}

\b
or ID=MODULE:FUNCTION, called each round for each honest agent as
fn(round, dst, honest, history) -> (steps, dim) array: honest maps every honest
agent to the embeddings it sends this round, history lists earlier rounds'.

\b
Writes OUT/report.json, OUT/embeddings/<agent>.npy and, with matplotlib
(pip install 'osml[plot]'), OUT/similarity.png and OUT/alignment.png.
"""


@click.command("simulate", epilog=SIMULATE_EPILOG)
@run_options
@click.option(
    "--adversary",
    "adversary_specs",
    multiple=True,
    metavar="ID=KIND[:ARGS]",
    help="Add a hostile agent ID, linked to every honest agent, that sends what KIND (or "
    "MODULE:FUNCTION) says and never learns; repeatable. Kinds are listed below. The report "
    "marks it; its figures cover the honest agents only.",
)
@click.option(
    "--adversary-first",
    is_flag=True,
    help="Deliver the adversaries' frames before the honest ones of the same round, though "
    "they are made from them (a copier on a faster path than its original): the worst case "
    "for telling a copy from its original by the order frames come in. Default: after them.",
)
@click.option(
    "--trainer-set",
    "trainer_sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a trainer setting (a TrainerSettings field, e.g. temperature=0.1, mmd_weight=0.1, "
    "steps_per_round=300, per_dim_variance=false) for every agent; repeatable.",
)
@click.option(
    "--anchor-norm",
    type=FiniteFloat(0.0, 1e6),
    default=3.8,
    show_default=True,
    help="Norm of the context anchor every embedding is offset by (0: no anchor).",
)
@click.option(
    "--shared-dims",
    type=click.IntRange(0, 4096),
    default=0,
    show_default=True,
    help="Only the first K embedding dimensions take part in osmosis (affinity, sub-contexts, "
    "target and the trainer's pull); the others are each agent's own. 0: all of them.",
)
@one_line_errors
def simulate(
    adversary_specs: Sequence[str],
    adversary_first: bool,
    trainer_sets: Sequence[str],
    anchor_norm: float,
    shared_dims: int,
    **flags: Any,
) -> None:
    """Run several agents in one process with an in-memory exchange.

    Everything but the network is the real thing: each agent trains its own encoder, embeds with
    onnxruntime, sends int8 wire frames to its neighbours and decides its sub-context from what
    it alone received.
    """
    levers = parse_trainer_sets(trainer_sets)
    job = prepare(**flags)
    job = dataclasses.replace(
        job, settings=_with_levers(job.settings, levers, anchor_norm, shared_dims)
    )
    if adversary_first and not adversary_specs:
        raise ConfigError("--adversary-first: there is no --adversary")
    job = dataclasses.replace(
        job, settings=dataclasses.replace(job.settings, adversary_first=adversary_first)
    )
    adversaries = _adversaries(adversary_specs, job)
    from osml.ops.simulate import simulate as run_simulation

    announce(job, "; adversaries " + ", ".join(adversary_specs) if adversary_specs else "")
    result = run_simulation(
        job.dataset,
        job.settings,
        job.agent_ids,
        progress=print_rounds(job),
        adversaries=adversaries,
    )
    finish(job, result)


def _with_levers(
    settings: Any, levers: dict[str, Any], anchor_norm: float, shared_dims: int
) -> Any:
    """The simulation settings with ``--trainer-set``, ``--anchor-norm`` and ``--shared-dims``
    applied (ConfigError naming the flag and key)."""
    from osml.trainer.settings import settings_from_map

    if shared_dims > settings.embedding_dim:
        raise ConfigError(
            f"--shared-dims {shared_dims}: must be <= --embedding-dim {settings.embedding_dim}"
        )
    trainer = settings.trainer
    raw = {**dataclasses.asdict(trainer), **levers, "shared_dims": shared_dims}
    try:
        trainer = settings_from_map(raw, trainer.architecture)
    except ValueError as exc:
        raise ConfigError(f"--trainer-set {exc}") from None
    learner = dataclasses.replace(settings.learner, shared_dims=shared_dims)
    return dataclasses.replace(settings, trainer=trainer, learner=learner, anchor_norm=anchor_norm)


def _adversaries(specs: Sequence[str], job: Any) -> dict[str, Any]:
    """``--adversary`` flags -> id -> adversary (ConfigError naming the flag when malformed)."""
    from osml.core.anchor import context_anchor
    from osml.ops.adversaries import parse_adversary_option
    from osml.wire import topics

    s = job.settings
    anchor = context_anchor(s.context, s.embedding_dim, s.anchor_norm)
    out: dict[str, Any] = {}
    for spec in specs:
        try:
            ident, adversary = parse_adversary_option(spec, anchor, job.agent_ids)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if ident in out:
            raise ConfigError(f"--adversary {spec!r}: {ident!r} given twice")
        topics.check_name("agent id", ident)
        out[ident] = adversary
    return out
