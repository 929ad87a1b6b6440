"""Agent config files: what a good TOML file turns into, and one clear error per bad one.

No broker, no torch: load_config only reads and validates.
"""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import Result

from clihelp import run_command
from osml.agent.config import (
    AgentConfig,
    DataSection,
    ModelSection,
    RoundsSection,
    TrainerSection,
    load_config,
)
from osml.cli.main import main
from osml.errors import ConfigError
from osml.trainer.settings import settings_from_map

MINIMAL = """\
[agent]
id = "0"
context = "lab"

[neighbours]
ids = ["1"]

[data]
source = "generated:simple"
"""


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> AgentConfig:
    return load_config(write(tmp_path, text))


def invoke(*args: str) -> Result:
    return run_command(main, *args)


# -- good files ---------------------------------------------------------------------------------


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)

    assert (cfg.agent.id, cfg.agent.context) == ("0", "lab")
    assert cfg.neighbours == ("1",)
    assert cfg.broker.url == "mqtt://127.0.0.1:1883" and cfg.broker.protocol == "5"
    assert cfg.data.source == "generated:simple"
    assert (cfg.model.architecture, cfg.model.window, cfg.model.embedding_dim) == ("mlp", 10, 5)
    assert (cfg.rounds.count, cfg.rounds.deadline, cfg.rounds.train_wait) == (0, 10.0, 30.0)
    assert cfg.trainer.settings == {}
    assert cfg.drop_rate == 0.0


