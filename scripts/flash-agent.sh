#!/usr/bin/env bash
# Deploy one osml agent to a device (a 64-bit Raspberry Pi OS / Debian host) over ssh, as the
# systemd service osml-agent@<agent>. Run `scripts/flash-agent.sh --help` for the details.
set -euo pipefail

PROG="flash-agent.sh"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

usage() {
    cat <<'EOF'
Usage: scripts/flash-agent.sh [options] HOST CONFIG

Deploy one osml agent to HOST (an ssh destination such as pi@sensor-3.lan) as the systemd
service osml-agent@<agent>, where <agent> is [agent] id from CONFIG (the agent's TOML config).

Steps:
  1. build the osml wheel here (python3 -m pip wheel --no-deps)
  2. copy to HOST over ssh: the wheel, CONFIG (rewritten for the device's paths), the files CONFIG
     names ([broker] password_file, ca_file, cert_file, key_file; [signing] key_file,
     previous_key_file; [model] path and its .card.json),
     the systemd unit(s) and an install script
  3. on HOST, as root (through sudo unless you log in as root):
       - create the system user osml (no login shell)
       - /opt/osml/venv (python3 -m venv); pip install the wheel WITHOUT extras: the agent's
         dependencies only (numpy, onnxruntime, paho-mqtt, msgpack, zstandard, click), never torch
       - /etc/osml/<agent>.toml (0640 root:osml); in /etc/osml/<agent>/ the secrets (password,
         client and signing keys) 0600 osml:osml, the CA, certificate and model 0640 root:osml
       - state in /var/lib/osml/<agent> (owned by osml)
       - /etc/systemd/system/osml-agent@.service; systemctl daemon-reload;
         systemctl enable --now osml-agent@<agent>
  4. print how to check on it (systemctl status, journalctl, osml monitor)

The installed config differs from CONFIG only in paths: agent.state_dir becomes
/var/lib/osml/<agent>, the copied files point into /etc/osml/<agent>/, and a missing or relative
trainer.socket becomes /run/osml/trainer.sock (where osml-trainer.service listens). Data is not
copied: csv:/paper: paths in [data] must be absolute paths on the device.

Only 64-bit devices are supported (aarch64 or x86_64): onnxruntime, numpy, msgpack and zstandard
publish no wheels for 32-bit Raspberry Pi OS (armv7l).

Options:
  --dry-run          print every step (local commands, the config as installed, the remote
                     install script) and run nothing: no build, no ssh
  --ssh-opts OPTS    extra ssh options, split on whitespace, e.g. --ssh-opts '-p 2222 -i ~/.ssh/pi'
  --python PY        python on the device that creates the venv (default: python3, >= 3.10)
  --arch-check       before building, check `uname -m` on HOST: aarch64 or x86_64, refuse armv7l
  --with-trainer     also install the trainer extra (pip install 'osml[trainer]': torch) and
                     osml-trainer.service, for devices that train their agents' encoders
  --torch-index URL  extra package index for torch on x86_64 devices with --with-trainer
                     (default: https://download.pytorch.org/whl/cpu, the CPU-only builds)
  --name NAME        instance name (default: the agent id; letters, digits, . _ - only)
  --wheel FILE       deploy this osml wheel instead of building one
  -h, --help         show this help

Environment:
  OSML_LOCAL_PYTHON  python used here to read CONFIG and build the wheel (default: python3)

Examples:
  scripts/flash-agent.sh --dry-run pi@sensor-3.lan configs/agent-3.toml
  scripts/flash-agent.sh --arch-check --ssh-opts '-p 2222' pi@sensor-3.lan configs/agent-3.toml
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 2
}

note() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

# POSIX single quoting: safe for the local shell and for any remote login shell (sh, dash, bash).
shq() {
    local s
    s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

# A command line with every argument quoted where needed, as a user could paste it.
quote_cmd() {
    local out="" arg
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+="$arg "
        else
            out+="$(shq "$arg") "
        fi
    done
    printf '%s' "${out% }"
}

step() {
    printf '\n== %s\n' "$*"
}

# Print a command, then run it (unless --dry-run).
run() {
    printf '+ %s\n' "$(quote_cmd "$@")"
    if [ "$DRY_RUN" -eq 0 ]; then
        "$@"
    fi
}

# ------------------------------------------------------------------------------------ arguments

DRY_RUN=0
ARCH_CHECK=0
WITH_TRAINER=0
REMOTE_PY="python3"
SSH_OPTS_TEXT=""
TORCH_INDEX="https://download.pytorch.org/whl/cpu"
NAME=""
WHEEL=""
LOCAL_PY="${OSML_LOCAL_PYTHON:-python3}"
POSITIONAL=()

need_value() {
    [ "$2" -ge 2 ] || die "$1 needs a value (see --help)"
}

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --arch-check) ARCH_CHECK=1; shift ;;
        --with-trainer) WITH_TRAINER=1; shift ;;
        --ssh-opts) need_value "$1" $#; SSH_OPTS_TEXT="$2"; shift 2 ;;
        --ssh-opts=*) SSH_OPTS_TEXT="${1#*=}"; shift ;;
        --python) need_value "$1" $#; REMOTE_PY="$2"; shift 2 ;;
        --python=*) REMOTE_PY="${1#*=}"; shift ;;
        --torch-index) need_value "$1" $#; TORCH_INDEX="$2"; shift 2 ;;
        --torch-index=*) TORCH_INDEX="${1#*=}"; shift ;;
        --name) need_value "$1" $#; NAME="$2"; shift 2 ;;
        --name=*) NAME="${1#*=}"; shift ;;
        --wheel) need_value "$1" $#; WHEEL="$2"; shift 2 ;;
        --wheel=*) WHEEL="${1#*=}"; shift ;;
        --) shift; POSITIONAL+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) POSITIONAL+=("$1"); shift ;;
    esac
