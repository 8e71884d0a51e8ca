"""Alerts and incidents in DuckDB: one row each, the msgspec JSON of the model in ``Body`` and
the columns filters need beside it."""

from __future__ import annotations

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
        before: str | None = None,
        limit: int = 100,
    ) -> list[Incident]:
        where, params = [], []
        if statuses:
            where.append('list_contains(?, "Status")')
            params.append(list(statuses))
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
