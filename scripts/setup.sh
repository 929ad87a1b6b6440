#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine (or a 64-bit Raspberry Pi OS host that trains):
# Mosquitto for `osml run`, then a virtual environment .venv at the repository root with osml
# (editable) and its trainer (torch==2.13.0) and plotting extras. Never touches the system
# Python's site-packages.
#
#   bash scripts/setup.sh           # osml[trainer,plot]; then .venv/bin/osml ...
#   bash scripts/setup.sh --dev     # also the extras the tests and linters need (what CI uses)
#
# Environment: OSML_VENV (default .venv) is the venv to create or reuse; OSML_EXTRAS adds more
# extras (comma-separated); OSML_PYTHON (default python3) is the interpreter that makes the venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EXTRAS="trainer,plot"
for arg in "$@"; do
    case "$arg" in
        --dev) EXTRAS="$EXTRAS,embedded-broker,test,dev" ;;
        -h | --help)
            sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument $arg (try --help)" >&2
            exit 2
            ;;
    esac
done
EXTRAS="$EXTRAS${OSML_EXTRAS:+,$OSML_EXTRAS}"
VENV="${OSML_VENV:-.venv}"
PY="${OSML_PYTHON:-python3}"

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
APT_UPDATED=""
apt_install() {
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get update -qq </dev/null
        APT_UPDATED=1
    fi
    $SUDO apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null
}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto mosquitto-clients
fi
# `osml broker init` makes the TLS listener's certificates with openssl (the TLS tests too).
if ! command -v openssl >/dev/null 2>&1; then
    apt_install openssl
fi
# Debian's python3 makes venvs only with the python3-venv package (ensurepip).
if [ ! -x "$VENV/bin/python" ] && ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3-venv
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# The trainer extra pins torch==2.13.0 (never an unpinned torch: that would download gigabytes).
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    -e ".[$EXTRAS]" </dev/null
echo "osml[$EXTRAS] is installed in $VENV: run  $VENV/bin/osml run --data generated:simple --rounds 10 --out runs/demo"
echo "(or  source $VENV/bin/activate  and then plain  osml ...)"
