#!/usr/bin/env bash
# Prepare this checkout: redis-server (Debian/Ubuntu package, when missing) and a virtual
# environment in .venv with the orchestrator and its development tools installed (again only
# after pyproject.toml changes).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: $* is missing and this is not a Debian/Ubuntu machine; install it and run again" >&2
    exit 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: $PYTHON is missing or older than 3.11; install Python 3.11+ or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server"
  apt_install redis-server
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "setup: installing python3-venv"
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi
# Install only when pyproject.toml changed since the last install, so a restart needs no network.
stamp=.venv/.installed-pyproject.sha256
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
  echo "$wanted" > "$stamp"
fi
echo "setup: ready ($(.venv/bin/orchestrator --version), $(redis-server --version | cut -d' ' -f3))"
