"""Tests for the trainer: encoders, ONNX export that reproduces torch, round-by-round fitting."""

from __future__ import annotations

import copy
import hashlib
import io
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed: pip install 'osml[trainer]'")

import onnx
import onnxruntime as ort
import torch

from osml.core.anchor import context_anchor
from osml.errors import ExportError
from osml.trainer.encoders import ARCHITECTURES, Encoder, build_encoder
from osml.trainer.export import build_onnx, check_parity, export_onnx
from osml.trainer.fit import EncoderTrainer
from osml.trainer.settings import OBJECTIVES, TrainerSettings

WINDOW, EMB = 10, 6
MEANS = np.array([20.0, -3.0, 1000.0])
STDS = np.array([4.0, 0.25, 150.0])


def make_encoder(arch: str, n_features: int, seed: int = 0) -> Encoder:
    enc = build_encoder(arch, WINDOW, n_features, EMB, seed=seed)
    enc.set_normalisation(MEANS[:n_features], STDS[:n_features])
    enc.set_offset(context_anchor(f"ctx-{arch}", EMB, 3.0))
    return enc.eval()


def make_windows(n: int, n_features: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = MEANS[:n_features] + STDS[:n_features] * rng.standard_normal((n, WINDOW, n_features))
    return x.astype(np.float32)


def torch_embed(enc: Encoder, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = enc(torch.from_numpy(x)).numpy()
    return out


def ort_embed(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(["embeddings"], {"windows": x})[0]
    return out


CASES = [(arch, nf) for arch in ("gru", "mlp", "conv") for nf in (1, 3)]


# --- encoders -------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "n_features"), CASES)
def test_encoder_output_shape(arch: str, n_features: int) -> None:
    enc = make_encoder(arch, n_features)

    out = torch_embed(enc, make_windows(5, n_features))

    assert out.shape == (5, EMB)
    assert np.all(np.isfinite(out))


def test_build_encoder_is_reproducible_and_seed_dependent() -> None:
    a, b, c = (build_encoder("gru", WINDOW, 2, EMB, seed=s) for s in (3, 3, 4))

    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.head.weight, c.head.weight)


def test_build_encoder_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    build_encoder("conv", WINDOW, 2, EMB, seed=99)

    assert torch.equal(torch.rand(3), expected)


def test_build_encoder_rejects_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_encoder("transformer", WINDOW, 1, EMB, seed=0)


def test_architectures_registry() -> None:
    assert set(ARCHITECTURES) == {"gru", "mlp", "conv"}
    assert all(cls.architecture == name for name, cls in ARCHITECTURES.items())


@pytest.mark.parametrize("arch", ["gru", "mlp", "conv"])
def test_normalisation_and_offset_act_on_raw_input_and_output(arch: str) -> None:
    raw = make_encoder(arch, 3)
    plain = copy.deepcopy(raw)
    plain.set_normalisation(np.zeros(3), np.ones(3))
    plain.set_offset(np.zeros(EMB))
    x = make_windows(4, 3)
    z = ((x - MEANS) / STDS).astype(np.float32)
    offset = context_anchor("ctx-" + arch, EMB, 3.0)

    np.testing.assert_allclose(torch_embed(raw, x), torch_embed(plain, z) + offset, atol=1e-5)


def test_near_zero_std_is_replaced_by_one() -> None:
    enc = build_encoder("mlp", WINDOW, 2, EMB, seed=0)

    enc.set_normalisation(np.array([1.0, 2.0]), np.array([0.0, 1e-9]))

    assert enc.in_std.tolist() == [1.0, 1.0]


# --- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "n_features"), CASES)
def test_export_parity_on_random_windows(arch: str, n_features: int) -> None:
    enc = make_encoder(arch, n_features)
    windows = make_windows(64, n_features)

    model, _, diff = export_onnx(enc, windows, version=3)

    assert diff <= 1e-5
    # measured independently of the exporter's own check
    fresh = make_windows(50, n_features, seed=9)
    assert np.max(np.abs(ort_embed(model, fresh) - torch_embed(enc, fresh))) <= 1e-5


@pytest.mark.parametrize(("arch", "n_features"), CASES)
def test_exported_graph_io_and_dynamic_batch(arch: str, n_features: int) -> None:
    enc = make_encoder(arch, n_features)
    model, _, _ = export_onnx(enc, make_windows(8, n_features), version=1)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    assert [i.name for i in sess.get_inputs()] == ["windows"]
    assert [o.name for o in sess.get_outputs()] == ["embeddings"]
    assert not isinstance(sess.get_inputs()[0].shape[0], int)  # symbolic batch
    for batch in (1, 7):
        x = make_windows(batch, n_features, seed=batch)
        out = sess.run(["embeddings"], {"windows": x})[0]
        assert out.shape == (batch, EMB)
        np.testing.assert_allclose(out, torch_embed(enc, x), atol=1e-5)


@pytest.mark.parametrize("arch", ["gru", "mlp", "conv"])
def test_exported_model_is_one_self_contained_file(arch: str) -> None:
    model, _, _ = export_onnx(make_encoder(arch, 3), make_windows(4, 3), version=1)

    proto = onnx.load(io.BytesIO(model))

    onnx.checker.check_model(proto)
    assert len(proto.graph.initializer) > 0
    for init in proto.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, init.name
        assert not init.external_data, init.name


@pytest.mark.parametrize(("arch", "n_features"), CASES)
def test_export_card_fields(arch: str, n_features: int) -> None:
    enc = make_encoder(arch, n_features)

    model, card, _ = export_onnx(
        enc, make_windows(4, n_features), version=7, agent="dev-1", context="kitchen"
    )

    assert card.version == 7
    assert card.architecture == arch
    assert card.window == WINDOW
    assert card.n_features == n_features
    assert card.embedding_dim == EMB
    assert card.sha256 == hashlib.sha256(model).hexdigest()
    assert card.input_name == "windows" and card.output_name == "embeddings"
    assert card.agent == "dev-1" and card.context == "kitchen"


def test_export_is_deterministic() -> None:
    enc = make_encoder("gru", 2)

    assert build_onnx(enc) == build_onnx(enc)


@pytest.mark.parametrize("arch", ["gru", "mlp", "conv"])
def test_check_parity_rejects_model_of_a_different_encoder(arch: str) -> None:
    enc = make_encoder(arch, 3)
    other = copy.deepcopy(enc)
    with torch.no_grad():
        other.head.weight.add_(0.05)
    windows = make_windows(16, 3)

    with pytest.raises(ExportError, match="differs from torch"):
        check_parity(enc, build_onnx(other), windows)


def test_check_parity_rejects_unloadable_bytes() -> None:
    with pytest.raises(ExportError, match="cannot run"):
        check_parity(make_encoder("mlp", 1), b"not an onnx model", make_windows(4, 1))


def test_check_parity_returns_the_difference() -> None:
    enc = make_encoder("mlp", 3)

    diff = check_parity(enc, build_onnx(enc), make_windows(8, 3))

    assert 0.0 <= diff <= 1e-5


@pytest.mark.parametrize("n", [0, 1])
def test_export_needs_at_least_two_windows(n: int) -> None:
    with pytest.raises(ExportError, match="at least 2"):
        export_onnx(make_encoder("mlp", 1), make_windows(n, 1), version=1)


def test_export_rejects_unknown_exporter() -> None:
    with pytest.raises(ExportError, match="unknown exporter"):
        export_onnx(make_encoder("mlp", 1), make_windows(4, 1), version=1, exporter="tracing")


def test_build_onnx_rejects_unknown_encoder_class() -> None:
    class Odd(Encoder):
        architecture = "odd"

    with pytest.raises(ExportError, match="no ONNX builder"):
        build_onnx(Odd(WINDOW, 1, EMB))


def test_dynamo_and_builder_exporters_agree_on_mlp() -> None:
    enc = make_encoder("mlp", 3)
    windows = make_windows(32, 3)

    dyn_model, dyn_card, dyn_diff = export_onnx(enc, windows, version=2, exporter="dynamo")
    own_model, _, _ = export_onnx(enc, windows, version=2)

    assert dyn_diff <= 1e-5
    assert dyn_card.sha256 == hashlib.sha256(dyn_model).hexdigest()
    for batch in (1, 7):
        x = make_windows(batch, 3, seed=40 + batch)
        np.testing.assert_allclose(ort_embed(dyn_model, x), ort_embed(own_model, x), atol=1e-5)


# --- fit ------------------------------------------------------------------------------------


def series_and_windows(
    n: int = 300, n_features: int = 2, seed: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    series = (
        5.0 + np.sin(t / 7.0 + np.arange(n_features)) + 0.3 * rng.standard_normal((n, n_features))
    )
    windows = np.stack([series[i : i + WINDOW] for i in range(n - WINDOW + 1)]).astype(np.float32)
    return series, windows


def make_trainer(objective: str, arch: str = "mlp", **kw: Any) -> tuple[EncoderTrainer, np.ndarray]:
    series, windows = series_and_windows()
    settings = TrainerSettings(
        architecture=arch, objective=objective, steps_per_round=10, batch_size=64, **kw
    )
    trainer = EncoderTrainer(settings, WINDOW, 2, EMB, seed=3, train_data=series)
    return trainer, windows


@pytest.mark.parametrize(
    "kwargs",
    [
        {"architecture": "lstm"},
        {"objective": "contrastive"},
        {"steps_per_round": 0},
        {"batch_size": 1},
        {"learning_rate": 0.0},
        {"mask_ratio": 0.0},
        {"mask_ratio": 1.0},
    ],
)
def test_trainer_settings_reject_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrainerSettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("arch", ["gru", "mlp", "conv"])
def test_fit_returns_finite_losses(objective: str, arch: str) -> None:
    trainer, windows = make_trainer(objective, arch)
    targets = np.random.default_rng(0).standard_normal((len(windows), EMB)).astype(np.float32)

    losses = trainer.fit(windows, targets)

    assert set(losses) == {"align", "ssl"}
    assert all(np.isfinite(v) and v >= 0.0 for v in losses.values())


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_fit_moves_toward_a_fixed_target(objective: str) -> None:
    trainer, windows = make_trainer(objective)
    # a target the encoder can reach: a fixed linear read-out of each window's last step
    proj = np.random.default_rng(1).standard_normal((2, EMB))
    targets = (windows[:, -1, :] - 5.0) @ proj

    def distance() -> float:
        with torch.no_grad():
            emb = trainer.encoder.eval()(torch.from_numpy(windows)).numpy()
        return float(np.mean(np.sum((emb - targets) ** 2, axis=1)))

    before = distance()
    first = trainer.fit(windows, targets)["align"]
    for _ in range(6):
        last = trainer.fit(windows, targets)["align"]

    assert last < 0.7 * first
    assert distance() < 0.7 * before


def test_trainer_applies_offset_and_normalisation() -> None:
    series, _ = series_and_windows()
    offset = context_anchor("kitchen", EMB, 2.0)

    trainer = EncoderTrainer(
        TrainerSettings(architecture="mlp"),
        WINDOW,
        2,
        EMB,
        seed=0,
        train_data=series,
        offset=offset,
    )

    np.testing.assert_allclose(trainer.encoder.offset.numpy(), offset, rtol=1e-6)
    np.testing.assert_allclose(trainer.encoder.in_mean.numpy(), series.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(trainer.encoder.in_std.numpy(), series.std(axis=0), rtol=1e-5)


def test_trainer_export_bumps_version_and_passes_parity() -> None:
    trainer, windows = make_trainer("vc")

    model1, card1, diff1 = trainer.export(windows, agent="a", context="c")
    trainer.fit(windows, np.zeros((len(windows), EMB), np.float32))
    model2, card2, _ = trainer.export(windows)

    assert (card1.version, card2.version) == (1, 2)
    assert card1.agent == "a" and card1.context == "c"
    assert diff1 <= 1e-5
    assert model1 != model2  # the weights moved between the two exports
    np.testing.assert_allclose(
        ort_embed(model2, windows[:9]), torch_embed(trainer.encoder, windows[:9]), atol=1e-5
    )
