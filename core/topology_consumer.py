"""The topology consumer: learns :class:`~opstrata.topology.TopologyGraph` from committed
batches — calls between services from client/server span pairs and ``peer.service``-like span
attributes, models a service uses, and where each service runs (from every signal's resource).

It is columnar: a pass over many batches at once (``consume_many``) is a few dozen Arrow and
numpy calls, whatever the number of spans; the span-pair join and grouping primitives are in
:mod:`opstrata.topology_spans`. Python runs once per distinct edge, not per span.
"""

from __future__ import annotations

from time import monotonic
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.consumers import CommittedBatch, Consumer, ConsumerContext, latest_event_time
from opstrata.schema import Signal, Table
from opstrata.topology import (
    _FORGET_AFTER_NS,
    _MINUTE,
    _PEER_KEYS,
    PLACEMENT_KEYS,
    EdgeKind,
    TopologyGraph,
)
from opstrata.topology_runs import resource_runs
from opstrata.topology_spans import (
    Names,
    SpanKeyIndex,
    first_values,
    group_rows,
    int64s,
    span_keys,
)

__all__ = ["TopologyConsumer"]

# Arrow values made from Python objects once, not per batch: while pyarrow's optional
# ``dateutil`` is not installed, every conversion of a Python value (a list, or a literal passed
# to a compute function) retries that import from disk, ~100 µs each here.
_KEYS: dict[str, pa.Scalar] = {}
# Outbound kinds first, then inbound ones.
_CALL_KINDS = pa.array(["Client", "Producer", "Server", "Consumer"])
_EMPTY = pa.scalar("", pa.string())
_ERROR = pa.scalar("Error", pa.string())
_COLON = pa.scalar(":", pa.string())


def _key(key: str) -> pa.Scalar:
    scalar = _KEYS.get(key)
    if scalar is None:
        scalar = _KEYS[key] = pa.scalar(key, pa.string())
    return scalar


# Past this many interned names (services, peers, models) the consumer starts its names and
# its pending-span indexes afresh, so that a flood of distinct peer addresses cannot grow them
# without bound; codes must also stay below 2**31 to pack a (caller, peer) pair in one int64.
_MAX_NAMES = 1_000_000
# The span attributes the consumer reads, in one pass over each batch's keys: the peer keys
# first (in priority order), then the model keys.
_SPAN_KEYS = (
    *_PEER_KEYS,
    "ml.model.name",
    "ml.model.version",
    "gen_ai.response.model",
    "gen_ai.request.model",
    "llm.model_name",
)
_ML_NAME = len(_PEER_KEYS)
_ML_VERSION = _ML_NAME + 1
_LLM_FIRST = _ML_NAME + 2
_SPAN_KEY_ARRAY = pa.array(_SPAN_KEYS)
_PLACEMENT_KEY_ARRAY = pa.array([key for key, _ in PLACEMENT_KEYS])
_LOW32 = np.int64(0xFFFFFFFF)
# The graph is saved (and edges not seen for a week forgotten) every this many batches, at most
# once per this many seconds; a clean stop saves. ``durable_upto`` holds the kernel's saved
# offset at the last save, so a restart after ``kill -9`` is given the batches since again.
_SAVE_BATCHES = 200
_SAVE_SECONDS = 5.0
_SAVE_MAX_SECONDS = 60.0


def _first_in_rows(rows: np.ndarray, key_index: np.ndarray, low: int, high: int) -> np.ndarray:
    """Of ``first_values``' entries (sorted by row, then key), the first of each row whose key
    index is in ``[low, high)``: the first present of those keys, in their order."""
    within = np.flatnonzero((key_index >= low) & (key_index < high))
    if len(within) < 2:
        return within
    chosen = rows[within]
    return within[np.concatenate(([True], chosen[1:] != chosen[:-1]))]


def _time_column(table: Table) -> str:
    return "TimeUnix" if table.value.startswith("otel_metrics") else "Timestamp"


def _table(batches: list[pa.RecordBatch]) -> pa.Table:
    """Batches of one table as one Arrow table, whose columns are then read once for all of
    them: picking columns batch by batch made Python objects per column per request, a fixed
    cost per request that was most of the consumer's cost per item."""
    try:
        return pa.Table.from_batches(batches)
    except pa.ArrowInvalid:  # the same columns in another order (read back from a store)
        names = batches[0].schema.names
        return pa.Table.from_batches([batch.select(names) for batch in batches])


