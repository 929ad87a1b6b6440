"""The committed initial encoders under models/: cards verify, models run, READMEs tell the truth.

Torch-free except the rebuild tests at the end (marked ``torch``), which regenerate models/ with
scripts/build_models.py and compare bytes, and ask a trainer for the same models an agent would.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from osml.agent.config import ModelSection
from osml.agent.data import load_dataset, windows
from osml.agent.inference import OnnxEncoder
from osml.agent.modelcard import card_path, read_card, read_model, sha256_hex
from osml.core.anchor import context_anchor

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
BUILTIN = ("mlp", "gru", "conv")  # osml.trainer.encoders.ARCHITECTURES, without importing torch
MODEL_PATHS = sorted(MODELS.glob("*/model.onnx"))


def model_id(path: Path) -> str:
    return path.parent.name


def readme_fields(path: Path) -> dict[str, str]:
    """The ``| field | value |`` rows of a model README, backticks stripped."""
    rows = re.findall(r"^\| ([^|]+?) \| (.+?) \|$", path.read_text(), flags=re.MULTILINE)
    return {k: v.replace("`", "") for k, v in rows if k not in ("field", "---")}


def agent_windows(window: int) -> np.ndarray:
    """The training windows the models were initialised on (generated:simple, agent 0)."""
    series = load_dataset("generated:simple", seed=0)["0"].train
    return np.ascontiguousarray(windows(series, window))


def test_every_builtin_architecture_has_a_model() -> None:
    defaults = ModelSection()
    cards = [read_card(p) for p in MODEL_PATHS]
    assert sorted(c.architecture for c in cards) == sorted(BUILTIN)
    for card in cards:
        assert (card.window, card.embedding_dim) == (defaults.window, defaults.embedding_dim)


@pytest.mark.parametrize("path", MODEL_PATHS, ids=model_id)
def test_card_pins_the_bytes_and_shapes(path: Path) -> None:
    model, card = read_model(path)  # raises unless the sha256 matches
    assert card.sha256 == sha256_hex(path.read_bytes())
    assert path.parent.name == (
        f"{card.architecture}-w{card.window}-f{card.n_features}-d{card.embedding_dim}"
    )
    enc = OnnxEncoder.from_bytes(model, card)
    (inp,), (out,) = enc.session.get_inputs(), enc.session.get_outputs()
    assert (inp.name, out.name) == (card.input_name, card.output_name)
    assert inp.shape[1:] == [card.window, card.n_features]
    assert out.shape[1:] == [card.embedding_dim]
    assert isinstance(inp.shape[0], str)  # a dynamic batch dimension
    assert 1_000 < len(model) < 32_000  # small enough to commit and to ship to a device


@pytest.mark.parametrize("path", MODEL_PATHS, ids=model_id)
def test_model_encodes_a_batch(path: Path) -> None:
    enc = OnnxEncoder.load(path)
    card = enc.card
    x = agent_windows(card.window)[:37]
    emb = enc.encode(x)
    assert emb.shape == (37, card.embedding_dim)
    assert emb.dtype == np.float32
    assert np.all(np.isfinite(emb))
    assert np.ptp(emb, axis=0).min() > 0  # different windows, different embeddings


@pytest.mark.parametrize("path", MODEL_PATHS, ids=model_id)
def test_model_starts_at_the_anchor_with_unit_spread(path: Path) -> None:
    # What the READMEs claim: on the series it was initialised with, each embedding dimension
    # has mean = the context anchor and standard deviation = the trainer's init_std (1.0).
    enc = OnnxEncoder.load(path)
    card = enc.card
    emb = enc.encode(agent_windows(card.window)).astype(np.float64)
    anchor = context_anchor(card.context, card.embedding_dim, ModelSection().anchor_norm)
    np.testing.assert_allclose(emb.mean(axis=0), anchor, atol=1e-3)
    np.testing.assert_allclose(emb.std(axis=0, ddof=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("path", MODEL_PATHS, ids=model_id)
def test_readme_agrees_with_the_card(path: Path) -> None:
    card = read_card(path)
    fields = readme_fields(path.parent / "README.md")
    assert fields["architecture"].split()[0] == card.architecture
    assert fields["window"] == str(card.window)
    assert fields["n_features"] == str(card.n_features)
    assert fields["embedding_dim"] == str(card.embedding_dim)
    assert fields["input shape"].startswith(f"(batch, {card.window}, {card.n_features})")
    assert fields["model version"] == str(card.version)
    assert fields["agent"] == card.agent
    assert fields["context"].split()[0] == card.context
    assert fields["dataset"].startswith("generated:simple ")
    assert fields["sha256"] == card.sha256
    assert fields["size"] == f"{path.stat().st_size} bytes"
    assert re.fullmatch(r"\d+", fields["seed"])
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", fields["osml version"])
    assert fields["rebuild"].startswith("python scripts/build_models.py")


def test_index_lists_every_model() -> None:
    index = (MODELS / "README.md").read_text()
    for path in MODEL_PATHS:
        card = read_card(path)
        assert f"[`{path.parent.name}`]({path.parent.name}/README.md)" in index
        assert card.sha256[:16] in index
    assert 'path = "' in index  # how an inference-only agent is configured


# --- rebuilding (needs torch) ---------------------------------------------------------------


def build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_models", ROOT / "scripts" / "build_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.mark.torch
def test_rebuild_gives_the_committed_bytes() -> None:
    pytest.importorskip("torch")
    script = build_script()
    assert script.differences(MODELS) == []
    assert script.main(["--check", "--out", str(MODELS)]) == 0


@pytest.mark.torch
def test_check_reports_a_changed_file() -> None:
    pytest.importorskip("torch")
    script = build_script()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        assert script.main(["--out", str(out)]) == 0
        assert script.main(["--check", "--out", str(out)]) == 0
        readme = next(out.glob("*/README.md"))
        readme.write_text(readme.read_text() + "edited\n")
        (out / "stray.txt").write_text("x")
        diffs = script.differences(out)
        assert diffs == [
            "not built by this script: stray.txt",
            f"differs: {readme.relative_to(out).as_posix()} "
            f"({readme.stat().st_size} bytes committed, {readme.stat().st_size - 7} rebuilt)",
        ]
        assert script.main(["--check", "--out", str(out)]) == 1


@pytest.mark.torch
@pytest.mark.parametrize("path", MODEL_PATHS, ids=model_id)
def test_trainer_gives_a_default_agent_the_committed_model(path: Path) -> None:
    # The models are what an agent's own trainer builds as v1, asked the way the runtime asks
    # (osml.agent.runtime: _register_with_trainer, then initial_model).
    pytest.importorskip("torch")
    from osml.trainer.service import TrainerService
    from osml.wire.ipc import PROTOCOL_VERSION, pack_array

    card = read_card(path)
    defaults = ModelSection()
    series = np.asarray(load_dataset("generated:simple", seed=0)[card.agent].train, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        service = TrainerService(tmp)
        reply = service.handle(
            {
                "v": PROTOCOL_VERSION,
                "op": "init",
                "agent_id": card.agent,
                "context": card.context,
                "architecture": card.architecture,
                "window": defaults.window,
                "n_features": series.shape[1],
                "embedding_dim": defaults.embedding_dim,
                "seed": defaults.seed,
                "train_data": pack_array(series),
                "anchor": pack_array(
                    context_anchor(card.context, defaults.embedding_dim, defaults.anchor_norm)
                ),
                "settings": {"architecture": card.architecture},
            }
        )
        assert reply["ok"], reply
        reply = service.handle(
            {
                "v": PROTOCOL_VERSION,
                "op": "initial_model",
                "agent_id": card.agent,
                "context": card.context,
                "windows": pack_array(windows(series, defaults.window)),
                "version": 1,
            }
        )
    assert reply["ok"], reply
    script = build_script()
    # Byte-equal on the CPU that built models/; on another, equal within float32 rounding, and
    # the card equal but for the sha256 that follows from the bytes.
    assert script.same_model(reply["model"], path.read_bytes())
    got, want = json.loads(reply["card"]), json.loads(card_path(path).read_text())
    assert {**got, "sha256": None} == {**want, "sha256": None}
    assert got["sha256"] == hashlib.sha256(reply["model"]).hexdigest()
