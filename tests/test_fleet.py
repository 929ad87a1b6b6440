"""``osml run``: a whole fleet (private Mosquitto, trainer, one process per agent) end to end.

The command starts and stops its own broker and processes (by PID, also when it fails), so these
tests only need the mosquitto binary and torch for the trainer.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result

from clihelp import run_command
from osml.agent.records import RoundRecord
from osml.agent.state import read_rounds
from osml.cli.main import main
from osml_testing.labelled import labelled_dataset, write_paper_dir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("needs_broker_and_torch")]


def invoke(*args: str) -> Result:
    return run_command(main, *args)


def run_fleet(out: Path, *extra: str) -> dict[str, Any]:
    result = invoke(
        "run",
        "--data",
        "generated:simple",
        "--agents",
        "0,1",
        "--rounds",
        "2",
        "--out",
        str(out),
        *extra,
    )
    assert result.exit_code == 0, result.output + result.stderr
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def agent_rounds(out: Path, agent: str) -> list[RoundRecord]:
    return read_rounds(out / "fleet" / "agents" / agent / "state")


def test_osml_run_writes_a_full_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"

    report = run_fleet(out, "--deadline", "5")

    assert report["agents"] == ["0", "1"]
    assert [e["round"] for e in report["rounds"]] == [0, 1, 2]
    for entry in report["rounds"]:
        for key in ("strict_alignment", "centered_alignment", "probe_r2", "spread", "subcontexts"):
            assert set(entry[key]) == {"0", "1"}, key
        assert -1.0 <= entry["strict_alignment"]["0"]["1"] <= 1.0
    for entry in report["rounds"][
        :2
    ]:  # rounds the agents exchanged in (round 2 is the last evaluation)
        assert set(entry["model_versions"]) == {"0", "1"}
        assert entry["missing_frames"] == {"0": [], "1": []}
        assert all(v > 0 for v in entry["bytes_sent"].values())
    assert set(report["rounds"][-1]["paper_similarity"]) == {"0,1"}  # per shared sub-context
    final = report["final"]
    assert final["round"] == 2
    assert {a: sorted(s) for a, s in final["subcontexts"].items()} == {
        "0": ["0", "1"],
        "1": ["0", "1"],
    }
    assert set(final["strict_alignment"]) == {"0", "1"}
    for agent in ("0", "1"):
        emb = np.load(out / "embeddings" / f"{agent}.npy", allow_pickle=False)
        assert emb.ndim == 2 and emb.shape[1] == 5 and np.isfinite(emb).all()
        assert (out / "fleet" / "agents" / agent / "agent.toml").exists()
    # The orchestrator stopped its broker and trainer: their logs end with a clean stop.
    assert "terminating" in (out / "fleet" / "broker" / "mosquitto.log").read_text()


def test_osml_run_on_labelled_data_reports_the_probes(tmp_path: Path) -> None:
    data = write_paper_dir(labelled_dataset(n_train=200, n_test=160), tmp_path / "data")
    out = tmp_path / "run"

    result = invoke(
        "run",
        "--data",
        str(data),
        "--rounds",
        "1",
        "--window",
        "4",
        "--deadline",
        "5",
        "--out",
        str(out),
    )

    assert result.exit_code == 0, result.output + result.stderr
    section = json.loads((out / "report.json").read_text())["downstream"]
    assert section["classes"] == [0, 1, 2]
    for probe in ("linear", "knn"):
        assert set(section[probe]["embedding"]) == {"a", "b", "n"}
        assert set(section[probe]["local"]) == set(section[probe]["central"]) == {"a", "b", "n"}
    assert "downstream accuracy" in result.stdout


def test_osml_run_with_dropped_frames_still_completes(tmp_path: Path) -> None:
    out = tmp_path / "drop"

    report = run_fleet(out, "--drop-rate", "0.5", "--deadline", "3")

    assert [e["round"] for e in report["rounds"]] == [0, 1, 2]
    exchanged = report["rounds"][:2]
    assert all(set(e["missing_frames"]) == {"0", "1"} for e in exchanged)
    # Every frame an agent dropped on purpose shows up as missing at its neighbour, same round.
    recs = {a: agent_rounds(out, a) for a in ("0", "1")}
    for sender, receiver in (("0", "1"), ("1", "0")):
        dropped_before = 0
        for rnd, entry in enumerate(exchanged):
            dropped = recs[sender][rnd].dropped_out - dropped_before
            dropped_before = recs[sender][rnd].dropped_out
            if dropped:
                assert sender in entry["missing_frames"][receiver], (rnd, entry["missing_frames"])
    assert set(report["final"]["subcontexts"]) == {"0", "1"}
    assert (out / "embeddings" / "0.npy").exists() and (out / "embeddings" / "1.npy").exists()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text() if log.exists() else "mosquitto exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"mosquitto did not open port {port}")


def test_osml_run_on_a_broker_made_by_osml_broker_init(tmp_path: Path) -> None:
    """Every agent logs in as its own user with its password file, the run as the monitor; over
    TLS with the generated CA when openssl is there."""
    from osml.cli.broker import broker
    from osml.net.broker import find_mosquitto, free_port
    from osml.ops.fleetfile import find_mosquitto_passwd

    if find_mosquitto_passwd() is None:
        pytest.skip("mosquitto_passwd not installed")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[contexts.lab]\nagents = ["0", "1"]\ntopology = "full"\n\n[monitor]\nuser = "watcher"\n'
    )
    port, tls_port = free_port(), free_port()
    init = ["init", "--fleet", str(fleet), "--out", str(tmp_path / "broker"), "--port", str(port)]
    init += ["--run-as", "root"]  # pytest's tmp directories are 0700
    url, tls_args = f"mqtt://127.0.0.1:{port}", []
    if shutil.which("openssl") is not None and tls_port != port:
        certs = tmp_path / "certs"
        made = run_command(
            broker, "certs", "--out", str(certs), "--host", "localhost", "--ip", "127.0.0.1"
        )
        assert made.exit_code == 0, made.stderr
        init += ["--certs", str(certs), "--tls-port", str(tls_port), "--tls-bind", "127.0.0.1"]
        url, tls_args = f"mqtts://127.0.0.1:{tls_port}", ["--ca", str(certs / "ca.crt")]
    done = run_command(broker, *init)
    assert done.exit_code == 0, done.stderr
    binary = find_mosquitto()
    assert binary is not None
    log = tmp_path / "broker" / "mosquitto.log"
    proc = subprocess.Popen([binary, "-c", str(tmp_path / "broker" / "mosquitto.conf")])
    try:
        _wait_for_port(tls_port if tls_args else port, proc, log)
        out = tmp_path / "run"
        common = ["--context", "lab", "--broker", url, *tls_args, "--deadline", "5"]

        refused = invoke(
            "run",
            "--data",
            "generated:simple",
            "--agents",
            "0,1",
            "--out",
            str(tmp_path / "refused"),
            *common,
        )
        report = run_fleet(out, *common, "--broker-dir", str(tmp_path / "broker"))
    finally:
        proc.terminate()
        proc.wait(timeout=15)

    # Without credentials the broker refuses the run in one line, before anything starts.
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Not authorized" in refused.stderr
    assert not (tmp_path / "refused" / "fleet" / "agents").exists()
    # With them the run completes and reports every round.
    assert [e["round"] for e in report["rounds"]] == [0, 1, 2]
    assert {a: sorted(s) for a, s in report["final"]["subcontexts"].items()} == {
        "0": ["0", "1"],
        "1": ["0", "1"],
    }
    config = (out / "fleet" / "agents" / "1" / "agent.toml").read_text()
    assert 'username = "lab.1"' in config
    assert f'password_file = "{tmp_path / "broker" / "credentials" / "lab.1.pass"}"' in config
    assert ("ca_file" in config) == bool(tls_args)
    broker_log = log.read_text()
    assert "u'lab.0'" in broker_log and "u'lab.1'" in broker_log and "u'watcher'" in broker_log


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, read from /proc (children first found, then theirs)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        parents[int(stat.parent.name)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


def test_sigterm_to_osml_run_stops_every_process_it_started(tmp_path: Path) -> None:
    out = tmp_path / "run"
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "osml.cli", "run", "--data", "generated:simple"]
            + ["--agents", "0,1", "--rounds", "500", "--out", str(out), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        while not all(
            (out / "fleet" / "agents" / a / "state" / "rounds.jsonl").exists() for a in "01"
        ):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the agents never ran a round"
            time.sleep(0.2)
        started = _descendants(proc.pid)
        assert len(started) >= 4  # broker, trainer, two agents
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        left = [p for p in started if _alive(p)]
        assert left == [], f"still running after SIGTERM: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