def test_relative_paths_are_resolved_against_the_config_directory(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc" / "osml"
    conf_dir.mkdir(parents=True)
    (conf_dir / "agent.pass").write_text("s3cret\n")
    (conf_dir / "agent.pass").chmod(0o600)
    path = write(
        conf_dir,
        """\
        [agent]
        id = "0"
        context = "lab"
        state_dir = "state/0"

        [broker]
        url = "mqtts://broker.lan:8883"
        username = "0"
        password_file = "agent.pass"
        ca_file = "certs/ca.crt"

        [neighbours]
        ids = ["1", "2"]

        [data]
        source = "csv:data/sensor.csv"
        test = "data/sensor-test.csv"

        [model]
        path = "models/initial.onnx"

        [rounds]
        count = 5
        deadline = 3
        eval_dir = "eval"

        [trainer]
        socket = "trainer.sock"
        timeout = 30

        [trainer.settings]
        objective = "masked"
        steps_per_round = 40

        [testing]
        drop_rate = 0.25
        """,
    )
    # Loading from another working directory must not change where the paths point.
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        cfg = load_config(path.relative_to(tmp_path))
    finally:
        os.chdir(here)

    base = conf_dir.resolve()
    assert cfg.state_dir == base / "state" / "0"
    assert cfg.broker.password == "s3cret"  # read from the file, trailing newline stripped
    assert cfg.broker.username == "0"
    assert cfg.broker.ca_file == str(base / "certs" / "ca.crt")
    assert cfg.data.source == f"csv:{base / 'data' / 'sensor.csv'}"
    assert cfg.data.test == str(base / "data" / "sensor-test.csv")
    assert cfg.model.path == str(base / "models" / "initial.onnx")
    assert cfg.rounds.eval_dir == str(base / "eval")
    assert cfg.trainer.socket == str(base / "trainer.sock")
    assert cfg.neighbours == ("1", "2")
    # Integers where numbers are expected become floats; the settings table is passed through.
    assert cfg.rounds.deadline == 3.0 and isinstance(cfg.rounds.deadline, float)
    assert cfg.trainer.timeout == 30.0
    assert cfg.trainer.settings == {"objective": "masked", "steps_per_round": 40}
    assert cfg.drop_rate == 0.25


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "pw"
    secret.parent.mkdir()
    secret.write_text("abc")
    secret.chmod(0o600)
    cfg = load(
        tmp_path,
        MINIMAL.replace(
            "[neighbours]",
            f"""\
state_dir = "/var/lib/osml/0"

[broker]
username = "u"
password_file = "{secret}"

[neighbours]""",
        ).replace('"generated:simple"', '"paper:/data/simple-context"\nagent = "0"'),
    )

    assert cfg.state_dir == Path("/var/lib/osml/0")
    assert cfg.broker.password == "abc"
    assert cfg.data.source == "paper:/data/simple-context"
    assert cfg.data.agent == "0"


def test_neighbours_from_explicit_ids(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL.replace('ids = ["1"]', 'ids = ["2", "1", "M0"]'))
    assert cfg.neighbours == ("2", "1", "M0")  # order kept as written


@pytest.mark.parametrize(
    ("me", "topology", "expected"),
    [
        ("0", "full", ("1", "2", "3")),
        ("0", "ring", ("1", "3")),
        ("2", "ring", ("1", "3")),
    ],
)
def test_neighbours_from_topology_and_all(
    tmp_path: Path, me: str, topology: str, expected: tuple[str, ...]
) -> None:
    text = MINIMAL.replace('id = "0"', f'id = "{me}"').replace(
        'ids = ["1"]', f'topology = "{topology}"\nall = ["0", "1", "2", "3"]'
    )
    assert load(tmp_path, text).neighbours == expected


def test_random_topology_is_symmetric_across_agents(tmp_path: Path) -> None:
    everyone = ["0", "1", "2", "3", "4", "5"]
    links = {}
    for me in everyone:
        text = MINIMAL.replace('id = "0"', f'id = "{me}"').replace(
            'ids = ["1"]', 'topology = "random:2"\nall = ["0", "1", "2", "3", "4", "5"]\nseed = 7'
        )
        links[me] = load(tmp_path, text).neighbours
    assert all(len(nbs) == 2 and me not in nbs for me, nbs in links.items())
    assert all(me in links[nb] for me, nbs in links.items() for nb in nbs)


# -- bad files: one ConfigError naming the key ---------------------------------------------------


BAD_CASES = [
    pytest.param(
        MINIMAL + "\n[rounds]\ndedline = 3.0\n",
        ["rounds.dedline", "unknown key", "did you mean 'deadline'"],
        id="unknown-key-did-you-mean",
    ),
    pytest.param(
        MINIMAL.replace('context = "lab"', 'context = "lab"\nstate_dri = "s"'),
        ["agent.state_dri", "did you mean 'state_dir'"],
        id="unknown-agent-key",
    ),
    pytest.param(
        MINIMAL + "\n[model]\nzzz = 1\n",
        ["model.zzz", "unknown key", "known keys:"],
        id="unknown-key-no-close-match",
    ),
    pytest.param(
        MINIMAL + "\n[round]\ncount = 3\n",
        ["[round]", "unknown section", "rounds"],
        id="unknown-section",
    ),
    pytest.param(
        MINIMAL + '\n[rounds]\ncount = "3"\n',
        ["rounds.count", "expected an integer", "'3'"],
        id="string-for-int",
    ),
    pytest.param(
        MINIMAL + "\n[rounds]\ncount = true\n",
        ["rounds.count", "expected an integer"],
        id="bool-for-int",
    ),
    pytest.param(
        MINIMAL + '\n[rounds]\ndeadline = "soon"\n',
        ["rounds.deadline", "expected a number"],
        id="string-for-float",
    ),
    pytest.param(
        MINIMAL + "\n[model]\nwindow = 2.5\n",
        ["model.window", "expected an integer"],
        id="float-for-int",
    ),
    pytest.param(
        MINIMAL.replace('id = "0"', "id = 0"),
        ["agent.id", "expected a string"],
        id="int-for-string",
    ),
    pytest.param(
        MINIMAL + "\n[broker]\ntls_insecure = 1\n",
        ["broker.tls_insecure", "true or false"],
        id="int-for-bool",
    ),
    pytest.param(MINIMAL.replace("[agent]", "[agnt]"), ["[agnt]"], id="misspelt-agent-section"),
    pytest.param(
        MINIMAL[MINIMAL.index("[neighbours]") :], ["[agent]", "missing"], id="missing-agent"
    ),
    pytest.param(MINIMAL.replace('id = "0"\n', ""), ["[agent]", "id"], id="missing-agent-id"),
    pytest.param(
        MINIMAL.replace('id = "0"', 'id = "a/b"'), ["agent.id"], id="id-not-a-topic-level"
    ),
    pytest.param(MINIMAL.split("[data]")[0], ["[data]", "missing"], id="missing-data"),
    pytest.param(
        MINIMAL.replace("generated:simple", "ftp://host/data.csv"),
        ["data.source", "csv:FILE"],
        id="bad-data-source-kind",
    ),
    pytest.param(
        MINIMAL.replace("generated:simple", "generated:medium"),
        ["data.source", "medium"],
        id="bad-generator",
    ),
    pytest.param(
        MINIMAL.replace("generated:simple", "csv:"), ["data.source"], id="empty-data-path"
    ),
    pytest.param(
        MINIMAL.replace('ids = ["1"]', 'ids = ["1", "0"]'),
        ["neighbours.ids", "itself", "'0'"],
        id="neighbours-list-self",
    ),
    pytest.param(
        MINIMAL.replace('ids = ["1"]', 'ids = ["1", "1"]'),
        ["neighbours.ids", "duplicates"],
        id="duplicate-neighbours",
    ),
    pytest.param(
        MINIMAL.replace('ids = ["1"]', "ids = [1]"),
        ["neighbours.ids", "strings"],
        id="int-neighbour",
    ),
    pytest.param(
        MINIMAL.replace('ids = ["1"]', 'ids = ["1"]\nidz = ["2"]'),
        ["neighbours.idz"],
        id="neighbours-unknown-key",
    ),
    pytest.param(
        MINIMAL.replace('[neighbours]\nids = ["1"]\n', ""),
        ["[neighbours]", "missing"],
        id="missing-neighbours",
    ),
    pytest.param(
        MINIMAL.replace('ids = ["1"]', 'topology = "ring"\nall = ["1", "2"]'),
        ["neighbours.all", "'0'"],
        id="all-without-self",
    ),
    pytest.param(
        MINIMAL.replace('ids = ["1"]', 'topology = "star"\nall = ["0", "1"]'),
        ["neighbours.topology", "star"],
        id="unknown-topology",
    ),
    pytest.param(
        MINIMAL.replace('ids = ["1"]', 'topology = "ring"\nall = ["0", "1"]\nseed = "x"'),
        ["neighbours.seed", "integer"],
        id="topology-seed-not-int",
    ),
    pytest.param(
        MINIMAL + "\n[testing]\ndrop_rate = 1.5\n",
        ["testing.drop_rate", "1.5"],
        id="drop-rate-above-one",
    ),
    pytest.param(
        MINIMAL + "\n[testing]\ndrop_rate = 1\n", ["testing.drop_rate"], id="drop-rate-one"
    ),
    pytest.param(
        MINIMAL + "\n[testing]\ndrop_rate = -0.1\n", ["testing.drop_rate"], id="drop-rate-negative"
    ),
    pytest.param(
        MINIMAL + '\n[testing]\ndrop_rate = "half"\n', ["testing.drop_rate"], id="drop-rate-string"
    ),
    pytest.param(
        MINIMAL + "\n[testing]\ndrop_rte = 0.5\n",
        ["testing.drop_rte", "did you mean 'drop_rate'"],
        id="testing-unknown-key",
    ),
    pytest.param(
        "broker = 'mqtt://x:1'\n" + MINIMAL, ["[broker]", "table"], id="broker-not-a-table"
    ),
    pytest.param("trainer = 5\n" + MINIMAL, ["[trainer]", "table"], id="trainer-not-a-table"),
    pytest.param("testing = 3\n" + MINIMAL, ["[testing]", "table"], id="testing-not-a-table"),
    pytest.param(
        MINIMAL + "\n[trainer]\nsettings = 3\n",
        ["trainer.settings", "table"],
        id="settings-not-a-table",
    ),
    pytest.param(
        MINIMAL + '\n[model]\narchitecture = "lstm"\n',
        ["model.architecture", "lstm"],
        id="bad-architecture",
    ),
    pytest.param(MINIMAL + "\n[rounds]\ndeadline = 0\n", ["rounds.deadline"], id="zero-deadline"),
    pytest.param(MINIMAL + "\n[rounds]\ncount = -1\n", ["rounds.count"], id="negative-count"),
    pytest.param(
        MINIMAL + "\n[rounds]\nmax_frame_bytes = 10\n", ["rounds.max_frame_bytes"], id="tiny-frames"
    ),
    pytest.param(
        MINIMAL + '\n[broker]\nurl = "http://127.0.0.1:1883"\n',
        ["broker url", "mqtt://"],
        id="bad-broker-url",
    ),
    pytest.param(
        MINIMAL + '\n[broker]\npassword_file = "no-such.pass"\nusername = "u"\n',
        ["broker.password_file", "no-such.pass"],
        id="missing-password-file",
    ),
    pytest.param(
        MINIMAL + "\n[broker]\npassword_file = 5\n",
        ["broker.password_file", "string"],
        id="password-file-not-a-string",
    ),
    pytest.param(MINIMAL + "\n[agent\n", ["not valid TOML"], id="broken-toml"),
    pytest.param(
        MINIMAL.replace('"generated:simple"', '"generated:simple'),
        ["not valid TOML"],
        id="unterminated-string",
    ),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_CASES)
def test_bad_config_is_one_config_error_naming_the_key(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unreadable_password_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root reads any file: a directory in its place is unreadable for everyone.
        (tmp_path / "agent.pass").mkdir()
    else:
        (tmp_path / "agent.pass").write_text("pw")
        (tmp_path / "agent.pass").chmod(0)
    text = MINIMAL + '\n[broker]\nusername = "0"\npassword_file = "agent.pass"\n'

    with pytest.raises(ConfigError, match=r"toml: broker\.password_file: cannot read agent\.pass"):
        load(tmp_path, text)


def test_missing_config_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read.*--config"):
        load_config(tmp_path / "nope.toml")


def test_broken_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\ncount = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "line 11" in str(info.value)


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (MINIMAL + "\n[rounds]\ndedline = 3.0\n", "rounds.dedline"),
        (MINIMAL + "\n[agent\n", "not valid TOML"),
        ("trainer = 5\n" + MINIMAL, "[trainer]"),
        (MINIMAL.replace('ids = ["1"]', 'ids = ["0"]'), "neighbours.ids"),
    ],
)
def test_osml_agent_with_a_bad_config_prints_one_error_line(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = write(tmp_path, text, "bad.toml")

    result = invoke("agent", "--config", str(path))

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_osml_agent_with_a_missing_config(tmp_path: Path) -> None:
    result = invoke("agent", "--config", str(tmp_path / "absent.toml"))

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "absent.toml" in lines[0]


# -- [signing] ------------------------------------------------------------------------------------


def test_signing_is_off_by_default_and_reads_relative_key_files(tmp_path: Path) -> None:
    assert not load(tmp_path, MINIMAL).signing.enabled
    (tmp_path / "lab.key").write_text("ab" * 32 + "\n")
    (tmp_path / "lab.key").chmod(0o600)
    cfg = load(tmp_path, MINIMAL + '[signing]\nkey_file = "lab.key"\n')
    assert cfg.signing.enabled and cfg.signing.require
    assert cfg.signing.keys() == (bytes([0xAB]) * 32,)


@pytest.mark.parametrize(
    ("key_text", "problem"),
    [
        (None, "cannot read"),
        ("zz" * 32, "not hex"),
        ("ab" * 8, "has 8 bytes"),
        ("\u00e9", "must be hex"),
    ],
)
def test_a_bad_signing_key_is_one_line_naming_the_file(
    tmp_path: Path, key_text: str | None, problem: str
) -> None:
    if key_text is not None:
        (tmp_path / "lab.key").write_text(key_text)
    with pytest.raises(ConfigError, match=problem) as err:
        load(tmp_path, MINIMAL + '[signing]\nkey_file = "lab.key"\n')
    assert "lab.key" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o700 | 0o010])
