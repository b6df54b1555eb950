# bench/lib.sh — shared by bench/run.sh and bench/scale.sh (sourced, not run).
#
# Starts and stops the pieces of a benchmark (the fake upstream, nginx, Portcullis) on loopback,
# installs the tools it needs, and reads process CPU time and memory from /proc. Every process it
# starts is recorded and ended by bench_cleanup (installed as the EXIT trap by bench_init).
# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables set here are read by the scripts that source this file

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
# Tools the harness installs (oha) live here, outside the clone, so they survive fresh clones.
BENCH_CACHE="${BENCH_CACHE:-${XDG_CACHE_HOME:-${HOME:-/var/tmp}/.cache}/portcullis-bench}"
BENCH_LOG_PREFIX="${BENCH_LOG_PREFIX:-bench}"
ADMIN_TOKEN="bench-admin-token-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
CLK_TCK="$(getconf CLK_TCK)"
STARTED_PIDS=()

say() { printf '[%s] %s\n' "$BENCH_LOG_PREFIX" "$*" >&2; }
fail() {
  say "error: $*"
  exit 1
}

bench_init() {
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")"
  chmod 755 "$WORK"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Ends every process we started (newest first): SIGTERM, then SIGKILL after 5 s.
bench_cleanup() {
  local status=$? i pid tries
  trap - EXIT
  for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
    pid="${STARTED_PIDS[$i]}"
    kill -TERM "$pid" 2>/dev/null || continue
  done
  for pid in "${STARTED_PIDS[@]}"; do
    tries=0
    while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 50 ]; do
      sleep 0.1
      tries=$((tries + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
    if [ "$status" -ne 0 ] || [ "${BENCH_KEEP:-0}" = 1 ]; then
      say "logs and files kept in $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$status"
}

# Stops one process we started (SIGTERM, SIGKILL after 10 s) and forgets it.
stop_pid() {
  local pid="$1" tries=0 kept=() p
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 100 ]; do
    sleep 0.1
    tries=$((tries + 1))
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${STARTED_PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  STARTED_PIDS=("${kept[@]}")
}

# Raises the open-files limit as far as allowed (root may raise the hard limit too).
raise_nofile() {
  local want="$1"
  if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want" ]; then
    ulimit -Hn "$want" 2>/dev/null || true
  fi
  local hard
  hard="$(ulimit -Hn)"
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then ulimit -Sn "$want"; else ulimit -Sn "$hard"; fi
}

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  is_root || return 1
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ -z "${BENCH_APT_UPDATED:-}" ]; then
    apt-get update -qq >&2 || return 1
    BENCH_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

ensure_python() {
  command -v python3 >/dev/null 2>&1 || apt_install python3 || fail "python3 is needed (apt-get install python3)"
}

# Builds the release binaries; sets PORTCULLIS_BIN and UPSTREAM_BIN. BENCH_PORTCULLIS_BIN replaces
# the gateway just built by another one (an older build, to compare two versions on one machine).
build_binaries() {
  command -v cargo >/dev/null 2>&1 || fail "cargo is not installed; see https://rustup.rs"
  say "building release binaries (cargo build --release -p portcullis -p portcullis-bench-upstream)"
  (cd "$ROOT" && cargo build --release -p portcullis -p portcullis-bench-upstream) >&2
  local target
  target="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  PORTCULLIS_BIN="${BENCH_PORTCULLIS_BIN:-$target/release/portcullis}"
  UPSTREAM_BIN="$target/release/portcullis-bench-upstream"
  [ -x "$PORTCULLIS_BIN" ] || fail "no binary at $PORTCULLIS_BIN after the build"
  [ -x "$UPSTREAM_BIN" ] || fail "no binary at $UPSTREAM_BIN after the build"
}

# Finds or installs a load generator; sets LOADGEN (oha or wrk) and LOADGEN_BIN.
# BENCH_LOADGEN=oha|wrk forces one. Otherwise an installed oha comes first, then an installed wrk;
# when neither is there, oha is built (cargo install, minutes, once) — or, with QUICK_INSTALL=1
# (the smoke run), wrk comes from apt-get first (seconds), oha being the fallback.
ensure_loadgen() {
  local want="${BENCH_LOADGEN:-}" oha_root="$BENCH_CACHE/oha" candidate
  if [ "$want" != wrk ]; then
    for candidate in "$oha_root/bin/oha" "$(command -v oha 2>/dev/null || true)"; do
      if [ -n "$candidate" ] && [ -x "$candidate" ]; then
        LOADGEN=oha LOADGEN_BIN="$candidate"
        return
      fi
    done
  fi
  if [ "$want" != oha ] && command -v wrk >/dev/null 2>&1; then
    LOADGEN=wrk LOADGEN_BIN="$(command -v wrk)"
    return
  fi
  if [ "$want" != oha ] && [ "${QUICK_INSTALL:-0}" = 1 ] && install_wrk; then return; fi
  if [ "$want" != wrk ]; then
    say "installing the load generator oha (cargo install oha --locked, into $oha_root; a few minutes, once)"
    mkdir -p "$oha_root"
    if (cd "$BENCH_CACHE" && cargo install oha --locked --root "$oha_root") >&2 && [ -x "$oha_root/bin/oha" ]; then
      LOADGEN=oha LOADGEN_BIN="$oha_root/bin/oha"
      return
    fi
    say "could not install oha; trying wrk"
  fi
  if [ "$want" != oha ] && install_wrk; then return; fi
  fail "no load generator: install oha (cargo install oha --locked) or wrk (apt-get install wrk)"
}

install_wrk() {
  say "installing the load generator wrk (apt-get install wrk)"
  apt_install wrk && command -v wrk >/dev/null 2>&1 || return 1
  LOADGEN=wrk LOADGEN_BIN="$(command -v wrk)"
}

ensure_nginx() {
  NGINX_BIN="$(command -v nginx 2>/dev/null || true)"
  [ -n "$NGINX_BIN" ] || [ ! -x /usr/sbin/nginx ] || NGINX_BIN=/usr/sbin/nginx
  if [ -z "$NGINX_BIN" ]; then
    say "installing nginx (apt-get install nginx-light)"
    apt_install nginx-light || apt_install nginx || fail "nginx is needed (apt-get install nginx-light)"
    NGINX_BIN="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"
  fi
  [ -x "$NGINX_BIN" ] || fail "no nginx binary"
}

# A free TCP port on 127.0.0.1 (the kernel's choice; free when asked).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for_file FILE PID NAME [SECONDS]: until FILE is non-empty; fails if PID dies or time runs out.
wait_for_file() {
  local file="$1" pid="$2" name="$3" limit="${4:-30}" tries=0
  until [ -s "$file" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$WORK/$name.log" >&2 || true
      fail "$name exited during start-up (log above)"
    fi
    if [ "$tries" -ge $((limit * 100)) ]; then
      tail -n 30 "$WORK/$name.log" >&2 || true
      fail "$name was not ready within $limit s"
    fi
    sleep 0.01
    tries=$((tries + 1))
  done
}

# wait_for_port HOST:PORT PID NAME: until something accepts connections there.
wait_for_port() {
  local addr="$1" pid="$2" name="$3" tries=0
  until python3 -c 'import socket, sys; h, p = sys.argv[1].rsplit(":", 1); socket.create_connection((h, int(p)), 1).close()' "$addr" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || {
      tail -n 30 "$WORK/$name.log" >&2 || true
      fail "$name exited during start-up (log above)"
    }
    [ "$tries" -lt 300 ] || fail "$name did not listen on $addr within 30 s"
    sleep 0.1
    tries=$((tries + 1))
  done
}

# start_upstream [ARGS...]: sets UPSTREAM_ADDR, UPSTREAM_PID.
start_upstream() {
  local ready="$WORK/upstream.ready"
  rm -f "$ready"
  "$UPSTREAM_BIN" --listen 127.0.0.1:0 --ready-file "$ready" "$@" > "$WORK/upstream.log" 2>&1 < /dev/null &
  UPSTREAM_PID=$!
  STARTED_PIDS+=("$UPSTREAM_PID")
  wait_for_file "$ready" "$UPSTREAM_PID" upstream
  UPSTREAM_ADDR="$(tr -d '\n' < "$ready")"
}

# start_nginx UPSTREAM_ADDR: nginx as a plain reverse proxy; sets NGINX_ADDR, NGINX_PID (master).
# NGINX_WORKERS (default auto: one per core) sets worker_processes.
start_nginx() {
  local upstream="$1" port dir="$WORK/nginx" user_line=""
  port="$(free_port)"
  mkdir -p "$dir/tmp"
  chmod 777 "$dir/tmp"
  # As root the workers would switch to an unprivileged user; keep them as root, like everything else here.
  if is_root; then user_line="user root;"; fi
  local access_log="access_log $dir/access.log combined;"
  if [ "${BENCH_LOGS:-on}" = off ]; then access_log="access_log off;"; fi
  cat > "$dir/nginx.conf" <<EOF
# Written by bench/lib.sh: a plain reverse proxy, as nginx is usually deployed in front of a model server.
$user_line
worker_processes ${NGINX_WORKERS:-auto};
worker_rlimit_nofile $(nginx_nofile);
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 32768;
    multi_accept on;
}
http {
    # One access-log line per request, written as it happens (nginx's default), like Portcullis's
    # per-request log line at its default level; BENCH_LOGS=off turns both off.
    $access_log
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream bench_upstream {
        server $upstream;
        keepalive 1024;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Streams pass straight through (SSE); answers are not held back either.
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
EOF
  "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' > "$WORK/nginx.log" 2>&1 < /dev/null &
  NGINX_PID=$!
  STARTED_PIDS+=("$NGINX_PID")
  NGINX_ADDR="127.0.0.1:$port"
  wait_for_port "$NGINX_ADDR" "$NGINX_PID" nginx
  wait_for_nginx_workers "$NGINX_PID" "${NGINX_WORKERS:-auto}"
}

# wait_for_nginx_workers MASTER_PID COUNT|auto: the master listens before it forks the workers;
# wait for them, so their CPU time is counted.
wait_for_nginx_workers() {
  local master="$1" workers="$2" tries=0
  [ "$workers" != auto ] || workers="$(nproc)"
  until [ "$(nginx_pids "$master" | wc -l)" -gt "$workers" ]; do
    [ "$tries" -lt 100 ] || fail "nginx did not start its $workers workers within 10 s"
    sleep 0.1
    tries=$((tries + 1))
  done
}

# start_nginx_authz AUTHZ_ADDR UPSTREAM_ADDR: nginx from the shipped examples/nginx/nginx.conf
# (auth_request to Portcullis's authorizer, then proxy_pass to the upstream), filled in as the
# docs do with envsubst; sets NGINX_AUTHZ_ADDR and NGINX_AUTHZ_PID (master). Its worker count
# and access log are the example's (worker_processes auto, one line per request).
start_nginx_authz() {
  local authz="$1" upstream="$2" dir="$WORK/nginx-authz"
  mkdir -p "$dir"
  # As root the workers run as nobody, who must reach the prefix directory.
  chmod 755 "$dir"
  NGINX_AUTHZ_ADDR="127.0.0.1:$(free_port)"
  LISTEN="$NGINX_AUTHZ_ADDR" AUTHZ="$authz" UPSTREAM="$upstream" python3 - "$ROOT/examples/nginx/nginx.conf" \
    > "$dir/nginx.conf" <<'PY'
import os, sys
text = open(sys.argv[1], encoding="utf-8").read()
for name in ("LISTEN", "AUTHZ", "UPSTREAM"):
    text = text.replace("${" + name + "}", os.environ[name])
sys.stdout.write(text)
PY
  "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -g "daemon off; pid $dir/nginx.pid;" \
    > "$WORK/nginx-authz.log" 2>&1 < /dev/null &
  NGINX_AUTHZ_PID=$!
  STARTED_PIDS+=("$NGINX_AUTHZ_PID")
  wait_for_port "$NGINX_AUTHZ_ADDR" "$NGINX_AUTHZ_PID" nginx-authz
  wait_for_nginx_workers "$NGINX_AUTHZ_PID" auto
}

# Open files for nginx workers: 65536, or the hard limit when that is lower (it cannot be raised).
nginx_nofile() {
  local hard
  hard="$(ulimit -Hn)"
  if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then printf 65536; else printf '%s' "$hard"; fi
}

# The nginx master and its workers.
nginx_pids() {
  local pid="$1"
  printf '%s\n' "$pid"
  cat "/proc/$pid/task/"*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d' || true
}

# The [limits] lines that pick the limiter: BENCH_LIMITER=memory (default) or redis (at
# BENCH_REDIS_URL, default redis://127.0.0.1:6379, under a key prefix of its own per run).
limiter_settings() {
  if [ "${BENCH_LIMITER:-memory}" = redis ]; then
    printf 'backend = "redis"\nredis_url = "%s"\nredis_prefix = "bench-%s-%s"\n' \
      "${BENCH_REDIS_URL:-redis://127.0.0.1:6379}" "$$" "$(date +%s)"
  fi
}

# write_portcullis_config UPSTREAM_ADDR DIR [EXTRA_TOML]; BENCH_SERVER_SETTINGS adds [server] lines.
write_portcullis_config() {
  local upstream="$1" dir="$2" extra="${3:-}"
  cat > "$dir/portcullis.toml" <<EOF
# Written by bench/lib.sh. Key auth, limits (generous: nothing is refused) and the asynchronous
# audit log are all on, as the performance contract asks (docs/benchmarks.md).
[server]
listen = "127.0.0.1:0"
${BENCH_SERVER_SETTINGS:-}

[admin]
listen = "127.0.0.1:0"

[store]
url = "sqlite://$dir/portcullis.db"

[limits]
default_tier = "bench"
$(limiter_settings)

[audit]
durability = "${BENCH_AUDIT:-async}"
node = "bench"
spill_file = "$dir/audit-spill.jsonl"

[tiers.bench]
# The largest rates the configuration accepts (what every limiter counts exactly).
requests_per_minute = 67108864
tokens_per_minute = 75059993789
max_concurrent = 1000000
models = ["*"]

[[models]]
name = "bench"
endpoints = ["http://$upstream"]
health_check = { path = "/health" }
$extra
EOF
}

# start_portcullis DIR: the gateway on DIR/portcullis.toml; sets PROXY_ADDR, ADMIN_ADDR, PORTCULLIS_PID
# and STARTUP_MS (spawn to ready file, from the ready file's modification time).
start_portcullis() {
  local dir="$1" ready="$1/ready.json" t0 written
  rm -f "$ready"
  t0="$(date +%s%N)"
  PORTCULLIS_ADMIN_TOKEN="$ADMIN_TOKEN" PORTCULLIS_LOG="$(portcullis_log_level)" \
    "$PORTCULLIS_BIN" serve --config "$dir/portcullis.toml" --ready-file "$ready" \
    >> "$WORK/portcullis.log" 2>&1 < /dev/null &
  PORTCULLIS_PID=$!
  STARTED_PIDS+=("$PORTCULLIS_PID")
  wait_for_file "$ready" "$PORTCULLIS_PID" portcullis 120
  written="$(stat -c %.9Y "$ready" | tr -d .)"
  STARTUP_MS="$(((written - t0) / 1000000))"
  PROXY_ADDR="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["proxy"])' "$ready")"
  ADMIN_ADDR="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$ready")"
  AUTHZ_ADDR="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("authz", ""))' "$ready")"
}

# The gateway's log level: its default (info: one line per request) unless BENCH_LOGS=off.
portcullis_log_level() {
  if [ "${BENCH_LOGS:-on}" = off ]; then printf 'warn'; else printf '%s' "${PORTCULLIS_LOG:-info}"; fi
}

# create_key NAME: prints a fresh API key's secret.
create_key() {
  local out
  out="$(PORTCULLIS_ADMIN_URL="http://$ADMIN_ADDR" PORTCULLIS_ADMIN_TOKEN="$ADMIN_TOKEN" \
    "$PORTCULLIS_BIN" keys create --name "$1" --json)" || fail "could not create an API key"
  printf '%s' "$out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])'
}

# wait_until_accepted URL CREDENTIAL SECONDS: polls GET URL with the credential until it answers 200
# (a token issuer's keys are fetched in the background after the gateway starts).
wait_until_accepted() {
  python3 - "$@" <<'PY' || fail "the gateway did not accept the credential within $3 s (see $WORK/portcullis.log)"
import sys, time, urllib.request, urllib.error
url, credential, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + seconds
while True:
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + credential})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            if answer.status == 200:
                sys.exit(0)
    except (urllib.error.URLError, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.1)
