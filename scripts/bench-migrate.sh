#!/usr/bin/env bash
# The migration's benchmark: a throwaway PostgreSQL 15 with the chat-api's schema
# filled with synthetic conversations (ops/migrate/sql/synthetic.sql), copied by the
# release `migrate` into a fresh table of the local stack's DynamoDB, at two sizes so
# that memory can be seen not to grow with the database. For each size it prints
# the copy's messages per second and peak memory, then the times of a second copy
# (nothing to write), a verify, and a catch-up after 1 % of the conversations
# changed in PostgreSQL. Not part of the test suite (figures, not assertions).
#
#   scripts/bench-migrate.sh [CONVERSATIONS:MESSAGES_EACH ...]   default 1000:10 10000:10
#
# Uses the dev stack (scripts/stack.sh up dev, started if it is not running); each
# size copies into a table of its own, left in the stack's in-memory database.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/bootstrap.sh
cargo build --release --quiet -p migrate
migrate="${CARGO_TARGET_DIR:-$root/target}/release/migrate"
scripts/stack.sh up dev >/dev/null
set -a
# shellcheck disable=SC1091
. "$root/.stack/dev/env"
# shellcheck disable=SC1091
. "$root/.stack/dev/client.env"
set +a
export AWS_ENDPOINT_URL_DYNAMODB="$DYNAMODB_DIRECT_URL"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000:10 10000:10)

pg_dir="$(mktemp -u /tmp/migrate-bench-pg-XXXXXX)"
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'scripts/pg.sh down "$pg_dir" >/dev/null 2>&1 || true' EXIT
pg_url="$(scripts/pg.sh up "$pg_dir" "$pg_port")"
psql=(psql -q -h 127.0.0.1 -p "$pg_port" -U postgres -d chatapi -v ON_ERROR_STOP=1)

seconds() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['seconds'])" "$1"; }
field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'r': r}))" "$1" "$2"; }

echo "migration benchmark: a throwaway PostgreSQL 15 (fsync off) into the dev stack's DynamoDB at $DYNAMODB_DIRECT_URL, one fresh table per size"
printf '%-26s %10s %12s %10s %12s %12s %10s %10s\n' size messages "copy s" "msg/s" "peak MiB" "2nd copy s" "verify s" "catch-up s"
for size in "${sizes[@]}"; do
  conversations="${size%%:*}"
  per="${size##*:}"
  "${psql[@]}" -c 'TRUNCATE users, conversations, messages CASCADE'
  "${psql[@]}" -v users=$((conversations / 10 + 1)) -v conversations="$conversations" -v per="$per" \
    -f ops/migrate/sql/synthetic.sql
  table="migrate-bench-$(date +%s%N)"
  TABLE_NAME="$table" "${CARGO_TARGET_DIR:-$root/target}/debug/stack" create-table >/dev/null
  report="$(mktemp /tmp/migrate-report-XXXXXX.json)"
  "$migrate" copy --postgres "$pg_url" --table "$table" --report "$report" >/dev/null
  copy_s=$(seconds "$report")
  rate=$(field "$report" "r['messages_per_second']")
  peak=$(field "$report" "round(r['peak_memory_kib'] / 1024, 1)")
  messages=$(field "$report" "r['messages']")
  "$migrate" copy --postgres "$pg_url" --table "$table" --report "$report" >/dev/null
  again_s=$(seconds "$report")
  "$migrate" verify --postgres "$pg_url" --table "$table" --report "$report" >/dev/null
  verify_s=$(seconds "$report")
  changed=$((conversations / 100 + 1))
  "${psql[@]}" -c "UPDATE conversations SET title = title || ' (renamed)', updated_at = now()
                   WHERE id IN (SELECT id FROM conversations ORDER BY id LIMIT $changed)"
  "$migrate" catch-up --postgres "$pg_url" --table "$table" --report "$report" >/dev/null
  catch_s=$(seconds "$report")
  printf '%-26s %10s %12s %10s %12s %12s %10s %10s\n' "$conversations x $per" "$messages" "$copy_s" "$rate" "$peak" "$again_s" "$verify_s" "$catch_s"
  rm -f "$report"
done
