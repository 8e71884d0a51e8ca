"""While MLOps' writes fail, the rows of the batches learnt wait in memory (``PendingRows``),
up to a row cap and a byte cap; past either, the oldest batches' rows go, whole — predictions
and labels alike — and the newest are kept."""

from __future__ import annotations

import pyarrow as pa

from opstrata.plugins.mlops.pending import PendingRows


def _ids(tag: str, n: int) -> pa.Table:
    return pa.table({"id": [f"{tag}{i}" for i in range(n)]})


def _kept(rows: PendingRows) -> list[str]:
    return [i for t in rows.predictions + rows.labels for i in t.column("id").to_pylist()]


def test_the_row_cap_drops_the_oldest_batches_whole() -> None:
    rows = PendingRows(max_rows=10)
    rows.add(1, [], [_ids("old-label-", 6)], [])  # oldest: labels only
    rows.add(2, [_ids("new-pred-", 6)], [], [])  # newest: predictions only
    assert sum(t.num_rows for t in rows.predictions) == 6  # the newest kept
    assert rows.labels == [] and rows.dropped == 6 and rows.rows == 6
    assert rows.batches == 2 and rows.seq == 2  # the mark still moves past batch 1

    rows.add(3, [_ids("p3-", 2)], [_ids("l3-", 2)], [])
    assert _kept(rows) == [f"new-pred-{i}" for i in range(6)] + ["p3-0", "p3-1", "l3-0", "l3-1"]
    rows.add(4, [_ids("p4-", 1)], [], [])  # 11 > 10: batch 2 goes, whole
    assert _kept(rows) == ["p3-0", "p3-1", "p4-0", "l3-0", "l3-1"]
    assert rows.dropped == 12 and rows.rows == 5

    rows.add(5, [_ids("huge-", 30)], [], [])  # alone past the cap: the newest stays
    assert rows.rows == 30 and rows.dropped == 17 and len(rows.predictions) == 1
    rows.clear()
    assert not rows and rows.rows == 0 and rows.nbytes == 0 and rows.dropped == 17


def test_the_byte_cap_drops_the_oldest_batches_too() -> None:
    wide = pa.table({"id": ["x" * 1000] * 4})  # about 4 kB in 4 rows
    rows = PendingRows(max_rows=1_000_000, max_bytes=10_000)
    rows.add(1, [wide], [], [])
    rows.add(2, [], [wide], [])
    assert rows.dropped == 0 and rows.nbytes == 2 * wide.nbytes
    rows.add(3, [wide], [], [])  # past 10 kB: batch 1's rows go
    assert rows.dropped == 4 and rows.rows == 8 and rows.nbytes == 2 * wide.nbytes
    assert len(rows.predictions) == 1 and len(rows.labels) == 1
