"""The service map: who calls whom, learned from spans over a time window.

Two kinds of edge:

* **span** — a span whose parent span belongs to another service: an edge from the parent's
  service to the child's. Calls, errors and p99 are those of the child spans (the callee's view).
* **peer** — a client or producer span with no child span at all, naming where it went in
  ``peer.service``, ``db.system`` (plus ``db.name`` when set) or ``server.address``: a call that
  leaves instrumented code. The target becomes a node of kind ``external`` or ``database``.
"""

from __future__ import annotations

import duckdb

from opstrata.schema import Table
from opstrata.storage.duckdb_ddl import physical
from opstrata.storage.duckdb_sql import Where
from opstrata.storage.query_types import MapEdge, MapNode, ServiceMap, TimeWindow

__all__ = ["service_map"]


def _attr(key: str) -> str:
    # Constant keys only: nothing from a request reaches this SQL.
    return f"list_filter(\"SpanAttributes\", lambda e: e.key = '{key}')[1].value"


# p99 is approx_quantile (t-digest, fixed-size state): exact quantile_cont keeps every value and
# cannot spill, so it failed under the 256MB duckdb_memory_limit (docs/api.md#services).
# Spans are joined on 64-bit hashes of their ids, not the hex strings: a hash join on integers
# is ~3x faster here. Edges still compare the trace ids, so a collision cannot make one; a leaf
# (a client span without children) could only be hidden by a 2^-64 collision.
_SQL = f"""
WITH c AS (
    SELECT hash("ParentSpanId") AS pk, "TraceId", "ServiceName", "Duration",
           "StatusCode" = 'Error' AS err
    FROM {physical(Table.TRACES)} WHERE {{where}} AND "ParentSpanId" <> ''
),
p AS (
    SELECT hash("SpanId") AS k, "TraceId", "ServiceName"
    FROM {physical(Table.TRACES)} WHERE {{where}}
),
span_edges AS (
    SELECT p."ServiceName" AS source, c."ServiceName" AS target, count(*) AS calls,
           count(*) FILTER (WHERE c.err) AS errors,
           approx_quantile(c."Duration"::DOUBLE, 0.99) AS p99,
           'span' AS via
    FROM c JOIN p ON c.pk = p.k
    WHERE c."TraceId" = p."TraceId" AND c."ServiceName" <> p."ServiceName"
    GROUP BY 1, 2
),
clients AS (
    SELECT hash("SpanId") AS k, "ServiceName", "Duration", "StatusCode" = 'Error' AS err,
           "SpanAttributes"
    FROM {physical(Table.TRACES)} WHERE {{where}} AND "SpanKind" IN ('Client', 'Producer')
),
leaves AS (
    SELECT "ServiceName", "Duration", err,
           {_attr("peer.service")} AS peer, {_attr("db.system")} AS db,
           {_attr("db.name")} AS db_name, {_attr("server.address")} AS address
    FROM clients ANTI JOIN c ON clients.k = c.pk
),
peer_edges AS (
    SELECT "ServiceName" AS source,
           CASE WHEN coalesce(peer, '') <> '' THEN peer
                WHEN coalesce(db, '') <> '' THEN
                    db || CASE WHEN coalesce(db_name, '') <> '' THEN '/' || db_name ELSE '' END
                ELSE address END AS target,
           count(*) AS calls, count(*) FILTER (WHERE err) AS errors,
           approx_quantile("Duration"::DOUBLE, 0.99) AS p99,
           CASE WHEN coalesce(peer, '') <> '' THEN 'peer.service'
                WHEN coalesce(db, '') <> '' THEN 'db.system'
                ELSE 'server.address' END AS via
    FROM leaves
    WHERE coalesce(peer, '') <> '' OR coalesce(db, '') <> '' OR coalesce(address, '') <> ''
    GROUP BY 1, 2, 6
)
SELECT source, target, calls, errors, p99, via FROM span_edges
UNION ALL
SELECT source, target, calls, errors, p99, via FROM peer_edges
ORDER BY source, target, via
"""

_NODES_SQL = f"""
SELECT "ServiceName",
       count(*) FILTER (WHERE "SpanKind" IN ('Server', 'Consumer') OR "ParentSpanId" = ''),
       count(*) FILTER (WHERE ("SpanKind" IN ('Server', 'Consumer') OR "ParentSpanId" = '')
                        AND "StatusCode" = 'Error')
FROM {physical(Table.TRACES)} WHERE {{where}} GROUP BY 1 ORDER BY 1
"""


def service_map(con: duckdb.DuckDBPyConnection, window: TimeWindow) -> ServiceMap:
    where = Where().window("Timestamp", window.start, window.end)
    sql = _SQL.format(where=where.sql())
    edges_rows = con.execute(sql, where.params * 3).fetchall()
    node_rows = con.execute(_NODES_SQL.format(where=where.sql()), where.params).fetchall()
    nodes = {
        name: MapNode(name, "service", requests, errors) for name, requests, errors in node_rows
    }
    edges = []
    for source, target, calls, errors, p99, via in edges_rows:
        edges.append(
            MapEdge(source, target, calls, errors, errors / calls if calls else 0.0, p99, via)
        )
        if target not in nodes:
            kind = "database" if via == "db.system" else "external"
            nodes[target] = MapNode(target, kind, 0, 0)
    for edge in edges:
        if edge.via != "span" and nodes[edge.target].kind != "service":
            node = nodes[edge.target]
            nodes[edge.target] = MapNode(
                node.name, node.kind, node.requests + edge.calls, node.errors + edge.errors
            )
    return ServiceMap(window.start, window.end, sorted(nodes.values(), key=lambda n: n.name), edges)
