#!/usr/bin/env bash
# Install the Debian packages the tests and the local stack use, when their commands are missing.
#
# Each argument is COMMAND=PACKAGE: the package is installed only when COMMAND is not on PATH, so a
# machine that has everything runs no apt at all. As root (CI, containers) this runs
# `apt-get update` once, then `apt-get install -y`; otherwise it stops with one line that names the
# packages and the command to install them.
# Usage: scripts/install-system-packages.sh promtool=prometheus amtool=prometheus-alertmanager ...
set -euo pipefail

missing=()
for pair in "$@"; do
    command="${pair%%=*}"
    package="${pair#*=}"
    if ! command -v "$command" >/dev/null 2>&1 && [[ ! -x "/usr/bin/$command" ]]; then
        [[ " ${missing[*]-} " == *" $package "* ]] || missing+=("$package")
    fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing system packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
