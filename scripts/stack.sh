#!/usr/bin/env bash
# The local stack, real parts only: DynamoDB Local (AWS's own DynamoDB engine),
# the mock inference server, and the three functions under `cargo lambda watch`.
#
#   scripts/stack.sh up [dev|test]    start it (idempotent), print its env file
#   scripts/stack.sh down [dev|test]  stop it
#
# `dev` listens on 9000 (functions), 8765 (DynamoDB), 8766 (inference);
# `test` on 19000, 18765, 18766 with short ping and deadline settings and JSON
# logs (AWS_LAMBDA_LOG_FORMAT=JSON, as the template deploys them), so the two
# can run side by side. The functions reach DynamoDB through `fault-proxy`
# (dev/fault-proxy) on the DynamoDB port + 10 (8775 / 18775), where tests inject
# faults; tests read the table directly (DYNAMODB_DIRECT_URL). The local chat page
# (dev/chat-page) is served from its own origin on the functions port + 80
# (9080 / 19080), which ALLOWED_ORIGINS lists.
# Everything lives in .stack/<profile>/ (git-ignored; .stack/<profile>-<shift>/
# with STACK_PORT_SHIFT).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

cmd="${1:-up}"
profile="${2:-dev}"
venv="$root/.tools/venv"
ddb="$root/.tools/dynamodb-local"

case "$profile" in
  dev)  fn_port=9000;  ddb_port=8765;  inf_port=8766; ping_ms=15000; deadline=270; concurrency=4;  token_ms=40; checkpoint_ms=1000; stale_ms=30000; log_format=text
        per_minute=20; per_day=500;  answers=2 ;;
  # Test limits: a burst limit the limit tests reach (every other test has its
  # own user), and room for 50 streams of one user at once.
  test) fn_port=19000; ddb_port=18765; inf_port=18766; ping_ms=400;   deadline=6;   concurrency=64; token_ms=5;  checkpoint_ms=1000; stale_ms=4000;  log_format=JSON
        per_minute=10; per_day=1000; answers=50 ;;
  *) echo "unknown profile $profile (dev|test)" >&2; exit 2 ;;
esac
# STACK_PORT_SHIFT moves every port, so a second checkout can run its own stack.
shift_by="${STACK_PORT_SHIFT:-0}"
fn_port=$((fn_port + shift_by)); ddb_port=$((ddb_port + shift_by)); inf_port=$((inf_port + shift_by))
proxy_port=$((ddb_port + 10))
page_port=$((fn_port + 80))
# A shifted stack keeps its own directory: its pids must never stop another's.
dir="$root/.stack/$profile"
[ "$shift_by" = 0 ] || dir="$dir-$shift_by"

