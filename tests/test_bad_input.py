"""Bad input gets a clear error in the protocol's own terms, and harms nothing."""

from __future__ import annotations

import gzip
import json
import random

import grpc
import httpx
import pytest
import zstandard
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.serverproc import ServerProcess

PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _spans(n: int = 3, *, trace_id: bytes | None = None, attrs: dict | None = None) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    kv = resource_spans.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "bad-input"
    scope = resource_spans.scope_spans.add()
    for _ in range(n):
        span = scope.spans.add()
        span.trace_id = trace_id if trace_id is not None else random.randbytes(16)
        span.span_id = random.randbytes(8)
        span.name = "op"
        span.start_time_unix_nano = 1_700_000_000_000_000_000
        span.end_time_unix_nano = 1_700_000_000_000_001_000
        for key, value in (attrs or {}).items():
            a = span.attributes.add()
            a.key, a.value.string_value = key, value
    return request.SerializeToString()


def _post(server: ServerProcess, path: str, body: bytes, headers: dict) -> httpx.Response:
    return httpx.post(server.http_base + path, content=body, headers=headers, timeout=30)


def _grpc_call(server: ServerProcess, body: bytes, **kwargs: object):
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        call = channel.unary_unary(TRACE_EXPORT, lambda b: b, lambda b: b)
        return call.with_call(body, timeout=30, **kwargs)


def _status(reply: httpx.Response) -> status_pb2.Status:
    return status_pb2.Status.FromString(reply.content)


def test_malformed_protobuf_is_400_with_status(shared_server: ServerProcess) -> None:
    reply = _post(shared_server, "/v1/traces", b"\xff\xff\xff garbage", PROTOBUF)
    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/x-protobuf"
    status = _status(reply)
    assert status.code == 3 and "parse" in status.message


def test_malformed_json_is_400_with_json_status(shared_server: ServerProcess) -> None:
    reply = _post(shared_server, "/v1/traces", b'{"resourceSpans": [', JSON)
    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["code"] == 3


