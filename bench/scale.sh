#!/usr/bin/env bash
# bench/scale.sh — Portcullis at scale: idle streams, a million keys, audit throughput.
#
#   bench/scale.sh [options]
#
# Three scenarios, each against its own fresh gateway and fake upstream on loopback:
#   idle   N concurrent, mostly idle streams (upstream: --gap-ms 1000 --chunks 30) through
#          Portcullis (and nginx, for reference): the gateway's RSS before, with and after them,
#          and the memory each stream costs; twice, to tell reuse from growth. Raises the
#          open-files limit (as far as the hard limit allows: 2 sockets per stream in the proxy).
#   keys   start-up time (spawn to ready file) and per-request latency at concurrency 1, and RSS,
#          with one key in the store, then with a million more inserted straight into SQLite
#          (api_keys + api_key_secrets rows copied from the real key, random 32-byte hashes).
#   audit  sustained load through the gateway, and the audit records written meanwhile (rows of
#          the audit_log table, or the writer's counter on /metrics when exposed) per second.
#
# Options:
#   --only "LIST"           any of idle keys audit (default all three)
#   --streams N             idle streams (default 10000)
#   --idle-chunks N         chunks of each idle stream (default 30)
#   --idle-gap-ms MS        gap between them (default 1000)
#   --idle-targets "LIST"   portcullis and/or nginx (default "portcullis nginx")
#   --idle-waves N          waves of streams, one after the other, through the same process
#                           (default 2: the second shows whether memory is reused or keeps growing)
#   --idle-cooldown S       after the last wave, wait S seconds and read the RSS and open files again
#                           (default 65: past Portcullis's 60 s idle timeout of pooled upstream connections)
#   --keys N                keys to insert (default 1000000)
#   --latency-seconds S     each latency measurement in the keys scenario (default 10)
#   --audit-seconds S       load duration in the audit scenario (default 20)
#   --audit-concurrency C   (default 64)
#   --out DIR               where scale-*.md and scale-*.json go (default bench/results)
#   --keep                  keep the temporary directory (configs, logs, the seeded database)
#
# Not part of --smoke or CI: the scenarios take a few minutes and ~0.5 GB of disk for the keys.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS="$*"
ONLY="idle keys audit"
STREAMS=10000
IDLE_CHUNKS=30
IDLE_GAP_MS=1000
IDLE_TARGETS="portcullis nginx"
IDLE_WAVES=2
IDLE_COOLDOWN=65
KEYS=1000000
LATENCY_SECONDS=10
AUDIT_SECONDS=20
AUDIT_CONCURRENCY=64
OUT="$BENCH_DIR/results"
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY="$2"; shift ;;
    --streams) STREAMS="$2"; shift ;;
    --idle-chunks) IDLE_CHUNKS="$2"; shift ;;
    --idle-gap-ms) IDLE_GAP_MS="$2"; shift ;;
    --idle-targets) IDLE_TARGETS="$2"; shift ;;
    --idle-waves) IDLE_WAVES="$2"; shift ;;
    --idle-cooldown) IDLE_COOLDOWN="$2"; shift ;;
    --keys) KEYS="$2"; shift ;;
    --latency-seconds) LATENCY_SECONDS="$2"; shift ;;
    --audit-seconds) AUDIT_SECONDS="$2"; shift ;;
    --audit-concurrency) AUDIT_CONCURRENCY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --keep) export BENCH_KEEP=1 ;;
    -h | --help) usage ;;
    *) say "unknown option $1"; usage ;;
  esac
  shift
done
for n in "$STREAMS" "$IDLE_WAVES" "$IDLE_COOLDOWN" "$IDLE_CHUNKS" "$IDLE_GAP_MS" "$KEYS" "$LATENCY_SECONDS" "$AUDIT_SECONDS" "$AUDIT_CONCURRENCY"; do
  [[ "$n" =~ ^[0-9]+$ ]] || fail "not a number: $n"
