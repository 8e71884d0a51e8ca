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

__all__ = ["Names", "SpanKeyIndex", "first_values", "group_rows", "int64s", "span_keys"]

_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_ID_CHARS = 16


# Two hex characters at once: the little-endian uint16 of a pair of characters (the first in
# the low byte, as they sit in memory) → the byte they spell, or 0xFFFF when either is not a hex
# digit. One 128 KiB table lookup per two characters, where a lookup per character and packing
# the nibbles cost three times as much.
_PAIR = np.arange(65536)
_HEX_PAIRS = (_HEX[_PAIR & 0xFF].astype(np.uint16) << 4) | _HEX[_PAIR >> 8]
_HEX_PAIRS[(_HEX[_PAIR & 0xFF] == 255) | (_HEX[_PAIR >> 8] == 255)] = 0xFFFF
del _PAIR


def span_keys(ids: pa.Array, rows: np.ndarray | None = None) -> np.ndarray:
    """Span ids (16 hex characters, as stored) as unsigned 64-bit integers, read from the
    string array's buffers; 0 — an invalid span id in OTLP — for an empty, null or malformed
    one. With ``rows`` (a boolean mask), only those rows' ids, in order."""
    n = len(ids)
    wanted = n if rows is None else int(np.count_nonzero(rows))
    if wanted == 0:
        return np.zeros(0, np.uint64)
    if ids.type != pa.string():
        ids = ids.cast(pa.string())
    _, offsets_buffer, data_buffer = ids.buffers()
    if data_buffer is None:
        return np.zeros(wanted, np.uint64)
    offsets = np.frombuffer(offsets_buffer, np.int32, n + 1, ids.offset * 4)
    first = int(offsets[0])
    if (
        int(offsets[-1]) - first == _ID_CHARS * n
        and not ids.null_count
        and (np.diff(offsets) == _ID_CHARS).all()
    ):
        # Every id 16 characters long (span ids always are): one reshape, no gather.
        pairs = np.frombuffer(data_buffer, "<u2", n * _ID_CHARS // 2, first).reshape(n, -1)
        return _from_pairs(pairs if rows is None else pairs[rows])
    # Some ids are not 16 characters long (a root span's empty parent id): the wanted rows of
    # those that are, character by character.
    good = np.diff(offsets) == _ID_CHARS
    if ids.null_count:
        good &= ids.is_valid().to_numpy(zero_copy_only=False)
    starts = offsets[:-1]
    if rows is not None:
        good, starts = good[rows], starts[rows]
    keys = np.zeros(wanted, np.uint64)
    if good.any():
        data = np.frombuffer(data_buffer, np.uint8)
        chars = data[starts[good][:, None] + np.arange(_ID_CHARS)]
        keys[good] = _from_pairs(chars.view("<u2"))
    return keys


def _from_pairs(pairs: np.ndarray) -> np.ndarray:
    """Rows of 8 character pairs (an ``(n, 8)`` little-endian uint16 array) as the big-endian
    64-bit integers they spell in hex; 0 for a row with a character that is no hex digit."""
    spelled = _HEX_PAIRS[pairs]
    malformed = (spelled >> 8).any(axis=1)
    keys = spelled.astype(np.uint8).view(">u8").ravel().astype(np.uint64)
    keys[malformed] = 0
    return keys


def int64s(array: pa.Array) -> np.ndarray:
    """A column of 64-bit integers or timestamps as int64 numpy, a view of its buffer when it
    has no nulls (a cast costs ~15 µs per call, paid per table per request)."""
    if array.null_count == 0 and (
        pa.types.is_int64(array.type) or pa.types.is_timestamp(array.type)
    ):
        return np.frombuffer(array.buffers()[1], np.int64, len(array), array.offset * 8)
    return array.cast(pa.int64()).to_numpy(zero_copy_only=False)


def first_values(
    maps: pa.MapArray, keys: pa.Array, last: bool = False
) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Which of ``keys`` each row of a string map holds: ``(rows, key_index, values)``, one
    entry per row and key present (its first value, as ``map_lookup(..., "first")``, or with
    ``last`` its last), sorted by row then key index.

    One hash lookup per map entry for all the keys together, where a ``map_lookup`` per key
    compares every entry with that key: the topology consumer wants ten keys of every span.
    """
    offsets = maps.offsets.to_numpy()
    start, end = int(offsets[0]), int(offsets[-1])
    # A null map's offsets may still span entries: they belong to no row.
    valid = maps.is_valid().to_numpy(zero_copy_only=False) if maps.null_count else None
    entry_keys = maps.keys.slice(start, end - start)
    index = pc.index_in(entry_keys, value_set=keys).fill_null(-1).to_numpy()
    hits = np.flatnonzero(index >= 0)
    rows = np.searchsorted(offsets, hits + start, side="right") - 1
    key_index = index[hits].astype(np.int64)
    if valid is not None:
        keep = valid[rows]
        hits, rows, key_index = hits[keep], rows[keep], key_index[keep]
    # The first entry of each (row, key) — or the last, as a dict made of the map keeps —:
    # np.unique returns first occurrences, sorted.
    if last:
        hits, rows, key_index = hits[::-1], rows[::-1], key_index[::-1]
    _, first = np.unique(rows * len(keys) + key_index, return_index=True)
    values = maps.items.slice(start, end - start).take(pa.array(hits[first]))
    return rows[first], key_index[first], values


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