def test_malformed_protobuf_over_grpc_is_invalid_argument(shared_server: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _grpc_call(shared_server, b"\xff\xff\xff garbage")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_wrong_content_type_is_415(shared_server: ServerProcess) -> None:
    reply = _post(shared_server, "/v1/traces", _spans(), {"content-type": "text/plain"})
    assert reply.status_code == 415
    assert "Content-Type" in reply.json()["message"]


def test_unknown_content_encoding_is_415(shared_server: ServerProcess) -> None:
    reply = _post(shared_server, "/v1/traces", _spans(), {**PROTOBUF, "content-encoding": "br"})
    assert reply.status_code == 415


def test_zstd_body_is_accepted(shared_server: ServerProcess) -> None:
    body = zstandard.ZstdCompressor().compress(_spans(4))
    reply = _post(shared_server, "/v1/traces", body, {**PROTOBUF, "content-encoding": "zstd"})
    assert reply.status_code == 200
    assert not ExportTraceServiceResponse.FromString(reply.content).HasField("partial_success")


def test_gzip_bomb_is_413(tmp_path) -> None:
    server = ServerProcess(tmp_path / "d", env={"OPSTRATA_INGEST__MAX_REQUEST_BYTES": "1000000"})
    server.start()
    try:
        bomb = gzip.compress(b"\x00" * 50_000_000)  # ~50 KB on the wire
        reply = _post(server, "/v1/traces", bomb, {**PROTOBUF, "content-encoding": "gzip"})
        assert reply.status_code == 413
        assert _status(reply).code == 8  # RESOURCE_EXHAUSTED
        big = _spans(1, attrs={"blob": "x" * 2_000_000})
        with pytest.raises(grpc.RpcError) as info:
            _grpc_call(server, big)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _post(server, "/v1/traces", _spans(), PROTOBUF).status_code == 200
    finally:
        assert server.stop() == 0


def test_invalid_trace_id_is_partial_success(shared_server: ServerProcess) -> None:
    request = ExportTraceServiceRequest.FromString(_spans(3))
    request.resource_spans[0].scope_spans[0].spans[1].trace_id = b"\x01" * 8
    reply = _post(shared_server, "/v1/traces", request.SerializeToString(), PROTOBUF)
    assert reply.status_code == 200
    partial = ExportTraceServiceResponse.FromString(reply.content).partial_success
    assert partial.rejected_spans == 1
    assert "trace_id" in partial.error_message

    response, _ = _grpc_call(shared_server, request.SerializeToString())
    grpc_partial = ExportTraceServiceResponse.FromString(response).partial_success
    assert grpc_partial.rejected_spans == 1


def test_invalid_json_id_is_400_and_valid_json_round_trips(shared_server: ServerProcess) -> None:
    span = {
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "spanId": "b7ad6b7169203331",
        "name": "json-span",
        "kind": 2,
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": 1700000000000001000,
        "unknownField": {"ignored": True},
    }
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    reply = _post(shared_server, "/v1/traces", json.dumps(body).encode(), JSON)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    stored = shared_server.api("/api/v1/traces/0af7651916cd43dd8448eb211c80319c").json()
    assert stored["spans"][0]["name"] == "json-span"
    assert stored["spans"][0]["kind"] == "Server"
    assert stored["spans"][0]["duration_nano"] == 1000

    span["traceId"] = "not-hex-at-all"
    reply = _post(shared_server, "/v1/traces", json.dumps(body).encode(), JSON)
    assert reply.status_code == 400
    assert "traceId" in reply.json()["message"]


def test_empty_requests_succeed(shared_server: ServerProcess) -> None:
    assert _post(shared_server, "/v1/traces", b"", PROTOBUF).status_code == 200
    assert _post(shared_server, "/v1/logs", b"{}", JSON).status_code == 200
    assert _post(shared_server, "/v1/metrics", b"{}", JSON).json() == {}


def test_invalid_utf8_is_400(shared_server: ServerProcess) -> None:
    body = _spans(1).replace(b"bad-input", b"bad\xff\xfeput")
    reply = _post(shared_server, "/v1/traces", body, PROTOBUF)
    assert reply.status_code == 400


def test_deeply_nested_anyvalue_does_not_hurt(shared_server: ServerProcess) -> None:
    value: dict = {"stringValue": "leaf"}
    for _ in range(200):
        value = {"arrayValue": {"values": [value]}}
    span = {
        "traceId": random.randbytes(16).hex(),
        "spanId": random.randbytes(8).hex(),
        "name": "deep",
        "attributes": [{"key": "deep", "value": value}],
    }
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    reply = _post(shared_server, "/v1/traces", body, JSON)
    assert reply.status_code in (200, 400)
    assert shared_server.api("/healthz").status_code == 200


def test_attribute_limits_truncate_and_count(shared_server: ServerProcess) -> None:
    trace_id = random.randbytes(16)
    attrs = {f"k{i}": "v" for i in range(300)}
    attrs["huge"] = "y" * 100_000
    reply = _post(shared_server, "/v1/traces", _spans(1, trace_id=trace_id, attrs=attrs), PROTOBUF)
    assert reply.status_code == 200
    partial = ExportTraceServiceResponse.FromString(reply.content).partial_success
    assert partial.rejected_spans == 0
    assert "dropped" in partial.error_message
    [span] = shared_server.api(f"/api/v1/traces/{trace_id.hex()}").json()["spans"]
    assert len(span["attributes"]) == 128
    metrics = shared_server.api("/metrics").text
    assert 'opstrata_truncations_total{kind="attribute_dropped",signal="spans"}' in metrics


def test_logs_request_posted_to_traces_stores_nothing_as_spans(
    shared_server: ServerProcess,
) -> None:
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.time_unix_nano = 1_700_000_000_000_000_000
    record.body.string_value = "hello"
    reply = _post(shared_server, "/v1/traces", logs.SerializeToString(), PROTOBUF)
    assert reply.status_code in (200, 400)
    if reply.status_code == 200:
        partial = ExportTraceServiceResponse.FromString(reply.content).partial_success
        assert partial.rejected_spans == 1
    json_logs = {
        "resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "x"}}]}]}]
    }
    reply = _post(shared_server, "/v1/traces", json.dumps(json_logs).encode(), JSON)
    assert reply.status_code == 400
    assert "/v1/logs" in reply.json()["message"]


def test_unknown_path_and_method(shared_server: ServerProcess) -> None:
    assert _post(shared_server, "/v1/nothing", b"", PROTOBUF).status_code == 404
    assert httpx.get(shared_server.http_base + "/v1/traces").status_code == 405


def test_server_survives_and_keeps_data(shared_server: ServerProcess) -> None:
    trace_id = random.randbytes(16)
    assert (
        _post(shared_server, "/v1/traces", _spans(2, trace_id=trace_id), PROTOBUF).status_code
        == 200
    )
    for garbage in (b"\x0a\xff", b"\x0a\x05\x0a\x03\x0a", random.randbytes(5000)):
        _post(shared_server, "/v1/traces", garbage, PROTOBUF)
    assert shared_server.api(f"/api/v1/traces/{trace_id.hex()}").json()["span_count"] == 2


def test_zstd_body_of_several_frames_is_read_whole(shared_server: ServerProcess) -> None:
    first, second = _spans(2), _spans(2)
    compressor = zstandard.ZstdCompressor()
    # Concatenated protobuf messages merge; concatenated zstd frames are one stream.
    body = compressor.compress(first) + compressor.compress(second)
    reply = _post(shared_server, "/v1/traces", body, {**PROTOBUF, "content-encoding": "zstd"})
    assert reply.status_code == 200
    for part in (first, second):
        span = ExportTraceServiceRequest.FromString(part).resource_spans[0].scope_spans[0].spans[0]
        stored = shared_server.api(f"/api/v1/traces/{span.trace_id.hex()}")
        assert stored.status_code == 200