done

[ "${#POSITIONAL[@]}" -eq 2 ] || die "expected HOST and CONFIG, got ${#POSITIONAL[@]} argument(s); usage: $PROG [options] HOST CONFIG (see --help)"
HOST="${POSITIONAL[0]}"
CONFIG="${POSITIONAL[1]}"

[ -n "$HOST" ] || die "HOST is empty: give an ssh destination such as pi@sensor-3.lan"
case "$HOST" in
    -*) die "HOST $(shq "$HOST") starts with '-': give an ssh destination such as pi@sensor-3.lan" ;;
esac
[[ "$HOST" =~ ^[^[:space:]\'\"\;\&\|\`\$]+$ ]] || die "HOST $(shq "$HOST") is not an ssh destination: use user@host"
[ -n "$REMOTE_PY" ] || die "--python is empty: give the device's python, e.g. python3"
[[ "$REMOTE_PY" =~ ^[A-Za-z0-9_./+-]+$ ]] || die "--python $(shq "$REMOTE_PY"): use a command name or path such as python3 or /usr/bin/python3.11"
[ -e "$CONFIG" ] || die "config $(shq "$CONFIG") does not exist: give the agent's TOML config (see agent/osml/config.py)"
[ -f "$CONFIG" ] || die "config $(shq "$CONFIG") is not a file"
[ -r "$CONFIG" ] || die "config $(shq "$CONFIG") is not readable"
if [ -n "$WHEEL" ]; then
    [ -f "$WHEEL" ] || die "--wheel $(shq "$WHEEL") does not exist"
    case "$(basename -- "$WHEEL")" in
        osml-*.whl) ;;
        *) die "--wheel $(shq "$WHEEL") is not an osml wheel (osml-*.whl)" ;;
    esac
fi

umask 077  # the staged files include secrets

SSH_OPTS=()
if [ -n "$SSH_OPTS_TEXT" ]; then
    read -r -a SSH_OPTS <<<"$SSH_OPTS_TEXT"
    for i in "${!SSH_OPTS[@]}"; do
        # shellcheck disable=SC2088  # matches a literal ~/ that the shell did not expand
        case "${SSH_OPTS[$i]}" in
            "~/"*) SSH_OPTS[i]="$HOME/${SSH_OPTS[$i]#"~/"}" ;;
        esac
    done
