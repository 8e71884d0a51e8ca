"""OTLP/JSON request bodies parse into exactly the protobuf messages a binary body gives."""

from __future__ import annotations

import base64
import json
import math

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Exemplar,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    SummaryDataPoint,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from opstrata.otlp.decoded import InvalidRequest
from opstrata.otlp.otlp_json import MAX_DEPTH, message_to_json, parse_json_request

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("eee19b7ec3c1b173")
T0 = 1_718_812_345_678_000_000

# --- OTLP/JSON writer, for the tests only ---------------------------------------------------

_ID_FIELDS = {"trace_id", "span_id", "parent_span_id"}


def _ids_base64_to_hex(data: dict, descriptor: Descriptor) -> None:
    for field in descriptor.fields:
        value = data.get(field.json_name)
        if value is None:
            continue
        if field.name in _ID_FIELDS and field.type == FieldDescriptor.TYPE_BYTES:
            data[field.json_name] = base64.b64decode(value).hex()
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                _ids_base64_to_hex(item, field.message_type)


def to_otlp_dict(message: Message) -> dict:
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _ids_base64_to_hex(data, message.DESCRIPTOR)
    return data


def to_otlp_json(message: Message) -> bytes:
    return json.dumps(to_otlp_dict(message)).encode()


def kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def parse_traces(data: object) -> ExportTraceServiceRequest:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse_json_request(body, ExportTraceServiceRequest)  # type: ignore[return-value]


