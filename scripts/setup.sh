#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine (or a 64-bit Raspberry Pi OS host that trains):
# Mosquitto for `osml run`, then osml with the trainer (torch==2.13.0) and plotting extras.
# Run from the repository root:  bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients </dev/null >/dev/null
fi
# The trainer extra pins torch==2.13.0 (never an unpinned torch: that would download gigabytes).
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[trainer,plot${OSML_EXTRAS:+,$OSML_EXTRAS}]" </dev/null
echo "osml is installed: try  osml run --data generated:simple --rounds 10 --out runs/demo"
