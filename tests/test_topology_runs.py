"""Placement learned once per run of one resource, held to a row-by-row reading.

``resource_runs`` must never put two rows that differ in one run (a run's first row stands for
all of them); it may cut a run where it cannot tell (nulls), which learns the same placement.
The consumer is fed many resources — alternating row by row, across batches, in every metric
table and in logs and spans of one group — and must learn what a dict of each row's resource
says, with the latest time of each placement. Also here: the span-id reader's row selection,
``TopologyGraph.add_many`` and the event time a committed batch carries.
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa

from opstrata.consumers import CommittedBatch, ConsumerContext, latest_event_time
from opstrata.schema import STRING_MAP, Table
from opstrata.topology import EdgeKind, TopologyGraph
from opstrata.topology_consumer import TopologyConsumer
from opstrata.topology_runs import resource_runs
from opstrata.topology_spans import span_keys

_T0 = 1_760_000_000_000_000_000
_KEYS = ["host.name", "k8s.pod.name", "k8s.node.name", "process.pid", "a", "ab"]
_VALUES = ["a", "b", "", "ab", "c", "bc"]


def _resource(rnd: random.Random, nulls: bool) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = [
        (rnd.choice(_KEYS), rnd.choice(_VALUES)) for _ in range(rnd.randint(0, 4))
    ]
    if nulls and rnd.random() < 0.05:
        pairs.append(("host.name", None))
    return pairs


def _rows(rnd: random.Random, count: int, nulls: bool) -> list[tuple[str | None, list | None]]:
    """Rows of (service, resource pairs): runs of one resource, and alternating ones; with
    ``nulls``, some null services, resources and values."""
    # A few resources, so that the same one comes back with another service, or later.
    resources = [_resource(rnd, nulls) for _ in range(3)] + ([None] if nulls else [])
    rows: list[tuple[str | None, list | None]] = []
    while len(rows) < count:
        service = rnd.choice(["svc1", "svc2", "", None] if nulls else ["svc1", "svc2", ""])
        resource = rnd.choice(resources) if rnd.random() < 0.7 else _resource(rnd, nulls)
        rows += [(service, resource)] * rnd.choice([1, 1, 2, 5, 30])
    return rows[:count]


def _maps(rows: list[tuple[str | None, list | None]]) -> tuple[pa.MapArray, pa.Array]:
    resource = pa.array([pairs for _, pairs in rows], STRING_MAP)
    return resource, pa.array([service for service, _ in rows], pa.string())


def test_resource_runs_never_join_rows_that_differ() -> None:
    rnd = random.Random(5)
    for trial in range(200):
        rows = _rows(rnd, rnd.randint(1, 120), nulls=trial % 2 == 1)
        resource, services = _maps(rows)
        lead = rnd.randint(0, len(rows) - 1)
        for maps, names, part in (
            (resource, services, rows),
            # Sliced arrays: offsets that do not start at 0.
            (resource.slice(lead), services.slice(lead), rows[lead:]),
        ):
            starts = resource_runs(maps, names).tolist()
            assert starts[:1] == ([0] if part else [])
            assert starts == sorted(set(starts))
            for begin, end in zip(starts, [*starts[1:], len(part)], strict=True):
                assert all(part[row] == part[begin] for row in range(begin, end))
            # Without nulls, every row that differs from the one before starts a run, and only
            # those: one lookup per run, as many runs as there are.
            if all(
                service is not None and pairs is not None and None not in dict(pairs).values()
                for service, pairs in part
            ):
                want = [row for row in range(len(part)) if row == 0 or part[row] != part[row - 1]]
                assert starts == want


def test_resource_runs_tell_apart_strings_cut_differently() -> None:
    rows = [
        ("s", [("ab", "c")]),
        ("s", [("a", "bc")]),  # the same bytes end to end
        ("s", [("a", "b"), ("c", "")]),
        ("s", [("a", "bc"), ("", "")]),
        ("s", [("a", "bc"), ("", "")]),
        ("s", [("a", "b"), ("", "c")]),
        ("t", [("a", "b"), ("", "c")]),
    ]
    starts = resource_runs(*_maps(rows)).tolist()
    assert starts == [0, 1, 2, 3, 5, 6]


def _table(table: Table, rows: list, times: list[int]) -> pa.RecordBatch:
    time_column = "Timestamp" if table in (Table.LOGS, Table.TRACES) else "TimeUnix"
    columns = {
        time_column: pa.array(times, pa.timestamp("ns")),
        "ServiceName": pa.array([service for service, _ in rows], pa.string()),
        "ResourceAttributes": pa.array([pairs for _, pairs in rows], STRING_MAP),
    }
    if table is Table.TRACES:
        n = len(rows)
        columns |= {
            "SpanId": pa.array([f"{i + 1:016x}" for i in range(n)], pa.string()),
            "ParentSpanId": pa.array([""] * n, pa.string()),
            "SpanKind": pa.array(["Internal"] * n, pa.string()),
            "SpanAttributes": pa.array([[]] * n, STRING_MAP),
            "Duration": pa.array([1] * n, pa.int64()),
            "StatusCode": pa.array(["Unset"] * n, pa.string()),
        }
    return pa.record_batch(columns)


def _placement(rows: list, times: list[int], into: dict) -> None:
    """The row-by-row reading: a dict of each row's resource (the last of a repeated key);
    ``into`` gets each (service, host, pod, node) with its latest time."""
    for (service, pairs), time in zip(rows, times, strict=True):
        found = dict(pairs or [])
        place = (service or "", *(found.get(key) or "" for key in _KEYS[:3]))
        into[place] = max(time, into.get(place, time))


def _learn(graph: TopologyGraph, placed: dict) -> None:
    """What one pass learns: each placement's edges, at that placement's latest time."""
    for (service, host, pod, node), time in placed.items():
        if pod and node:
            graph.add(EdgeKind.RUNS_ON, ("pod", pod), ("host", node), time)
        for kind, name in (("host", host), ("pod", pod), ("host", node)):
            if service and name:
                graph.add(EdgeKind.RUNS_ON, ("service", service), (kind, name), time)


def test_placement_from_many_resources_in_every_table_matches_a_row_by_row_reading(
    tmp_path,
) -> None:
    rnd = random.Random(17)
    ctx = ConsumerContext("opstrata", "topology", tmp_path, lambda *_: None, None, {})
    kinds = [Table.LOGS, Table.TRACES, Table.METRICS_GAUGE, Table.METRICS_SUM]
    kinds += [Table.METRICS_HISTOGRAM]
    for trial in range(6):
        consumer, expected = TopologyConsumer(TopologyGraph()), TopologyGraph()
        step = rnd.randint(1, 15)
        for first in range(1, rnd.randint(2, 40), step):
            committed, placed = [], {}
            for seq in range(first, first + step):
                tables = []
                for table in rnd.sample(kinds, rnd.randint(1, 3)):
                    rows = _rows(rnd, rnd.randint(1, 60), nulls=trial % 3 == 2)
                    times = [_T0 + rnd.randrange(10**12) for _ in rows]
                    records = _table(table, rows, times)
                    if rnd.random() < 0.2:  # the same columns in another order
                        records = records.select(records.schema.names[::-1])
                    tables.append((table, records))
                    _placement(rows, times, placed)
                committed.append(CommittedBatch.of(seq, tables))
            consumer.consume_many(committed, ctx)
            _learn(expected, placed)
        assert sorted(consumer.graph.edges()) == sorted(expected.edges()), f"trial {trial}"


def test_span_keys_of_selected_rows_are_those_rows_keys() -> None:
    rnd = random.Random(9)
    for ids in (
        [rnd.randbytes(8).hex() for _ in range(200)],
        [rnd.choice([rnd.randbytes(8).hex(), "", "xyz", "g" * 16, None]) for _ in range(200)],
    ):
        array = pa.array(ids, pa.string())
        for source in (array, array.slice(37, 120)):
            mask = np.array([rnd.random() < 0.4 for _ in range(len(source))])
            assert span_keys(source, mask).tolist() == span_keys(source)[mask].tolist()
            assert span_keys(source, np.zeros(len(source), bool)).tolist() == []


def test_add_many_is_add_one_by_one() -> None:
    rnd = random.Random(3)
    one, many = TopologyGraph(), TopologyGraph()
    nodes = [("service", "a"), ("service", "b"), ("host", "h"), ("node", "h"), ("pod", "")]
    nodes.append(("pod", "p"))
    edges = [(rnd.choice(nodes), rnd.choice(nodes), rnd.randrange(100)) for _ in range(500)]
    for source, target, time in edges:
        one.add(EdgeKind.RUNS_ON, source, target, time)
    for start in range(0, 500, 60):
        many.add_many(EdgeKind.RUNS_ON, edges[start : start + 60])
    assert sorted(one.edges()) == sorted(many.edges())


def test_a_committed_batch_carries_its_event_time() -> None:
    times = [_T0 + 5, _T0 + 1, _T0 + 9]
    gauge = _table(Table.METRICS_GAUGE, [("s", [])] * 3, times)
    logs = _table(Table.LOGS, [("s", [])] * 2, [_T0 + 20, _T0 + 30])
    batch = CommittedBatch.of(1, [(Table.METRICS_GAUGE, gauge), (Table.LOGS, logs)])
    assert batch.latest == latest_event_time(batch) == _T0 + 30
    # Made without ``of``, the time is worked out when asked.
    bare = CommittedBatch(2, batch.signal, batch.tables)
    assert bare.latest == -1 and latest_event_time(bare) == _T0 + 30
    assert CommittedBatch.of(3, []).latest == 0