def spans_body(*spans: dict) -> dict:
    return {"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}


def one_span(data: object) -> Span:
    request = parse_traces(data)
    [span] = request.resource_spans[0].scope_spans[0].spans
    return span


def invalid(message_type: type[Message], body: object) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as info:
        parse_json_request(raw, message_type)
    return str(info.value)


CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

# --- requests with every feature ------------------------------------------------------------


def full_traces() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1")
    resource_spans.resource.attributes.extend(
        [kv("service.name", string_value="checkout"), kv("host.cpus", int_value=8)]
    )
    resource_spans.resource.dropped_attributes_count = 2
    scope_spans = resource_spans.scope_spans.add(schema_url="s")
    scope_spans.scope.name = "io.opentelemetry.http"
    scope_spans.scope.version = "1.2.3"
    scope_spans.scope.attributes.append(kv("scope.attr", bool_value=True))
    scope_spans.scope.dropped_attributes_count = 1
    scope_spans.spans.append(
        Span(
            trace_id=TRACE_ID,
            span_id=SPAN_ID,
            parent_span_id=PARENT_ID,
            trace_state="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
            flags=0x101,
            name="GET /cart",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=T0,
            end_time_unix_nano=T0 + 1_234_567,
            attributes=[
                kv("http.method", string_value="GET"),
                kv("http.status_code", int_value=200),
                kv("big.negative", int_value=-(2**63)),
                kv("ratio", double_value=0.25),
                kv("inf", double_value=math.inf),
                kv("ok", bool_value=False),
                kv("empty", string_value=""),
                kv("raw", bytes_value=b"\x00\xff\x10binary"),
                kv("unset"),
                kv("list", array_value={"values": [{"string_value": "a"}, {"int_value": 1}]}),
                kv("map", kvlist_value={"values": [kv("k", double_value=-1.5)]}),
            ],
            dropped_attributes_count=3,
            events=[
                Span.Event(
                    time_unix_nano=T0 + 5, name="exception", attributes=[kv("a", int_value=1)]
                ),
                Span.Event(name="no-time", dropped_attributes_count=4),
            ],
            dropped_events_count=5,
            links=[
                Span.Link(
                    trace_id=bytes(range(16)),
                    span_id=bytes(range(8)),
                    trace_state="k=v",
                    attributes=[kv("link.attr", string_value="x")],
                    dropped_attributes_count=1,
                    flags=1,
                ),
                Span.Link(trace_id=TRACE_ID, span_id=PARENT_ID),
            ],
            dropped_links_count=6,
            status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
        )
    )
    # A root span with an empty status and nothing else.
    scope_spans.spans.append(
        Span(trace_id=TRACE_ID, span_id=bytes.fromhex("00000000000000ff"), status=Status())
    )
    request.resource_spans.add()  # no resource, no scopes
    return request


def full_logs() -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add(schema_url="r")
    resource_logs.resource.attributes.append(kv("service.name", string_value="api"))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "logger"
    nested = AnyValue(
        kvlist_value={
            "values": [
                kv("msg", string_value="hello"),
                kv("tags", array_value={"values": [{"string_value": "a"}, {"bool_value": True}]}),
                kv(
                    "deep",
                    array_value={
                        "values": [
                            {"array_value": {"values": [{"kvlist_value": {"values": []}}]}},
                            {"bytes_value": b"\x01\x02"},
                            {},
                        ]
                    },
                ),
            ]
        }
    )
    for record in [
        {
            "time_unix_nano": T0,
            "observed_time_unix_nano": T0 + 1,
            "severity_number": 17,
            "severity_text": "ERROR",
            "body": nested,
            "attributes": [kv("exception.type", string_value="ValueError")],
            "dropped_attributes_count": 1,
            "flags": 1,
            "trace_id": TRACE_ID,
            "span_id": SPAN_ID,
        },
        {"body": {"bytes_value": b"\xde\xad\xbe\xef"}, "severity_number": 9},
        {"body": {"array_value": {"values": [{"int_value": -5}, {"double_value": 1e-300}]}}},
        {"body": {"string_value": ""}},
        {"body": {}},
        {},
    ]:
        scope_logs.log_records.add(**record)
    return request


def full_metrics() -> ExportMetricsServiceRequest:
    exemplars = [
        Exemplar(
            filtered_attributes=[kv("user", string_value="u1")],
            time_unix_nano=T0,
            as_double=0.5,
            span_id=SPAN_ID,
            trace_id=TRACE_ID,
        ),
        Exemplar(time_unix_nano=T0 + 1, as_int=-7),
    ]
    point_attrs = [kv("route", string_value="/cart")]
    metrics = [
        Metric(
            name="gauge",
            description="a gauge",
            unit="1",
            gauge={
                "data_points": [
                    NumberDataPoint(
                        attributes=point_attrs,
                        time_unix_nano=T0,
                        as_double=-0.0,
                        exemplars=exemplars,
                    ),
                    NumberDataPoint(time_unix_nano=T0, as_int=2**63 - 1, flags=1),
                    NumberDataPoint(time_unix_nano=T0, as_double=0.0),
                ]
            },
            metadata=[kv("meta", string_value="m")],
        ),
        Metric(
            name="sum",
            sum={
                "aggregation_temporality": CUMULATIVE,
                "is_monotonic": True,
                "data_points": [
                    NumberDataPoint(start_time_unix_nano=T0 - 10, time_unix_nano=T0, as_int=42)
                ],
            },
        ),
        Metric(
            name="histogram",
            unit="ms",
            histogram={
                "aggregation_temporality": AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA,
                "data_points": [
                    HistogramDataPoint(
                        attributes=point_attrs,
                        start_time_unix_nano=T0 - 10,
                        time_unix_nano=T0,
                        count=10,
                        sum=0.0,  # present, although zero
                        bucket_counts=[1, 2, 3, 4],
                        explicit_bounds=[0.5, 1.0, math.inf],
                        exemplars=exemplars,
                        min=-1.0,
                        max=100.5,
                    ),
                    HistogramDataPoint(time_unix_nano=T0, count=0),  # no sum/min/max
                ],
            },
        ),
        Metric(
            name="exponential",
            exponential_histogram={
                "aggregation_temporality": 1,
                "data_points": [
                    ExponentialHistogramDataPoint(
                        attributes=point_attrs,
                        time_unix_nano=T0,
                        count=12,
                        sum=-3.5,
                        scale=-2,
                        zero_count=1,
                        positive={"offset": 3, "bucket_counts": [1, 2, 3]},
                        negative={"offset": -5, "bucket_counts": [2, 0, 2**64 - 1]},
                        flags=1,
                        exemplars=exemplars,
                        min=-10.0,
                        max=8.0,
                        zero_threshold=1e-9,
                    ),
                    ExponentialHistogramDataPoint(time_unix_nano=T0, scale=20, negative={}),
                ],
            },
        ),
        Metric(
            name="summary",
            summary={
                "data_points": [
                    SummaryDataPoint(
                        attributes=point_attrs,
                        start_time_unix_nano=T0 - 1,
                        time_unix_nano=T0,
                        count=3,
                        sum=6.5,
                        quantile_values=[
                            {"quantile": 0.0, "value": 1.0},
                            {"quantile": 0.5, "value": 2.0},
                            {"quantile": 1.0, "value": 3.5},
                        ],
                        flags=1,
                    )
                ]
            },
        ),
        Metric(name="no-data"),
    ]
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.append(kv("service.name", string_value="db"))
    resource_metrics.scope_metrics.add(scope={"name": "meter"}, metrics=metrics)
    return request


@pytest.mark.parametrize("build", [full_traces, full_logs, full_metrics])
def test_round_trip(build: object) -> None:
    request = build()  # type: ignore[operator]
    body = to_otlp_json(request)
    assert TRACE_ID.hex().encode() in body  # ids in hex, not base64
    parsed = parse_json_request(body, type(request))
    assert parsed == request
    assert parsed.SerializeToString(deterministic=True) == request.SerializeToString(
        deterministic=True
    )


def test_round_trip_keeps_oneofs_and_presence() -> None:
    metrics = parse_json_request(to_otlp_json(full_metrics()), ExportMetricsServiceRequest)
    parsed = metrics.resource_metrics[0].scope_metrics[0].metrics  # type: ignore[attr-defined]
    assert [m.WhichOneof("data") for m in parsed] == [
        "gauge",
        "sum",
        "histogram",
        "exponential_histogram",
        "summary",
        None,
    ]
    points = parsed[0].gauge.data_points
    assert [p.WhichOneof("value") for p in points] == ["as_double", "as_int", "as_double"]
    assert math.copysign(1.0, points[0].as_double) == -1.0
    assert [e.WhichOneof("value") for e in points[0].exemplars] == ["as_double", "as_int"]
    histogram_points = parsed[2].histogram.data_points
    assert histogram_points[0].HasField("sum") and histogram_points[0].sum == 0.0
    assert not histogram_points[1].HasField("sum")
    exponential = parsed[3].exponential_histogram.data_points
    assert exponential[0].negative.offset == -5
    assert exponential[1].HasField("negative") and not exponential[1].HasField("positive")

    traces = parse_traces(to_otlp_json(full_traces()))
    attributes = traces.resource_spans[0].scope_spans[0].spans[0].attributes
    by_key = {a.key: a.value.WhichOneof("value") for a in attributes}
    assert by_key["empty"] == "string_value"
    assert by_key["unset"] is None
    assert traces.resource_spans[0].scope_spans[0].spans[1].HasField("status")
    assert not traces.resource_spans[1].HasField("resource")


def test_message_to_json_round_trips_and_uses_hex_ids() -> None:
    request = full_traces()
    body = message_to_json(request)
    assert b'"traceId":"5b8efff798038103d269b633813fc60c"' in body
    assert b'"parentSpanId":"eee19b7ec3c1b173"' in body
    assert b'"kind":2' in body
    assert parse_json_request(body, ExportTraceServiceRequest) == request


def test_message_to_json_replies() -> None:
    response = ExportTraceServiceResponse(
        partial_success=ExportTracePartialSuccess(rejected_spans=3, error_message="bad ids")
    )
    assert json.loads(message_to_json(response)) == {
        "partialSuccess": {"rejectedSpans": "3", "errorMessage": "bad ids"}
    }
    assert message_to_json(ExportTraceServiceResponse()) == b"{}"
    status = status_pb2.Status(code=3, message="resourceSpans[0]: expected object, got string")
    assert json.loads(message_to_json(status)) == {
        "code": 3,
        "message": "resourceSpans[0]: expected object, got string",
    }


# --- accepted spellings ---------------------------------------------------------------------


def test_empty_object_is_an_empty_request() -> None:
    assert parse_traces(b"{}") == ExportTraceServiceRequest()
    assert parse_json_request(b" { } ", ExportLogsServiceRequest) == ExportLogsServiceRequest()
    assert parse_json_request(b"{}", ExportMetricsServiceRequest) == ExportMetricsServiceRequest()


def test_int64_as_number_or_string() -> None:
    span = one_span(
        spans_body(
            {
                "startTimeUnixNano": T0,
                "endTimeUnixNano": str(T0 + 1),
                "droppedAttributesCount": "7",
                "flags": 3.0,
                "attributes": [
                    {"key": "n", "value": {"intValue": "-9223372036854775808"}},
                    {"key": "m", "value": {"intValue": 9223372036854775807}},
                    {"key": "e", "value": {"intValue": "1e3"}},
                ],
            }
        )
    )
    assert span.start_time_unix_nano == T0
    assert span.end_time_unix_nano == T0 + 1
    assert span.dropped_attributes_count == 7
    assert span.flags == 3
    assert [a.value.int_value for a in span.attributes] == [-(2**63), 2**63 - 1, 1000]
    metrics = parse_json_request(
        json.dumps(
            {
                "resourceMetrics": [
                    {
                        "scopeMetrics": [
                            {
                                "metrics": [
                                    {
                                        "histogram": {
                                            "dataPoints": [
                                                {"count": "18446744073709551615"},
                                                {"bucketCounts": ["1", 2, "3"]},
                                            ]
                                        }
                                    }
                                ]
                            }
                        ]
                    }
                ]
            }
        ).encode(),
        ExportMetricsServiceRequest,
    )
    points = metrics.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points  # type: ignore[attr-defined]
    assert points[0].count == 2**64 - 1
    assert list(points[1].bucket_counts) == [1, 2, 3]


def test_doubles_as_numbers_or_special_strings() -> None:
    points = [
        {"asDouble": "NaN"},
        {"asDouble": "Infinity"},
        {"asDouble": "-Infinity"},
        {"asDouble": 3},
        {"asDouble": "2.5"},
        {"asDouble": 1e308},
    ]
    body = {
        "resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {"dataPoints": points}}]}]}]
    }
    request = parse_json_request(json.dumps(body).encode(), ExportMetricsServiceRequest)
    values = [
        p.as_double
        for p in request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points  # type: ignore[attr-defined]
    ]
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, 3.0, 2.5, 1e308]


