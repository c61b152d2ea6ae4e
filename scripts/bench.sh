#!/usr/bin/env bash
# The benchmark of `send` as users feel it (not part of the test suite): builds the
# release binaries, installs DynamoDB Local (scripts/bootstrap.sh) and the Python
# peer's packages (its own setup.sh, from PyPI, into .tools/peer-venv), and runs
# dev/bench, which starts its own DynamoDB Local, mock inference server and
# Lambda Runtime API (each on a free port), holds the function to Lambda's CPU
# share of each memory size, and runs the peer beside it; then the migration's
# benchmark (scripts/bench-migrate.sh; BENCH_MIGRATION=0 skips it).
#
#   scripts/bench.sh [bench options, e.g. --memory 128,256 --period 20,100]
#
# Honours CARGO_TARGET_DIR. Takes many minutes for the release builds (lto) the
# first time, about two minutes to run. See dev/bench/README.md for what each
# figure means.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/bootstrap.sh
peer="$root/../shared/peers/python-chat-api"
if [ -x "$peer/setup.sh" ] || [ -f "$peer/setup.sh" ]; then
  stamp="$root/.tools/peer-venv/.installed-$(sha256sum "$peer/requirements.txt" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    bash "$peer/setup.sh" "$root/.tools/peer-venv"
    touch "$stamp"
  fi
else
  echo "bench.sh: no Python peer at $peer; it will not be measured" >&2
fi
# The measured binaries exactly as `cargo build --release` makes them; the
# benchmark is built on its own so it cannot change their features.
cargo build --release --quiet -p send -p regenerate -p conversations -p mock-inference
cargo build --release --quiet -p bench
release="${CARGO_TARGET_DIR:-$root/target}/release"
"$release/bench" --bin-dir "$release" --peer "$peer" --peer-python "$root/.tools/peer-venv/bin/python" "$@"
# Then the migration's: messages per second and peak memory for 10,000 and
# 100,000 messages (docs/cutover.md). BENCH_MIGRATION=0 skips it.
if [ "${BENCH_MIGRATION:-1}" != 0 ]; then
  echo
  scripts/bench-migrate.sh
fi
