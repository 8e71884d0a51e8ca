"""The OTLP/HTTP listener's HTTP/1.1 behaviour, over raw sockets and ``http.client``.

The receiver is its own asyncio protocol on httptools (otlp/http_receiver.py), not uvicorn:
these hold it to what a client of the ASGI receiver got — keep-alive, chunked bodies, pipelined
requests answered in order, ``Expect: 100-continue``, a body too large refused on its
``Content-Length`` before it is sent, HTTP/1.0 and ``Connection: close``, malformed HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from opstrata.ingest import IngestPipeline
from opstrata.otlp.http_receiver import OtlpHttpServer
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import IngestSettings
from opstrata.storage.duckdb_store import DuckDBStore
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


# -- review fixes: what a client can hold, and replies it must not get --------------------------


class _InProcessServer:
    """The listener in this process on a real pipeline and store, with a 1 s keep-alive: the
    timeouts can be seen in a test's time (the ``serve`` process has 30 s)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.server: OtlpHttpServer | None = None
        self.address: tuple[str, int] = ("", 0)
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))

    def __enter__(self) -> _InProcessServer:
        self._thread.start()
        assert self._ready.wait(60), "the in-process listener did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        self.loop.close()

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        store = DuckDBStore(self.data_dir)
        store.start()
        pipeline = IngestPipeline(
            IngestSettings(), store, SelfMetrics(), log_dir=self.data_dir / "ingest-log"
        )
        pipeline.start()
        sock = socket.create_server(("127.0.0.1", 0))
        self.address = sock.getsockname()[:2]
        self.server = OtlpHttpServer(pipeline, 1 << 20, keep_alive_seconds=1.0)
        await self.server.start(sock)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            self.server.close()
            await self.server.wait_closed(2.0)
            await pipeline.shutdown(5.0)
            store.shutdown()

    def connections(self) -> int:
        assert self.server is not None
        return len(self.server.connections)


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_InProcessServer]:
    with _InProcessServer(tmp_path_factory.mktemp("quick")) as server:
        yield server


def _until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _closed_by_server(sock: socket.socket, buffer: bytearray, timeout: float = 10.0) -> bool:
    """Read (keeping what comes in ``buffer``) until the server closes; False on a timeout."""
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            buffer += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_a_client_that_reads_no_replies_is_not_read_either(quick_server: _InProcessServer) -> None:
    # Pipelined requests answered at once (404), replies never read: the server must stop
    # reading rather than buffer the replies (it used to take all it was sent and grow).
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(quick_server.address)
    blob = b"GET /x HTTP/1.1\r\n\r\n" * 8192  # 19 bytes a request, 123 a reply
    sent, limit = 0, 32 << 20
    sock.settimeout(1.0)
    with sock:
        with contextlib.suppress(TimeoutError):
            while sent < limit:
                sock.sendall(blob)
                sent += len(blob)
        # What the server holds for the client: its replies not yet taken by the kernel. The
        # transport's high-water mark (64 KiB) plus the replies to one 64 KiB piece at most.
        assert quick_server.server is not None
        held = max(
            c.transport.get_write_buffer_size() for c in list(quick_server.server.connections)
        )
        assert held < 1 << 20, f"{held} bytes of replies held for a client that reads none"
        assert sent < limit, "the server read every request of a client that reads no reply"
        # And a client that reads none of its replies for the keep-alive time is dropped.
        assert _until(lambda: quick_server.connections() == 0), "the connection was kept"


def test_one_endless_header_is_431_and_closed(shared_server: ServerProcess) -> None:
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(OSError):  # the server may have closed before the end
            for _ in range(16):
                sock.sendall(b"a" * 65536)
        buffer = bytearray()
        status, headers, _ = _read_response(sock, buffer)
        assert status == 431
        assert headers.get("connection") == "close"
        assert _closed_by_server(sock, buffer)


def test_a_large_head_after_a_pipelined_body_is_not_refused(shared_server: ServerProcess) -> None:
    # The head limit counts the head's own bytes, not the body before it in the same read.
    trace_id = random.randbytes(16)
    first = _spans(trace_id, 1)
    padding = "".join(f"X-Pad-{i}: {'p' * 900}\r\n" for i in range(60))  # ~55 KiB of headers
    big_body = _spans(trace_id, 2000)
    assert len(big_body) > 100_000
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        sock.sendall(_request("/v1/traces", big_body) + _request("/v1/traces", first, padding))
        buffer = bytearray()
        statuses = [_read_response(sock, buffer)[0] for _ in range(2)]
    assert statuses == [200, 200]


