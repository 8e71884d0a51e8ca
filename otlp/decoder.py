"""One entry point from request bytes to a :class:`DecodedRequest`, for any signal and encoding.

It is a plain function of its arguments so that it can run in a worker process: the attribute
memo lives per process, keyed by the limits.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec
import pyarrow as pa
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from opstrata.otlp import decode_traces
from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_logs import decode_log_bytes
from opstrata.otlp.decode_metrics import decode_metric_bytes
from opstrata.otlp.decode_traces import decode_trace_bytes
from opstrata.otlp.decoded import DecodedRequest, InvalidRequest
from opstrata.otlp.limits import DecodeLimits
from opstrata.otlp.otlp_json import parse_json_request
from opstrata.schema import Signal

__all__ = ["REQUEST_TYPES", "Encoding", "decode_in_worker", "decode_request"]


class Encoding(StrEnum):
    PROTOBUF = "protobuf"
    JSON = "json"


REQUEST_TYPES: dict[Signal, type[Message]] = {
    Signal.SPANS: ExportTraceServiceRequest,
    Signal.METRIC_POINTS: ExportMetricsServiceRequest,
    Signal.LOG_RECORDS: ExportLogsServiceRequest,
}
# Every signal is decoded in C from the serialized request (``_wire``); the Python walks
# (``decode_traces``, ``decode_logs``, ``decode_metrics``) are the reference the tests hold it to.
_FROM_BYTES = {
    Signal.SPANS: decode_trace_bytes,
    Signal.LOG_RECORDS: decode_log_bytes,
    Signal.METRIC_POINTS: decode_metric_bytes,
}
_renderers: dict[DecodeLimits, AttributeRenderer] = {}


_TOP_LEVEL_KEYS = {
    "resourceSpans": (Signal.SPANS, "/v1/traces"),
    "resource_spans": (Signal.SPANS, "/v1/traces"),
    "resourceMetrics": (Signal.METRIC_POINTS, "/v1/metrics"),
    "resource_metrics": (Signal.METRIC_POINTS, "/v1/metrics"),
    "resourceLogs": (Signal.LOG_RECORDS, "/v1/logs"),
    "resource_logs": (Signal.LOG_RECORDS, "/v1/logs"),
}


def _refuse_other_signal(body: bytes, signal: Signal) -> None:
    """An OTLP/JSON request of another signal would parse as an empty request (unknown fields
    are ignored); say where it belongs instead of acknowledging it and storing nothing."""
    try:
        keys = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    except msgspec.DecodeError:
        return
    for key in keys:
        other = _TOP_LEVEL_KEYS.get(key)
        if other is not None and other[0] is not signal:
            raise InvalidRequest(
                f"this is an OTLP/JSON {other[0].value} request: post it to {other[1]}"
            )


def decode_request(
    signal: Signal,
    body: bytes,
    encoding: Encoding,
    limits: DecodeLimits,
    exported: bool = False,
) -> DecodedRequest:
    """Parse and walk one export request; raises ``InvalidRequest`` when it cannot be read.
    With ``exported``, metric tables stay exported (``otlp.exported_tables``) for a store that
    takes them."""
    renderer = _renderers.get(limits)
    if renderer is None:
        renderer = _renderers[limits] = AttributeRenderer(limits)
    if encoding is Encoding.JSON:
        message = parse_json_request(body, REQUEST_TYPES[signal])
        if not message.ListFields():
            _refuse_other_signal(body, signal)
        # Re-encoding is cheap next to walking items in Python: one decoder for both.
        body = message.SerializeToString()
    if exported and signal is Signal.METRIC_POINTS:
        return decode_metric_bytes(body, renderer, exported=True)
    return _FROM_BYTES[signal](body, renderer)


def decode_in_worker(
    signal: Signal, body: bytes, encoding: Encoding, limits: DecodeLimits, llm_spans: bool
) -> DecodedRequest:
    """:func:`decode_request` in a decode worker process. ``llm_spans``: whether the server's
    process wants the llmops side batch (``decode_traces.llm_spans_wanted`` there; the worker's
    own flag is never set by a plugin). The result goes back pickled, and the C decoder's
    capsule does not pickle: the side batch goes as a record batch."""
    if llm_spans != decode_traces.llm_spans_wanted():
        decode_traces.hand_over_llm_spans(llm_spans)  # this process's only reader: 0 <-> 1
    decoded = decode_request(signal, body, encoding, limits)
    batches = decoded.batches
    side = getattr(batches, "llm_spans", None)
    if side is not None and not isinstance(side, pa.RecordBatch):
        joined = decode_traces.join_llm_spans([side])
        assert joined is not None
        batch = joined.combine_chunks().to_batches()[0]
        batches.llm_spans = batch  # type: ignore[attr-defined]
        batches.llm_spans_nbytes = batch.get_total_buffer_size()  # type: ignore[attr-defined]
    return decoded
