"""Resources stored once: the ``ResourceId`` of each row, found from a batch's Arrow buffers.

Every item of one ``ResourceSpans``/``ResourceLogs``/``ResourceMetrics`` repeats its resource's
attributes (some ten of them on a Kubernetes SDK), and copying them into DuckDB per row was the
largest single cost of a stored row (UTF-8 validation, the append, the WAL, compression at the
checkpoint). The physical tables hold a ``ResourceId`` instead — a 64-bit hash of the attribute
list — and ``otel_resources`` holds each resource once; the ``otel_*`` views join them back.

Finding the ids is columnar: the runs of rows that repeat one resource are found by comparing
the map column's buffers in numpy (one comparison when the whole batch is one resource, the usual
case), and only the first row of each run is hashed in Python.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

__all__ = ["ResourceIds", "resource_ids", "resource_runs"]

_ENTRIES = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))


def _int32s(buffer: pa.Buffer, offset: int, count: int) -> np.ndarray:
    return np.frombuffer(buffer, np.int32, count, offset * 4)


def _same_slices(
    starts_a: np.ndarray, starts_b: np.ndarray, lengths: np.ndarray, data: np.ndarray
) -> np.ndarray:
    """Whether ``data[a:a+n] == data[b:b+n]`` for each (a, b, n), vectorised."""
    same = np.ones(len(lengths), bool)
    total = int(lengths.sum())
    if total:
        owner = np.repeat(np.arange(len(lengths)), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        differ = (
            data[np.repeat(starts_a, lengths) + within]
            != data[np.repeat(starts_b, lengths) + within]
        )
        same[owner[differ]] = False
    return same


def _repeats(first: int, count: int, rows: int, strings: pa.Array) -> bool:
    """Whether ``rows`` consecutive rows of ``count`` strings each, from string ``first`` on,
    are one row repeated byte for byte: the strings' lengths repeat with period ``count``, and
    then their bytes with period the row's byte length."""
    total = count * rows
    offsets = _int32s(strings.buffers()[1], strings.offset + first, total + 1)
    lengths = np.diff(offsets)
    if not (lengths[count:] == lengths[:-count]).all():
        return False
    data = strings.buffers()[2]
    size = int(offsets[-1] - offsets[0])
    if data is None or size == 0:
        return True
    width = int(offsets[count] - offsets[0])
    start = int(offsets[0])
    return data.slice(start + width, size - width).equals(data.slice(start, size - width))


def _entries(column: pa.Array) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """Row offsets into the entries, and the key and value string arrays (map or list of
    ``{key, value}`` structs: one memory layout)."""
    n = len(column)
    rows = _int32s(column.buffers()[1], column.offset, n + 1)
    values = column.values if isinstance(column, pa.ListArray) else None
    if values is None:
        keys, items = column.keys, column.items
        # MapArray.keys/items are sliced to the array's entries; re-base the offsets to them.
        return rows - rows[0], keys, items
    return rows, values.field(0), values.field(1)


def resource_runs(column: pa.Array) -> np.ndarray:
    """The rows that begin a run of rows with the same resource attributes (equal lists, in the
    same order): row 0, and each row that differs from the one before."""
    n = len(column)
    if n <= 1:
        return np.zeros(n, np.int64)
    rows, keys, items = _entries(column)
    first, per_row = int(rows[0]), int(rows[1] - rows[0])
    if (
        int(rows[-1]) - first == per_row * n
        and (per_row == 0 or _repeats(first, per_row, n, keys))
        and (per_row == 0 or _repeats(first, per_row, n, items))
        and bool((np.diff(rows) == per_row).all())
    ):
        return np.zeros(1, np.int64)  # the usual batch: one resource throughout
    counts = np.diff(rows)
    same = counts[1:] == counts[:-1]
    for child in (keys, items):
        offsets = _int32s(child.buffers()[1], child.offset, len(child) + 1).astype(np.int64)
        data = np.frombuffer(child.buffers()[2] or b"", np.uint8)
        first_byte = offsets[rows]
        nbytes = np.diff(first_byte)
        same &= nbytes[1:] == nbytes[:-1]
        check = np.flatnonzero(same) + 1  # rows still equal to the row before
        if not len(check):
            break
        # The same strings' lengths in both rows, then the same bytes.
        rel = _same_slices(rows[check], rows[check - 1], counts[check], np.diff(offsets))
        same[check - 1] &= rel
        check = check[rel]
        same[check - 1] &= _same_slices(
            first_byte[check], first_byte[check - 1], nbytes[check], data
        )
    return np.concatenate(([0], np.flatnonzero(~same) + 1))


_PERSON = b"otel-resource"


