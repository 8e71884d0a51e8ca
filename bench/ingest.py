"""End-to-end ingest throughput: OTLP senders against a real server, acknowledged and stored.

    python bench/ingest.py [--signal spans|logs|metrics|all] [--transport grpc|http|both]
        [--seconds 20] [--clients 2] [--concurrency 4] [--env KEY=VALUE ...] [--target ...]

Starts `opstrata serve` on a fresh data directory (unless --target), pre-encodes 200 distinct
requests of 100 items per signal, then runs one timed phase per signal and transport: --clients
sender processes keep --concurrency requests in flight each, and back off briefly and retry on
503 / UNAVAILABLE. Per phase: acknowledged items/s, stored items/s (committed counter on /metrics),
latency of the acknowledged attempt, throttled requests, peak RSS of the server's process tree
(read from /proc every 0.25 s; the memory gauges scraped at most every 2 s), and the ratio to
the upb parse rate of the same requests on one core (the ceiling), and the server's CPU time
per stored item and cores used (the figure to compare on a shared machine, where rates follow
the neighbours' load). That CPU time runs until the store has loaded what was acknowledged and
every consumer has finished every committed batch ("consumers done N s after the phase"): a
consumer that lags does its work after the senders stop, and that work is part of the items'
cost. After the server stops, the rows in its DuckDB file are compared with what was acked.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from glob import glob
from pathlib import Path

import duckdb
import grpc
from google.protobuf.internal import api_implementation
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

PER_REQUEST, POOL, T0 = 100, 200, 1_760_000_000_000_000_000
SERVICES = ["checkout", "cart", "payment", "users", "search", "catalog", "shipping", "ads"]
SERVICES += ["web", "gateway"]
ROUTES = ["/api/orders", "/api/orders/{id}", "/api/users/{id}", "/health", "/api/cart", "/login"]
METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE"]
STATUSES = [200, 200, 200, 200, 201, 404, 500]
CHILD_KINDS = [Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL]
SEVERITIES = [(9, "INFO")] * 6 + [(5, "DEBUG"), (13, "WARN"), (17, "ERROR")]
MESSAGES = ["order {n} processed in {ms} ms", "user {n} logged in", "cache miss for key {n}"]
BOUNDS = [5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 1000.0]  # 10 buckets
ANY_FIELD = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value"}
STACK = 'Traceback (most recent call last):\n  File "app.py", line 42, in create\nValueError'
THROTTLED = ("503", "UNAVAILABLE")


def _kvs(attrs: dict[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(**{ANY_FIELD[type(v)]: v})) for k, v in attrs.items()]


def _resource(rnd: random.Random, resource: object) -> None:
    """What an SDK on Kubernetes reports: 11 attributes, one of 10 services."""
    svc = rnd.choice(SERVICES)
    attrs = {
        "service.name": svc, "service.version": f"2.{len(svc)}.1", "service.namespace": "shop",
        "host.name": f"node-{rnd.randrange(20)}", "k8s.namespace.name": "prod",
        "k8s.pod.name": f"{svc}-7d9f8b6c5-{rnd.randrange(4)}", "process.pid": rnd.randrange(10**5),
        "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.language": "python",
        "telemetry.sdk.version": "1.27.0", "deployment.environment.name": "production",
    }  # fmt: skip
    resource.attributes.extend(_kvs(attrs))


def make_spans(rnd: random.Random) -> bytes:
    """Traces of 10 spans (a server root, a tree below), 8-12 attributes, 5 % exceptions."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _resource(rnd, rs.resource)
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "opentelemetry.instrumentation.flask", "0.48b0"
    for i in range(PER_REQUEST):
        if i % 10 == 0:
            trace_id, parents = rnd.randbytes(16), [b""]
        parent, start, route = rnd.choice(parents), T0 + rnd.randrange(10**9), rnd.choice(ROUTES)
        span = ss.spans.add(trace_id=trace_id, span_id=rnd.randbytes(8), parent_span_id=parent)
        span.name, span.flags = f"{rnd.choice(METHODS)} {route}", 0x101
        span.kind = rnd.choice(CHILD_KINDS) if parent else Span.SPAN_KIND_SERVER
        span.start_time_unix_nano, span.end_time_unix_nano = start, start + rnd.randrange(10**8)
        url = "https://shop.example.com" + route.replace("{id}", str(rnd.randrange(10**6)))
        attrs = {
            "http.method": rnd.choice(METHODS), "http.route": route, "url.full": url,
            "http.status_code": rnd.choice(STATUSES), "net.peer.name": f"10.0.7.{i + 10}",
            "user.id": f"user-{rnd.randrange(10**6)}", "thread.id": rnd.randrange(1, 64),
            "app.queue_seconds": rnd.random(),
        }  # fmt: skip
        if rnd.random() < 0.3:
            attrs |= {"db.system": "postgresql", "db.statement": "SELECT * FROM t WHERE id = $1"}
        if rnd.random() < 0.5:
            attrs |= {"app.cache_hit": rnd.random() < 0.5, "app.retries": rnd.randrange(3)}
        span.attributes.extend(_kvs(attrs))
        if rnd.random() < 0.05:
            event = span.events.add(time_unix_nano=start + 1000, name="exception")
            message = f"invalid order {rnd.randrange(10**6)}"
            attrs = {"exception.type": "ValueError", "exception.message": message}
            event.attributes.extend(_kvs(attrs | {"exception.stacktrace": STACK}))
            span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message=message))
        parents.append(span.span_id)
    return req.SerializeToString()


