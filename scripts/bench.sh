#!/usr/bin/env bash
# The benchmark of `send` as users feel it (not part of the test suite): builds the
# release binaries, installs moto (scripts/bootstrap.sh), and runs dev/bench, which
# starts its own moto DynamoDB server, mock inference server and Lambda Runtime API.
#
#   scripts/bench.sh [bench options, e.g. --sends 60 --cold-starts 9]
#
# Takes a few minutes for the release builds (lto) the first time, under a minute
# to run. See dev/bench/README.md for what each figure means.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/bootstrap.sh
# The measured binaries exactly as `cargo build --release` makes them; the
# benchmark is built on its own so it cannot change their features.
cargo build --release --quiet -p send -p regenerate -p conversations -p mock-inference
cargo build --release --quiet -p bench
release="${CARGO_TARGET_DIR:-$root/target}/release"
exec "$release/bench" --bin-dir "$release" "$@"
