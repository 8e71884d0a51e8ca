"""Trace decoding throughput on one core: upb parsing, the Python walk, and the C wire decoder.

    python bench/decode.py [--spans 100] [--requests 64] [--seconds 2] [--doubles 0] [--c-only]

Requests look like what an instrumented service exports: a resource with a dozen attributes,
one scope, 100 spans of 8-12 attributes (HTTP, RPC and database conventions, with values that
vary from span to span), an exception or log event on some spans, a link on a few. Each figure
comes from timed rounds over the same set of serialized requests, in spans per second of CPU
time of this (single) thread: the median round, and the best one (the least disturbed by
whatever else the machine runs). ``--doubles N`` adds N random double attributes to every span
(bench/ingest.py's spans carry one, ``app.queue_seconds``); ``--c-only`` times the C decoder
alone, with its CPU per request.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_traces import decode_trace_bytes, decode_traces
from opstrata.otlp.limits import DecodeLimits

ROUTES = ["/api/orders", "/api/orders/{id}", "/api/users/{id}", "/health", "/api/cart", "/login"]
METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE"]
TABLES = ["orders", "users", "carts", "payments"]


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _span_attributes(rnd: random.Random, kind: int) -> list[KeyValue]:
    route = rnd.choice(ROUTES)
    if kind == Span.SPAN_KIND_CLIENT and rnd.random() < 0.5:
        table = rnd.choice(TABLES)
        attrs = [
            _kv("db.system", "postgresql"),
            _kv("db.name", "shop"),
            _kv("db.operation", "SELECT"),
            _kv("db.sql.table", table),
            _kv("db.statement", f"SELECT * FROM {table} WHERE id = ${rnd.randint(1, 9)}"),
            _kv("server.address", "db-primary.internal"),
            _kv("server.port", 5432),
            _kv("db.rows_returned", rnd.randint(0, 500)),
        ]
    else:
        attrs = [
            _kv("http.request.method", rnd.choice(METHODS)),
            _kv("http.route", route),
            _kv("url.path", route.replace("{id}", str(rnd.randint(1, 10**6)))),
            _kv("url.scheme", "https"),
            _kv("http.response.status_code", rnd.choice([200, 200, 200, 201, 404, 500])),
            _kv("server.address", "shop.example.com"),
            _kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0"),
            _kv("network.protocol.version", "1.1"),
        ]
    extra = [
        _kv("client.address", f"10.0.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}"),
        _kv("enduser.id", f"user-{rnd.randint(1, 10**5)}"),
        _kv("app.cache_hit", rnd.random() < 0.5),
        _kv("app.latency_budget", rnd.choice([0.25, 0.5, 1.0])),
    ]
    return attrs + extra[: rnd.randint(0, 4)]


def make_request(rnd: random.Random, spans: int, doubles: int = 0) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(
        [
            _kv("service.name", "checkout"),
            _kv("service.version", "2.14.1"),
            _kv("service.namespace", "shop"),
            _kv("service.instance.id", "checkout-7d9f8b6c5-x2x7q"),
            _kv("deployment.environment.name", "production"),
            _kv("host.name", "node-17"),
            _kv("host.arch", "amd64"),
            _kv("os.type", "linux"),
            _kv("process.pid", 4711),
            _kv("process.runtime.name", "CPython"),
            _kv("telemetry.sdk.name", "opentelemetry"),
            _kv("telemetry.sdk.language", "python"),
            _kv("telemetry.sdk.version", "1.27.0"),
        ]
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.flask"
    ss.scope.version = "0.48b0"
    trace_id = rnd.randbytes(16)
    parent = b""
    now = 1_760_000_000_000_000_000
    for i in range(spans):
        if i % 10 == 0:
            trace_id, parent = rnd.randbytes(16), b""
        kind = rnd.choice([Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL])
        start = now + rnd.randint(0, 10**9)
        span = ss.spans.add(
            trace_id=trace_id,
            span_id=rnd.randbytes(8),
            parent_span_id=parent,
            name=f"{rnd.choice(METHODS)} {rnd.choice(ROUTES)}",
            kind=kind,
            start_time_unix_nano=start,
            end_time_unix_nano=start + rnd.randint(10**4, 10**8),
            flags=0x101,
        )
        span.attributes.extend(_span_attributes(rnd, kind))
        span.attributes.extend(_kv(f"app.ratio_{j}", rnd.random()) for j in range(doubles))
        if rnd.random() < 0.2:
            event = span.events.add(time_unix_nano=start + 1000, name="exception")
            event.attributes.extend(
                [
                    _kv("exception.type", "ValueError"),
                    _kv("exception.message", f"invalid order id {rnd.randint(1, 10**6)}"),
                    _kv("exception.stacktrace", 'Traceback...\n  File "app.py", line 42'),
                ]
            )
            span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="ValueError"))
        if rnd.random() < 0.1:
            event = span.events.add(time_unix_nano=start + 2000, name="cache.miss")
            event.attributes.append(_kv("cache.key", f"order:{rnd.randint(1, 10**6)}"))
        if rnd.random() < 0.05:
            span.links.add(trace_id=rnd.randbytes(16), span_id=rnd.randbytes(8))
        parent = span.span_id
    return request.SerializeToString()


def _rate(fn, payloads: list[bytes], spans: int, seconds: float) -> tuple[float, float]:
    """Median and best spans/s of CPU time over rounds of ``fn`` on every payload."""
    rounds: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rounds) < 5:
        t0 = time.thread_time()
        for payload in payloads:
            fn(payload)
        rounds.append(len(payloads) * spans / (time.thread_time() - t0))
    return statistics.median(rounds), max(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=100, help="spans per request")
    parser.add_argument("--requests", type=int, default=64, help="distinct requests")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--doubles", type=int, default=0, help="random double attrs per span")
    parser.add_argument("--c-only", action="store_true", help="time the C decoder alone")
    args = parser.parse_args()

    rnd = random.Random(42)
    payloads = [make_request(rnd, args.spans, args.doubles) for _ in range(args.requests)]
    parse = ExportTraceServiceRequest.FromString
    renderer = AttributeRenderer(DecodeLimits())  # one per process, as in the server
    parsed = [parse(p) for p in payloads]
    for payload, message in zip(payloads, parsed, strict=True):  # same answers, and warm memo
        want = decode_traces(message, renderer).batches[0][1]
        assert decode_trace_bytes(payload, renderer).batches[0][1].equals(want)
    by_id = {id(p): m for p, m in zip(payloads, parsed, strict=True)}

    size = sum(map(len, payloads)) / len(payloads)
    print(f"{args.requests} requests of {args.spans} spans, {size / 1024:.1f} KiB each")
    if args.c_only:
        median, best = _rate(
            lambda p: decode_trace_bytes(p, renderer), payloads, args.spans, args.seconds
        )
        per_request = args.spans / median * 1e6
        print(
            f"decode_trace_bytes (C): {median:,.0f} spans/s median, {best:,.0f} best;"
            f" {per_request:.1f} us CPU per request (median)"
        )
        return
    results = [
        ("upb ParseFromString alone", _rate(parse, payloads, args.spans, args.seconds)),
        (
            "decode_traces walk (parsed)",
            _rate(
                lambda p: decode_traces(by_id[id(p)], renderer), payloads, args.spans, args.seconds
            ),
        ),
        (
            "parse + decode_traces",
            _rate(lambda p: decode_traces(parse(p), renderer), payloads, args.spans, args.seconds),
        ),
        (
            "decode_trace_bytes (C)",
            _rate(lambda p: decode_trace_bytes(p, renderer), payloads, args.spans, args.seconds),
        ),
    ]
    print(f"{'spans/s per core':<30} {'median':>12} {'best':>12}")
    for name, (median, best) in results:
        print(f"{name:<30} {median:>12,.0f} {best:>12,.0f}")


if __name__ == "__main__":
    main()
