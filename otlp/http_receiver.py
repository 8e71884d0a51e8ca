"""OTLP/HTTP's own HTTP/1.1 server: an asyncio ``Protocol`` over ``httptools`` (llhttp).

Under uvicorn, a request cost the event loop a task, an ``asyncio.Event``, the ASGI scope and
message dicts, header re-validation and two socket writes (status line and headers, then the
body) on top of the receiver's own work; all of it per request of 100 items, in the thread that
holds the GIL for the whole process. Here a request is parsed by llhttp's callbacks, handled in
``on_message_complete`` (``IngestPipeline.submit``: admission, decode, log append, load) and
answered with one write from the ingest log's fsync callback — no task or future per request —
and the all-accepted reply of each signal and encoding is built once.

What it keeps from the ASGI receiver it replaces: keep-alive (HTTP/1.1 by default, 1.0 on
request, ``Connection: close`` honoured), chunked request bodies, pipelined requests answered
in order, ``Expect: 100-continue``, the body size checked against ``Content-Length`` before the
body is read and while it arrives (413), 415 for a content type or encoding it cannot read, 503
with ``Retry-After`` when admission is full (also decided before the body is read), 404/405,
gzip/zstd/deflate, and error bodies as ``google.rpc.Status`` in the request's encoding.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from http import HTTPStatus

import httptools
import msgspec

from opstrata.auth import otlp_authenticator
from opstrata.errors import RequestTooLarge, Unavailable, UnsupportedMediaType
from opstrata.ingest import IngestPipeline
from opstrata.otlp.compression import decompress
from opstrata.otlp.decoded import DecodedRequest
from opstrata.otlp.decoder import Encoding
from opstrata.otlp.otlp_json import message_to_json
from opstrata.otlp.replies import error_reply, export_response
from opstrata.schema import Signal

__all__ = ["OtlpHttpServer"]

log = logging.getLogger(__name__)

_PATHS = {
    b"/v1/traces": Signal.SPANS,
    b"/v1/metrics": Signal.METRIC_POINTS,
    b"/v1/logs": Signal.LOG_RECORDS,
}
_CONTENT_TYPES = {
    "application/x-protobuf": Encoding.PROTOBUF,
    "application/protobuf": Encoding.PROTOBUF,
    "application/json": Encoding.JSON,
}
_REPLY_TYPE = {Encoding.PROTOBUF: b"application/x-protobuf", Encoding.JSON: b"application/json"}
_MAX_HEAD_BYTES = 64 * 1024  # request line and headers; past it: 431 and close
_MAX_PIPELINED = 16  # requests of one connection awaiting their replies before reading pauses
_IDLE_SWEEP_SECONDS = 1.0


def _response(
    status: int, body: bytes, content_type: bytes, extra=(), close: bool = False
) -> bytes:
    head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
    head.append(b"content-type: " + content_type + b"\r\n")
    head.append(b"content-length: %d\r\n" % len(body))
    for name, value in extra:
        head.append(name + b": " + value + b"\r\n")
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


def _plain(status: int, payload: dict, extra=(), close: bool = False) -> bytes:
    return _response(status, msgspec.json.encode(payload), b"application/json", extra, close)


def _message_reply(status: int, message, encoding: Encoding, extra=(), close=False) -> bytes:
    body = message_to_json(message) if encoding is Encoding.JSON else message.SerializeToString()
    return _response(status, body, _REPLY_TYPE[encoding], extra, close)


def _error(exc: BaseException, encoding: Encoding, close: bool) -> bytes:
    reply = error_reply(exc)
    extra = []
    if reply.retry_after_seconds is not None:
        extra.append((b"retry-after", str(reply.retry_after_seconds).encode()))
    return _message_reply(reply.http_status, reply.status, encoding, extra, close)


# The reply to a request accepted in full, per signal and encoding: the same bytes every time.
_ACCEPTED = {
    (signal, encoding): _message_reply(
        200, export_response(signal, DecodedRequest(signal)), encoding
    )
    for signal in Signal
    for encoding in Encoding
}


class _Request:
    """One request of a connection, from its headers to its reply (replies go out in order)."""

    __slots__ = ("body", "close", "encoding", "reply", "signal", "size")

    def __init__(self, close: bool) -> None:
        self.close = close
        self.signal: Signal | None = None
        self.encoding = Encoding.JSON  # of the reply, until the content type says otherwise
        self.body: list[bytes] | None = []  # None: answered early, the rest of the body ignored
        self.size = 0
        self.reply: bytes | None = None


class _Connection(asyncio.Protocol):
    """One client connection: llhttp's callbacks build ``_Request``s, replies leave in order."""

    def __init__(self, server: OtlpHttpServer) -> None:
        self.server = server
        self.pipeline = server.pipeline
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.requests: collections.deque[_Request] = collections.deque()
        self.current: _Request | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.last_active = time.monotonic()
        self.paused = False
        self.closed = False
        self.failed = False  # the parser gave up on this connection: ignore what follows

    # -- transport callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.requests.clear()

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.head_bytes = 0
        self.current = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > _MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parser = self.parser
        closing = self.server.closing
        request = _Request(close=closing or not parser.should_keep_alive())
        self.current = request
        self.requests.append(request)
        if len(self.requests) > _MAX_PIPELINED and not self.paused:
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.paused = True
        headers = self.headers
        path = self.url.split(b"?", 1)[0].rstrip(b"/") or b"/"
        signal = _PATHS.get(path)
        if signal is None:
            shown = path.decode("latin-1")
            missing = {"code": 5, "message": f"no OTLP endpoint at {shown}"}
            self._answer_early(request, _plain(404, missing, close=request.close))
            return
        if parser.get_method() != b"POST":
            use_post = {"code": 12, "message": "use POST"}
            self._answer_early(request, _plain(405, use_post, [(b"allow", b"POST")], request.close))
            return
        request.signal = signal
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        encoding = _CONTENT_TYPES.get(media_type)
        if encoding is not None:
            request.encoding = encoding
        try:
            if encoding is None:
                raise UnsupportedMediaType(
                    f"unsupported Content-Type {media_type or '(none)'!r}; use "
                    "application/x-protobuf or application/json"
                )
            if self.server.authenticate is not None:
                self.server.authenticate(headers)
            length = headers.get("content-length", "")
            expected = int(length) if length.isdigit() else 0
            if expected > self.server.max_request_bytes:
                raise RequestTooLarge(f"request body exceeds {self.server.max_request_bytes} bytes")
            # Refused before the body is read (and decompressed) when admission is full.
            self.pipeline.refuse_if_full(signal, expected)
        except Exception as exc:
            self._answer_early(request, _error(exc, request.encoding, request.close))
            return
        if headers.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    def on_body(self, chunk: bytes) -> None:
        request = self.current
        if request is None or request.body is None:
            return
        request.size += len(chunk)
        # The wire size is bounded too: a body is never held bigger than the limit.
        if request.size > self.server.max_request_bytes:
            limit = self.server.max_request_bytes
            too_large = RequestTooLarge(f"request body exceeds {limit} bytes")
            self._answer_early(request, _error(too_large, request.encoding, request.close))
            return
        request.body.append(chunk)

    def on_message_complete(self) -> None:
        request = self.current
        self.current = None
        if request is None or request.body is None:
            return
        chunks, request.body = request.body, None
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        signal, encoding = request.signal, request.encoding
        assert signal is not None
        pipeline = self.pipeline
        try:
            content_encoding = self.headers.get("content-encoding", "")
            body = decompress(raw, content_encoding, self.server.max_request_bytes)
            if not pipeline.inline:
                # Decode workers, or acknowledge on the store's commit: the awaited path.
                task = asyncio.ensure_future(pipeline.ingest(signal, body, encoding))
                tasks = self.server.tasks  # the loop keeps only weak references to tasks
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(functools.partial(self._ingested, request))
                return
            decoded, position = pipeline.submit(signal, body, encoding)
        except Exception as exc:
            self._answer(request, _error(exc, encoding, request.close))
            return
        if position:
            assert pipeline.log is not None
            pipeline.log.when_synced(position, functools.partial(self._synced, request, decoded))
        else:
            self._accepted(request, decoded)

    # -- replies --------------------------------------------------------------------------------

    def _synced(self, request: _Request, decoded: DecodedRequest, error: OSError | None) -> None:
        if error is not None:
            failed = Unavailable(f"ingest log fsync failed: {error}", 1)
            self._answer(request, _error(failed, request.encoding, request.close))
        else:
            self._accepted(request, decoded)

    def _ingested(self, request: _Request, task: asyncio.Future[DecodedRequest]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._answer(request, _error(exc, request.encoding, request.close))
        else:
            self._accepted(request, task.result())

    def _accepted(self, request: _Request, decoded: DecodedRequest) -> None:
        signal = request.signal
        assert signal is not None
        cut = decoded.rejected or decoded.dropped_attributes or decoded.truncated_values
        if cut or request.close:
            response = export_response(signal, decoded)
            reply = _message_reply(200, response, request.encoding, close=request.close)
        else:
            reply = _ACCEPTED[signal, request.encoding]
        self._answer(request, reply)

    def _answer_early(self, request: _Request, reply: bytes) -> None:
        """Answer before the body is read; the rest of the body is parsed and dropped."""
        request.body = None
        self._answer(request, reply)

    def _answer(self, request: _Request, reply: bytes) -> None:
        request.reply = reply
        if self.closed:
            return
        requests = self.requests
        transport = self.transport
        assert transport is not None
        # Pipelined requests are answered in the order they came.
        if transport.is_closing():  # the client went away; connection_lost follows
            return
        while requests and requests[0].reply is not None:
            done = requests.popleft()
            transport.write(done.reply)  # type: ignore[arg-type]
            if done.close:
                transport.close()
                self.closed = True
                return
        if self.paused and len(requests) <= _MAX_PIPELINED // 2:
            self.paused = False
            transport.resume_reading()
        self.last_active = time.monotonic()
        if self.server.closing and not requests and self.current is None:
            transport.close()
            self.closed = True

    def _fail(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answer (after those before it) and close."""
        self.failed = True
        self.current = None
        request = _Request(close=True)
        request.body = None
        self.requests.append(request)
        self._answer(request, _plain(status, {"code": 3, "message": message}, close=True))

    # -- idle and shutdown ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.requests and self.current is None

    def close_if_idle(self) -> None:
        if self.idle and not self.closed and self.transport is not None:
            self.transport.close()
            self.closed = True


class OtlpHttpServer:
    """The OTLP/HTTP listener (``start`` on a bound socket, ``close`` then ``wait_closed``)."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        max_request_bytes: int,
        authenticate=None,
        keep_alive_seconds: float = 30.0,
    ) -> None:
        self.pipeline = pipeline
        self.max_request_bytes = max_request_bytes
        # Without an explicit check, the ``ingest.bearer_token`` setting decides (empty: none).
        self.authenticate = authenticate or otlp_authenticator(
            getattr(pipeline.settings, "bearer_token", "")
        )
        self.keep_alive_seconds = keep_alive_seconds
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Future[DecodedRequest]] = set()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sock) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
        # One sweep a second closes idle keep-alive connections: no timer per request.
        self._sweeper = asyncio.create_task(self._sweep(), name="otlp-http-idle")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_IDLE_SWEEP_SECONDS)
            cutoff = time.monotonic() - self.keep_alive_seconds
            for connection in list(self.connections):
                if connection.last_active < cutoff:
                    connection.close_if_idle()

    def close(self) -> None:
        """Stop accepting connections; close idle ones, and the others after their replies."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()

    async def wait_closed(self, timeout: float = 30.0) -> None:
        """Wait (at most ``timeout``) for the connections to finish their requests."""
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
