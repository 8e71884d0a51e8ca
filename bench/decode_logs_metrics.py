"""Log and metric decoding throughput on one core: the C decoder, and upb + the Python walk.

    python bench/decode_logs_metrics.py [--items 100] [--requests 300] [--seconds 2]

Requests look like what an instrumented service exports: a resource with a dozen attributes and
one scope. Logs: records of 2-6 attributes whose values vary, message bodies with numbers in
them, trace context on most. Metrics: one export of an HTTP service's instruments, in points: 40%
request-duration histograms (15 bounds, min/max, an exemplar on some), 30% request counters, 10%
active-request up-down sums, 15% runtime gauges, 5% exponential histograms. Figures are items/s
of this thread's CPU time over timed rounds of every request: the median round and the best one
(the least disturbed by whatever else the machine runs).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as M

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_logs import decode_log_bytes, decode_logs
from opstrata.otlp.decode_metrics import decode_metric_bytes, decode_metrics
from opstrata.otlp.limits import DecodeLimits

sys.path.insert(0, str(Path(__file__).parent))
from decode import _rate

ROUTES = ["/api/orders", "/api/orders/{id}", "/api/users/{id}", "/health", "/api/cart", "/login"]
METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE"]
NOW = 1_760_000_000_000_000_000


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


RESOURCE = [
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


def make_logs(rnd: random.Random, items: int) -> bytes:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend(RESOURCE)
    sl = rl.scope_logs.add()
    sl.scope.name = "checkout.app"
    for _ in range(items):
        t = NOW + rnd.randint(0, 10**9)
        severity, text = rnd.choice([(9, "INFO")] * 6 + [(5, "DEBUG"), (13, "WARN"), (17, "ERROR")])
        route = rnd.choice(ROUTES)
        record = sl.log_records.add(
            time_unix_nano=t,
            observed_time_unix_nano=t + rnd.randint(10**4, 10**6),
            severity_number=severity,
            severity_text=text,
            body=AnyValue(
                string_value=f"{rnd.choice(METHODS)} {route} -> {rnd.choice([200, 200, 404, 500])}"
                f" in {rnd.random() * 250:.1f} ms (user {rnd.randint(1, 10**5)})"
            ),
        )
        attrs = [
            _kv("code.function", rnd.choice(["handle", "dispatch", "commit", "render"])),
            _kv("code.lineno", rnd.randint(1, 400)),
            _kv("thread.name", f"worker-{rnd.randint(0, 7)}"),
            _kv("http.route", route),
            _kv("enduser.id", f"user-{rnd.randint(1, 10**5)}"),
        ]
        if severity >= 17:
            attrs.append(_kv("exception.type", "ValueError"))
        record.attributes.extend(attrs[: rnd.randint(2, len(attrs))])
        if rnd.random() < 0.8:
            record.trace_id = rnd.randbytes(16)
            record.span_id = rnd.randbytes(8)
            record.flags = 1
    return request.SerializeToString()


def _http_attrs(rnd: random.Random) -> list[KeyValue]:
    return [
        _kv("http.request.method", rnd.choice(METHODS)),
        _kv("http.route", rnd.choice(ROUTES)),
        _kv("http.response.status_code", rnd.choice([200, 200, 201, 404, 500])),
        _kv("url.scheme", "https"),
    ]


def make_metrics(rnd: random.Random, items: int) -> bytes:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend(RESOURCE)
    sm = rm.scope_metrics.add()
    sm.scope.name = "opentelemetry.instrumentation.flask"
    sm.scope.version = "0.48b0"
    start, now = NOW - 60 * 10**9, NOW
    cumulative = M.AGGREGATION_TEMPORALITY_CUMULATIVE
    bounds = [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000]
    n_hist, n_requests, n_active, n_gauge = (items * pct // 100 for pct in (40, 30, 10, 15))
    n_exp = items - n_hist - n_requests - n_active - n_gauge

    duration = sm.metrics.add(name="http.server.request.duration", unit="ms")
    duration.histogram.aggregation_temporality = cumulative
    for _ in range(n_hist):
        counts = [rnd.randint(0, 500) for _ in range(len(bounds) + 1)]
        point = duration.histogram.data_points.add(
            start_time_unix_nano=start,
            time_unix_nano=now,
            count=sum(counts),
            sum=rnd.random() * 10**6,
            bucket_counts=counts,
            explicit_bounds=bounds,
            min=rnd.random(),
            max=rnd.random() * 10**4,
        )
        point.attributes.extend(_http_attrs(rnd))
        if rnd.random() < 0.1:
            point.exemplars.add(
                time_unix_nano=now - 10**8,
                as_double=rnd.random() * 1000,
                trace_id=rnd.randbytes(16),
                span_id=rnd.randbytes(8),
            )
    requests = sm.metrics.add(name="http.server.requests", unit="{request}")
    requests.sum.aggregation_temporality = cumulative
    requests.sum.is_monotonic = True
    for _ in range(n_requests):
        point = requests.sum.data_points.add(
            start_time_unix_nano=start, time_unix_nano=now, as_int=rnd.randint(0, 10**7)
        )
        point.attributes.extend(_http_attrs(rnd)[:3])
    active = sm.metrics.add(name="http.server.active_requests", unit="{request}")
    active.sum.aggregation_temporality = cumulative
    for _ in range(n_active):
        point = active.sum.data_points.add(
            start_time_unix_nano=start, time_unix_nano=now, as_int=rnd.randint(0, 50)
        )
        point.attributes.extend(_http_attrs(rnd)[:1] + _http_attrs(rnd)[3:])
    runtime = sm.metrics.add(name="process.runtime.cpython.memory", unit="By")
    for i in range(n_gauge):
        point = runtime.gauge.data_points.add(time_unix_nano=now, as_double=rnd.random() * 1e9)
        point.attributes.extend([_kv("type", ["rss", "vms", "heap"][i % 3]), _kv("gc.gen", i)])
    db = sm.metrics.add(name="db.client.operation.duration", unit="s")
    db.exponential_histogram.aggregation_temporality = cumulative
    for _ in range(n_exp):
        point = db.exponential_histogram.data_points.add(
            start_time_unix_nano=start,
            time_unix_nano=now,
            count=1000,
            sum=rnd.random() * 100,
            scale=3,
            zero_count=rnd.randint(0, 3),
            min=0.0001,
            max=rnd.random() * 10,
        )
        point.positive.offset = -40
        point.positive.bucket_counts.extend(rnd.randint(0, 100) for _ in range(24))
        point.attributes.extend([_kv("db.system", "postgresql"), _kv("db.operation", "SELECT")])
    return request.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100, help="log records / points per request")
    parser.add_argument("--requests", type=int, default=300, help="distinct requests")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()

    renderer = AttributeRenderer(DecodeLimits())  # one per process, as in the server
    print(f"{'items/s per core':<34} {'median':>12} {'best':>12}")
    for name, make, request_type, walk, from_bytes in [
        ("log records", make_logs, ExportLogsServiceRequest, decode_logs, decode_log_bytes),
        (
            "metric points",
            make_metrics,
            ExportMetricsServiceRequest,
            decode_metrics,
            decode_metric_bytes,
        ),
    ]:
        rnd = random.Random(42)
        payloads = [make(rnd, args.items) for _ in range(args.requests)]
        parse = request_type.FromString
        parsed = [parse(p) for p in payloads]
        for payload, message in zip(payloads, parsed, strict=True):
            # Every item stored, the same batches from both decoders, and the attribute memo warm.
            want = walk(message, renderer)
            got = from_bytes(payload, renderer)
            assert want.accepted == got.accepted == args.items
            assert [b for _, b in got.batches] == [b for _, b in want.batches]
        size = sum(map(len, payloads)) / len(payloads)
        print(f"{name}: {args.requests} requests of {args.items}, {size / 1024:.1f} KiB each")
        results = [
            (
                f"  {from_bytes.__name__} (C)",
                _rate(lambda p: from_bytes(p, renderer), payloads, args.items, args.seconds),  # noqa: B023
            ),
            ("  upb ParseFromString alone", _rate(parse, payloads, args.items, args.seconds)),
            (
                f"  {walk.__name__} walk (parsed)",
                _rate(lambda m: walk(m, renderer), parsed, args.items, args.seconds),  # noqa: B023
            ),
            (
                f"  parse + {walk.__name__}",
                _rate(lambda p: walk(parse(p), renderer), payloads, args.items, args.seconds),  # noqa: B023
            ),
        ]
        for label, (median, best) in results:
            print(f"{label:<34} {median:>12,.0f} {best:>12,.0f}")


if __name__ == "__main__":
    main()
