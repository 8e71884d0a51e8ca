"""Runs of rows that repeat one resource, found from the Arrow buffers of a batch.

Every item of one ``ResourceSpans``/``ResourceLogs``/``ResourceMetrics`` repeats its resource,
so a batch holds few resources in long runs. Work that depends only on the resource (the
topology's placement of services on hosts and pods) is done once per run instead of once per
item; finding the runs compares the ``ResourceAttributes`` map column's buffers in numpy, with
no Python object per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["resource_runs"]


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
    then their bytes with period the row's byte length. Few numpy calls whatever the size: this
    runs for every table of every request."""
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


def _same_count(rows: np.ndarray, per_row: int) -> bool:
    return bool((np.diff(rows) == per_row).all())


def resource_runs(resource: pa.MapArray, services: pa.Array) -> np.ndarray:
    """The rows that begin a run of rows with the same resource (equal attribute maps, in the
    same order, and service name): row 0, and each row that differs from the one before."""
    n = len(resource)
    if n <= 1:
        return np.zeros(n, np.int64)
    rows = _int32s(resource.buffers()[1], resource.offset, n + 1)
    first, per_row = int(rows[0]), int(rows[1] - rows[0])
    if (
        int(rows[-1]) - first == per_row * n
        and (per_row == 0 or _repeats(first, per_row, n, resource.keys))
        and (per_row == 0 or _repeats(first, per_row, n, resource.items))
        and _repeats(0, 1, n, services)
        and _same_count(rows, per_row)
    ):
        return np.zeros(1, np.int64)  # the usual batch: one resource throughout
    counts = np.diff(rows)
    same = counts[1:] == counts[:-1]
    same &= pc.equal(services.slice(1), services.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    for child in (resource.keys, resource.items):
        offsets = _int32s(child.buffers()[1], child.offset, len(child) + 1).astype(np.int64)
        data = np.frombuffer(child.buffers()[2] or b"", np.uint8)
        first = offsets[rows]
        nbytes = np.diff(first)
        same &= nbytes[1:] == nbytes[:-1]
        check = np.flatnonzero(same) + 1  # rows still equal to the row before
        if not len(check):
            break
        # The same strings' lengths in both rows, then the same bytes.
        rel = _same_slices(rows[check], rows[check - 1], counts[check], np.diff(offsets))
        same[check - 1] &= rel
        check = check[rel]
        same[check - 1] &= _same_slices(first[check], first[check - 1], nbytes[check], data)
    return np.concatenate(([0], np.flatnonzero(~same) + 1))
