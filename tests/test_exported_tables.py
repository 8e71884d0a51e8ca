"""Exported metric tables concatenated in C (``otlp/exported_tables.py``) against pyarrow.

Seeded requests with every metric type, exemplars, optional (nullable) fields and several
resources are decoded twice: imported one by one and concatenated by pyarrow (the reference),
and kept exported and concatenated by ``_wire.concat_tables``. Both must give equal, valid
batches; the exported tables stay usable after the concatenation and are freed by
``release_exported``.
"""

from __future__ import annotations

import pickle
import random

import pyarrow as pa
import pytest

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_metrics import decode_metric_bytes
from opstrata.otlp.exported_tables import (
    ExportedTable,
    concat_exported,
    layout_of,
    release_exported,
)
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import TABLES
from tests.test_decode_logs_metrics import column
from tests.test_wire_decoder_metrics import random_request


def _decoded(seed: int, exported: bool) -> list:
    rnd = random.Random(seed)
    renderer = AttributeRenderer(DecodeLimits())
    return [
        decode_metric_bytes(random_request(rnd).SerializeToString(), renderer, exported)
        for _ in range(12)
    ]


def _by_table(requests: list) -> dict:
    tables: dict = {}
    for request in requests:
        for table, batch in request.batches:
            tables.setdefault(table, []).append(batch)
    return tables


def _assert_equal(got: pa.RecordBatch, want: pa.RecordBatch) -> None:
    got.validate(full=True)
    assert got.schema == want.schema
    if not got.equals(want):
        for name in want.schema.names:  # NaN is not equal to itself: compare reprs
            assert repr(column(got, name)) == repr(column(want, name)), name


@pytest.mark.parametrize("seed", range(8))
def test_concatenation_equals_pyarrow(seed: int) -> None:
    want = {
        table: pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
        for table, batches in _by_table(_decoded(seed, exported=False)).items()
    }
    got_requests = _decoded(seed, exported=True)
    got = _by_table(got_requests)
    assert got.keys() == want.keys()
    for table, tables in got.items():
        assert all(isinstance(t, ExportedTable) for t in tables)
        _assert_equal(concat_exported(tables), want[table])
        # Left as they were: once more, a part of them, and each one imported on its own.
        _assert_equal(concat_exported(tables), want[table])
        if len(tables) > 1:
            _assert_equal(concat_exported(tables[1:]), want[table].slice(tables[0].num_rows))
        offset = 0
        for exported in tables:
            _assert_equal(exported.to_batch(), want[table].slice(offset, exported.num_rows))
            offset += exported.num_rows
        release_exported(tables)  # the imported ones are skipped


def test_released_tables_free_once_and_refuse_a_concatenation() -> None:
    tables = [t for r in _decoded(3, exported=True) for _, t in r.batches]
    first = [t for t in tables if t.schema == tables[0].schema]
    release_exported(first)
    release_exported(first)  # nothing more to free
    with pytest.raises(ValueError):
        concat_exported(first)


def test_a_layout_of_another_shape_is_refused() -> None:
    tables = [t for r in _decoded(5, exported=True) for _, t in r.batches]
    schemas = {t.schema for t in tables}
    assert len(schemas) > 1
    one, other = next(t for t in tables), next(t for t in tables if t.schema != tables[0].schema)
    with pytest.raises(ValueError):
        concat_exported([one, other])
    bad = ExportedTable(one.capsule, one.address, one.schema, layout_of(one.schema)[:-1])
    with pytest.raises(ValueError):
        concat_exported([bad])
    # Both still whole after the refusals.
    assert one.to_batch().num_rows == one.num_rows and other.to_batch().validate(full=True) is None


def test_exported_tables_pickle_as_batches() -> None:
    requests = _decoded(7, exported=True)
    for table, exported in requests[0].batches:
        batch = pickle.loads(pickle.dumps(exported))
        assert isinstance(batch, pa.RecordBatch) and batch.schema == TABLES[table]
        assert batch.equals(exported.to_batch())
