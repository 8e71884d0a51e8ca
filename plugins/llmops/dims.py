"""The calls' low-cardinality text as one id: ``llmops_dims`` holds each distinct combination of
``DIM_COLUMNS`` once, under a ``DimId``, and ``llmops_call_rows`` holds the calls with that id in
place of those columns. ``llmops_calls`` is a view joining the two, with the columns readers
always had (``CALLS`` and ``MessageBlock``).

Why: DuckDB's insert and commit of a write's calls cost ~0.1 µs a string value and more again
at commit (WAL); thirteen of the seventeen text columns take one to five values in a write
(service, provider, models, operation, ...), and as one BIGINT the insert and commit of 2,859
calls took 7.4 ms instead of 13.8.

Ids are given column-wise: each column dictionary-encoded, the codes combined into one int64
key, the few distinct keys found with ``np.unique``, and only those looked up (as tuples) in a
map loaded from ``llmops_dims`` at start. New combinations are inserted in the transaction that
stores their calls, and enter the map only once it has committed (:meth:`Dims.remember`): ids
given out in a transaction that rolled back are never used again, and never stay in the map.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.plugins.llmops import _dimkeys  # type: ignore[attr-defined]
from opstrata.plugins.llmops.recognise import CALLS

__all__ = [
    "CALL_ROWS",
    "DIMS_TABLE",
    "DIM_COLUMNS",
    "ROWS_TABLE",
    "Assigned",
    "Combinations",
    "Dims",
    "Pending",
    "dense_groups",
    "dims_of",
    "group_rows",
    "insert_calls",
    "view_ddl",
]

DIMS_TABLE = "llmops_dims"
ROWS_TABLE = "llmops_call_rows"
DIM_COLUMNS = (
    "ServiceName", "Provider", "RequestModel", "ResponseModel", "Model", "Operation", "Source",
    "Conventions", "CostSource", "FinishReason", "ErrorType", "PromptName", "PromptVersion",
)  # fmt: skip
"""Columns of ``CALLS`` stored once per distinct combination (few values each in a write);
the others (ids, numbers, sessions, users) stay per call."""
CALL_ROWS = pa.schema(
    [("DimId", pa.int64()) if f.name == "ServiceName" else f for f in CALLS
     if f.name == "ServiceName" or f.name not in DIM_COLUMNS]
    + [("MessageBlock", pa.int64()), ("Seq", pa.int64())]
)  # fmt: skip
"""``llmops_call_rows``: ``CALLS`` with ``DimId`` where the dimension columns were, the block
of the call's messages, and the batch (``Seq``) whose write stored it: the writer's progress,
stored with the calls instead of by one more statement (see :mod:`.writer`)."""
_LIMIT = 1 << 62
"""Combined keys stay below this; past it the key so far is renumbered densely first."""

Pending = dict[tuple[Any, ...], int]
"""Combinations given an id in a transaction not yet committed."""


class Assigned(NamedTuple):
    ids: pa.Array
    new: pa.Table | None
    pending: Pending
    groups: Combinations
    """The calls' combinations of ``DIM_COLUMNS``."""


def view_ddl(view: str) -> str:
    """The ``llmops_calls`` view: ``CALLS`` and ``MessageBlock``, in that order."""
    columns = ", ".join(
        f'd."{f.name}"' if f.name in DIM_COLUMNS else f'c."{f.name}"' for f in CALLS
    )
    return (
        f'CREATE OR REPLACE VIEW {view} AS SELECT {columns}, c."MessageBlock" '
        f'FROM {ROWS_TABLE} c JOIN {DIMS_TABLE} d ON c."DimId" = d."DimId"'
    )


class Dims:
    """The id of every stored combination, and the next id to give (one per store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[tuple[Any, ...], int] = {}
        self._next = 1

    def load(self, cursor: Any) -> None:
        names = ", ".join(f'"{c}"' for c in DIM_COLUMNS)
        rows = cursor.execute(f'SELECT "DimId", {names} FROM {DIMS_TABLE}').fetchall()
        with self._lock:
            self._ids = {tuple(row[1:]): row[0] for row in rows}
            self._next = max(self._next, max((row[0] for row in rows), default=0) + 1)

    def __len__(self) -> int:
        return len(self._ids)

    def assign(self, calls: pa.Table) -> Assigned:
        """Each call's ``DimId``, the ``llmops_dims`` rows to insert with them (None: all
        known), the new combinations to :meth:`remember` once they are committed, and the
        calls' combinations (:func:`group_rows`)."""
        combinations = group_rows(calls, DIM_COLUMNS)
        combos = combinations.values
        ids = np.empty(len(combos), dtype=np.int64)
        pending: Pending = {}
        with self._lock:
            for i, combo in enumerate(combos):
                known = self._ids.get(combo)
                if known is None:  # never reused, even if its transaction rolls back
                    known = pending[combo] = self._next
                    self._next += 1
                ids[i] = known
        dim_ids = pa.array(ids[combinations.group], pa.int64())
        if not pending:
            return Assigned(dim_ids, None, pending, combinations)
        new = pa.table(
            {
                "DimId": pa.array(list(pending.values()), pa.int64()),
                **{
                    name: pa.array([combo[j] for combo in pending], pa.string())
                    for j, name in enumerate(DIM_COLUMNS)
                },
            }
        )
        return Assigned(dim_ids, new, pending, combinations)

    def remember(self, pending: Pending) -> None:
        """The combinations of a committed transaction: known from now on."""
        if pending:
            with self._lock:
                self._ids.update(pending)


