"""The columnar pieces of the topology consumer's spans path.

A call between two instrumented services shows as a client (or producer) span in the caller and
a server (or consumer) span in the callee whose ``ParentSpanId`` is the client's ``SpanId``. The
two usually arrive in different requests (each service exports its own), in either order, so the
consumer joins each batch's server spans to the client spans of this and earlier batches, and
each batch's client spans to the server spans still waiting for theirs. Both sides are held in
:class:`SpanKeyIndex`: span ids as 64-bit integers in sorted numpy runs, looked up with
``searchsorted`` — no Python object per span.

:class:`Names` interns service and peer names as small integers so that pairs travel through
numpy as integers, and :func:`group_rows` groups rows by integer key columns (Arrow's
``group_by`` starts an Acero plan and a thread-pool task per call, which on the consumer's small
batches cost more than the grouping).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Names", "SpanKeyIndex", "group_rows", "span_keys"]

_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_SHIFTS = (4 * np.arange(15, -1, -1)).astype(np.uint64)
_ID_CHARS = 16


def span_keys(ids: pa.Array) -> np.ndarray:
    """Span ids (16 hex characters, as stored) as unsigned 64-bit integers, read from the
    string array's buffers; 0 — an invalid span id in OTLP — for an empty, null or malformed
    one."""
    n = len(ids)
    keys = np.zeros(n, np.uint64)
    if n == 0:
        return keys
    if ids.type != pa.string():
        ids = ids.cast(pa.string())
    _, offsets_buffer, data_buffer = ids.buffers()
    if data_buffer is None:
        return keys
    offsets = np.frombuffer(offsets_buffer, np.int32, n + 1, ids.offset * 4)
    data = np.frombuffer(data_buffer, np.uint8)
    good = np.diff(offsets) == _ID_CHARS
    if ids.null_count:
        good &= ids.is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(good)
    if not len(rows):
        return keys
    nibbles = _HEX[data[offsets[rows][:, None] + np.arange(_ID_CHARS)]]
    well_formed = (nibbles != 255).all(axis=1)
    values = np.bitwise_or.reduce(nibbles.astype(np.uint64) << _SHIFTS, axis=1)
    keys[rows[well_formed]] = values[well_formed]
    return keys


class Names:
    """Strings interned as integers for the life of the consumer (service and peer names: a
    few thousand in a large system). ``clear`` starts afresh should it ever grow past bounds."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, strings: pa.Array) -> np.ndarray:
        """The code of each string (null as ``""``), through Arrow's dictionary encoding: one
        Python lookup per distinct value of the array, not per row."""
        encoded = pc.dictionary_encode(strings)
        lut = np.array([self.code(s or "") for s in encoded.dictionary.to_pylist()], np.int64)
        indices = encoded.indices
        if indices.null_count:
            indices = indices.fill_null(len(lut))
            lut = np.append(lut, self.code(""))
        if not len(lut):
            return np.zeros(len(strings), np.int64)
        return lut[indices.to_numpy()]

    def code(self, name: str) -> int:
        found = self.codes.get(name)
        if found is None:
            found = self.codes[name] = len(self.names)
            self.names.append(name)
        return found

    def clear(self) -> None:
        self.codes.clear()
        self.names.clear()


class SpanKeyIndex:
    """Span ids (uint64 keys) with an int64 value each, for spans whose other side of a call
    has not been seen yet.

    New keys go into sorted runs merged log-structured (a run is merged into the one before it
    while that one is at most twice its size), so adding n keys costs O(n log n) overall and a
    lookup is a ``searchsorted`` per run. Memory stays bounded the way the previous dict-based
    index did, in two generations: once the current one holds ``capacity`` keys it becomes the
    previous one, replacing that. Keys are not removed when found: a client span that answered
    one server span is only ever asked for again by a duplicate, which finds the same pair.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._previous: list[tuple[np.ndarray, np.ndarray]] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size + sum(len(keys) for keys, _ in self._previous)

    def clear(self) -> None:
        self._runs, self._previous, self._size = [], [], 0

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        present = keys != 0
        keys, values = keys[present], values[present]
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        runs = self._runs
        runs.append((keys[order], values[order]))
        self._size += len(keys)
        while len(runs) > 1 and len(runs[-2][0]) <= 2 * len(runs[-1][0]):
            newer, older = runs.pop(), runs.pop()
            merged_keys = np.concatenate((older[0], newer[0]))
            # Stable: of equal keys, the newer value ends last, and lookups take the last.
            order = np.argsort(merged_keys, kind="stable")
            runs.append((merged_keys[order], np.concatenate((older[1], newer[1]))[order]))
        if self._size >= self.capacity:
            self._previous, self._runs, self._size = runs, [], 0

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key: whether it is held, and its value (the newest, when added twice)."""
        found = np.zeros(len(keys), bool)
        values = np.zeros(len(keys), np.int64)
        if not len(keys):
            return found, values
        # Oldest first, so that a newer run's value overwrites an older one's.
        for run_keys, run_values in (*self._previous, *self._runs):
            at = np.searchsorted(run_keys, keys, side="right") - 1
            hit = (at >= 0) & (keys != 0)
            hit[hit] = run_keys[at[hit]] == keys[hit]
            found |= hit
            values[hit] = run_values[at[hit]]
        return found, values


def group_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by equal values of the integer ``columns``: ``(order, starts, first)`` —
    the row order that puts each group together, where each group starts in it, and one row of
    each group (its first in ``order``), for ``np.<ufunc>.reduceat``."""
    order = np.lexsort(columns[::-1])
    change = np.zeros(len(order), bool)
    if len(order):
        change[0] = True
        for column in columns:
            ordered = column[order]
            change[1:] |= ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(change)
    return order, starts, order[starts]
