"""The event time the C decoders hand over with a request's batches (``Batches.event_time``)
is exactly what ``latest_event_time`` works out from the batches themselves: the greatest of
the tables' median timestamps (the value at index n // 2 of the sorted column).

The fan-out (``CommittedBatch.of``) takes it instead of working it out again, so it must agree
for every signal and table, for protobuf and JSON bodies, whatever the order of the timestamps
(sorted, reversed, equal, few distinct values, orders that make a naive quickselect quadratic),
for odd and even counts and for requests large enough that the decoder works on a heap copy. The
Python reference decoders hand nothing over: the fan-out works it out for them.
"""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from opstrata.consumers import CommittedBatch, _median_time
from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_logs import decode_logs
from opstrata.otlp.decode_metrics import decode_metrics
from opstrata.otlp.decode_traces import decode_traces
from opstrata.otlp.decoded import Batches
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import Signal, Table
from tests import test_wire_decoder as spans
from tests import test_wire_decoder_logs as logs
from tests import test_wire_decoder_metrics as metrics
from tests.test_otlp_json import to_otlp_json

T0 = 1_760_000_000_000_000_000
LIMITS = DecodeLimits()
MODULES = {Signal.SPANS: spans, Signal.LOG_RECORDS: logs, Signal.METRIC_POINTS: metrics}


def _expected(batches: list) -> int:
    return _median_time(dict(batches))


def _check(signal: Signal, body: bytes, encoding: Encoding = Encoding.PROTOBUF) -> int:
    decoded = decode_request(signal, body, encoding, LIMITS)
    assert isinstance(decoded.batches, Batches)
    assert decoded.batches.event_time == _expected(decoded.batches)
    assert CommittedBatch.of(1, decoded.batches).latest == decoded.batches.event_time
    return len(decoded.batches)


def _orders(rnd: random.Random, n: int) -> list[list[int]]:
    """Timestamp orders of n values: random, sorted, reversed, equal, few distinct, organ
    pipe, and a median-of-three killer (the one that makes such a quickselect quadratic)."""
    values = [T0 + rnd.randrange(10**12) for _ in range(n)]
    killer = [0] * n
    half = n // 2
    for i in range(half):  # Musser's sequence for median-of-3 pivots
        killer[i] = 2 * i + 1 if i % 2 == 0 else half + i + (half % 2)
    for i in range(half, n):
        killer[i] = 2 * (i - half + 1)
    return [
        values,
        sorted(values),
        sorted(values, reverse=True),
        [T0] * n,
        [T0 + rnd.randrange(3) for _ in range(n)],
        [T0 + min(i, n - i) for i in range(n)],
        [T0 + k for k in killer],
        [0] * (n - 1) + [T0],  # times of 0: the column holds what the request said
    ]


def _spans_request(times: list[int]) -> bytes:
    request = ExportTraceServiceRequest()
    scope_spans = request.resource_spans.add().scope_spans.add()
    for i, t in enumerate(times):
        scope_spans.spans.add(
            trace_id=(i + 1).to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
            name="op",
            start_time_unix_nano=t,
            end_time_unix_nano=t + 5,
        )
    return request.SerializeToString()


def _logs_request(times: list[int]) -> bytes:
    request = ExportLogsServiceRequest()
    scope_logs = request.resource_logs.add().scope_logs.add()
    for i, t in enumerate(times):
        # a record without its own time is stored at its observed time
        if i % 3 == 0:
            scope_logs.log_records.add(observed_time_unix_nano=t + 7)
        else:
            scope_logs.log_records.add(time_unix_nano=t, observed_time_unix_nano=T0)
    return request.SerializeToString()


def _metrics_request(times: list[int]) -> bytes:
    """Points of three tables, each with its own times: the event time is the greatest of
    their medians."""
    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    gauge = scope.metrics.add(name="g").gauge
    total = scope.metrics.add(name="s").sum
    histogram = scope.metrics.add(name="h").histogram
    for i, t in enumerate(times):
        gauge.data_points.add(time_unix_nano=t, as_double=1.0)
        if i % 2:
            total.data_points.add(time_unix_nano=t + 11, as_int=i)
        if i % 5 == 0:
            histogram.data_points.add(time_unix_nano=T0 - t % 1000, count=1)
    return request.SerializeToString()


_BUILDERS = {
    Signal.SPANS: _spans_request,
    Signal.LOG_RECORDS: _logs_request,
    Signal.METRIC_POINTS: _metrics_request,
}


@pytest.mark.parametrize("signal", list(_BUILDERS))
def test_timestamp_orders_and_counts(signal: Signal) -> None:
    rnd = random.Random(signal.value)
    for n in (1, 2, 3, 4, 7, 100, 101, 255, 256, 257, 1000, 3001):
        for times in _orders(rnd, n):
            assert _check(signal, _BUILDERS[signal](times)) >= 1


@pytest.mark.parametrize("signal", list(MODULES))
def test_generated_requests_protobuf_and_json(signal: Signal) -> None:
    """The decoder tests' generated requests (every table, rejected items, odd shapes), as
    protobuf and as OTLP/JSON."""
    module = MODULES[signal]
    tables: set[Table] = set()
    for seed in range(120):
        request = module.random_request(random.Random(seed))
        body = request.SerializeToString()
        decoded = decode_request(signal, body, Encoding.PROTOBUF, LIMITS)
        assert decoded.batches.event_time == _expected(decoded.batches)
        tables.update(table for table, _ in decoded.batches)
        if seed % 4 == 0:
            _check(signal, to_otlp_json(request), Encoding.JSON)
    assert len(tables) == {Signal.SPANS: 1, Signal.LOG_RECORDS: 1}.get(signal, 5)


def test_empty_and_all_rejected_requests() -> None:
    """No rows: event time 0, as the fan-out works it out for an empty batch."""
    for signal, build in _BUILDERS.items():
        decoded = decode_request(signal, build([]), Encoding.PROTOBUF, LIMITS)
        assert decoded.batches == [] and decoded.batches.event_time == 0
    rejected = _spans_request([T0])  # the same span with an all-zero trace id
    rejected = rejected.replace((1).to_bytes(16, "big"), bytes(16))
    decoded = decode_request(Signal.SPANS, rejected, Encoding.PROTOBUF, LIMITS)
    assert decoded.rejected == 1 and decoded.batches.event_time == 0


def test_reference_decoders_leave_it_to_the_fan_out() -> None:
    """The Python walks hand no event time over; ``CommittedBatch.of`` works it out, equal to
    what the C decoder hands over for the same request."""
    renderer = AttributeRenderer(LIMITS)
    walks = [
        (Signal.SPANS, ExportTraceServiceRequest, decode_traces),
        (Signal.LOG_RECORDS, ExportLogsServiceRequest, decode_logs),
        (Signal.METRIC_POINTS, ExportMetricsServiceRequest, decode_metrics),
    ]
    for signal, message_type, walk in walks:
        body = _BUILDERS[signal]([T0 + 3 * i % 17 for i in range(50)])
        reference = walk(message_type.FromString(body), renderer)
        assert getattr(reference.batches, "event_time", -1) < 0
        fast = decode_request(signal, body, Encoding.PROTOBUF, LIMITS)
        assert CommittedBatch.of(1, reference.batches).latest == fast.batches.event_time > 0
