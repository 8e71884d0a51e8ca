"""``ExportLogsServiceRequest`` → one ``otel_logs`` record batch."""

from __future__ import annotations

import pyarrow as pa
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from opstrata.otlp.anyvalue import AttributeRenderer, render_anyvalue
from opstrata.otlp.columns import StringMapColumn, hex_or_empty
from opstrata.otlp.decoded import MAX_TIMESTAMP_NS, DecodedRequest
from opstrata.otlp.limits import Tally
from opstrata.otlp.scopes import ScopeColumns, take_scopes
from opstrata.schema import LOGS, TS, Signal, Table

__all__ = ["decode_logs"]


def _invalid_reason(record) -> str | None:  # noqa: ANN001
    # Unlike spans, a log record may lack ids altogether; only ids of the wrong size are errors.
    trace_id = record.trace_id
    if trace_id and len(trace_id) != 16:
        return "trace_id must be empty or 16 bytes"
    span_id = record.span_id
    if span_id and len(span_id) != 8:
        return "span_id must be empty or 8 bytes"
    if record.time_unix_nano > MAX_TIMESTAMP_NS or record.observed_time_unix_nano > MAX_TIMESTAMP_NS:
        return "timestamp out of range"
    return None


def decode_logs(request: ExportLogsServiceRequest, attrs: AttributeRenderer) -> DecodedRequest:
    """Walk a parsed request into columns; invalid log records are counted, not stored."""
    tally = Tally()
    out = DecodedRequest(Signal.LOG_RECORDS)
    first_reason: str | None = None
    limits = attrs.limits

    scopes = ScopeColumns()
    scope_rows: list[int] = []
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
    lkeys = log_attrs.keys
    lvalues = log_attrs.values

    for resource_logs in request.resource_logs:
        scopes.set_resource(resource_logs, attrs, tally)
        for scope_logs in resource_logs.scope_logs:
            records = scope_logs.log_records
            if not records:
                continue
            scope_id = scopes.add_scope(scope_logs, attrs, tally)
            before = len(ts)
            for record in records:
                reason = _invalid_reason(record)
                if reason is not None:
                    out.rejected += 1
                    first_reason = first_reason or reason
                    continue
                observed_ns = record.observed_time_unix_nano
                # As the Collector's exporter does: a record without its own time is stored at
                # the time it was observed, so that it still sorts and partitions sensibly.
                ts.append(record.time_unix_nano or observed_ns)
                observed.append(observed_ns)
                trace_ids.append(hex_or_empty(record.trace_id))
                span_ids.append(hex_or_empty(record.span_id))
                flags.append(record.flags)
                severity_texts.append(record.severity_text)
                # An open enum on the wire: any int32 may arrive, the column is uint8.
                severity = record.severity_number
                severity_numbers.append(severity if 0 <= severity <= 255 else (severity > 0) * 255)
                bodies.append(render_anyvalue(record.body, limits, tally))
                event_names.append(record.event_name)
                attrs.extend(record.attributes, lkeys, lvalues, tally)
                log_attrs.close_row()
            scope_rows.extend([scope_id] * (len(ts) - before))

    out.accepted = len(ts)
    out.dropped_attributes = tally.dropped_attributes
    out.truncated_values = tally.truncated_values
    if first_reason is not None:
        out.message = f"{out.rejected} log record(s) rejected: {first_reason}"
    if not ts:
        return out

    columns = take_scopes(scopes.to_batch(), scope_rows)
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
