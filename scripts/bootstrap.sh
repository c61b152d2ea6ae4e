#!/usr/bin/env bash
# Installs the local stack's tools from PyPI into .tools/venv (git-ignored):
# moto's DynamoDB server, cargo-lambda (ships the binary and zig), and the
# template checkers. Idempotent: a second run only checks what is there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/venv"
stamp="$venv/.bootstrapped-v1"
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
