"""What decoding one OTLP export request produces."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from opstrata.schema import Signal, Table

__all__ = ["MAX_TIMESTAMP_NS", "DecodedRequest", "InvalidRequest"]

# Arrow and DuckDB keep nanosecond timestamps as signed 64-bit numbers.
MAX_TIMESTAMP_NS = 2**63 - 1


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
    batches: list[tuple[Table, pa.RecordBatch]] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0
    message: str = ""
    dropped_attributes: int = 0
    truncated_values: int = 0

    @property
    def nbytes(self) -> int:
        return sum(batch.nbytes for _, batch in self.batches)
