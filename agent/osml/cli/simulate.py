"""``osml simulate``: several agents in one process, exchanging over memory."""

from __future__ import annotations

from typing import Any

import click

from osml.cli.errors import one_line_errors
from osml.cli.options import prepare, run_options
from osml.cli.progress import announce, finish, print_rounds

__all__ = ["simulate"]

SIMULATE_EPILOG = """\b
Examples:
  osml simulate --data generated:simple --rounds 10 --out runs/demo
  osml simulate --data path/to/simple-context --agents 0,1,M0 --topology ring
  osml simulate --data generated:complex --architecture 0=gru,4=mlp --objective masked

\b
Writes OUT/report.json, OUT/embeddings/<agent>.npy and, with matplotlib
(pip install 'osml[plot]'), OUT/similarity.png and OUT/alignment.png.
"""


@click.command("simulate", epilog=SIMULATE_EPILOG)
@run_options
@one_line_errors
def simulate(**flags: Any) -> None:
    """Run several agents in one process with an in-memory exchange.

    Everything but the network is the real thing: each agent trains its own encoder, embeds with
    onnxruntime, sends int8 wire frames to its neighbours and decides its sub-context from what
    it alone received.
    """
    from osml.ops.simulate import simulate as run_simulation

    job = prepare(**flags)
    announce(job)
    result = run_simulation(job.dataset, job.settings, job.agent_ids, progress=print_rounds(job))
    finish(job, result)
