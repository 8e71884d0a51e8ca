"""Resources stored once: the ``ResourceId`` of each row, found from a batch's Arrow buffers.

Every item of one ``ResourceSpans``/``ResourceLogs``/``ResourceMetrics`` repeats its resource's
attributes (some ten of them on a Kubernetes SDK), and copying them into DuckDB per row was the
largest single cost of a stored row (UTF-8 validation, the append, the WAL, compression at the
checkpoint). The physical tables hold a ``ResourceId`` instead — a 64-bit hash of the attribute
list — and ``otel_resources`` holds each resource once; the ``otel_*`` views join them back.

Finding the ids is columnar: the runs of rows that repeat one resource are found by comparing
the map column's buffers in numpy (for all requests of a group commit at once, then one memcmp
per request when it is one resource, the usual case), and only the first row of each run is
hashed in Python.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

__all__ = ["ResourceIds", "decoded_runs", "request_resource_ids", "resource_ids", "resource_runs"]


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


_PERSON = b"otel-resource-2"
"""BLAKE2b's personalisation of the ids: ``-2`` since the entry count is hashed first (the ids of
the first build of this layout, without it, are another family; docs/ingest.md)."""


def _digest(count: int) -> hashlib._Hash:
    """A hash primed with the list's entry count. The encoding that follows — each child's
    offsets relative to the row's first (``count + 1`` of them), then its bytes (as many as the
    last offset says) — is then injective: every length is known before the bytes it measures,
    so two different lists never feed the same bytes (without the count, ``[("a\\0…", …)]``
    and a longer list could)."""
    digest = hashlib.blake2b(digest_size=8, person=_PERSON)
    digest.update(count.to_bytes(8, "little"))
    return digest


def _validity(child: pa.Array, start: int, end: int) -> bytes:
    """``b"\\0"`` when the child's strings ``start:end`` are all valid (always, as decoded),
    else ``b"\\1"`` and one byte per string: a null and an empty string differ."""
    if child.null_count == 0:
        return b"\0"
    valid = child.slice(start, end - start).is_valid().to_numpy(zero_copy_only=False)
    return b"\0" if valid.all() else b"\1" + valid.astype(np.uint8).tobytes()


def _row_hash(rows: np.ndarray, keys: pa.Array, items: pa.Array, row: int) -> int:
    """A 64-bit hash of one row's attribute list: its entry count, then per child (keys, then
    values) its validity, the strings' offsets relative to the row's first and their bytes (so
    that ``{"ab": "c"}`` and ``{"a": "bc"}`` differ). The same list always gets the same id, in
    any process: the id is what the rows on disk refer to. ``request_resource_ids`` hashes the
    same bytes for a request of one resource."""
    start, end = int(rows[row]), int(rows[row + 1])
    digest = _digest(end - start)
    if start == end:
        return int.from_bytes(digest.digest(), "little")  # no attributes: as request_resource_ids
    for child in (keys, items):
        digest.update(_validity(child, start, end))
        offsets = _int32s(child.buffers()[1], child.offset + start, end - start + 1)
        digest.update((offsets - offsets[0]).astype("<i4", copy=False).tobytes())
        data = child.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            digest.update(data.slice(int(offsets[0]), int(offsets[-1] - offsets[0])))
    return int.from_bytes(digest.digest(), "little")


def resource_ids(chunks: list[pa.Array]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, run_starts, run_ids)`` of the chunks of a list-of-``{key, value}`` column taken as
    one: the ``ResourceId`` (uint64) of every row, the first row of each run of one resource
    and that run's id. Pass one chunk per request: a request's rows usually share a resource,
    found without looking at each row."""
    lengths = [len(chunk) for chunk in chunks]
    column = pa.concat_arrays(chunks) if chunks else pa.array([], _LIST)
    first, ids = request_resource_ids(column, lengths)
    return np.repeat(ids, np.diff(np.append(first, len(column)))), first, ids


_LIST = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))


