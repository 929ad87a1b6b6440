"""The osml trainer: PyTorch encoders, training objectives and ONNX export.

Needs the ``trainer`` extra (``pip install 'osml[trainer]'``, which pins ``torch==2.13.0``). Nothing
on the agent side trains; agents only ever see the ONNX files the trainer writes.
:mod:`osml.trainer.settings` (architecture and objective names, :class:`TrainerSettings`) needs no
torch, and neither does importing this package: the torch-backed names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from osml.trainer.settings import ARCHITECTURE_NAMES, OBJECTIVES, TrainerSettings

__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_NAMES",
    "OBJECTIVES",
    "EncoderTrainer",
    "TrainerSettings",
    "build_encoder",
    "export_onnx",
]

# Name -> the torch-backed module that defines it.
_LAZY = {
    "ARCHITECTURES": "osml.trainer.encoders",
    "build_encoder": "osml.trainer.encoders",
    "export_onnx": "osml.trainer.export",
    "EncoderTrainer": "osml.trainer.fit",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'osml.trainer' has no attribute {name!r}")
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise ModuleNotFoundError(
            "osml.trainer needs torch: pip install 'osml[trainer]' (installs torch==2.13.0)"
        ) from exc
    return getattr(importlib.import_module(module), name)