def _row_hash(rows: np.ndarray, keys: pa.Array, items: pa.Array, row: int) -> int:
    """A 64-bit hash of one row's attribute list: the strings' offsets relative to the row's
    first, then their bytes, keys then values (so that ``{"ab": "c"}`` and ``{"a": "bc"}``
    differ). The same list always gets the same id, in any process: the id is what the rows on
    disk refer to. ``_uniform_hash`` hashes the same bytes."""
    digest = hashlib.blake2b(digest_size=8, person=_PERSON)
    start, end = int(rows[row]), int(rows[row + 1])
    if start == end:
        return int.from_bytes(digest.digest(), "little")  # no attributes: as _uniform_hash
    for child in (keys, items):
        offsets = _int32s(child.buffers()[1], child.offset + start, end - start + 1)
        digest.update((offsets - offsets[0]).astype("<i4", copy=False).tobytes())
        data = child.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            digest.update(data.slice(int(offsets[0]), int(offsets[-1] - offsets[0])))
    return int.from_bytes(digest.digest(), "little")


def _uniform_hash(column: pa.ListArray) -> int | None:
    """The id of row 0's resource when every row repeats it byte for byte (the usual request:
    one resource), else None. A dozen numpy calls and two buffer comparisons whatever the
    size: this runs for every table of every request, in the writer thread."""
    n = len(column)
    rows = _int32s(column.buffers()[1], column.offset, n + 1)
    first, per_row = int(rows[0]), int(rows[1] - rows[0])
    if int(rows[-1]) - first != per_row * n or (
        n > 2 and per_row and not ((rows[1:] - rows[:-1]) == per_row).all()
    ):
        return None
    digest = hashlib.blake2b(digest_size=8, person=_PERSON)
    if per_row == 0:
        return int.from_bytes(digest.digest(), "little")
    entries = column.values
    parts = []
    for child in (entries.field(0), entries.field(1)):
        buffers = child.buffers()
        offsets = _int32s(buffers[1], child.offset + first, per_row * n + 1)
        start, end, width = int(offsets[0]), int(offsets[-1]), int(offsets[per_row] - offsets[0])
        data = buffers[2] or pa.py_buffer(b"")
        if n > 1 and (
            # Each string ends `width` bytes after the same string of the row before, and the
            # bytes repeat with that period.
            not (offsets[per_row:] == offsets[:-per_row] + width).all()
            or not data.slice(start + width, end - start - width).equals(
                data.slice(start, end - start - width)
            )
        ):
            return None
        parts.append((offsets[: per_row + 1] - start, data.slice(start, width)))
    for relative, data in parts:
        digest.update(relative.astype("<i4", copy=False).tobytes())
        digest.update(data)
    return int.from_bytes(digest.digest(), "little")


def resource_ids(chunks: list[pa.Array]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, run_starts, run_ids)`` of the chunks of a list-of-``{key, value}`` column taken as
    one: the ``ResourceId`` (uint64) of every row, the first row of each run of one resource
    and that run's id. Pass one chunk per request: a request's rows usually share a resource,
    found without looking at each row."""
    starts: list[np.ndarray] = []
    run_ids: list[int] = []
    base = 0
    for column in chunks:
        n = len(column)
        if n == 0:
            continue
        run_id = _uniform_hash(column)
        if run_id is not None:
            starts.append(np.array([base]))
            run_ids.append(run_id)
        else:
            rows, keys, items = _entries(column)
            runs = resource_runs(column)
            starts.append(runs + base)
            run_ids.extend(_row_hash(rows, keys, items, int(r)) for r in runs)
        base += n
    if not run_ids:
        empty = np.zeros(0, np.uint64)
        return empty, np.zeros(0, np.int64), empty
    first = np.concatenate(starts)
    ids = np.array(run_ids, np.uint64)
    return np.repeat(ids, np.diff(np.append(first, base))), first, ids


class ResourceIds:
    """Which resources ``otel_resources`` holds, so that each is inserted once and always
    referred to by one id; loaded at start, grown only after the transaction that inserted new
    ones commits.

    Rows that reached the table by SQL (an upgraded data dir: duckdb_migrate) carry DuckDB's
    ``hash()`` as their id, not this module's: ``alias`` maps the id computed here to the one
    stored, so a resource seen again keeps its id (a metric series stays one series)."""

    def __init__(self, stored: pa.Table | None = None) -> None:
        self.known: set[int] = set()
        self.alias: dict[int, int] = {}
        if stored is None or stored.num_rows == 0:
            return
        stored_ids = stored.column("ResourceId").to_numpy()
        self.known = {int(x) for x in stored_ids}
        column = stored.column("ResourceAttributes").combine_chunks().cast(_ENTRIES)
        computed, _, _ = resource_ids([column])
        for mine, theirs in zip(computed.tolist(), stored_ids.tolist(), strict=True):
            if mine != theirs and mine not in self.known:
                self.alias[mine] = min(theirs, self.alias.get(mine, theirs))

    def assign(
        self, starts: np.ndarray, run_ids: np.ndarray, pending: set[int]
    ) -> tuple[np.ndarray, list[int]]:
        """The stored id of each run, and the runs' first rows whose resource is neither stored
        nor already taken for this transaction (``pending``, which gains their ids)."""
        ids, taken = [], []
        for row, computed in zip(starts.tolist(), run_ids.tolist(), strict=True):
            rid = self.alias.get(computed, computed)
            ids.append(rid)
            if rid not in self.known and rid not in pending:
                pending.add(rid)
                taken.append(row)
        return np.array(ids, np.uint64), taken

    def committed(self, pending: set[int]) -> None:
        self.known |= pending
