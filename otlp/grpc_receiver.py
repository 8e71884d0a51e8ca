"""OTLP/gRPC: ``TraceService``, ``MetricsService`` and ``LogsService`` on one ``grpc.aio`` server.

Requests arrive as raw bytes (no deserializer) so that parsing happens once, in the decoder,
possibly in a worker process. gRPC itself enforces the message size limit, after
decompression, with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from grpc import aio

from opstrata.auth import otlp_authenticator
from opstrata.ingest import IngestPipeline
from opstrata.otlp.decoded import DecodedRequest
from opstrata.otlp.decoder import Encoding
from opstrata.otlp.replies import error_reply, export_response
from opstrata.schema import Signal

__all__ = ["GrpcReceiver"]

_SERVICES = {
    "opentelemetry.proto.collector.trace.v1.TraceService": Signal.SPANS,
    "opentelemetry.proto.collector.metrics.v1.MetricsService": Signal.METRIC_POINTS,
    "opentelemetry.proto.collector.logs.v1.LogsService": Signal.LOG_RECORDS,
}

Authenticate = Callable[[dict[str, str]], None]


def _identity(data: bytes) -> bytes:
    return data


class GrpcReceiver:
    """The OTLP/gRPC endpoint."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        address: tuple[str, int],
        max_message_bytes: int,
        authenticate: Authenticate | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.address = address
        self.max_message_bytes = max_message_bytes
        # Without an explicit check, the ``ingest.bearer_token`` setting decides (empty: none).
        self.authenticate = authenticate or otlp_authenticator(
            getattr(pipeline.settings, "bearer_token", "")
        )
        self.bound: tuple[str, int] | None = None
        self._server: aio.Server | None = None

    def _handler(self, signal: Signal) -> Callable[[bytes, aio.ServicerContext], Awaitable[bytes]]:
        # The reply to a request accepted in full is the same bytes every time.
        accepted = export_response(signal, DecodedRequest(signal)).SerializeToString()
        pipeline = self.pipeline
        authenticate = self.authenticate

        async def export(body: bytes, context: aio.ServicerContext) -> bytes:
            try:
                if authenticate is not None:
                    authenticate(dict(context.invocation_metadata() or ()))
                decoded = await pipeline.ingest(signal, body, Encoding.PROTOBUF)
            except Exception as exc:
                reply = error_reply(exc)
                await context.abort(
                    reply.grpc_code, reply.status.message, trailing_metadata=reply.grpc_trailers()
                )
            if decoded.rejected or decoded.dropped_attributes or decoded.truncated_values:
                return export_response(signal, decoded).SerializeToString()
            return accepted

        return export

    async def start(self) -> tuple[str, int]:
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
        server = aio.server(options=options)
        for service, signal in _SERVICES.items():
            handler = grpc.unary_unary_rpc_method_handler(
                self._handler(signal),
                request_deserializer=_identity,
                response_serializer=_identity,
            )
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, {"Export": handler}),)
            )
        host, port = self.address
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound_port = server.add_insecure_port(target)
        if bound_port == 0:
            raise OSError(f"cannot listen on {target} for OTLP/gRPC")
        await server.start()
        self._server = server
        self.bound = (host, bound_port)
        return self.bound

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking requests and let those in progress finish (up to ``grace`` seconds)."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