stop() {
  if [ -d "$dir/pids" ]; then
    for f in "$dir"/pids/*; do
      [ -e "$f" ] || continue
      pid="$(cat "$f")"
      # Each service runs in its own process group (setsid): stop the whole group.
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      rm -f "$f"
    done
  fi
}

wait_http() { # url, seconds, what
  local url="$1" secs="$2" what="$3"
  for _ in $(seq 1 "$((secs * 5))"); do
    if curl -s -o /dev/null --max-time 2 "$url"; then return 0; fi
    sleep 0.2
  done
  echo "stack: $what did not come up at $url; its log:" >&2
  tail -n 40 "$dir/logs/$what.log" >&2 || true
  exit 1
}

start() { # name, command...
  local name="$1"; shift
  setsid "$@" >"$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$dir/pids/$name"
}

if [ "$cmd" = down ]; then
  stop
  echo "stack ($profile) stopped"
  exit 0
fi
[ "$cmd" = up ] || { echo "usage: scripts/stack.sh up|down [dev|test]" >&2; exit 2; }

stop
mkdir -p "$dir/pids" "$dir/logs"
"$root/scripts/bootstrap.sh"

# A local RS256 key pair standing in for the auth service's.
if [ ! -f "$dir/jwt-private.pem" ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/jwt-private.pem" 2>/dev/null
  openssl pkey -in "$dir/jwt-private.pem" -pubout -out "$dir/jwt-public.pem"
fi
api_key="local-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
public_key="$(awk 'BEGIN{ORS="\\n"} {print}' "$dir/jwt-public.pem")"

cat >"$dir/env" <<EOF
TABLE_NAME=samosachaat-$profile
INFERENCE_URL=http://127.0.0.1:$inf_port/generate
INTERNAL_API_KEY=$api_key
JWT_PUBLIC_KEY='$public_key'
JWT_ISSUER=samosachaat-auth
ALLOWED_ORIGINS=http://localhost:3000,http://127.0.0.1:$page_port,http://localhost:$page_port
PING_INTERVAL_MS=$ping_ms
INFERENCE_DEADLINE_SECS=$deadline
CHECKPOINT_INTERVAL_MS=$checkpoint_ms
LIVE_STALE_AFTER_MS=$stale_ms
RATE_LIMIT_PER_MINUTE=$per_minute
DAILY_MESSAGE_QUOTA=$per_day
MAX_CONCURRENT_ANSWERS=$answers
AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$proxy_port
AWS_REGION=us-east-1
AWS_ACCESS_KEY_ID=local
AWS_SECRET_ACCESS_KEY=local
AWS_LAMBDA_LOG_LEVEL=info
AWS_LAMBDA_LOG_FORMAT=$log_format
EOF
# What the tests and the CLI need beyond the functions' own settings.
cat >"$dir/client.env" <<EOF
FUNCTIONS_URL=http://127.0.0.1:$fn_port/lambda-url
MOCK_INFERENCE_URL=http://127.0.0.1:$inf_port
JWT_PRIVATE_KEY_FILE=$dir/jwt-private.pem
STACK_DIR=$dir
DYNAMODB_DIRECT_URL=http://127.0.0.1:$ddb_port
FAULT_PROXY_URL=http://127.0.0.1:$proxy_port
CHAT_PAGE_URL=http://127.0.0.1:$page_port/
EOF

cargo build --quiet -p mock-inference -p fault-proxy -p stack -p send -p regenerate -p conversations

# In memory (a fresh database every start), one database whatever a client's
# credentials and region (-sharedDb), no telemetry. Run from the stack's
# directory: it writes a metadata file where it starts.
(cd "$dir" && start dynamodb java -Djava.library.path="$ddb/DynamoDBLocal_lib" -jar "$ddb/DynamoDBLocal.jar" \
  -inMemory -sharedDb -disableTelemetry -port "$ddb_port")
start inference "${CARGO_TARGET_DIR:-$root/target}/debug/mock-inference" --addr "127.0.0.1:$inf_port" --api-key "$api_key" --token-delay-ms "$token_ms"
wait_http "http://127.0.0.1:$ddb_port/" 60 dynamodb
start faults "${CARGO_TARGET_DIR:-$root/target}/debug/fault-proxy" --listen "127.0.0.1:$proxy_port" --upstream "http://127.0.0.1:$ddb_port"
wait_http "http://127.0.0.1:$proxy_port/__faults/health" 30 faults
wait_http "http://127.0.0.1:$inf_port/__mock/health" 30 inference

set -a; . "$dir/env"; . "$dir/client.env"; set +a
"${CARGO_TARGET_DIR:-$root/target}/debug/stack" create-table >/dev/null

# cargo-lambda's own zig is not needed for host builds; PATH gives it the venv's.
# --disable-cors: the emulator would otherwise echo any Origin and answer every
# preflight itself; the functions' own CORS (ALLOWED_ORIGINS) is what is tested.
PATH="$venv/bin:$PATH" start functions "$venv/bin/cargo-lambda" lambda watch \
  --invoke-address 127.0.0.1 --invoke-port "$fn_port" --env-file "$dir/env" \
  --concurrency "$concurrency" --ignore-changes --disable-cors --quiet

# Warm every function: the first invoke waits for cargo-lambda's own build.
for fn in send regenerate conversations; do
  for _ in $(seq 1 600); do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 120 \
      "http://127.0.0.1:$fn_port/lambda-url/$fn/api/conversations/warm-up" || true)"
    case "$code" in 401|404|405) break ;; esac
    sleep 0.5
  done
  case "$code" in 401|404|405) ;; *)
    echo "stack: function $fn did not answer (last status $code); log:" >&2
    tail -n 60 "$dir/logs/functions.log" >&2; exit 1 ;;
  esac
done
# The chat page's own small server: static files, and a fresh access token for
# the page from the stack's CLI (`/config.json`).
start page python3 "$root/dev/chat-page/serve.py" --port "$page_port" \
  --functions-url "$FUNCTIONS_URL" --stack-cli "${CARGO_TARGET_DIR:-$root/target}/debug/stack"
wait_http "http://127.0.0.1:$page_port/" 30 page

echo "stack ($profile) up: functions http://127.0.0.1:$fn_port/lambda-url/<function>/..., env in $dir/env"
echo "chat page: http://127.0.0.1:$page_port/"