fi

command -v "$LOCAL_PY" >/dev/null 2>&1 || die "$LOCAL_PY not found here: set OSML_LOCAL_PYTHON to a python >= 3.10"

# ------------------------------------------------------------------------- read the config here

# Reads CONFIG, checks what the deployment needs, and writes the config as it is installed on the
# device (paths rewritten, nothing else changed; checked by parsing the result again). Prints
# KEY<TAB>VALUE lines for this script; problems go to stderr as one line each, exit code 2.
read_config() {
    "$LOCAL_PY" - "$@" <<'PY'
import copy
import json
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        print("flash-agent.sh: error: reading TOML needs Python >= 3.11 (or pip install tomli); "
              "set OSML_LOCAL_PYTHON to such a python", file=sys.stderr)
        sys.exit(2)

config_arg, name_arg, out_path, with_trainer = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
config = Path(config_arg)
base = config.resolve().parent
ETC, STATE, SOCKET = "/etc/osml", "/var/lib/osml", "/run/osml/trainer.sock"


def fail(message):
    print(f"flash-agent.sh: error: {config_arg}: {message}", file=sys.stderr)
    sys.exit(2)


def warn(message):
    print(f"flash-agent.sh: warning: {config_arg}: {message}", file=sys.stderr)


try:
    text = config.read_text(encoding="utf-8")
    raw = tomllib.loads(text)
except OSError as exc:
    fail(f"cannot read ({exc.strerror})")
except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
    fail(f"not valid TOML ({exc}); fix the syntax")

agent = raw.get("agent")
if not isinstance(agent, dict):
    fail('no [agent] table: add [agent] with id = "..." and context = "..."')
agent_id = agent.get("id")
if not isinstance(agent_id, str) or not agent_id.strip():
    fail('[agent] has no id: add id = "..." (a string) to [agent]')
context = agent.get("context")
if not isinstance(context, str) or not context.strip():
    fail('[agent] has no context: add context = "..." (a string) to [agent]')

name = name_arg or agent_id
if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith((".", "-")):
    fail(f"agent id {name!r} cannot name the service osml-agent@<id>: pass --name with "
         f"letters, digits, '.', '_' or '-' only")
if name == "trainer":
    fail("the instance name 'trainer' is taken by osml-trainer.service (/var/lib/osml/trainer): "
         "pass --name with another name")
device_dir = f"{ETC}/{name}"


def section(key):
    value = raw.get(key, {})
    if not isinstance(value, dict):
        fail(f"[{key}] must be a table")
    return value


def local_file(table, key):
    value = section(table).get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        fail(f"{table}.{key} must be a string (a path)")
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        fail(f"{table}.{key} = {value!r}: no such file here ({p}); the file is copied to the "
             f"device, so it must exist on this machine")
    return p


changes = {}  # (table, key) -> new value
copies = []   # (local path, file name in /etc/osml/<name>/)
for key, dest in (("password_file", "password"), ("ca_file", "ca.crt"),
                  ("cert_file", "client.crt"), ("key_file", "client.key")):
    src = local_file("broker", key)
    if src is not None:
        copies.append((src, dest))
        changes[("broker", key)] = f"{device_dir}/{dest}"
for key, dest in (("key_file", "signing.key"), ("previous_key_file", "signing-previous.key")):
    src = local_file("signing", key)
    if src is not None:
        copies.append((src, dest))
        changes[("signing", key)] = f"{device_dir}/{dest}"
if section("broker").get("password") is not None:
    warn("broker.password is written in the config itself; prefer password_file "
         "(the config is installed 0640 root:osml either way)")

model = local_file("model", "path")
if model is not None:
    card = model.with_name(model.stem + ".card.json")
    if not card.is_file():
        fail(f"model.path {model}: its model card {card.name} is missing next to it "
             f"(the agent needs both)")
    copies += [(model, model.name), (card, card.name)]
    changes[("model", "path")] = f"{device_dir}/{model.name}"
names = [dest for _, dest in copies]
if len(set(names)) != len(names):
    fail(f"two copied files would share the name {sorted(n for n in names if names.count(n) > 1)[0]!r} "
         "in /etc/osml/<agent>/: rename the model")

state_dir = f"{STATE}/{name}"
old_state = agent.get("state_dir")
if old_state not in (None, state_dir):
    warn(f"agent.state_dir {old_state!r} becomes {state_dir!r} on the device (the service's "
         "StateDirectory, the only place it may write)")
changes[("agent", "state_dir")] = state_dir

trainer = section("trainer")
socket = trainer.get("socket")
if not isinstance(socket, str) or not socket.startswith("/"):
    changes[("trainer", "socket")] = SOCKET
elif socket != SOCKET and with_trainer:
    warn(f"trainer.socket is {socket!r} but osml-trainer.service listens on {SOCKET}")
socket_out = changes.get(("trainer", "socket"), socket)

data = section("data")
source = data.get("source")
data_paths = []
if isinstance(source, str) and source.partition(":")[0] in ("csv", "paper"):
    data_paths.append(("data.source", source.partition(":")[2]))
if isinstance(data.get("test"), str) and data.get("test"):
    data_paths.append(("data.test", data["test"]))
for key, path in data_paths:
    if not path.startswith("/"):
        fail(f"{key} path {path!r} is relative: data is not copied, give its absolute path on the device")
    if path.startswith(("/home/", "/root/", "/tmp/", "/var/tmp/")) or path in ("/home", "/root", "/tmp"):
        fail(f"{key} path {path!r} is hidden from the service (ProtectHome=yes, PrivateTmp=yes): "
             "keep the data elsewhere on the device, e.g. /srv/osml/")
eval_dir = section("rounds").get("eval_dir")
if isinstance(eval_dir, str) and eval_dir and not eval_dir.startswith(state_dir + "/"):
    warn(f"rounds.eval_dir {eval_dir!r} is read-only for the service (ProtectSystem=strict): "
         f"use a directory under {state_dir}/")


def toml_string(value):
    return json.dumps(value, ensure_ascii=False)


# Rewrite the changed keys line by line so that comments and layout survive.
lines = text.splitlines()
header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
any_header = re.compile(r"^\s*\[")
pending = dict(changes)
current = ""
out = []
for line in lines:
    m = header.match(line)
    if m or any_header.match(line):
        current = m.group(1) if m else None  # None: a table we do not edit ([[array]], quoted)
        out.append(line)
        continue
    if current is not None:
        for (table, key), value in list(pending.items()):
            if table == current and re.match(rf"^\s*{re.escape(key)}\s*=", line):
                # Keep a trailing comment when the old value is a plain one-line string.
                m = re.match(r"""^(\s*\S+\s*=\s*)("(?:[^"\\]|\\.)*"|'[^']*')(\s*(?:#.*)?)$""", line)
                if m:
                    line = m.group(1) + toml_string(value) + m.group(3)
                else:
                    indent = line[: len(line) - len(line.lstrip())]
                    line = f"{indent}{key} = {toml_string(value)}"
                del pending[(table, key)]
                break
    out.append(line)
# Keys not present yet: add them right after their table's header, or add the table at the end.
for (table, key), value in pending.items():
    for i, line in enumerate(out):
        m = header.match(line)
        if m and m.group(1) == table:
            out.insert(i + 1, f"{key} = {toml_string(value)}")
            break
    else:
        out += ["", f"[{table}]", f"{key} = {toml_string(value)}"]
new_text = "\n".join(out) + "\n"

expected = copy.deepcopy(raw)
for (table, key), value in changes.items():
    expected.setdefault(table, {})[key] = value
try:
    reparsed = tomllib.loads(new_text)
except tomllib.TOMLDecodeError as exc:
    reparsed = exc
if reparsed != expected:
    fail("cannot rewrite its paths automatically (unusual TOML layout, e.g. dotted keys or inline "
         "tables for agent/broker/model/trainer): write each of those as a plain [table]")

if out_path == "-":  # --dry-run shows the config as installed, without an inline password
    sys.stdout.write(re.sub(r'(?m)^(\s*password\s*=\s*).*$', r'\1"********"', new_text))
    sys.exit(0)
if out_path:
    Path(out_path).write_text(new_text, encoding="utf-8")

broker = section("broker")
info = {
    "AGENT_ID": agent_id,
    "NAME": name,
    "CONTEXT": context,
    "BROKER_URL": broker.get("url", "mqtt://127.0.0.1:1883"),
    "SOCKET": socket_out,
    "HAS_PASSWORD": "1" if "password" in broker or "password_file" in broker else "0",
}
rows = [(key, str(value)) for key, value in info.items()]
rows += [("DATA", path) for _, path in data_paths]
rows += [("COPY", str(src), dest) for src, dest in copies]
for row in rows:
    if any("\t" in field or "\n" in field for field in row):
        fail(f"{row[0].lower()} {row[1]!r}: tabs and line breaks in values or paths are not supported")
    print("\t".join(row))
PY
}

INFO="$(read_config "$CONFIG" "$NAME" "" "$WITH_TRAINER")" || exit 2
AGENT_ID="" CONTEXT="" BROKER_URL="" SOCKET=""
COPY_SRC=()
COPY_DEST=()
DATA_PATHS=()
while IFS=$'\t' read -r key v1 v2; do
    case "$key" in
        AGENT_ID) AGENT_ID="$v1" ;;
        NAME) NAME="$v1" ;;
        CONTEXT) CONTEXT="$v1" ;;
        BROKER_URL) BROKER_URL="$v1" ;;
        SOCKET) SOCKET="$v1" ;;
        DATA) DATA_PATHS+=("$v1") ;;
        COPY) COPY_SRC+=("$v1"); COPY_DEST+=("$v2") ;;
    esac
done <<<"$INFO"
[ -n "$AGENT_ID" ] && [ -n "$NAME" ] || die "could not read $(shq "$CONFIG")"

for unit in osml-agent.service osml-trainer.service; do
    [ -f "$SCRIPT_DIR/$unit" ] || die "$SCRIPT_DIR/$unit is missing: run this script from an osml checkout"
done

UNIT="osml-agent@$NAME.service"
# Only letters, digits, . _ - (NAME is checked): safe in a remote command line without quoting.
REMOTE_STAGE="/tmp/osml-deploy.$NAME.$(date +%Y%m%d%H%M%S).$$$RANDOM"
VENV="/opt/osml/venv"

