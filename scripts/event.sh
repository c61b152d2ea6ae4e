#!/usr/bin/env bash
# Fills a sample event of events/ for the running dev stack (scripts/dev.sh):
# {{TOKEN}} becomes a fresh access token of the local user and
# {{CONVERSATION_ID}} a new conversation (or --conversation ID). Prints the path
# of the filled copy, for `cargo lambda invoke --data-file` or `sam local invoke -e`.
#
#   scripts/event.sh events/send-message.json [--conversation ID]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
file="${1:?usage: scripts/event.sh events/<file>.json [--conversation ID]}"
dir="$root/.stack/dev"
[ -f "$dir/env" ] || { echo "the local stack is not up: run scripts/dev.sh" >&2; exit 1; }
set -a; . "$dir/env"; . "$dir/client.env"; set +a
token="$("${CARGO_TARGET_DIR:-$root/target}/debug/stack" token)"
if [ "${2:-}" = "--conversation" ]; then
  conversation="${3:?--conversation needs an id}"
else
  conversation="$(curl -s -X POST -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{}' "$FUNCTIONS_URL/conversations/api/conversations" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
fi
mkdir -p "$dir/events"
out="$dir/events/$(basename "$file")"
sed -e "s|{{TOKEN}}|$token|g" -e "s|{{CONVERSATION_ID}}|$conversation|g" "$root/$file" 2>/dev/null >"$out" \
  || sed -e "s|{{TOKEN}}|$token|g" -e "s|{{CONVERSATION_ID}}|$conversation|g" "$file" >"$out"
echo "$out"
