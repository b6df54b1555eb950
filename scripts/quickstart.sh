#!/usr/bin/env bash
# quickstart.sh — from a fresh clone to a working gateway in one command.
#
#   scripts/quickstart.sh          build portcullis (release), start a model server unless you have one,
#                                  start the gateway in the background, and print a fresh API key and a
#                                  curl line to try it. Run it again at any time for another key.
#   scripts/quickstart.sh stop     stop the gateway (and the model server, if quickstart started it)
#   scripts/quickstart.sh status   say what runs
#
# Your own OpenAI-compatible model server instead of the bundled real small model:
#   UPSTREAM_URL=http://127.0.0.1:11434 UPSTREAM_MODEL=llama3.2 scripts/quickstart.sh
#   (UPSTREAM_API_KEY, if set, is sent to that server as a bearer token.)
# Listen addresses: QUICKSTART_PROXY (default 127.0.0.1:8080), QUICKSTART_ADMIN (default 127.0.0.1:8081).
#
# Everything it writes lives in .quickstart/ (ignored by git): portcullis.toml, portcullis.db,
# admin-token (mode 600), portcullis.log, portcullis.pid, ready.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.quickstart"
CONFIG="$STATE/portcullis.toml"
TOKEN_FILE="$STATE/admin-token"
PID_FILE="$STATE/portcullis.pid"
READY_FILE="$STATE/ready.json"
LOG_FILE="$STATE/portcullis.log"
SLM_MARKER="$STATE/started-real-slm"
SLM_PORT=8090
PROXY_LISTEN="${QUICKSTART_PROXY:-127.0.0.1:8080}"
ADMIN_LISTEN="${QUICKSTART_ADMIN:-127.0.0.1:8081}"

say() { printf '[quickstart] %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------

gateway_pid() { # prints the pid of our running gateway, or fails
  local pid
  [ -f "$PID_FILE" ] || return 1
  pid="$(cat "$PID_FILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  grep -q portcullis "/proc/$pid/cmdline" 2>/dev/null || return 1
  printf '%s' "$pid"
}

json_field() { # json_field FIELD < json: the string value of a top-level field
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
  else
    tr -d '\n' | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p"
  fi
}

new_token() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex 24
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import secrets; print(secrets.token_hex(24))'
  else
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
  fi
}

find_binary() { # sets BIN to the release binary, building it
  command -v cargo >/dev/null 2>&1 || fail "cargo is not installed; see https://rustup.rs"
  say "building portcullis (cargo build --release -p portcullis)"
  (cd "$ROOT" && cargo build --release -p portcullis) >&2
  local target
  target="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | json_field target_directory)"
  BIN="${target:-$ROOT/target}/release/portcullis"
  [ -x "$BIN" ] || fail "no binary at $BIN after the build"
}

toml_string() { # a TOML basic string: quotes and backslashes escaped
  local value="${1//\\/\\\\}"
  printf '"%s"' "${value//\"/\\\"}"
}

choose_upstream() { # sets UPSTREAM, MODEL, HEALTH_PATH
  MODEL="${UPSTREAM_MODEL:-gemma-3-270m}"
  if [ -n "${UPSTREAM_URL:-}" ]; then
    UPSTREAM="${UPSTREAM_URL%/}"
    UPSTREAM="${UPSTREAM%/v1}"   # Portcullis appends /v1/... itself
    HEALTH_PATH="/v1/models"
    say "using your model server $UPSTREAM (model $MODEL)"
    return
  fi
  local was_running=no
  if "$ROOT/scripts/real-slm.sh" status "$SLM_PORT" >/dev/null 2>&1; then
    was_running=yes
  else
    say "starting the bundled real small model (Gemma 3 270M via llama-server; the first time builds it, ~6 min)"
  fi
  UPSTREAM="$("$ROOT/scripts/real-slm.sh" start "$SLM_PORT")"
  if [ "$was_running" = no ]; then printf '%s\n' "$SLM_PORT" > "$SLM_MARKER"; fi
  HEALTH_PATH="/health"
}

write_config() {
  local api_key_line=""
  if [ -n "${UPSTREAM_API_KEY:-}" ]; then
    # Substituted by portcullis from its environment at start, so the secret is not in the file.
    api_key_line=$'\napi_key = "${UPSTREAM_API_KEY}"'
  fi
  cat > "$CONFIG" <<EOF
# Written by scripts/quickstart.sh; rewritten each time the gateway is started by it.
[server]
listen = $(toml_string "$PROXY_LISTEN")

[admin]
listen = $(toml_string "$ADMIN_LISTEN")

[store]
url = $(toml_string "sqlite://$STATE/portcullis.db")

[audit]
spill_file = $(toml_string "$STATE/audit-spill.jsonl")

[limits]
default_tier = "free"

[tiers.free]
requests_per_minute = 600
tokens_per_minute = 1000000
max_concurrent = 8
tokens_per_day = 10000000
models = ["*"]

[[models]]
name = $(toml_string "$MODEL")
upstream_model = $(toml_string "$MODEL")
endpoints = [$(toml_string "$UPSTREAM")]$api_key_line
health_check = { path = $(toml_string "$HEALTH_PATH") }
EOF
}

