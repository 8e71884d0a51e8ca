"""The consumer: committed spans and log records in, LLM calls (priced) and their messages out
to the plugin's tables, and alerts through the kernel."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.consumers import CommittedBatch, Consumer, ConsumerContext
from opstrata.otlp.decode_traces import hand_over_llm_spans, join_llm_spans
from opstrata.plugins.llmops.config import LLMOpsConfig
from opstrata.plugins.llmops.conventions import MESSAGE_EVENTS
from opstrata.plugins.llmops.detect import CallAlerts
from opstrata.plugins.llmops.messages import CallMessages
from opstrata.plugins.llmops.pick import Kept, hinted_rows, pick_spans
from opstrata.plugins.llmops.prices import PriceTable, shipped_entries
from opstrata.plugins.llmops.privacy import ContentPolicy
from opstrata.plugins.llmops.recognise import CALLS, SpanColumns, candidates, recognise
from opstrata.plugins.llmops.span_parts import MESSAGES
from opstrata.plugins.llmops.writer import CallWriter
from opstrata.schema import Signal, Table

__all__ = ["GROUP_SECONDS", "WRITE_SECONDS", "LLMCalls", "price_calls"]

log = logging.getLogger(__name__)

GROUP_SECONDS = 4.0
"""Committed batches wait at most this long (wall clock, arrival) before they are looked at,
and the calls found are written right after the look ..."""
GROUP_ROWS = 50_000
"""... or until this many rows are waiting. Every Arrow call costs some microseconds whatever
its size, so a batch is not looked at on its own: a group's spans are scanned in one go. A look
and a write cost ~15-40 ms of CPU whatever their size (a few hundred kernel calls, a DuckDB
transaction), so at moderate rates their cadence, not the spans, sets the plugin's cost. Looks
every 2 s with each look's calls written ~2 s later (a write buffered ``WRITE_SECONDS``) put
calls in the API ~4 s after their spans, as one look every 4 s written at once does for half
the looks and writes (~0.2 µs a span less at 20,000 spans/s); the kept side batches of 4 s are
~10 MB at 10 % LLM spans of 20,000 spans/s."""
WRITE_SECONDS = 2.0
"""The writer's thread checks every quarter of this whether a look is due; calls not written
right after their look (none, but for a failed write) are written within this."""
HELD_BYTES = 64 * 1024 * 1024
"""Looks run on the writer's thread, so the consumer's thread only keeps batches and its inbox
never fills behind a look (a full inbox makes the fan-out drop it and re-read the batches from
DuckDB, which at full rate cost more than everything else the plugin does). Past this many
bytes of kept batches (the writer's thread is behind) the consumer's thread looks itself, and
waits. Bounded in bytes, not rows: kept batches are mostly the decoder's side batches (~1.2-3
KB an LLM span, with its messages; whole requests, ~750 B a span, only without one), outside
the admission bound, and count against the server's memory budget (docs/configuration.md).
Half of it kept is a group the writer's thread looks at at once."""
_MESSAGE_EVENT_NAMES = pa.array(sorted(MESSAGE_EVENTS), pa.string())
# Typed scalars made once (see recognise._EMPTY).
_SPAN, _TABLE = pa.scalar("span", pa.string()), pa.scalar("table", pa.string())
_EMPTY, _NO_TEXT = pa.scalar("", pa.string()), pa.scalar(None, pa.string())
_LOG_COLUMNS = ["Timestamp", "TraceId", "SpanId", "ServiceName", "LogAttributes"]
"""Log record columns read as :class:`SpanColumns` (time, trace, span, service, attributes)."""


def _table(batches: list[pa.RecordBatch]) -> pa.Table | None:
    """The batches as one table (no copy: each batch is a chunk)."""
    if not batches:
        return None
    try:
        return pa.Table.from_batches(batches)
    except pa.ArrowInvalid:  # batches read back from the store may differ in metadata
        return pa.concat_tables(
            [pa.Table.from_batches([b]) for b in batches], promote_options="permissive"
        )


