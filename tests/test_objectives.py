"""The self-supervised objectives and the shared-dimensions lever of the trainer (torch tier)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from osml.trainer.fit import EncoderTrainer
from osml.trainer.objectives import augment_windows, info_nce_loss, mmd_loss
from osml.trainer.settings import DECODER_OBJECTIVES, OBJECTIVES, TrainerSettings

WINDOW, EMB = 10, 5


def series(n: int = 1200) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n)
    cols = [np.sin(t / 15) + 0.1 * rng.standard_normal(n), 3 * np.cos(t / 40)]
    return (np.stack(cols, axis=1) + 5.0).astype(np.float32)


def windows_of(data: np.ndarray) -> np.ndarray:
    view = np.lib.stride_tricks.sliding_window_view(data, WINDOW, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def make_trainer(objective: str, **kw: object) -> EncoderTrainer:
    values: dict[str, object] = {"steps_per_round": 30, "batch_size": 128, **kw}
    settings = TrainerSettings(objective=objective, **values)  # type: ignore[arg-type]
    return EncoderTrainer(settings, WINDOW, 2, EMB, seed=1, train_data=series())


def embed(trainer: EncoderTrainer, windows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = trainer.encoder.eval()(torch.from_numpy(windows)).numpy()
    return out


# --- the losses -----------------------------------------------------------------------------


def test_info_nce_is_lower_for_matched_views_than_for_shuffled() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, EMB, generator=gen)
    view = z + 0.05 * torch.randn(z.shape, generator=gen)
    shuffled = view[torch.randperm(64, generator=gen)]

    matched = info_nce_loss(z, view, 0.2)
    unmatched = info_nce_loss(z, shuffled, 0.2)

    assert torch.isfinite(matched) and torch.isfinite(unmatched)
    assert matched < unmatched - 2.0
    # chance level is log(batch): a shuffled twin cannot be found
    assert unmatched > 0.8 * np.log(64)
    assert info_nce_loss(view, z, 0.2) == pytest.approx(matched.item(), rel=1e-5)


def test_info_nce_ignores_a_shared_offset() -> None:
    z1, z2 = torch.randn(32, EMB), torch.randn(32, EMB)
    offset = torch.full((EMB,), 50.0)

    assert info_nce_loss(z1 + offset, z2 + offset, 0.2) == pytest.approx(
        info_nce_loss(z1, z2, 0.2).item(), rel=1e-4
    )


def test_mmd_is_zero_for_identical_samples_and_grows_with_a_shift() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, EMB, generator=gen)
    y = torch.randn(128, EMB, generator=gen)

    same = mmd_loss(x, x.clone())
    shifted = [mmd_loss(x, y + s).item() for s in (0.0, 0.5, 2.0)]

    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert all(np.isfinite(shifted)) and min(shifted) >= 0.0
    assert shifted[0] < shifted[1] < shifted[2]
    assert shifted[2] > 20 * shifted[0]  # two samples of one law are close, a shifted one is not


def test_mmd_gradients_flow_into_the_embeddings_only() -> None:
    x = torch.randn(32, EMB, requires_grad=True)
    y = (torch.randn(32, EMB) + 1.0).requires_grad_(True)

    mmd_loss(x, y).backward()

    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert y.grad is None


def test_augmented_views_differ_but_keep_shape_level_and_seed() -> None:
    x = torch.from_numpy(windows_of(series())[:64])
    mean, std = x.mean(dim=(0, 1)), x.std(dim=(0, 1))

    a = augment_windows(x, mean, std, torch.Generator().manual_seed(3))
    b = augment_windows(x, mean, std, torch.Generator().manual_seed(3))
    c = augment_windows(x, mean, std, torch.Generator().manual_seed(4))

    assert a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    hidden = (a == mean).all(dim=2)
    assert 0.1 < hidden.float().mean().item() < 0.3  # about AUGMENT_MASK of the steps
    visible = ~hidden
    assert ((a - x)[visible].abs() / std).mean() < 0.5  # a view stays close to its window


# --- training -------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_only_objectives_that_reconstruct_have_a_decoder(objective: str) -> None:
    trainer = make_trainer(objective)

    assert (trainer.decoder is not None) == (objective in DECODER_OBJECTIVES)


def spread_after_pull_to_a_point(trainer: EncoderTrainer) -> float:
    """Mean per-dimension std of the embeddings after five fits toward one constant target: the
    strongest pull toward collapse that alignment can give."""
    windows = windows_of(series())
    start = embed(trainer, windows)
    targets = np.broadcast_to(start.mean(axis=0), start.shape).copy()
    for _ in range(5):
        losses = trainer.fit(windows, targets)
        assert all(np.isfinite(v) for v in losses.values())
    return float(embed(trainer, windows).std(axis=0).mean())


def test_alignment_alone_collapses() -> None:
    # The control of the next test: without the self-supervised term the spread goes.
    assert spread_after_pull_to_a_point(make_trainer("vc", ssl_weight=0.0)) < 0.04


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_resists_collapse_and_exports(objective: str) -> None:
    trainer = make_trainer(objective)
    windows = windows_of(series())

    spread = spread_after_pull_to_a_point(trainer)
    model, card, diff = trainer.export(windows)

    assert spread > 0.05
    assert diff <= 1e-4 and card.embedding_dim == EMB
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out = sess.run(["embeddings"], {"windows": windows[:7]})[0]
    np.testing.assert_allclose(out, embed(trainer, windows[:7]), atol=1e-4)


@pytest.mark.parametrize("objective", ["vc", "masked-mmd"])
def test_shared_dims_leaves_the_private_dims_out_of_the_pull(objective: str) -> None:
    windows = windows_of(series())
    far = np.zeros(EMB, np.float32)
    far[2:] = 100.0  # the target is far away in the private dimensions only

    def first_align(shared_dims: int) -> tuple[float, np.ndarray]:
        trainer = make_trainer(objective, shared_dims=shared_dims, steps_per_round=5)
        start = embed(trainer, windows)
        align = trainer.fit(windows, start + far)["align"]
        return align, embed(trainer, windows) - start

    shared_align, moved = first_align(2)
    all_align, _ = first_align(0)

    assert all_align > 2e4  # about 3 * 100^2
    assert shared_align < 1e-3 * all_align
    # nothing pulls the private dimensions toward +100
    assert np.abs(moved[:, 2:].mean(axis=0)).max() < 1.0


def test_shared_dims_must_fit_the_embedding() -> None:
    with pytest.raises(ValueError, match="shared_dims"):
        make_trainer("vc", shared_dims=EMB + 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.0},
        {"temperature": float("nan")},
        {"mmd_weight": -1.0},
        {"mmd_weight": float("inf")},
        {"shared_dims": -1},
        {"lr_end": -0.1},
        {"lr_end": 1.5},
        {"lr_end": float("nan")},
        {"lr_hold": 1.5},
        {"lr_steady_rounds": -1},
        {"objective": "simclr"},
    ],
)
def test_new_settings_are_bounded(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrainerSettings(**kwargs)  # type: ignore[arg-type]


# --- the learning rate within a round ---------------------------------------------------------


def test_each_round_starts_at_the_learning_rate_and_ends_at_its_lr_end_share() -> None:
    trainer = make_trainer("vc", learning_rate=1e-2, lr_end=0.1, lr_hold=0.5, lr_steady_rounds=0)
    seen: list[float] = []
    step = trainer.optim.step

    def recording_step(*args: object, **kwargs: object) -> object:
        seen.append(trainer.optim.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optim.step = recording_step  # type: ignore[method-assign]
    w = windows_of(series())
    targets = np.zeros((len(w), EMB), np.float32)
    for _ in range(2):
        trainer.fit(w, targets)

    first, second = seen[:30], seen[30:]
    assert len(second) == 30
    for rnd in (first, second):
        # the first half at the full rate (lr_hold 0.5), then the fall
        assert rnd[:15] == pytest.approx([1e-2] * 15)
        assert rnd[15] < 1e-2
        assert rnd[-1] == pytest.approx(1e-3)
        assert all(a >= b for a, b in zip(rnd, rnd[1:], strict=False))


def test_the_first_rounds_keep_the_constant_rate() -> None:
    trainer = make_trainer("vc", learning_rate=1e-2, lr_end=0.1, lr_steady_rounds=2)
    w = windows_of(series())
    targets = np.zeros((len(w), EMB), np.float32)
    rates = []
    for _ in range(3):
        trainer.fit(w, targets)
        rates.append(trainer.optim.param_groups[0]["lr"])
    assert rates[:2] == pytest.approx([1e-2, 1e-2])
    assert rates[2] == pytest.approx(1e-3)


def test_lr_end_1_keeps_the_learning_rate_constant() -> None:
    trainer = make_trainer("vc", learning_rate=3e-3, lr_end=1.0)
    w = windows_of(series())
    trainer.fit(w, np.zeros((len(w), EMB), np.float32))
    assert trainer.optim.param_groups[0]["lr"] == pytest.approx(3e-3)
