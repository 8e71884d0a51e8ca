"""Small builders shared by the DuckDB query modules: every value goes in as a ``?`` parameter."""

from __future__ import annotations

import re

__all__ = ["Where", "attr_value_sql", "decode_cursor", "encode_cursor", "ts_param"]

_CURSOR = re.compile(r"^(-?\d{1,20})\.([0-9a-f]{1,32})$")


def ts_param() -> str:
    """A ``TIMESTAMP_NS`` from an integer parameter (Unix nanoseconds)."""
    return "make_timestamp_ns(CAST(? AS BIGINT))"


def attr_value_sql(column: str) -> str:
    """The value of the attribute whose key is the next parameter ('' when absent)."""
    return f"coalesce(list_filter({column}, lambda e: e.key = ?)[1].value, '')"


class Where:
    """A conjunction of SQL conditions with their parameters, in order."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[object] = []

    def add(self, condition: str, *params: object) -> Where:
        self.parts.append(condition)
        self.params.extend(params)
        return self

    def window(self, column: str, start: int | None, end: int | None) -> Where:
        if start is not None:
            self.add(f'"{column}" >= {ts_param()}', start)
        if end is not None:
            self.add(f'"{column}" < {ts_param()}', end)
        return self

    def attributes(self, column: str, pairs: dict[str, str]) -> Where:
        for key, value in pairs.items():
            # Attribute lists are stored as lists of {key, value} structs (duckdb_ddl).
            self.add(f"list_contains(\"{column}\", {{'key': ?, 'value': ?}})", key, value)
        return self

    def resources(self, pairs: dict[str, str]) -> Where:
        """Rows whose resource has every pair: a semi-join on the few matching ``ResourceId``s
        (resources are stored once, duckdb_resources), for queries of the physical tables."""
        if pairs:
            inner = Where().attributes("ResourceAttributes", pairs)
            self.add(
                f'"ResourceId" IN (SELECT "ResourceId" FROM otel_resources WHERE {inner.sql()})',
                *inner.params,
            )
        return self

    def sql(self) -> str:
        return " AND ".join(self.parts) if self.parts else "TRUE"


def encode_cursor(time_ns: int, tiebreak: str) -> str:
    return f"{time_ns}.{tiebreak}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """``(time_ns, tiebreak)``; ``ValueError`` for anything that is not a cursor we made."""
    match = _CURSOR.match(cursor)
    if not match:
        raise ValueError("cursor is not a next_cursor value")
    return int(match.group(1)), match.group(2)