def test_an_upgrade_request_is_answered_once_and_the_next_is_read(
    shared_server: ServerProcess,
) -> None:
    trace_id = random.randbytes(16)
    upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\n"
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        sock.sendall(
            _request("/v1/traces", _spans(trace_id, 2), upgrade)
            + _request("/v1/traces", _spans(trace_id, 1))
        )
        buffer = bytearray()
        statuses = [_read_response(sock, buffer)[0] for _ in range(2)]
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            buffer += sock.recv(65536)
    assert statuses == [200, 200]
    assert bytes(buffer) == b"", "a reply nobody asked for"
    # Both bodies were read as bodies (an upgrade request's body is not left to the parser).
    assert _stored_names(shared_server, trace_id) == ["op-0", "op-0", "op-1"]


def test_a_request_refused_before_its_body_closes_the_connection(
    shared_server: ServerProcess,
) -> None:
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
            f"Content-Length: {1 << 40}\r\n\r\n".encode()
            + b"\0" * 1000
        )
        buffer = bytearray()
        status, headers, _ = _read_response(sock, buffer)
        assert status == 413
        assert headers.get("connection") == "close"
        assert _closed_by_server(sock, buffer), "the server waited for a 1 TiB body"
    # Refused with its body in the same read, a request leaves the connection open.
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        sock.sendall(_request("/v1/traces", b"x", "Content-Type: text/plain\r\n"))
        buffer = bytearray()
        status, headers, _ = _read_response(sock, buffer)
        assert status == 415
        assert "connection" not in headers
        sock.sendall(_request("/v1/traces", _spans(random.randbytes(16), 1)))
        assert _read_response(sock, buffer)[0] == 200


def test_a_stalled_request_gets_408_and_is_closed(quick_server: _InProcessServer) -> None:
    idle = socket.create_connection(quick_server.address, timeout=30)
    stalled = socket.create_connection(quick_server.address, timeout=30)
    with idle, stalled:
        stalled.sendall(
            f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PROTOBUF}\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + b"\0" * 10
        )
        buffer = bytearray()
        status, headers, _ = _read_response(stalled, buffer)  # after 1-2 s of silence
        assert status == 408
        assert headers.get("connection") == "close"
        assert _closed_by_server(stalled, buffer)
        assert _closed_by_server(idle, bytearray()), "an idle connection was kept"


def test_100_continue_waits_for_the_replies_before_it(shared_server: ServerProcess) -> None:
    trace_id = random.randbytes(16)
    body = _spans(trace_id, 1)
    expect = "Expect: 100-continue\r\n"
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        waiting = _request("/v1/traces", b"", expect).replace(
            b"Content-Length: 0", f"Content-Length: {len(body)}".encode()
        )
        sock.sendall(_request("/v1/traces", body) + waiting)
        buffer = bytearray()
        assert _read_response(sock, buffer)[0] == 200  # the first request's reply, then
        assert _read_response(sock, buffer)[0] == 100  # the second's go-ahead
        sock.sendall(body)
        assert _read_response(sock, buffer)[0] == 200
    # HTTP/1.0 has no 100 Continue: the request is read and answered without one.
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        head = _request("/v1/traces", b"", expect, version="1.0").replace(
            b"Content-Length: 0", f"Content-Length: {len(body)}".encode()
        )
        sock.sendall(head)
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.settimeout(30)
        sock.sendall(body)
        assert _read_response(sock, bytearray())[0] == 200
    assert _stored_names(shared_server, trace_id) == ["op-0", "op-0", "op-0"]


def test_http_1_0_keep_alive_says_so(shared_server: ServerProcess) -> None:
    trace_id = random.randbytes(16)
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        keep = "Connection: keep-alive\r\n"
        buffer = bytearray()
        for _ in range(2):  # kept open, and saying so
            sock.sendall(_request("/v1/traces", _spans(trace_id, 1), keep, version="1.0"))
            status, headers, _ = _read_response(sock, buffer)
            assert (status, headers.get("connection")) == (200, "keep-alive")
    assert _stored_names(shared_server, trace_id) == ["op-0"] * 2


def test_a_half_closed_client_gets_its_replies(shared_server: ServerProcess) -> None:
    trace_id = random.randbytes(16)
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        sock.sendall(
            _request("/v1/traces", _spans(trace_id, 1))
            + _request("/v1/traces", _spans(trace_id, 1))
        )
        sock.shutdown(socket.SHUT_WR)
        buffer = bytearray()
        assert [_read_response(sock, buffer)[0] for _ in range(2)] == [200, 200]
        assert _closed_by_server(sock, buffer)
    assert _stored_names(shared_server, trace_id) == ["op-0"] * 2


def test_head_gets_405_without_a_body(shared_server: ServerProcess) -> None:
    with socket.create_connection(_address(shared_server), timeout=30) as sock:
        sock.sendall(b"HEAD /v1/traces HTTP/1.1\r\nHost: x\r\n\r\n" + _request("/v1/nothing", b""))
        data = bytearray()
        while data.count(b"\r\n\r\n") < 2:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        # The next reply on the connection starts right after the head.
        assert head.startswith(b"HTTP/1.1 405 ")
        assert rest.startswith(b"HTTP/1.1 404 ")
