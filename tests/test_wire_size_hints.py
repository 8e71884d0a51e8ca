"""The C decoders' own sizes. They reserve each column at what the previous request of the
same kind needed, scaled to the new request's size (``hints_presize`` in ``otlp/_wire.c``). That
state outlives a call: a request of about the same size but another shape must decode exactly as
the reference does, whatever came before it. And they count the bytes they export.

Requests of every signal are decoded in an order that keeps neighbours within a factor of two in
size (so that the hints apply) while their shapes differ, then from the largest to the smallest
and back, and interleaved with crafted pairs of one size and opposite shapes (a few long values
against many short items).
"""

from __future__ import annotations

import itertools
import random

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_logs import decode_log_bytes
from opstrata.otlp.decode_metrics import decode_metric_bytes
from opstrata.otlp.decode_traces import decode_trace_bytes
from opstrata.otlp.limits import DecodeLimits
from tests import test_wire_decoder as spans
from tests import test_wire_decoder_logs as logs
from tests import test_wire_decoder_metrics as metrics


def _by_size(module, seeds: range) -> list[bytes]:
    bodies = [module.random_request(random.Random(s)).SerializeToString() for s in seeds]
    return sorted((b for b in bodies if b), key=len)


def _decode_in_orders(module, bodies: list[bytes]) -> int:
    """Every body after its neighbour in size, then the other way round, then far apart."""
    limits = DecodeLimits()
    accepted = 0
    order = (
        bodies + bodies[::-1] + [b for pair in zip(bodies, bodies[::-1], strict=True) for b in pair]
    )
    for body in order:
        accepted += module.assert_same(body, limits)
    return accepted


def test_spans_after_spans_of_other_shapes() -> None:
    bodies = _by_size(spans, range(150))
    assert len(bodies) > 100
    assert _decode_in_orders(spans, bodies) == 4 * len(bodies)


def test_logs_after_logs_of_other_shapes() -> None:
    bodies = _by_size(logs, range(150))
    assert len(bodies) > 100
    assert _decode_in_orders(logs, bodies) == 4 * len(bodies)


def test_metrics_after_metrics_of_other_shapes() -> None:
    bodies = _by_size(metrics, range(150))
    assert len(bodies) > 100
    assert _decode_in_orders(metrics, bodies) == 4 * len(bodies)


def _text_kv(key: str, text: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=text))


def test_one_size_opposite_shapes() -> None:
    """Same byte size, opposite shapes: one item of long values, then hundreds of short items
    (the hinted columns are far too big for some and far too small for others), and back."""
    limits = DecodeLimits()
    wide = ExportLogsServiceRequest()
    record = wide.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=1)
    record.body.string_value = "x" * 20_000
    record.attributes.append(_text_kv("k", "v" * 2_000))
    many = ExportLogsServiceRequest()
    scope_logs = many.resource_logs.add().scope_logs.add()
    while many.ByteSize() < wide.ByteSize():
        scope_logs.log_records.add(time_unix_nano=2, body=AnyValue(string_value="hi"))

    long_span = ExportTraceServiceRequest()
    span = (
        long_span.resource_spans.add()
        .scope_spans.add()
        .spans.add(trace_id=b"t" * 16, span_id=b"s" * 8, name="n" * 20_000)
    )
    span.attributes.append(_text_kv("k", "v" * 2_000))
    short_spans = ExportTraceServiceRequest()
    scope_spans = short_spans.resource_spans.add().scope_spans.add()
    while short_spans.ByteSize() < long_span.ByteSize():
        scope_spans.spans.add(trace_id=b"t" * 16, span_id=b"s" * 8, name="n")

    one_point = ExportMetricsServiceRequest()
    gauge = one_point.resource_metrics.add().scope_metrics.add().metrics.add(name="g" * 20_000)
    gauge.gauge.data_points.add(time_unix_nano=1, as_double=1.5)
    many_points = ExportMetricsServiceRequest()
    metric = many_points.resource_metrics.add().scope_metrics.add().metrics.add(name="h")
    while many_points.ByteSize() < one_point.ByteSize():
        point = metric.histogram.data_points.add(time_unix_nano=1, count=3)
        point.bucket_counts[:] = [1, 2]
        point.explicit_bounds[:] = [0.5]

    cases = [
        (logs, wide, many),
        (spans, long_span, short_spans),
        (metrics, one_point, many_points),
    ]
    for module, first, second in cases:
        a, b = first.SerializeToString(), second.SerializeToString()
        assert len(b) // 2 <= len(a) <= 2 * len(b)  # close enough in size to be hinted
        for body in (a, b, a, b, b, a):
            assert module.assert_same(body, limits)