def make_logs(rnd: random.Random) -> bytes:
    """Templated message bodies, 4 attributes, trace context on 60 %."""
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    _resource(rnd, rl.resource)
    sl = rl.scope_logs.add()
    sl.scope.name = "shop.handlers"
    for _ in range(PER_REQUEST):
        t = T0 + rnd.randrange(10**9)
        rec = sl.log_records.add(time_unix_nano=t, observed_time_unix_nano=t + 5000)
        rec.severity_number, rec.severity_text = rnd.choice(SEVERITIES)
        n, ms = rnd.randrange(10**6), rnd.randrange(1, 900)
        rec.body.string_value = rnd.choice(MESSAGES).format(n=n, ms=ms)
        attrs = {"code.function": rnd.choice(["create", "get", "pay"]), "user.id": f"user-{n}"}
        rec.attributes.extend(_kvs(attrs | {"http.route": rnd.choice(ROUTES), "thread.id": ms}))
        if rnd.random() < 0.6:
            rec.trace_id, rec.span_id, rec.flags = rnd.randbytes(16), rnd.randbytes(8), 1
    return req.SerializeToString()


def make_metrics(rnd: random.Random) -> bytes:
    """40 histogram (10 buckets), 40 cumulative sum, 20 gauge points; 21 series per service."""
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _resource(rnd, rm.resource)
    sm = rm.scope_metrics.add()
    sm.scope.name = "opentelemetry.instrumentation.flask"
    hist = sm.metrics.add(name="http.server.request.duration", unit="ms").histogram
    total = sm.metrics.add(name="http.server.requests", unit="{request}").sum
    active = sm.metrics.add(name="http.server.active_requests", unit="{request}").gauge
    hist.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    total.aggregation_temporality, total.is_monotonic = AGGREGATION_TEMPORALITY_CUMULATIVE, True
    for i in range(PER_REQUEST):
        route, status = rnd.choice(ROUTES), rnd.choice(STATUSES)
        t, start = T0 + rnd.randrange(10**9), T0 - 10**12
        if i % 5 < 2:
            counts = [rnd.randrange(200) for _ in range(len(BOUNDS) + 1)]
            dp = hist.data_points.add(start_time_unix_nano=start, time_unix_nano=t)
            dp.bucket_counts[:], dp.explicit_bounds[:] = counts, BOUNDS
            dp.count, dp.sum = sum(counts), sum(counts) * rnd.uniform(5, 300)
            dp.min, dp.max = rnd.uniform(0, 5), rnd.uniform(500, 2000)
        elif i % 5 < 4:
            dp = total.data_points.add(start_time_unix_nano=start, time_unix_nano=t)
            dp.as_int = rnd.randrange(10**9)
        else:
            dp = active.data_points.add(time_unix_nano=t, as_double=rnd.uniform(0, 50))
        dp.attributes.extend(_kvs({"http.route": route, "http.response.status_code": status}))
    return req.SerializeToString()


