"""What the trainer can be asked for, without torch: architecture and objective names, settings.

The agent's config, the CLI and ``osml run``'s orchestrator validate trainer settings here, so a
process that never trains never imports torch. :mod:`osml.trainer.encoders` builds one encoder
class per name in :data:`ARCHITECTURE_NAMES`, :mod:`osml.trainer.objectives` one loss per name in
:data:`OBJECTIVES`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARCHITECTURE_NAMES",
    "DECODER_OBJECTIVES",
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_OBJECTIVE",
    "OBJECTIVES",
    "TrainerSettings",
    "settings_from_map",
]

ARCHITECTURE_NAMES = ("gru", "mlp", "conv")
"""The encoder architectures (see :mod:`osml.trainer.encoders`)."""

DEFAULT_ARCHITECTURE = "mlp"
"""What every agent uses unless told otherwise: cheap, and enough for short windows."""

OBJECTIVES = ("vc", "masked", "infonce", "masked-mmd")
"""The self-supervised objectives, default first (see :mod:`osml.trainer.objectives`)."""

DEFAULT_OBJECTIVE = OBJECTIVES[0]

DECODER_OBJECTIVES = frozenset({"masked", "masked-mmd"})
"""The objectives that train a decoder beside the encoder (trainer-side only, never exported)."""


@dataclass(frozen=True)
class TrainerSettings:
    architecture: str = DEFAULT_ARCHITECTURE
    objective: str = DEFAULT_OBJECTIVE
    align_weight: float = 1.0
    ssl_weight: float = 1.0
    var_target: float = 0.1
    steps_per_round: int = 150
    batch_size: int = 256
    learning_rate: float = 1e-2
    # Each round holds learning_rate for its first lr_hold share of steps, then lets it fall to
    # lr_end * learning_rate by its last step (half a cosine); lr_end 1: constant. At a constant
    # rate the model a round ends with is wherever its last few batches threw it, and on
    # generated complex a fleet's figures swung by 0.02-0.04 from one round, or one tiny
    # change, to the next (docs/results.md).
    # The first lr_steady_rounds rounds keep the constant rate: in them, while sub-contexts form,
    # latent spaces that start unrelated have to come into line fast.
    lr_end: float = 0.1
    lr_hold: float = 0.5
    lr_steady_rounds: int = 2
    mask_ratio: float = 0.3
    cov_weight: float = 0.1
    init_std: float = 1.0
    hidden: int = 0  # 0: the architecture's default width
    weight_decay: float = 0.0
    input_noise: float = 0.1  # std of the Gaussian jitter added to windows, in feature stds
    per_dim_variance: bool = True
    threads: int = 1
    temperature: float = 0.2  # infonce: cosine similarities are divided by it
    mmd_weight: float = 1e-2  # masked-mmd: weight of the MMD^2 to the osmosis targets
    # Only the first shared_dims embedding dimensions are pulled toward the osmosis target (and
    # matched in distribution by masked-mmd); the others are left to the self-supervised term.
    # 0: all of them. Set it to the learner's LearnerSettings.shared_dims.
    shared_dims: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURE_NAMES:
            raise ValueError(
                f"architecture must be one of {sorted(ARCHITECTURE_NAMES)}, "
                f"got {self.architecture!r}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for key, (lo, hi, above) in _BOUNDS.items():
            value = getattr(self, key)
            # Written so that nan fails too: nan compares False with everything.
            inside = value > lo if above else value >= lo
            if not (math.isfinite(value) and inside and value <= hi):
                op = ">" if above else ">="
                raise ValueError(f"{key} must be {op} {lo:g} and <= {hi:g}, got {value!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio!r}")


# (lo, hi, lo excluded) of every number in TrainerSettings but mask_ratio.
_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "align_weight": (0.0, 1e6, False),
    "ssl_weight": (0.0, 1e6, False),
    "var_target": (0.0, 1e6, False),
    "steps_per_round": (1, 1_000_000, False),
    "batch_size": (2, 1_000_000, False),
    "learning_rate": (0.0, 10.0, True),
    "lr_end": (0.0, 1.0, False),
    "lr_hold": (0.0, 1.0, False),
    "lr_steady_rounds": (0, 1_000_000, False),
    "cov_weight": (0.0, 1e6, False),
    "init_std": (0.0, 1e6, True),
    "hidden": (0, 65_536, False),
    "weight_decay": (0.0, 1e3, False),
    "input_noise": (0.0, 1e3, False),
    "threads": (1, 1024, False),
    "temperature": (0.0, 100.0, True),
    "mmd_weight": (0.0, 1e6, False),
    "shared_dims": (0, 65_536, False),
}


def settings_from_map(raw: Mapping[str, Any], architecture: str) -> TrainerSettings:
    """:class:`TrainerSettings` from an untrusted map (a config table, a request): known keys,
    checked types, finite numbers in range; ``architecture`` is the registered one.

    ValueError, whose message starts with the offending key, on any problem.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainerSettings)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ValueError(f"{key}: unknown key (known: {', '.join(sorted(fields))})")
        default = fields[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                try:
                    value = float(value)
                except OverflowError:
                    ok = False
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ValueError(f"{key}: must be a {type(default).__name__}, got {value!r}")
        values[key] = value
    if values.get("architecture", architecture) != architecture:
        raise ValueError(
            f"architecture: {values['architecture']!r} contradicts the model's {architecture!r}"
        )
    values["architecture"] = architecture
    try:
        return TrainerSettings(**values)
    except ValueError as exc:
        key, _, rest = str(exc).partition(" ")
        raise ValueError(f"{key}: {rest}" if key in fields else str(exc)) from None
