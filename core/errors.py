"""The errors of the ingest path and how each one is told to an OTLP client.

::

    IngestError                  base; ``permanent`` says whether a retry can succeed
    ├── InvalidRequest           malformed protobuf/JSON, wrong shape (400 / INVALID_ARGUMENT)
    ├── RequestTooLarge          body over the limit, decompressed (413 / RESOURCE_EXHAUSTED)
    ├── UnsupportedMediaType     content type or encoding we do not read (415)
    ├── Unauthenticated          missing or wrong bearer token (401 / UNAUTHENTICATED)
    └── Unavailable              retry later (503 + Retry-After / UNAVAILABLE + RetryInfo)
        ├── Overloaded           the admission queue is full
        └── ShuttingDown         the server is stopping

``opstrata.otlp.decoded.InvalidRequest`` (raised by the decoders) is this module's
``InvalidRequest``: decoders do not depend on the server.
"""

from __future__ import annotations

from opstrata.otlp.decoded import InvalidRequest as _DecodeInvalid

__all__ = [
    "IngestError",
    "InvalidRequest",
    "Overloaded",
    "RequestTooLarge",
    "ShuttingDown",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
]


class IngestError(Exception):
    permanent = True
    reason = "error"


class InvalidRequest(IngestError, _DecodeInvalid):
    reason = "malformed"


class RequestTooLarge(IngestError):
    reason = "too_large"


class UnsupportedMediaType(IngestError):
    reason = "unsupported_media_type"


class Unauthenticated(IngestError):
    reason = "unauthenticated"


class Unavailable(IngestError):
    permanent = False
    reason = "unavailable"

    def __init__(self, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Overloaded(Unavailable):
    reason = "queue_full"


class ShuttingDown(Unavailable):
    reason = "shutting_down"