def test_buffer_bytes_as_arrow_counts_them() -> None:
    """The C decoders count the bytes of the buffers they export (``buffer_bytes``, what
    admission and the fan-out's inboxes count): exactly what pyarrow's
    ``get_total_buffer_size`` finds in the imported batches, for every table and shape (null
    bitmaps, packed booleans, empty columns, lists of structs)."""
    renderer = AttributeRenderer(DecodeLimits())
    decoders = [
        (spans, decode_trace_bytes),
        (logs, decode_log_bytes),
        (metrics, decode_metric_bytes),
    ]
    tables = set()
    for module, decode in decoders:
        for seed in range(200):
            body = module.random_request(random.Random(seed)).SerializeToString()
            decoded = decode(body, renderer)
            counted = sum(batch.get_total_buffer_size() for _, batch in decoded.batches)
            assert decoded.buffer_bytes == counted
            tables.update(table for table, _ in decoded.batches)
    assert len(tables) == 7  # every table, of the three signals, was decoded and counted


def _reject_all(module, request):
    """The request with every item invalid (so that it stores no rows), about as large."""
    request = type(request).FromString(request.SerializeToString())
    if module is spans:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.trace_id = bytes(16)
    elif module is logs:
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    record.trace_id = b"short"
    else:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points if kind else []:
                        point.time_unix_nano = 2**64 - 1
    return request


def test_after_a_request_that_stored_nothing() -> None:
    """A request that stored no rows (every item rejected) leaves the sizes learnt before it:
    the next requests, of about its size and of other shapes, decode as the reference does."""
    limits = DecodeLimits()
    renderer = AttributeRenderer(limits)
    decoders = [
        (spans, decode_trace_bytes),
        (logs, decode_log_bytes),
        (metrics, decode_metric_bytes),
    ]
    for module, decode in decoders:
        requests = [module.random_request(random.Random(s)) for s in range(60)]
        requests = [r for r in requests if r.ByteSize() > 200]
        rejected_seen = 0
        for before, after in itertools.pairwise(requests):
            empty = _reject_all(module, before).SerializeToString()
            decoded = decode(empty, renderer)
            assert decoded.accepted == 0 and not decoded.batches
            rejected_seen += decoded.rejected > 0
            assert module.assert_same(before.SerializeToString(), limits)
            assert module.assert_same(empty, limits)
            assert module.assert_same(after.SerializeToString(), limits)
            assert module.assert_same(empty, limits)
            assert module.assert_same(before.SerializeToString(), limits)
        assert rejected_seen > len(requests) // 2


def test_metrics_after_requests_without_some_tables() -> None:
    """A metrics request fills one table and not the others (whose sizes it then does not
    learn); the next request fills those others, at about the same size, as the reference."""
    limits = DecodeLimits()
    renderer = AttributeRenderer(limits)
    by_table: dict[frozenset, list[bytes]] = {}
    for seed in range(300):
        body = metrics.random_request(random.Random(seed)).SerializeToString()
        tables = frozenset(t for t, _ in decode_metric_bytes(body, renderer).batches)
        if len(tables) == 1 and len(body) > 200:
            by_table.setdefault(tables, []).append(body)
    assert len(by_table) >= 3  # requests of one table each, of several tables
    singles = [bodies[:8] for bodies in by_table.values()]
    order = [body for group in zip(*singles, strict=False) for body in group]
    for body in order + order[::-1]:
        assert metrics.assert_same(body, limits)
