"""Read-after-ack for the HTTP API: a query sees every item acknowledged before it arrived.

An OTLP reply is sent once the request is in the ingest log; the store loads it a moment later
(``opstrata.ingest``). This ASGI wrapper makes each API request first wait — asynchronously,
at most ``timeout`` seconds — until the store has loaded everything acknowledged when the
request arrived, so a client that exported and then queries finds its data. The probes and
``/metrics`` do not wait: they must answer while the store is behind.
"""

from __future__ import annotations

from typing import Any

from opstrata.ingest import IngestPipeline

__all__ = ["ReadAfterAck"]

_NO_WAIT = frozenset({"/healthz", "/readyz", "/metrics"})


class ReadAfterAck:
    """ASGI middleware around the API app."""

    def __init__(self, app: Any, pipeline: IngestPipeline, timeout: float = 10.0) -> None:
        self.app = app
        self.pipeline = pipeline
        self.timeout = timeout
        self.timeouts = 0
        """API requests that went ahead after ``timeout`` without the store having caught up."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        waits = scope["type"] == "http" and scope.get("path", "") not in _NO_WAIT
        if waits and not await self.pipeline.wait_loaded(self.timeout):
            self.timeouts += 1
        await self.app(scope, receive, send)