if [ "$DRY_RUN" -eq 1 ]; then
    WORK="${TMPDIR:-/tmp}/osml-flash.XXXXXX"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/osml-flash.XXXXXX")"
fi

# One ssh connection for every step (a single password prompt); the user's options come first
# so that they win over these defaults.
SSH=(ssh ${SSH_OPTS[@]+"${SSH_OPTS[@]}"} -o ControlMaster=auto -o "ControlPath=$WORK/ssh" -o ControlPersist=60)
SSH_SHOWN=(ssh ${SSH_OPTS[@]+"${SSH_OPTS[@]}"})

cleanup() {
    if [ "$DRY_RUN" -eq 0 ]; then
        if [ -S "$WORK/ssh" ]; then  # the shared ssh connection
            "${SSH[@]}" -O exit -- "$HOST" >/dev/null 2>&1 || true
        fi
        rm -rf -- "$WORK"
    fi
}
trap cleanup EXIT

# The script that runs on the device as root. Only the steps this deployment needs are written
# into it, so that --dry-run shows exactly what will run.
install_script() {
    cat <<EOF
#!/usr/bin/env bash
# Written by scripts/flash-agent.sh: installs osml agent $(shq "$AGENT_ID") as $UNIT.
set -euo pipefail
NAME=$(shq "$NAME")
UNIT=$(shq "$UNIT")
PY=$(shq "$REMOTE_PY")
VENV=$(shq "$VENV")
WHEEL_FILE=$(shq "$WHEEL_FILE")
EOF
    cat <<'EOF'
STAGE="$(cd "$(dirname "$0")" && pwd)"
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        rm -rf -- "$STAGE"
        echo "osml install: error: not root and no sudo: log in as root, or install sudo" >&2
        exit 2
    fi
    status=0
    sudo -- bash "$0" || status=$?
    rm -rf -- "$STAGE" 2>/dev/null || true
    exit "$status"
fi
trap 'rm -rf -- "$STAGE"' EXIT
say() { printf '\n-- %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
fail() { printf 'osml install: error: %s\n' "$*" >&2; exit 2; }

say "check the device"
ARCH="$(uname -m)"
case "$ARCH" in
    aarch64|arm64|x86_64) ;;
    arm*) fail "this device is $ARCH (32-bit ARM): there are no onnxruntime wheels (nor numpy, msgpack, zstandard) for 32-bit Raspberry Pi OS; install the 64-bit Raspberry Pi OS (aarch64)" ;;
    *) fail "unsupported architecture $ARCH: osml devices must be aarch64 or x86_64" ;;