def insert_calls(cursor: Any, dims: Dims, calls: pa.Table, seq: int | None = None) -> Assigned:
    """Insert ``calls`` (``CALLS`` rows, with ``MessageBlock`` or without), stored by the
    write of batch ``seq``, and their new combinations, in the caller's transaction;
    :meth:`Dims.remember` its ``pending`` once that has committed."""
    assigned = dims.assign(calls)
    dim_ids, new = assigned.ids, assigned.new
    # Found by DuckDB's replacement scan (locals of this frame).
    llmops_pending_rows = calls.drop_columns(list(DIM_COLUMNS)).append_column("DimId", dim_ids)
    if seq is not None:
        llmops_pending_rows = llmops_pending_rows.append_column(
            "Seq", pa.array(np.full(calls.num_rows, seq, dtype=np.int64))
        )
    llmops_pending_dims = new
    if llmops_pending_dims is not None:
        cursor.execute(f"INSERT INTO {DIMS_TABLE} BY NAME SELECT * FROM llmops_pending_dims")
    cursor.execute(f"INSERT INTO {ROWS_TABLE} BY NAME SELECT * FROM llmops_pending_rows")
    del llmops_pending_rows
    return assigned


class Combinations(NamedTuple):
    """The distinct combinations of some text columns in a table's rows."""

    first: np.ndarray
    """A row of each combination (the first)."""
    group: np.ndarray
    """Each row's combination: 0, 1, ..."""
    values: list[tuple[Any, ...]]
    """Each combination's texts (None for NULL), in ``columns``' order; empty when not asked."""
    columns: tuple[str, ...]


def group_rows(table: pa.Table, columns: tuple[str, ...], values: bool = True) -> Combinations:
    """The distinct combinations of ``columns`` (text) in ``table``'s rows, and with ``values``
    their texts, in one pass over the columns' buffers in C (``_dimkeys``)."""
    arrays = [_one_chunk(table.column(name)) for name in columns]
    if any(a.type != pa.string() or a.buffers()[1] is None for a in arrays):
        return _group_rows_arrow(table, columns, values)
    n = table.num_rows
    group = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    specs = []
    for a in arrays:
        valid, offsets, data = a.buffers()
        specs.append((valid if a.null_count else None, offsets, data, a.offset))
    count, texts = _dimkeys.group(specs, n, group, first, values)
    return Combinations(first[:count], group, texts, columns)


def _group_rows_arrow(
    table: pa.Table, columns: tuple[str, ...], values: bool = True
) -> Combinations:
    """:func:`group_rows` column by column in Arrow and numpy (the reference, and for other
    than plain string columns): the same partition, numbered otherwise."""
    n = table.num_rows
    key = np.zeros(n, dtype=np.int64)
    span = 1
    for name in columns:
        column = _one_chunk(table.column(name))
        if _constant(column):
            continue
        # Nulls get a code of their own: a NULL and an empty text are two combinations.
        encoded = pc.dictionary_encode(column, null_encoding="encode")
        size = len(encoded.dictionary)
        if span * size >= _LIMIT:
            key = np.unique(key, return_inverse=True)[1].astype(np.int64).reshape(-1)
            span = int(key.max()) + 1
        key += encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64) * span
        span *= size
    first, group = dense_groups(key, span)
    texts: list[tuple[Any, ...]] = []
    if values:
        found = table.select(list(columns)).take(pa.array(first))
        texts = list(zip(*(found.column(c).to_pylist() for c in columns), strict=True))
    return Combinations(first, group, texts, columns)


def dense_groups(key: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray]:
    """A row of each distinct key, and each row's group: by a table of the ``span`` possible
    keys when there are few (no sort: ~20 µs against ~150 for ``np.unique`` at 3,000 rows)."""
    n = len(key)
    if span > 4 * n + 1024:
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return first, inverse.reshape(-1)
    row = np.empty(span, dtype=np.int64)
    row[key] = np.arange(n)  # some row of each key (which one does not matter)
    present = np.zeros(span, dtype=bool)
    present[key] = True
    keys = np.flatnonzero(present)
    group = np.empty(span, dtype=np.int64)
    group[keys] = np.arange(len(keys))
    return row[keys], group[key]


def _constant(column: pa.Array) -> bool:
    """Whether every row holds the same text (or every one is NULL), from the buffers: ~10 µs,
    where encoding costs ~60 at 3,000 rows; most of the columns are so in a write."""
    n = len(column)
    if n <= 1 or column.null_count == n:
        return True
    if column.null_count or column.type != pa.string():
        return False
    offsets = np.frombuffer(column.buffers()[1], np.int32, n + 1, column.offset * 4)
    width = int(offsets[1] - offsets[0])
    if offsets[-1] - offsets[0] != n * width or np.any(np.diff(offsets) != width):
        return False
    if width == 0:
        return True
    data = np.frombuffer(column.buffers()[2], np.uint8, n * width, int(offsets[0]))
    # Each row equal to the one before: the bytes repeat with the row's width (one flat compare).
    return bool(np.array_equal(data[width:], data[:-width]))


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    # One dictionary for all the rows: chunks encoded apart would each number their own.
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


_registry_lock = threading.Lock()
_registry: weakref.WeakKeyDictionary[Any, Dims] = weakref.WeakKeyDictionary()


def dims_of(store: Any, cursor: Any) -> Dims:
    """The store's ``Dims``, loaded from ``llmops_dims`` the first time: one per store, so that
    two writers of one store never give the same id to two combinations."""
    with _registry_lock:
        dims = _registry.get(store)
        if dims is None:
            dims = _registry[store] = Dims()
            dims.load(cursor)
        return dims
