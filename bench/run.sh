#!/usr/bin/env bash
# bench/run.sh — Portcullis against nginx and a direct connection, on one machine, in one run.
#
#   bench/run.sh [options]
#
# Builds the release binaries, installs a load generator (oha, else wrk) and nginx when missing,
# starts on loopback the fake upstream (portcullis-bench-upstream), nginx as a plain reverse proxy
# to it, and Portcullis (key auth, limits, async audit log) with one key; then, for each scenario
# (plain chat, streamed chat), each concurrency and each target (direct, nginx, portcullis, and
# nginx-authz: the shipped examples/nginx/nginx.conf asking Portcullis's authorizer) runs
# the load generator and records requests/s, p50/p99/p99.9 latency, errors, the proxy's CPU
# seconds (per 1000 requests) and peak RSS; and measures the time to the first streamed chunk at
# concurrency 1. Prints a Markdown table with the ratios Portcullis ÷ nginx and Portcullis − direct
# (and the authorizer's cost: nginx-authz against nginx alone) and writes it, with a JSON
# document, to the output directory. See docs/benchmarks.md.
#
# Options:
#   --smoke                 one concurrency level (8), 2 s per cell, few TTFB samples: checks that the
#                           harness works (fails on any error or if a target does not start), in
#                           well under a minute after the build; asserts nothing about timings.
#                           Without oha or wrk installed, it installs wrk (apt-get), not oha
#   --duration SECONDS      per cell (default 10)
#   --concurrency "LIST"    (default "1 64 256")
#   --targets "LIST"        any of direct nginx portcullis portcullis-jwt nginx-authz (default all five);
#                           portcullis-jwt is the same gateway called with a JWT access token instead of
#                           a key (an EdDSA key set that the fake upstream serves as the issuer;
#                           docs/benchmarks.md); nginx-authz is nginx from examples/nginx/nginx.conf
#                           asking Portcullis's authorizer (its CPU and memory: nginx + Portcullis)
#   --scenarios "LIST"      any of plain stream (default both)
#   --chunks N              content chunks per streamed answer (default 16)
#   --ttfb-count N          streams timed one at a time per target (default 500; 0 skips)
#   --nginx-workers N|auto  nginx worker_processes (default auto: one per core)
#   --upstream-threads N    the fake upstream's worker threads (default 0: one per core)
#   --logs on|off           per-request log lines of nginx (access_log) and Portcullis (level info);
#                           default on, as both ship. The audit log is always on.
#   --audit async|sync      Portcullis's audit durability (default async, as the contract asks)
#   --limiter memory|redis  Portcullis's limiter (default memory; redis: the fleet's shared limiter at
#                           BENCH_REDIS_URL, default redis://127.0.0.1:6379, which must be running)
#   --out DIR               where the .md and .json go (default bench/results; --smoke: not kept)
#   --keep                  keep the temporary directory (configs, logs, raw results)
#
# Environment: BENCH_PORTCULLIS_BIN=PATH benchmarks that gateway binary instead of the one built from
# this tree (to compare versions); BENCH_LOADGEN=oha|wrk forces a load generator; BENCH_CACHE (default
# ~/.cache/portcullis-bench) holds the oha it installs; CARGO_TARGET_DIR is honoured.
# Only loopback addresses are used; every process started is stopped on exit.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS="$*"
SMOKE=0
DURATION=10
CONCURRENCY="1 64 256"
TARGETS="direct nginx portcullis portcullis-jwt nginx-authz"
SCENARIOS="plain stream"
CHUNKS=16
TTFB_COUNT=500
UPSTREAM_THREADS=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --duration) DURATION="${2%s}"; shift ;;
    --concurrency) CONCURRENCY="$2"; shift ;;
    --targets) TARGETS="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --chunks) CHUNKS="$2"; shift ;;
    --ttfb-count) TTFB_COUNT="$2"; shift ;;
    --nginx-workers) export NGINX_WORKERS="$2"; shift ;;
    --upstream-threads) UPSTREAM_THREADS="$2"; shift ;;
    --logs) export BENCH_LOGS="$2"; shift ;;
    --audit) export BENCH_AUDIT="$2"; shift ;;
    --limiter) export BENCH_LIMITER="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --keep) export BENCH_KEEP=1 ;;
    -h | --help) usage ;;
    *) say "unknown option $1"; usage ;;
  esac
  shift
