#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster (Debian's `postgresql`) holding the Python
# chat-api's schema, for the migration's tests (ops/migrate/tests).
#
#   scripts/pg.sh up DIR PORT   initdb into DIR (trust auth), start it on
#                               127.0.0.1:PORT (socket in DIR), create the database
#                               `chatapi`, apply $PEER_DIR/schema.sql, print its URL
#   scripts/pg.sh down DIR      stop it (immediate) and remove DIR
#
# PEER_DIR defaults to <repo>/../shared/peers/python-chat-api. As root the cluster
# runs as the `postgres` user (initdb refuses root); otherwise as oneself.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${PG_BIN:-/usr/lib/postgresql/15/bin}"
peer="${PEER_DIR:-$root/../shared/peers/python-chat-api}"

usage() {
  echo "usage: scripts/pg.sh up DIR PORT | scripts/pg.sh down DIR" >&2
  exit 2
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cmd="${1:-}"
case "$cmd" in
  up)
    [ $# = 3 ] || usage
    dir="$2"
    port="$3"
    if [ ! -x "$bin/initdb" ]; then
      echo "pg.sh: $bin/initdb is missing: install PostgreSQL 15 (scripts/bootstrap.sh does)" >&2
      exit 1
    fi
    if [ ! -f "$peer/schema.sql" ]; then
      echo "pg.sh: $peer/schema.sql not found (set PEER_DIR)" >&2
      exit 1
    fi
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [ "$(id -u)" = 0 ]; then
      chown postgres: "$dir"
      chmod 700 "$dir"
      if ! runuser -u postgres -- test -x "$dir"; then
        echo "pg.sh: the postgres user cannot reach $dir (a parent directory is not searchable)" >&2
        exit 1
      fi
    fi
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
      cat "$dir/initdb.log" >&2
      exit 1
    }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start -w -t 60 >/dev/null || {
      cat "$dir/server.log" >&2
      exit 1
    }
    "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
      -c "CREATE DATABASE chatapi" >/dev/null
    "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d chatapi -qAt -v ON_ERROR_STOP=1 \
      -f "$peer/schema.sql" >/dev/null
    echo "postgresql://postgres@127.0.0.1:$port/chatapi"
    ;;
  down)
    [ $# = 2 ] || usage
    dir="$2"
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" stop -m immediate -w >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *) usage ;;
esac