start_gateway() {
  local pid
  rm -f "$READY_FILE"
  say "starting portcullis (log: ${LOG_FILE#"$ROOT"/})"
  (
    cd "$ROOT"
    PORTCULLIS_ADMIN_TOKEN="$(cat "$TOKEN_FILE")" \
      setsid nohup "$BIN" serve --config "$CONFIG" --ready-file "$READY_FILE" >> "$LOG_FILE" 2>&1 < /dev/null &
    printf '%s\n' "$!" > "$PID_FILE"
  )
  pid="$(cat "$PID_FILE")"
  local tries=0
  until [ -s "$READY_FILE" ] && json_field admin < "$READY_FILE" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$LOG_FILE" >&2
      rm -f "$PID_FILE"
      fail "portcullis exited during start-up (see above)"
    fi
    if [ "$tries" -ge 300 ]; then
      tail -n 30 "$LOG_FILE" >&2
      fail "portcullis wrote no ready file within 30 s (pid $pid still runs; scripts/quickstart.sh stop)"
    fi
    sleep 0.1
    tries=$((tries + 1))
  done
}

create_key() { # prints the JSON of a new key
  local admin_url="$1" out
  for name in quickstart "quickstart-$(date +%Y%m%d-%H%M%S)"; do
    if out="$(PORTCULLIS_ADMIN_URL="$admin_url" PORTCULLIS_ADMIN_TOKEN="$(cat "$TOKEN_FILE")" \
      "$BIN" keys create --name "$name" --json)"; then
      printf '%s' "$out"
      return 0
    fi
    say "creating a key named $name failed; trying another name"
  done
  fail "could not create an API key (see the messages above and ${LOG_FILE#"$ROOT"/})"
}

cmd_start() {
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  if gateway_pid >/dev/null; then
    say "portcullis already runs (pid $(gateway_pid)); making a fresh key"
    BIN="$(tr '\0' '\n' < "/proc/$(gateway_pid)/cmdline" | head -n1)"
    [ -x "$BIN" ] || find_binary
  else
    find_binary
    choose_upstream
    if [ ! -s "$TOKEN_FILE" ]; then
      (umask 077 && new_token > "$TOKEN_FILE")
    fi
    chmod 600 "$TOKEN_FILE"
    write_config
    start_gateway
  fi

  local proxy admin key_json key id
  proxy="$(json_field proxy < "$READY_FILE")"
  admin="$(json_field admin < "$READY_FILE")"
  key_json="$(create_key "http://$admin")"
  key="$(printf '%s' "$key_json" | json_field key)"
  id="$(printf '%s' "$key_json" | json_field id)"
  [ -n "$key" ] || fail "the key answer had no secret: $key_json"
  MODEL="$(sed -n 's/^name = "\(.*\)"$/\1/p' "$CONFIG" | head -n1)"

  cat <<EOF

Portcullis is running.
  proxy (OpenAI-compatible): http://$proxy/v1
  admin API:                 http://$admin/admin/v1
  model:                     $MODEL

Your API key (id $id) — shown only now, keep it somewhere safe:
  $key

Try it:
  curl -s http://$proxy/v1/chat/completions \\
    -H "Authorization: Bearer $key" \\
    -H "Content-Type: application/json" \\
    -d '{"model": "$MODEL", "messages": [{"role": "user", "content": "Write a haiku about gates."}], "max_tokens": 48}'

Admin token: ${TOKEN_FILE#"$ROOT"/}  (mode 600)
  export PORTCULLIS_ADMIN_TOKEN="\$(cat ${TOKEN_FILE#"$ROOT"/})" PORTCULLIS_ADMIN_URL=http://$admin
  $BIN keys list
Log:  ${LOG_FILE#"$ROOT"/}
Stop: scripts/quickstart.sh stop
EOF
}

cmd_stop() {
  local pid
  if pid="$(gateway_pid)"; then
    kill -TERM "$pid"
    local tries=0
    while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 300 ]; do sleep 0.1; tries=$((tries + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
      say "portcullis did not stop within 30 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "portcullis stopped (pid $pid)"
  else
    say "portcullis is not running"
  fi
  rm -f "$PID_FILE" "$READY_FILE"
  if [ -f "$SLM_MARKER" ]; then
    "$ROOT/scripts/real-slm.sh" stop "$(cat "$SLM_MARKER")" || true
    rm -f "$SLM_MARKER"
  fi
}

cmd_status() {
  local pid
  if pid="$(gateway_pid)"; then
    say "portcullis runs (pid $pid): proxy http://$(json_field proxy < "$READY_FILE"), admin http://$(json_field admin < "$READY_FILE")"
  else
    say "portcullis is not running"
  fi
  "$ROOT/scripts/real-slm.sh" status "$SLM_PORT" >/dev/null || true
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