def price_calls(calls: pa.Table, prices: PriceTable) -> pa.Table:
    """Fill ``CostPicoUsd`` from the price table where the span carried no cost; calls whose
    model has no price keep a NULL cost (and ``CostSource`` NULL): unpriced, not free."""
    if calls.num_rows == 0:
        return calls
    carried = calls.column("CostSource").is_valid().to_numpy(zero_copy_only=False)
    tokens = {
        name: calls.column(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        for name, column in (
            ("input", "InputTokens"),
            ("output", "OutputTokens"),
            ("cache_read", "CacheReadTokens"),
            ("cache_write", "CacheWriteTokens"),
            ("reasoning", "ReasoningTokens"),
        )
    }
    cost, priced = prices.costs(
        calls.column("Provider").combine_chunks(),
        calls.column("ResponseModel").combine_chunks(),
        calls.column("RequestModel").combine_chunks(),
        tokens,
    )
    old = calls.column("CostPicoUsd").fill_null(0).to_numpy(zero_copy_only=False)
    final = np.where(carried, old, cost)
    valid = carried | priced
    source = pc.if_else(
        pa.array(carried),
        _SPAN,
        pc.if_else(pa.array(priced), _TABLE, _NO_TEXT),
    )
    calls = calls.set_column(
        calls.schema.get_field_index("CostPicoUsd"),
        "CostPicoUsd",
        pa.array(final, pa.int64(), mask=~valid),
    )
    return calls.set_column(calls.schema.get_field_index("CostSource"), "CostSource", source)


class LLMCalls(Consumer):
    name = "calls"
    signals = frozenset({Signal.SPANS, Signal.LOG_RECORDS})
    # A full inbox is dropped and its batches read back from DuckDB, unmarked, which costs more
    # per span than ingest itself: at full rate a consumer that once fell behind stayed behind.
    # The plugin keeps up to HELD_BYTES of these batches anyway (see HELD_BYTES).
    inbox_size = 1024
    inbox_bytes = 192 * 1024 * 1024

    def __init__(self, config: LLMOpsConfig) -> None:
        self.config = config
        self.policy = ContentPolicy(config.content, config.mask_patterns, config.max_message_chars)
        entries = list(config.prices) + (shipped_entries() if config.price_table else [])
        self.prices = PriceTable(entries)
        self.resources: dict[str, dict[str, str]] = {}
        self.alerts: CallAlerts | None = None
        self.writer: CallWriter | None = None
        self._checked_gap = False
        self._reading_side = False  # asked the span decoders for side batches
        self._lock = threading.Lock()  # the kept batches: held for a few list operations
        self._look_lock = threading.Lock()  # one look at a time, in sequence order
        # Kept span batches in sequence order, as runs of the decoder's side batches (True)
        # or of whole batches without one (False: decoded before the plugin started, read
        # back from the store), so that a look finds calls in the order they came.
        self._pending_runs: list[tuple[bool, list]] = []
        self._pending_logs: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._look_error: Exception | None = None  # a look on the writer's thread that failed
        self._pending_seq = 0
        self._pending_since = 0.0

    def start(self, ctx: ConsumerContext) -> None:
        self.writer = CallWriter(
            ctx.store, ctx.consumer, flush_seconds=WRITE_SECONDS, before_flush=self._flush_if_due
        )
        self.writer.start()
        self._checked_gap = False
        if self.config.alerts.enabled:
            self.alerts = CallAlerts(
                self.config.alerts, self.config.budgets, ctx.emit, self._resource_of
            )
        # The span decoders copy the marked spans' columns the plugin reads into a small side
        # batch (``CommittedBatch.llm_spans``): kept instead of whole requests, and no rows to
        # take out of them. Batches decoded before this (or read back from the store) have
        # none and are scanned as before. Asked for last: a start that failed asks nothing.
        if not self._reading_side:
            hand_over_llm_spans(True)
            self._reading_side = True

    def stop(self, ctx: ConsumerContext) -> None:
        if self._reading_side:
            hand_over_llm_spans(False)
            self._reading_side = False
        self.flush_pending()
        if self.writer is not None:
            self.writer.stop()
        if self.alerts is not None:
            self.alerts.flush()

    def _resource_of(self, service: str) -> dict[str, str]:
        return dict(self.resources.get(service) or {"service.name": service})

    def _remember_resources(
        self, services: pa.Array, resource_of: Callable[[int], list | None]
    ) -> None:
        """The resource attributes of services not seen before (``services``: one per call;
        ``resource_of(i)``: the resource attribute pairs of call ``i``); one Arrow dictionary
        encoding finds the few distinct names."""
        encoded = pc.dictionary_encode(services)
        names = encoded.dictionary.to_pylist()
        if all(name in self.resources for name in names):
            return
        _, first = np.unique(encoded.indices.to_numpy(zero_copy_only=False), return_index=True)
        for i, name in zip(first, names, strict=True):
            if name not in self.resources:
                pairs = resource_of(int(i))
                self.resources[str(name)] = {str(k): str(v) for k, v in pairs or ()}

    @staticmethod
    def _resource_in(table: pa.Table, rows: np.ndarray) -> Callable[[int], list | None]:
        """``resource_of`` for calls from ``rows`` of a group ``table`` (one chunk a batch)."""
        chunks = table.column("ResourceAttributes").chunks
        ends = np.cumsum([len(c) for c in chunks])

        def resource_of(i: int) -> list | None:
            # From the row's own chunk: a take over the whole group would first join them all.
            row = int(rows[i])
            chunk = int(np.searchsorted(ends, row, side="right"))
            return chunks[chunk][row - int(ends[chunk] - len(chunks[chunk]))].as_py()

        return resource_of

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        writer = self.writer
        assert writer is not None, "start() was not called"
        stored = writer.stored_seq
        if stored is not None and batch.seq <= stored:
            return  # redelivered after a crash: its calls are stored already
        if not self._checked_gap:
            self._checked_gap = True
            if stored is not None and batch.seq > stored + 1:
                self._backfill(stored, batch.seq - 1, ctx)
        self._process(batch, ctx)
        failed, self._look_error = self._look_error, None
        if failed is not None:  # raised here so that the fan-out counts it as this consumer's
            raise failed

    def consume_many(self, batches: list[CommittedBatch], ctx: ConsumerContext) -> None:
        """All the batches waiting in the inbox in one call (the fan-out's wake-up and hand-over
        once, not per batch: at full rate, per-batch hand-overs waiting for the GIL let the inbox
        fill, and a full inbox is dropped and read back from DuckDB)."""
        failed: Exception | None = None
        for batch in batches:
            try:
                self.consume(batch, ctx)
            except Exception as exc:  # the others are still kept; the first error is counted
                log.exception("llmops: batch %d failed", batch.seq)
                failed = failed or exc
        if failed is not None:
            raise failed

    def _backfill(self, after: int, upto: int, ctx: ConsumerContext) -> None:
        """Batches the kernel had acknowledged while their calls were still buffered when the
        process died: read them again from the store."""
        while after < upto:
            missed = ctx.store.read_batches(after, upto, self.signals, limit=32)
            if not missed:
                break
            for batch in missed:
                self._process(batch, ctx)
            after = missed[-1].seq
        log.info("llmops: re-read batches %d..%d from the store", after, upto)

    def _process(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        """Keep the batch; look at the kept ones together every ``GROUP_SECONDS`` or
        ``GROUP_ROWS``: finding, recognising, pricing and storing calls cost about the same for
        one batch as for a hundred."""
        spans = batch.tables.get(Table.TRACES)
        logs = batch.tables.get(Table.LOGS)
        with self._lock:
            if spans is not None and spans.num_rows:
                rows = hinted_rows(spans)
                side = batch.llm_spans
                if rows is not None and side is not None:  # the usual case: the decoder's rows
                    self._keep(True, side)
                    self._pending_rows += len(rows)  # the side batch's rows
                    self._pending_bytes += batch.llm_spans_nbytes
                elif rows is None or len(rows):  # else marked by the decoder: no LLM key at all
                    self._keep(False, (spans, rows))
                    self._pending_rows += spans.num_rows
                    self._pending_bytes += batch.nbytes  # measured once, by the fan-out
            if logs is not None and logs.num_rows:
                self._pending_logs.append(logs)
                self._pending_rows += logs.num_rows
                self._pending_bytes += batch.nbytes
            self._pending_seq = batch.seq
            if not self._pending_since:
                self._pending_since = time.monotonic()
            due = self._group_due()
            behind = self._pending_bytes >= HELD_BYTES
        if behind:
            self.flush_pending()  # the writer's thread is behind: look here, and wait
        elif due and self.writer is not None:
            self.writer.wake()  # the look runs on the writer's thread

    def _keep(self, side: bool, kept: object) -> None:
        """Keep a side batch or a whole batch after the others (under ``_lock``)."""
        runs = self._pending_runs
        if runs and runs[-1][0] is side:
            runs[-1][1].append(kept)
        else:
            runs.append((side, [kept]))

    def _group_due(self) -> bool:
        """Whether the kept batches are a group to look at before ``GROUP_SECONDS`` (under
        ``_lock``): ``GROUP_ROWS`` rows, or half of ``HELD_BYTES``, so that the writer's thread
        looks well before the consumer's thread has to."""
        return self._pending_rows >= GROUP_ROWS or self._pending_bytes >= HELD_BYTES // 2

    def _flush_if_due(self) -> None:
        """The writer's thread: look at the kept batches every ``GROUP_SECONDS``, or as soon as
        they are a group (:meth:`_group_due`)."""
        with self._lock:
            since, due = self._pending_since, self._group_due()
        if since and (due or time.monotonic() - since >= GROUP_SECONDS):
            try:
                self.flush_pending()
            except Exception as exc:  # its batches are lost: the consumer's thread reports it
                self._look_error = exc
                raise

    def flush_pending(self) -> None:
        """Recognise the rows kept since the last time (mostly on the writer's thread). The kept
        batches are taken under the short lock, so the consumer's thread can keep more while
        the look runs; the look lock keeps looks, and so the sequence numbers written, in
        order."""
        with self._look_lock:
            with self._lock:
                if not self._pending_since:
                    return
                runs, logs = self._pending_runs, _table(self._pending_logs)
                seq = self._pending_seq
                self._pending_runs, self._pending_logs = [], []
                self._pending_rows, self._pending_since = 0, 0.0
                self._pending_bytes = 0
            self._recognise(seq, runs, logs)

    def _recognise(self, seq: int, runs: list[tuple[bool, list]], logs: pa.Table | None) -> None:
        assert self.writer is not None
        calls: list[pa.Table] = []
        messages: list[pa.Table] = []
        for side, kept in runs:  # in sequence order: usually one run of side batches
            if side:
                self._recognise_side(kept, calls, messages)
            else:
                self._recognise_spans(kept, calls, messages)
        if logs is not None and logs.num_rows:
            self._logs(logs, calls, messages)
        if not calls and not messages:
            self.writer.add(seq, None, None)
            return
        all_calls = price_calls(
            pa.concat_tables(calls) if calls else CALLS.empty_table(), self.prices
        )
        all_messages = pa.concat_tables(messages) if messages else MESSAGES.empty_table()
        self.writer.add(seq, all_calls, all_messages)
        try:  # at once: the look's cadence sets how fresh the API is
            self.writer.flush()
        except Exception:  # the calls stay buffered: the writer's thread tries again
            log.exception("llmops: writing calls failed")
        if self.alerts is not None:
            self.alerts.add(all_calls)

    def _recognise_side(
        self, sides: list[object], calls: list[pa.Table], messages: list[pa.Table]
    ) -> None:
        """Calls of a run of side batches: every row a marked span, with the columns
        recognition reads."""
        side = join_llm_spans(sides)
        found = None if side is None else recognise(SpanColumns.of_spans(side), self.policy)
        if found is not None:
            assert side is not None
            self._remember_resources(
                found.calls.column("ServiceName").combine_chunks(),
                self._resource_in(side, found.rows),
            )
            calls.append(found.calls)
            messages.append(found.messages)

    def _recognise_spans(
        self, spans: list[Kept], calls: list[pa.Table], messages: list[pa.Table]
    ) -> None:
        """Calls of a run of whole span batches (their marked rows, or all rows scanned)."""
        picked = pick_spans(spans)
        if picked is None:  # the common case: no LLM span in them
            return
        found = recognise(SpanColumns.of_spans(picked.columns), self.policy)
        if found is None:
            return
        batch, row = picked.batch[found.rows], picked.row[found.rows]

        def resource_of(i: int) -> list | None:
            source = picked.batches[int(batch[i])]
            return source.column("ResourceAttributes")[int(row[i])].as_py()

        self._remember_resources(found.calls.column("ServiceName").combine_chunks(), resource_of)
        calls.append(found.calls)
        messages.append(found.messages)

    def _logs(self, logs: pa.Table, calls: list[pa.Table], messages: list[pa.Table]) -> None:
        """GenAI log events: ``gen_ai.client.inference.operation.details`` (a whole call; it is
        the call itself only when it has no span, else its messages join the span's call) and
        the deprecated per-message events."""

        col = logs.column
        picked = candidates(logs, "LogAttributes", _LOG_COLUMNS)
        found = None
        if picked is not None:
            rows, some = picked
            found = recognise(SpanColumns(*some.columns), self.policy, source="event")
        if found is not None:
            spanless = pc.equal(found.calls.column("SpanId"), _EMPTY)
            own = found.calls.filter(spanless)
            if own.num_rows:
                mine = rows[found.rows][spanless.to_numpy(zero_copy_only=False)]
                self._remember_resources(
                    own.column("ServiceName").combine_chunks(), self._resource_in(logs, mine)
                )
                calls.append(own)
            messages.append(found.messages)
        if not self.policy.keeps_content:
            return
        wanted = np.flatnonzero(
            pc.is_in(col("EventName"), value_set=_MESSAGE_EVENT_NAMES).to_numpy()
        )
        if len(wanted) == 0:
            return
        picked = logs.select(
            ["Timestamp", "TraceId", "SpanId", "EventName", "Body", "LogAttributes"]
        ).take(pa.array(wanted))
        times = picked.column("Timestamp").cast(pa.int64()).to_pylist()
        per_call: dict[tuple[str, str], tuple[int, CallMessages]] = {}
        rows = zip(
            times,
            *(picked.column(c).to_pylist() for c in ("TraceId", "SpanId", "EventName", "Body")),
            picked.column("LogAttributes").to_pylist(),
            strict=True,
        )
        for when, trace_id, span_id, name, body, attributes in rows:
            key = (trace_id or "", span_id or "")
            start, collected = per_call.setdefault(key, (when, CallMessages()))
            collected.add_event(name, body, dict(attributes or ()))
            per_call[key] = (min(start, when), collected)
        stored = [(k, t, m.to_json(self.policy)) for k, (t, m) in per_call.items()]
        messages.append(
            pa.table(
                {
                    "Timestamp": pa.array([t for _, t, _ in stored], pa.timestamp("ns")),
                    "TraceId": [k[0] for k, _, _ in stored],
                    "SpanId": [k[1] for k, _, _ in stored],
                    "Source": ["event"] * len(stored),
                    "Messages": [m for _, _, m in stored],
                    **{
                        c: pa.nulls(len(stored), pa.string()) for c in ("System", "Input", "Output")
                    },
                },
                schema=MESSAGES,
            )
        )
