"""Deployment: scripts/flash-agent.sh and the systemd units, without ssh and without a device.

* The dry run prints every step and touches nothing; argument and config errors are one clear line.
* A full run goes through a fake ``ssh`` on PATH that executes the "remote" commands in a temporary
  directory (and only syntax-checks the install script, which would need root and systemd): this
  checks the wheel build, the staged files and the config rewritten for the device.
* ``systemd-analyze verify`` checks the units (skipped when systemd-analyze is not installed).
* The wheel the script built installs into a fresh venv without torch, and ``osml agent`` runs.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "flash-agent.sh"
AGENT_UNIT = ROOT / "scripts" / "osml-agent.service"
TRAINER_UNIT = ROOT / "scripts" / "osml-trainer.service"
AGENT_ID = "kitchen-7"
HOST = "pi@device.invalid"
PASSWORD = "hunter2-do-not-print"

# A stand-in for ssh: logs its arguments; "remote" commands run locally with the device's /tmp
# mapped into $FAKE_ROOT; the install script is only syntax-checked and its directory captured.
FAKE_SSH = r"""#!/usr/bin/env bash
set -euo pipefail
printf '%s\n' "$*" >> "$FAKE_ROOT/ssh.log"
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    [ "$1" = "-O" ] && exit 0
    shift
done
shift
shift  # the host
cmd="${*//\/tmp\/osml-deploy./$FAKE_ROOT/osml-deploy.}"
case "$cmd" in
    "uname -m") echo "${FAKE_ARCH:-aarch64}" ;;
    bash\ *)
        script="${cmd#bash }"
        bash -n "$script"
        cp -r "$(dirname "$script")" "$FAKE_ROOT/installed"
        rm -rf "$(dirname "$script")"
        echo "fake install done" ;;
    *) bash -c "$cmd" ;;