PY
}

# cpu_ticks PID...: user + system clock ticks used so far by these processes (all their threads).
cpu_ticks() {
  local total=0 pid rest
  for pid in "$@"; do
    rest="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    rest="${rest##*) }" # after the command name, which may hold spaces
    # shellcheck disable=SC2086
    set -- $rest
    # Fields 14 and 15 of the whole line (utime, stime) are the 12th and 13th after the name.
    total=$((total + ${12} + ${13}))
  done
  printf '%s' "$total"
}

# ticks_to_seconds TICKS
ticks_to_seconds() { python3 -c "import sys; print(round(int(sys.argv[1]) / int(sys.argv[2]), 3))" "$1" "$CLK_TCK"; }

# status_kib FIELD PID...: the sum of a /proc/PID/status field (VmRSS, VmHWM) in KiB.
status_kib() {
  local field="$1" total=0 pid value
  shift
  for pid in "$@"; do
    value="$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null)"
    total=$((total + ${value:-0}))
  done
  printf '%s' "$total"
}

# reset_peak_rss PID...: make VmHWM start again from the current RSS (Linux ≥ 4.0; ignored elsewhere).
reset_peak_rss() {
  local pid
  for pid in "$@"; do echo 5 > "/proc/$pid/clear_refs" 2>/dev/null || true; done
}

BODY_PLAIN='{"model":"bench","messages":[{"role":"user","content":"Say hello"}],"max_tokens":32}'
BODY_STREAM='{"model":"bench","messages":[{"role":"user","content":"Say hello"}],"max_tokens":32,"stream":true,"stream_options":{"include_usage":true}}'

# run_load URL BODY CONCURRENCY SECONDS KEY OUT_JSON: one load-generator run; writes the
# normalized row ({requests, ok, rps, p50_ms, p99_ms, p999_ms, errors, error_detail}).
run_load() {
  local url="$1" body="$2" conc="$3" seconds="$4" key="$5" out="$6" raw="$6.raw"
  case "$LOADGEN" in
    oha)
      # -w: requests still running at the deadline finish and count (none are cut off as errors).
      "$LOADGEN_BIN" --no-tui --output-format json -w -z "${seconds}s" -c "$conc" -m POST \
        -H "Authorization: Bearer $key" -H "Content-Type: application/json" -d "$body" \
        "$url" > "$raw" 2> "$raw.err" || {
        cat "$raw.err" >&2
        fail "oha failed against $url"
      }
      ;;
    wrk)
      local script="$WORK/wrk-$$.lua" threads=2
      [ "$conc" -ge "$threads" ] || threads="$conc"
      python3 - "$body" "$key" > "$script" <<'PY'
