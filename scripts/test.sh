#!/usr/bin/env bash
# Every test of the project on a fresh machine: installs the tools (npm, PyPI,
# Debian), starts the local test stack (DynamoDB Local, mock inference, cargo
# lambda watch), runs format and lint checks, the Rust suites (unit, integration,
# end-to-end), the template checks, and stops the stack. Prints its elapsed time.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
started=$SECONDS
stack_up=0
finish() {
  [ "$stack_up" = 0 ] || scripts/stack.sh down test >/dev/null
  echo "test.sh: $((SECONDS - started)) s in all"
}
trap finish EXIT

scripts/bootstrap.sh
# A run from a clean clone gains nothing from incremental artifacts; they would
# double the disk the debug build takes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all -- --check
cargo clippy --quiet --workspace --all-targets -- -D warnings
# The library's layers, before the stack starts: a circle of imports, or an
# import pointing up a layer, fails the run here (shared/tests/layers.rs).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E 'binary(layers)'
else
  cargo test --workspace --test layers
fi

# A fresh test stack every run: DynamoDB Local runs in memory, so every run
# starts from an empty table and the functions built from this tree.
scripts/stack.sh down test >/dev/null 2>&1 || true
stack_up=1
scripts/stack.sh up test
# The tests find the stack through STACK_DIR (a shifted stack has its own).
shift_by="${STACK_PORT_SHIFT:-0}"
export STACK_DIR="$root/.stack/test"
[ "$shift_by" = 0 ] || STACK_DIR="$STACK_DIR-$shift_by"

if [ -f template.yaml ]; then
  scripts/check-template.sh
fi

# Four suites run alone: e2e_load (100 streams, 50 at once, would starve the
# other tests' requests on two cores into their deadlines), e2e_limits (50
# racing sends of one user, counted exactly, against a burst limit other tests'
# load must not slow past a minute window), after the rest e2e_chaos (a minute
# of randomized load that kills a `send` instance), last e2e_live_kill (it kills
# the stack's `send` processes).
status=0
# Every run selects the whole workspace, so the features are unified the same way
# and the test binaries are built once, not once per selection.
alone='binary(e2e_load) | binary(e2e_limits) | binary(e2e_chaos) | binary(e2e_live_kill)'
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E 'binary(e2e_load)' || status=$?
  cargo nextest run --workspace --no-fail-fast -E 'binary(e2e_limits)' || status=$?
  cargo nextest run --workspace --no-fail-fast --test-threads 8 -E "not ($alone)" || status=$?
  cargo nextest run --workspace --no-fail-fast --no-capture -E 'binary(e2e_chaos)' || status=$?
  cargo nextest run --workspace --no-fail-fast -E 'binary(e2e_live_kill)' || status=$?
else
  cargo test --workspace --test e2e_load || status=$?
  cargo test --workspace --test e2e_limits || status=$?
  cargo test --workspace --no-fail-fast -- --skip a_killed_function --skip fifty_concurrent \
    --skip racing --skip dead_functions_place --skip do_not_count --skip randomized_run \
    --skip dead_answer || status=$?
  cargo test --workspace --test e2e_chaos -- --nocapture || status=$?
  cargo test --workspace --test e2e_live_kill || status=$?
fi
exit "$status"
