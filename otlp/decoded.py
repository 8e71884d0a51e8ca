"""What decoding one OTLP export request produces."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from opstrata.otlp.exported_tables import ExportedTable
from opstrata.otlp.limits import Tally
from opstrata.schema import TABLES, Signal, Table

__all__ = [
    "MAX_TIMESTAMP_NS",
    "Batches",
    "DecodedRequest",
    "InvalidRequest",
    "side_batch_bytes",
]

# Arrow and DuckDB keep nanosecond timestamps as signed 64-bit numbers.
MAX_TIMESTAMP_NS = 2**63 - 1


# What holding a decoded request costs beyond its buffers' bytes, per Arrow buffer: the malloc
# slack the C decoder leaves (it trims a buffer only past 4 KiB of slack) and the C++ objects
# of the imported arrays. Measured with glibc's ``mallinfo2`` over 500 decoded bench requests
# (docs/performance.md, "Ingest, sixth round"): 1.0 KiB per buffer for spans and for metric
# points alike; without it a held metrics request counted a third of its real size.
BUFFER_OVERHEAD = 1024
EXPORTED_OVERHEAD = 12 * 1024
"""What holding one metrics table still exported (``otlp.exported_tables``) costs beyond its
buffers: they sit in one block, and the C holder of its Arrow tree is ~7.7 KiB; no C++ object
exists until the store's commit. ``mallinfo2`` over 500 held bench requests: 91.4 KiB a request
of three tables against 63.4 KiB of buffers (docs/performance.md, "Ingest, eleventh round:
metric points"), where the per-buffer cost charged 217 KiB."""


def _buffers(table: Table) -> int:
    """Buffers of one batch of ``table`` (children included; absent validity bitmaps not)."""
    return sum(
        sum(1 for buffer in pa.array([], type=field.type).buffers() if buffer is not None)
        for field in TABLES[table]
    )


_BUFFERS = {table: _buffers(table) for table in TABLES}
_SIDE_BUFFERS = 1
"""Allocations of a request's llmops side batch: the C decoder hands it over as one block
(``_wire.c``, "Handing side batches over"), ``llm_spans_nbytes`` its whole size."""


def side_batch_bytes(batches: object) -> int:
    """Memory held by the llmops side batch a span decoder made beside ``batches`` (0: none),
    counted like :attr:`DecodedRequest.nbytes` counts the batches."""
    side = getattr(batches, "llm_spans_nbytes", 0)
    return side + BUFFER_OVERHEAD * _SIDE_BUFFERS if side else 0


def fixed_cost(table: Table, batch: object) -> int:
    """What holding ``batch`` of ``table`` costs beyond its buffers' bytes."""
    if isinstance(batch, ExportedTable):
        return EXPORTED_OVERHEAD
    return BUFFER_OVERHEAD * _BUFFERS[table]


class Batches(list[tuple[Table, pa.RecordBatch]]):
    """A request's ``(table, record batch)`` pairs, with their event time when the decoder
    worked it out.

    ``event_time`` is exactly what :func:`opstrata.consumers.latest_event_time` finds in these
    batches (the greatest of the tables' median timestamps, 0 without rows), -1 when unknown.
    The C decoders see every timestamp and hand it over with the batches, so that the fan-out
    (``CommittedBatch.of``, on the event loop) need not work it out again: ~10 µs per table.
    Set once the list is complete; a list changed afterwards must reset it to -1.
    """

    event_time: int = -1
    resource_starts: dict[Table, np.ndarray] | None = None
    """Per table, the rows where each ``Resource*`` of the request starts (int32, ascending,
    the first 0), as the C decoders walk them; None when not known (the reference decoders,
    JSON). Two consecutive resources with equal attributes are two starts: users take runs as
    "may repeat". A list changed afterwards must reset it to None."""
    llm_spans: object | None = None
    """The LLM spans' side batch (``otlp.decode_traces.LLM_SPANS``) when the span decoder was
    asked for it and marked any span: a capsule of the C decoder's (imported by
    ``decode_traces.join_llm_spans``) or a record batch; its buffers' bytes in
    ``llm_spans_nbytes``."""
    llm_spans_nbytes: int = 0


class InvalidRequest(ValueError):
    """The request as a whole cannot be read (malformed protobuf or JSON): a permanent error."""


@dataclass(slots=True)
class DecodedRequest:
    """The columnar batches of one request and the count of items accepted and rejected.

    ``batches`` holds one record batch per table that received rows, in the schemas of
    :mod:`opstrata.schema`. ``rejected`` items were invalid (for example a trace id that is not
    16 bytes) and are reported to the client through ``partial_success`` with ``message``.
    """

    signal: Signal
    batches: list[tuple[Table, pa.RecordBatch]] = field(default_factory=Batches)
    accepted: int = 0
    rejected: int = 0
    message: str = ""
    dropped_attributes: int = 0
    truncated_values: int = 0
    buffer_bytes: int = -1
    """The batches' buffer bytes as ``get_total_buffer_size`` counts them, when the decoder
    knows them (the C decoders do: walking the batches again cost 8-27 µs per request on the
    event loop); -1 when not known."""

    def settle(self, accepted: int, tally: Tally, items: str, reason: str | None) -> None:
        """Record the counts of a finished walk; ``reason`` is why the first rejected item was
        rejected, and ``items`` names them in the message (``span(s)``, ``log record(s)``)."""
        self.accepted = accepted
        self.dropped_attributes = tally.dropped_attributes
        self.truncated_values = tally.truncated_values
        if self.rejected and reason is not None:
            self.message = f"{self.rejected} {items} rejected: {reason}"

    @property
    def nbytes(self) -> int:
        """Memory held by the batches: their whole buffers (the decoder's own, neither shared
        nor sliced) and a fixed cost per buffer. ``RecordBatch.nbytes`` works out referenced
        byte ranges column by column, ~65 µs per request of 100 spans on the event loop."""
        overhead = sum(fixed_cost(table, batch) for table, batch in self.batches)
        overhead += side_batch_bytes(self.batches)
        if self.buffer_bytes >= 0:
            return self.buffer_bytes + overhead
        return sum(batch.get_total_buffer_size() for _, batch in self.batches) + overhead