import json, sys
body, key = sys.argv[1], sys.argv[2]
print(f'wrk.method = "POST"')
print(f'wrk.body = {json.dumps(body)}')
print('wrk.headers["Content-Type"] = "application/json"')
print(f'wrk.headers["Authorization"] = {json.dumps("Bearer " + key)}')
print('''
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "p50_us": %f, "p99_us": %f, "p999_us": %f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect, e.read, e.write, e.status, e.timeout))
end''')
PY
      "$LOADGEN_BIN" -t "$threads" -c "$conc" -d "${seconds}s" --timeout 30s -s "$script" "$url" > "$raw" 2>&1 || {
        cat "$raw" >&2
        fail "wrk failed against $url"
      }
      ;;
  esac
  python3 "$BENCH_DIR/bench.py" normalize --tool "$LOADGEN" "$raw" > "$out"
}

machine_json() {
  python3 - <<'PY'
import json, os, platform
cpu = "unknown"
try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
except OSError:
    pass
mem = 0
with open("/proc/meminfo", encoding="utf-8") as f:
    for line in f:
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
print(json.dumps({"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "mem_mib": mem}))
PY
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

git_describe() {
  local rev dirty=""
  rev="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [ -n "$(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null)" ]; then dirty="+dirty"; fi
  printf '%s%s' "$rev" "$dirty"
}

# usage: prints the calling script's header comment (its help text) and exits 2.
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}
