#!/usr/bin/env bash
# services.sh — PostgreSQL and Redis for the fleet tests, on a machine that lacks them.
#
#   scripts/services.sh start     start whichever of the two does not answer yet
#   scripts/services.sh status    say which answer (exit 1 if one does not)
#   scripts/services.sh stop      stop what this script started
#
# The tests look for PostgreSQL at postgres://root@127.0.0.1:5432/test (trust auth) and Redis
# at redis://127.0.0.1:6379 (PORTCULLIS_TEST_POSTGRES_URL / PORTCULLIS_TEST_REDIS_URL override
# them). What is already listening there is used as is. Otherwise this script starts a
# throwaway PostgreSQL cluster (Debian's `postgresql` package, `initdb` in $STATE_DIR) and a
# `redis-server` that keeps nothing on disk. Installs the Debian packages if they are missing
# and it runs as root.
set -euo pipefail

readonly PG_PORT="${PORTCULLIS_SERVICES_PG_PORT:-5432}"
readonly REDIS_PORT="${PORTCULLIS_SERVICES_REDIS_PORT:-6379}"
readonly STATE_DIR="${PORTCULLIS_SERVICES_DIR:-/var/tmp/portcullis-services}"

say() { printf '[services.sh] %s\n' "$*" >&2; }

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  done
  command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)"
}

install_packages() {
  local missing=()
  [ -n "$(pg_bin || true)" ] || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    say "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
    return 1
  fi
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# initdb and postgres refuse to run as root: run them as the `postgres` user then.
as_pg_user() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  if answers "$PG_PORT"; then say "PostgreSQL answers on $PG_PORT"; return 0; fi
  local bin data="$STATE_DIR/pg"
  bin="$(pg_bin)"
  mkdir -p "$STATE_DIR"
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
    as_pg_user "$bin/initdb" -D "$data" --username=root --auth=trust >/dev/null
  fi
  as_pg_user "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1" start >/dev/null
  "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U root -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" \
    | grep -q 1 || "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U root test
  touch "$STATE_DIR/pg.started"
  say "PostgreSQL started on $PG_PORT (data in $data)"
}

start_redis() {
  if answers "$REDIS_PORT"; then say "Redis answers on $REDIS_PORT"; return 0; fi
  mkdir -p "$STATE_DIR"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$STATE_DIR/redis.pid" --logfile "$STATE_DIR/redis.log"
  for _ in $(seq 50); do answers "$REDIS_PORT" && break; sleep 0.1; done
  answers "$REDIS_PORT" || { say "redis-server did not start (see $STATE_DIR/redis.log)"; return 1; }
  say "Redis started on $REDIS_PORT"
}

status() {
  local ok=0
  if answers "$PG_PORT"; then say "PostgreSQL: answers on $PG_PORT"; else say "PostgreSQL: nothing on $PG_PORT"; ok=1; fi
  if answers "$REDIS_PORT"; then say "Redis: answers on $REDIS_PORT"; else say "Redis: nothing on $REDIS_PORT"; ok=1; fi
  return "$ok"
}

stop() {
  if [ -f "$STATE_DIR/redis.pid" ]; then
    kill "$(cat "$STATE_DIR/redis.pid")" 2>/dev/null || true
    rm -f "$STATE_DIR/redis.pid"
  fi
  if [ -f "$STATE_DIR/pg.started" ]; then
    as_pg_user "$(pg_bin)/pg_ctl" -D "$STATE_DIR/pg" -m fast stop >/dev/null || true
    rm -f "$STATE_DIR/pg.started"
  fi
}

case "${1:-}" in
  start)
    if ! answers "$PG_PORT" || ! answers "$REDIS_PORT"; then install_packages; fi
    command -v redis-server >/dev/null 2>&1 || install_packages
    start_postgres
    start_redis
    ;;
  status) status ;;
  stop) stop ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
