"""Column-wise helpers: series keys and attribute lookups straight from Arrow columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["int_times", "map_as_dict", "map_to_text", "text_column"]

_KV = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))


def map_to_text(column: pa.Array) -> pa.Array:
    """Each ``map<string,string>`` as ``k=v,k=v`` text (in the order sent), vectorised."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lists = column.view(_KV) if pa.types.is_map(column.type) else column
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    flat = lists.flatten()
    pairs = pc.binary_join_element_wise(
        pc.fill_null(flat.field("key"), ""), pc.fill_null(flat.field("value"), ""), "="
    )
    offsets = np.zeros(lengths.size + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    rebuilt = pa.ListArray.from_arrays(pa.array(offsets), pairs)
    return pc.binary_join(rebuilt, ",")


def text_column(records: pa.RecordBatch, name: str) -> pa.Array:
    return pc.fill_null(records.column(name), "")


def map_as_dict(column: pa.Array, row: int) -> dict[str, str]:
    value = column[row].as_py()
    return {str(k): "" if v is None else str(v) for k, v in (value or [])}


def int_times(records: pa.RecordBatch, name: str) -> np.ndarray:
    return records.column(name).cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