def _int64s(column: pa.ChunkedArray) -> np.ndarray:
    """A column of 64-bit integers or timestamps as int64 numpy: copied chunk by chunk into
    one array, which costs a quarter of combining the chunks into one Arrow array."""
    if column.null_count == 0 and (
        pa.types.is_int64(column.type) or pa.types.is_timestamp(column.type)
    ):
        return column.to_numpy().view(np.int64)
    return int64s(column.combine_chunks())


def _combine(chunks: list[pa.Array]) -> pa.Array:
    """Chunks of one column, of one or several tables, as one array. Tables read back from a
    store may spell a map's field names differently: those chunks are cast to the first's."""
    if len(chunks) == 1:
        return chunks[0]
    kind = chunks[0].type
    if any(chunk.type != kind for chunk in chunks):
        chunks = [chunk if chunk.type == kind else chunk.cast(kind) for chunk in chunks]
    return pa.chunked_array(chunks, kind).combine_chunks()


_PLACED = ["ResourceAttributes", "ServiceName"]


def _placed_columns(tables: list[pa.Table]) -> tuple[pa.Array, pa.Array]:
    """The resource and service name of every row of the pass's tables, each one array. The
    tables are concatenated as tables (no copy) and each column combined once, in C++: asking
    each column for its chunks made a Python object per request and table (a metrics pass of
    150 requests: 900), which cost more than the copy."""
    try:
        joined = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    except pa.ArrowInvalid:  # a map type spelled otherwise (a table read back from a store)
        resources = [chunk for table in tables for chunk in table.column(0).chunks]
        services = [chunk for table in tables for chunk in table.column(1).chunks]
        return _combine(resources), _combine(services)
    return joined.column(0).combine_chunks(), joined.column(1).combine_chunks()


def _first_of_runs(
    resource: pa.MapArray, services: pa.Array, times: np.ndarray, starts: np.ndarray
) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """The resource and service name of the first row of each run of one resource (runs that
    begin at ``starts``), and the latest time of each run."""
    latest = np.maximum.reduceat(times, starts)
    if len(starts) == len(resource):
        return resource, services, latest
    at = pa.array(starts)
    return resource.take(at), services.take(at), latest


def _local_starts(records: list[pa.RecordBatch], starts: list[np.ndarray]) -> np.ndarray:
    """The decoder's resource starts of one table's batches (each batch's from 0) as rows of
    the batches laid end to end (int64)."""
    if len(records) == 1:
        return starts[0].astype(np.int64)
    offsets = np.cumsum([0] + [batch.num_rows for batch in records[:-1]], dtype=np.int64)
    counts = [len(part) for part in starts]
    return np.concatenate(starts).astype(np.int64) + np.repeat(offsets, counts)


def _bools(array: pa.Array) -> np.ndarray:
    return array.fill_null(False).to_numpy(zero_copy_only=False)


