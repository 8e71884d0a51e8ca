"""The plugin's own tables in the store's DuckDB (names prefixed ``aiops_``).

- ``aiops_series``: every watched series (id, key, name, kind, entity, labels, resource);
- ``aiops_points``: every scored point (series id, event time, value, forecast, score, label);
- ``aiops_log_templates``: template id -> template text (updated as templates generalise);
- ``aiops_log_template_of``: the template of every log record, keyed by the record's commit
  sequence (``_Seq`` in ``otel_logs``), its row within that commit and its ``Timestamp``.

``otel_logs`` itself is not touched. To join, number the rows of each commit in insertion
order: ``row_number() OVER (PARTITION BY _Seq ORDER BY rowid) - 1 = Row`` over
``otel_logs_rows`` (see docs/aiops.md).
Inserts are Arrow batches through the consumer thread's own cursor (``store.reader()``).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pyarrow as pa

from opstrata.plugins.aiops.series import SeriesMeta

__all__ = ["SideTables"]

log = logging.getLogger(__name__)
_DDL_LOCK = threading.Lock()

DDL = (
    """CREATE TABLE IF NOT EXISTS aiops_series (
        "SeriesId" BIGINT, "Family" VARCHAR, "Key" VARCHAR, "Name" VARCHAR, "Kind" VARCHAR,
        "EntityKind" VARCHAR, "EntityName" VARCHAR, "Labels" VARCHAR, "Resource" VARCHAR,
        "Unit" VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS aiops_points (
        "Family" VARCHAR, "SeriesId" BIGINT, "TimeUnix" BIGINT, "Value" DOUBLE,
        "Expected" DOUBLE, "Score" DOUBLE, "Label" TINYINT)""",
    """CREATE TABLE IF NOT EXISTS aiops_log_templates (
        "TemplateId" BIGINT PRIMARY KEY, "Template" VARCHAR, "FirstSeenUnixNano" BIGINT)""",
    """CREATE TABLE IF NOT EXISTS aiops_log_template_of (
        "_Seq" UBIGINT, "Row" UINTEGER, "Timestamp" TIMESTAMP_NS, "ServiceName" VARCHAR,
        "TemplateId" BIGINT)""",
)


class SideTables:
    """Writes the plugin's tables through a store cursor; a store without DuckDB cursors
    (``reader()``) simply gets none."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.enabled = hasattr(store, "reader")
        if self.enabled:
            # One consumer thread creates the tables: concurrent CREATEs conflict in DuckDB.
            with _DDL_LOCK:
                cursor = store.reader()
                for statement in DDL:
                    cursor.execute(statement)

    def _insert(self, table: str, data: pa.Table, replace: bool = False) -> None:
        if not self.enabled or not data.num_rows:
            return
        cursor = self.store.reader()
        cursor.register("aiops_pending", data)
        try:
            verb = "INSERT OR REPLACE" if replace else "INSERT"
            cursor.execute(f"{verb} INTO {table} SELECT * FROM aiops_pending")
        finally:
            cursor.unregister("aiops_pending")

    def series(self, family: str, metas: list[SeriesMeta]) -> None:
        if not metas:
            return
        self._insert(
            "aiops_series",
            pa.table(
                {
                    "SeriesId": [m.id for m in metas],
                    "Family": [family] * len(metas),
                    "Key": [m.key for m in metas],
                    "Name": [m.name for m in metas],
                    "Kind": [m.kind for m in metas],
                    "EntityKind": [m.entity.kind for m in metas],
                    "EntityName": [m.entity.name for m in metas],
                    "Labels": [json.dumps(m.labels, sort_keys=True) for m in metas],
                    "Resource": [json.dumps(m.resource, sort_keys=True) for m in metas],
                    "Unit": [m.unit for m in metas],
                }
            ),
        )

    def points(self, family: str, batches: list[pa.RecordBatch]) -> None:
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        table = table.add_column(0, "Family", pa.array([family] * table.num_rows, pa.string()))
        self._insert("aiops_points", table)

    def templates(self, rows: list[tuple[int, str, int]]) -> None:
        if rows:
            ids, texts, first = zip(*rows, strict=True)
            self._insert(
                "aiops_log_templates",
                pa.table(
                    {
                        "TemplateId": pa.array(ids, pa.int64()),
                        "Template": list(texts),
                        "FirstSeenUnixNano": pa.array(first, pa.int64()),
                    }
                ),
                replace=True,
            )

    def template_of(
        self, seq: int, timestamps: pa.Array, services: pa.Array, template_ids: Any
    ) -> None:
        n = len(timestamps)
        self._insert(
            "aiops_log_template_of",
            pa.table(
                {
                    "_Seq": pa.array([seq] * n, pa.uint64()),
                    "Row": pa.array(range(n), pa.uint32()),
                    "Timestamp": timestamps.cast(pa.timestamp("ns")),
                    "ServiceName": services,
                    "TemplateId": pa.array(template_ids, pa.int64()),
                }
            ),
        )
