"""``osml embed``: a recording turned into embeddings with a device's model (torch-free)."""

from __future__ import annotations

import io
from pathlib import Path

import click
import numpy as np

from osml.cli.errors import one_line_errors

__all__ = ["embed_command"]

EMBED_EPILOG = """\b
Examples:
  osml embed --model /var/lib/osml/sensor-3 --data day.csv --out day-embeddings.csv
  osml embed --model models/mlp-w10-f1-d5 --data recording.csv --out emb.npy

\b
--model is a model file (model.onnx, its card beside it) or a directory holding one: an
agent's state directory gives the device's current model. --data is a CSV with a header of
feature names and one row per step (the format of a csv: data source). Row i of the output is
the embedding of the window that ends at row i + window - 1 of the input: .npy writes a
(windows, dim) float32 array, .csv a header "step,e0,e1,..." and one line per window.
"""


def _model_file(path: Path) -> Path:
    return path / "model.onnx" if path.is_dir() else path


@click.command("embed", epilog=EMBED_EPILOG)
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    metavar="PATH",
    help="A model.onnx (with its card) or a directory holding one, e.g. an agent's state dir.",
)
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The recording: a CSV with a header of feature names and one row per step.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Where to write the embeddings: .npy or .csv.",
)
@one_line_errors
def embed_command(model_path: Path, data_path: Path, out_path: Path) -> None:
    """Embed a recording with a device's current model (no torch, no broker)."""
    from osml.agent.data import read_agent_csv, windows
    from osml.agent.inference import OnnxEncoder
    from osml.errors import DataError
    from osml.files import write_atomic

    if out_path.suffix not in (".npy", ".csv"):
        raise click.UsageError(f"--out {out_path}: use a .npy or .csv file name")
    encoder = OnnxEncoder.load(_model_file(model_path))
    card = encoder.card
    series = read_agent_csv(data_path)
    if series.shape[1] != card.n_features:
        raise DataError(
            f"{data_path}: {series.shape[1]} features, the model takes {card.n_features}"
        )
    if len(series) < card.window:
        raise DataError(f"{data_path}: {len(series)} rows, the model's window is {card.window}")
    emb = encoder.encode(np.ascontiguousarray(windows(series, card.window)))
    if out_path.suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, emb, allow_pickle=False)
        data = buf.getvalue()
    else:
        steps = np.arange(len(emb)) + card.window - 1
        lines = ["step," + ",".join(f"e{i}" for i in range(emb.shape[1]))]
        lines += [f"{s}," + ",".join(repr(float(v)) for v in row) for s, row in zip(steps, emb)]
        data = ("\n".join(lines) + "\n").encode()
    write_atomic(out_path, data)
    click.echo(
        f"wrote {out_path}: {len(emb)} embeddings of dim {emb.shape[1]} "
        f"(model v{card.version}, window {card.window})"
    )