esac
command -v "$PY" >/dev/null 2>&1 || fail "$PY not found: apt-get install -y python3 python3-venv (or pass --python)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || fail "osml needs Python >= 3.10, $PY is $("$PY" -V 2>&1)"
[ -x "$VENV/bin/python" ] || "$PY" -c 'import ensurepip, venv' 2>/dev/null || fail "$PY cannot create a venv: apt-get install -y python3-venv"
command -v systemctl >/dev/null 2>&1 || fail "systemctl not found: the agent runs as a systemd service"

say "system user osml (no login shell)"
if getent passwd osml >/dev/null; then
    echo "user osml exists"
else
    NOLOGIN="$(command -v nologin || echo /usr/sbin/nologin)"
    if getent group osml >/dev/null; then GROUP_OPT=(--gid osml); else GROUP_OPT=(--user-group); fi
    run useradd --system "${GROUP_OPT[@]}" --home-dir /var/lib/osml --no-create-home --shell "$NOLOGIN" --comment "osml agents" osml
fi

say "directories"
run install -d -m 0755 -o root -g root /opt/osml /var/lib/osml
run install -d -m 0750 -o root -g osml /etc/osml "/etc/osml/$NAME"
run install -d -m 0750 -o osml -g osml "/var/lib/osml/$NAME"

EOF
    if [ "$WITH_TRAINER" -eq 1 ]; then
        printf 'TORCH_INDEX=%s\n' "$(shq "$TORCH_INDEX")"
        cat <<'EOF'
say "venv $VENV with osml and the trainer extra (torch)"
[ -x "$VENV/bin/python" ] || run "$PY" -m venv "$VENV"
INDEX=()
if [ "$ARCH" = x86_64 ] && [ -n "$TORCH_INDEX" ]; then
    INDEX=(--extra-index-url "$TORCH_INDEX")  # CPU-only torch builds, not the CUDA ones
fi
run "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input ${INDEX[@]+"${INDEX[@]}"} "$STAGE/${WHEEL_FILE}[trainer]"
EOF
    else
        cat <<'EOF'
say "venv $VENV with osml: agent dependencies only, no extras, no torch"
[ -x "$VENV/bin/python" ] || run "$PY" -m venv "$VENV"
run "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input "$STAGE/$WHEEL_FILE"
EOF
    fi
    cat <<'EOF'
# The same version may be installed already: replace its code with this build.
run "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --no-deps --force-reinstall "$STAGE/$WHEEL_FILE"
run "$VENV/bin/osml" --version

say "config, secrets and model"
run install -m 0640 -o root -g osml "$STAGE/config.toml" "/etc/osml/$NAME.toml"
for f in "$STAGE"/files/*; do
    [ -e "$f" ] || continue
    case "${f##*/}" in
        # Secrets: the agent refuses a key or password file that anyone but its owner can read.
        password|client.key|signing.key|signing-previous.key)
            run install -m 0600 -o osml -g osml "$f" "/etc/osml/$NAME/${f##*/}" ;;
        *) run install -m 0640 -o root -g osml "$f" "/etc/osml/$NAME/${f##*/}" ;;
    esac
