"""OTLP/HTTP: ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` as a small ASGI app.

A plain ASGI callable rather than a framework route: this is the hottest path of the server and
needs nothing but the body, two headers and the reply.
"""

from __future__ import annotations

import msgspec
from google.protobuf.message import Message

from opstrata.auth import otlp_authenticator
from opstrata.errors import RequestTooLarge, UnsupportedMediaType
from opstrata.ingest import IngestPipeline
from opstrata.otlp.compression import decompress
from opstrata.otlp.decoder import Encoding
from opstrata.otlp.otlp_json import message_to_json
from opstrata.otlp.replies import error_reply, export_response
from opstrata.schema import Signal

__all__ = ["OtlpHttpApp"]

_PATHS = {
    "/v1/traces": Signal.SPANS,
    "/v1/metrics": Signal.METRIC_POINTS,
    "/v1/logs": Signal.LOG_RECORDS,
}
_CONTENT_TYPES = {
    "application/x-protobuf": Encoding.PROTOBUF,
    "application/protobuf": Encoding.PROTOBUF,
    "application/json": Encoding.JSON,
}
_REPLY_TYPE = {Encoding.PROTOBUF: b"application/x-protobuf", Encoding.JSON: b"application/json"}


class OtlpHttpApp:
    """The ASGI app of the OTLP/HTTP receiver."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        max_request_bytes: int,
        authenticate=None,
    ) -> None:
        self.pipeline = pipeline
        self.max_request_bytes = max_request_bytes
        # Without an explicit check, the ``ingest.bearer_token`` setting decides (empty: none).
        self.authenticate = authenticate or otlp_authenticator(
            getattr(pipeline.settings, "bearer_token", "")
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        signal = _PATHS.get(path)
        if signal is None:
            await _send_plain(send, 404, {"code": 5, "message": f"no OTLP endpoint at {path}"})
            return
        if scope["method"] != "POST":
            await _send_plain(send, 405, {"code": 12, "message": "use POST"}, [(b"allow", b"POST")])
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        encoding = _CONTENT_TYPES.get(media_type)
        reply_encoding = encoding or Encoding.JSON
        try:
            if encoding is None:
                raise UnsupportedMediaType(
                    f"unsupported Content-Type {media_type or '(none)'!r}; use "
                    "application/x-protobuf or application/json"
                )
            if self.authenticate is not None:
                self.authenticate(headers)
            length = headers.get("content-length", "")
            self.pipeline.refuse_if_full(signal, int(length) if length.isdigit() else 0)
            raw = await self._read_body(receive)
            body = decompress(raw, headers.get("content-encoding", ""), self.max_request_bytes)
            decoded = await self.pipeline.ingest(signal, body, encoding)
        except Exception as exc:
            reply = error_reply(exc)
            extra = []
            if reply.retry_after_seconds is not None:
                extra.append((b"retry-after", str(reply.retry_after_seconds).encode()))
            await _send_message(send, reply.http_status, reply.status, reply_encoding, extra)
            return
        await _send_message(send, 200, export_response(signal, decoded), reply_encoding)

    async def _read_body(self, receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError("client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            # The wire size is bounded too: a body is never held bigger than the limit.
            if size > self.max_request_bytes:
                raise RequestTooLarge(f"request body exceeds {self.max_request_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _send_message(send, status: int, message: Message, encoding: Encoding, extra=()) -> None:
    body = message_to_json(message) if encoding is Encoding.JSON else message.SerializeToString()
    headers = [
        (b"content-type", _REPLY_TYPE[encoding]),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_plain(send, status: int, payload: dict, extra=()) -> None:
    body = msgspec.json.encode(payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
