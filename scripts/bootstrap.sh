#!/usr/bin/env bash
# Installs the local stack's tools: from PyPI into .tools/venv (git-ignored),
# moto's DynamoDB server, cargo-lambda (ships the binary and zig) and the template
# checkers; from Debian's packages, Chromium and its ChromeDriver for the browser
# test of the chat page. Idempotent: a second run only checks what is there.
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
