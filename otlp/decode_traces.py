"""``ExportTraceServiceRequest`` → one ``otel_traces`` record batch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from opstrata.otlp import _wire
from opstrata.otlp.anyvalue import AttributeRenderer, render_anyvalue
from opstrata.otlp.columns import StringMapColumn, hex_or_empty, list_column
from opstrata.otlp.decoded import MAX_TIMESTAMP_NS, DecodedRequest, InvalidRequest
from opstrata.otlp.limits import DecodeLimits, Tally
from opstrata.schema import EVENT_TYPE, LINK_TYPE, TRACES, TS, Signal, Table

__all__ = [
    "LLM_PREFIXES",
    "LLM_ROWS",
    "LLM_SIDE_KEYS",
    "LLM_SPANS",
    "SPAN_KINDS",
    "STATUS_CODES",
    "complex_renderer",
    "decode_trace_bytes",
    "decode_traces",
    "hand_over_llm_spans",
    "join_llm_spans",
    "llm_rows",
    "llm_spans_of",
    "llm_spans_wanted",
]

# The strings the Collector's ClickHouse exporter stores
# (``traceutil.SpanKindStr``/``StatusCodeStr``).
SPAN_KINDS = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
STATUS_CODES = ("Unset", "Ok", "Error")


def _service_name(keys: list[str], values: list[str]) -> str:
    for key, value in zip(keys, values, strict=True):
        if key == "service.name":
            return value
    return ""


LLM_ROWS = b"opstrata.llm_rows"
"""Schema metadata of a decoded span batch: the rows (native int32 bytes) of spans whose
attributes have a key starting with one of :data:`LLM_PREFIXES` — a hint for the llmops plugin,
which then need not look up every key of every span. Present (empty when there are none) on
every batch the decoders make; absent on batches from elsewhere (e.g. read back from the store),
which are scanned."""
LLM_PREFIXES = ("gen_ai.", "llm.", "openinference.", "traceloop.")
_HINTED = TRACES.with_metadata({LLM_ROWS: b""})


def llm_rows(keys: list[str], offsets: list[int]) -> bytes:
    """The :data:`LLM_ROWS` hint of a span attribute column given as keys and row offsets (the
    reference for ``_wire``'s ``mark_llm_span``)."""
    rows = [
        row
        for row in range(len(offsets) - 1)
        if any(k.startswith(LLM_PREFIXES) for k in keys[offsets[row] : offsets[row + 1]])
    ]
    return np.asarray(rows, dtype=np.int32).tobytes()


def _hinted(batch: pa.RecordBatch, rows: bytes | None) -> pa.RecordBatch:
    return batch.replace_schema_metadata({LLM_ROWS: rows}) if rows else batch


LLM_SPANS = pa.schema(
    [TRACES.field(name) for name in (
        "Timestamp", "TraceId", "SpanId", "ServiceName", "SpanAttributes", "Duration",
        "StatusCode", "StatusMessage", "Events", "ResourceAttributes",
    )]
)  # fmt: skip
"""The llmops side batch of a request (``Batches.llm_spans``): the marked rows (:data:`LLM_ROWS`)
only, the columns the plugin reads, and of ``SpanAttributes`` only the keys under
:data:`LLM_PREFIXES` and :data:`LLM_SIDE_KEYS` (in their order). Made by the decoder while the
spans are in hand, so that the plugin keeps these small batches instead of whole requests and
takes no rows out of them (``_wire.c``'s ``side_add``)."""
LLM_SIDE_KEYS = frozenset({"session.id", "user.id", "enduser.id", "error.type", "event.name"})
"""Keys outside :data:`LLM_PREFIXES` that the side batch keeps (``_wire.c``'s ``SIDE_KEYS``)."""
_llm_readers = 0
"""How many llmops consumers of this process asked for side batches (two servers in one
process, as in tests, each start and stop their own)."""
_llm_spans = False


def hand_over_llm_spans(on: bool) -> None:
    """One more (``on``) or one fewer reader of the side batch (:data:`LLM_SPANS`): the span
    decoders of this process make it while there is any. The llmops plugin asks for it when it
    starts and withdraws when it stops; without the plugin nobody reads it. The flag is per
    process: a server without the plugin beside one with it makes side batches it never reads
    (correct, only slower), and decode workers are told per request (``decoder.decode_in_worker``).
    """
    global _llm_readers, _llm_spans
    if not on and _llm_readers == 0:
        raise RuntimeError("hand_over_llm_spans(False) without a reader")
    _llm_readers += 1 if on else -1
    _llm_spans = _llm_readers > 0


def llm_spans_wanted() -> bool:
    """Whether the span decoders of this process make side batches now."""
    return _llm_spans


def join_llm_spans(sides: list[object]) -> pa.Table | None:
    """Side batches of a group of requests (``Batches.llm_spans``: the C decoder's capsules,
    or record batches of the Python walk and of decode workers) as one table; ``None`` for
    none. The capsules are joined in C into one batch and imported once (an import costs
    ~13 µs, as much for a request's few rows as for a group's thousands)."""
    if not sides:
        return None
    capsules = [s for s in sides if not isinstance(s, pa.RecordBatch)]
    batches = [s for s in sides if isinstance(s, pa.RecordBatch)]
    if capsules:
        capsule, address, _ = _wire.join_llm_spans(capsules)
        batches.insert(0, _import_batch(address, LLM_SPANS))
        del capsule  # the import moved the arrays out
    return pa.Table.from_batches(batches, LLM_SPANS)


def _side_key(key: str) -> bool:
    return key.startswith(LLM_PREFIXES) or key in LLM_SIDE_KEYS


def llm_spans_of(batch: pa.RecordBatch, rows: np.ndarray) -> pa.RecordBatch | None:
    """The side batch of ``batch``'s marked ``rows`` (``None`` without any), in Python: the
    reference for the C decoder's, and what the Python walk hands over."""
    if not len(rows):
        return None
    at = pa.array(np.asarray(rows, dtype=np.int64))
    columns = [batch.column(name).take(at) for name in LLM_SPANS.names]
    index = LLM_SPANS.get_field_index("SpanAttributes")
    kept = [[(k, v) for k, v in pairs if _side_key(k)] for pairs in columns[index].to_pylist()]
    columns[index] = pa.array(kept, LLM_SPANS.field(index).type)
    return pa.RecordBatch.from_arrays(columns, schema=LLM_SPANS)


# Why a span is rejected; ``_wire`` reports the index of one of these.
_REASONS = (
    "trace_id must be 16 bytes and not all zero",
    "span_id must be 8 bytes and not all zero",
    "parent_span_id must be empty or 8 bytes",
    "timestamp out of range",
)


def _invalid_reason(span) -> str | None:
    if len(span.trace_id) != 16 or not span.trace_id.strip(b"\x00"):
        return _REASONS[0]
    if len(span.span_id) != 8 or not span.span_id.strip(b"\x00"):
        return _REASONS[1]
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return _REASONS[2]
    if span.start_time_unix_nano > MAX_TIMESTAMP_NS or span.end_time_unix_nano > MAX_TIMESTAMP_NS:
        return _REASONS[3]
    return None


def decode_traces(request: ExportTraceServiceRequest, attrs: AttributeRenderer) -> DecodedRequest:
    """Walk a parsed request into columns; invalid spans are counted, not stored."""
    tally = Tally()
    out = DecodedRequest(Signal.SPANS)
    first_reason: str | None = None

    ts: list[int] = []
    trace_ids: list[str] = []
    span_ids: list[str] = []
    parent_ids: list[str] = []
    trace_states: list[str] = []
    names: list[str] = []
    kinds: list[str] = []
    services: list[str] = []
    scope_names: list[str] = []
    scope_versions: list[str] = []
    durations: list[int] = []
    status_codes: list[str] = []
    status_messages: list[str] = []
    flags: list[int] = []
    res_attrs = StringMapColumn()
    scope_attrs = StringMapColumn()
    span_attrs = StringMapColumn()

    ev_offsets = [0]
    ev_ts: list[int] = []
    ev_names: list[str] = []
    ev_attrs = StringMapColumn()
    link_offsets = [0]
    link_trace_ids: list[str] = []
    link_span_ids: list[str] = []
    link_states: list[str] = []
    link_attrs = StringMapColumn()

    n_kinds = len(SPAN_KINDS)
    n_codes = len(STATUS_CODES)
    for resource_spans in request.resource_spans:
        rkeys, rvalues = attrs.pairs(resource_spans.resource.attributes, tally)
        service = _service_name(rkeys, rvalues)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            scope_name = scope.name
            scope_version = scope.version
            skeys, svalues = attrs.pairs(scope.attributes, tally)
            for span in scope_spans.spans:
                reason = _invalid_reason(span)
                if reason is not None:
                    out.rejected += 1
                    first_reason = first_reason or reason
                    continue
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                ts.append(start)
                durations.append(end - start if end > start else 0)
                trace_ids.append(span.trace_id.hex())
                span_ids.append(span.span_id.hex())
                parent_ids.append(hex_or_empty(span.parent_span_id))
                trace_states.append(span.trace_state)
                names.append(span.name)
                kind = span.kind
                kinds.append(SPAN_KINDS[kind] if 0 <= kind < n_kinds else str(kind))
                status = span.status
                code = status.code
                status_codes.append(STATUS_CODES[code] if 0 <= code < n_codes else str(code))
                status_messages.append(status.message)
                flags.append(span.flags)
                services.append(service)
                scope_names.append(scope_name)
                scope_versions.append(scope_version)
                res_attrs.extend_row(rkeys, rvalues)
                scope_attrs.extend_row(skeys, svalues)
                attrs.extend(span.attributes, span_attrs.keys, span_attrs.values, tally)
                span_attrs.close_row()
                for event in span.events:
                    ev_ts.append(min(event.time_unix_nano, MAX_TIMESTAMP_NS))
                    ev_names.append(event.name)
                    attrs.extend(event.attributes, ev_attrs.keys, ev_attrs.values, tally)
                    ev_attrs.close_row()
                ev_offsets.append(len(ev_ts))
                for link in span.links:
                    link_trace_ids.append(hex_or_empty(link.trace_id))
                    link_span_ids.append(hex_or_empty(link.span_id))
                    link_states.append(link.trace_state)
                    attrs.extend(link.attributes, link_attrs.keys, link_attrs.values, tally)
                    link_attrs.close_row()
                link_offsets.append(len(link_trace_ids))

    out.settle(len(ts), tally, "span(s)", first_reason)
    if not ts:
        return out

    events = pa.StructArray.from_arrays(
        [pa.array(ev_ts, TS), pa.array(ev_names, pa.string()), ev_attrs.to_arrow()],
        fields=list(EVENT_TYPE),
    )
    links = pa.StructArray.from_arrays(
        [
            pa.array(link_trace_ids, pa.string()),
            pa.array(link_span_ids, pa.string()),
            pa.array(link_states, pa.string()),
            link_attrs.to_arrow(),
        ],
        fields=list(LINK_TYPE),
    )
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(ts, TS),
            pa.array(trace_ids, pa.string()),
            pa.array(span_ids, pa.string()),
            pa.array(parent_ids, pa.string()),
            pa.array(trace_states, pa.string()),
            pa.array(names, pa.string()),
            pa.array(kinds, pa.string()),
            pa.array(services, pa.string()),
            res_attrs.to_arrow(),
            pa.array(scope_names, pa.string()),
            pa.array(scope_versions, pa.string()),
            span_attrs.to_arrow(),
            pa.array(durations, pa.int64()),
            pa.array(status_codes, pa.string()),
            pa.array(status_messages, pa.string()),
            list_column(ev_offsets, events, TRACES.field("Events").type),
            list_column(link_offsets, links, TRACES.field("Links").type),
            scope_attrs.to_arrow(),
            pa.array(flags, pa.uint32()),
        ],
        schema=_HINTED,
    )
    hint = llm_rows(span_attrs.keys, span_attrs.offsets)
    out.batches.append((Table.TRACES, _hinted(batch, hint)))
    if _llm_spans:
        side = llm_spans_of(batch, np.frombuffer(hint, np.int32))
        out.batches.llm_spans = side  # type: ignore[attr-defined]
        out.batches.llm_spans_nbytes = (  # type: ignore[attr-defined]
            side.get_total_buffer_size() if side is not None else 0
        )
    return out