done
if [ "$SMOKE" = 1 ]; then
  DURATION=2
  CONCURRENCY=8
  TTFB_COUNT=50
  # No timings are kept: a load generator that installs in seconds will do if none is there.
  export QUICK_INSTALL=1
fi
if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || [ "$DURATION" -lt 1 ] || [ "$DURATION" -gt 600 ]; then
  fail "--duration: 1 to 600 seconds"
fi
for c in $CONCURRENCY; do
  if ! [[ "$c" =~ ^[0-9]+$ ]] || [ "$c" -lt 1 ] || [ "$c" -gt 10000 ]; then fail "--concurrency: 1 to 10000"; fi
done
for t in $TARGETS; do case "$t" in direct | nginx | portcullis | portcullis-jwt | nginx-authz) ;; *) fail "unknown target $t" ;; esac; done
for s in $SCENARIOS; do case "$s" in plain | stream) ;; *) fail "unknown scenario $s" ;; esac; done

BENCH_LOG_PREFIX="bench"
bench_init
raise_nofile 65536
ensure_python
build_binaries
ensure_loadgen
case " $TARGETS " in *" nginx "* | *" nginx-authz "*) ensure_nginx ;; esac

LOAD_BEFORE="$(loadavg)"
STARTED_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
read -r load1 _ < /proc/loadavg
if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0.5 else 1)" "$load1"; then
  say "warning: load average $LOAD_BEFORE before the run: other work is running, figures will be noisy"
fi

say "starting the fake upstream, nginx and Portcullis on loopback (work directory $WORK)"
TOKEN_FILE="$WORK/bench.jwt"
issuer_args=()
if [[ " $TARGETS " == *" portcullis-jwt "* ]]; then issuer_args=(--token-file "$TOKEN_FILE"); fi
start_upstream --threads "$UPSTREAM_THREADS" --chunks "$CHUNKS" "${issuer_args[@]}"
declare -A URL PIDS CRED AUTHORIZER
URL[direct]="http://$UPSTREAM_ADDR/v1/chat/completions"
PIDS[direct]=""
CRED[direct]="none"
if [[ " $TARGETS " == *" nginx "* ]]; then
  start_nginx "$UPSTREAM_ADDR"
  URL[nginx]="http://$NGINX_ADDR/v1/chat/completions"
  PIDS[nginx]="$(nginx_pids "$NGINX_PID" | tr '\n' ' ')"
  CRED[nginx]="none"
fi
if [[ " $TARGETS " == *" portcullis"* || " $TARGETS " == *" nginx-authz "* ]]; then
  mkdir -p "$WORK/gateway"
  extra_toml=""
  if [ -f "$TOKEN_FILE" ]; then
    extra_toml="$(printf '[[auth.oidc]]\nissuer = "http://%s"\naudience = "portcullis-bench"\ndefault_tier = "bench"\n' "$UPSTREAM_ADDR")"
  fi
  if [[ " $TARGETS " == *" nginx-authz "* ]]; then
    # Nothing reports usage here: every lease expires (charged in full, audited) within the
    # shortest lease, so that work is counted in the cell that caused it.
    extra_toml="$(printf '%s\n[authz]\nlisten = "127.0.0.1:0"\nlease = "1s"\n' "$extra_toml")"
  fi
  write_portcullis_config "$UPSTREAM_ADDR" "$WORK/gateway" "$extra_toml"
  start_portcullis "$WORK/gateway"
  say "portcullis ready in ${STARTUP_MS} ms (proxy $PROXY_ADDR, admin $ADMIN_ADDR)"
  for gateway in portcullis portcullis-jwt; do
    URL[$gateway]="http://$PROXY_ADDR/v1/chat/completions"
    PIDS[$gateway]="$PORTCULLIS_PID"
  done
  CRED[portcullis]="$(create_key bench)"
  if [[ " $TARGETS " == *" nginx-authz "* ]]; then
    start_nginx_authz "$AUTHZ_ADDR" "$UPSTREAM_ADDR"
    URL[nginx-authz]="http://$NGINX_AUTHZ_ADDR/v1/chat/completions"
    PIDS[nginx-authz]="$(nginx_pids "$NGINX_AUTHZ_PID" | tr '\n' ' ')$PORTCULLIS_PID"
    AUTHORIZER[nginx-authz]="$PORTCULLIS_PID"
    CRED[nginx-authz]="${CRED[portcullis]}"
  fi
  if [ -f "$TOKEN_FILE" ]; then
    CRED[portcullis-jwt]="$(cat "$TOKEN_FILE")"
    wait_until_accepted "http://$PROXY_ADDR/v1/models" "${CRED[portcullis-jwt]}" 30
  fi