esac
"""

# Where the dry run must not get: any ssh at all.
NO_SSH = """#!/bin/sh
echo called > "$FAKE_ROOT/ssh-was-called"
exit 99
"""


def _bin_dir(tmp: Path, ssh_script: str) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    ssh = bin_dir / "ssh"
    ssh.write_text(ssh_script)
    ssh.chmod(ssh.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def _flash(
    tmp: Path, *args: str, ssh_script: str = NO_SSH, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    fake_root = tmp / "device"
    fake_root.mkdir(exist_ok=True)
    full_env = dict(os.environ)
    full_env["PATH"] = f"{_bin_dir(tmp, ssh_script)}{os.pathsep}{full_env.get('PATH', '')}"
    full_env["FAKE_ROOT"] = str(fake_root)
    full_env["OSML_LOCAL_PYTHON"] = sys.executable
    full_env["TMPDIR"] = str(tmp / "tmpdir")
    (tmp / "tmpdir").mkdir(exist_ok=True)
    full_env.update(env or {})
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=tmp,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _write_config(directory: Path, agent: str = AGENT_ID, extra: str = "") -> Path:
    """An agent config naming a password file, a CA and a model (with its card), all relative."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "broker.pass").write_text(PASSWORD + "\n")
    (directory / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (directory / "encoder.onnx").write_bytes(b"onnx bytes")
    (directory / "encoder.card.json").write_text("{}\n")
    config = directory / "agent.toml"
    config.write_text(
        f"""# test agent
[agent]
id = "{agent}"
context = "lab"
state_dir = "state"

[broker]
url = "mqtts://broker.lan:8883"
username = "{agent}"
password_file = "broker.pass"   # next to this file
ca_file = "ca.crt"

[neighbours]
ids = ["1", "2"]

[data]
source = "csv:/srv/osml/sensor.csv"

[model]
architecture = "mlp"
path = "encoder.onnx"
{extra}"""
    )
    return config


# ------------------------------------------------------------------------------------ dry run


def test_dry_run_prints_every_step_and_runs_nothing(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "cfg")
    result = _flash(tmp_path, "--dry-run", "--ssh-opts", "-p 2222", HOST, str(config))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert not (tmp_path / "device" / "ssh-was-called").exists()
    assert not list((tmp_path / "tmpdir").iterdir()) and "dry run: nothing was done" in out
    # 1. build the wheel, without dependencies
    assert re.search(r"-m pip wheel --no-deps .*-w ", out)
    # 2. copy: the wheel, the config, the files it names, the unit
    assert "copy the wheel" in out and "tar -C" in out and f"ssh -p 2222 -- {HOST}" in out
    for name in ("files/password", "files/ca.crt", "files/encoder.onnx", "files/encoder.card.json"):
        assert name in out
    assert "osml-agent.service" in out
    # the config as installed: paths rewritten for the device, secrets not printed
    assert f'state_dir = "/var/lib/osml/{AGENT_ID}"' in out
    assert f'password_file = "/etc/osml/{AGENT_ID}/password"' in out
    assert f'path = "/etc/osml/{AGENT_ID}/encoder.onnx"' in out
    assert 'socket = "/run/osml/trainer.sock"' in out
    assert PASSWORD not in out + result.stderr
    # 3. on the device: user, venv, pip install without extras, config, unit, enable --now
    assert "useradd --system" in out and "nologin" in out
    assert "VENV='/opt/osml/venv'" in out and '-m venv "$VENV"' in out
    pip_installs = [line for line in out.splitlines() if "-m pip install" in line]
    assert pip_installs and not any("[trainer]" in line or "torch" in line for line in pip_installs)
    assert "no torch" in out
    assert '"/etc/osml/$NAME.toml"' in out and "install -m 0640 -o root -g osml" in out
    # Secrets only the agent's user may read (it refuses them otherwise); the rest 0640.
    assert "password|client.key|signing.key|signing-previous.key)" in out
    assert 'run install -m 0600 -o osml -g osml "$f"' in out
    assert "/etc/systemd/system/osml-agent@.service" in out
    assert "systemctl daemon-reload" in out and "systemctl enable --now" in out
    assert f"UNIT='osml-agent@{AGENT_ID}.service'" in out
    assert "osml-trainer" not in out.replace("--with-trainer", "")
    # 4. how to check on it
    assert f"systemctl status osml-agent@{AGENT_ID}.service" in out
    assert f"journalctl -u osml-agent@{AGENT_ID}.service -f" in out
    assert "osml monitor --broker mqtts://broker.lan:8883 --context lab --once" in out
    # the steps come in order
    positions = [
        out.index(s)
        for s in (
            "pip wheel",
            "tar -C",
            "useradd",
            "-m venv",
            "daemon-reload",
            "enable --now",
            "systemctl status",
        )
    ]
    assert positions == sorted(positions)


def test_dry_run_copies_the_signing_key_and_points_the_config_at_it(tmp_path: Path) -> None:
    key_hex = "ab" * 32
    config = _write_config(tmp_path / "cfg", extra='[signing]\nkey_file = "lab.key"\n')
    (tmp_path / "cfg" / "lab.key").write_text(key_hex + "\n")
    result = _flash(tmp_path, "--dry-run", HOST, str(config))
    assert result.returncode == 0, result.stderr
    assert "files/signing.key" in result.stdout
    assert f'key_file = "/etc/osml/{AGENT_ID}/signing.key"' in result.stdout
    assert key_hex not in result.stdout + result.stderr  # a secret, never printed


def test_dry_run_with_trainer_installs_the_extra_and_the_trainer_unit(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "cfg")
    result = _flash(tmp_path, "--dry-run", "--with-trainer", HOST, str(config))
    assert result.returncode == 0, result.stderr
    assert '"$STAGE/${WHEEL_FILE}[trainer]"' in result.stdout
    assert "download.pytorch.org/whl/cpu" in result.stdout  # x86_64 devices get CPU-only torch
    assert "/etc/systemd/system/osml-trainer.service" in result.stdout
    assert "start osml-trainer.service" in result.stdout


def test_help() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "Usage: scripts/flash-agent.sh [options] HOST CONFIG" in result.stdout
    for option in ("--dry-run", "--ssh-opts", "--python", "--arch-check", "--with-trainer"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        (None, "does not exist"),
        ('[agent]\ncontext = "lab"\n', "[agent] has no id"),
        ('[broker]\nurl = "mqtt://127.0.0.1:1883"\n', "no [agent] table"),
        ('[agent\nid = "1"\n', "not valid TOML"),
        ('[agent]\nid = "a b"\ncontext = "lab"\n', "--name"),
        (
            '[agent]\nid = "1"\ncontext = "lab"\n[broker]\nurl = "mqtts://b:8883"\nca_file = '
            '"nope.crt"\n',
            "broker.ca_file",
        ),
        ('[agent]\nid = "1"\ncontext = "lab"\n[data]\nsource = "csv:data.csv"\n', "absolute path"),
    ],
    ids=["missing", "no-id", "no-agent", "bad-toml", "bad-id", "missing-ca", "relative-data"],
)
def test_bad_config_is_one_clear_error(
    tmp_path: Path, config_text: str | None, message: str
) -> None:
    config = tmp_path / "agent.toml"
    if config_text is not None:
        config.write_text(config_text)
    result = _flash(tmp_path, "--dry-run", HOST, str(config))
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line
    assert result.stdout == ""  # checked before any step


