"""The package's layers and which way their imports point, read from the source (AST, no imports).

Lowest first: top-level helpers (``osml.errors``, ``osml.backoff``, ``osml.files``), ``core``
(numpy only), ``wire``, ``net`` (the only paho/amqtt user), ``agent`` (never torch), ``trainer``
(torch), ``ops``, ``cli``. A module may import its own layer and the layers below it; a few
third-party packages belong to one layer only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "agent" / "osml"

# Layer -> the osml layers its modules may import (besides its own and the top-level helpers).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "top": frozenset(),
    "core": frozenset(),
    "wire": frozenset({"core"}),
    "net": frozenset({"core", "wire"}),
    "agent": frozenset({"core", "wire", "net"}),
    "trainer": frozenset({"core", "wire", "agent"}),
    "ops": frozenset({"core", "wire", "net", "agent", "trainer"}),
    "cli": frozenset({"core", "wire", "net", "agent", "trainer", "ops"}),
}
TOP_LEVEL_HELPERS = frozenset({"osml.errors", "osml.backoff", "osml.files"})
# The one trainer module the agent side may read: settings and names, no torch.
TORCH_FREE_TRAINER = frozenset({"osml.trainer", "osml.trainer.settings"})
MQTT_PACKAGES = frozenset({"paho", "amqtt"})
TORCH_PACKAGES = frozenset({"torch", "onnx", "onnxscript"})


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "osml.core.metrics"
    target: str  # what it imports, e.g. "osml.core.similarity" or "numpy"
    line: int
    lazy: bool  # inside a function body (runs only when that function is called)

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}{' (lazily)' if self.lazy else ''}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    """``osml.core.learner`` -> ``core``; ``osml.errors`` (a top-level module) -> ``top``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else "top"


def _submodule(name: str) -> str:
    is_module = (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()
    return f"osml.{name}" if is_module else "osml"


def imports_of(path: Path) -> list[Import]:
    module = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{module}:{child.lineno}: use absolute imports"
                base = child.module or ""
                if base == "osml":  # `from osml import errors` names a module, `__version__` not
                    found.extend(
                        Import(module, _submodule(a.name), child.lineno, lazy) for a in child.names
                    )
                else:
                    found.append(Import(module, base, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return found


def all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in imports_of(path)]


def top_package(target: str) -> str:
    return target.split(".")[0]


def test_the_scan_sees_the_package() -> None:
    modules = {imp.module for imp in all_imports()}

    assert {"osml.core.learner", "osml.wire.codec", "osml.net.transport"} <= modules
    assert {"osml.agent.runtime", "osml.trainer.service", "osml.cli.main"} <= modules


def test_osml_imports_point_down_the_layers() -> None:
    wrong = []
    for imp in all_imports():
        if top_package(imp.target) != "osml" or imp.module == "osml":
            continue  # osml/__init__ re-exports lazily; test_public_api checks it stays light
        if imp.target in TOP_LEVEL_HELPERS or imp.target == "osml":
            continue
        src, dst = layer_of(imp.module), layer_of(imp.target)
        if src == dst or dst in MAY_IMPORT[src]:
            continue
        if src == "agent" and imp.target in TORCH_FREE_TRAINER:
            continue
        wrong.append(str(imp))

    assert wrong == []


def test_top_level_helpers_import_no_osml_layer() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if imp.module in TOP_LEVEL_HELPERS
        and top_package(imp.target) == "osml"
        and imp.target != "osml.errors"
    ]

    assert wrong == []


def test_core_needs_numpy_only() -> None:
    stdlib = sys.stdlib_module_names
    wrong = [
        str(imp)
        for imp in all_imports()
        if layer_of(imp.module) == "core"
        and top_package(imp.target) not in stdlib | {"numpy", "osml", "__future__"}
    ]

    assert wrong == []


def test_only_net_imports_the_mqtt_packages() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if top_package(imp.target) in MQTT_PACKAGES and layer_of(imp.module) != "net"
    ]

    assert wrong == []


def test_only_the_trainer_imports_torch_and_onnx() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if top_package(imp.target) in TORCH_PACKAGES and layer_of(imp.module) != "trainer"
    ]

    assert wrong == []


def test_torch_free_trainer_modules_import_no_torch() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if imp.module in TORCH_FREE_TRAINER
        and not imp.lazy
        and (
            top_package(imp.target) in TORCH_PACKAGES
            or (imp.target.startswith("osml.trainer.") and imp.target not in TORCH_FREE_TRAINER)
        )
    ]

    assert wrong == []


def test_ops_reaches_the_trainer_only_lazily_and_only_from_simulate() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if layer_of(imp.module) == "ops"
        and imp.target.startswith("osml.trainer")
        and imp.target not in TORCH_FREE_TRAINER
        and not (imp.lazy and imp.module == "osml.ops.simulate")
    ]

    assert wrong == []


def test_cli_reaches_torch_modules_only_lazily() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if layer_of(imp.module) == "cli"
        and imp.target.startswith("osml.trainer")
        and imp.target not in TORCH_FREE_TRAINER
        and not imp.lazy
    ]

    assert wrong == []


_PROBE = """
import json, sys
import osml, osml.cli, osml.ops.fleet, osml.ops.monitor, osml.agent.runtime
from osml.cli.main import main
codes = []
for args in (["run", "--help"], ["agent", "--help"], ["--help"]):
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        codes.append(exc.code)
    else:
        codes.append(0)
torch = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
print(json.dumps({"codes": codes, "torch": torch}))
"""


def test_the_device_side_and_its_help_never_import_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0, 0]
    assert report["torch"] == []


def test_validating_trainer_settings_needs_no_torch() -> None:
    probe = (
        "import sys\n"
        "from osml.trainer import ARCHITECTURE_NAMES, TrainerSettings\n"
        "from osml.agent.config import ModelSection\n"
        "TrainerSettings(architecture='conv', objective='masked')\n"
        "ModelSection(architecture='gru')\n"
        "assert set(ARCHITECTURE_NAMES) == {'gru', 'mlp', 'conv'}\n"
        "print('torch' in sys.modules)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_default_architecture_is_mlp_everywhere() -> None:
    from osml.agent.config import ModelSection
    from osml.trainer.settings import DEFAULT_ARCHITECTURE, TrainerSettings

    assert DEFAULT_ARCHITECTURE == "mlp"
    assert TrainerSettings().architecture == ModelSection().architecture == "mlp"
