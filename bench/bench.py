#!/usr/bin/env python3
"""Helpers for bench/run.sh and bench/scale.sh (Python 3 standard library only).

Subcommands:
  normalize   turn one oha or wrk result into the harness's own row (JSON on stdout)
  ttfb        time to the first streamed chunk, one request at a time, on one keep-alive connection
  report      the Markdown table and JSON document from the rows of one run
  seed-keys   bulk-insert N API keys (random secret hashes) into a Portcullis SQLite store
  idle-streams  hold N concurrent slow streams open and measure a process's memory meanwhile
  count-rows  count the rows of a table in a SQLite file (read-only; 'n/a' if it has no such table)
  metric      sum the samples of Prometheus metrics whose name starts with a prefix, from a URL

Every network call goes to the address it is given; bench/*.sh only ever give loopback addresses.
"""

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import sys
import time
import urllib.request
from urllib.parse import urlsplit


# ----------------------------------------------------------------------------------------------
# normalize


def normalize_oha(data):
    summary = data.get("summary", {})
    statuses = {str(code): int(count) for code, count in (data.get("statusCodeDistribution") or {}).items()}
    error_kinds = {str(kind): int(count) for kind, count in (data.get("errorDistribution") or {}).items()}
    non_2xx = sum(count for code, count in statuses.items() if not code.startswith("2"))
    ok = sum(count for code, count in statuses.items() if code.startswith("2"))
    percentiles = data.get("latencyPercentiles") or {}

    def ms(key):
        value = percentiles.get(key)
        return None if value is None else value * 1000.0

    errors = non_2xx + sum(error_kinds.values())
    detail = dict(error_kinds)
    for code, count in statuses.items():
        if not code.startswith("2"):
            detail[f"HTTP {code}"] = count
    return {
        "requests": ok + non_2xx,
        "ok": ok,
        "rps": summary.get("requestsPerSec"),
        "p50_ms": ms("p50"),
        "p99_ms": ms("p99"),
        "p999_ms": ms("p99.9"),
        "errors": errors,
        "error_detail": detail,
    }


def normalize_wrk(data):
    # Written by the done() hook of the wrk script that run.sh generates; latencies in microseconds.
    errors = data.get("errors", {})
    total_errors = sum(int(v) for v in errors.values())
    requests = int(data.get("requests", 0))
    seconds = max(float(data.get("duration_us", 0)) / 1e6, 1e-9)
    return {
        "requests": requests,
        "ok": requests - int(errors.get("status", 0)),
        "rps": requests / seconds,
        "p50_ms": data["p50_us"] / 1000.0,
        "p99_ms": data["p99_us"] / 1000.0,
        "p999_ms": data["p999_us"] / 1000.0,
        "errors": total_errors,
        "error_detail": {k: int(v) for k, v in errors.items() if int(v) > 0},
    }


def cmd_normalize(args):
    with open(args.file, encoding="utf-8") as handle:
        text = handle.read()
    if args.tool == "wrk":
        # wrk prints its own summary first; the JSON is the last line.
        line = [line for line in text.splitlines() if line.startswith("{")][-1]
        row = normalize_wrk(json.loads(line))
    else:
        row = normalize_oha(json.loads(text))
    json.dump(row, sys.stdout)
    sys.stdout.write("\n")


# ----------------------------------------------------------------------------------------------
# a minimal HTTP/1.1 client over a raw socket (precise timing, keep-alive, chunked bodies)