done

say "systemd"
run install -m 0644 -o root -g root "$STAGE/osml-agent.service" /etc/systemd/system/osml-agent@.service
EOF
    if [ "$WITH_TRAINER" -eq 1 ]; then
        cat <<'EOF'
run install -m 0644 -o root -g root "$STAGE/osml-trainer.service" /etc/systemd/system/osml-trainer.service
EOF
    fi
    cat <<'EOF'
run systemctl daemon-reload
start() {  # enable --now; restart instead if it runs already, so that it picks up this install
    if systemctl is-active --quiet "$1"; then
        run systemctl enable "$1"
        run systemctl restart "$1"
    else
        run systemctl enable --now "$1"
    fi
}
EOF
    if [ "$WITH_TRAINER" -eq 1 ]; then
        echo 'start osml-trainer.service'
    fi
    cat <<'EOF'
start "$UNIT"
sleep 3
if ! systemctl is-active --quiet "$UNIT"; then
    systemctl --no-pager --lines=20 status "$UNIT" || true
    echo "osml install: $UNIT is installed but not running: journalctl -u $UNIT -n 50" >&2
    exit 3
fi
echo "$UNIT is running"
EOF
}

check_arch() {
    case "$1" in
        aarch64|arm64|x86_64) echo "$HOST is $1: supported" ;;
        arm*) die "$HOST is $1 (32-bit ARM): there are no onnxruntime wheels (nor numpy, msgpack, zstandard) for 32-bit Raspberry Pi OS; install the 64-bit Raspberry Pi OS (aarch64) and retry" ;;
        "") die "could not read the architecture of $HOST (uname -m printed nothing)" ;;
        *) die "$HOST is $1: osml devices must be aarch64 or x86_64" ;;
    esac
}

if [ "$DRY_RUN" -eq 1 ]; then
    echo "dry run: nothing is built, copied or run; these are the steps for agent $(shq "$AGENT_ID") on $HOST"
fi
echo "agent $(shq "$AGENT_ID") (context $(shq "$CONTEXT")) -> $HOST as $UNIT"

# ---------------------------------------------------------------------------------------- steps

if [ "$ARCH_CHECK" -eq 1 ]; then
    step "0. check the device's architecture (aarch64 or x86_64; 32-bit armv7l is refused)"
    printf '+ %s\n' "$(quote_cmd "${SSH_SHOWN[@]}" -- "$HOST" uname -m)"
    if [ "$DRY_RUN" -eq 0 ]; then
        ARCH="$("${SSH[@]}" -- "$HOST" uname -m </dev/null)" || die "ssh $HOST failed: check HOST and --ssh-opts"
        check_arch "$(printf '%s' "$ARCH" | tr -d '\r')"
    fi
fi

step "1. build the osml wheel (no dependencies bundled)"
if [ "$DRY_RUN" -eq 0 ]; then
    run mkdir -p "$WORK/wheel"
else
    printf '+ %s\n' "$(quote_cmd mktemp -d "${TMPDIR:-/tmp}/osml-flash.XXXXXX")"
fi
if [ -n "$WHEEL" ]; then
    echo "using the wheel $WHEEL (--wheel)"
else
    run "$LOCAL_PY" -m pip wheel --no-deps --disable-pip-version-check -q -w "$WORK/wheel" "$REPO_ROOT"
    if [ "$DRY_RUN" -eq 0 ]; then
        WHEELS=("$WORK"/wheel/osml-*.whl)
        [ -f "${WHEELS[0]}" ] || die "pip wheel wrote no osml wheel to $WORK/wheel"
        WHEEL="${WHEELS[0]}"
    else
        WHEEL="$WORK/wheel/osml-VERSION-py3-none-any.whl"
    fi
fi
WHEEL_FILE="$(basename -- "$WHEEL")"