done
[ "$STREAMS" -le 30000 ] || fail "--streams: at most 30000 (two loopback connections each)"
[ "$IDLE_COOLDOWN" -le 600 ] || fail "--idle-cooldown: at most 600 s"
if [ "$LATENCY_SECONDS" -gt 300 ] || [ "$AUDIT_SECONDS" -gt 600 ]; then fail "durations are bounded: at most 300 / 600 s"; fi
for s in $ONLY; do case "$s" in idle | keys | audit) ;; *) fail "unknown scenario $s" ;; esac; done

BENCH_LOG_PREFIX="scale"
bench_init
# Each idle stream holds a client and an upstream socket in the gateway: 2 × N, and the client
# and the upstream one each.
raise_nofile $((2 * STREAMS + 10000))
STREAMS_ASKED="$STREAMS"
# The gateway keeps 512 descriptors for its admin listener and its own files, and gives client
# connections at most half of the rest (see server.max_connections in docs/configuration.md).
if [[ " $ONLY " == *" idle "* ]] && [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * STREAMS + 600)) ]; then
  # Without CAP_SYS_RESOURCE the hard limit cannot be raised: run as many streams as it allows
  # and say so (memory per stream is measured all the same).
  STREAMS=$((($(ulimit -n) - 600) / 2))
  [ "$STREAMS" -ge 100 ] || fail "open-files limit $(ulimit -n) is too low for the idle scenario"
  say "warning: open-files hard limit $(ulimit -Hn) allows $STREAMS streams through one process, not $STREAMS_ASKED"
fi
ensure_python
build_binaries
ensure_loadgen
case " $ONLY " in *" idle "*) [[ " $IDLE_TARGETS " != *" nginx "* ]] || ensure_nginx ;; esac

STARTED_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LOAD_BEFORE="$(loadavg)"
RESULTS="$WORK/scale.jsonl"
: > "$RESULTS"

record() { # record SCENARIO JSON: one line of results
  python3 -c 'import json, sys; r = json.loads(sys.argv[2]); r["scenario"] = sys.argv[1]; print(json.dumps(r))' "$1" "$2" >> "$RESULTS"
}

json_get() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# --- idle streams --------------------------------------------------------------------------------
record_idle() { # record_idle TARGET WAVE: from $dir/TARGET-WAVE.json
  record idle "$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); r["target"] = sys.argv[2]; r["wave"] = int(sys.argv[3]); print(json.dumps(r))' "$dir/$1-$2.json" "$1" "$2")"
  tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
procs = [p for p in r["processes"] if p["name"] != "upstream"]
before = sum(p["rss_before_mib"] or 0 for p in procs); during = sum(p["rss_with_streams_mib"] or 0 for p in procs)
after = sum(p["rss_after_mib"] or 0 for p in procs)
print("[scale] idle %-10s wave %d: %d open at the sample, %d completed, %d errors; RSS %.1f -> %.1f -> %.1f MiB (%.1f KiB/stream)" % (
    r["target"], r["wave"], r["open_at_sample"], r["completed"], r["errors"], before, during, after,
    (during - before) * 1024 / max(r["open_at_sample"], 1)), file=sys.stderr)'
}

cooldown() { # cooldown TARGET PID...: RSS and open files after IDLE_COOLDOWN seconds
  local target="$1" pid fds=0
  shift
  [ "$IDLE_COOLDOWN" -gt 0 ] || return 0
  say "idle: $target: waiting ${IDLE_COOLDOWN} s, then reading its RSS again"
  sleep "$IDLE_COOLDOWN"
  for pid in "$@"; do fds=$((fds + $(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l))); done
  record idle-cooldown "{\"target\": \"$target\", \"seconds\": $IDLE_COOLDOWN, \"rss_kib\": $(status_kib VmRSS "$@"), \"fds\": $fds}"
  say "idle: $target after ${IDLE_COOLDOWN} s: RSS $(($(status_kib VmRSS "$@") / 1024)) MiB, $fds open files"
}

