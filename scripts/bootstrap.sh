#!/usr/bin/env bash
# Installs the local stack's tools: from PyPI into .tools/venv (git-ignored),
# moto's DynamoDB server, cargo-lambda (ships the binary and zig) and the template
# checkers; from Debian's packages, Chromium and its ChromeDriver for the browser
# test of the chat page, and PostgreSQL 15 for the migration's tests; the Python
# chat-api's packages (its own setup.sh) into .tools/chat-api-venv when its peer
# directory is there. Idempotent: a second run only checks what is there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/venv"
stamp="$venv/.bootstrapped-v2"

# Debian's own packages, nothing from elsewhere; needs root (or sudo).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "bootstrap: Chromium and ChromeDriver are missing; as root run:" >&2
    echo "  apt-get update && apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium chromium-driver >/dev/null
  echo "bootstrap: chromium and chromium-driver installed (Debian)"
fi

# PostgreSQL 15 (Debian's `postgresql`) for the migration's tests: throwaway
# clusters made by scripts/pg.sh.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "bootstrap: PostgreSQL 15 is missing; as root run:" >&2
    echo "  apt-get update && apt-get install -y postgresql" >&2
    exit 1
  fi
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq postgresql >/dev/null
  echo "bootstrap: postgresql installed (Debian)"
fi

# The Python chat-api (the service the functions replace), for the migration's
# equivalence test: its own setup.sh, from PyPI, into .tools/chat-api-venv.
peer="${PEER_DIR:-$root/../shared/peers/python-chat-api}"
if [ -f "$peer/setup.sh" ]; then
  peer_venv="$root/.tools/chat-api-venv"
  peer_stamp="$peer_venv/.installed-$(sha256sum "$peer/requirements.txt" | cut -c1-16)"
  if [ ! -f "$peer_stamp" ]; then
    bash "$peer/setup.sh" "$peer_venv"
    touch "$peer_stamp"
    echo "bootstrap: the Python chat-api's packages installed in $peer_venv"
  fi
fi

if [ -f "$stamp" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet \
  'moto[server]==5.2.5' \
  'cargo-lambda==1.9.2' \
  'cfn-lint==1.58.0' \
  'aws-sam-cli==1.170.0'
touch "$stamp"
echo "bootstrap: tools installed in $venv"