class Signal:
    """One OTLP signal: its generator, messages, endpoints, counter label and tables."""

    def __init__(self, make, module, path: str, rejected: str, label: str, tables: str) -> None:
        service = next(iter(module.DESCRIPTOR.services_by_name.values()))
        export = service.methods_by_name["Export"]
        self.make, self.path, self.rejected, self.label = make, path, rejected, label
        self.request = getattr(module, export.input_type.name)
        self.response = getattr(module, export.output_type.name)
        self.grpc_method, self.tables = f"/{service.full_name}/Export", tables.split()


METRIC_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
METRIC_TABLES = " ".join(f"otel_metrics_{kind}" for kind in METRIC_KINDS)
SIGNALS = {
    "spans": Signal(make_spans, trace_service_pb2, "/v1/traces", "rejected_spans", "spans",
                    "otel_traces"),
    "logs": Signal(make_logs, logs_service_pb2, "/v1/logs", "rejected_log_records",
                   "log_records", "otel_logs"),
    "metrics": Signal(make_metrics, metrics_service_pb2, "/v1/metrics", "rejected_data_points",
                      "metric_points", METRIC_TABLES),
}  # fmt: skip


class RawHttp:
    """A keep-alive HTTP/1.1 connection that sends whole pre-built requests (head and body in
    one ``sendall``) and reads each reply's status line and ``content-length`` only. The
    senders share the server's two cores: ``http.client`` (its header building and its
    ``email``-based reply parsing, under 32 threads a process) cost them ~1.8 µs of CPU a
    metric point, time the server's threads then lacked (docs/performance.md, "Ingest,
    eleventh round: metric points")."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.address, self.timeout = (host, port), timeout
        self.sock: socket.socket | None = None
        self.pending = b""  # bytes read past the previous reply

    def connect(self) -> None:
        self.sock = socket.create_connection(self.address, self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def post(self, request: bytes) -> tuple[int, bytes]:
        """Send one pre-built request; its reply's (status, body)."""
        if self.sock is None:
            self.connect()
        sock = self.sock
        assert sock is not None
        sock.sendall(request)
        data = self.pending
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self._recv(sock)
        head = data[:end].lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        total = end + 4 + length
        while len(data) < total:
            data += self._recv(sock)
        self.pending = data[total:]
        if b"\r\nconnection: close" in head:
            self.close()
        return int(head[9:12]), data[end + 4 : total]

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        return chunk


def sender(signal, transport, address, payloads, concurrency, first, stride, out, go, window):
    """One sender process: ``concurrency`` threads, each keeping one request in flight."""
    sig = SIGNALS[signal]
    if transport == "grpc":
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=30)
        export = channel.unary_unary(sig.grpc_method)  # no serializers: raw bytes both ways
    host, port = address.rsplit(":", 1)
    stats, latencies, lock = Counter(), [], threading.Lock()
    if transport == "http":  # each request whole, built once: head and body
        head = (
            f"POST {sig.path} HTTP/1.1\r\nHost: {address}\r\n"
            "Content-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n"
        )
        payloads = [head.format(len(body)).encode() + body for body in payloads]

    def send(conn: RawHttp, body: bytes) -> tuple[str, bytes | str]:
        if transport == "grpc":
            try:
                return "OK", export(body, timeout=60)
            except grpc.RpcError as exc:
                return exc.code().name, exc.details() or ""
        status, data = conn.post(body)
        if status == 200:
            return "OK", data
        try:
            return str(status), status_pb2.Status.FromString(data).message
        except Exception:  # not a google.rpc.Status body
            return str(status), data[:200].decode("latin-1")

    def worker(k: int) -> None:
        rnd, local, lat = random.Random(k), Counter(), []
        conn = RawHttp(host, int(port), timeout=60)  # keep-alive
        if transport == "http":
            conn.connect()
        go.wait()
        stop, i = window[1], first + k
        while time.time() < stop:
            body, i = payloads[i % len(payloads)], i + stride
            while True:
                t0 = time.perf_counter()
                try:
                    status, data = send(conn, body)
                except (OSError, ValueError) as exc:
                    status, data = type(exc).__name__, str(exc)
                    conn.close()  # reconnects on the next request
                if status not in THROTTLED:
                    break
                local["throttled"] += 1
                time.sleep(rnd.uniform(0.05, 0.15))
                if time.time() >= stop:
                    break
            if status == "OK":
                lat.append((time.perf_counter() - t0) * 1000)
                local["acked" if time.time() <= stop else "late"] += PER_REQUEST
                reply = sig.response.FromString(data)
                local["rejected"] += getattr(reply.partial_success, sig.rejected)
            elif status not in THROTTLED:
                local[f"error {status}: {data}"[:300]] += 1
        with lock:
            stats.update(local)
            latencies.extend(lat)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    out.put("ready")
    for t in threads:
        t.join()
    out.put((dict(stats), latencies))


