"""What a batch consumer is, what it receives and what it can do."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from opstrata.alerts import AlertEvent
from opstrata.schema import Signal, Table

__all__ = ["CommittedBatch", "Consumer", "ConsumerContext", "latest_event_time"]


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    """The data of one committed write: read-only Arrow record batches by table.

    ``seq`` is the commit's sequence number: consecutive, and the order every consumer sees.
    """

    seq: int
    signal: Signal
    tables: Mapping[Table, pa.RecordBatch]
    nbytes: int = 0
    """Bytes of the batches' buffers (what holding it in an inbox costs)."""
    latest: int = -1
    """:func:`latest_event_time` of the batch, worked out once by :meth:`of` (-1: not yet)."""
    resource_starts: Mapping[Table, np.ndarray] | None = None
    """Per table, the rows where each of the request's resources starts (ascending, the first
    0), as the decoder walked them (``otlp.decoded.Batches.resource_starts``); None when not
    known (a reference decoder's batches, batches read back from the store). Runs may repeat:
    two consecutive resources with equal attributes are two runs."""
    llm_spans: object | None = None
    """The span decoder's side batch of LLM spans (``otlp.decoded.Batches.llm_spans``: a
    capsule or a record batch, see ``otlp.decode_traces.join_llm_spans``) when it made one;
    None otherwise (also when it marked no span)."""
    llm_spans_nbytes: int = 0

    @classmethod
    def of(
        cls, seq: int, batches: list[tuple[Table, pa.RecordBatch]], nbytes: int | None = None
    ) -> CommittedBatch:
        """The batch of one commit, with its event time; ``nbytes`` when the caller has
        measured the buffers already (admission has: measuring again cost 20-100 µs)."""
        signal = Signal.SPANS
        tables: dict[Table, pa.RecordBatch] = {}
        for table, batch in batches:
            tables[table] = batch
            signal = (
                Signal.SPANS
                if table is Table.TRACES
                else Signal.LOG_RECORDS
                if table is Table.LOGS
                else Signal.METRIC_POINTS
            )
        if nbytes is None:
            # ``nbytes`` counts a slice's own rows; ``get_total_buffer_size`` would count the
            # whole table a slice of a commit shares (exported metric tables).
            nbytes = sum(batch.nbytes for batch in tables.values())
        # The alert clock, the topology consumer and the AIOps consumers all ask every batch
        # its event time: once here is once for all of them (~12 µs per 100-item request).
        # The C decoders hand it over with the batches (``otlp.decoded.Batches.event_time``,
        # the same value), so the fan-out on the event loop need not work it out at all.
        latest = getattr(batches, "event_time", -1)
        if latest < 0:
            latest = _median_time(tables)
        starts = getattr(batches, "resource_starts", None)
        if starts is not None and starts.keys() != tables.keys():
            starts = None  # a list changed after decoding: not known
        side = getattr(batches, "llm_spans", None)
        side_nbytes = getattr(batches, "llm_spans_nbytes", 0) if side is not None else 0
        # The side batch is held as long as the batch: inbox bounds and gauges count it too.
        nbytes += side_nbytes
        return cls(seq, signal, MappingProxyType(tables), nbytes, latest, starts, side, side_nbytes)

    @property
    def rows(self) -> int:
        return sum(batch.num_rows for batch in self.tables.values())


_TIME_COLUMN = {Table.TRACES: "Timestamp", Table.LOGS: "Timestamp"}
_INT64 = pa.int64()


def latest_event_time(batch: CommittedBatch) -> int:
    """The event time (Unix ns) a batch says it is: the median of its timestamps, so that one
    item from a skewed clock cannot move time far ahead; 0 when the batch is empty."""
    return batch.latest if batch.latest >= 0 else _median_time(batch.tables)


def _median_time(tables: Mapping[Table, pa.RecordBatch]) -> int:
    latest = 0
    for table, records in tables.items():
        # By index: looking the column up by name cost more than the rest of the median.
        name = _TIME_COLUMN.get(table, "TimeUnix")
        times = records.column(records.schema.get_field_index(name))
        if times.null_count:
            times = times.drop_null()
        count = len(times)
        if count:
            # The exact median by numpy's partition of the timestamps' buffer: a few µs, where
            # pyarrow's approximate_median took ~40-100 µs — paid per request on the event loop
            # (the fan-out).
            if times.type.bit_width != 64 or pa.types.is_floating(times.type):
                times = times.cast(_INT64)
            values = np.frombuffer(times.buffers()[1], np.int64, count, times.offset * 8).copy()
            middle = count // 2
            values.partition(middle)  # in place on a copy: cheaper than np.partition's own
            median = int(values[middle])
            if median > latest:
                latest = median
    return latest


class ConsumerContext:
    """Given to a consumer with every batch: emit alerts, keep state, read the store."""

    def __init__(
        self,
        plugin: str,
        consumer: str,
        state_dir: Path,
        emit: Callable[[str, AlertEvent], None],
        store: Any,
        config: Mapping[str, Any],
    ) -> None:
        self.plugin = plugin
        self.consumer = consumer
        self.state_dir = state_dir
        self.store = store
        self.config = config
        self._emit = emit

    def emit(self, event: AlertEvent) -> None:
        """Raise (or repeat, or resolve) an alert; repeats with the same key are deduplicated."""
        self._emit(self.plugin, event)


class Consumer(ABC):
    """Base class of batch consumers. Subclass it and implement :meth:`consume`.

    The kernel calls ``consume`` from the consumer's own thread, once per committed batch of
    the signals in ``signals``, in sequence order, never skipping one, and across restarts
    resuming after the last batch it finished. (Only a ``kill -9`` that lands between
    ``consume`` returning and the offset being written redelivers that one batch.) An exception
    is counted and logged (once per exception type) and the consumer goes on with the next
    batch. A consumer slower than ingest falls
    behind without slowing it and catches up from the store.
    """

    name: ClassVar[str] = "consumer"
    signals: ClassVar[frozenset[Signal]] = frozenset(Signal)
    inbox_size: ClassVar[int] = 256
    """Batches held in memory for this consumer before it reads further ones from the store.
    One commit of the ingest log's backlog publishes 100-250 batches at once under load: a
    smaller inbox is behind after nearly every commit and reads them back from DuckDB."""

    inbox_bytes: ClassVar[int] = 64 * 1024 * 1024
    """Bytes of batches held in the inbox before further ones are read from the store: the
    inbox holds batches already loaded, so it is memory outside the admission bound. 64 MiB
    is some 450 requests of 100 spans, two commits' worth under load."""

    linger_seconds: ClassVar[float] = 0.005
    """How long the consumer's thread, woken by a batch after being idle, waits for more before
    it starts: a wake-up costs the ingest path GIL time, and its batches are then taken
    together (all of them by a ``consume_many``)."""

    def start(self, ctx: ConsumerContext) -> None:  # noqa: B027 - optional hook
        """Called once in the consumer's thread before the first batch (load state here)."""

    @abstractmethod
    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        """Look at one committed batch; emit alerts through ``ctx``."""

    def stop(self, ctx: ConsumerContext) -> None:  # noqa: B027 - optional hook
        """Called once in the consumer's thread at shutdown (save state here)."""

    def durable_upto(self) -> int | None:
        """For a consumer that saves its state now and then, not per batch: the sequence number
        of the last batch its saved state includes (below the first batch it was given: nothing
        saved since it started). The kernel's saved offset never goes past it, so after a
        ``kill -9`` the batches learnt since the last save are delivered again (from the store)
        and learnt again, not lost. ``None`` (the default): a batch is done when ``consume``
        returns."""
        return None