@pytest.mark.parametrize("kind", ["signing key", "password file", "TLS client key"])
def test_a_secret_others_may_read_is_refused_with_the_chmod_to_run(
    tmp_path: Path, kind: str, mode: int
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(mode)
    text = {
        "signing key": MINIMAL + '[signing]\nkey_file = "secret"\n',
        "password file": MINIMAL + '[broker]\nusername = "u"\npassword_file = "secret"\n',
        "TLS client key": MINIMAL
        + '[broker]\nurl = "mqtts://h:8883"\ncert_file = "c.crt"\nkey_file = "secret"\n',
    }[kind]
    path = write(tmp_path, text)

    result = invoke("agent", "--config", str(path))

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), result.stderr
    assert f"chmod 600 {secret}" in lines[0] and f"{mode:04o}" in lines[0]

    secret.chmod(0o600)  # the fix the message names
    assert load_config(path).agent.id == "0"


def test_previous_key_needs_a_current_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="signing.previous_key_file"):
        load(tmp_path, MINIMAL + '[signing]\nprevious_key_file = "old.key"\n')


LIVE = """\
[agent]
id = "0"
context = "lab"

[neighbours]
ids = ["1"]

[data]
source = "mqtt:sensors/0"
features = 3
step_seconds = 0.5
"""


