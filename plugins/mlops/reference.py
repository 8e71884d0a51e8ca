"""References built outside the live stream: an uploaded dataset, or a stored time range.

Either way the reference is kept as sketches (the same ones the live windows use), never as the
rows themselves.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.records import Extractor, ModelRows
from opstrata.plugins.mlops.sketch import CategoricalSketch, NumericSketch, Sketch
from opstrata.schema import TABLES, Table

__all__ = ["from_dataset", "from_rows", "read_dataset", "stored_batches"]


def read_dataset(body: bytes, fmt: str) -> pa.Table:
    """A CSV (header row) or Parquet file as an Arrow table; ``ValueError`` when unreadable."""
    try:
        if fmt == "parquet" or body[:4] == b"PAR1":
            return pq.read_table(io.BytesIO(body))
        return pa_csv.read_csv(io.BytesIO(body))
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"cannot read the dataset as {fmt or 'csv'}: {exc}") from exc


def from_dataset(
    table: pa.Table,
    config: MLOpsConfig,
    predictions: Iterable[str] = (),
    categorical: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> dict[str, tuple[str, Sketch]]:
    """Sketches of every column: numbers are numerical unless named in ``categorical``;
    columns named in ``predictions`` have the prediction role; ``ignore`` is skipped."""
    predictions, categorical, skip = set(predictions), set(categorical), set(ignore)
    missing = (predictions | categorical) - set(table.column_names)
    if missing:
        raise ValueError(f"columns not in the dataset: {sorted(missing)}")
    out: dict[str, tuple[str, Sketch]] = {}
    for name in table.column_names:
        if name in skip:
            continue
        column = table.column(name).combine_chunks()
        role = "prediction" if name in predictions else "feature"
        numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        numeric = numeric or pa.types.is_boolean(column.type)
        sketch: Sketch
        if numeric and name not in categorical:
            sketch = NumericSketch(config.reference_centroids)
            sketch.update(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
        else:
            sketch = CategoricalSketch(config.max_categories)
            sketch.update(_categories(column))
        out[name] = (role, sketch)
    return out


def _categories(column: pa.Array) -> pa.Array:
    if pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False)
        whole = np.isfinite(values) & (values == np.round(values))
        return pa.array(
            [
                str(int(v)) if w else (None if np.isnan(v) else str(v))
                for v, w in zip(values, whole, strict=True)
            ]
        )
    return column.cast(pa.string())


def from_rows(
    rows: Iterable[ModelRows], model: str, version: str, config: MLOpsConfig
) -> dict[str, tuple[str, Sketch]]:
    """Sketches of the model's columns over the given rows (all versions when ``version`` "")."""
    out: dict[str, tuple[str, Sketch]] = {}
    for entry in rows:
        if entry.model != model or (version and entry.version != version):
            continue
        for name, column in entry.columns.items():
            if name not in out:
                sketch: Sketch = (
                    NumericSketch(config.reference_centroids)
                    if column.kind == "numerical"
                    else CategoricalSketch(config.max_categories)
                )
                out[name] = (column.role, sketch)
            sketch = out[name][1]
            if sketch.kind == column.kind:
                sketch.update(column.values)  # type: ignore[arg-type]
    return out


def stored_batches(
    store: object, start_ns: int, end_ns: int
) -> Iterable[tuple[Table, pa.RecordBatch]]:
    """Spans and log records stored with ``start_ns <= Timestamp < end_ns``, as consumers see
    them (maps as maps), read in record batches so memory stays bounded."""
    from opstrata.storage.duckdb_ddl import select_list

    reader = getattr(store, "reader", None)
    if reader is None:
        raise ValueError("references from a time range need the DuckDB store")
    cursor = reader()
    for table in (Table.TRACES, Table.LOGS):
        result = cursor.execute(
            f'SELECT {select_list(table)} FROM {table} WHERE "Timestamp" >= make_timestamp_ns(?) '
            'AND "Timestamp" < make_timestamp_ns(?)',
            [start_ns, end_ns],
        )
        for batch in result.to_arrow_reader(50_000):
            yield table, pa.Table.from_batches([batch]).cast(TABLES[table]).to_batches()[0]


def extract_stored(
    store: object, start_ns: int, end_ns: int, extractor: Extractor
) -> Iterable[ModelRows]:
    for table, batch in stored_batches(store, start_ns, end_ns):
        yield from extractor.extract(table, batch).models
