"""Alerts and incidents in DuckDB: one row each, the msgspec JSON of the model in ``Body`` and
the columns filters need beside it."""

from __future__ import annotations

import json
from collections.abc import Sequence

import duckdb
import msgspec

from opstrata.alerts import Alert, Incident
from opstrata.storage.duckdb_ddl import ALERTS_TABLE, INCIDENTS_TABLE

__all__ = ["AlertIncidentTables"]

_encode = msgspec.json.Encoder().encode
_alert = msgspec.json.Decoder(Alert).decode
_incident = msgspec.json.Decoder(Incident).decode


class AlertIncidentTables:
    """Reads and writes of the alert and incident tables, on a connection given per call."""

    @staticmethod
    def save_alerts(con: duckdb.DuckDBPyConnection, alerts: Sequence[Alert]) -> None:
        con.executemany(
            f"INSERT OR REPLACE INTO {ALERTS_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [a.id, a.key, a.plugin, a.layer.value, a.kind, a.status, a.incident_id,
                 a.first_seen_unix_nano, a.last_seen_unix_nano, _encode(a).decode()]
                for a in alerts
            ],
        )  # fmt: skip

    @staticmethod
    def save_incidents(con: duckdb.DuckDBPyConnection, incidents: Sequence[Incident]) -> None:
        con.executemany(
            f"INSERT OR REPLACE INTO {INCIDENTS_TABLE} VALUES (?, ?, ?, ?, ?, ?)",
            [
                [i.id, i.status.value, i.severity.value, i.opened_unix_nano,
                 i.updated_unix_nano, _encode(i).decode()]
                for i in incidents
            ],
        )  # fmt: skip

    @staticmethod
    def alerts(
        con: duckdb.DuckDBPyConnection,
        *,
        status: str | None = None,
        plugin: str | None = None,
        incident_id: str | None = None,
        ids: Sequence[str] | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Newest first (by id, which sorts by first-seen time); ``before`` is a cursor id."""
        where, params = [], []
        for column, value in (("Status", status), ("Plugin", plugin), ("IncidentId", incident_id)):
            if value is not None:
                where.append(f'"{column}" = ?')
                params.append(value)
        if ids is not None:
            where.append('list_contains(?, "Id")')
            params.append(list(ids))
        if before:
            where.append('"Id" < ?')
            params.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = con.sql(
            f'SELECT "Body" FROM {ALERTS_TABLE} {clause} ORDER BY "Id" DESC LIMIT ?',
            params=[*params, limit],
        ).fetchall()
        return [_alert(row[0]) for row in rows]

    @staticmethod
    def incidents(
        con: duckdb.DuckDBPyConnection,
        *,
        statuses: Sequence[str] | None = None,
        incident_id: str | None = None,
        service: str | None = None,
        layer: str | None = None,
        entity: tuple[str, str] | None = None,
        severity: str | None = None,
        opened_from: int | None = None,
        opened_to: int | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[Incident]:
        """Newest first; ``opened_from``/``opened_to`` bound the opening time (Unix ns)."""
        where: list[str] = []
        params: list[object] = []
        if statuses:
            where.append('list_contains(?, "Status")')
            params.append(list(statuses))
        for path, value in (("$.services", service), ("$.layers", layer)):
            if value is not None:
                where.append(
                    f"list_contains(CAST(json_extract(\"Body\", '{path}') AS VARCHAR[]), ?)"
                )
                params.append(value)
        if entity is not None:
            where.append("json_contains(json_extract(\"Body\", '$.entities'), ?)")
            params.append(json.dumps({"kind": entity[0], "name": entity[1]}))
        if severity is not None:
            where.append('"Severity" = ?')
            params.append(severity)
        if opened_from is not None:
            where.append('"Opened" >= ?')
            params.append(opened_from)
        if opened_to is not None:
            where.append('"Opened" < ?')
            params.append(opened_to)
        if incident_id is not None:
            where.append('"Id" = ?')
            params.append(incident_id)
        if before:
            where.append('"Id" < ?')
            params.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = con.sql(
            f'SELECT "Body" FROM {INCIDENTS_TABLE} {clause} ORDER BY "Id" DESC LIMIT ?',
            params=[*params, limit],
        ).fetchall()
        return [_incident(row[0]) for row in rows]

    @staticmethod
    def incident_logs(
        con: duckdb.DuckDBPyConnection,
        *,
        trace_ids: Sequence[str],
        services: Sequence[str],
        start_unix_nano: int,
        end_unix_nano: int,
        min_severity: int = 13,
        limit: int = 50,
    ) -> list[dict]:
        """Log lines that tell an incident's story: those of its exemplar traces, and those of
        its services at ``min_severity`` (13 = WARN) or above within the time range."""
        rows = con.sql(
            'SELECT epoch_ns("Timestamp"), "ServiceName", "SeverityText", "SeverityNumber", '
            '"Body", "TraceId", "SpanId" FROM otel_logs '
            'WHERE ("TraceId" <> \'\' AND list_contains(?, "TraceId")) OR ('
            'list_contains(?, "ServiceName") AND "SeverityNumber" >= ? '
            'AND "Timestamp" >= make_timestamp_ns(?) AND "Timestamp" < make_timestamp_ns(?)) '
            'ORDER BY "Timestamp" LIMIT ?',
            params=[list(trace_ids), list(services), min_severity, start_unix_nano,
                    end_unix_nano, limit],
        ).fetchall()  # fmt: skip
        keys = ("time_unix_nano", "service", "severity_text", "severity_number", "body",
                "trace_id", "span_id")  # fmt: skip
        return [dict(zip(keys, row, strict=True)) for row in rows]