@pytest.mark.parametrize(
    "args", [[], [HOST], ["--bogus", HOST, "x.toml"], ["--", "-oProxyCommand=x", "x.toml"]]
)
def test_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    result = _flash(tmp_path, "--dry-run", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("flash-agent.sh: error: ")


def test_arch_check_refuses_32_bit_pi_os(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "cfg")
    result = _flash(
        tmp_path,
        "--arch-check",
        HOST,
        str(config),
        ssh_script=FAKE_SSH,
        env={"FAKE_ARCH": "armv7l"},
    )
    assert result.returncode == 2
    assert (
        "armv7l" in result.stderr and "32-bit" in result.stderr and "onnxruntime" in result.stderr
    )
    assert "pip wheel" not in result.stdout  # refused before building anything
    assert not (tmp_path / "device" / "installed").exists()


# -------------------------------------------------------------------- full run with a fake ssh


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """Run flash-agent.sh for real (wheel build included) against the fake ssh."""
    tmp = tmp_path_factory.mktemp("deploy")
    config = _write_config(tmp / "cfg")
    started = time.monotonic()
    result = _flash(
        tmp, "--arch-check", "--ssh-opts", "-p 2222", HOST, str(config), ssh_script=FAKE_SSH
    )
    print(f"flash-agent.sh with a fake ssh: {time.monotonic() - started:.1f}s")
    return tmp, config, result


def test_deploy_stages_everything_for_the_device(
    deployed: tuple[Path, Path, subprocess.CompletedProcess[str]],
) -> None:
    tmp, config, result = deployed
    assert result.returncode == 0, result.stdout + result.stderr
    assert "aarch64: supported" in result.stdout and "fake install done" in result.stdout
    installed = tmp / "device" / "installed"
    assert sorted(p.name for p in installed.iterdir()) == [
        "config.toml",
        "files",
        "install.sh",
        "osml-0.1.0-py3-none-any.whl",
        "osml-agent.service",
    ]
    assert sorted(p.name for p in (installed / "files").iterdir()) == [
        "ca.crt",
        "encoder.card.json",
        "encoder.onnx",
        "password",
    ]
    assert (installed / "files" / "password").read_text() == PASSWORD + "\n"
    assert (installed / "osml-agent.service").read_bytes() == AGENT_UNIT.read_bytes()
    # The installed config equals the original but for the device's paths; comments survive.
    original = tomllib.loads(config.read_text())
    text = (installed / "config.toml").read_text()
    assert "# next to this file" in text
    device = tomllib.loads(text)
    original["agent"]["state_dir"] = f"/var/lib/osml/{AGENT_ID}"
    original["broker"]["password_file"] = f"/etc/osml/{AGENT_ID}/password"
    original["broker"]["ca_file"] = f"/etc/osml/{AGENT_ID}/ca.crt"
    original["model"]["path"] = f"/etc/osml/{AGENT_ID}/encoder.onnx"
    original["trainer"] = {"socket": "/run/osml/trainer.sock"}
    assert device == original
    # every ssh call shares one connection, passes the user's options and ends options with --
    calls = (tmp / "device" / "ssh.log").read_text().splitlines()
    assert len(calls) >= 3
    for call in calls:
        assert call.startswith("-p 2222 -o ControlMaster=auto")
        assert f" -- {HOST} " in call or call.endswith(f"-O exit -- {HOST}")
    # nothing left behind: the device's staging directory and the local work directory are gone
    assert not list((tmp / "device").glob("osml-deploy.*"))
    work = re.search(r"mkdir -p (\S+)/wheel", result.stdout)
    assert work and not Path(work.group(1)).exists()


def test_installed_wheel_runs_the_agent_without_torch(
    deployed: tuple[Path, Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """The wheel the script built, in a clean venv: agent dependencies only, from the registry.

    Not --system-site-packages: torch is installed system-wide here, and the point is that the
    agent runs without it.
    """
    tmp, _, result = deployed
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = tmp / "device" / "installed" / "osml-0.1.0-py3-none-any.whl"
    venv = tmp_path / "venv"
    # Without PYTHONPATH: a source tree on it (with its osml.egg-info) would pass for osml
    # already installed, and pip would skip the wheel.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env)
    python, osml = venv / "bin" / "python", venv / "bin" / "osml"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    print(f"venv + pip install of the wheel: {time.monotonic() - started:.1f}s")

    no_torch = subprocess.run(
        [str(python), "-c", "import torch"], capture_output=True, text=True, env=env, timeout=60
    )
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    version = subprocess.run(
        [str(osml), "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert version.returncode == 0 and "0.1.0" in version.stdout
    agent_help = subprocess.run(
        [str(osml), "agent", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert agent_help.returncode == 0 and "--config" in agent_help.stdout
    # everything the agent process imports loads without torch
    imports = subprocess.run(
        [
            str(python),
            "-c",
            "import osml.agent.config, osml.agent.runtime, osml.agent.inference, "
            "osml.agent.trainer_client",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert imports.returncode == 0, imports.stderr
    trainer = subprocess.run(
        [
            str(osml),
            "trainer",
            "--socket",
            str(tmp_path / "t.sock"),
            "--state-dir",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert trainer.returncode == 2 and "osml[trainer]" in trainer.stderr


# --------------------------------------------------------------------------------- systemd units


def _unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_agent_unit_settings() -> None:
    s = _unit_settings(AGENT_UNIT)
    assert s["ExecStart"] == ["/opt/osml/venv/bin/osml agent --config /etc/osml/%i.toml"]
    for key, value in {
        "Type": "simple",
        "User": "osml",
        "Group": "osml",
        "Restart": "on-failure",
        "RestartSec": "5",
        "StateDirectory": "osml/%i",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "20",
        "WantedBy": "multi-user.target",
    }.items():
        assert s[key] == [value], key
    assert "network-online.target" in " ".join(s["After"]) and s["Wants"] == [
        "network-online.target"
    ]
    assert (
        "RuntimeDirectory" not in s
    )  # /run/osml belongs to the trainer: stopping an agent keeps it


def test_trainer_unit_settings() -> None:
    s = _unit_settings(TRAINER_UNIT)
    assert s["ExecStart"] == [
        "/opt/osml/venv/bin/osml trainer --socket /run/osml/trainer.sock --state-dir "
        "/var/lib/osml/trainer"
    ]
    assert s["User"] == ["osml"] and s["StateDirectory"] == ["osml/trainer"]
    assert s["RuntimeDirectory"] == ["osml"] and s["ProtectSystem"] == ["strict"]


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify refuses an ExecStart binary that does not exist, and
    /opt/osml/venv/bin/osml exists only on a device: the copies point at a stand-in executable."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian: apt-get install -y systemd)")
    stand_in = tmp_path / "osml"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    for source, name in (
        (AGENT_UNIT, "osml-agent@.service"),
        (TRAINER_UNIT, "osml-trainer.service"),
    ):
        text = source.read_text()
        assert "/opt/osml/venv/bin/osml " in text
        (tmp_path / name).write_text(text.replace("/opt/osml/venv/bin/osml ", f"{stand_in} "))
    result = subprocess.run(
        [
            analyze,
            "verify",
            "--man=no",
            str(tmp_path / "osml-agent@test.service"),
            str(tmp_path / "osml-trainer.service"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify exits 0 on unknown keys and other warnings: the units must produce none
    assert "osml-" not in output, output
