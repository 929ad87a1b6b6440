#!/usr/bin/env python3
"""Build the initial encoders committed under models/: one per built-in architecture.

Each model is exactly what a default-configured agent gets from its trainer as model v1 (window
10, embedding dim 5, model seed 0, context "sim"): the encoder built with the seed, its input
normalised with the statistics of one agent's training series, its output offset by the context
anchor and its head rescaled so that every embedding dimension starts with the spread the
anti-collapse term asks for (``osml.trainer.fit.EncoderTrainer``). No optimiser step is taken.
The data is the built-in synthetic dataset ``generated:simple`` (data seed 0), agent "0".

Every model directory holds ``model.onnx``, its card ``model.card.json`` (sha256-pinned, the
format ``osml.agent.modelcard`` reads) and a ``README.md`` saying how it was made;
``models/README.md`` indexes them.

    python scripts/build_models.py             # (re)write models/
    python scripts/build_models.py --check     # rebuild in a temp dir, compare bytes with models/

The build is deterministic (seeded weights, one torch thread, no timestamps), so on one CPU it
gives the same bytes; another CPU may round a float32 result in the last bit, so --check accepts
weights equal within a relative 1e-5 (and the hashes that follow from them). It exits 0 when the
committed files are what this code builds, and 1 (listing the differences) otherwise.
Needs the trainer extra (torch).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This tree's osml, even where another checkout is installed.
sys.path.insert(0, str(ROOT / "agent"))

import numpy as np

import osml
from osml.agent.config import ModelSection
from osml.agent.data import load_dataset, windows
from osml.agent.modelcard import ModelCard, write_model
from osml.core.anchor import context_anchor

DATASET = "generated:simple"
DATA_SEED = 0
AGENT = "0"
CONTEXT = "sim"  # the context `osml simulate` and `osml run` use by default
VERSION = 1  # an agent numbers the trainer's first model v1
MODEL_FILE = "model.onnx"
ARCHITECTURES = ("mlp", "gru", "conv")  # osml.trainer.encoders.ARCHITECTURES, in build order


@dataclass(frozen=True)
class Built:
    """One model as built: its directory name, bytes, card and README text."""

    name: str
    model: bytes
    card: ModelCard
    readme: str


def model_name(architecture: str, window: int, n_features: int, embedding_dim: int) -> str:
    return f"{architecture}-w{window}-f{n_features}-d{embedding_dim}"


def rebuild_command(seed: int) -> str:
    return "python scripts/build_models.py" + (f" --seed {seed}" if seed else "")


def _width(enc: object) -> str:
    from osml.trainer.encoders import ConvEncoder, GRUEncoder, MLPEncoder

    if isinstance(enc, MLPEncoder):
        return f"{enc.hidden.out_features} tanh hidden units"
    if isinstance(enc, GRUEncoder):
        return f"{enc.gru.hidden_size} hidden units"
    if isinstance(enc, ConvEncoder):
        return f"2 convolutions of {enc.conv1.out_channels} channels"
    return "default width"


def build(architecture: str, seed: int) -> Built:
    """The initial encoder an agent of ``generated:simple`` gets for ``architecture``."""
    import torch

    from osml.trainer.fit import EncoderTrainer
    from osml.trainer.settings import TrainerSettings

    defaults = ModelSection()
    series = np.asarray(load_dataset(DATASET, seed=DATA_SEED)[AGENT].train, dtype=np.float32)
    train_windows = np.ascontiguousarray(windows(series, defaults.window))
    anchor = context_anchor(CONTEXT, defaults.embedding_dim, defaults.anchor_norm)
    settings = TrainerSettings(architecture=architecture)
    # The same construction as the trainer service's registration (osml.trainer.service).
    trainer = EncoderTrainer(
        settings,
        defaults.window,
        series.shape[1],
        defaults.embedding_dim,
        seed=seed,
        train_data=series,
        offset=anchor,
    )
    trainer.version = VERSION - 1
    model, card, _ = trainer.export(train_windows, agent=AGENT, context=CONTEXT)
    name = model_name(architecture, card.window, card.n_features, card.embedding_dim)
    width = _width(trainer.encoder)
    rows = [
        ("architecture", f"`{card.architecture}` ({width})"),
        ("input shape", f"(batch, {card.window}, {card.n_features}) float32, input `windows`"),
        ("window", str(card.window)),
        ("n_features", str(card.n_features)),
        ("embedding_dim", str(card.embedding_dim)),
        ("output", f"(batch, {card.embedding_dim}) float32, output `embeddings`"),
        ("model version", str(card.version)),
        ("seed", str(seed)),
        ("dataset", f"`{DATASET}` (data seed {DATA_SEED}), agent `{AGENT}`, {len(series)} rows"),
        ("agent", f"`{card.agent}`"),
        ("context", f"`{card.context}` (anchor norm {defaults.anchor_norm:g})"),
        (
            "trainer settings",
            f"`TrainerSettings` defaults (init_std {settings.init_std:g}, "
            f"objective {settings.objective})",
        ),
        ("training steps", "0 (initialisation only)"),
        ("parity", "onnxruntime matches torch within 1e-4 on 256 of those windows"),
        ("size", f"{len(model)} bytes"),
        ("sha256", f"`{card.sha256}`"),
        ("osml version", osml.__version__),
        ("torch version", torch.__version__.split("+")[0]),
        ("rebuild", f"`{rebuild_command(seed)}`"),
    ]
    readme = "\n".join(
        [
            f"# {name}: initial `{architecture}` encoder",
            "",
            f"The model v{card.version} a default-configured agent gets from its trainer before "
            "any exchange round: the",
            f"`{architecture}` encoder initialised with seed {seed}, its input normalised with "
            f"agent `{AGENT}`'s training series,",
            f"its output centred on the `{CONTEXT}` context anchor and its head rescaled so that "
            "every embedding",
            f"dimension starts with standard deviation {settings.init_std:g} on that series. "
            "It has not been trained.",
            "",
            "| field | value |",
            "| --- | --- |",
            *(f"| {key} | {value} |" for key, value in rows),
            "",
        ]
    )
    return Built(name, model, card, readme)


def index(models: list[Built], seed: int) -> str:
    """``models/README.md``: what these files are and how an agent uses them."""
    first = models[0]
    table = [
        f"| [`{b.name}`]({b.name}/README.md) | `{b.card.architecture}` | "
        f"({b.card.window}, {b.card.n_features}) | {b.card.embedding_dim} | {len(b.model)} | "
        f"`{b.card.sha256[:16]}` |"
        for b in models
    ]
    return "\n".join(
        [
            "# Initial encoders",
            "",
            "One initial encoder per built-in architecture, as ONNX plus its model card. Each is "
            "what a",
            "default-configured agent (window 10, embedding dim 5, model seed 0) of context "
            f"`{CONTEXT}` gets from",
            f"its trainer as model v{VERSION}, built on agent `{AGENT}` of the synthetic dataset "
            f"`{DATASET}`:",
            "seeded weights, input normalisation from that agent's training series, output "
            "centred on the",
            "context anchor, head scaled to the trainer's initial spread. No training step has "
            "been taken.",
            "",
            "| model | architecture | input (window, n_features) | embedding dim | bytes | "
            "sha256 (prefix) |",
            "| --- | --- | --- | --- | --- | --- |",
            *table,
            "",
            "## What they are for",
            "",
            "A device that never trains: give the agent a model and no `[trainer]` table,",
            "",
            "```toml",
            "[model]",
            f'architecture = "{first.card.architecture}"',
            f"window = {first.card.window}",
            f"embedding_dim = {first.card.embedding_dim}",
            f'path = "/opt/osml/models/{first.name}/{MODEL_FILE}"   # its card sits beside it',
            "```",
            "",
            "and the agent installs that model (its card's sha256 and shapes are checked by",
            "`osml.agent.inference.OnnxEncoder`) and only embeds with it: inference-only mode",
            '(its status says `"mode": "inference-only"`; see `docs/agent.md`). The agent\'s',
            "data must match the card's input shape (window and number of features) and the "
            "fleet's embedding",
            "dimension. With a trainer the same file is simply the starting point the trainer "
            "would otherwise build.",
            "",
            "They also serve as fixed, known-good models for tests and benchmarks: each loads "
            "in onnxruntime",
            "alone, without torch.",
            "",
            "## Rebuilding",
            "",
            "```sh",
            rebuild_command(seed) + "            # rewrite models/ (needs torch)",
            rebuild_command(seed) + " --check    # exit 1 if the committed bytes differ",
            "```",
            "",
            "The build is deterministic: seeded weights, one torch thread, no timestamps in "
            "cards or ONNX",
            "files. A change to the encoders, the trainer's initialisation, the export or the "
            "osml version",
            "changes these files: rebuild and commit them with that change "
            "(`tests/test_models.py` checks).",
            "Rebuilds gave the same bytes across runs and torch thread counts on x86-64; another "
            "CPU family",
            "may round the initial scaling differently in the last bit, and `--check` would say "
            "so.",
            "",
        ]
    )


def build_all(seed: int) -> tuple[list[Built], str]:
    models = [build(arch, seed) for arch in ARCHITECTURES]
    return models, index(models, seed)


def write(out: Path, models: list[Built], index_text: str) -> list[Path]:
    """Write every model directory and the index under ``out``; returns the files written."""
    written = []
    for b in models:
        directory = out / b.name
        write_model(directory / MODEL_FILE, b.model, b.card)
        (directory / "README.md").write_text(b.readme)
        written += [directory / MODEL_FILE, directory / "model.card.json", directory / "README.md"]
    (out / "README.md").write_text(index_text)
    return [*written, out / "README.md"]


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# The same code on another CPU can round a float32 result differently (a vectorised sum in
# another order): the rebuilt weights then differ from the committed ones in the last bit or so.
TOLERANCE = 1e-5  # relative, per weight
_HASH = re.compile(rb"[0-9a-f]{16,64}")


def same_model(a: bytes, b: bytes) -> bool:
    """True when two ONNX models have the same graph and weights equal within ``TOLERANCE``."""
    if a == b:
        return True
    import onnx
    from onnx import numpy_helper

    ma, mb = onnx.load_from_string(a), onnx.load_from_string(b)
    wa = {t.name: numpy_helper.to_array(t) for t in ma.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in mb.graph.initializer}
    if wa.keys() != wb.keys():
        return False
    for name, x in wa.items():
        y = wb[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        scale = TOLERANCE * max(1.0, float(np.abs(x).max(initial=0.0)))
        if not np.allclose(x, y, rtol=TOLERANCE, atol=scale):
            return False
    del ma.graph.initializer[:]
    del mb.graph.initializer[:]
    return bool(
        ma.SerializeToString(deterministic=True) == mb.SerializeToString(deterministic=True)
    )


def same_file(name: str, have: bytes, fresh: bytes) -> bool:
    """Byte-equal, or (built on another CPU) a model within ``TOLERANCE`` and a text that differs
    only in the hashes that follow from the model's bytes (each card's sha256 is checked against
    its model wherever a model is loaded)."""
    if have == fresh:
        return True
    if name.endswith(".onnx"):
        return same_model(have, fresh)
    return _HASH.sub(b"#", have) == _HASH.sub(b"#", fresh)


def differences(committed: Path, seed: int = 0) -> list[str]:
    """Rebuild into a temp dir; one line per file that is missing, extra or different (beyond
    what another CPU's rounding explains: :func:`same_file`)."""
    with tempfile.TemporaryDirectory(prefix="osml-models-") as tmp:
        models, index_text = build_all(seed)
        write(Path(tmp), models, index_text)
        fresh = _files(Path(tmp))
    have = _files(committed) if committed.is_dir() else {}
    lines = [f"missing: {name}" for name in sorted(set(fresh) - set(have))]
    lines += [f"not built by this script: {name}" for name in sorted(set(have) - set(fresh))]
    lines += [
        f"differs: {name} ({len(have[name])} bytes committed, {len(fresh[name])} rebuilt)"
        for name in sorted(set(fresh) & set(have))
        if not same_file(name, have[name], fresh[name])
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=ROOT / "models",
        metavar="DIR",
        help="directory to write, or to compare with under --check (default: models/ of this "
        "repository)",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="write nothing: rebuild into a temp dir and compare bytes with --out; exit 1 on "
        "any difference",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="encoder initialisation seed (default: 0, the agent's [model] seed default)",
    )
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    if args.check:
        diffs = differences(args.out, args.seed)
        for line in diffs:
            print(line)
        if diffs:
            fix = rebuild_command(args.seed)
            print(f"{args.out}: {len(diffs)} difference(s); rebuild with `{fix}`")
            return 1
        print(f"{args.out}: up to date")
        return 0
    models, index_text = build_all(args.seed)
    for path in write(args.out, models, index_text):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