def test_enum_names_and_numbers() -> None:
    span = one_span(spans_body({"kind": "SPAN_KIND_CLIENT", "status": {"code": "STATUS_CODE_OK"}}))
    assert span.kind == Span.SPAN_KIND_CLIENT
    assert span.status.code == Status.STATUS_CODE_OK
    assert one_span(spans_body({"kind": "4"})).kind == Span.SPAN_KIND_PRODUCER
    # Values this version does not know: numbers are kept, unknown names read as unset.
    assert one_span(spans_body({"kind": 9})).kind == 9
    assert one_span(spans_body({"kind": "SPAN_KIND_FROM_THE_FUTURE"})).kind == 0
    logs = parse_json_request(
        b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"SEVERITY_NUMBER_WARN"}]}]}]}',
        ExportLogsServiceRequest,
    )
    assert logs.resource_logs[0].scope_logs[0].log_records[0].severity_number == 13  # type: ignore[attr-defined]


def test_snake_case_keys() -> None:
    body = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": TRACE_ID.hex(),
                                "span_id": SPAN_ID.hex(),
                                "parent_span_id": PARENT_ID.hex(),
                                "start_time_unix_nano": str(T0),
                                "attributes": [
                                    {"key": "a", "value": {"string_value": "x"}},
                                    {"key": "b", "value": {"int_value": "3"}},
                                    {"key": "c", "value": {"kvlist_value": {"values": []}}},
                                ],
                                "dropped_attributes_count": 1,
                            }
                        ]
                    }
                ]
            }
        ]
    }
    span = one_span(body)
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE_ID, SPAN_ID, PARENT_ID)
    assert span.start_time_unix_nano == T0
    assert [a.value.WhichOneof("value") for a in span.attributes] == [
        "string_value",
        "int_value",
        "kvlist_value",
    ]
    assert span.dropped_attributes_count == 1


