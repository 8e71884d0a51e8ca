"""Letting committed batches go without holding the GIL.

The consumer that drops the last reference to a decoded request frees its Arrow buffers: a span
request of 100 items holds ~100 buffers, a metric request ~270 over three or more tables, and
freeing them (Arrow's C++ destructors, the decoder's release callbacks, ``free``) cost ~0.4 µs a
span and 1-2 µs a metric point in one process. Dropped the ordinary way that all happens inside
a Python deallocation, with the GIL held: py-spy ``--gil`` of the server during the metrics bench
found the topology consumer's thread holding 20 % of all GIL time, three quarters of it on the
line that let its batches go — time the event loop and the store's writer waited for.

:func:`release` moves that work off the GIL. The batches of each table are gathered into one
``pa.Table`` and exported as an Arrow C stream (``ArrowArrayStream``), which then holds the only
other references to their buffers; the Python objects are dropped (reference counts only), and
the stream's ``release`` callback is called through ``ctypes``, which lets the GIL go for the
call: Arrow's C++ destructors and the frees run beside the other threads. A buffer owned by a
Python object (``pa.py_buffer``, numpy memory) takes the GIL itself in its destructor, as Arrow
does for them on any thread, so the call is safe whatever the batches hold. When another holder
still has the batches (another consumer's inbox), the call only decrements counts.
"""

from __future__ import annotations

import ctypes

import pyarrow as pa

from opstrata.consumers import CommittedBatch

__all__ = ["release"]

# struct ArrowArrayStream { get_schema, get_next, get_last_error, release, private_data }
_STREAM_BYTES = 5 * ctypes.sizeof(ctypes.c_void_p)
_RELEASE_AT = 3 * ctypes.sizeof(ctypes.c_void_p)
# CFUNCTYPE, not PYFUNCTYPE: ctypes lets the GIL go for the call.
_RELEASE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _tables(batches: list[pa.RecordBatch]) -> list[pa.Table]:
    """The batches of one table as few ``pa.Table`` s: one, unless their schemas differ (read
    back from a store, or decoded before and after a change of the schema's metadata)."""
    try:
        return [pa.Table.from_batches(batches)]
    except pa.ArrowInvalid:
        runs: list[list[pa.RecordBatch]] = []
        for batch in batches:
            if runs and batch.schema.equals(runs[-1][0].schema):
                runs[-1].append(batch)
            else:
                runs.append([batch])
        return [pa.Table.from_batches(run) for run in runs]


def _export(batches: list[CommittedBatch], streams: list[ctypes.Array]) -> None:
    """Arrow C streams (appended to ``streams``) that hold every buffer of ``batches``: their
    own references, not the Python objects'. A function of its own so that none of its loop
    variables outlives the call and keeps a batch alive."""
    by_table: dict[object, list[pa.RecordBatch]] = {}
    for batch in batches:
        for table, records in batch.tables.items():
            by_table.setdefault(table, []).append(records)
    for records in by_table.values():
        for table in _tables(records):
            stream = ctypes.create_string_buffer(_STREAM_BYTES)
            table.to_reader()._export_to_c(ctypes.addressof(stream))
            streams.append(stream)


def release(batches: list[CommittedBatch]) -> None:
    """Empty ``batches`` (the caller's list: its references are the ones dropped) and free what
    only they held with the GIL released. The caller must hold no other reference to them."""
    streams: list[ctypes.Array] = []
    try:
        _export(batches, streams)
    finally:
        # Should an export fail, what it did not export is dropped (and freed) the ordinary way.
        batches.clear()
        # The streams hold the buffers: dropping the Python objects only decremented counts.
        _release_streams(streams)


def _release_streams(streams: list[ctypes.Array]) -> None:
    """Call each stream's ``release`` with the GIL let go (what frees the buffers)."""
    for stream in streams:
        callback = ctypes.c_void_p.from_buffer(stream, _RELEASE_AT).value
        if callback:
            _RELEASE(callback)(ctypes.addressof(stream))