# --- The same from the serialized request, decoded in C (``otlp/_wire.c``) ---------------------

# ``_wire`` hands the batch over through the Arrow C data interface; importing it with the
# schema object saves re-reading the schema from C on every request.
_import_batch = pa.RecordBatch._import_from_c


def complex_renderer(limits: DecodeLimits) -> Callable[[bytes], tuple[str, int]]:
    """Renders the array/map values that ``_wire`` leaves to Python, from a serialized KeyValue."""

    def render(raw: bytes) -> tuple[str, int]:
        tally = Tally()
        text = render_anyvalue(KeyValue.FromString(raw).value, limits, tally)
        return text, tally.truncated_values

    return render


def decode_trace_bytes(data: bytes, attrs: AttributeRenderer) -> DecodedRequest:
    """Decode a serialized ``ExportTraceServiceRequest`` without building protobuf objects.

    The result equals ``decode_traces(ExportTraceServiceRequest.FromString(data), attrs)``;
    bytes that upb would refuse raise :class:`InvalidRequest`. ``attrs`` supplies the limits
    (its memo of rendered pairs is not needed here).
    """
    limits = attrs.limits
    if not isinstance(data, bytes):
        data = bytes(data)  # an immutable copy: the C code keeps pointers into it
    try:
        (
            rejected,
            reason,
            dropped,
            truncated,
            capsule,
            address,
            hint,
            nbytes,
            event_time,
            starts,
            side,
            side_nbytes,
        ) = _wire.decode_traces(
            data,
            limits.max_attributes,
            limits.max_value_chars,
            complex_renderer(limits),
            _llm_spans,
        )
    except (_wire.DecodeError, ProtobufDecodeError) as exc:
        raise InvalidRequest(f"cannot parse protobuf ExportTraceServiceRequest: {exc}") from None
    out = DecodedRequest(
        Signal.SPANS,
        rejected=rejected,
        dropped_attributes=dropped,
        truncated_values=truncated,
        buffer_bytes=nbytes,
    )
    if reason >= 0:
        out.message = f"{rejected} span(s) rejected: {_REASONS[reason]}"
    if capsule is not None:
        batch = _import_batch(address, _HINTED)  # moves the arrays out; ``capsule`` frees the rest
        out.accepted = batch.num_rows
        out.batches.append((Table.TRACES, _hinted(batch, hint)))
    out.batches.event_time = event_time  # type: ignore[attr-defined]
    out.batches.resource_starts = (  # type: ignore[attr-defined]
        {Table.TRACES: np.frombuffer(starts, np.int32)} if capsule is not None else {}
    )
    if side is not None:  # a capsule: joined with the others of its group and imported once
        out.batches.llm_spans = side  # type: ignore[attr-defined]
        out.batches.llm_spans_nbytes = side_nbytes  # type: ignore[attr-defined]
    return out