class HttpConnection:
    def __init__(self, host, port, timeout=30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def close(self):
        self.sock.close()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buffer += data

    def _take(self, n):
        while len(self.buffer) < n:
            self._fill()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _line(self):
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def exchange(self, request):
        """Sends one request; returns (status, seconds to the first body byte, seconds in all, body)."""
        started = time.perf_counter()
        self.sock.sendall(request)
        status_line = self._line()
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        first = None
        body = []
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers, then the empty line
                        pass
                    break
                chunk = self._take(size)
                if first is None:
                    first = time.perf_counter()
                body.append(chunk)
                self._take(2)
        else:
            length = int(headers.get(b"content-length", b"0"))
            if length:
                while not self.buffer:
                    self._fill()
                first = time.perf_counter()
                body.append(self._take(length))
        ended = time.perf_counter()
        if first is None:
            first = ended
        if headers.get(b"connection", b"").lower() == b"close":
            raise ConnectionError("the server closed the connection")
        return status, first - started, ended - started, b"".join(body)


def build_request(url, key, body):
    parts = urlsplit(url)
    payload = body.encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return parts.hostname, parts.port or 80, head.encode() + payload


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def cmd_ttfb(args):
    host, port, request = build_request(args.url, args.key, args.body)
    conn = HttpConnection(host, port)
    firsts, totals, errors = [], [], 0
    detail = {}
    deadline = time.monotonic() + args.max_seconds
    try:
        for i in range(args.warmup + args.count):
            if time.monotonic() > deadline:
                break
            try:
                status, first, total, body = conn.exchange(request)
            except (OSError, ConnectionError, ValueError) as error:
                errors += 1
                detail[type(error).__name__] = detail.get(type(error).__name__, 0) + 1
                conn.close()
                conn = HttpConnection(host, port)
                continue
            ok = status == 200 and body.rstrip().endswith(b"data: [DONE]")
            if not ok:
                errors += 1
                detail[f"HTTP {status}"] = detail.get(f"HTTP {status}", 0) + 1
                continue
            if i >= args.warmup:
                firsts.append(first * 1000.0)
                totals.append(total * 1000.0)
    finally:
        conn.close()
    row = {
        "count": len(firsts),
        "errors": errors,
        "error_detail": detail,
        "ttfb_p50_ms": percentile(firsts, 50),
        "ttfb_p99_ms": percentile(firsts, 99),
        "ttfb_mean_ms": statistics.fmean(firsts) if firsts else None,
        "stream_p50_ms": percentile(totals, 50),
    }
    json.dump(row, sys.stdout)
    sys.stdout.write("\n")


# ----------------------------------------------------------------------------------------------
# report

TARGETS = ("direct", "nginx", "portcullis", "portcullis-jwt", "nginx-authz")
# The gateway's rows, each compared with nginx and the direct connection: key auth, and JWT auth.
GATEWAYS = ("portcullis", "portcullis-jwt")
# nginx asking Portcullis's authorizer (auth_request), compared with nginx alone.
AUTHORIZED = "nginx-authz"


def fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def cmd_report(args):
    rows = []
    with open(args.rows, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
    with open(args.meta, encoding="utf-8") as handle:
        meta = json.load(handle)
    ttfb = {}
    if args.ttfb and os.path.exists(args.ttfb):
        with open(args.ttfb, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    item = json.loads(line)
                    ttfb[item["target"]] = item

    out = []
    out.append(f"Run {meta['started']} on {meta['machine']['cpu']} ({meta['machine']['nproc']} cores), "
               f"load average before {meta['loadavg_before']}, after {meta['loadavg_after']}; "
               f"load generator {meta['loadgen']}, {meta['duration']} per cell; "
               f"nginx worker_processes {meta['nginx_workers']}; portcullis {meta['git']}.")
    out.append("")
    out.append("| scenario | conc | target | req/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU s | CPU s / 1k req | proxy peak RSS MiB | upstream CPU s |")
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    index = {}
    for row in rows:
        index[(row["scenario"], row["concurrency"], row["target"])] = row
        out.append(
            f"| {row['scenario']} | {row['concurrency']} | {row['target']} | {fmt(row['rps'], 0)} | "
            f"{fmt(row['p50_ms'], 3)} | {fmt(row['p99_ms'], 3)} | {fmt(row['p999_ms'], 3)} | {row['errors']} | "
            f"{fmt(row.get('proxy_cpu_s'))} | {fmt(row.get('cpu_per_1k_s'), 3)} | {fmt(row.get('proxy_peak_rss_mib'), 1)} | "
            f"{fmt(row.get('upstream_cpu_s'))} |"
        )
    out.append("")

    ratios = []
    if any(row["target"] in GATEWAYS for row in rows):
        out.append("Portcullis against nginx and against a direct connection "
                   "(the performance contract asks: throughput ≥ 0.8 × nginx, CPU/request ≤ 2 × nginx, added p50 ≤ 0.1 ms, added p99 ≤ 0.5 ms):")
        out.append("")
        out.append("| scenario | conc | target | throughput P÷N | CPU/req P÷N | added p50 ms P−D | added p99 ms P−D | (nginx: added p50 / p99 ms N−D) |")
        out.append("|---|---:|---|---:|---:|---:|---:|---|")
    seen = []
    for row in rows:
        key = (row["scenario"], row["concurrency"])
        if key not in seen:
            seen.append(key)
    def ratio(a, b, field):
        if not a or not b or a.get(field) in (None, 0) or b.get(field) in (None, 0):
            return None
        return a[field] / b[field]

    def diff(a, b, field):
        if not a or not b or a.get(field) is None or b.get(field) is None:
            return None
        return a[field] - b[field]

    for scenario, conc in seen:
        n = index.get((scenario, conc, "nginx"))
        d = index.get((scenario, conc, "direct"))
        for gateway in GATEWAYS:
            p = index.get((scenario, conc, gateway))
            if not p:
                continue
            item = {
                "scenario": scenario,
                "concurrency": conc,
                "target": gateway,
                "throughput_p_over_n": ratio(p, n, "rps"),
                "cpu_per_req_p_over_n": ratio(p, n, "cpu_per_1k_s"),
                "added_p50_ms_p_minus_d": diff(p, d, "p50_ms"),
                "added_p99_ms_p_minus_d": diff(p, d, "p99_ms"),
                "added_p50_ms_n_minus_d": diff(n, d, "p50_ms"),
                "added_p99_ms_n_minus_d": diff(n, d, "p99_ms"),
            }
            ratios.append(item)
            out.append(
                f"| {scenario} | {conc} | {gateway} | {fmt(item['throughput_p_over_n'])} | {fmt(item['cpu_per_req_p_over_n'])} | "
                f"{fmt(item['added_p50_ms_p_minus_d'], 3)} | {fmt(item['added_p99_ms_p_minus_d'], 3)} | "
                f"{fmt(item['added_p50_ms_n_minus_d'], 3)} / {fmt(item['added_p99_ms_n_minus_d'], 3)} |"
            )
    if ratios:
        out.append("")
    authorizer = authorizer_rows(rows, index, seen, ratio, diff)
    if authorizer:
        out.append("The authorizer: nginx asking Portcullis about every request (examples/nginx/nginx.conf, "
                   "auth_request) against nginx alone; its CPU is nginx's and Portcullis's together:")
        out.append("")
        out.append("| scenario | conc | throughput A÷N | CPU/req A÷N | added CPU ms / req A−N | of which Portcullis ms / req | added p50 ms A−N | added p99 ms A−N |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for item in authorizer:
            out.append(
                f"| {item['scenario']} | {item['concurrency']} | {fmt(item['throughput_a_over_n'])} | "
                f"{fmt(item['cpu_per_req_a_over_n'])} | {fmt(item['added_cpu_ms_per_req_a_minus_n'], 3)} | "
                f"{fmt(item['authorizer_cpu_ms_per_req'], 3)} | "
                f"{fmt(item['added_p50_ms_a_minus_n'], 3)} | {fmt(item['added_p99_ms_a_minus_n'], 3)} |"
            )
        out.append("")
    if ttfb:
        out.append(f"Time to the first streamed chunk, one request at a time ({meta.get('ttfb_count')} streams per target):")
        out.append("")
        out.append("| target | TTFB p50 ms | TTFB p99 ms | TTFB mean ms | whole stream p50 ms | errors |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for target in TARGETS:
            item = ttfb.get(target)
            if item:
                out.append(
                    f"| {target} | {fmt(item['ttfb_p50_ms'], 3)} | {fmt(item['ttfb_p99_ms'], 3)} | "
                    f"{fmt(item['ttfb_mean_ms'], 3)} | {fmt(item['stream_p50_ms'], 3)} | {item['errors']} |"
                )
        p, d = ttfb.get("portcullis"), ttfb.get("direct")
        if p and d and p["ttfb_p50_ms"] is not None and d["ttfb_p50_ms"] is not None:
            out.append("")
            out.append(f"Added time to first chunk, Portcullis − direct: p50 {p['ttfb_p50_ms'] - d['ttfb_p50_ms']:.3f} ms, "
                       f"p99 {p['ttfb_p99_ms'] - d['ttfb_p99_ms']:.3f} ms.")
        out.append("")

    markdown = "\n".join(out)
    with open(args.markdown, "w", encoding="utf-8") as handle:
        handle.write(markdown)
    document = {"meta": meta, "rows": rows, "ratios": ratios, "authorizer": authorizer, "ttfb": list(ttfb.values())}
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    sys.stdout.write(markdown)


def authorizer_rows(rows, index, cells, ratio, diff):
    """nginx-authz against nginx, per cell that has both."""
    items = []
    for scenario, conc in cells:
        a = index.get((scenario, conc, AUTHORIZED))
        n = index.get((scenario, conc, "nginx"))
        if not a or not n:
            continue
        added_cpu = diff(a, n, "cpu_per_1k_s")
        items.append({
            "scenario": scenario,
            "concurrency": conc,
            "throughput_a_over_n": ratio(a, n, "rps"),
            "cpu_per_req_a_over_n": ratio(a, n, "cpu_per_1k_s"),
            # CPU seconds per 1000 requests = CPU milliseconds per request.
            "added_cpu_ms_per_req_a_minus_n": added_cpu,
            "authorizer_cpu_ms_per_req": a.get("authorizer_cpu_per_1k_s"),
            "added_p50_ms_a_minus_n": diff(a, n, "p50_ms"),
            "added_p99_ms_a_minus_n": diff(a, n, "p99_ms"),
        })
    return items


# ----------------------------------------------------------------------------------------------
# seed-keys


def cmd_seed_keys(args):
    """Copies the one real key's row N times with fresh ids and random 32-byte secret hashes."""
    db = sqlite3.connect(args.db)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    template = db.execute(
        "SELECT id, tier, models, scopes, allowed_cidrs, limits, metadata, created_by, created_at, team "
        "FROM api_keys ORDER BY created_at LIMIT 1"
    ).fetchone()
    if template is None:
        sys.exit("seed-keys: the store has no key to copy; create one first")
    _, tier, models, scopes, cidrs, limits, metadata, created_by, created_at, team = template
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    started = time.perf_counter()
    batch = 50_000
    done = 0
    while done < args.count:
        n = min(batch, args.count - done)
        keys, secrets = [], []
        for i in range(done, done + n):
            # A ULID-shaped id (26 Crockford characters), unique by the counter in its tail.
            tail = ""
            value = i
            for _ in range(10):
                tail = alphabet[value % 32] + tail
                value //= 32
            key_id = "key_" + "01BENCH" + "0" * 9 + tail
            keys.append((key_id, f"bench-{i}", f"pcl_bench{i % 1000:03d}", team, tier, models, scopes, cidrs,
                         limits, metadata, created_by, created_at))
            secrets.append((os.urandom(32), key_id, created_at))
        with db:
            db.executemany(
                "INSERT INTO api_keys (id, name, display_prefix, team, tier, models, scopes, allowed_cidrs, limits, "
                "metadata, expires_at, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                keys,
            )
            db.executemany(
                "INSERT INTO api_key_secrets (hash, key_id, created_at, valid_until) VALUES (?, ?, ?, NULL)",
                secrets,
            )
        done += n
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    total = db.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0]
    db.close()
    json.dump({"inserted": done, "keys_in_store": total, "seconds": time.perf_counter() - started,
               "db_bytes": os.path.getsize(args.db)}, sys.stdout)
    sys.stdout.write("\n")


# ----------------------------------------------------------------------------------------------
# idle-streams


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def proc_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def idle_stream(host, port, request, gate, state):
    writer = None
    try:
        async with gate:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                state["errors"][f"HTTP {status}"] = state["errors"].get(f"HTTP {status}", 0) + 1
                return
            first = await asyncio.wait_for(reader.read(65536), 30)
            if not first:
                raise ConnectionError("closed before the first chunk")
        state["open"] += 1
        state["peak_open"] = max(state["peak_open"], state["open"])
        try:
            tail = first[-64:]
            while True:
                data = await asyncio.wait_for(reader.read(65536), state["idle_timeout"])
                if not data:
                    break
                tail = (tail + data)[-64:]
            if b"[DONE]" not in tail:
                state["errors"]["stream cut short"] = state["errors"].get("stream cut short", 0) + 1
            else:
                state["completed"] += 1
        finally:
            state["open"] -= 1
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
        name = type(error).__name__
        state["errors"][name] = state["errors"].get(name, 0) + 1
    finally:
        if writer is not None:
            writer.close()


async def idle_streams(args):
    parts = urlsplit(args.url)
    payload = args.body.encode()
    # Connection: close, so the server ends the body by closing and the reader sees EOF.
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {args.key}\r\n"
        f"Content-Type: application/json\r\nConnection: close\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    state = {"open": 0, "peak_open": 0, "completed": 0, "errors": {}, "idle_timeout": args.idle_timeout}
    before = {pid: proc_kib(pid, "VmRSS") for pid in args.pid}
    fds_before = {pid: open_fds(pid) for pid in args.pid}
    gate = asyncio.Semaphore(args.ramp)
    started = time.perf_counter()
    tasks = [asyncio.create_task(idle_stream(parts.hostname, parts.port, request, gate, state))
             for _ in range(args.streams)]
    # Wait until every stream has its first chunk (or failed), then sample memory while they idle.
    while state["open"] + state["completed"] + sum(state["errors"].values()) < args.streams:
        if time.perf_counter() - started > args.ramp_timeout:
            break
        await asyncio.sleep(0.05)
    ramp_seconds = time.perf_counter() - started
    await asyncio.sleep(args.settle)
    open_at_sample = state["open"]
    during = {pid: proc_kib(pid, "VmRSS") for pid in args.pid}
    hwm = {pid: proc_kib(pid, "VmHWM") for pid in args.pid}
    fds_during = {pid: open_fds(pid) for pid in args.pid}
    await asyncio.gather(*tasks)
    total_seconds = time.perf_counter() - started
    await asyncio.sleep(args.settle)
    after = {pid: proc_kib(pid, "VmRSS") for pid in args.pid}
    fds_after = {pid: open_fds(pid) for pid in args.pid}
    processes = []
    for pid, name in zip(args.pid, args.name):
        b, w, a = before[pid], during[pid], after[pid]
        processes.append({
            "name": name,
            "rss_before_mib": b / 1024 if b else None,
            "rss_with_streams_mib": w / 1024 if w else None,
            "rss_peak_mib": hwm[pid] / 1024 if hwm[pid] else None,
            "rss_after_mib": a / 1024 if a else None,
            "kib_per_stream": (w - b) / max(open_at_sample, 1) if b and w else None,
            "fds_before": fds_before[pid],
            "fds_with_streams": fds_during[pid],
            "fds_after": fds_after[pid],
        })
    json.dump({
        "streams": args.streams,
        "open_at_sample": open_at_sample,
        "peak_open": state["peak_open"],
        "completed": state["completed"],
        "errors": sum(state["errors"].values()),
        "error_detail": state["errors"],
        "ramp_seconds": ramp_seconds,
        "total_seconds": total_seconds,
        "processes": processes,
    }, sys.stdout)
    sys.stdout.write("\n")


def cmd_idle_streams(args):
    if len(args.name) != len(args.pid):
        sys.exit("idle-streams: give one --name per --pid")
    asyncio.run(idle_streams(args))


# ----------------------------------------------------------------------------------------------
# count-rows, metric


def cmd_count_rows(args):
    try:
        db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True, timeout=10)
        count = db.execute(f"SELECT COUNT(*) FROM {args.table}").fetchone()[0]  # noqa: S608 (a fixed name from our scripts)
        db.close()
        print(count)
    except sqlite3.Error:
        print("n/a")


def cmd_metric(args):
    try:
        with urllib.request.urlopen(args.url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        print("n/a")
        return
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(args.prefix):
            continue
        name = line.split("{")[0].split()[0]
        if args.suffix and not name.endswith(args.suffix):
            continue
        total += float(line.split()[-1])
        found = True
    print(f"{total:.0f}" if found else "n/a")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("normalize")
    p.add_argument("--tool", choices=["oha", "wrk"], required=True)
    p.add_argument("file")
    p.set_defaults(func=cmd_normalize)

    p = sub.add_parser("ttfb")
    p.add_argument("--url", required=True)
    p.add_argument("--key", default="none")
    p.add_argument("--body", required=True)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--max-seconds", type=float, default=60)
    p.set_defaults(func=cmd_ttfb)

    p = sub.add_parser("report")
    p.add_argument("--rows", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--ttfb")
    p.add_argument("--markdown", required=True)
    p.add_argument("--json", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("seed-keys")
    p.add_argument("--db", required=True)
    p.add_argument("--count", type=int, required=True)
    p.set_defaults(func=cmd_seed_keys)

    p = sub.add_parser("idle-streams")
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--body", required=True)
    p.add_argument("--streams", type=int, default=10000)
    p.add_argument("--ramp", type=int, default=200, help="connections being opened at once")
    p.add_argument("--ramp-timeout", type=float, default=60)
    p.add_argument("--idle-timeout", type=float, default=30, help="longest silence within one stream")
    p.add_argument("--settle", type=float, default=2)
    p.add_argument("--pid", type=int, action="append", default=[])
    p.add_argument("--name", action="append", default=[])
    p.set_defaults(func=cmd_idle_streams)

    p = sub.add_parser("count-rows")
    p.add_argument("--db", required=True)
    p.add_argument("--table", required=True)
    p.set_defaults(func=cmd_count_rows)

    p = sub.add_parser("metric")
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--suffix", default="")
    p.set_defaults(func=cmd_metric)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
