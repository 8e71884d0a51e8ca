"""The C decoder's cost on a request that follows one that stored no rows, builds interleaved.

    python bench/decode_after_empty.py OLD.so NEW.so [--rounds 15] [--signal spans logs metrics]

Each decoder reserves a request's columns at the sizes the previous request of its kind took
(``hints_presize`` in ``otlp/_wire.c``). Here every measured request of ``bench/ingest.py`` (100
items) follows, untimed, one that stored nothing: the same request with every item rejected
(zero trace ids; for metrics, timestamps past int64), and for metrics also a request of gauges
only, which leaves the sum and histogram tables without rows. Builds load side by side as in
``bench/decode_ab.py`` and alternate per round (reversed every other round). Prints µs of this
thread's CPU per measured decode (the decoder alone, its result dropped), median and best round.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from opstrata.otlp.decode_traces import complex_renderer
from opstrata.otlp.limits import DecodeLimits

sys.path.insert(0, str(Path(__file__).parent))
import ingest as bench_ingest  # bench/ingest.py: its request generators
from decode_ab import _FUNCTIONS, load


def rejected_spans(body: bytes) -> bytes:
    request = ExportTraceServiceRequest.FromString(body)
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.trace_id = bytes(16)
    return request.SerializeToString()


def rejected_logs(body: bytes) -> bytes:
    request = ExportLogsServiceRequest.FromString(body)
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for record in sl.log_records:
                record.trace_id = b"short"
    return request.SerializeToString()


def _points(metric):
    kind = metric.WhichOneof("data")
    return getattr(metric, kind).data_points if kind else []


def rejected_metrics(body: bytes) -> bytes:
    request = ExportMetricsServiceRequest.FromString(body)
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in _points(metric):
                    point.time_unix_nano = 2**64 - 1
    return request.SerializeToString()


def gauges_only(body: bytes) -> bytes:
    """The request's gauges, repeated until it is about as large: no sums nor histograms."""
    request = ExportMetricsServiceRequest.FromString(body)
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            gauges = [m for m in sm.metrics if m.WhichOneof("data") == "gauge"]
            del sm.metrics[:]
            sm.metrics.extend(gauges)
    base = request.SerializeToString()
    copies = max(1, round(len(body) / max(1, len(base))))
    return base * copies  # concatenated messages merge: their resource_metrics add up


PRIORS = {
    "spans": [("all rejected", rejected_spans)],
    "logs": [("all rejected", rejected_logs)],
    "metrics": [("all rejected", rejected_metrics), ("gauges only", gauges_only)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", help="paths of _wire shared objects")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--signal", nargs="+", default=list(_FUNCTIONS), choices=_FUNCTIONS)
    args = parser.parse_args()
    builds = {f"{i}:{Path(path).parent.name}": load(path) for i, path in enumerate(args.builds)}
    limits = DecodeLimits()
    render = complex_renderer(limits)
    for signal in args.signal:
        rnd = random.Random(signal)
        payloads = [bench_ingest.SIGNALS[signal].make(rnd) for _ in range(args.requests)]
        for label, make_prior in [("after itself", None), *PRIORS[signal]]:
            priors = [make_prior(p) if make_prior else p for p in payloads]
            times: dict[str, list[float]] = {name: [] for name in builds}
            for r in range(args.rounds):
                order = list(builds.items())
                for name, module in order if r % 2 == 0 else order[::-1]:
                    decode = getattr(module, _FUNCTIONS[signal])
                    spent = 0.0
                    for prior, payload in zip(priors, payloads, strict=True):
                        decode(prior, limits.max_attributes, limits.max_value_chars, render)
                        t0 = time.thread_time()
                        decode(payload, limits.max_attributes, limits.max_value_chars, render)
                        spent += time.thread_time() - t0
                    times[name].append(spent / len(payloads) * 1e6)
            cells = "  ".join(
                f"{name} {statistics.median(t):6.1f} (best {min(t):6.1f})"
                for name, t in times.items()
            )
            print(f"{signal:<8} {label:<13} us/request: {cells}", flush=True)


if __name__ == "__main__":
    main()
