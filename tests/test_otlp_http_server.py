"""The OTLP/HTTP listener's HTTP/1.1 behaviour, over raw sockets and ``http.client``.

The receiver is its own asyncio protocol on httptools (otlp/http_receiver.py), not uvicorn:
these hold it to what a client of the ASGI receiver got — keep-alive, chunked bodies, pipelined
requests answered in order, ``Expect: 100-continue``, a body too large refused on its
``Content-Length`` before it is sent, HTTP/1.0 and ``Connection: close``, malformed HTTP.
"""

from __future__ import annotations

import http.client
import random
import socket

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.serverproc import ServerProcess

PROTOBUF = "application/x-protobuf"


def _spans(trace_id: bytes, n: int = 3) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    kv = resource_spans.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "http-server"
    scope = resource_spans.scope_spans.add()
    for index in range(n):
        span = scope.spans.add()
        span.trace_id = trace_id
        span.span_id = random.randbytes(8)
        span.name = f"op-{index}"
        span.start_time_unix_nano = 1_700_000_000_000_000_000
        span.end_time_unix_nano = 1_700_000_000_000_001_000
    return request.SerializeToString()


def _address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.addresses["OTLP/HTTP"].rsplit(":", 1)
    return host, int(port)


def _stored_names(server: ServerProcess, trace_id: bytes) -> list[str]:
    reply = server.api(f"/api/v1/traces/{trace_id.hex()}")
    assert reply.status_code == 200, reply.text
    return sorted(span["name"] for span in reply.json()["spans"])


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response off a raw socket (``buffer`` keeps what was read past it)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def _request(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    head = (
        f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def test_keep_alive_and_chunked_bodies(shared_server: ServerProcess) -> None:
    trace_id = random.randbytes(16)
    connection = http.client.HTTPConnection(*_address(shared_server), timeout=30)
    connection.request("POST", "/v1/traces", _spans(trace_id, 2), {"Content-Type": PROTOBUF})
    first = connection.getresponse()
    assert first.status == 200
    assert ExportTraceServiceResponse.FromString(first.read()) == ExportTraceServiceResponse()
    sock = connection.sock
    # The same connection, a chunked body (no Content-Length), in several chunks.
    body = _spans(trace_id, 3)
    chunks = iter([body[:10], body[10:200], body[200:]])
    connection.request(
        "POST", "/v1/traces", chunks, {"Content-Type": PROTOBUF}, encode_chunked=True
    )
    second = connection.getresponse()
    assert second.status == 200
    second.read()
    assert connection.sock is sock, "the connection was not kept alive"
    connection.close()
    assert _stored_names(shared_server, trace_id) == ["op-0", "op-0", "op-1", "op-1", "op-2"]


def test_pipelined_requests_are_answered_in_order(shared_server: ServerProcess) -> None:
    trace_id = random.randbytes(16)
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        # A request that is logged (its reply waits for the fsync), then one answered at once:
        # the second reply must still come second.
        sock.sendall(
            _request("/v1/traces", _spans(trace_id, 2))
            + _request("/v1/nothing", b"x")
            + _request("/v1/traces", b"\xff\xff\xff")
        )
        buffer = bytearray()
        statuses = [_read_response(sock, buffer)[0] for _ in range(3)]
    assert statuses == [200, 404, 400]
    assert _stored_names(shared_server, trace_id) == ["op-0", "op-1"]


def test_too_large_is_refused_before_the_body(shared_server: ServerProcess) -> None:
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        # 1 GiB announced, nothing sent: the reply comes on the headers alone.
        sock.sendall(
            f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n".encode()
        )
        status, headers, _ = _read_response(sock, bytearray())
    assert status == 413
    assert headers["content-type"] == PROTOBUF


def test_expect_100_continue(shared_server: ServerProcess) -> None:
    trace_id = random.randbytes(16)
    body = _spans(trace_id, 1)
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        head = _request("/v1/traces", b"", "Expect: 100-continue\r\n").replace(
            b"Content-Length: 0", f"Content-Length: {len(body)}".encode()
        )
        sock.sendall(head)
        buffer = bytearray()
        status, _, _ = _read_response(sock, buffer)
        assert status == 100
        sock.sendall(body)
        status, _, _ = _read_response(sock, buffer)
    assert status == 200
    assert _stored_names(shared_server, trace_id) == ["op-0"]


def test_http_1_0_and_connection_close_end_the_connection(shared_server: ServerProcess) -> None:
    for request in (
        _request("/v1/traces", _spans(random.randbytes(16), 1), version="1.0"),
        _request("/v1/traces", _spans(random.randbytes(16), 1), "Connection: close\r\n"),
    ):
        with socket.create_connection(_address(shared_server), timeout=30) as sock:
            sock.sendall(request)
            buffer = bytearray()
            status, headers, _ = _read_response(sock, buffer)
            assert status == 200
            assert headers.get("connection") == "close"
            assert sock.recv(1) == b"", "the server kept the connection open"


def test_malformed_http_is_400_and_the_server_goes_on(shared_server: ServerProcess) -> None:
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
        status, headers, _ = _read_response(sock, bytearray())
        assert status == 400
        assert headers.get("connection") == "close"
        assert sock.recv(1) == b""
    trace_id = random.randbytes(16)
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        sock.sendall(_request("/v1/traces", _spans(trace_id, 1)))
        assert _read_response(sock, bytearray())[0] == 200
    assert _stored_names(shared_server, trace_id) == ["op-0"]
