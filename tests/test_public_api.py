"""The public API: ``osml.__all__`` is pinned, every name resolves, ``import osml`` stays light."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

import osml
import osml.errors

PUBLIC = [
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


def test_all_is_pinned() -> None:
    assert osml.__all__ == PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(osml, name)

    assert value is not None
    assert name in dir(osml)


def test_every_error_class_is_exported_and_derives_from_osml_error() -> None:
    errors = {
        name
        for name, obj in vars(osml.errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == "osml.errors"
    }

    assert len(errors) == 9  # OsmlError and its eight subclasses
    assert errors <= set(osml.__all__)
    assert all(issubclass(getattr(osml, e), osml.OsmlError) for e in errors)
    assert issubclass(osml.BrokerRefusedError, osml.TransportError)


def test_lazy_names_are_the_library_objects() -> None:
    from osml.agent.config import load_config
    from osml.ops.simulate import simulate

    assert osml.load_config is load_config
    assert osml.simulate is simulate


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = osml.no_such_name


def test_import_osml_loads_neither_torch_nor_paho_nor_onnxruntime() -> None:
    probe = (
        "import json, sys, osml\n"
        "heavy = ('torch', 'paho', 'onnxruntime', 'numpy')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_using_the_whole_api_never_imports_torch() -> None:
    probe = (
        "import sys, osml\n"
        "for name in osml.__all__: getattr(osml, name)\n"
        "print('torch' in sys.modules)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
