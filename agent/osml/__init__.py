"""osml: decentralized Osmotic Learning for fleets of small devices.

The device side (this package minus :mod:`osml.trainer`) depends only on numpy, onnxruntime,
paho-mqtt, msgpack, zstandard and click; torch is needed only by :mod:`osml.trainer`.

``import osml`` is light: the errors load at once, every other public name on first use (so a
script that only reads a run never loads onnxruntime, and nothing here ever imports torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from osml.errors import (
    BrokerRefusedError,
    ConfigError,
    DataError,
    ExportError,
    FrameError,
    ModelError,
    OsmlError,
    TrainerError,
    TransportError,
)

if TYPE_CHECKING:
    from osml.agent.config import AgentConfig, load_config
    from osml.agent.data import Dataset, load_dataset
    from osml.agent.inference import OnnxEncoder
    from osml.agent.modelcard import ModelCard
    from osml.agent.sources import SourceSpec, load_series, parse_source
    from osml.ops.report import load_run
    from osml.ops.simulate import SimulationSettings, simulate
    from osml.trainer.settings import TrainerSettings

__version__ = "0.1.0"

__all__ = [
    "AgentConfig",
    "BrokerRefusedError",
    "ConfigError",
    "DataError",
    "Dataset",
    "ExportError",
    "FrameError",
    "ModelCard",
    "ModelError",
    "OnnxEncoder",
    "OsmlError",
    "SimulationSettings",
    "SourceSpec",
    "TrainerError",
    "TrainerSettings",
    "TransportError",
    "__version__",
    "load_config",
    "load_dataset",
    "load_run",
    "load_series",
    "parse_source",
    "simulate",
]

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "AgentConfig": "osml.agent.config",
    "load_config": "osml.agent.config",
    "Dataset": "osml.agent.data",
    "load_dataset": "osml.agent.data",
    "OnnxEncoder": "osml.agent.inference",
    "ModelCard": "osml.agent.modelcard",
    "SourceSpec": "osml.agent.sources",
    "load_series": "osml.agent.sources",
    "parse_source": "osml.agent.sources",
    "load_run": "osml.ops.report",
    "SimulationSettings": "osml.ops.simulate",
    "simulate": "osml.ops.simulate",
    "TrainerSettings": "osml.trainer.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'osml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
