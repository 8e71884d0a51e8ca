"""Decoded tables still in the C decoder's buffers, imported into pyarrow once per commit.

A metrics request fills up to three tables of ~40 Arrow nodes each. Importing each request's
tables into pyarrow on the event loop, concatenating hundreds of them in the store's writer and
freeing them in the last consumer cost per node, with the GIL held mostly: ~0.6 µs a node at
import alone (docs/performance.md, "Ingest, ninth round"), ~3 µs a metric point in all. An
:class:`ExportedTable` keeps a request's table as the decoder exported it (an Arrow C data
interface struct array in a capsule); the store concatenates a commit's worth in C without the
GIL (``_wire.concat_tables``), imports the result once, and hands each request a zero-copy slice
of it for the consumers (docs/ingest.md, "Decoding and committing").
"""

from __future__ import annotations

import ctypes

import pyarrow as pa

from opstrata.otlp import _wire

__all__ = ["ExportedTable", "concat_exported", "layout_of", "release_exported"]

_import_batch = pa.RecordBatch._import_from_c


def layout_of(schema: pa.Schema) -> bytes:
    """The physical layout of a record batch of ``schema`` in pre-order, as
    ``_wire.concat_tables`` reads it."""
    return b"S" + b"".join(_layout(field.type) for field in schema)


def _layout(kind: pa.DataType) -> bytes:
    if pa.types.is_map(kind):
        return b"LS" + _layout(kind.key_type) + _layout(kind.item_type)
    if pa.types.is_list(kind):
        return b"L" + _layout(kind.value_type)
    if pa.types.is_struct(kind):
        return b"S" + b"".join(_layout(field.type) for field in kind)
    if pa.types.is_string(kind):
        return b"U"
    if pa.types.is_boolean(kind):
        return b"B"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_timestamp(kind):
        return str(kind.bit_width // 8).encode()
    raise TypeError(f"no concatenation layout for {kind}")


class ExportedTable:
    """One request's table as the C decoder exported it: ``num_rows`` is known, the arrays are
    imported by :meth:`to_batch` (once; later calls return the same batch)."""

    __slots__ = ("_batch", "address", "capsule", "layout", "num_rows", "schema")

    def __init__(self, capsule: object, address: int, schema: pa.Schema, layout: bytes) -> None:
        self.capsule = capsule
        self.address = address
        self.schema = schema
        self.layout = layout
        self.num_rows = ctypes.c_int64.from_address(address).value  # ArrowArray.length
        self._batch: pa.RecordBatch | None = None

    @property
    def imported(self) -> bool:
        return self._batch is not None

    def to_batch(self) -> pa.RecordBatch:
        if self._batch is None:
            # Moves the arrays out of the capsule's root; the capsule frees what is left.
            self._batch = _import_batch(self.address, self.schema)
        return self._batch

    def __reduce__(self) -> tuple:
        # A decode worker process hands its result over by pickling: as an ordinary batch.
        return (_identity, (self.to_batch(),))


def _identity(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch


def concat_exported(tables: list[ExportedTable]) -> pa.RecordBatch:
    """The tables (all of one schema, none imported) as one record batch: their buffers copied
    in C without the GIL, imported once. The tables stay as they were."""
    first = tables[0]
    capsule, address = _wire.concat_tables(first.layout, [t.capsule for t in tables])
    batch = _import_batch(address, first.schema)
    del capsule  # after the import: it frees the root the arrays were moved out of
    return batch


def release_exported(tables: list[ExportedTable]) -> None:
    """Free the tables' buffers now, without the GIL (a commit's worth is ~10^5 buffers): the
    store does this once their rows are committed and handed on as slices."""
    _wire.release_tables([t.capsule for t in tables if t._batch is None])
