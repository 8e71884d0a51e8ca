"""The topology consumer: learns :class:`~opstrata.topology.TopologyGraph` from committed
batches — calls between services from client/server span pairs and ``peer.service``-like span
attributes, models a service uses, and where each service runs (from every signal's resource).

It is columnar: a pass over many batches at once (``consume_many``) is a few dozen Arrow and
numpy calls, whatever the number of spans; the span-pair join and grouping primitives are in
:mod:`opstrata.topology_spans`. Python runs once per distinct edge, not per span.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.consumers import CommittedBatch, Consumer, ConsumerContext, latest_event_time
from opstrata.resource_runs import resource_runs
from opstrata.schema import Signal, Table
from opstrata.topology import (
    _FORGET_AFTER_NS,
    _MINUTE,
    _PEER_KEYS,
    PLACEMENT_KEYS,
    EdgeKind,
    TopologyGraph,
    canonical,
)
from opstrata.topology_spans import Names, SpanKeyIndex, group_rows, span_keys

__all__ = ["TopologyConsumer"]

# Arrow values made from Python objects once, not per batch: while pyarrow's optional
# ``dateutil`` is not installed, every conversion of a Python value (a list, or a literal passed
# to a compute function) retries that import from disk, ~100 µs each here.
_KEYS: dict[str, pa.Scalar] = {}
_OUTBOUND_KINDS = pa.array(["Client", "Producer"])
_INBOUND_KINDS = pa.array(["Server", "Consumer"])
_EMPTY = pa.scalar("", pa.string())
_ERROR = pa.scalar("Error", pa.string())
_COLON = pa.scalar(":", pa.string())


def _key(key: str) -> pa.Scalar:
    scalar = _KEYS.get(key)
    if scalar is None:
        scalar = _KEYS[key] = pa.scalar(key, pa.string())
    return scalar


def _lookup(column: pa.Array, key: str) -> pa.Array:
    return pc.map_lookup(column, _key(key), "first")


def _first_present(column: pa.Array, keys: tuple[str, ...]) -> pa.Array:
    values = [_lookup(column, key) for key in keys]
    return pc.coalesce(*values) if len(values) > 1 else values[0]


def _placement_columns(records: pa.RecordBatch, time_column: str) -> tuple[pa.Array, ...]:
    return (
        records.column("ResourceAttributes"),
        records.column("ServiceName"),
        records.column(time_column),
    )


_SPAN_COLUMNS = (
    "Timestamp",
    "SpanId",
    "ParentSpanId",
    "SpanKind",
    "ServiceName",
    "SpanAttributes",
    "Duration",
    "StatusCode",
)
# Past this many interned names (services, peers, models) the consumer starts its names and
# its pending-span indexes afresh, so that a flood of distinct peer addresses cannot grow them
# without bound; codes must also stay below 2**31 to pack a (caller, peer) pair in one int64.
_MAX_NAMES = 1_000_000
_LOW32 = np.int64(0xFFFFFFFF)


def _concat(batches: list[pa.RecordBatch], names: tuple[str, ...]) -> dict[str, pa.Array]:
    """The named columns of several batches, each as one array."""
    if len(batches) == 1:
        return {name: batches[0].column(name) for name in names}
    return {name: pa.concat_arrays([b.column(name) for b in batches]) for name in names}


def _int64s(array: pa.Array) -> np.ndarray:
    return array.cast(pa.int64()).to_numpy(zero_copy_only=False)


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

    def __init__(self, graph: TopologyGraph, index_capacity: int = 200_000) -> None:
        self.graph = graph
        self._names = Names()
        self._clients = SpanKeyIndex(index_capacity)
        """client/producer span id → caller code << 32 | peer code"""
        self._orphans = SpanKeyIndex(index_capacity)
        """parent span id of server/consumer spans whose parent was not seen yet → callee code"""
        self._batches = 0
        self._latest = 0

    def start(self, ctx: ConsumerContext) -> None:
        self.graph.load(ctx.state_dir / "topology.json")

    def stop(self, ctx: ConsumerContext) -> None:
        self.graph.save(ctx.state_dir / "topology.json")

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        self.consume_many([batch], ctx)

    def consume_many(self, batches: list[CommittedBatch], ctx: ConsumerContext) -> None:
        """Learn from several committed batches (in sequence order) in one pass."""
        # The logs and metrics tables are learned from together: each call has a fixed cost,
        # and a request of metric points fills up to five tables.
        spans: list[pa.RecordBatch] = []
        placement: list[tuple[pa.Array, pa.Array, pa.Array]] = []
        for batch in batches:
            for table, records in batch.tables.items():
                if not records.num_rows:
                    continue
                if table is Table.TRACES:
                    spans.append(records)
                time_column = "TimeUnix" if table.value.startswith("otel_metrics") else "Timestamp"
                placement.append(_placement_columns(records, time_column))
            self._latest = max(self._latest, latest_event_time(batch))
        if placement:
            self._learn_placement(placement)
        if spans:
            self._learn_spans(_concat(spans, _SPAN_COLUMNS))
        before = self._batches
        self._batches += len(batches)
        if self._batches // 200 != before // 200:
            self.graph.forget_before(self._latest - _FORGET_AFTER_NS)
            self.graph.save(ctx.state_dir / "topology.json")

    def _learn_placement(self, parts: list[tuple[pa.Array, pa.Array, pa.Array]]) -> None:
        # Placement is a property of the resource, and a batch holds few resources in long runs
        # (every item of one ResourceLogs/ResourceMetrics/ResourceSpans repeats it): find the
        # runs in each table (one buffer comparison when it is one resource throughout, the
        # usual case), then read the placement keys of one row per run, for all tables at once.
        firsts, services, latest = [], [], []
        for resource, names, times in parts:
            starts = resource_runs(resource, names)
            times = times.cast(pa.int64()).to_numpy(zero_copy_only=False)
            latest.append(np.maximum.reduceat(times, starts))
            if len(starts) == len(resource):
                firsts.append(resource)
                services.append(names)
            else:
                rows = pa.array(starts)
                firsts.append(resource.take(rows))
                services.append(names.take(rows))
        resource = firsts[0] if len(firsts) == 1 else pa.concat_arrays(firsts)
        columns = [
            pc.fill_null(service, _EMPTY).to_pylist()
            for service in (services[0] if len(services) == 1 else pa.concat_arrays(services),)
        ]
        columns += [
            pc.fill_null(pc.map_lookup(resource, _key(key), "last"), _EMPTY).to_pylist()
            for key, _ in PLACEMENT_KEYS
        ]
        placed: dict[tuple[str, str, str, str], int] = {}
        for *row, time in zip(*columns, np.concatenate(latest).tolist(), strict=True):
            key = tuple(row)
            if placed.get(key, -1) < time:  # type: ignore[call-overload]
                placed[key] = time  # type: ignore[index]
        for (service, host, pod, node), time in placed.items():
            if pod and node:
                self.graph.add(EdgeKind.RUNS_ON, ("pod", pod), ("host", node), time)
            if not service:
                continue
            for kind, name in (("host", host), ("pod", pod), ("node", node)):
                if name:
                    place = canonical((kind, name))
                    self.graph.add(EdgeKind.RUNS_ON, ("service", service), place, time)

    def _learn_spans(self, spans: dict[str, pa.Array]) -> None:
        services = spans["ServiceName"]
        attributes = spans["SpanAttributes"]
        if len(self._names) > _MAX_NAMES:
            self._names.clear()
            self._clients.clear()
            self._orphans.clear()
        names = self._names
        times = _int64s(spans["Timestamp"])
        latest = int(times.max())
        service_codes = names.encode(services)
        self._learn_models(service_codes, attributes, times)

        kinds = spans["SpanKind"]
        outbound = _bools(pc.is_in(kinds, _OUTBOUND_KINDS))
        inbound = _bools(pc.is_in(kinds, _INBOUND_KINDS))
        peer_codes = names.encode(_first_present(attributes, _PEER_KEYS))

        # Calls leaving a service: per-minute statistics per (caller, peer).
        calls = outbound & (peer_codes != names.code(""))
        if calls.any():
            errors = _bools(pc.equal(spans["StatusCode"], _ERROR))[calls].astype(np.int64)
            durations = _int64s(spans["Duration"])[calls]
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
        span_ids = span_keys(spans["SpanId"])
        parent_ids = span_keys(spans["ParentSpanId"])
        client_ids = span_ids[outbound]
        client_callers, client_peers = service_codes[outbound], peer_codes[outbound]
        self._clients.add(client_ids, (client_callers << 32) | client_peers)
        waiting = inbound & (parent_ids != 0)
        parents, callees = parent_ids[waiting], service_codes[waiting]
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
        self, service_codes: np.ndarray, attributes: pa.Array, times: np.ndarray
    ) -> None:
        ml_name = _lookup(attributes, "ml.model.name")
        llm = _first_present(
            attributes, ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
        )
        if ml_name.null_count < len(ml_name):
            ml_version = pc.fill_null(_lookup(attributes, "ml.model.version"), _EMPTY)
            model = pc.if_else(
                pc.equal(ml_version, _EMPTY),
                ml_name,
                pc.binary_join_element_wise(ml_name, ml_version, _COLON),
            )
            self._add_uses(service_codes, model, times, "model")
        if llm.null_count < len(llm):
            self._add_uses(service_codes, llm, times, "llm_model")

    def _add_uses(
        self, service_codes: np.ndarray, used: pa.Array, times: np.ndarray, kind: str
    ) -> None:
        present = _bools(used.is_valid())
        services = service_codes[present]
        models = self._names.encode(used.drop_null())
        order, starts, first = group_rows(services, models)
        latest = np.maximum.reduceat(times[present][order], starts)
        names = self._names.names
        for service, model, time in zip(
            services[first].tolist(), models[first].tolist(), latest.tolist(), strict=True
        ):
            self.graph.add(EdgeKind.USES, ("service", names[service]), (kind, names[model]), time)