class TopologyConsumer(Consumer):
    """Learns the topology from every committed span batch (and placement from logs and
    metrics), and saves it in its state directory so a restart keeps what was learned.

    It takes its batches many at a time (``consume_many``): the fixed cost of each pass (a few
    dozen Arrow and numpy calls) is then paid per group of requests, not per request.
    """

    name: ClassVar[str] = "topology"
    signals: ClassVar[frozenset[Signal]] = frozenset(Signal)
    inbox_size: ClassVar[int] = 2048
    """A commit of the ingest log's backlog publishes one batch per request, often hundreds at
    once; with the default 64 this consumer fell behind at every commit and read each batch
    back from the store. The batches are the decoded requests already in memory (shared with
    every other consumer), and ``consume_many`` empties the inbox in one pass."""
    inbox_bytes: ClassVar[int] = 128 * 1024 * 1024
    """One commit of a full backlog (``ingest.queue_bytes``, 192 MiB counted with the heap's
    overhead) is some 1,300 requests of spans and ~115 MiB of buffers: the inbox takes a whole
    commit, which it holds only until its next pass (docs/configuration.md, "Memory")."""

    def __init__(self, graph: TopologyGraph, index_capacity: int = 200_000) -> None:
        self.graph = graph
        self._names = Names()
        self._clients = SpanKeyIndex(index_capacity)
        """client/producer span id → caller code << 32 | peer code"""
        self._orphans = SpanKeyIndex(index_capacity)
        """parent span id of server/consumer spans whose parent was not seen yet → callee code"""
        self._batches = 0
        self._save_at = _SAVE_BATCHES
        self._save_after = 0.0
        self._save_by = monotonic() + _SAVE_MAX_SECONDS
        self._latest = 0
        self._seen_seq = -1
        self._saved_seq = -1
        self._loaded_seq = -1

    def start(self, ctx: ConsumerContext) -> None:
        # Batches up to the saved graph's ``seq`` are in it: given again (the offset file may
        # lag the graph by one write after a ``kill -9``), they are skipped, not learnt twice.
        self._saved_seq = self._seen_seq = self._loaded_seq = self.graph.load(
            ctx.state_dir / "topology.json"
        )

    def stop(self, ctx: ConsumerContext) -> None:
        self.graph.save(ctx.state_dir / "topology.json", self._seen_seq)
        self._saved_seq = self._seen_seq

    def durable_upto(self) -> int | None:
        return self._saved_seq

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        self.consume_many([batch], ctx)

    def consume_many(self, batches: list[CommittedBatch], ctx: ConsumerContext) -> None:
        """Learn from several committed batches (in sequence order) in one pass."""
        if batches and batches[0].seq <= self._loaded_seq:
            batches = [batch for batch in batches if batch.seq > self._loaded_seq]
        if not batches:
            return
        # Seen even if learning them fails below: the batches count as done either way.
        self._seen_seq = batches[-1].seq
        # Per request only the batches are sorted by table; every column is then read once per
        # table for the whole group. Placement comes from every table (a request of metric
        # points fills up to five), calls and models from spans.
        tables: dict[Table, list[pa.RecordBatch]] = {}
        # The rows where each resource starts, per table, as the decoder handed them over
        # (None once a batch came without: the runs are then found by comparing rows).
        decoded: dict[Table, list[np.ndarray]] | None = {}
        latest = self._latest
        for batch in batches:
            known = batch.resource_starts
            for table, records in batch.tables.items():
                if records.num_rows:
                    tables.setdefault(table, []).append(records)
                    if decoded is not None:
                        if known is None:
                            decoded = None
                        else:
                            decoded.setdefault(table, []).append(known[table])
            latest = max(latest, latest_event_time(batch))
        self._latest = latest
        if len(self._names) > _MAX_NAMES:
            self._names.clear()
            self._clients.clear()
            self._orphans.clear()
        # The resources of every table in one pass (one combine, one run search): a metrics
        # request fills three or more tables, and each Arrow call costs the most in the server,
        # where it gives up the GIL and waits to take it back. A run never crosses from one
        # table into the next (``breaks``), so the span rows' runs are their own.
        placed: list[pa.Table] = []
        times: list[np.ndarray] = []
        known_starts: list[np.ndarray] = []
        breaks = [0]
        spans = None
        for table, records in tables.items():
            data = _table(records)
            if table is Table.TRACES:
                spans = (data, breaks[-1])
            if decoded is None:
                placed.append(data.select(_PLACED))
            else:
                # Only the first row of each resource is read (one take over the table's
                # chunks): combining every row's ResourceAttributes and comparing each row with
                # the one before was ~40 % of a metrics pass. ServiceName comes from the
                # resource, so it too is one per resource.
                local = _local_starts(records, decoded[table])
                placed.append(data.select(_PLACED).take(local))
                known_starts.append(local + breaks[-1])
            times.append(_int64s(data.column(_time_column(table))))
            breaks.append(breaks[-1] + data.num_rows)
        if len(breaks) > 1:
            all_times = times[0] if len(times) == 1 else np.concatenate(times)
            resource, services = _placed_columns(placed)
            if decoded is None:
                starts = resource_runs(resource, services, np.array(breaks[1:-1], np.int64))
                runs = _first_of_runs(resource, services, all_times, starts)
            else:
                starts = known_starts[0] if len(known_starts) == 1 else np.concatenate(known_starts)
                runs = (resource, services, np.maximum.reduceat(all_times, starts))
            run_services = self._learn_placement(runs)
            if spans is not None:
                data, first = spans
                end = first + data.num_rows
                runs = np.flatnonzero((starts >= first) & (starts < end))
                # ServiceName is one per run: the runs' service codes, repeated over their rows.
                lengths = np.diff(starts[runs], append=end)
                self._learn_spans(
                    data, np.repeat(run_services[runs], lengths), all_times[first:end]
                )
        self._batches += len(batches)
        now = monotonic()
        if (self._batches >= self._save_at or now >= self._save_by) and now >= self._save_after:
            # Every 200 batches, but no more than once per ``_SAVE_SECONDS``: under load 200
            # batches come every ~0.4 s, and each save encodes the whole graph (every call
            # edge's per-minute statistics), its cost growing with the graph, not the rate.
            # At a trickle, at least every ``_SAVE_MAX_SECONDS``: what a restart after
            # ``kill -9`` has to read back from the store stays bounded.
            self._save_at = self._batches + _SAVE_BATCHES
            self._save_after = now + _SAVE_SECONDS
            self._save_by = now + _SAVE_MAX_SECONDS
            self.graph.forget_before(self._latest - _FORGET_AFTER_NS)
            self.graph.save(ctx.state_dir / "topology.json", self._seen_seq)
            self._saved_seq = self._seen_seq

    def _learn_placement(self, runs: tuple[pa.Array, pa.Array, np.ndarray]) -> np.ndarray:
        """Learn placement from the first rows of runs of one resource (``_first_of_runs``);
        return the code of each one's service name."""
        # Placement is a property of the resource: the placement keys of the first row of each
        # run of one resource, grouped by (service, host, pod, node) with the latest
        # time of each.
        resource, services, times = runs
        names = self._names
        empty = names.code("")
        columns = [names.encode(services)]
        rows, key_index, values = first_values(resource, _PLACEMENT_KEY_ARRAY, last=True)
        codes = names.encode(values)
        for index in range(len(PLACEMENT_KEYS)):
            column = np.full(len(services), empty, np.int64)
            chosen = key_index == index
            column[rows[chosen]] = codes[chosen]
            columns.append(column)
        order, starts, first = group_rows(*columns)
        latest = np.maximum.reduceat(times[order], starts).tolist()
        found = [[names.names[code] for code in column[first].tolist()] for column in columns]
        edges = []
        for service, host, pod, node, time in zip(*found, latest, strict=True):
            if pod and node:
                edges.append((("pod", pod), ("host", node), time))
            if service:
                edges += [
                    (("service", service), (kind, name), time)
                    for kind, name in (("host", host), ("pod", pod), ("node", node))
                    if name
                ]
        self.graph.add_many(EdgeKind.RUNS_ON, edges)
        return columns[0]

    def _learn_spans(self, spans: pa.Table, service_codes: np.ndarray, times: np.ndarray) -> None:
        names = self._names
        latest = int(times.max())
        found = first_values(spans.column("SpanAttributes").combine_chunks(), _SPAN_KEY_ARRAY)
        self._learn_models(service_codes, found, times)

        kinds = pc.index_in(spans.column("SpanKind"), value_set=_CALL_KINDS)
        kinds = kinds.fill_null(-1).to_numpy()
        outbound, inbound = (kinds >= 0) & (kinds < 2), kinds >= 2
        # The first of the peer keys (in their order) each span has, else "".
        rows, key_index, values = found
        peer = _first_in_rows(rows, key_index, 0, len(_PEER_KEYS))
        peer_codes = np.full(len(service_codes), names.code(""), np.int64)
        if len(peer):
            peer_codes[rows[peer]] = names.encode(values.take(pa.array(peer)))

        # Calls leaving a service: per-minute statistics per (caller, peer).
        calls = outbound & (peer_codes != names.code(""))
        if calls.any():
            errors = _bools(pc.equal(spans.column("StatusCode"), _ERROR))[calls].astype(np.int64)
            durations = _int64s(spans.column("Duration"))[calls]
            callers, peers = service_codes[calls], peer_codes[calls]
            minutes = times[calls] // _MINUTE
            order, starts, first = group_rows(callers, peers, minutes)
            counts = np.diff(np.append(starts, len(order)))
            error_sums = np.add.reduceat(errors[order], starts)
            duration_sums = np.add.reduceat(durations[order], starts)
            for caller, peer, minute, count, error_sum, duration_sum in zip(
                callers[first].tolist(),
                peers[first].tolist(),
                minutes[first].tolist(),
                counts.tolist(),
                error_sums.tolist(),
                duration_sums.tolist(),
                strict=True,
            ):
                self.graph.add_call_stats(
                    names.names[caller],
                    names.names[peer],
                    minute,
                    count,
                    error_sum,
                    float(duration_sum),
                    latest,
                )

        # Cross-service parent/child pairs: either side may arrive first, in this batch or in
        # an earlier one.
        # Only the ids a side of a call needs are read: the span ids of client spans, the
        # parent ids of server spans.
        client_ids = span_keys(spans.column("SpanId").combine_chunks(), outbound)
        client_callers, client_peers = service_codes[outbound], peer_codes[outbound]
        self._clients.add(client_ids, (client_callers << 32) | client_peers)
        parent_ids = span_keys(spans.column("ParentSpanId").combine_chunks(), inbound)
        waiting = parent_ids != 0
        parents, callees = parent_ids[waiting], service_codes[inbound][waiting]
        found, pairs = self._clients.find(parents)
        answered, answering = self._orphans.find(client_ids)
        self._orphans.add(parents[~found], callees[~found])
        found_callers = np.concatenate((pairs[found] >> 32, client_callers[answered]))
        found_callees = np.concatenate((callees[found], answering[answered]))
        found_peers = np.concatenate((pairs[found] & _LOW32, client_peers[answered]))
        if not len(found_callers):
            return
        _, _, first = group_rows(found_callers, found_callees, found_peers)
        for caller, callee, peer in zip(
            found_callers[first].tolist(),
            found_callees[first].tolist(),
            found_peers[first].tolist(),
            strict=True,
        ):
            if caller == callee:
                continue
            caller_name, callee_name = names.names[caller], names.names[callee]
            self.graph.add(
                EdgeKind.CALLS, ("service", caller_name), ("service", callee_name), latest
            )
            self.graph.alias(names.names[peer], callee_name)

    def _learn_models(
        self,
        service_codes: np.ndarray,
        found: tuple[np.ndarray, np.ndarray, pa.Array],
        times: np.ndarray,
    ) -> None:
        rows, key_index, values = found
        named = np.flatnonzero(key_index == _ML_NAME)
        if len(named):
            model_rows = rows[named]
            versioned = np.flatnonzero(key_index == _ML_VERSION)
            at = np.searchsorted(rows[versioned], model_rows)
            at = np.minimum(at, max(len(versioned) - 1, 0))
            has = (rows[versioned][at] == model_rows) if len(versioned) else at < 0
            picks = pa.array(versioned[at] if len(versioned) else at, mask=~has)
            version = pc.fill_null(values.take(picks), _EMPTY)
            name = values.take(pa.array(named))
            model = pc.if_else(
                pc.equal(version, _EMPTY),
                name,
                pc.binary_join_element_wise(name, version, _COLON),
            )
            self._add_uses(service_codes[model_rows], model, times[model_rows], "model")
        llm = _first_in_rows(rows, key_index, _LLM_FIRST, len(_SPAN_KEYS))
        if len(llm):
            llm_rows = rows[llm]
            used = values.take(pa.array(llm))
            self._add_uses(service_codes[llm_rows], used, times[llm_rows], "llm_model")

    def _add_uses(
        self, service_codes: np.ndarray, used: pa.Array, times: np.ndarray, kind: str
    ) -> None:
        models = self._names.encode(used)
        order, starts, first = group_rows(service_codes, models)
        latest = np.maximum.reduceat(times[order], starts)
        names = self._names.names
        for service, model, time in zip(
            service_codes[first].tolist(), models[first].tolist(), latest.tolist(), strict=True
        ):
            self.graph.add(EdgeKind.USES, ("service", names[service]), (kind, names[model]), time)