def request_resource_ids(
    column: pa.ListArray, lengths: list[int], runs_known: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(run_starts, run_ids)`` of a list-of-``{key, value}`` column made of consecutive
    requests of ``lengths`` rows each (a group commit's column, concatenated): the first row of
    each run of one resource and that run's id (:func:`_row_hash` of the run's first row).

    A request's rows usually repeat one resource. That is checked for all requests at once as
    far as numpy can (every row's entry count; the first rows' string offsets), then per
    request by two memcmps per child (its strings' lengths, then its bytes, each against
    themselves shifted by one row), and only each request's first row is hashed. A request
    whose rows differ takes the general path (:func:`resource_runs`). A group commit holds
    hundreds of requests per table; per request in numpy calls this cost ~100 µs (~1 µs a span,
    ~3 µs a metric point, whose request fills three tables).

    ``runs_known``: ``lengths`` are runs of one resource already (the decoder's
    ``resource_starts``: it copies one resource's attributes onto each of its rows), so no row
    is compared; only each run's first row is hashed. Equal neighbouring runs get equal ids."""
    n = len(column)
    sizes = np.asarray(lengths, np.int64)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    starts = (np.cumsum(sizes) - sizes)[sizes > 0]
    sizes = sizes[sizes > 0]
    rows = _int32s(column.buffers()[1], column.offset, n + 1).astype(np.int64)
    counts = np.diff(rows)
    per_row = counts[starts]
    entries = column.values
    keys, items = entries.field(0), entries.field(1)
    uniform = np.ones(len(starts), bool)
    if not runs_known:
        # Requests with a row whose entry count is not the first row's.
        uneven = np.flatnonzero(counts != np.repeat(per_row, sizes))
        uniform[np.searchsorted(starts, uneven, "right") - 1] = False
    if keys.null_count or items.null_count:
        uniform[:] = False  # never as decoded; _row_hash tells a null from an empty string
    # Entries from the column's first on (``rows[0]``, not 0, for a sliced column).
    base = int(rows[0])
    first_entry, last_entry = rows[starts] - base, rows[starts + sizes] - base
    # The first rows' string offsets relative to their first string, for the hash, gathered for
    # all requests at once.
    spans = per_row + 1
    gather = np.repeat(first_entry, spans) + (
        np.arange(int(spans.sum())) - np.repeat(np.cumsum(spans) - spans, spans)
    )
    cuts = (4 * (np.cumsum(spans) - spans)).tolist()
    children = []
    for child in (keys, items):
        offsets = _int32s(child.buffers()[1], child.offset + base, int(rows[-1]) - base + 1)
        firsts = offsets[first_entry].astype(np.int64)
        data = child.buffers()[2] or pa.py_buffer(b"")
        children.append(
            (
                # Each string's length: in a request of one resource they repeat with the
                # period of a row. Not needed when the runs are known (no row is compared):
                # for every entry of the column, it was a third of the cost there.
                b"" if runs_known else np.diff(offsets).astype("<i4", copy=False).tobytes(),
                (offsets[gather] - np.repeat(firsts, spans)).astype("<i4", copy=False).tobytes(),
                data,
                firsts.tolist(),
                (offsets[first_entry + per_row] - firsts).tolist(),
                offsets[last_entry].astype(np.int64).tolist(),
            )
        )
    # Python ints in the loop: a numpy scalar per access would cost more than the work.
    firsts, lasts = first_entry.tolist(), last_entry.tolist()
    run_starts: list[list[int]] = []
    run_ids: list[int] = []
    for c, (start, size, per, ok) in enumerate(
        zip(starts.tolist(), sizes.tolist(), per_row.tolist(), uniform.tolist(), strict=True)
    ):
        if ok and size > 1 and per and not runs_known:
            a, b = 4 * firsts[c], 4 * lasts[c]
            shift = 4 * per
            for lengths_bytes, _, data, begin, width, end in children:
                rest = end[c] - begin[c] - width[c]  # the bytes after the first row
                if lengths_bytes[a + shift : b] != lengths_bytes[a : b - shift] or not data.slice(
                    begin[c] + width[c], rest
                ).equals(data.slice(begin[c], rest)):
                    ok = False
                    break
        if ok:
            digest = _digest(per)
            if per:
                for _, relative, data, begin, width, _ in children:
                    digest.update(b"\0")  # all valid
                    digest.update(relative[cuts[c] : cuts[c] + 4 * (per + 1)])
                    digest.update(data.slice(begin[c], width[c]))
            run_starts.append([start])
            run_ids.append(int.from_bytes(digest.digest(), "little"))
            continue
        chunk = column.slice(start, size)
        chunk_rows, chunk_keys, chunk_items = _entries(chunk)
        runs = resource_runs(chunk)
        run_starts.append((runs + start).tolist())
        run_ids.extend(_row_hash(chunk_rows, chunk_keys, chunk_items, int(r)) for r in runs)
    first = np.fromiter((s for part in run_starts for s in part), np.int64)
    return first, np.array(run_ids, np.uint64)


def decoded_runs(starts: list[np.ndarray | None], lengths: list[int]) -> list[int] | None:
    """The lengths of the runs of one resource in batches of ``lengths`` rows laid end to end,
    from each batch's ``resource_starts`` as the decoder handed them over; None when a batch
    came without them, or they do not fit its rows (then the rows are compared instead)."""
    if not starts or any(part is None for part in starts):
        return None
    sizes = np.asarray(lengths, np.int64)
    counts = np.array([len(part) for part in starts], np.int64)  # type: ignore[arg-type]
    if not sizes.sum() or not np.array_equal(counts > 0, sizes > 0):
        return None
    offsets = np.cumsum(sizes) - sizes
    found = np.concatenate(starts).astype(np.int64) + np.repeat(offsets, counts)
    # Each batch's first start is its first row, its starts ascend and stay inside it.
    filled = counts > 0
    if (
        (found[(np.cumsum(counts) - counts)[filled]] != offsets[filled]).any()
        or (found >= np.repeat(offsets + sizes, counts)).any()
        or (np.diff(found) <= 0).any()
    ):
        return None
    return np.diff(np.append(found, offsets[-1] + sizes[-1])).tolist()


class ResourceIds:
    """Which resources ``otel_resources`` holds, so that each is inserted once and always
    referred to by one id. Owned by the store's writer thread (retention's :meth:`forget` runs
    under the store's lock, never during a commit).

    The ids are a sorted uint64 array read straight from the table at start (no Python object
    per resource: 1 M resources are 8 MB), plus a small sorted array of those added since,
    merged in when it grows; grown only after the transaction that inserted them commits.

    Rows that reached the table by SQL (an upgraded data dir: duckdb_migrate) carry DuckDB's
    ``hash()`` as their id, not this module's. When the writer meets a resource it does not
    know, the store looks it up under that id too (:meth:`unknown`, :meth:`adopt`): ``alias``
    then maps the id computed here to the one stored, so a resource seen again keeps its id (a
    metric series stays one series). Found on first sight, not at start: a start hashes
    nothing."""

    def __init__(self, stored: np.ndarray | None = None) -> None:
        self._ids = _sorted_unique(stored) if stored is not None else _NONE
        self._recent = _NONE
        self.alias: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._ids) + len(self._recent)

    def known(self, ids: np.ndarray) -> np.ndarray:
        """Whether each id is stored (a bool array)."""
        ids = np.asarray(ids, np.uint64)
        return _member(self._ids, ids) | _member(self._recent, ids)

    def _stored_as(self, computed: np.ndarray) -> np.ndarray:
        if not self.alias:
            return computed
        return np.fromiter(
            (self.alias.get(c, c) for c in computed.tolist()), np.uint64, len(computed)
        )

    def unknown(self, computed: np.ndarray) -> np.ndarray:
        """The positions of ``computed`` ids that are neither stored nor aliased: the runs to
        look up under DuckDB's hash before :meth:`assign` takes them as new."""
        return np.flatnonzero(~self.known(self._stored_as(computed)))

    def adopt(self, computed: np.ndarray, stored: np.ndarray) -> None:
        """Refer to the resources of ``computed`` ids by their ``stored`` ids from now on."""
        for mine, theirs in zip(computed.tolist(), stored.tolist(), strict=True):
            self.alias[mine] = theirs

    def assign(
        self, starts: np.ndarray, run_ids: np.ndarray, pending: set[int]
    ) -> tuple[np.ndarray, list[int]]:
        """The stored id of each run, and the runs' first rows whose resource is neither stored
        nor already taken for this transaction (``pending``, which gains their ids)."""
        ids = self._stored_as(np.asarray(run_ids, np.uint64))
        taken = []
        new = np.flatnonzero(~self.known(ids))  # as a rule none: the loop below is for new ones
        for position in new.tolist():
            rid = int(ids[position])
            if rid not in pending:
                pending.add(rid)
                taken.append(int(starts[position]))
        return ids, taken

    def committed(self, pending: set[int]) -> None:
        """The transaction that inserted ``pending`` committed: they are stored."""
        if not pending:
            return
        added = np.fromiter(pending, np.uint64, len(pending))
        self._recent = _sorted_unique(np.concatenate((self._recent, added)))
        if len(self._recent) > max(4096, len(self._ids) // 16):
            self._ids = _sorted_unique(np.concatenate((self._ids, self._recent)))
            self._recent = _NONE

    def forget(self, deleted: np.ndarray) -> None:
        """Retention deleted these resources: a resource seen again is inserted again."""
        if not len(deleted):
            return
        deleted = _sorted_unique(deleted)
        self._ids = self._ids[~_member(deleted, self._ids)]
        self._recent = self._recent[~_member(deleted, self._recent)]
        if self.alias:
            gone = set(deleted.tolist())
            self.alias = {k: v for k, v in self.alias.items() if v not in gone}


_NONE = np.zeros(0, np.uint64)


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    """``ids`` sorted, each once. Not ``np.unique``: numpy 2.4's takes 1.2 s CPU for 1 M ids
    (a hash table), a sort 20 ms."""
    ids = np.sort(np.asarray(ids, np.uint64))
    if len(ids) < 2:
        return ids
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))]


def _member(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether each of ``ids`` is in ``sorted_ids`` (sorted, unique)."""
    if not len(sorted_ids):
        return np.zeros(len(ids), bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[at] == ids
