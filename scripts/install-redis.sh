#!/usr/bin/env bash
# Install redis-server (Debian/Ubuntu) for the real-Redis tests; fail loudly otherwise.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing: installing it with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "ERROR: redis-server is required for the real-Redis tests and could not be installed." >&2
  echo "Install it (e.g. 'apt-get install redis-server' or 'brew install redis') and rerun." >&2
  exit 1
fi
