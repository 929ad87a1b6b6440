"""Tests for osml.agent.modelcard and osml.agent.inference: cards, atomic writes, checked loads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from osml.agent.inference import OnnxEncoder
from osml.agent.modelcard import (
    ModelCard,
    card_path,
    check_owner,
    read_card,
    sha256_hex,
    write_model,
)
from osml.errors import ModelError, OsmlError
from osml.files import write_atomic

WINDOW, N_FEATURES, EMB = 8, 2, 5


def make_card(**overrides: object) -> ModelCard:
    fields: dict[str, object] = {
        "version": 1,
        "architecture": "mlp",
        "window": WINDOW,
        "n_features": N_FEATURES,
        "embedding_dim": EMB,
        "sha256": "0" * 64,
    }
    fields.update(overrides)
    return ModelCard(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def exported(needs_torch: None) -> tuple[bytes, ModelCard, np.ndarray, np.ndarray]:
    """An exported mlp encoder: model bytes, card, probe windows and torch's embeddings of them."""
    import torch

    from osml.trainer.encoders import build_encoder
    from osml.trainer.export import export_onnx

    enc = build_encoder("mlp", WINDOW, N_FEATURES, EMB, seed=11)
    enc.set_normalisation(np.array([10.0, -1.0]), np.array([2.0, 0.5]))
    enc.set_offset(np.arange(EMB, dtype=np.float32))
    rng = np.random.default_rng(0)
    windows = (np.array([10.0, -1.0]) + rng.standard_normal((20, WINDOW, N_FEATURES))).astype(
        np.float32
    )
    model, card, _ = export_onnx(enc.eval(), windows, version=4, agent="dev-a", context="ctx")
    with torch.no_grad():
        want = enc(torch.from_numpy(windows)).numpy()
    return model, card, windows, want


# --- ModelCard ------------------------------------------------------------------------------


def test_card_json_roundtrip() -> None:
    card = make_card(agent="a", context="c")

    text = card.to_json()

    assert json.loads(text)["input_shape"] == ["batch", WINDOW, N_FEATURES]
    assert ModelCard.from_json(text) == card


def test_card_input_shape() -> None:
    assert make_card().input_shape == ("batch", WINDOW, N_FEATURES)


@pytest.mark.parametrize(
    "overrides",
    [
        {"window": 0},
        {"n_features": -1},
        {"embedding_dim": 2.0},
        {"version": -1},
        {"window": True},
        {"sha256": "abc"},
    ],
)
def test_card_rejects_bad_fields(overrides: dict[str, object]) -> None:
    with pytest.raises(ModelError):
        make_card(**overrides)


def test_card_version_zero_is_allowed() -> None:
    assert make_card(version=0).version == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"version": 1}', "card")],
)
def test_card_from_bad_json(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelCard.from_json(text)


def test_card_from_json_rejects_unknown_keys() -> None:
    data = json.loads(make_card().to_json())
    data["pickle"] = "nope"

    with pytest.raises(ModelError, match="unknown keys"):
        ModelCard.from_json(json.dumps(data))


def test_card_path_naming() -> None:
    assert card_path("/m/encoder.onnx") == Path("/m/encoder.card.json")


def test_sha256_hex_matches_hashlib() -> None:
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_model_error_is_an_osml_error() -> None:
    assert issubclass(ModelError, OsmlError)


# --- atomic writes --------------------------------------------------------------------------


def test_write_atomic_writes_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "blob.bin"

    write_atomic(target, b"first")
    write_atomic(target, b"second")

    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["blob.bin"]


def test_write_atomic_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "blob.bin"

    with pytest.raises(TypeError):
        write_atomic(target, "text is not bytes")  # type: ignore[arg-type]

    assert list(tmp_path.iterdir()) == []


def test_write_model_refuses_mismatched_card(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="sha256"):
        write_model(tmp_path / "m.onnx", b"model", make_card(sha256="1" * 64))

    assert list(tmp_path.iterdir()) == []


def test_write_model_writes_pair_and_no_temp_files(
    tmp_path: Path, exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray]
) -> None:
    model, card, _, _ = exported
    path = tmp_path / "encoder.onnx"

    write_model(path, model, card)
    write_model(path, model, card)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.card.json", "encoder.onnx"]
    assert path.read_bytes() == model
    assert read_card(path) == card


# --- OnnxEncoder ----------------------------------------------------------------------------


