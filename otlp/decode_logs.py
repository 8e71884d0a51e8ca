"""``ExportLogsServiceRequest`` → one ``otel_logs`` record batch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from opstrata.otlp import _wire
from opstrata.otlp.anyvalue import AttributeRenderer, render_anyvalue
from opstrata.otlp.columns import StringMapColumn, hex_or_empty
from opstrata.otlp.decode_traces import complex_renderer
from opstrata.otlp.decoded import MAX_TIMESTAMP_NS, DecodedRequest, InvalidRequest
from opstrata.otlp.limits import Tally
from opstrata.otlp.scopes import ScopeColumns
from opstrata.schema import LOGS, TS, Signal, Table

__all__ = ["decode_log_bytes", "decode_logs"]

# Unlike spans, a log record may lack ids altogether: only ids of the wrong size are errors.
_TRACE_ID_SIZES = frozenset((0, 16))
_SPAN_ID_SIZES = frozenset((0, 8))


# Why a record is rejected; ``_wire`` reports the index of one of these.
_REASONS = (
    "trace_id must be empty or 16 bytes",
    "span_id must be empty or 8 bytes",
    "timestamp out of range",
)


def _invalid_reason(record) -> str | None:
    if len(record.trace_id) not in _TRACE_ID_SIZES:
        return _REASONS[0]
    if len(record.span_id) not in _SPAN_ID_SIZES:
        return _REASONS[1]
    if (
        record.time_unix_nano > MAX_TIMESTAMP_NS
        or record.observed_time_unix_nano > MAX_TIMESTAMP_NS
    ):
        return _REASONS[2]
    return None


def decode_logs(request: ExportLogsServiceRequest, attrs: AttributeRenderer) -> DecodedRequest:
    """Walk a parsed request into columns; invalid log records are counted, not stored.

    Columns are filled a scope at a time, one comprehension per column over the scope's
    records: cheaper per record than appending a row at a time.
    """
    tally = Tally()
    out = DecodedRequest(Signal.LOG_RECORDS)
    first_reason: str | None = None
    limits = attrs.limits

    scopes = ScopeColumns()
    runs: list[tuple[int, int]] = []
    ts: list[int] = []
    observed: list[int] = []
    trace_ids: list[str] = []
    span_ids: list[str] = []
    flags: list[int] = []
    severity_texts: list[str] = []
    severity_numbers: list[int] = []
    bodies: list[str] = []
    event_names: list[str] = []
    log_attrs = StringMapColumn()

    for resource_logs in request.resource_logs:
        scopes.set_resource(resource_logs, attrs, tally)
        for scope_logs in resource_logs.scope_logs:
            # Materialised once, so that each pass below reuses the same message wrappers.
            records = list(scope_logs.log_records)
            if not records:
                continue
            times = [r.time_unix_nano for r in records]
            seen = [r.observed_time_unix_nano for r in records]
            tids = [r.trace_id for r in records]
            sids = [r.span_id for r in records]
            if (
                max(times) > MAX_TIMESTAMP_NS
                or max(seen) > MAX_TIMESTAMP_NS
                or not _TRACE_ID_SIZES.issuperset(map(len, tids))
                or not _SPAN_ID_SIZES.issuperset(map(len, sids))
            ):
                keep = []
                for i, record in enumerate(records):
                    reason = _invalid_reason(record)
                    if reason is None:
                        keep.append(i)
                    else:
                        out.rejected += 1
                        first_reason = first_reason or reason
                if not keep:
                    continue
                records, times, seen, tids, sids = (
                    [column[i] for i in keep] for column in (records, times, seen, tids, sids)
                )
            runs.append((scopes.add_scope(scope_logs, attrs, tally), len(records)))
            # As the Collector's exporter does: a record without its own time is stored at the
            # time it was observed, so that it still sorts and partitions sensibly.
            ts += [t or o for t, o in zip(times, seen, strict=True)]
            observed += seen
            trace_ids += map(hex_or_empty, tids)
            span_ids += map(hex_or_empty, sids)
            flags += [r.flags for r in records]
            severity_texts += [r.severity_text for r in records]
            numbers = [r.severity_number for r in records]
            # An open enum on the wire: any int32 may arrive, but the column is uint8.
            if min(numbers) < 0 or max(numbers) > 255:
                numbers = [min(max(n, 0), 255) for n in numbers]
            severity_numbers += numbers
            bodies += [render_anyvalue(r.body, limits, tally) for r in records]
            event_names += [r.event_name for r in records]
            keys = log_attrs.keys
            values = log_attrs.values
            for record in records:
                attrs.extend(record.attributes, keys, values, tally)
                log_attrs.close_row()

    out.settle(len(ts), tally, "log record(s)", first_reason)
    if not ts:
        return out

    columns = scopes.to_arrow(runs, LOGS.names)
    columns.update(
        Timestamp=pa.array(ts, TS),
        ObservedTimestamp=pa.array(observed, TS),
        TraceId=pa.array(trace_ids, pa.string()),
        SpanId=pa.array(span_ids, pa.string()),
        TraceFlags=pa.array(flags, pa.uint32()),
        SeverityText=pa.array(severity_texts, pa.string()),
        SeverityNumber=pa.array(severity_numbers, pa.uint8()),
        Body=pa.array(bodies, pa.string()),
        LogAttributes=log_attrs.to_arrow(),
        EventName=pa.array(event_names, pa.string()),
    )
    batch = pa.RecordBatch.from_arrays([columns[name] for name in LOGS.names], schema=LOGS)
    out.batches.append((Table.LOGS, batch))
    return out


# --- The same from the serialized request, decoded in C (``otlp/_wire_logs.c``) ----------------

_import_batch = pa.RecordBatch._import_from_c


def decode_log_bytes(data: bytes, attrs: AttributeRenderer) -> DecodedRequest:
    """Decode a serialized ``ExportLogsServiceRequest`` without building protobuf objects.

    The result equals ``decode_logs(ExportLogsServiceRequest.FromString(data), attrs)``; bytes
    that upb would refuse raise :class:`InvalidRequest`. ``attrs`` supplies the limits.
    """
    limits = attrs.limits
    if not isinstance(data, bytes):
        data = bytes(data)  # an immutable copy: the C code keeps pointers into it
    try:
        rejected, reason, dropped, truncated, capsule, address, nbytes, event_time, starts = (
            _wire.decode_logs(
                data, limits.max_attributes, limits.max_value_chars, complex_renderer(limits)
            )
        )
    except (_wire.DecodeError, ProtobufDecodeError) as exc:
        raise InvalidRequest(f"cannot parse protobuf ExportLogsServiceRequest: {exc}") from None
    out = DecodedRequest(
        Signal.LOG_RECORDS,
        rejected=rejected,
        dropped_attributes=dropped,
        truncated_values=truncated,
        buffer_bytes=nbytes,
    )
    if reason >= 0:
        out.message = f"{rejected} log record(s) rejected: {_REASONS[reason]}"
    if capsule is not None:
        batch = _import_batch(address, LOGS)  # moves the arrays out; ``capsule`` frees the rest
        out.accepted = batch.num_rows
        out.batches.append((Table.LOGS, batch))
    out.batches.event_time = event_time  # type: ignore[attr-defined]
    out.batches.resource_starts = (  # type: ignore[attr-defined]
        {Table.LOGS: np.frombuffer(starts, np.int32)} if capsule is not None else {}
    )
    return out
