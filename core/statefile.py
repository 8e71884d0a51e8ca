"""What a consumer that learns needs to keep what it learnt across a ``kill -9``.

A consumer that keeps its state in memory and saves it now and then (not per batch) holds its
offset at its last save (``Consumer.durable_upto``): after a ``kill -9`` the batches since are
delivered again, from the store, and learnt again. Two pieces make that safe:

- :class:`StateFile` — the saved state: written atomically (a temporary file, fsync, rename,
  fsync of the directory) with the ``seq`` of the last batch it includes, every
  ``every_seconds`` of wall time or ``every_batches`` batches (but at most every
  ``min_seconds``), whichever comes first.
  ``durable_upto()`` returns :attr:`StateFile.saved_seq`; batches at or below
  :attr:`StateFile.loaded_seq` given again (the offset file lags a save by one write) are in the
  loaded state already and are skipped.
- :class:`ProgressMark` — the last batch whose side effects are done: the rows a batch adds to
  the plugin's own DuckDB tables are written in one transaction with it, and its alerts are
  emitted before it. A batch given again at or below it is learnt, but writes nothing and
  emits nothing: its rows are stored and its alerts were raised before the crash.

Used by the ``aiops`` and ``mlops`` consumers (docs/plugins.md, "State saved now and then").
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opstrata.alerts import AlertEvent

__all__ = ["ProgressMark", "StateFile", "write_atomically"]

log = logging.getLogger(__name__)

_MAGIC = b"opstrata-state 1 seq="
_DDL_LOCK = threading.Lock()


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash at any point (also a power loss) leaves the
    old file or the new one, whole."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
    except BaseException:
        # A half-written state is of no use, and on a full disk it holds the space a later
        # save (or the store) needs.
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    # The rename is durable only once the directory is: fsync it too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateFile:
    """One consumer's saved state, with the ``seq`` of the last batch it includes.

    The consumer calls :meth:`load` in ``start``, :meth:`seen` after each batch (it says when a
    save is due), :meth:`save` then and in ``stop``; ``durable_upto`` returns
    :attr:`saved_seq`. The payload is the consumer's own bytes (pickle, JSON)."""

    def __init__(
        self,
        path: Path,
        every_seconds: float = 60.0,
        every_batches: int = 20000,
        min_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.every_seconds = every_seconds
        self.every_batches = every_batches
        self.min_seconds = min(min_seconds, every_seconds)
        self.clock = clock
        self.loaded_seq = -1
        """Seq of the last batch in the state loaded at start (-1: none)."""
        self.saved_seq = -1
        """Seq of the last batch in the state on disk (-1: none since the consumer started)."""
        self.seen_seq = -1
        self._batches = 0
        self._last = clock()
        self.saves = 0
        self.last_save_seconds = 0.0
        """Wall time of the last save (encoding not included)."""
        self.save_bytes = 0
        self.save_failures = 0
        """Saves that could not be written (disk full, state directory gone), in all."""
        self.failing = 0
        """Saves failed in a row since the last one written (0: the last save was written)."""
        self.last_save_error = ""
        self._retry_in: float | None = None
        """While saves fail: seconds from the last attempt to the next (doubling)."""

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> bytes | None:
        """The saved payload, or None; sets :attr:`loaded_seq`. A file saved before states
        carried a ``seq`` (at a clean stop) loads with seq -1: nothing is skipped."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not data.startswith(_MAGIC):
            return data
        header, _, payload = data.partition(b"\n")
        seq = int(header[len(_MAGIC) :])
        self.loaded_seq = self.saved_seq = self.seen_seq = seq
        return payload

    def durable_upto(self) -> int | None:
        """What the consumer's ``durable_upto`` returns: the last save's seq while something
        learnt is not saved; None (the offset may move freely) when every batch given so far is
        in the saved state — else a consumer whose signal stopped coming (a metrics consumer on
        a server that receives only spans) would hold its offset back for ever."""
        return None if self.seen_seq == self.saved_seq else self.saved_seq

    def fresh(self, seq: int) -> bool:
        """Whether batch ``seq`` is not in the loaded state yet (else: skip it)."""
        return seq > self.loaded_seq

    def seen(self, seq: int) -> bool:
        """Batch ``seq`` is learnt; returns whether a save is due."""
        self.seen_seq = seq
        self._batches += 1
        # Every ``every_batches`` bounds what a restart reads again under load, but no more
        # often than every ``min_seconds``: a save encodes the whole state, its cost growing
        # with the state, not with the rate. At a trickle, every ``every_seconds``.
        since = self.clock() - self._last
        if self._retry_in is not None:
            # A save that fails is tried again after a backoff, not on every batch: each
            # attempt encodes the whole state (GIL held) before the write fails again.
            return since >= self._retry_in
        if self._batches >= self.every_batches:
            return since >= self.min_seconds
        return since >= self.every_seconds

    def unchanged(self, seq: int) -> bool:
        """Batch ``seq`` changed nothing in the state (nothing in it for this consumer);
        returns whether a save is due. With nothing unsaved, the saved state includes it as it
        is: ``saved_seq`` moves on without a save, and the offset with it (else a consumer
        whose batches rarely matter would hold its offset back for ever)."""
        if self.seen_seq == self.saved_seq:
            self.seen_seq = self.saved_seq = seq
            return False
        self.seen_seq = seq
        wait = self.every_seconds if self._retry_in is None else self._retry_in
        return self.clock() - self._last >= wait

    def save(self, payload: bytes) -> bool:
        """Save ``payload`` as the state up to the last batch :meth:`seen`; returns whether it
        was written. A write that fails (disk full, the state directory gone) does not raise:
        the offset stays held at the last save written (:meth:`durable_upto`), the failure is
        logged once per streak and counted (:attr:`save_failures`), and the next attempt is
        due ``min_seconds`` later, then twice that, up to ``every_seconds``."""
        started = time.perf_counter()
        try:
            write_atomically(self.path, b"%s%d\n%s" % (_MAGIC, self.seen_seq, payload))
        except OSError as exc:
            self._failed(exc)
            return False
        self.saved_seq = self.seen_seq
        self._batches = 0
        self._last = self.clock()
        self.saves += 1
        self.last_save_seconds = time.perf_counter() - started
        self.save_bytes = len(payload)
        if self.failing:
            log.warning("state saved to %s again after %d failed saves", self.path, self.failing)
        self.failing = 0
        self._retry_in = None
        return True

    def _failed(self, exc: OSError) -> None:
        self._last = self.clock()
        self.save_failures += 1
        self.failing += 1
        self.last_save_error = f"{type(exc).__name__}: {exc}"
        if self._retry_in is None:
            self._retry_in = self.min_seconds
            log.warning(
                "cannot save state to %s (%s); the offset stays at seq %d, retrying every %g-%g s",
                self.path,
                self.last_save_error,
                self.saved_seq,
                self.min_seconds,
                self.every_seconds,
            )
        else:
            self._retry_in = min(self._retry_in * 2, self.every_seconds)

    def status(self) -> dict[str, Any]:
        """What the plugins' ``/saves`` routes show: the saves written and failed."""
        return {
            "saved_seq": self.saved_seq,
            "seen_seq": self.seen_seq,
            "saves": self.saves,
            "save_failures": self.save_failures,
            "failing": self.failing,
            "last_save_error": self.last_save_error,
            "last_save_seconds": self.last_save_seconds,
            "save_bytes": self.save_bytes,
        }


class ProgressMark:
    """The last batch whose side effects (rows in the plugin's tables, alerts) are done, kept
    in the store's DuckDB in ``table`` (one row per consumer) and moved in the transaction that
    writes the batch's rows.

    Per batch: :meth:`begin` (False: a batch given again whose effects are done), learn with
    alerts going through :meth:`emitter`, then :meth:`commit` with the batch's writes. A store
    without DuckDB cursors has no mark: every batch's effects are done (alerts given again are
    folded by the alert book into the alert they repeat)."""

    def __init__(self, store: Any, table: str, consumer: str) -> None:
        self.store = store
        self.table = table  # a constant of the plugin, never from a request
        self.consumer = consumer
        self.enabled = hasattr(store, "reader")
        self.seq = -1
        self.replaying = False
        self.emitted = False
        self.suppressed = 0
        """Alert events not emitted again (their batch's alerts were raised before a crash)."""

    def load(self) -> int:
        """Read the mark (creating the table and this consumer's row); returns it."""
        if not self.enabled:
            return self.seq
        cursor = self.store.reader()
        with _DDL_LOCK:  # the plugin's consumers start at once: concurrent CREATEs conflict
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (consumer VARCHAR, seq BIGINT)"
            )
            rows = cursor.execute(
                f"SELECT max(seq) FROM {self.table} WHERE consumer = ?", [self.consumer]
            ).fetchall()
            if rows[0][0] is None:
                cursor.execute(f"INSERT INTO {self.table} VALUES (?, -1)", [self.consumer])
            else:
                self.seq = int(rows[0][0])
        return self.seq

    def begin(self, seq: int) -> bool:
        """Start batch ``seq``; returns whether its side effects are to be done."""
        self.replaying = seq <= self.seq
        self.emitted = False
        return not self.replaying

    def emitter(self, emit: Callable[[AlertEvent], None]) -> Callable[[AlertEvent], None]:
        """``emit`` that drops the events of a batch given again."""

        def gated(event: AlertEvent) -> None:
            if self.replaying:
                self.suppressed += 1
                return
            self.emitted = True
            emit(event)

        return gated

    def commit(self, seq: int, write: Callable[[], bool] | None = None) -> None:
        """Run ``write`` (the batch's inserts through ``store.reader()``; returns whether it
        wrote anything) and move the mark to ``seq``, in one transaction. Nothing is written
        for a batch given again; the mark is not moved for a batch without effects (it costs a
        transaction, and seeing such a batch again changes nothing)."""
        if self.replaying:
            return
        if not self.enabled or (write is None and not self.emitted):
            if write is not None:
                write()
            return
        cursor = self.store.reader()
        cursor.begin()
        try:
            wrote = write() if write is not None else False
            if not (wrote or self.emitted):
                cursor.rollback()
                return
            cursor.execute(
                f"UPDATE {self.table} SET seq = ? WHERE consumer = ?", [seq, self.consumer]
            )
            cursor.commit()
        except BaseException:
            cursor.rollback()
            raise
        self.seq = seq
