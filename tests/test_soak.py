"""scripts/soak.py in a tiny configuration: a real Mosquitto restarted under a small fleet.

Four agents, six rounds, one broker restart, 10% of frames dropped: every check of the soak
(rounds finished, reconnects, retained status online, trained, equilibrium, RSS and descriptors
bounded, nothing left running) must pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import soak

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("needs_broker_and_torch")]


def test_small_soak_passes_every_check(tmp_path: Path) -> None:
    cfg = soak.SoakConfig(
        out=tmp_path / "soak",
        agents=4,
        rounds=6,
        drop_rate=0.1,
        restarts=1,
        trainers=1,
        sample_every=1.0,
        timeout=300.0,
    )
    lines: list[str] = []

    result = soak.run_soak(cfg, lines.append)

    assert result["checks"] and all(result["checks"].values()), soak.summary_text(result)
    assert result["agents"] == 4 and result["rounds_completed"]["min"] >= 6
    assert len(result["restarts"]) == 1 and result["reconnects"]["min"] >= 1
    assert (
        result["online_at_end"] == 4
        and not result["leftover_processes"]
        and not result["leftover_sockets"]
    )
    assert result["start"]["rss_mb"]["agents"]["sum"] > 0 and result["end"]["fds"]["agents_max"] > 0
    assert "late_frames" in result["rejected"] and "invalid_frames" in result["rejected"]
    assert json.loads((cfg.out / "soak.json").read_text())["passed"] is True
    assert any("broker restart 1/1" in line for line in lines)


def test_restart_rounds_are_spread_inside_the_run() -> None:
    import random

    plan = soak.restart_rounds(
        soak.SoakConfig(out=Path(), rounds=100, restarts=6), random.Random(0)
    )

    assert len(plan) == 6 and plan == sorted(plan) and len(set(plan)) == 6
    assert all(2 <= r < 97 for r in plan)


def test_growth_helpers() -> None:
    assert soak.quartile_means([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]) == (1.0, 2.0)
    assert soak.slope_per_100_rounds([0, 10, 20], [5.0, 6.0, 7.0]) == pytest.approx(10.0)
    assert soak.slope_per_100_rounds([3, 3], [1.0, 2.0]) is None


def test_fleet_config_with_signing_key_and_soak_settings_loads(tmp_path: Path) -> None:
    from osml.agent.config import load_config
    from osml.ops.fleet import FleetOptions, agent_toml, write_signing_key
    from osml.ops.simulate import SimulationSettings

    key = write_signing_key(tmp_path / "signing.key")
    options = FleetOptions(
        count=0,
        trainer_settings={"steps_per_round": 20, "learning_rate": 0.001},
        trainers=2,
        sign=True,
    )
    text = agent_toml(
        "0",
        0,
        "generated:complex",
        3,
        ["1"],
        SimulationSettings(context="soak-00"),
        "mqtt://127.0.0.1:1883",
        tmp_path / "state",
        None,
        tmp_path / "t.sock",
        options,
        key,
    )
    (tmp_path / "agent.toml").write_text(text)

    cfg = load_config(tmp_path / "agent.toml")

    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_text().strip()) == 64 and int(key.read_text(), 16) >= 0
    assert cfg.signing.key_file == str(key) and cfg.signing.require and len(cfg.signing.keys()) == 1
    assert cfg.rounds.count == 0 and cfg.rounds.eval_dir == ""
    assert cfg.trainer.settings == {
        "objective": "vc",
        "steps_per_round": 20,
        "learning_rate": 0.001,
    }
    assert cfg.data.seed == 3
