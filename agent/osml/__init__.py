"""osml: decentralized Osmotic Learning for fleets of small devices.

The device side (this package minus :mod:`osml.trainer`) depends only on numpy, onnxruntime,
paho-mqtt, msgpack, zstandard and click; torch is needed only by :mod:`osml.trainer`.
"""

from __future__ import annotations

from osml.errors import ConfigError, DataError, ExportError, FrameError, ModelError, OsmlError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "ExportError",
    "FrameError",
    "ModelError",
    "OsmlError",
    "__version__",
]