def test_hex_ids_any_case_and_empty() -> None:
    upper = one_span(spans_body({"traceId": TRACE_ID.hex().upper(), "spanId": "EeE19B7ec3c1b174"}))
    assert (upper.trace_id, upper.span_id) == (TRACE_ID, SPAN_ID)
    empty = one_span(spans_body({"traceId": "", "spanId": "", "parentSpanId": ""}))
    assert empty.trace_id == empty.span_id == empty.parent_span_id == b""
    # Ids of the wrong length are the decoder's business (it rejects that span), not a parse error.
    assert one_span(spans_body({"traceId": "abcd"})).trace_id == b"\xab\xcd"


def test_base64_bytes_value_alphabets() -> None:
    raw = bytes([0xFB, 0xFF, 0xBF, 0x01])
    for text in (base64.b64encode(raw).decode(), "-_-_AQ", "+/+/AQ", "-_-_AQ=="):
        span = one_span(spans_body({"attributes": [{"key": "b", "value": {"bytesValue": text}}]}))
        assert span.attributes[0].value.bytes_value == raw


def test_unknown_fields_are_ignored_at_every_level() -> None:
    body = {
        "unknownTop": {"deep": [1, 2, {"x": None}]},
        "resourceSpans": [
            {
                "unknownResourceSpans": 1,
                "resource": {"attributes": [], "mystery": "m"},
                "scopeSpans": [
                    {
                        "scope": {"name": "s", "unknown": [1]},
                        "spans": [
                            {
                                "spanId": SPAN_ID.hex(),
                                "futureField": {"a": 1},
                                "status": {"code": 1, "detail": "d"},
                                "events": [{"name": "e", "extra": True}],
                                "attributes": [
                                    {"key": "k", "value": {"stringValue": "v"}, "extra": 1},
                                    {"key": "j", "value": {"stringValue": "v", "extra": 2}},
                                    {"key": "i", "value": {"newValueKind": "?"}},
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
    }
    expected = ExportTraceServiceRequest()
    resource_spans = expected.resource_spans.add(resource={})
    resource_spans.scope_spans.add(
        scope={"name": "s"},
        spans=[
            Span(
                span_id=SPAN_ID,
                status={"code": 1},
                events=[{"name": "e"}],
                attributes=[kv("k", string_value="v"), kv("j", string_value="v"), kv("i")],
            )
        ],
    )
    assert parse_traces(body) == expected


def test_null_means_not_set() -> None:
    body = {
        "resourceSpans": [
            {
                "resource": None,
                "schemaUrl": None,
                "scopeSpans": [
                    {
                        "scope": None,
                        "spans": [
                            {
                                "traceId": None,
                                "name": None,
                                "kind": None,
                                "startTimeUnixNano": None,
                                "attributes": None,
                                "status": None,
                                "events": [{"name": "e", "attributes": None}],
                                "links": [
                                    {
                                        "traceId": TRACE_ID.hex(),
                                        "attributes": [{"key": "a", "value": None}],
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
        "resourceLogs": None,
    }
    span = one_span(body)
    assert span == Span(
        events=[{"name": "e"}], links=[{"trace_id": TRACE_ID, "attributes": [{"key": "a"}]}]
    )
    assert not span.HasField("status")
    assert not parse_traces(body).resource_spans[0].HasField("resource")
    assert parse_traces({"resourceSpans": None}) == ExportTraceServiceRequest()


def test_otel_js_exporter_body() -> None:
    # As @opentelemetry/exporter-trace-otlp-http sends it (JsonTraceSerializer: hex ids,
    # nanosecond times as decimal strings, integer enums).
    body = b"""{"resourceSpans":[{"resource":{"attributes":[
      {"key":"service.name","value":{"stringValue":"frontend"}},
      {"key":"telemetry.sdk.language","value":{"stringValue":"webjs"}},
      {"key":"telemetry.sdk.name","value":{"stringValue":"opentelemetry"}},
      {"key":"telemetry.sdk.version","value":{"stringValue":"1.25.1"}}],
      "droppedAttributesCount":0},
     "scopeSpans":[{"scope":{"name":"@opentelemetry/instrumentation-fetch","version":"0.52.1"},
      "spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "parentSpanId":"eee19b7ec3c1b173","traceState":"","name":"HTTP GET","kind":2,
        "startTimeUnixNano":"1718812345678000000","endTimeUnixNano":"1718812345789000000",
        "attributes":[{"key":"http.method","value":{"stringValue":"GET"}},
          {"key":"http.url","value":{"stringValue":"https://example.com/api"}},
          {"key":"http.status_code","value":{"intValue":500}},
          {"key":"http.response_content_length","value":{"intValue":1234}},
          {"key":"http.user_agent","value":{"stringValue":"Mozilla/5.0"}},
          {"key":"retry","value":{"boolValue":false}},
          {"key":"elapsed","value":{"doubleValue":110.5}}],
        "droppedAttributesCount":0,
        "events":[{"attributes":[],"name":"fetchStart","timeUnixNano":"1718812345678100000",
          "droppedAttributesCount":0}],
        "droppedEventsCount":0,"status":{"code":2},"links":[],"droppedLinksCount":0}]}]}]}"""
    request = parse_traces(body)
    resource = request.resource_spans[0].resource
    assert resource.attributes[0] == kv("service.name", string_value="frontend")
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE_ID, SPAN_ID, PARENT_ID)
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert span.start_time_unix_nano == 1_718_812_345_678_000_000
    assert span.end_time_unix_nano - span.start_time_unix_nano == 111_000_000
    assert span.attributes[2] == kv("http.status_code", int_value=500)
    assert span.attributes[5] == kv("retry", bool_value=False)
    assert span.attributes[6] == kv("elapsed", double_value=110.5)
    assert span.events[0].time_unix_nano == 1_718_812_345_678_100_000
    assert request.resource_spans[0].scope_spans[0].scope.version == "0.52.1"


# --- errors -----------------------------------------------------------------------------------


def test_invalid_hex_names_the_field_path() -> None:
    spans = [{"traceId": TRACE_ID.hex(), "spanId": SPAN_ID.hex()} for _ in range(4)]
    spans[3]["traceId"] = "5b8efff798038103d269b633813fc6zz"
    assert (
        invalid(ExportTraceServiceRequest, spans_body(*spans))
        == "resourceSpans[0].scopeSpans[0].spans[3].traceId: not hex"
    )
    for bad in ("abc", "ab cd", "0x12", "5b8e\u00e9f"):
        message = invalid(ExportTraceServiceRequest, spans_body({"spanId": bad}))
        assert message == "resourceSpans[0].scopeSpans[0].spans[0].spanId: not hex"
    link = {"links": [{}, {"spanId": "zz"}]}
    assert invalid(ExportTraceServiceRequest, spans_body(link)).endswith("links[1].spanId: not hex")
    assert invalid(ExportTraceServiceRequest, spans_body({"traceId": 5})).endswith(
        "traceId: expected hex string, got number"
    )
    logs = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"trace_id": "xyz"}]}]}]}
    assert (
        invalid(ExportLogsServiceRequest, logs)
        == "resourceLogs[0].scopeLogs[0].logRecords[0].trace_id: not hex"
    )


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"resourceSpans": [', b"{'a': 1}", b"\xff\xfe{}", b"{} {}", b"NaN"],
)
def test_malformed_json(body: bytes) -> None:
    assert invalid(ExportTraceServiceRequest, body).startswith("malformed JSON")


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"1", b"null", b"true", b"[{}]"])
def test_top_level_must_be_an_object(body: bytes) -> None:
    assert "top level" in invalid(ExportTraceServiceRequest, body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"resourceSpans": {}}, "resourceSpans: expected array, got object"),
        ({"resourceSpans": ["x"]}, "resourceSpans[0]: expected object, got string"),
        (
            {"resourceSpans": [{"resource": []}]},
            "resourceSpans[0].resource: expected object, got array",
        ),
        (spans_body({"name": ["a"]}), "spans[0].name: expected string, got array"),
        (spans_body({"name": 5}), "spans[0].name: expected string, got number"),
        (spans_body({"kind": True}), "spans[0].kind: expected integer, got boolean"),
        (spans_body({"kind": {}}), "spans[0].kind: expected integer, got object"),
        (spans_body({"startTimeUnixNano": [1]}), "startTimeUnixNano: expected integer, got array"),
        (
            spans_body({"startTimeUnixNano": True}),
            "startTimeUnixNano: expected integer, got boolean",
        ),
        (spans_body({"startTimeUnixNano": "12 34"}), "startTimeUnixNano: not an integer: '12 34'"),
        (spans_body({"startTimeUnixNano": "1_000"}), "startTimeUnixNano: not an integer: '1_000'"),
        (spans_body({"startTimeUnixNano": 1.5}), "startTimeUnixNano: not an integer: 1.5"),
        (spans_body({"startTimeUnixNano": "1.5"}), "startTimeUnixNano: not an integer: '1.5'"),
        (spans_body({"attributes": {}}), "spans[0].attributes: expected array, got object"),
        (spans_body({"attributes": [None]}), "spans[0].attributes[0]: expected object, got null"),
        (
            spans_body({"attributes": [{"key": "a", "value": {"stringValue": "x"}}, {"key": 1}]}),
            "spans[0].attributes[1].key: expected string, got number",
        ),
        (
            spans_body({"attributes": [{"key": "a", "value": {"boolValue": "true"}}]}),
            "spans[0].attributes[0].value.boolValue: expected boolean, got string",
        ),
        (
            spans_body({"attributes": [{"key": "a", "value": {"doubleValue": "fast"}}]}),
            "attributes[0].value.doubleValue: not a number: 'fast'",
        ),
        (
            spans_body({"attributes": [{"key": "a", "value": {"bytesValue": "!!"}}]}),
            "attributes[0].value.bytesValue: not base64",
        ),
        (
            spans_body({"attributes": [{"key": "a", "value": {"arrayValue": {"values": [1]}}}]}),
            "attributes[0].value.arrayValue.values[0]: expected object, got number",
        ),
        (spans_body({"status": "ok"}), "spans[0].status: expected object, got string"),
    ],
)
def test_wrong_types_name_the_path(body: dict, message: str) -> None:
    assert invalid(ExportTraceServiceRequest, body).endswith(message)


@pytest.mark.parametrize(
    ("span", "message"),
    [
        ({"droppedAttributesCount": -1}, "droppedAttributesCount: integer out of range: -1"),
        ({"droppedAttributesCount": 2**32}, "droppedAttributesCount: integer out of range"),
        ({"flags": "4294967296"}, "flags: integer out of range"),
        ({"startTimeUnixNano": 2**64}, "startTimeUnixNano: integer out of range"),
        ({"startTimeUnixNano": "-1"}, "startTimeUnixNano: integer out of range: -1"),
        ({"kind": 2**31}, "kind: enum value out of range"),
        ({"startTimeUnixNano": "9" * 25}, "startTimeUnixNano: integer out of range"),
        ({"startTimeUnixNano": "1" * 5000}, "startTimeUnixNano: not an integer in range"),
        ({"startTimeUnixNano": "1e999999999"}, "startTimeUnixNano: integer out of range"),
        ({"startTimeUnixNano": "1e20"}, "startTimeUnixNano: integer out of range"),
        (
            {"attributes": [{"key": "a", "value": {"intValue": str(2**63)}}]},
            "attributes[0].value.intValue: integer out of range",
        ),
        (
            {"attributes": [{"key": "a", "value": {"intValue": -(2**63) - 1}}]},
            "attributes[0].value.intValue: integer out of range",
        ),
        (
            {"attributes": [{"key": "a", "value": {"doubleValue": "1e999"}}]},
            "attributes[0].value.doubleValue: number out of range",
        ),
    ],
)
def test_out_of_range_numbers(span: dict, message: str) -> None:
    assert message in invalid(ExportTraceServiceRequest, spans_body(span))


def test_two_members_of_a_oneof() -> None:
    attribute = {"key": "a", "value": {"stringValue": "x", "intValue": 1}}
    message = invalid(ExportTraceServiceRequest, spans_body({"attributes": [attribute]}))
    assert message.startswith("resourceSpans[0].scopeSpans[0].spans[0].attributes[0].value: ")
    assert "oneof 'value'" in message
    point = {"asDouble": 1.0, "as_int": 2}
    body = {
        "resourceMetrics": [{"scopeMetrics": [{"metrics": [{"sum": {"dataPoints": [point]}}]}]}]
    }
    assert "oneof 'value'" in invalid(ExportMetricsServiceRequest, body)
    metric = {"gauge": {}, "sum": {}}
    body = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]}
    assert "oneof 'data'" in invalid(ExportMetricsServiceRequest, body)


