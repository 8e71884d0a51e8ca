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

What bounds a client's hold on the server: reading pauses while a connection's replies are not
being read (the transport's write buffer over its high-water mark) or too many of its requests
await replies, and the parser is fed in pieces so a pause takes effect within a read; a request
head is limited in raw bytes (431); a request whose bytes stop coming for ``keep_alive_seconds``
gets 408 and the connection closes; a request refused before its body has arrived (404, 405,
413, 415, 401, 503) is answered with ``connection: close`` and the connection closes once the
reply is out, rather than reading a possibly huge body to its end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable
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
_MAX_HEAD_BYTES = 64 * 1024  # request line and headers, raw bytes; past it: 431 and close
_MAX_PIPELINED = 16  # requests of one connection awaiting their replies before reading pauses
# The parser is fed at most this much at a time, so a pause (replies not read, too many
# pipelined) stops parsing within one read of up to 256 KiB rather than after it: what a
# connection's replies can pile up to stays a few hundred KiB.
_FEED_BYTES = 64 * 1024
_IDLE_SWEEP_SECONDS = 1.0
# After the reply to a refused or broken request, what the client still sends is read and
# dropped this long (our side half-closed), so closing does not reset the connection under a
# reply the client has not read yet.
_LINGER_SECONDS = 2.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

Reply = Callable[..., bytes]  # a reply still to be built, given its ``connection`` header


def _response(
    status: int,
    body: bytes,
    content_type: bytes,
    extra=(),
    connection: bytes | None = None,
) -> bytes:
    head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
    head.append(b"content-type: " + content_type + b"\r\n")
    head.append(b"content-length: %d\r\n" % len(body))
    for name, value in extra:
        head.append(name + b": " + value + b"\r\n")
    if connection is not None:
        head.append(b"connection: " + connection + b"\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


def _plain(status: int, payload: dict, extra=(), connection: bytes | None = None) -> bytes:
    return _response(status, msgspec.json.encode(payload), b"application/json", extra, connection)


def _message_reply(
    status: int, message, encoding: Encoding, extra=(), connection: bytes | None = None
) -> bytes:
    body = message_to_json(message) if encoding is Encoding.JSON else message.SerializeToString()
    return _response(status, body, _REPLY_TYPE[encoding], extra, connection)


def _error(exc: BaseException, encoding: Encoding, connection: bytes | None = None) -> bytes:
    reply = error_reply(exc)
    extra = []
    if reply.retry_after_seconds is not None:
        extra.append((b"retry-after", str(reply.retry_after_seconds).encode()))
    return _message_reply(reply.http_status, reply.status, encoding, extra, connection)


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

    __slots__ = (
        "body",
        "close",
        "connection",
        "early",
        "encoding",
        "expect_continue",
        "head_only",
        "reply",
        "signal",
        "size",
    )

    def __init__(self, close: bool) -> None:
        self.close = close
        # The reply's Connection header: "close" when closing; "keep-alive" for HTTP/1.0 kept
        # alive (set by the caller); none for HTTP/1.1 kept alive (the prebuilt replies).
        self.connection: bytes | None = b"close" if close else None
        self.signal: Signal | None = None
        self.encoding = Encoding.JSON  # of the reply, until the content type says otherwise
        self.body: list[bytes] | None = []  # None: answered early, the rest of the body ignored
        self.size = 0
        self.reply: bytes | None = None
        # Refused on its head: the reply waits for the end of this read, to know whether the
        # body came with it (keep alive) or not (close rather than read it).
        self.early: Reply | None = None
        self.expect_continue = False  # a 100 Continue is owed once it is first in line
        self.head_only = False  # HEAD: replies without their body

    def closing(self) -> None:
        self.close = True
        self.connection = b"close"


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
        self.messages = 0  # requests begun: tells a head begun within a piece from one going on
        self.in_head = False
        self.in_message = False
        self.head_bytes = 0  # of the current head, as the parser's callbacks hand it over
        self.head_raw = 0  # of the current head, counted on the wire (bounds one long header)
        self.upgrade_body = 0  # an upgrade request's Content-Length, read past the parser
        self.raw_body = 0  # bytes of that body still to come
        self.stash = b""  # input not parsed yet because reading paused
        self.last_active = time.monotonic()
        self.paused = False  # reading paused (replies not read, or too many awaited)
        self.write_paused = False
        self.write_paused_at = 0.0
        self.eof = False  # the client half-closed: close once the replies due are out
        self.closed = False  # nothing more is written (closing, or lingering after the last)
        self.linger_until = 0.0
        self.failed = False  # a request was refused mid-way or could not be parsed: ignore input

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
        if self.stash:
            data, self.stash = self.stash + data, b""
        self._feed(data)
        self._settle_early()

    def eof_received(self) -> bool | None:
        if self.closed or self.failed:
            return None
        if self.stash:
            self._feed_stash()
            if self.closed or self.failed:
                return None
        self.eof = True
        request = self.current
        requests = self.requests
        if request is not None and requests and requests[-1] is request and request.reply is None:
            requests.pop()  # its body will not come; nobody is left to read an answer to it
        self.current = None
        self.in_head = self.in_message = False
        self.raw_body = self.upgrade_body = 0
        if not requests:
            return None  # close our side too
        return True  # a half-close after sending: the replies due go out, then we close

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests, or replies to
        # pipelined requests would pile up in the transport without bound.
        self.write_paused = True
        self.write_paused_at = time.monotonic()
        if not self.paused:
            self._pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._resume_if_due()

    # -- input ----------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        parser = self.parser
        end = len(data)
        start = 0
        view: memoryview | None = None
        while start < end:
            if self.raw_body:
                taken = min(self.raw_body, end - start)
                chunk = data[start : start + taken]
                start += taken
                self.raw_body -= taken
                self.on_body(chunk)
                if self.failed:
                    return
                if not self.raw_body:
                    self.on_message_complete()
                continue
            if self.paused:
                self.stash = data[start:]
                return
            size = _FEED_BYTES
            if self.in_head:  # feed no more of a head than its limit allows
                size = min(size, _MAX_HEAD_BYTES + 1 - self.head_raw)
            if start == 0 and end <= size:
                piece: bytes | memoryview = data
            else:
                if view is None:
                    view = memoryview(data)
                piece = view[start : start + size]
            began = self.messages
            try:
                parser.feed_data(piece)
                used = len(piece)
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops after an upgrade request's head; its body (if any) is read by
                # ``raw_body`` above and parsing goes on after it: the upgrade is ignored.
                used = exc.args[0]
            except httptools.HttpParserError as exc:
                if not self.failed:
                    if max(self.head_bytes, self.head_raw) > _MAX_HEAD_BYTES:
                        self._fail(431, "request head too large")
                    else:
                        self._fail(400, f"malformed HTTP request: {exc}")
                return
            if self.failed:
                return
            if self.in_head:
                # llhttp holds a header until it ends, so the raw bytes are what bound it: all
                # of this piece if the head was going on before it, else what the callbacks saw
                # (at most one piece short of the truth).
                if self.messages == began:
                    self.head_raw += used
                else:
                    self.head_raw = self.head_bytes
                if self.head_raw > _MAX_HEAD_BYTES:
                    self._fail(431, "request head too large")
                    return
            start += used

    def _feed_stash(self) -> None:
        if self.stash and not self.paused and not self.closed and not self.failed:
            data, self.stash = self.stash, b""
            self._feed(data)
            self._settle_early()

    def _settle_early(self) -> None:
        """A request refused on its head whose body did not come with it: answer and close."""
        request = self.current
        if request is not None and request.early is not None and not self.failed:
            self._refuse(request, request.early)

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.head_bytes = 0
        self.head_raw = 0
        self.current = None
        self.messages += 1
        self.in_head = self.in_message = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > _MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.head_bytes > _MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        headers = self.headers
        request = _Request(close=self.server.closing or not parser.should_keep_alive())
        if not request.close and "connection" in headers and parser.get_http_version() == "1.0":
            request.connection = b"keep-alive"  # HTTP/1.0 stays open only when both say so
        self.current = request
        requests = self.requests
        requests.append(request)
        if len(requests) > _MAX_PIPELINED and not self.paused:
            self._pause()
        length = headers.get("content-length", "")
        expected = int(length) if length.isdigit() else 0
        method = parser.get_method()
        if method == b"HEAD":
            request.head_only = True
        if parser.should_upgrade():
            # Upgrades are not offered; llhttp leaves the request's body to us.
            if "transfer-encoding" in headers:
                self._fail(400, "a chunked body with Upgrade is not supported")
                return
            self.upgrade_body = expected
        path = self.url.split(b"?", 1)[0].rstrip(b"/") or b"/"
        signal = _PATHS.get(path)
        if signal is None:
            missing = {"code": 5, "message": f"no OTLP endpoint at {path.decode('latin-1')}"}
            self._answer_early(request, functools.partial(_plain, 404, missing))
            return
        if method != b"POST":
            use_post = {"code": 12, "message": "use POST"}
            allow = [(b"allow", b"POST")]
            self._answer_early(request, functools.partial(_plain, 405, use_post, allow))
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
            if expected > self.server.max_request_bytes:
                raise RequestTooLarge(f"request body exceeds {self.server.max_request_bytes} bytes")
            # Refused before the body is read (and decompressed) when admission is full.
            self.pipeline.refuse_if_full(signal, expected)
        except Exception as exc:
            self._answer_early(request, functools.partial(_error, exc, request.encoding))
            return
        if (
            "expect" in headers
            and headers["expect"].lower() == "100-continue"
            and parser.get_http_version() != "1.0"  # a 1.0 client cannot have asked for it
        ):
            request.expect_continue = True
            if requests[0] is request:
                self._send_continue(request)

    def on_body(self, chunk: bytes) -> None:
        request = self.current
        if request is None or request.body is None:
            return
        request.size += len(chunk)
        # The wire size is bounded too: a body is never held bigger than the limit.
        if request.size > self.server.max_request_bytes:
            limit = self.server.max_request_bytes
            too_large = RequestTooLarge(f"request body exceeds {limit} bytes")
            self._refuse(request, functools.partial(_error, too_large, request.encoding))
            return
        request.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.upgrade_body:  # its body follows, read past the parser (``_feed``)
            self.raw_body, self.upgrade_body = self.upgrade_body, 0
            return
        request = self.current
        self.current = None
        self.in_message = False
        if request is None:
            return
        early = request.early
        if early is not None:  # refused on its head, and its body came: the connection goes on
            request.early = None
            self._answer(request, early(connection=request.connection))
            return
        if request.body is None:
            return
        chunks, request.body = request.body, None
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        signal, encoding = request.signal, request.encoding
        assert signal is not None
        pipeline = self.pipeline
        try:
            content_encoding = self.headers.get("content-encoding", "")
            body = decompress(raw, content_encoding, self.server.max_request_bytes)
            # Decode workers, acknowledging on the store's commit, or a request that must wait
            # for room in the queue: the awaited path.
            nbytes = pipeline.try_admit(signal, encoding, len(body)) if pipeline.inline else None
            if nbytes is None:
                task = asyncio.ensure_future(pipeline.ingest(signal, body, encoding))
                tasks = self.server.tasks  # the loop keeps only weak references to tasks
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(functools.partial(self._ingested, request))
                return
            decoded, position = pipeline.submit(signal, body, encoding, nbytes)
        except Exception as exc:
            self._answer(request, _error(exc, encoding, request.connection))
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
            self._answer(request, _error(failed, request.encoding, request.connection))
        else:
            self._accepted(request, decoded)

    def _ingested(self, request: _Request, task: asyncio.Future[DecodedRequest]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._answer(request, _error(exc, request.encoding, request.connection))
        else:
            self._accepted(request, task.result())

    def _accepted(self, request: _Request, decoded: DecodedRequest) -> None:
        signal = request.signal
        assert signal is not None
        cut = decoded.rejected or decoded.dropped_attributes or decoded.truncated_values
        if cut or request.connection is not None:
            response = export_response(signal, decoded)
            reply = _message_reply(200, response, request.encoding, connection=request.connection)
        else:
            reply = _ACCEPTED[signal, request.encoding]
        self._answer(request, reply)

    def _answer_early(self, request: _Request, reply: Reply) -> None:
        """Refuse on the head; answered when the body has come (and dropped), or with close at
        the end of this read when it has not (``_settle_early``)."""
        request.body = None
        request.early = reply

    def _refuse(self, request: _Request, reply: Reply) -> None:
        """Answer now with close; what the client still sends is dropped (RFC 9110 §15.2)."""
        self.failed = True
        self.current = None
        self.in_head = self.in_message = False
        self.stash = b""
        request.body = None
        request.early = None
        request.expect_continue = False
        request.closing()
        self._answer(request, reply(connection=b"close"))

    def _fail(self, status: int, message: str) -> None:
        """A request that cannot be parsed (or went quiet): answer after those before it, close."""
        request = self.current
        payload = {"code": 3 if status != 408 else 4, "message": message}
        if request is not None and request.reply is None:
            # Its head was read (it is in line): this is its answer, or its refusal if it had one.
            reply = request.early or functools.partial(_plain, status, payload)
        else:
            request = _Request(close=True)
            self.requests.append(request)
            reply = functools.partial(_plain, status, payload)
        self._refuse(request, reply)

    def _send_continue(self, request: _Request) -> None:
        # Only for the request being read, first in line, before any of its body: a 100 before
        # an earlier request's reply would be read as that reply.
        request.expect_continue = False
        if (
            request is self.current
            and request.size == 0
            and request.body is not None
            and not self.raw_body
            and not self.closed
        ):
            self.transport.write(_CONTINUE)  # type: ignore[union-attr]

    def _answer(self, request: _Request, reply: bytes) -> None:
        if request.head_only:
            reply = reply[: reply.index(b"\r\n\r\n") + 4]
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
                self._finish()
                return
        if requests and requests[0].expect_continue:
            self._send_continue(requests[0])
        if self.paused:
            self._resume_if_due()
        self.last_active = time.monotonic()
        if not requests and self.current is None and (self.eof or self.server.closing):
            transport.close()
            self.closed = True

    def _finish(self) -> None:
        """The last reply is written: close, or half-close and linger when input may follow."""
        self.closed = True
        transport = self.transport
        assert transport is not None
        if self.failed and not self.eof and transport.can_write_eof():
            transport.write_eof()
            self.linger_until = time.monotonic() + _LINGER_SECONDS
            if self.paused:
                self.paused = False
                transport.resume_reading()  # read (and drop) what comes until the client closes
        else:
            transport.close()

    # -- flow control ---------------------------------------------------------------------------

    def _pause(self) -> None:
        self.paused = True
        self.transport.pause_reading()  # type: ignore[union-attr]

    def _resume_if_due(self) -> None:
        if (
            self.paused
            and not self.write_paused
            and len(self.requests) <= _MAX_PIPELINED // 2
            and not self.closed
        ):
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
            if self.stash:  # not from inside a parser callback: parse it on the next pass
                asyncio.get_running_loop().call_soon(self._feed_stash)

    # -- idle, stalled and shutdown -------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.requests and self.current is None

    def sweep(self, now: float, cutoff: float) -> None:
        """Close what has been quiet since ``cutoff``: idle, stalled mid-request, not reading."""
        transport = self.transport
        if transport is None:
            return
        if self.closed:
            if self.linger_until and now > self.linger_until:
                transport.abort()
            return
        if self.failed:
            return  # its last reply waits for those before it
        if self.write_paused:
            if self.write_paused_at < cutoff:
                transport.abort()  # it has read none of its replies all this time
            return
        if self.last_active >= cutoff:
            return
        if self.in_message:
            if not self.paused:  # (paused: we are the ones not reading)
                limit = self.server.keep_alive_seconds
                self._fail(408, f"request timed out: nothing received for {limit:g} s")
        elif not self.requests:
            self.close_if_idle()

    def close_if_idle(self) -> None:
        if self.idle and not self.closed and self.transport is not None:
            self.transport.close()
            self.closed = True


class OtlpHttpServer:
    """The OTLP/HTTP listener (``start`` on a bound socket, ``close`` then ``wait_closed``).

    ``keep_alive_seconds`` is how long an idle keep-alive connection stays open, and how long a
    request may go without a byte arriving before it gets 408 and its connection closes.
    """

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
        # One sweep a second closes idle and stalled connections: no timer per request.
        self._sweeper = asyncio.create_task(self._sweep(), name="otlp-http-idle")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_IDLE_SWEEP_SECONDS)
            now = time.monotonic()
            cutoff = now - self.keep_alive_seconds
            for connection in list(self.connections):
                connection.sweep(now, cutoff)

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