fi

alive() {
  local target="$1" pid
  for pid in ${PIDS[$target]}; do kill -0 "$pid" 2>/dev/null || fail "$target (pid $pid) died; see $WORK"; done
}

# One short run per target first: connections, caches and the gateway's key cache warm up.
for target in $TARGETS; do
  run_load "${URL[$target]}" "$BODY_PLAIN" 16 1 "${CRED[$target]}" "$WORK/warmup-$target.json"
  errors="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["errors"])' "$WORK/warmup-$target.json")"
  [ "$errors" = 0 ] || {
    cat "$WORK/warmup-$target.json" >&2
    fail "$target answered the warm-up with errors"
  }
  alive "$target"
done

ROWS="$WORK/rows.jsonl"
: > "$ROWS"
for scenario in $SCENARIOS; do
  body="$BODY_PLAIN"
  [ "$scenario" = plain ] || body="$BODY_STREAM"
  for conc in $CONCURRENCY; do
    for target in $TARGETS; do
      # shellcheck disable=SC2086
      {
        reset_peak_rss ${PIDS[$target]}
        cpu0="$(cpu_ticks ${PIDS[$target]})"
        authz0="$(cpu_ticks ${AUTHORIZER[$target]:-})"
        up0="$(cpu_ticks "$UPSTREAM_PID")"
        run_load "${URL[$target]}" "$body" "$conc" "$DURATION" "${CRED[$target]}" "$WORK/run.json"
        cpu1="$(cpu_ticks ${PIDS[$target]})"
        authz1="$(cpu_ticks ${AUTHORIZER[$target]:-})"
        up1="$(cpu_ticks "$UPSTREAM_PID")"
        peak="$(status_kib VmHWM ${PIDS[$target]})"
        rss="$(status_kib VmRSS ${PIDS[$target]})"
      }
      alive "$target"
      python3 - "$WORK/run.json" "$scenario" "$conc" "$target" "$((cpu1 - cpu0))" "$((up1 - up0))" \
        "$peak" "$rss" "$CLK_TCK" "$DURATION" "$((authz1 - authz0))" >> "$ROWS" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
scenario, conc, target = sys.argv[2], int(sys.argv[3]), sys.argv[4]
cpu, up, peak, rss, tck, duration, authz = (int(v) for v in sys.argv[5:12])
row = {"scenario": scenario, "concurrency": conc, "target": target, "duration_s": duration, **run}
row["upstream_cpu_s"] = up / tck
if target != "direct":
    row["proxy_cpu_s"] = cpu / tck
    row["proxy_cpu_percent"] = 100.0 * cpu / tck / duration
    row["cpu_per_1k_s"] = (cpu / tck) / run["requests"] * 1000 if run["requests"] else None
    row["proxy_peak_rss_mib"] = peak / 1024
    row["proxy_rss_after_mib"] = rss / 1024
if target == "nginx-authz" and run["requests"]:
    # Portcullis's share of the row's CPU: what its decisions cost.
    row["authorizer_cpu_per_1k_s"] = (authz / tck) / run["requests"] * 1000
print(json.dumps(row))
PY
      tail -n 1 "$ROWS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
cpu = "" if r.get("cpu_per_1k_s") is None else " cpu/1k %.3f s" % r["cpu_per_1k_s"]
print("[bench] %-6s c=%-4d %-14s %9.0f req/s  p50 %.3f ms  p99 %.3f ms  errors %d%s" % (
    r["scenario"], r["concurrency"], r["target"], r["rps"] or 0, r["p50_ms"] or 0, r["p99_ms"] or 0, r["errors"], cpu),
    file=sys.stderr)'
    done
  done
