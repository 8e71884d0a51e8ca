"""Replies in OTLP's terms: export responses with ``partial_success``, and the one mapping from
an ingest error to an HTTP status or a gRPC status (permanent vs. retry later)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from opstrata.errors import (
    IngestError,
    RequestTooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)
from opstrata.otlp.decoded import DecodedRequest, InvalidRequest
from opstrata.schema import Signal

__all__ = ["ErrorReply", "error_reply", "export_response"]

_RESPONSES = {
    Signal.SPANS: (ExportTraceServiceResponse, "rejected_spans"),
    Signal.METRIC_POINTS: (ExportMetricsServiceResponse, "rejected_data_points"),
    Signal.LOG_RECORDS: (ExportLogsServiceResponse, "rejected_log_records"),
}


def export_response(signal: Signal, decoded: DecodedRequest) -> Message:
    """The Export*ServiceResponse for a request, with ``partial_success`` when items were
    rejected or cut."""
    response_type, rejected_field = _RESPONSES[signal]
    response = response_type()
    if decoded.rejected:
        setattr(response.partial_success, rejected_field, decoded.rejected)
        response.partial_success.error_message = decoded.message
    elif decoded.dropped_attributes or decoded.truncated_values:
        # Accepted in full, but the client should know that limits cut some of it.
        response.partial_success.error_message = (
            f"{decoded.dropped_attributes} attribute(s) dropped and "
            f"{decoded.truncated_values} value(s) truncated by limits"
        )
    return response


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """One error in both protocols' terms."""

    http_status: int
    grpc_code: grpc.StatusCode
    status: status_pb2.Status
    retry_after_seconds: int | None = None

    def grpc_trailers(self) -> tuple[tuple[str, bytes], ...]:
        return (("grpc-status-details-bin", self.status.SerializeToString()),)


def error_reply(exc: BaseException) -> ErrorReply:
    """Map any failure of the ingest path to its reply. Unknown errors are transient: the client
    retries, and nothing it sent is lost."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, InvalidRequest):
        return _reply(400, grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT, message)
    if isinstance(exc, RequestTooLarge):
        return _reply(413, grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED, message)
    if isinstance(exc, UnsupportedMediaType):
        return _reply(415, grpc.StatusCode.UNIMPLEMENTED, code_pb2.UNIMPLEMENTED, message)
    if isinstance(exc, Unauthenticated):
        return _reply(401, grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED, message)
    retry_after = exc.retry_after_seconds if isinstance(exc, Unavailable) else 1
    if not isinstance(exc, IngestError):
        message = f"internal error: {message}"
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after))
    status.details.add().Pack(retry)
    return ErrorReply(503, grpc.StatusCode.UNAVAILABLE, status, retry_after)


def _reply(http_status: int, grpc_code: grpc.StatusCode, code: int, message: str) -> ErrorReply:
    return ErrorReply(http_status, grpc_code, status_pb2.Status(code=code, message=message))
