"""The column-by-column span renderer of trace by id (``opstrata.api.trace_render``) gives the
same spans as the row-by-row converter, from the store's stored layout and from MAPs alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from opstrata.api.convert import spans_from_arrow, tree_order
from opstrata.api.models import TraceOut
from opstrata.api.trace_render import spans_from_columns, trace_body
from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.decode_traces import decode_trace_bytes
from opstrata.otlp.limits import DecodeLimits
from opstrata.storage.duckdb_queries import DuckDBQueries
from opstrata.storage.duckdb_store import DuckDBStore
from tests.querysetup import BASE, Services, checkout_trace


def test_columns_render_the_same_spans_as_rows(tmp_path: Path) -> None:
    svc = Services("frontend", "checkout", "payments")
    checkout_trace(svc, BASE, payment_fails=True)
    checkout_trace(svc, BASE + 60 * 10**9, payment_fails=False)
    spans = svc.finished()
    decoded = decode_trace_bytes(
        encode_spans(spans).SerializeToString(), AttributeRenderer(DecodeLimits())
    )
    store = DuckDBStore(tmp_path / "data")
    store.start()
    try:
        asyncio.run(store.write(decoded.batches))
        queries = DuckDBQueries(store)
        ids = sorted({format(s.context.trace_id, "032x") for s in spans})
        expected = spans_from_arrow(queries.traces(ids))
        assert len(expected) == 14
        assert any(s.events for s in expected) and any(s.links for s in expected)
        assert any(s.status_code == "Error" for s in expected)
        stored = queries.trace_rows(ids)
        assert "_Seq" not in stored.column_names
        assert spans_from_columns(stored) == expected  # attributes as {key, value} lists
        assert spans_from_columns(queries.traces(ids)) == expected  # attributes as MAPs
        # A slice (offsets not starting at zero) of the stored layout still lines up.
        assert spans_from_columns(stored.slice(3, 5)) == expected[3:8]

        one = ids[0]
        body = msgspec.json.decode(trace_body(one, queries.trace_rows([one])), type=TraceOut)
        mine = tree_order([s for s in expected if s.trace_id == one])
        assert body == TraceOut(trace_id=one, span_count=7, spans=mine)
        names = [s.name for s in body.spans]
        assert names[:3] == ["GET /checkout", "POST checkout", "POST /orders"]
    finally:
        store.shutdown()