scenario_idle() {
  local dir="$WORK/idle" body target pid_args wave
  mkdir -p "$dir"
  say "idle: $STREAMS streams of $IDLE_CHUNKS chunks, ${IDLE_GAP_MS} ms apart"
  start_upstream --chunks "$IDLE_CHUNKS" --gap-ms "$IDLE_GAP_MS"
  body="{\"model\":\"bench\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello\"}],\"max_tokens\":$((IDLE_CHUNKS + 16)),\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
  local idle_timeout=$(((IDLE_GAP_MS / 1000) + 30))
  for target in $IDLE_TARGETS; do
    case "$target" in
      portcullis)
        # Every idle stream comes from this one address.
        BENCH_SERVER_SETTINGS=$'max_connections = 1000000\nmax_connections_per_client = 0' \
          write_portcullis_config "$UPSTREAM_ADDR" "$dir"
        start_portcullis "$dir"
        local key
        key="$(create_key idle)"
        pid_args=(--pid "$PORTCULLIS_PID" --name portcullis --pid "$UPSTREAM_PID" --name upstream)
        for wave in $(seq 1 "$IDLE_WAVES"); do
          python3 "$BENCH_DIR/bench.py" idle-streams --url "http://$PROXY_ADDR/v1/chat/completions" --key "$key" \
            --body "$body" --streams "$STREAMS" --idle-timeout "$idle_timeout" "${pid_args[@]}" > "$dir/$target-$wave.json"
          record_idle "$target" "$wave"
        done
        cooldown portcullis "$PORTCULLIS_PID"
        stop_pid "$PORTCULLIS_PID"
        ;;
      nginx)
        start_nginx "$UPSTREAM_ADDR"
        pid_args=()
        for pid in $(nginx_pids "$NGINX_PID"); do pid_args+=(--pid "$pid" --name "nginx-$pid"); done
        pid_args+=(--pid "$UPSTREAM_PID" --name upstream)
        for wave in $(seq 1 "$IDLE_WAVES"); do
          python3 "$BENCH_DIR/bench.py" idle-streams --url "http://$NGINX_ADDR/v1/chat/completions" --key none \
            --body "$body" --streams "$STREAMS" --idle-timeout "$idle_timeout" "${pid_args[@]}" > "$dir/$target-$wave.json"
          record_idle "$target" "$wave"
        done
        # shellcheck disable=SC2046
        cooldown nginx $(nginx_pids "$NGINX_PID")
        stop_pid "$NGINX_PID"
        ;;
      *) fail "unknown idle target $target" ;;
    esac
  done
  stop_pid "$UPSTREAM_PID"
}

