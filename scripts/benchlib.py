"""Shared by the ``bench_*.py`` scripts: markdown tables, the machine header, load averages,
ONNX test models and private brokers.

Importing it puts the source tree (``agent/``) first on ``sys.path``, so the scripts measure the
checkout they live in, installed or not. It imports nothing heavy: the measured agent-like child
of bench_agent_memory.py imports it too.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent / "agent"))

if TYPE_CHECKING:
    from osml.net.broker import MosquittoProcess

CONTEXT = "bench"
WINDOW, EMB = 10, 5  # window length (steps) and embedding size of the models the benchmarks use


def median_us(samples: Sequence[float]) -> float:
    """Median of durations in seconds, in microseconds."""
    return 1e6 * statistics.median(samples)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from osml.net.broker import find_mosquitto

    out = {"python": platform.python_version()}
    for name in ("onnxruntime", "torch", "paho-mqtt", "numpy", "msgpack", "zstandard", "onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    binary = find_mosquitto()
    mosq = "not installed"
    if binary:
        res = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
        first = (res.stdout or res.stderr).splitlines()
        mosq = first[0].replace("mosquitto version ", "") if first else "unknown"
    out["mosquitto"] = mosq
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_machine() -> None:
    """The "## Machine" header every benchmark prints first: CPUs, versions, load."""
    v = _versions()
    print("## Machine\n")
    print(
        f"- nproc: {os.cpu_count()}, CPU: {_cpu_model()}, {platform.system()} {platform.release()}"
    )
    print("- " + ", ".join(f"{k} {val}" for k, val in v.items()))
    print(f"- {load_average()}")
    print()


@contextmanager
def section(name: str) -> Iterator[None]:
    """Prints the load average at the start and the end of a measured section, after it."""
    start = load_average()
    yield
    end = load_average().removeprefix("load average ")
    print(f"_{name}: {start} at the start, {end} at the end._\n")


def build_models(out_dir: Path, n_features: int = 1) -> None:
    """Writes mlp/gru/conv ONNX encoders (and cards) built from build_encoder's weights.

    Imports torch: run it in a process of its own where torch must stay out of the measured one.
    """
    from osml.agent.modelcard import ModelCard, sha256_hex, write_model
    from osml.trainer.encoders import ARCHITECTURES, build_encoder
    from osml.trainer.export import build_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    for arch in ARCHITECTURES:
        enc = build_encoder(arch, WINDOW, n_features, EMB, seed=0).eval()
        model = build_onnx(enc)
        card = ModelCard(
            version=1,
            architecture=arch,
            window=WINDOW,
            n_features=n_features,
            embedding_dim=EMB,
            sha256=sha256_hex(model),
            agent="bench",
            context=CONTEXT,
        )
        write_model(out_dir / f"{arch}.onnx", model, card)


def mosquitto(workdir: Path, nodelay: bool = True) -> MosquittoProcess:
    """A private Mosquitto (not started) as the tests run it, or with Nagle on in the broker.

    ``nodelay=False`` drops the ``set_tcp_nodelay true`` line from the configuration that
    ``MosquittoProcess._config`` writes (Mosquitto's default then: Nagle on). This is the only
    place the benchmarks reach into an osml internal.
    """
    from osml.net.broker import MosquittoProcess

    if nodelay:
        return MosquittoProcess(workdir)

    class NagleMosquitto(MosquittoProcess):
        def _config(self) -> str:
            return "".join(
                ln
                for ln in super()._config().splitlines(keepends=True)
                if not ln.startswith("set_tcp_nodelay")
            )

    return NagleMosquitto(workdir)
