"""One entry point from request bytes to a :class:`DecodedRequest`, for any signal and encoding.

It is a plain function of its arguments so that it can run in a worker process: the attribute
memo lives per process, keyed by the limits.
"""

from __future__ import annotations

from enum import StrEnum

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_logs import decode_logs
from opstrata.otlp.decode_metrics import decode_metrics
from opstrata.otlp.decode_traces import decode_traces
from opstrata.otlp.decoded import DecodedRequest, InvalidRequest
from opstrata.otlp.limits import DecodeLimits
from opstrata.otlp.otlp_json import parse_json_request
from opstrata.schema import Signal

__all__ = ["REQUEST_TYPES", "Encoding", "decode_request"]


class Encoding(StrEnum):
    PROTOBUF = "protobuf"
    JSON = "json"


REQUEST_TYPES: dict[Signal, type[Message]] = {
    Signal.SPANS: ExportTraceServiceRequest,
    Signal.METRIC_POINTS: ExportMetricsServiceRequest,
    Signal.LOG_RECORDS: ExportLogsServiceRequest,
}
_WALKERS = {
    Signal.SPANS: decode_traces,
    Signal.METRIC_POINTS: decode_metrics,
    Signal.LOG_RECORDS: decode_logs,
}
_renderers: dict[DecodeLimits, AttributeRenderer] = {}


def _parse_protobuf(body: bytes, message_type: type[Message]) -> Message:
    message = message_type()
    try:
        message.ParseFromString(body)
    except DecodeError as exc:
        raise InvalidRequest(f"cannot parse protobuf {message_type.__name__}: {exc}") from exc
    return message


def decode_request(
    signal: Signal, body: bytes, encoding: Encoding, limits: DecodeLimits
) -> DecodedRequest:
    """Parse and walk one export request; raises ``InvalidRequest`` when it cannot be read."""
    renderer = _renderers.get(limits)
    if renderer is None:
        renderer = _renderers[limits] = AttributeRenderer(limits)
    message_type = REQUEST_TYPES[signal]
    if encoding is Encoding.JSON:
        message = parse_json_request(body, message_type)
    else:
        message = _parse_protobuf(body, message_type)
    return _WALKERS[signal](message, renderer)  # type: ignore[operator]