done

TTFB="$WORK/ttfb.jsonl"
: > "$TTFB"
if [ "$TTFB_COUNT" -gt 0 ] && [[ " $SCENARIOS " == *" stream "* ]]; then
  for target in $TARGETS; do
    python3 "$BENCH_DIR/bench.py" ttfb --url "${URL[$target]}" --key "${CRED[$target]}" --body "$BODY_STREAM" \
      --count "$TTFB_COUNT" --warmup 20 --max-seconds 120 |
      python3 -c 'import json, sys; r = json.load(sys.stdin); r["target"] = sys.argv[1]; print(json.dumps(r))' "$target" >> "$TTFB"
    alive "$target"
  done
fi

LOAD_AFTER="$(loadavg)"
M_STARTED="$STARTED_AT" M_COMMAND="bench/run.sh $ORIG_ARGS" M_SMOKE="$SMOKE" M_MACHINE="$(machine_json)" \
  M_LOAD_BEFORE="$LOAD_BEFORE" M_LOAD_AFTER="$LOAD_AFTER" \
  M_LOADGEN="$LOADGEN ($("$LOADGEN_BIN" --version 2>&1 | head -n1))" M_DURATION="$DURATION" \
  M_NGINX_WORKERS="${NGINX_WORKERS:-auto}" M_NGINX="$(if [ -n "${NGINX_BIN:-}" ]; then "$NGINX_BIN" -v 2>&1; fi)" \
  M_LOGS="${BENCH_LOGS:-on}" M_GIT="$(git_describe)" M_CHUNKS="$CHUNKS" M_TTFB_COUNT="$TTFB_COUNT" \
  M_STARTUP_MS="${STARTUP_MS:-}" M_UPSTREAM_THREADS="$UPSTREAM_THREADS" \
  python3 - "$WORK/meta.json" <<'PY'
import json, os, sys
e = os.environ
meta = {
    "started": e["M_STARTED"],
    "command": e["M_COMMAND"].strip(),
    "smoke": e["M_SMOKE"] == "1",
    "machine": json.loads(e["M_MACHINE"]),
    "loadavg_before": e["M_LOAD_BEFORE"],
    "loadavg_after": e["M_LOAD_AFTER"],
    "loadgen": e["M_LOADGEN"],
    "duration": e["M_DURATION"] + "s",
    "nginx_workers": e["M_NGINX_WORKERS"],
    "nginx": e["M_NGINX"],
    "logs": e["M_LOGS"],
    "git": e["M_GIT"],
    "chunks": int(e["M_CHUNKS"]),
    "ttfb_count": int(e["M_TTFB_COUNT"]),
    "upstream_threads": int(e["M_UPSTREAM_THREADS"]),
    "portcullis_startup_ms": int(e["M_STARTUP_MS"]) if e["M_STARTUP_MS"] else None,
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
PY

if [ "$SMOKE" = 1 ] && [ -z "$OUT" ]; then
  OUT="$WORK"
  STAMP="smoke"
else
  OUT="${OUT:-$BENCH_DIR/results}"
  STAMP="bench-$(date -u +%Y%m%d-%H%M%S)"
fi
mkdir -p "$OUT"
printf '\n' >&2
python3 "$BENCH_DIR/bench.py" report --rows "$ROWS" --meta "$WORK/meta.json" --ttfb "$TTFB" \
  --markdown "$OUT/$STAMP.md" --json "$OUT/$STAMP.json"
printf '\n'
[ "$OUT" = "$WORK" ] || say "written: $OUT/$STAMP.md and $OUT/$STAMP.json"

# Any error makes the run fail: a benchmark with errors measured something else.
python3 - "$ROWS" "$TTFB" <<'PY'
import json, sys
bad = []
for path in sys.argv[1:]:
    for line in open(path):
        if line.strip():
            row = json.loads(line)
            if row.get("errors"):
                bad.append(f"{row.get('scenario', 'ttfb')} c={row.get('concurrency', 1)} {row['target']}: "
                           f"{row['errors']} errors {row.get('error_detail')}")
if bad:
    print("[bench] FAILED: errors during the run:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print("[bench] no errors", file=sys.stderr)
PY