def scrape(api: str) -> str:
    """The server's ``/metrics`` text. Every scrape runs the memory gauges (``duckdb_memory()``
    among them) on the server's serving thread, CPU the phase would count: scrape sparingly."""
    return urllib.request.urlopen(f"http://{api}/metrics", timeout=30).read().decode()


def committed(api: str, label: str, text: str | None = None) -> float:
    text = scrape(api) if text is None else text
    found = re.search(rf'^opstrata_committed_items_total\{{signal="{label}"\}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def tree_rss(pid: int) -> list[int]:
    """Summed VmRSS in bytes, and the number of processes, of ``pid`` and its descendants."""
    total, count, todo = 0, 0, [pid]
    while todo:
        pid = todo.pop()
        try:
            total += int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1])
            for children in glob(f"/proc/{pid}/task/*/children"):
                todo.extend(int(c) for c in Path(children).read_text().split())
        except (OSError, TypeError):  # gone, or a zombie without VmRSS
            continue
        count += 1
    return [total * 1024, count]


def tree_counters(pid: int) -> tuple[float, float, int]:
    """(user CPU s, system CPU s, minor page faults) so far of ``pid`` and its live descendants.
    System time and page faults are where an allocator that hands pages back to the OS too
    soon shows: every fresh page is faulted in and zeroed by the kernel."""
    user, system, faults, todo, tick = 0.0, 0.0, 0, [pid], os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
            faults += int(fields[7])
            for children in glob(f"/proc/{pid}/task/*/children"):
                todo.extend(int(c) for c in Path(children).read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return user, system, faults


def python_thread_names(pid: int) -> dict[str, str]:
    """OS thread id -> Python thread name, through ``py-spy dump`` when it is installed (Python
    3.11 does not name its threads for the OS)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return {}
    found = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True)
    return dict(re.findall(r'^Thread (\d+) \(\w+\): "([^"]+)"', found.stdout, re.M))


def thread_cpu(pid: int, names: dict[str, str]) -> Counter:
    """CPU seconds of the server's threads by name (threads that are not Python's, such as
    DuckDB's workers, by their OS name)."""
    total, tick = Counter(), os.sysconf("SC_CLK_TCK")
    for stat in glob(f"/proc/{pid}/task/*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        tid = stat.split("/")[-2]
        name = names.get(tid) or text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        total[name] += (int(fields[11]) + int(fields[12])) / tick
    return total


def commit_stats(api: str, text: str | None = None) -> tuple[float, float]:
    """(group commits, rows committed) so far, from /metrics."""
    text = scrape(api) if text is None else text
    commits = re.search(r"^opstrata_commits_total (\S+)$", text, re.M)
    rows = re.search(r"^opstrata_commit_rows_total (\S+)$", text, re.M)
    return (float(commits[1]) if commits else 0.0, float(rows[1]) if rows else 0.0)


def consumer_lag(api: str, text: str | None = None) -> float:
    """Committed batches the server's consumers have not finished yet, summed, from /metrics."""
    text = scrape(api) if text is None else text
    return sum(
        float(v) for v in re.findall(r"^opstrata_consumer_lag_batches\{[^}]*\} (\S+)$", text, re.M)
    )


def wait_consumers(api: str, label: str, timeout: float = 120.0) -> float:
    """Seconds until the store has loaded everything acknowledged and every consumer has
    finished every committed batch (at most ``timeout``): a consumer that lags keeps working
    after the senders stop, and that work belongs to the items of the phase."""
    started, last = time.time(), -1.0
    while time.time() - started < timeout:
        text = scrape(api)  # one scrape a poll (was three: each ran the memory gauges)
        now = committed(api, label, text)
        if (
            now == last
            and consumer_lag(api, text) == 0
            and memory_gauges(api, text).get("ingest_backlog_bytes", 0.0) == 0
        ):
            break
        last = now
        time.sleep(0.25)
    return time.time() - started


MEMORY_GAUGES = re.compile(
    r"^opstrata_(resident_memory_bytes|arrow_allocated_bytes|ingest_backlog_bytes|queue_bytes"
    r"|consumer_inbox_bytes|consumer_inbox_batches|duckdb_memory_bytes|malloc_used_bytes"
    r"|malloc_free_bytes)(\{[^}]*\})? (\S+)$",
    re.M,
)


def memory_gauges(api: str, text: str | None = None) -> dict[str, float]:
    """The server's memory gauges by holder (docs/ingest.md, "Memory"), from /metrics."""
    text = scrape(api) if text is None else text
    found: dict[str, float] = {}
    for name, labels, value in MEMORY_GAUGES.findall(text):
        if name == "duckdb_memory_bytes":
            found["duckdb"] = found.get("duckdb", 0.0) + float(value)
            found["duckdb:" + labels[6:-2]] = float(value)
        else:
            found[name] = float(value)
    return found


# The peak RSS is read from /proc (free for the server) every RSS_EVERY s; the memory gauges,
# a scrape that runs ``duckdb_memory()`` on the serving thread, at most every GAUGES_EVERY s.
# Scraping at every new peak (up to twice a second while RSS grows) put 5-14 % on the serving
# thread's CPU per item (docs/performance.md, "Ingest, ninth round").
RSS_EVERY, GAUGES_EVERY = 0.25, 2.0


def rss_sampler(
    pid: int, peak: list[int], halt: threading.Event, api: str, at_peak: dict[str, float]
) -> None:
    """Peak RSS of the server's process tree, and the memory gauges near it: scraped at the
    first new peak at least GAUGES_EVERY s after the last scrape."""
    scraped = time.monotonic()  # the phase's first scrape waits GAUGES_EVERY s too
    stale = False  # a peak since the last scrape
    while True:
        now = tree_rss(pid)
        if now > peak:
            peak[:] = now
            stale = True
        if stale and time.monotonic() - scraped >= GAUGES_EVERY:
            scraped, stale = time.monotonic(), False
            # The server may be stopping: then the gauges of the last peak seen are kept.
            with contextlib.suppress(OSError):
                gauges = memory_gauges(api)
                at_peak.clear()
                at_peak.update(gauges)
        if halt.wait(RSS_EVERY):
            return


def parse_ceiling(sig: Signal, payloads: list[bytes], seconds: float = 1.5) -> float:
    """Median items/s of upb ``ParseFromString`` over the payloads, in this thread's CPU time."""
    rounds: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rounds) < 3:
        t0 = time.thread_time()
        for payload in payloads:
            sig.request().ParseFromString(payload)
        rounds.append(len(payloads) * PER_REQUEST / (time.thread_time() - t0))
    return statistics.median(rounds)


def run_phase(signal: str, transport: str, target: dict, payloads: list, args, pid) -> dict:
    """One timed phase: sender counts, stored rate, latency quantiles, server peak RSS."""
    ctx = mp.get_context("spawn")
    out, go, window = ctx.Queue(), ctx.Event(), ctx.Array("d", 2)
    c, stride = args.concurrency, args.clients * args.concurrency
    common = (signal, transport, target[transport], payloads, c)
    procs = [
        ctx.Process(target=sender, args=(*common, i * c, stride, out, go, window), daemon=True)
        for i in range(args.clients)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        assert out.get(timeout=120) == "ready"
    peak, halt, label = [0, 0], threading.Event(), SIGNALS[signal].label
    at_peak: dict[str, float] = {}
    before = committed(target["api"], label)
    commits_before = commit_stats(target["api"])
    counters_before = tree_counters(pid) if pid is not None else (0.0, 0.0, 0)
    cpu_before = sum(counters_before[:2])
    names = python_thread_names(pid) if pid is not None else {}
    threads_before = thread_cpu(pid, names) if pid is not None else Counter()
    window[0], window[1] = time.time(), time.time() + args.seconds
    go.set()
    if pid is not None:
        threading.Thread(
            target=rss_sampler, args=(pid, peak, halt, target["api"], at_peak), daemon=True
        ).start()
    time.sleep(max(0.0, window[1] - time.time()))
    items = committed(target["api"], label) - before
    elapsed = time.time() - window[0]
    # The CPU time counts until the consumers are done with what was stored in the phase (and
    # the load of what was acknowledged), so that a consumer that lags is not left out.
    drain = wait_consumers(target["api"], label)
    drained = committed(target["api"], label) - before
    settled = memory_gauges(target["api"])  # what is still held once everything is loaded
    counters = tree_counters(pid) if pid is not None else (float("nan"),) * 3
    cpu = sum(counters[:2]) - cpu_before
    system, faults = counters[1] - counters_before[1], counters[2] - counters_before[2]
    threads = thread_cpu(pid, names) if pid is not None else Counter()
    threads.subtract(threads_before)
    commits_after = commit_stats(target["api"])
    commits = commits_after[0] - commits_before[0]
    rows_per_commit = (commits_after[1] - commits_before[1]) / commits if commits else 0.0
    stored = items / elapsed
    stats, latencies = Counter(), []
    for _ in procs:
        s, lat = out.get(timeout=180)
        stats.update(s)
        latencies.extend(lat)
    for p in procs:
        p.join(30)
    halt.set()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    rss = f"{peak[0] / 2**20:.0f} MiB/{peak[1]}p" if pid is not None else "n/a"
    return {
        "acked/s": stats["acked"] / args.seconds,
        "stored/s": stored,
        "q": q,
        "rss": rss,
        # On a shared machine the rates vary with the neighbours' load; the server's CPU time
        # per stored item varies much less, so it is what to compare between versions.
        "cpu_us": cpu / drained * 1e6 if drained else float("nan"),
        "cores": cpu / elapsed,
        "system_us": system / drained * 1e6 if drained else float("nan"),
        "faults": faults / drained if drained else float("nan"),
        "threads": {name: t / drained * 1e6 for name, t in threads.most_common(8) if drained},
        "rows/commit": rows_per_commit,
        "drain": drain,
        "at_peak": dict(at_peak),
        "settled": settled,
    } | stats


def machine() -> str:
    model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    ram = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) / 2**20
    cpu = f"{model[1] if model else '?'}, {os.cpu_count()} cores, {ram:.1f} GiB RAM"
    return f"{cpu}, load average {os.getloadavg()[0]:.2f} at start"


def run_all(args, target: dict, payloads: dict, ceiling: dict, pid: int | None) -> Counter:
    """Every phase, one row each; the items acked and not rejected, per signal."""
    print("\nsignal   transport  acked/s stored/s  p50 ms  p99 ms throttled rejected", end="")
    print("      peak RSS  stored/ceiling  server CPU/item  cores")
    expected: Counter[str] = Counter()
    transports = ["grpc", "http"] if args.transport == "both" else [args.transport]
    for name in payloads:
        for transport in transports:
            r = run_phase(name, transport, target, payloads[name], args, pid)
            expected[name] += r.get("acked", 0) + r.get("late", 0) - r.get("rejected", 0)
            rates = f"{r['acked/s']:>9,.0f}{r['stored/s']:>9,.0f}"
            latency = f"{r['q'][49]:>8.1f}{r['q'][98]:>8.1f}"
            counts = f"{r.get('throttled', 0):>10}{r.get('rejected', 0):>9}{r['rss']:>14}"
            ratio = r["stored/s"] / ceiling[name]
            cpu = f"{r['cpu_us']:>14.1f} us{r['cores']:>7.2f}"
            print(f"{name:<8} {transport:<9}{rates}{latency}{counts}{ratio:>16.1%}{cpu}")
            split = ", ".join(f"{k} {v:.1f}" for k, v in r["threads"].items())
            print(
                f"    {r['rows/commit']:,.0f} rows per commit; consumers done {r['drain']:.1f} s"
                f" after the phase; CPU us/item by thread: {split}"
            )
            print(
                f"    of the server's CPU per item, system time {r['system_us']:.2f} us;"
                f" minor page faults {r['faults']:.2f} per item"
            )
            for when in ("at_peak", "settled"):
                held = ", ".join(
                    f"{k} {v / 2**20:,.0f} MiB"
                    if "bytes" in k or k.startswith("duckdb")
                    else f"{k} {v:,.0f}"
                    for k, v in r[when].items()
                )
                print(f"    memory {when.replace('_', ' ')}: {held}")
            for key, n in r.items():
                if key.startswith("error"):
                    print(f"    {n} x {key}")
    return expected


def _noop_plugin_env(consumers: int) -> dict[str, str]:
    """pip-install bench/noop_plugin into a temporary directory; the server finds it there."""
    target = tempfile.mkdtemp(prefix="opstrata-bench-noop-")
    plugin = Path(__file__).parent / "noop_plugin"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target,
         str(plugin)],
        check=True,
    )  # fmt: skip
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [target, os.environ.get("PYTHONPATH")])),
        "OPSTRATA_PLUGINS__BENCH_NOOP__CONSUMERS": str(consumers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", choices=[*SIGNALS, "all"], default="spans")
    parser.add_argument("--transport", choices=["grpc", "http", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each timed phase")
    parser.add_argument("--clients", type=int, default=2, help="sender processes")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per sender")
    parser.add_argument(
        "--consumers",
        type=int,
        help="no-op plugin consumers registered in the server (bench/noop_plugin)",
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--target", help="grpc=HOST:PORT,http=HOST:PORT,api=HOST:PORT: no server")
    args = parser.parse_args()
    signals = list(SIGNALS) if args.signal == "all" else [args.signal]
    env = dict(item.split("=", 1) for item in args.env)
    if args.consumers is not None:
        env.update(_noop_plugin_env(args.consumers))

    print(f"machine: {machine()}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"protobuf: {api_implementation.Type()}; consumers: {args.consumers}; server env: {env}")
    payloads, ceiling = {}, {}
    for name in signals:
        rnd = random.Random(name)
        payloads[name] = [SIGNALS[name].make(rnd) for _ in range(POOL)]
        ceiling[name] = parse_ceiling(SIGNALS[name], payloads[name])
        size = sum(map(len, payloads[name])) / POOL / 1024
        rate = f"upb parse ceiling {ceiling[name]:,.0f} items/s on one core"
        print(f"{name}: {POOL} requests x {PER_REQUEST} items, {size:.1f} KiB each; {rate}")

    if args.target:
        target = dict(part.split("=", 1) for part in args.target.split(","))
        run_all(args, target, payloads, ceiling, None)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.serverproc import ServerProcess

    with tempfile.TemporaryDirectory(prefix="opstrata-bench-") as data_dir:
        server = ServerProcess(Path(data_dir), env=env).start()
        names = {"grpc": "OTLP/gRPC", "http": "OTLP/HTTP", "api": "API"}
        target = {key: server.addresses[name] for key, name in names.items()}
        try:
            expected = run_all(args, target, payloads, ceiling, server.proc.pid)
        finally:
            code = server.stop() if server.proc.poll() is None else server.proc.returncode
            print(f"\nserver exit status {code}")
            for line in server.output:
                if "listening on" not in line and "opstrata: ready" not in line:
                    print(f"  server: {line.rstrip()}")
        con = duckdb.connect(str(Path(data_dir) / "opstrata.duckdb"), read_only=True)
        for name, acked in expected.items():
            count = "SELECT count(*) FROM {}"
            stored = sum(con.sql(count.format(t)).fetchall()[0][0] for t in SIGNALS[name].tables)
            verdict = "ok" if stored == acked else "MISMATCH"
            print(f"store: {name} {stored:,} rows, {acked:,} acked -> {verdict}")
        con.close()


if __name__ == "__main__":
    main()