# --- a million keys ------------------------------------------------------------------------------
measure_gateway() { # measure_gateway DIR LABEL KEY: 3 start-ups, then latency at c=1, RSS
  local dir="$1" label="$2" key="$3" startups=() i
  for i in 1 2 3; do
    start_portcullis "$dir"
    startups+=("$STARTUP_MS")
    if [ "$i" -lt 3 ]; then stop_pid "$PORTCULLIS_PID"; fi
  done
  local rss_start
  rss_start="$(status_kib VmRSS "$PORTCULLIS_PID")"
  run_load "http://$PROXY_ADDR/v1/chat/completions" "$BODY_PLAIN" 1 1 "$key" "$dir/warm.json"
  run_load "http://$PROXY_ADDR/v1/chat/completions" "$BODY_PLAIN" 1 "$LATENCY_SECONDS" "$key" "$dir/latency-$label.json"
  local rss_end
  rss_end="$(status_kib VmRSS "$PORTCULLIS_PID")"
  stop_pid "$PORTCULLIS_PID"
  record keys "$(python3 - "$dir/latency-$label.json" "$label" "$rss_start" "$rss_end" "${startups[@]}" <<'PY'
import json, statistics, sys
run = json.load(open(sys.argv[1]))
startups = [int(v) for v in sys.argv[5:]]
print(json.dumps({"store": sys.argv[2], "startup_ms": startups, "startup_ms_median": statistics.median(startups),
                  "rss_after_start_mib": int(sys.argv[3]) / 1024, "rss_after_load_mib": int(sys.argv[4]) / 1024, **run}))
PY
)"
  tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("[scale] keys  %-12s start-up %s ms; c=1: %.0f req/s, p50 %.3f ms, p99 %.3f ms, errors %d; RSS %.1f MiB" % (
    r["store"], r["startup_ms"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"], r["rss_after_load_mib"]), file=sys.stderr)'
}

scenario_keys() {
  local dir="$WORK/keys" key seeded
  mkdir -p "$dir"
  say "keys: one key, then $KEYS more"
  start_upstream
  write_portcullis_config "$UPSTREAM_ADDR" "$dir"
  start_portcullis "$dir" # the first start creates and migrates the database
  key="$(create_key keys)"
  stop_pid "$PORTCULLIS_PID"
  measure_gateway "$dir" "1-key" "$key"
  say "keys: inserting $KEYS keys into $dir/portcullis.db"
  seeded="$(python3 "$BENCH_DIR/bench.py" seed-keys --db "$dir/portcullis.db" --count "$KEYS")"
  say "keys: $seeded"
  record seed "$seeded"
  measure_gateway "$dir" "$KEYS-keys" "$key"
  stop_pid "$UPSTREAM_PID"
}

# --- audit throughput ----------------------------------------------------------------------------
scenario_audit() {
  local dir="$WORK/audit" key rows0 rows1 rows2 metric0 metric1 metric2 waited=0
  mkdir -p "$dir"
  say "audit: $AUDIT_SECONDS s at concurrency $AUDIT_CONCURRENCY"
  start_upstream
  write_portcullis_config "$UPSTREAM_ADDR" "$dir"
  start_portcullis "$dir"
  key="$(create_key audit)"
  run_load "http://$PROXY_ADDR/v1/chat/completions" "$BODY_PLAIN" 8 1 "$key" "$dir/warm.json"
  sleep 2
  local metrics="http://$ADMIN_ADDR/metrics" db="$dir/portcullis.db"
  rows0="$(python3 "$BENCH_DIR/bench.py" count-rows --db "$db" --table audit_log)"
  metric0="$(python3 "$BENCH_DIR/bench.py" metric --url "$metrics" --prefix portcullis_audit --suffix written_total)"
  run_load "http://$PROXY_ADDR/v1/chat/completions" "$BODY_PLAIN" "$AUDIT_CONCURRENCY" "$AUDIT_SECONDS" "$key" "$dir/load.json"
  rows1="$(python3 "$BENCH_DIR/bench.py" count-rows --db "$db" --table audit_log)"
  metric1="$(python3 "$BENCH_DIR/bench.py" metric --url "$metrics" --prefix portcullis_audit --suffix written_total)"
  # Then let the writer drain (at most 30 s): the count stops moving.
  rows2="$rows1"
  while [ "$waited" -lt 30 ]; do
    sleep 1
    waited=$((waited + 1))
    local now
    now="$(python3 "$BENCH_DIR/bench.py" count-rows --db "$db" --table audit_log)"
    [ "$now" != "$rows2" ] || break
    rows2="$now"
  done
  metric2="$(python3 "$BENCH_DIR/bench.py" metric --url "$metrics" --prefix portcullis_audit --suffix written_total)"
  local rss spill=0
  rss="$(status_kib VmRSS "$PORTCULLIS_PID")"
  [ ! -f "$dir/audit-spill.jsonl" ] || spill="$(wc -l < "$dir/audit-spill.jsonl")"
  stop_pid "$PORTCULLIS_PID"
  stop_pid "$UPSTREAM_PID"
  record audit "$(python3 - "$dir/load.json" "$rows0" "$rows1" "$rows2" "$metric0" "$metric1" "$metric2" "$AUDIT_SECONDS" "$waited" "$rss" "$spill" "$AUDIT_CONCURRENCY" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
def num(v):
    return None if v == "n/a" else int(v)
r0, r1, r2, m0, m1, m2 = (num(v) for v in sys.argv[2:8])
seconds, waited, rss, spill, conc = (int(v) for v in sys.argv[8:13])
out = {"concurrency": conc, "seconds": seconds, "requests": run["requests"], "rps": run["rps"], "errors": run["errors"],
       "rows_during_load": None if r0 is None else r1 - r0, "rows_after_drain": None if r0 is None else r2 - r0,
       "drain_seconds": waited, "spilled_lines": spill, "rss_mib": rss / 1024,
       "metric_written_during_load": None if m0 is None else m1 - m0}
source = out["metric_written_during_load"] if out["metric_written_during_load"] is not None else out["rows_during_load"]
out["records_per_s"] = None if source is None else source / seconds
out["records_missing_after_drain"] = None if r0 is None else run["requests"] - (r2 - r0)
print(json.dumps(out))
PY
)"
  tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("[scale] audit %d requests (%.0f/s, %d errors); audit rows: %s during the load (%s/s), %s after %d s of drain; %s spilled" % (
    r["requests"], r["rps"], r["errors"], r["rows_during_load"], "n/a" if r["records_per_s"] is None else "%.0f" % r["records_per_s"],
    r["rows_after_drain"], r["drain_seconds"], r["spilled_lines"]), file=sys.stderr)'
}

for scenario in $ONLY; do "scenario_$scenario"; done

mkdir -p "$OUT"
STAMP="scale-$(date -u +%Y%m%d-%H%M%S)"
M_STARTED="$STARTED_AT" M_COMMAND="bench/scale.sh $ORIG_ARGS" M_MACHINE="$(machine_json)" M_GIT="$(git_describe)" \
  M_LOAD_BEFORE="$LOAD_BEFORE" M_LOAD_AFTER="$(loadavg)" M_LOADGEN="$LOADGEN" \
  M_STREAMS_ASKED="$STREAMS_ASKED" M_STREAMS="$STREAMS" M_NOFILE="$(ulimit -n)" \
  python3 - "$RESULTS" "$OUT/$STAMP.md" "$OUT/$STAMP.json" <<'PY'
import json, os, sys
e = os.environ
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
meta = {"started": e["M_STARTED"], "command": e["M_COMMAND"].strip(), "machine": json.loads(e["M_MACHINE"]),
        "git": e["M_GIT"], "loadavg_before": e["M_LOAD_BEFORE"], "loadavg_after": e["M_LOAD_AFTER"], "loadgen": e["M_LOADGEN"],
        "streams_asked": int(e["M_STREAMS_ASKED"]), "streams": int(e["M_STREAMS"]), "nofile_limit": e["M_NOFILE"]}
def f(v, d=1):
    return "–" if v is None else (f"{v:,.{d}f}" if isinstance(v, float) else f"{v:,}")
md = [f"Run {meta['started']} on {meta['machine']['cpu']} ({meta['machine']['nproc']} cores), load average before "
      f"{meta['loadavg_before']}, after {meta['loadavg_after']}; portcullis {meta['git']}; `{meta['command']}`.", ""]
idle = [r for r in rows if r["scenario"] == "idle"]
if idle:
    md += ["Idle streams (contract: 10 000 in ≤ 300 MiB RSS):", ""]
    if meta["streams"] < meta["streams_asked"]:
        md += [f"The open-files limit ({meta['nofile_limit']}, not raisable here) allowed {meta['streams']:,} streams, "
               f"not {meta['streams_asked']:,}; the last column extrapolates to 10 000.", ""]
    md += [
           "| target | wave | streams open at the sample | completed | errors | RSS before MiB | RSS with streams MiB | RSS 2 s after MiB | open files 2 s after | KiB per stream | upstream RSS with streams MiB | RSS at 10 000 streams MiB (extrapolated) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in idle:
        procs = [p for p in r["processes"] if p["name"] != "upstream"]
        up = [p for p in r["processes"] if p["name"] == "upstream"]
        b = sum(p["rss_before_mib"] or 0 for p in procs)
        w = sum(p["rss_with_streams_mib"] or 0 for p in procs)
        a = sum(p["rss_after_mib"] or 0 for p in procs)
        per = (w - b) * 1024 / max(r["open_at_sample"], 1)
        fds = sum(p.get("fds_after") or 0 for p in procs)
        # Only the first wave starts from a fresh process; later waves start from what it kept.
        at_10k = b + per * 10000 / 1024 if r.get("wave", 1) == 1 else None
        r["summary"] = {"rss_before_mib": b, "rss_with_streams_mib": w, "rss_after_mib": a, "kib_per_stream": per,
                        "rss_at_10000_mib": at_10k}
        md.append(f"| {r['target']} | {r.get('wave', 1)} | {r['open_at_sample']:,} | {r['completed']:,} | {r['errors']} | {b:.1f} | {w:.1f} | {a:.1f} | "
                  f"{fds:,} | {per:.1f} | {f(up[0]['rss_with_streams_mib']) if up else '–'} | {f(at_10k, 0)} |")
    md.append("")
    for r in (r for r in rows if r["scenario"] == "idle-cooldown"):
        md.append(f"- {r['target']}, {r['seconds']} s after the last wave: RSS {r['rss_kib'] / 1024:.1f} MiB, {r['fds']:,} open files.")
    md.append("")
keys = [r for r in rows if r["scenario"] == "keys"]
seed = [r for r in rows if r["scenario"] == "seed"]
if keys:
    md += ["Keys in the store (contract: start-up ≤ 200 ms with 1 000 000 keys, no change in per-request latency):", ""]
    if seed:
        s = seed[0]
        md += [f"Inserted {s['inserted']:,} keys in {s['seconds']:.1f} s; database {s['db_bytes'] / 2**20:,.0f} MiB.", ""]
    md += ["| store | start-up ms (3 starts) | req/s at c=1 | p50 ms | p99 ms | p99.9 ms | errors | RSS after start MiB | RSS after load MiB |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in keys:
        md.append(f"| {r['store']} | {', '.join(str(v) for v in r['startup_ms'])} | {f(r['rps'], 0)} | {f(r['p50_ms'], 3)} | "
                  f"{f(r['p99_ms'], 3)} | {f(r['p999_ms'], 3)} | {r['errors']} | {f(r['rss_after_start_mib'])} | {f(r['rss_after_load_mib'])} |")
    md.append("")
audit = [r for r in rows if r["scenario"] == "audit"]
if audit:
    md += ["Audit log throughput (async durability):", "",
           "| conc | seconds | requests | req/s | errors | audit rows during load | records/s | rows after drain | drain s | missing after drain | spilled | RSS MiB |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in audit:
        md.append(f"| {r['concurrency']} | {r['seconds']} | {r['requests']:,} | {f(r['rps'], 0)} | {r['errors']} | {f(r['rows_during_load'])} | "
                  f"{f(r['records_per_s'], 0)} | {f(r['rows_after_drain'])} | {r['drain_seconds']} | {f(r['records_missing_after_drain'])} | "
                  f"{r['spilled_lines']} | {f(r['rss_mib'])} |")
    md.append("")
text = "\n".join(md)
open(sys.argv[2], "w").write(text)
json.dump({"meta": meta, "results": rows}, open(sys.argv[3], "w"), indent=2)
print(text)
PY
say "written: $OUT/$STAMP.md and $OUT/$STAMP.json"
