"""The topology consumer reads the resources of every table of a pass at once.

One combine and one run search over the rows of all tables (spans, logs, every metric table):
a run must never cross from one table into the next, or the span rows would take a service
from a log row before them. Held here: ``resource_runs`` starts a run at every table boundary,
and spans that arrive beside logs and metrics — whose last rows have the very resource and
service of the spans' first row, in a map type spelled differently — learn exactly what the
same spans learn alone.
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa

from opstrata.consumers import CommittedBatch, ConsumerContext
from opstrata.schema import STRING_MAP, Table
from opstrata.topology import EdgeKind, TopologyGraph
from opstrata.topology_consumer import TopologyConsumer
from opstrata.topology_runs import resource_runs
from tests.test_topology_runs import _maps, _rows
from tests.test_topology_spans import _batch, _calls, _calls_of, _scatter

# The same map, its fields named otherwise (as a table read back from a store may spell it).
_OTHER_MAP = pa.map_(pa.field("k", pa.string(), nullable=False), pa.field("v", pa.string()))


def test_resource_runs_start_at_every_break() -> None:
    rnd = random.Random(23)
    for trial in range(150):
        rows = _rows(rnd, rnd.randint(1, 150), nulls=trial % 2 == 1)
        resource, services = _maps(rows)
        breaks = sorted(rnd.sample(range(len(rows) + 1), rnd.randint(0, min(6, len(rows)))))
        plain = resource_runs(resource, services).tolist()
        starts = resource_runs(resource, services, np.array(breaks, np.int64)).tolist()
        inside = [b for b in breaks if 0 < b < len(rows)]
        assert starts == sorted(set(plain) | set(inside)), f"trial {trial}"
        for begin, end in zip(starts, [*starts[1:], len(rows)], strict=True):
            assert all(rows[row] == rows[begin] for row in range(begin, end))
            assert not [b for b in inside if begin < b < end], "a run crosses a break"


def _beside(span_rows: list[dict], table: Table, count: int, kind: pa.DataType) -> pa.RecordBatch:
    """Rows of another table whose last ones carry the resource and service of the first span
    (so that, read end to end, they would run on into the spans)."""
    first = span_rows[0]
    same = [("service.name", first["ServiceName"]), ("host.name", "h1")]
    other = [("service.name", "elsewhere"), ("host.name", "h2"), ("k8s.pod.name", "p9")]
    half = count // 2
    rows = [("elsewhere", other)] * half + [(first["ServiceName"], same)] * (count - half)
    time_column = "Timestamp" if table is Table.LOGS else "TimeUnix"
    return pa.record_batch(
        {
            time_column: pa.array([first["Timestamp"]] * count, pa.timestamp("ns")),
            "ServiceName": pa.array([service for service, _ in rows], pa.string()),
            "ResourceAttributes": pa.array([pairs for _, pairs in rows], STRING_MAP).cast(kind),
        }
    )


def test_spans_beside_other_tables_learn_what_they_learn_alone(tmp_path) -> None:
    rnd = random.Random(29)
    ctx = ConsumerContext("opstrata", "topology", tmp_path, lambda *_: None, None, {})
    for trial in range(8):
        dealt = _scatter(rnd, _calls(rnd, rnd.randint(20, 300)), rnd.randint(1, 12))
        alone = [_batch(seq + 1, rows) for seq, rows in enumerate(dealt)]
        mixed = []
        for batch, rows in zip(alone, dealt, strict=True):
            logs = _beside(rows, Table.LOGS, rnd.randint(1, 9), STRING_MAP)
            sums = _beside(rows, Table.METRICS_SUM, rnd.randint(1, 9), _OTHER_MAP)
            tables = [
                (Table.LOGS, logs),
                (Table.TRACES, batch.tables[Table.TRACES]),
                (Table.METRICS_SUM, sums),
            ]
            # Logs first in some batches and not in others: the traces' rows start anywhere.
            mixed.append(CommittedBatch.of(batch.seq, tables[rnd.randint(0, 1) :]))
        learnt = {}
        for name, batches in (("alone", alone), ("mixed", mixed)):
            consumer = TopologyConsumer(TopologyGraph())
            step = rnd.randint(1, 6)
            for start in range(0, len(batches), step):
                consumer.consume_many(batches[start : start + step], ctx)
            learnt[name] = consumer.graph
        calls = {k: v for k, v in _calls_of(learnt["alone"]).items() if k[0] is EdgeKind.CALLS}
        assert calls, "the traffic has calls between services"
        for kind in (EdgeKind.CALLS, EdgeKind.USES):
            assert {k: v for k, v in _calls_of(learnt["mixed"]).items() if k[0] is kind} == {
                k: v for k, v in _calls_of(learnt["alone"]).items() if k[0] is kind
            }, f"trial {trial}: {kind}"
        assert learnt["mixed"]._aliases == learnt["alone"]._aliases
        runs_on = {e[:3] for e in learnt["mixed"].edges() if e[0] is EdgeKind.RUNS_ON}
        assert {e[:3] for e in learnt["alone"].edges() if e[0] is EdgeKind.RUNS_ON} < runs_on
        assert (EdgeKind.RUNS_ON, ("service", "elsewhere"), ("pod", "p9")) in runs_on