def test_invalid_unicode_is_rejected() -> None:
    body = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\\ud800x"}]}]}]}'
    with pytest.raises(InvalidRequest):
        parse_json_request(body, ExportTraceServiceRequest)


def _nested_log_body(levels: int) -> bytes:
    """A log whose body nests ``levels`` arrays; innermost a string."""
    value: dict = {"stringValue": "bottom"}
    for _ in range(levels):
        value = {"arrayValue": {"values": [value]}}
    return json.dumps(
        {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": value}]}]}]}
    ).encode()


def test_nesting_limit() -> None:
    # The request is level 1 and the log body level 5; each array adds 2 levels.
    deepest_ok = (MAX_DEPTH - 5) // 2
    request = parse_json_request(_nested_log_body(deepest_ok), ExportLogsServiceRequest)
    value = request.resource_logs[0].scope_logs[0].log_records[0].body  # type: ignore[attr-defined]
    for _ in range(deepest_ok):
        value = value.array_value.values[0]
    assert value.string_value == "bottom"

    message = invalid(ExportLogsServiceRequest, _nested_log_body(deepest_ok + 1))
    assert message.startswith("resourceLogs[0].scopeLogs[0].logRecords[0].body.arrayValue")
    assert message.endswith(f"nested deeper than {MAX_DEPTH} objects")
    assert "nested deeper" in invalid(ExportLogsServiceRequest, _nested_log_body(200))


def _nested_kvlist_body(levels: int) -> bytes:
    """A log whose body nests ``levels`` key/value lists; innermost a plain string attribute."""
    value: dict = {"stringValue": "bottom"}
    for _ in range(levels):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    return json.dumps(
        {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": value}]}]}]}
    ).encode()


def test_nesting_limit_through_plain_attributes() -> None:
    # Each key/value list adds 3 levels; the innermost KeyValue sits at level 4 + 3 * levels
    # and its (plain, fast-path) value one deeper.
    deepest_ok = (MAX_DEPTH - 5) // 3
    request = parse_json_request(_nested_kvlist_body(deepest_ok), ExportLogsServiceRequest)
    value = request.resource_logs[0].scope_logs[0].log_records[0].body  # type: ignore[attr-defined]
    for _ in range(deepest_ok):
        value = value.kvlist_value.values[0].value
    assert value.string_value == "bottom"
    message = invalid(ExportLogsServiceRequest, _nested_kvlist_body(deepest_ok + 1))
    assert message.endswith(f"nested deeper than {MAX_DEPTH} objects")


def test_absurd_nesting_does_not_hit_the_recursion_limit() -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        with pytest.raises(InvalidRequest):
            parse_json_request(body, ExportTraceServiceRequest)
    # Deep nesting inside an unknown field is refused too (it is never converted, but decoded).
    inner = b"[" * 50_000 + b"]" * 50_000
    with pytest.raises(InvalidRequest):
        parse_json_request(b'{"unknown":' + inner + b"}", ExportTraceServiceRequest)


# --- speed ----------------------------------------------------------------------------------


def _benchmark_request(spans: int = 100, attributes: int = 10) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(kv("service.name", string_value="bench"))
    scope_spans = resource_spans.scope_spans.add(scope={"name": "bench", "version": "1"})
    for i in range(spans):
        span = scope_spans.spans.add(
            trace_id=TRACE_ID,
            span_id=(i + 1).to_bytes(8, "big"),
            parent_span_id=PARENT_ID,
            name=f"span {i}",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=T0 + i,
            end_time_unix_nano=T0 + i + 1000,
            status={"code": Status.STATUS_CODE_OK},
        )
        for j in range(attributes):
            value = {"int_value": i * j} if j % 3 == 0 else {"string_value": f"value {i} {j}"}
            span.attributes.add(key=f"attribute.{j}", value=value)
    return request


def test_large_request_round_trips() -> None:
    request = _benchmark_request()
    body = to_otlp_json(request)
    proto_json = json_format.MessageToJson(request).encode()  # base64 ids, for json_format
    assert parse_json_request(body, ExportTraceServiceRequest) == request
    assert json_format.Parse(proto_json, ExportTraceServiceRequest()) == request