step "2. copy the wheel, the config, its files and the systemd unit to $HOST:$REMOTE_STAGE"
STAGE="$WORK/stage"
run mkdir -p "$STAGE/files"
run cp -- "$WHEEL" "$STAGE/$WHEEL_FILE"
echo "# the config, installed as /etc/osml/$NAME.toml (paths rewritten for the device):"
printf '+ %s\n' "(rewrite the paths of) $(quote_cmd "$CONFIG") > $(quote_cmd "$STAGE/config.toml")"
if [ "$DRY_RUN" -eq 1 ]; then
    read_config "$CONFIG" "$NAME" - "$WITH_TRAINER" 2>/dev/null | sed 's/^/    | /'
else
    read_config "$CONFIG" "$NAME" "$STAGE/config.toml" "$WITH_TRAINER" >/dev/null 2>&1 || die "could not write the config for the device"
fi
for i in "${!COPY_SRC[@]}"; do
    run cp -- "${COPY_SRC[$i]}" "$STAGE/files/${COPY_DEST[$i]}"
done
run cp -- "$SCRIPT_DIR/osml-agent.service" "$STAGE/osml-agent.service"
if [ "$WITH_TRAINER" -eq 1 ]; then
    run cp -- "$SCRIPT_DIR/osml-trainer.service" "$STAGE/osml-trainer.service"
fi
printf '+ %s\n' "install script > $(quote_cmd "$STAGE/install.sh")  (shown in step 3)"
if [ "$DRY_RUN" -eq 0 ]; then
    install_script >"$STAGE/install.sh"
fi
REMOTE_UNPACK="umask 077 && mkdir $REMOTE_STAGE && tar -C $REMOTE_STAGE -xf -"
printf '+ %s | %s\n' "$(quote_cmd tar -C "$STAGE" -cf - .)" "$(quote_cmd "${SSH_SHOWN[@]}" -- "$HOST" "$REMOTE_UNPACK")"
if [ "$DRY_RUN" -eq 0 ]; then
    COPYFILE_DISABLE=1 tar -C "$STAGE" -cf - . | "${SSH[@]}" -- "$HOST" "$REMOTE_UNPACK" \
        || die "copying to $HOST failed: check HOST and --ssh-opts (ssh $HOST must work without this script)"
fi

step "3. install on $HOST as root: user osml, $VENV, /etc/osml/$NAME.toml, $UNIT"
REMOTE_INSTALL="bash $REMOTE_STAGE/install.sh"
TTY=()
if [ -t 0 ] && [ -t 1 ]; then
    TTY=(-t)  # lets sudo ask for a password
fi
printf '+ %s\n' "$(quote_cmd "${SSH_SHOWN[@]}" ${TTY[@]+"${TTY[@]}"} -- "$HOST" "$REMOTE_INSTALL")"
if [ "$DRY_RUN" -eq 1 ]; then
    echo "# $REMOTE_STAGE/install.sh:"
    install_script | sed 's/^/    | /'
else
    status=0
    "${SSH[@]}" ${TTY[@]+"${TTY[@]}"} -- "$HOST" "$REMOTE_INSTALL" || status=$?
    if [ "$status" -eq 3 ]; then
        die "installed, but $UNIT is not running on $HOST: see its status above"
    elif [ "$status" -ne 0 ]; then
        die "the installation on $HOST failed (exit code $status): see the output above"
    fi
fi

step "4. check on it"
SSH_HINT="$(quote_cmd "${SSH_SHOWN[@]}" "$HOST")"
cat <<EOF
  $SSH_HINT systemctl status $UNIT
  $SSH_HINT journalctl -u $UNIT -f
  osml monitor --broker $(quote_cmd "$BROKER_URL") --context $(quote_cmd "$CONTEXT") --once
EOF
if [ "$WITH_TRAINER" -eq 1 ]; then
    echo "  $SSH_HINT journalctl -u osml-trainer -f"
else
    echo "  (the agent asks a trainer on $SOCKET for new encoders: deploy with --with-trainer on a device that trains)"
fi
for path in ${DATA_PATHS[@]+"${DATA_PATHS[@]}"}; do
    echo "  data is not copied: $path must exist on $HOST, readable by user osml"
done
if [ "$DRY_RUN" -eq 1 ]; then
    echo
    echo "dry run: nothing was done"
fi
