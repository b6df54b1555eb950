#!/usr/bin/env bash
# bench/instructions.sh — instructions one plain chat request costs the gateway, counted by
# valgrind's callgrind: repeatable where timings are not (a busy machine, a noisy VM), so two
# builds can be compared back to back (docs/benchmarks.md).
#
#   bench/instructions.sh [PORTCULLIS_BIN]     default: the release build in $CARGO_TARGET_DIR
#
# Runs the gateway under callgrind (one tokio worker) in front of portcullis-bench-upstream, sends
# 100 and then 1 100 sequential requests on a kept-alive connection, and prints
# (instructions(1100) − instructions(100)) / 1000: one request, start-up excluded.
# Needs valgrind and python3; builds the release binaries when PORTCULLIS_BIN is not given.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
if [ $# -ge 1 ]; then
  BIN="$1"
else
  cargo build --release --locked -p portcullis -p portcullis-bench-upstream >&2
  BIN="$TARGET/release/portcullis"
fi
[ -x "$TARGET/release/portcullis-bench-upstream" ] || cargo build --release --locked -p portcullis-bench-upstream >&2
UPSTREAM="$TARGET/release/portcullis-bench-upstream"
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 1; }

readonly TOKEN="instructions-admin-token-0123456789"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# count N: the gateway's instructions for start-up plus N requests.
count() {
  local n="$1" dir up proxy admin upstream_pid pid key
  dir="$(mktemp -d)"
  up="$(free_port)"; proxy="$(free_port)"; admin="$(free_port)"
  "$UPSTREAM" --port "$up" --threads 1 >/dev/null 2>&1 &
  upstream_pid=$!
  cat > "$dir/portcullis.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy"
[admin]
listen = "127.0.0.1:$admin"
[store]
url = "sqlite://$dir/portcullis.db"
[limits]
default_tier = "bench"
[audit]
durability = "async"
node = "bench"
[tiers.bench]
requests_per_minute = 67108864
tokens_per_minute = 75059993789
max_concurrent = 1000000
models = ["*"]
[[models]]
name = "bench"
endpoints = ["http://127.0.0.1:$up"]
TOML
  TOKIO_WORKER_THREADS=1 PORTCULLIS_ADMIN_TOKEN="$TOKEN" PORTCULLIS_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$BIN" serve --config "$dir/portcullis.toml" --ready-file "$dir/ready" >/dev/null 2>"$dir/valgrind.log" &
  pid=$!
  for _ in $(seq 1 600); do [ -f "$dir/ready" ] && break; sleep 0.2; done
  key="$(PORTCULLIS_ADMIN_URL="http://127.0.0.1:$admin" PORTCULLIS_ADMIN_TOKEN="$TOKEN" "$BIN" keys create --name instructions --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')"
  python3 - "$proxy" "$key" "$n" <<'PY'
import http.client, json, sys
port, key, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
connection = http.client.HTTPConnection("127.0.0.1", port)
body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16})
for _ in range(n):
    connection.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
PY
  sleep 1
  kill -TERM "$pid"; wait "$pid" || true
  kill "$upstream_pid"; wait "$upstream_pid" 2>/dev/null || true
  awk '/^summary:/ {print $2}' "$dir/callgrind.out"
  rm -rf "$dir"
}

few="$(count 100)"
many="$(count 1100)"
echo "instructions per plain request: $(((many - few) / 1000)) ($BIN)"
