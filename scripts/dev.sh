#!/usr/bin/env bash
# The product, locally.
#
#   scripts/dev.sh                      start the local stack, stream a reply, and
#                                       print the address of the local chat page
#   scripts/dev.sh chat [--conversation ID] MESSAGE
#                                       stream a reply (a new conversation unless given)
#   scripts/dev.sh token                print an access token for the local user
#   scripts/dev.sh down                 stop the local stack
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
dir="$root/.stack/dev"
[ "${STACK_PORT_SHIFT:-0}" = 0 ] || dir="$dir-$STACK_PORT_SHIFT"

load() {
  [ -f "$dir/env" ] || { echo "the local stack is not up: run scripts/dev.sh" >&2; exit 1; }
  set -a; . "$dir/env"; . "$dir/client.env"; set +a
}

case "${1:-}" in
  "")
    scripts/stack.sh up dev
    load
    "${CARGO_TARGET_DIR:-$root/target}/debug/stack" chat "hi there, what can you do?"
    echo
    echo "chat in the browser: $CHAT_PAGE_URL (served by dev/chat-page/serve.py)"
    ;;
  chat|token) load; exec "${CARGO_TARGET_DIR:-$root/target}/debug/stack" "$@" ;;
  down) exec scripts/stack.sh down dev ;;
  *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac
