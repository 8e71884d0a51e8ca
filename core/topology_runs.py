"""Runs of one resource in the rows the topology consumer learns placement from.

Placement (service → host / pod / node) is a property of the resource, and rows come in runs of
one resource: OTLP groups items under their resource, and an SDK exports one resource per
request. :func:`resource_runs` finds where each run starts by comparing every row's resource
with the previous row's, byte for byte, with Arrow's ``equal`` over zero-copy binary views of
the map's buffers (a row's keys end to end, its values end to end, and its entries' lengths),
so the placement keys are then looked up once per run rather than once per row.

Runs only save work: a run cut in two (where the two rows might differ, e.g. around a null)
learns the same placement as one, so when in doubt a row starts a new run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["resource_runs"]

_NO_BYTES = pa.py_buffer(b"")


def _string_offsets(strings: pa.Array) -> np.ndarray | None:
    """The value offsets of a string array (``len + 1`` int32), or None when the array is not
    a plain string array without nulls (its rows are then compared no further)."""
    if strings.type != pa.string() or strings.null_count:
        return None
    return np.frombuffer(strings.buffers()[1], np.int32, len(strings) + 1, strings.offset * 4)


def _row_view(offsets: np.ndarray, data: pa.Buffer | None) -> pa.Array:
    """A binary array whose row ``i`` is ``data[offsets[i]:offsets[i + 1]]`` (no copy)."""
    return pa.Array.from_buffers(
        pa.binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), data or _NO_BYTES]
    )


def _same_as_previous(rows: pa.Array) -> pa.Array:
    """For rows 1..n-1, whether each equals the row before it (null when either is null)."""
    return pc.equal(rows.slice(1), rows.slice(0, len(rows) - 1))


def resource_runs(
    resource: pa.MapArray, services: pa.Array, breaks: np.ndarray | None = None
) -> np.ndarray:
    """The rows where a run of one resource and service name starts: row 0 and every row whose
    ``ResourceAttributes`` (keys, values and their order) or ``ServiceName`` differ from the
    previous row's, and every row in ``breaks`` (where one table's rows end and the next's
    begin). Rows whose sameness is not established here (null maps, null or non-string
    entries) start runs of their own."""
    n = len(resource)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    starts = _runs(resource, services, n)
    if breaks is None or not len(breaks):
        return starts
    return np.union1d(starts, breaks[(breaks > 0) & (breaks < n)]).astype(np.int64)


def _runs(resource: pa.MapArray, services: pa.Array, n: int) -> np.ndarray:
    entries = resource.offsets.to_numpy()
    # The entries of these rows only (the children of a sliced map hold others too).
    first, count = int(entries[0]), int(entries[-1] - entries[0])
    keys, items = resource.keys.slice(first, count), resource.items.slice(first, count)
    entries = entries - first
    key_offsets, item_offsets = _string_offsets(keys), _string_offsets(items)
    if key_offsets is None or item_offsets is None or int(entries[-1]) * 4 >= 2**31:
        return np.arange(n, dtype=np.int64)
    # Each row's keys end to end, its values end to end, and the lengths of both, so that rows
    # whose strings laid end to end are equal but cut differently ("ab", "c" against "a", "bc")
    # still differ.
    entry_bytes = entries * 4
    same = pc.and_(
        pc.and_(
            _same_as_previous(_row_view(key_offsets[entries], keys.buffers()[2])),
            _same_as_previous(_row_view(item_offsets[entries], items.buffers()[2])),
        ),
        pc.and_(
            _same_as_previous(_row_view(entry_bytes, pa.py_buffer(np.diff(key_offsets)))),
            _same_as_previous(_row_view(entry_bytes, pa.py_buffer(np.diff(item_offsets)))),
        ),
    )
    same = pc.and_(same, _same_as_previous(services))
    if resource.null_count:
        valid = resource.is_valid()
        same = pc.and_(same, pc.and_(valid.slice(1), valid.slice(0, n - 1)))
    starts = np.flatnonzero(~same.fill_null(False).to_numpy(zero_copy_only=False)) + 1
    return np.concatenate(([0], starts))