def test_a_live_source_needs_its_width_and_gets_the_step_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, LIVE)
    assert cfg.data.live and cfg.data.features == 3 and cfg.data.step_grace == 0.5
    assert cfg.data.clock == "wall" and cfg.rounds.period == 0.0

    with pytest.raises(ConfigError, match="data.features"):
        load(tmp_path, LIVE.replace("features = 3\n", ""))
    with pytest.raises(ConfigError, match="data.source"):
        load(tmp_path, LIVE.replace("mqtt:sensors/0", "mqtt:"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_float_setting_must_be_finite(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="rounds.deadline"):
        load(tmp_path, MINIMAL + f"\n[rounds]\ndeadline = {value}\n")


# -- every number finite and in range ------------------------------------------------------------

HUGE = str(2**70)

NUMBER_CASES = [
    # The historical ones: nan spun at 99% CPU, inf raised in the loop or waited for ever, a nan
    # anchor norm failed every training job.
    pytest.param("[rounds]\ndeadline = nan", "rounds.deadline", "nan", id="deadline-nan"),
    pytest.param("[rounds]\ninterval = inf", "rounds.interval", "inf", id="interval-inf"),
    pytest.param("[rounds]\ndeadline = inf", "rounds.deadline", "inf", id="deadline-inf"),
    pytest.param("[model]\nanchor_norm = nan", "model.anchor_norm", "nan", id="anchor-nan"),
    pytest.param("[rounds]\ndeadline = 0", "rounds.deadline", "> 0", id="deadline-zero"),
    pytest.param("[rounds]\ninterval = -1", "rounds.interval", "-1", id="interval-negative"),
    pytest.param("[rounds]\ntrain_wait = 1e300", "rounds.train_wait", "86400", id="wait-huge"),
    pytest.param(f"[rounds]\ncount = {HUGE}", "rounds.count", HUGE, id="count-2**70"),
    pytest.param(f"[rounds]\nsteps = {HUGE}", "rounds.steps", HUGE, id="steps-2**70"),
    pytest.param(f"[rounds]\ndeadline = {HUGE}", "rounds.deadline", "86400", id="int-2**70"),
    pytest.param("[rounds]\nmax_windows = 0", "rounds.max_windows", "0", id="windows-zero"),
    pytest.param("[rounds]\nperiod = -inf", "rounds.period", "-inf", id="period-minus-inf"),
    pytest.param("[model]\nwindow = 100000", "model.window", "4096", id="window-huge"),
    pytest.param("[model]\nseed = -1", "model.seed", "-1", id="seed-negative"),
    pytest.param("[trainer]\ntimeout = nan", "trainer.timeout", "nan", id="trainer-timeout"),
    pytest.param("[trainer]\ntimeout = 0", "trainer.timeout", "> 0", id="trainer-timeout-0"),
    pytest.param(
        "[trainer.settings]\nlearning_rate = nan",
        "trainer.settings.learning_rate",
        "nan",
        id="learning-rate-nan",
    ),
    pytest.param(
        "[trainer.settings]\nsteps_per_round = 0",
        "trainer.settings.steps_per_round",
        "0",
        id="trainer-steps-zero",
    ),
    pytest.param(
        "[trainer.settings]\nlearning_rte = 0.1",
        "trainer.settings.learning_rte",
        "unknown",
        id="trainer-setting-unknown",
    ),
    pytest.param(
        "[trainer.settings]\nlr_end = 1.5",
        "trainer.settings.lr_end",
        "<= 1",
        id="trainer-lr-end-over",
    ),
    pytest.param(
        "[trainer.settings]\nlr_end = nan",
        "trainer.settings.lr_end",
        "nan",
        id="trainer-lr-end-nan",
    ),
    pytest.param(
        "[trainer.settings]\ntemperature = 0",
        "trainer.settings.temperature",
        "> 0",
        id="trainer-temperature-zero",
    ),
    pytest.param("[model]\nshared_dims = 6", "model.shared_dims", "6", id="shared-dims-over"),
    pytest.param("[data]\nseed = -3", "data.seed", "-3", id="data-seed-negative"),
    pytest.param("[broker]\nkeepalive = 0", "keepalive", "5-65535", id="keepalive-zero"),
    pytest.param(f"[broker]\nsession_expiry = {HUGE}", "session_expiry", HUGE, id="session-2**70"),
]


def _with(table: str) -> str:
    """MINIMAL with ``table`` (a [section] and one key) merged in."""
    section, line = table.split("\n", 1)
    if section in MINIMAL:
        return MINIMAL.replace(section + "\n", f"{section}\n{line}\n", 1)
    return MINIMAL + f"\n{section}\n{line}\n"


@pytest.mark.parametrize(("table", "key", "shown"), NUMBER_CASES)
def test_osml_agent_refuses_a_number_out_of_range_in_one_line(
    tmp_path: Path, table: str, key: str, shown: str
) -> None:
    path = write(tmp_path, _with(table))

    result = invoke("agent", "--config", str(path))

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: ")
    assert key in lines[0] and shown in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("step_seconds = nan", "data.step_seconds"),
        ("step_seconds = 0", "data.step_seconds"),
        ("grace = -2", "data.grace"),
        ("capacity = 7", "data.capacity"),
        ("capacity = 1000000\nfeatures = 200", "data.capacity"),  # over 2**27 values
        ("replay_speed = inf", "data.replay_speed"),
        ("max_behind_s = -1", "data.max_behind_s"),
        ("features = 99999", "data.features"),
    ],
)
def test_live_source_numbers_are_checked(tmp_path: Path, line: str, key: str) -> None:
    names = {x.split(" ", 1)[0] for x in line.splitlines()}
    text = "\n".join(x for x in LIVE.splitlines() if x.split(" ", 1)[0] not in names) + "\n"

    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        load(tmp_path, text + line + "\n")

    assert "\n" not in str(info.value) and str(tmp_path / "agent.toml") in str(info.value)


