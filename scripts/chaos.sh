#!/usr/bin/env bash
# The randomized run (docs/reliability.md) for as long as asked:
#
#   scripts/chaos.sh [--minutes N] [--seed S] [--users U] [--clients C] [--no-kill]
#
# Starts a fresh test stack like scripts/test.sh (STACK_PORT_SHIFT respected),
# runs the e2e_chaos driver with those settings, prints its report (operation
# counts by kind and outcome, the seed, the invariants' results) and stops the
# stack. Without --seed a seed is drawn and printed; the same seed replays the
# same operations per client.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

minutes=1; seed=""; users=4; clients=2; kill=1
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --users) users="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --no-kill) kill=0; shift ;;
    *) echo "usage: scripts/chaos.sh [--minutes N] [--seed S] [--users U] [--clients C] [--no-kill]" >&2; exit 2 ;;
  esac
done
[ -n "$seed" ] || seed="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"

export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
scripts/stack.sh down test >/dev/null 2>&1 || true
scripts/stack.sh up test
shift_by="${STACK_PORT_SHIFT:-0}"
export STACK_DIR="$root/.stack/test"
[ "$shift_by" = 0 ] || STACK_DIR="$STACK_DIR-$shift_by"
trap 'scripts/stack.sh down test >/dev/null' EXIT

echo "chaos: seed $seed, $minutes min, $users users x $clients clients"
CHAOS_SEED="$seed" CHAOS_SECS="$(awk "BEGIN{printf \"%d\", $minutes * 60}")" \
  CHAOS_USERS="$users" CHAOS_CLIENTS="$clients" CHAOS_KILL="$kill" \
  cargo nextest run --workspace --no-fail-fast --no-capture -E 'binary(e2e_chaos)'
