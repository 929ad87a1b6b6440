"""Shared fixtures (private Mosquitto brokers on loopback ports, unique context names); test tiers.

Tests that need a broker are skipped (with the install command) when no ``mosquitto`` binary
exists, tests that need torch when it is not installed; CI installs both, so there they always run.

Tiers: every test is marked ``broker`` (it uses the ``needs_mosquitto`` fixture, directly or
through ``mosquitto``/``fresh_broker``, or is marked by hand), ``torch`` (it uses ``needs_torch``,
or its module holds torch as a global) or else ``unit``, so that
``pytest -m "not broker and not torch"`` runs where neither is installed.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from agentprocs import Procs
from osml.net.broker import MosquittoProcess, find_mosquitto

_NO_BROKER = "mosquitto not installed (Debian: apt-get install -y mosquitto)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        module = getattr(item, "module", None)
        if "needs_mosquitto" in names:
            item.add_marker(pytest.mark.broker)
        if "needs_torch" in names or isinstance(getattr(module, "torch", None), ModuleType):
            item.add_marker(pytest.mark.torch)
        if item.get_closest_marker("broker") is None and item.get_closest_marker("torch") is None:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def needs_mosquitto() -> None:
    """Skips the test when there is no ``mosquitto`` binary; marks it ``broker``."""
    if find_mosquitto() is None:
        pytest.skip(_NO_BROKER)


@pytest.fixture(scope="session")
def needs_torch() -> None:
    """Skips the test when torch is not installed; marks it ``torch``."""
    pytest.importorskip("torch", reason="torch not installed: pip install 'osml[trainer]'")


@pytest.fixture
def needs_broker_and_torch(needs_mosquitto: None, needs_torch: None) -> None:
    """For end-to-end runs: a mosquitto binary for the broker and torch for the trainer."""


@pytest.fixture(scope="session")
def mosquitto(
    needs_mosquitto: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MosquittoProcess]:
    """One broker for the whole session; tests keep apart by using unique contexts and ids."""
    broker = MosquittoProcess(tmp_path_factory.mktemp("mosquitto"))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fresh_broker(needs_mosquitto: None, tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A broker of this test's own, which the test may stop or restart."""
    broker = MosquittoProcess(tmp_path / "mosquitto")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique_context() -> Callable[[str], str]:
    """``unique_context("name")`` -> ``"name-<12 hex>"``, new on every call (a topic level)."""

    def make(prefix: str = "ctx") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
def procs() -> Iterator[Procs]:
    """``osml`` subprocesses for the test (``procs.start([...], log)``), all stopped by PID."""
    group = Procs()
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (sun_path holds 107 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="osml-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
