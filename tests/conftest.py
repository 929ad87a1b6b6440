"""Shared fixtures: private Mosquitto brokers on free loopback ports, unique context names.

Tests that need a broker are skipped (with the install command) when no ``mosquitto`` binary
exists; CI installs it, so there they always run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from osml.net.broker import MosquittoProcess, find_mosquitto

_NO_BROKER = "mosquitto not installed (Debian: apt-get install -y mosquitto)"


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip(_NO_BROKER)


@pytest.fixture
def needs_broker_and_torch() -> None:
    """For end-to-end runs: a mosquitto binary for the broker and torch for the trainer."""
    _require_mosquitto()
    pytest.importorskip("torch")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    """One broker for the whole session; tests keep apart by using unique contexts and ids."""
    _require_mosquitto()
    broker = MosquittoProcess(tmp_path_factory.mktemp("mosquitto"))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A broker of this test's own, which the test may stop or restart."""
    _require_mosquitto()
    broker = MosquittoProcess(tmp_path / "mosquitto")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique_context() -> Callable[[str], str]:
    """``unique_context("name")`` -> ``"name-<12 hex>"``, new on every call (a valid topic level)."""

    def make(prefix: str = "ctx") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make
