"""What the trainer can be asked for, without torch: architecture and objective names, settings.

The agent's config, the CLI and ``osml run``'s orchestrator validate trainer settings here, so a
process that never trains never imports torch. :mod:`osml.trainer.encoders` builds one encoder
class per name in :data:`ARCHITECTURE_NAMES`, :mod:`osml.trainer.objectives` one loss per name in
:data:`OBJECTIVES`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARCHITECTURE_NAMES",
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_OBJECTIVE",
    "OBJECTIVES",
    "TrainerSettings",
]

ARCHITECTURE_NAMES = ("gru", "mlp", "conv")
"""The encoder architectures (see :mod:`osml.trainer.encoders`)."""

DEFAULT_ARCHITECTURE = "mlp"
"""What every agent uses unless told otherwise: cheap, and enough for short windows."""

OBJECTIVES = ("vc", "masked")
"""The self-supervised objectives, default first (see :mod:`osml.trainer.objectives`)."""

DEFAULT_OBJECTIVE = OBJECTIVES[0]


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
    mask_ratio: float = 0.3
    cov_weight: float = 0.1
    init_std: float = 1.0
    hidden: int = 0  # 0: the architecture's default width
    weight_decay: float = 0.0
    input_noise: float = 0.1  # std of the Gaussian jitter added to windows, in feature stds
    per_dim_variance: bool = True
    threads: int = 1

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURE_NAMES:
            raise ValueError(
                f"architecture must be one of {sorted(ARCHITECTURE_NAMES)}, "
                f"got {self.architecture!r}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.steps_per_round < 1 or self.batch_size < 2 or self.learning_rate <= 0:
            raise ValueError(
                "steps_per_round >= 1, batch_size >= 2 and learning_rate > 0 are required"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError("mask_ratio must be in (0, 1)")
