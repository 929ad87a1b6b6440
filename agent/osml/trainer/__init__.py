"""The osml trainer: PyTorch encoders, training objectives and ONNX export.

Needs the ``trainer`` extra (``pip install 'osml[trainer]'``, which pins ``torch==2.13.0``). Nothing
on the agent side imports this package; agents only ever see the ONNX files it writes.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "osml.trainer needs torch: pip install 'osml[trainer]' (installs torch==2.13.0)"
    ) from exc

from osml.trainer.encoders import ARCHITECTURES, build_encoder
from osml.trainer.export import export_onnx
from osml.trainer.fit import EncoderTrainer, TrainerSettings

__all__ = ["ARCHITECTURES", "EncoderTrainer", "TrainerSettings", "build_encoder", "export_onnx"]