def test_the_documented_sentinels_and_edges_are_accepted(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        LIVE
        + "grace = -1\n\n[rounds]\nperiod = 0\nreplay = -1\ndeadline = 86400\n"
        + f"count = {2**48}\n",
    )
    assert cfg.data.grace == -1.0 and cfg.rounds.period == 0.0 and cfg.rounds.replay == -1
    assert cfg.rounds.deadline == 86400.0 and cfg.rounds.count == 2**48


def test_every_number_of_every_section_declares_its_bounds() -> None:
    # A new numeric key without bounds would let nan or 2**70 through again.
    for cls in (DataSection, ModelSection, RoundsSection, TrainerSection):
        for f in dataclasses.fields(cls):
            if f.type in ("int", "float"):
                assert "bounds" in f.metadata, f"{cls.__name__}.{f.name} has no bounds"


def test_sections_built_in_code_check_themselves() -> None:
    with pytest.raises(ConfigError, match="rounds.deadline"):
        RoundsSection(deadline=float("nan"))
    with pytest.raises(ConfigError, match="model.anchor_norm"):
        ModelSection(anchor_norm=float("inf"))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("learning_rate", float("nan")),
        ("align_weight", float("inf")),
        ("var_target", -1.0),
        ("init_std", 0.0),
        ("threads", 0),
        ("batch_size", 2**70),
        ("mask_ratio", float("nan")),
        ("temperature", 0.0),
        ("mmd_weight", float("inf")),
        ("shared_dims", -1),
    ],
)
def test_trainer_settings_refuse_non_finite_and_out_of_range(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        settings_from_map({key: value}, "mlp")


def test_the_new_objectives_and_their_settings_load_from_trainer_settings(tmp_path: Path) -> None:
    for objective, key, value in (("infonce", "temperature", 0.1), ("masked-mmd", "mmd_weight", 2)):
        text = MINIMAL + f'\n[trainer.settings]\nobjective = "{objective}"\n{key} = {value}\n'
        cfg = load(tmp_path, text)

        assert cfg.trainer.settings == {"objective": objective, key: value}
        settings = settings_from_map(cfg.trainer.settings, cfg.model.architecture)
        assert settings.objective == objective and getattr(settings, key) == value


def test_shared_dims_is_a_model_key_that_reaches_learner_and_trainer(tmp_path: Path) -> None:
    from osml.agent.runtime import AgentRuntime

    text = MINIMAL.replace('context = "lab"', f'context = "lab"\nstate_dir = "{tmp_path / "s"}"')
    cfg = load(tmp_path, text + "\n[model]\nembedding_dim = 6\nshared_dims = 4\n")
    runtime = AgentRuntime(cfg)  # connects to nothing until it runs

    assert cfg.model.shared_dims == 4
    assert runtime.learner.settings.shared_dims == 4
    assert runtime._trainer_settings() == {"architecture": "mlp", "shared_dims": 4}
    with pytest.raises(ConfigError, match="trainer.settings.shared_dims.*model"):
        load(tmp_path, MINIMAL + "\n[trainer.settings]\nshared_dims = 2\n")


def test_mqtt_readings_need_the_devices_own_broker_when_the_agent_logs_in(
    tmp_path: Path,
) -> None:
    login = (
        LIVE + '\n[broker]\nurl = "mqtt://broker.lan:1883"\nusername = "lab.0"\npassword = "x"\n'
    )
    with pytest.raises(ConfigError, match="data.broker"):
        load(tmp_path, login)

    cfg = load(tmp_path, login.replace("step_seconds = 0.5", 'broker = "mqtt://127.0.0.1:1883"'))
    assert cfg.data.broker == "mqtt://127.0.0.1:1883" and cfg.broker.username == "lab.0"


def test_anomaly_section_sets_the_detector_and_refuses_bad_values(tmp_path: Path) -> None:
    from osml.core.anomaly import AnomalySettings

    cfg = load(tmp_path, MINIMAL + "\n[anomaly]\nthreshold = 8\nhistory = 256\n")
    assert cfg.anomaly.settings() == AnomalySettings(threshold=8.0, history=256)
    assert load(tmp_path, MINIMAL).anomaly.settings() == AnomalySettings()
    for bad, key in (
        ("threshold = nan", "anomaly.threshold"),
        ("threshold = -1", "anomaly.threshold"),
        ("min_history = 600", "anomaly.min_history"),
        ("treshold = 5", "anomaly.treshold"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(tmp_path, MINIMAL + f"\n[anomaly]\n{bad}\n")
