#!/usr/bin/env bash
# Installs the local stack's tools: DynamoDB Local (AWS's own DynamoDB engine,
# release 1.25.1, from the npm package amplify-dynamodb-simulator@2.9.30, which
# ships it) into .tools/dynamodb-local (git-ignored), run by Java 17; from PyPI
# into .tools/venv, cargo-lambda (ships the binary and zig) and the template
# checkers; from Debian's packages, Java (openjdk-17-jre-headless) and npm when
# missing, Chromium and its ChromeDriver for the browser test of the chat page,
# and PostgreSQL 15 for the migration's tests; the Python chat-api's packages (its
# own setup.sh) into .tools/chat-api-venv when its peer directory is there.
# Idempotent: a second run only checks what is there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/venv"
stamp="$venv/.bootstrapped-v2"
ddb="$root/.tools/dynamodb-local"
ddb_package="amplify-dynamodb-simulator@2.9.30"
ddb_integrity="sha512-xTeeRLvzEfqyd5lh3bH4c0kHvSHHmmhD5ZDsHFKAQ5g2Zl6JqlFdutaQhCLHzxEp6Ry1o7TB6niIoXuQAnSewQ=="
ddb_stamp="$ddb/.installed-$ddb_package"

# Debian's own packages, nothing from elsewhere; needs root (or sudo).
apt_install() { # package...
  local as_root
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "bootstrap: $* missing; as root run:" >&2
    echo "  apt-get update && apt-get install -y $*" >&2
    exit 1
  fi
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >/dev/null
  echo "bootstrap: $* installed (Debian)"
}

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# DynamoDB Local 1.25 needs Java 17 or later.
java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1 || true)"
[ "${java_major:-0}" -ge 17 ] 2>/dev/null || missing+=(openjdk-17-jre-headless)
[ -f "$ddb_stamp" ] || command -v npm >/dev/null 2>&1 || missing+=(npm)
# PostgreSQL 15 for the migration's tests: throwaway clusters made by scripts/pg.sh.
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
[ "${#missing[@]}" = 0 ] || apt_install "${missing[@]}"

if [ ! -f "$ddb_stamp" ]; then
  # Only the package's emulator/ folder is used (DynamoDBLocal.jar and its
  # DynamoDBLocal_lib/); none of its JavaScript or dependencies are installed.
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent --registry https://registry.npmjs.org/ "$ddb_package" >/dev/null)
  tarball="$(ls "$tmp"/*.tgz)"
  got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [ "$got" != "$ddb_integrity" ]; then
    echo "bootstrap: $ddb_package does not match its pinned integrity ($got)" >&2
    exit 1
  fi
  tar -xzf "$tarball" -C "$tmp" package/emulator
  rm -rf "$ddb"
  mkdir -p "$(dirname "$ddb")"
  mv "$tmp/package/emulator" "$ddb"
  touch "$ddb_stamp"
  echo "bootstrap: DynamoDB Local $(cd "$ddb" && java -jar DynamoDBLocal.jar -version 2>/dev/null | tail -n 1) in $ddb"
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
  'cargo-lambda==1.9.2' \
  'cfn-lint==1.58.0' \
  'aws-sam-cli==1.170.0'
touch "$stamp"
echo "bootstrap: tools installed in $venv"