def test_load_roundtrip_reproduces_torch(
    tmp_path: Path, exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray]
) -> None:
    model, card, windows, want = exported
    path = tmp_path / "encoder.onnx"
    write_model(path, model, card)

    enc = OnnxEncoder.load(path)
    got = enc.encode(windows)

    assert enc.version == 4
    assert enc.card == card
    assert got.dtype == np.float32 and got.shape == (20, EMB)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_encode_in_small_batches_matches_one_batch(
    exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray],
) -> None:
    model, card, windows, _ = exported
    enc = OnnxEncoder.from_bytes(model, card)

    np.testing.assert_array_equal(enc.encode(windows, batch=3), enc.encode(windows))


def test_encode_zero_windows(exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray]) -> None:
    model, card, _, _ = exported
    enc = OnnxEncoder.from_bytes(model, card)

    out = enc.encode(np.zeros((0, WINDOW, N_FEATURES), np.float32))

    assert out.shape == (0, EMB) and out.dtype == np.float32


def test_tampered_model_is_refused(
    tmp_path: Path, exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray]
) -> None:
    model, card, _, _ = exported
    path = tmp_path / "encoder.onnx"
    write_model(path, model, card)
    tampered = bytearray(model)
    tampered[-10] ^= 0xFF
    path.write_bytes(bytes(tampered))

    with pytest.raises(ModelError, match="sha256"):
        OnnxEncoder.load(path)


def test_missing_card_is_refused(
    tmp_path: Path, exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray]
) -> None:
    model, _, _, _ = exported
    path = tmp_path / "encoder.onnx"
    path.write_bytes(model)

    with pytest.raises(ModelError, match="model card"):
        OnnxEncoder.load(path)


def test_missing_model_is_refused(
    tmp_path: Path, exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray]
) -> None:
    _, card, _, _ = exported
    path = tmp_path / "encoder.onnx"
    card_path(path).write_text(card.to_json())

    with pytest.raises(ModelError, match="cannot read model"):
        OnnxEncoder.load(path)


def test_garbage_with_matching_card_is_refused() -> None:
    junk = b"definitely not onnx"

    with pytest.raises(ModelError, match="onnxruntime"):
        OnnxEncoder.from_bytes(junk, make_card(sha256=sha256_hex(junk)))


@pytest.mark.parametrize(
    "shape",
    [
        (3, WINDOW + 1, N_FEATURES),
        (3, WINDOW, N_FEATURES + 1),
        (3, WINDOW * N_FEATURES),
        (WINDOW, N_FEATURES),
    ],
)
def test_wrong_window_shape_is_refused(
    exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray], shape: tuple[int, ...]
) -> None:
    model, card, _, _ = exported
    enc = OnnxEncoder.from_bytes(model, card)

    with pytest.raises(ModelError, match="takes windows of shape"):
        enc.encode(np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    "overrides",
    [{"input_name": "x"}, {"output_name": "y"}, {"embedding_dim": EMB + 1}],
)
def test_card_that_does_not_describe_the_graph_is_refused(
    exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray], overrides: dict[str, object]
) -> None:
    model, card, _, _ = exported
    wrong = dataclasses.replace(card, **overrides)  # type: ignore[arg-type]

    with pytest.raises(ModelError):
        OnnxEncoder.from_bytes(model, wrong)


@pytest.mark.parametrize("overrides", [{"window": WINDOW + 2}, {"n_features": N_FEATURES + 1}])
def test_card_for_another_window_is_refused_with_model_error(
    exported: tuple[bytes, ModelCard, np.ndarray, np.ndarray], overrides: dict[str, object]
) -> None:
    model, card, _, _ = exported
    wrong = dataclasses.replace(card, **overrides)  # type: ignore[arg-type]

    with pytest.raises(ModelError):
        OnnxEncoder.from_bytes(model, wrong)


def test_check_owner_refuses_another_agents_or_contexts_card() -> None:
    card = ModelCard(1, "mlp", 10, 1, 5, "0" * 64, agent="a", context="lab")
    check_owner(card, "a", "lab", "x.card.json")
    check_owner(dataclasses.replace(card, agent="", context=""), "b", "other", "x")  # no claim
    with pytest.raises(ModelError, match=r"^x\.card\.json: .*agent 'a' in context 'lab'"):
        check_owner(card, "b", "lab", "x.card.json")
    with pytest.raises(ModelError, match="not 'a' in 'field'"):
        check_owner(card, "a", "field", "x.card.json")
