"""Builders for the Arrow columns that are not plain lists: maps and lists of structs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from opstrata.schema import STRING_MAP

__all__ = ["StringMapColumn", "hex_or_empty", "list_column"]


def hex_or_empty(raw: bytes) -> str:
    """An id as lower-case hex, and the all-zero id (which means "absent") as ``""``."""
    return raw.hex() if raw.strip(b"\x00") else ""


class StringMapColumn:
    """A ``map<string, string>`` column grown one row at a time from flat key/value lists."""

    __slots__ = ("keys", "offsets", "values")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.values: list[str] = []
        self.offsets: list[int] = [0]

    def close_row(self) -> None:
        """End the current row: it holds every pair appended since the previous close."""
        self.offsets.append(len(self.keys))

    def extend_row(self, keys: list[str], values: list[str]) -> None:
        """Append a whole row of pairs that was rendered once and is shared by many rows."""
        self.keys.extend(keys)
        self.values.extend(values)
        self.offsets.append(len(self.keys))

    def to_arrow(self) -> pa.Array:
        return pa.MapArray.from_arrays(
            pa.array(self.offsets, pa.int32()),
            pa.array(self.keys, pa.string()),
            pa.array(self.values, pa.string()),
            type=STRING_MAP,
        )


def list_column(offsets: list[int], child: pa.Array, list_type: pa.DataType) -> pa.Array:
    """A list column from row offsets into an already built child array."""
    return pa.ListArray.from_arrays(
        pa.array(np.asarray(offsets, dtype=np.int32)), child, type=list_type
    )
