"""``llmops_calls`` as ``llmops_call_rows`` joined with ``llmops_dims``: ids given column-wise,
kept across writes and restarts, never leaked by a rolled-back write; an earlier release's
``llmops_calls`` table moved into them; the view reads as the table did. Against a real DuckDB
store (the writer's own transactions)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from opstrata.plugins.llmops.dims import (
    DIM_COLUMNS,
    DIMS_TABLE,
    ROWS_TABLE,
    Dims,
    _group_rows_arrow,
    dims_of,
    group_rows,
)
from opstrata.plugins.llmops.recognise import CALLS
from opstrata.plugins.llmops.rollup import DAY_NS, HOUR_NS, partial_rows, sketch_rows
from opstrata.plugins.llmops.rollup import DIMENSIONS as ROLLUP_DIMENSIONS
from opstrata.plugins.llmops.span_parts import MESSAGES
from opstrata.plugins.llmops.store import CALLS_TABLE, cursor_of, ensure_tables
from opstrata.plugins.llmops.writer import CallWriter
from opstrata.storage.duckdb_store import DuckDBStore

T0 = 1_760_000_000 * 10**9


def _calls(rng: np.random.Generator, n: int, first: int = 0, values: int = 3) -> pa.Table:
    """``n`` calls whose dimension columns take ``values`` values each (with NULL and "" among
    them), numbered from ``first`` in their span ids."""
    data: dict[str, pa.Array] = {}
    for field in CALLS:
        if field.name in DIM_COLUMNS:
            choices = np.array(
                [None, "", *(f"{field.name}-{i}" for i in range(values - 2))], dtype=object
            )
            data[field.name] = pa.array(choices[rng.integers(0, values, n)], pa.string())
        elif field.type == pa.string():
            data[field.name] = pa.array([f"{field.name}-{first + i}" for i in range(n)])
        elif field.type == pa.int64():
            data[field.name] = pa.array(rng.integers(0, 1000, n), mask=rng.random(n) < 0.1)
        elif field.type == pa.bool_():
            data[field.name] = pa.array(rng.random(n) < 0.1)
        else:
            data[field.name] = pa.array(T0 + np.arange(first, first + n), field.type)
    return pa.table(data, schema=CALLS)


def _stored(store: DuckDBStore) -> pa.Table:
    return (
        cursor_of(store)
        .sql(f'SELECT * EXCLUDE ("MessageBlock") FROM {CALLS_TABLE} ORDER BY "SpanId"')
        .to_arrow_table()
    )


def _sorted(calls: pa.Table) -> pa.Table:
    return calls.sort_by("SpanId")


def _dims(store: DuckDBStore) -> dict[int, tuple]:
    rows = cursor_of(store).execute(f"SELECT * FROM {DIMS_TABLE}").fetchall()
    return {row[0]: row[1:] for row in rows}


def _writer(store: DuckDBStore) -> CallWriter:
    return CallWriter(store, "calls", flush_seconds=3600)


def test_the_view_has_the_columns_readers_always_had(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path)
    store.start()
    try:
        described = cursor_of(store).execute(f"DESCRIBE {CALLS_TABLE}").fetchall()
        names = [row[0] for row in described]
        assert names == [*CALLS.names, "MessageBlock"]
        types = dict((row[0], row[1]) for row in described)
        assert types["Timestamp"] == "TIMESTAMP_NS" and types["MessageBlock"] == "BIGINT"
        assert all(types[c] == "VARCHAR" for c in DIM_COLUMNS)
        stored = [row[0] for row in cursor_of(store).execute(f"DESCRIBE {ROWS_TABLE}").fetchall()]
        assert "DimId" in stored and not set(DIM_COLUMNS) & set(stored)
    finally:
        store.shutdown()


def test_ids_stay_the_same_across_writes_and_restarts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    first, second, third = _calls(rng, 500), _calls(rng, 400, 500), _calls(rng, 300, 900)
    store = DuckDBStore(tmp_path)
    store.start()
    try:
        writer = _writer(store)
        writer.add(1, first, None)
        writer.flush()
        after_one = _dims(store)
        writer.add(2, second, None)
        writer.flush()
        after_two = _dims(store)
        assert _stored(store).equals(_sorted(pa.concat_tables([first, second])))
    finally:
        store.shutdown()
    # Every combination once, with the id it got first.
    assert len(set(after_two.values())) == len(after_two)
    assert {k: after_two[k] for k in after_one} == after_one
    store = DuckDBStore(tmp_path)
    store.start()
    try:
        writer = _writer(store)
        writer.add(3, third, None)
        writer.flush()
        after_restart = _dims(store)
        assert _stored(store).equals(_sorted(pa.concat_tables([first, second, third])))
    finally:
        store.shutdown()
    assert {k: after_restart[k] for k in after_two} == after_two
    assert len(set(after_restart.values())) == len(after_restart)


def test_a_write_that_rolls_back_leaks_no_id(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    known, fresh = _calls(rng, 300), _calls(rng, 200, 300, values=6)
    store = DuckDBStore(tmp_path)
    store.start()
    try:
        writer = _writer(store)
        writer.add(1, known, None)
        writer.flush()
        before = _dims(store)
        # Another writer's committed row takes the next id: this write's new combinations
        # conflict with it, and the whole transaction rolls back.
        taken = max(before) + 1
        cursor = cursor_of(store)
        cursor.execute(
            f'INSERT INTO {DIMS_TABLE} ("DimId", "Model") VALUES (?, \'elsewhere\')', [taken]
        )
        remembered = len(dims_of(store, cursor))
        writer.add(2, fresh, None)
        with pytest.raises(duckdb.ConstraintException):
            writer.flush()
        assert len(dims_of(store, cursor)) == remembered  # nothing of the failed write kept
        assert _stored(store).equals(_sorted(known))
        assert writer.stored_seq == 1
        writer.flush()  # the same calls again: new ids, past the ones given out and lost
        after = _dims(store)
        assert _stored(store).equals(_sorted(pa.concat_tables([known, fresh])))
        assert writer.stored_seq == 2
    finally:
        store.shutdown()
    assert after[taken] == (None, None, None, None, "elsewhere", *[None] * 8)
    new = set(after) - set(before) - {taken}
    assert new and min(new) > taken + 1  # the lost ids were not given again
    used = cursor_of_file(tmp_path).execute(f'SELECT DISTINCT "DimId" FROM {ROWS_TABLE}')
    assert {row[0] for row in used.fetchall()} <= set(before) | new


def cursor_of_file(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(next(tmp_path.glob("*.duckdb"))))


def test_many_distinct_values_give_each_combination_one_id() -> None:
    # 13 columns of 40 values: the combined key would pass 2**62 and is renumbered on the way.
    calls = _calls(np.random.default_rng(3), 5000, values=40)
    dims = Dims()
    ids, new, pending, _ = dims.assign(calls)
    assert new is not None and new.num_rows == len(pending) == len(set(ids.to_pylist()))
    combos = {row["DimId"]: tuple(row[c] for c in DIM_COLUMNS) for row in new.to_pylist()}
    picked = calls.select(list(DIM_COLUMNS)).to_pylist()
    assert [combos[i] for i in ids.to_pylist()] == [tuple(r.values()) for r in picked]
    dims.remember(pending)
    again, none_new, nothing, _ = dims.assign(calls.slice(100, 900))
    assert none_new is None and not nothing
    assert again.to_pylist() == ids.to_pylist()[100:1000]


def test_an_earlier_releases_calls_table_is_moved_into_rows_and_dims(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    old = _calls(rng, 3000, values=5)
    blocks = pa.array(np.arange(3000) // 1000, pa.int64(), mask=rng.random(3000) < 0.2)
    old = old.append_column("MessageBlock", blocks)
    shuffled = old.take(pa.array(rng.permutation(3000)))  # written in no particular order
    path = tmp_path / "opstrata.duckdb"
    con = duckdb.connect(str(path))
    columns = ", ".join(f'"{f.name}"' for f in CALLS)
    con.execute(f"CREATE TABLE {CALLS_TABLE} AS SELECT {columns} FROM shuffled")
    con.execute(f'ALTER TABLE {CALLS_TABLE} ADD COLUMN "MessageBlock" BIGINT')
    con.execute(f'UPDATE {CALLS_TABLE} c SET "MessageBlock" = s."MessageBlock" FROM shuffled s '
                'WHERE c."SpanId" = s."SpanId"')  # fmt: skip
    con.close()

    store = DuckDBStore(tmp_path)
    store.start()
    try:
        cursor = cursor_of(store)
        kinds = dict(
            cursor.execute(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_name IN (?, ?, ?)",
                [CALLS_TABLE, ROWS_TABLE, DIMS_TABLE],
            ).fetchall()
        )
        assert kinds == {CALLS_TABLE: "VIEW", ROWS_TABLE: "BASE TABLE", DIMS_TABLE: "BASE TABLE"}
        # Every column as it was, the calls in the order they were written.
        moved = cursor.sql(f"SELECT * FROM {CALLS_TABLE}").to_arrow_table()
        assert moved.sort_by("SpanId").equals(old.sort_by("SpanId"))
        order = cursor.execute(f'SELECT "SpanId" FROM {ROWS_TABLE} ORDER BY rowid').fetchall()
        assert [row[0] for row in order] == shuffled.column("SpanId").to_pylist()
        distinct = old.select(list(DIM_COLUMNS)).group_by(list(DIM_COLUMNS)).aggregate([])
        assert len(_dims(store)) == distinct.num_rows
        # A writer after the move gives the moved combinations their ids, and new ones new ids.
        before = _dims(store)
        writer = _writer(store)
        more = _calls(rng, 500, 3000, values=6)
        writer.add(1, more, None)
        writer.flush()
        after = _dims(store)
        assert {k: after[k] for k in before} == before
        known = set(before.values())
        for dim_id, combo in after.items():
            assert (dim_id in before) == (combo in known)
        stored = cursor.sql(f'SELECT * EXCLUDE ("MessageBlock") FROM {CALLS_TABLE}')
        assert (
            stored.to_arrow_table()
            .sort_by("SpanId")
            .equals(_sorted(pa.concat_tables([old.drop_columns(["MessageBlock"]), more])))
        )
    finally:
        store.shutdown()


def test_a_move_that_fails_leaves_the_table_as_it_was() -> None:
    con = duckdb.connect()
    # A table from before MessageBlock, with a DimId-like column name already taken in the
    # way: the move's CREATE of llmops_dims fails, so nothing may be left half-done.
    con.execute(f'CREATE TABLE {CALLS_TABLE} ("Timestamp" TIMESTAMP_NS, "Model" VARCHAR)')
    con.execute(f"INSERT INTO {CALLS_TABLE} VALUES ('2025-01-01', 'm')")
    con.execute(f'CREATE VIEW {DIMS_TABLE} AS SELECT 1 AS "DimId"')

    class Store:  # ensure_tables only remembers which stores it has seen
        pass

    with pytest.raises(duckdb.Error):
        ensure_tables(Store(), con)
    kind = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_name = ?", [CALLS_TABLE]
    ).fetchall()
    assert kind == [("BASE TABLE",)]
    assert con.execute(f'SELECT "Model" FROM {CALLS_TABLE}').fetchall() == [("m",)]
    names = [row[0] for row in con.execute(f"DESCRIBE {CALLS_TABLE}").fetchall()]
    assert names == ["Timestamp", "Model"]  # its ALTERs rolled back with the rest


def test_messages_still_name_their_block_through_the_view(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    calls = _calls(rng, 50)
    n = calls.num_rows
    messages = {f.name: pa.nulls(n, f.type) for f in MESSAGES}
    messages.update(
        Timestamp=calls.column("Timestamp"),
        TraceId=calls.column("TraceId"),
        SpanId=calls.column("SpanId"),
        Source=pa.array(["span"] * n),
        Messages=pa.array(['{"input": [{"role": "user", "content": "hi"}]}'] * n),
    )
    store = DuckDBStore(tmp_path)
    store.start()
    try:
        writer = _writer(store)
        writer.add(1, calls, pa.table(messages, schema=MESSAGES))
        writer.flush()
        blocks = cursor_of(store).execute(f'SELECT DISTINCT "MessageBlock" FROM {CALLS_TABLE}')
        assert blocks.fetchall() == [(1,)]
        stored = _stored(store)
        assert pc.all(pc.equal(stored.column("SpanId"), _sorted(calls).column("SpanId"))).as_py()
    finally:
        store.shutdown()


def _partition(first: np.ndarray, group: np.ndarray) -> list[list[int]]:
    """The rows of each group, groups ordered by their first row: equal for equal partitions
    whatever their numbering."""
    rows: dict[int, list[int]] = {}
    for row, g in enumerate(group.tolist()):
        rows.setdefault(g, []).append(row)
    assert sorted(min(r) for r in rows.values()) == sorted(
        min(rows[group[f]]) for f in first.tolist()
    )
    return sorted(rows.values())


@pytest.mark.parametrize("values", [1, 3, 40, 3000])
def test_combinations_found_in_c_are_those_found_in_arrow(values: int) -> None:
    rng = np.random.default_rng(values)
    calls = _calls(rng, 6000, values=max(values, 2))
    if values == 1:  # every column one value: one combination
        calls = pa.concat_tables([calls.slice(0, 1)] * 500)
    for part in (calls, calls.slice(777, 4000)):  # and arrays that start past their buffers
        found = group_rows(part, DIM_COLUMNS)
        first, group = found.first, found.group
        assert len(first) == len(set(group.tolist()))
        assert [group[f] for f in first.tolist()] == list(range(len(first)))
        want = _group_rows_arrow(part, DIM_COLUMNS)
        assert _partition(first, group) == _partition(want.first, want.group)
        # Rows of one group hold the same texts (NULL apart from ""), and those are its values.
        picked = part.select(list(DIM_COLUMNS)).to_pylist()
        for row, g in enumerate(group.tolist()):
            assert picked[row] == picked[first[g]]
        assert found.values == [tuple(picked[f].values()) for f in first.tolist()]
        assert sorted(found.values, key=repr) == sorted(want.values, key=repr)
        assert group_rows(part, DIM_COLUMNS, values=False).values == []


def test_rollup_rows_from_the_writers_combinations_are_those_of_the_calls() -> None:
    calls = _calls(np.random.default_rng(7), 4000, values=4)
    times = pa.array(T0 + np.sort(np.random.default_rng(8).integers(0, 3 * DAY_NS, 4000)),
                     pa.timestamp("ns"))  # fmt: skip
    calls = calls.set_column(0, "Timestamp", times)
    groups = Dims().assign(calls).groups
    key = [(k, "ascending") for k in ("Grain", "Start", *ROLLUP_DIMENSIONS)]
    mine = partial_rows(calls, groups).sort_by(key)
    assert mine.equals(partial_rows(calls).sort_by(key))
    # Against Arrow's group-by of the same sums.
    per_call = pa.table(
        {
            "Hour": pc.multiply(pc.divide(times.cast(pa.int64()), HOUR_NS), HOUR_NS),
            **{d: calls.column(d) for d in ROLLUP_DIMENSIONS},
            "InputTokens": calls.column("InputTokens"),
            "CostPicoUsd": calls.column("CostPicoUsd"),
        }
    )
    want = per_call.group_by(["Hour", *ROLLUP_DIMENSIONS]).aggregate(
        [("InputTokens", "sum"), ([], "count_all"), ("CostPicoUsd", "count")]
    )
    hours = mine.filter(pc.equal(mine.column("Grain"), HOUR_NS))
    got = {
        (r["Start"], *(r[d] for d in ROLLUP_DIMENSIONS)): (
            r["InputTokens"],
            r["Calls"],
            r["Calls"] - r["UnpricedCalls"],
        )
        for r in hours.to_pylist()
    }
    assert got == {
        (r["Hour"], *(r[d] for d in ROLLUP_DIMENSIONS)): (
            r["InputTokens_sum"] or 0,
            r["count_all"],
            r["CostPicoUsd_count"],
        )
        for r in want.to_pylist()
    }
    days = mine.filter(pc.equal(mine.column("Grain"), DAY_NS))
    assert pc.sum(days.column("Calls")).as_py() == calls.num_rows
    skey = [("Start", "ascending"), ("Model", "ascending")]
    assert sketch_rows(calls, groups).sort_by(skey).equals(sketch_rows(calls).sort_by(skey))


def test_a_span_twice_in_one_write_names_the_first_ones_block() -> None:
    from opstrata.plugins.llmops import blocks

    n = blocks.BLOCK_ROWS + 904
    trace_ids = [f"{i:032x}" for i in range(n)]
    span_ids = [f"{i:016x}" for i in range(n)]
    trace_ids[-1], span_ids[-1] = trace_ids[0], span_ids[0]  # sent again, a block later
    calls = pa.table({"TraceId": trace_ids, "SpanId": span_ids})
    messages = {f.name: pa.nulls(n, f.type) for f in MESSAGES}
    messages.update(
        Timestamp=pa.array(np.arange(n), pa.timestamp("ns")),
        TraceId=pa.array(trace_ids),
        SpanId=pa.array(span_ids),
        Source=pa.array(["span"] * n),
        Messages=pa.array(["{}"] * n),
    )
    packed, block_of = blocks.pack(pa.table(messages, schema=MESSAGES), calls, 7)
    assert packed.num_rows == 2
    found = block_of.to_pylist()
    assert found[0] == found[-1] == 7 and found[-2] == 8


def test_the_last_stored_batch_is_known_after_a_restart_whether_it_had_calls_or_not(
    tmp_path: Path,
) -> None:
    """A write with calls records its batch in the calls' rows, one without in
    ``llmops_progress``: a restarted writer knows the later of the two."""
    rng = np.random.default_rng(9)

    def restarted() -> tuple[DuckDBStore, CallWriter]:
        store = DuckDBStore(tmp_path)
        store.start()
        return store, _writer(store)

    store, writer = restarted()
    try:
        assert writer.stored_seq is None
        writer.add(3, _calls(rng, 20), None)
        writer.flush()
        progress = cursor_of(store).execute("SELECT count(*) FROM llmops_progress").fetchall()
        assert progress == [(0,)]  # recorded by the calls alone
    finally:
        store.shutdown()
    store, writer = restarted()
    try:
        assert writer.stored_seq == 3
        writer.add(5, None, None)  # a batch without calls: its own progress row
        writer.flush()
        writer.add(6, None, None)  # and an update of that row
        writer.flush()
    finally:
        store.shutdown()
    store, writer = restarted()
    try:
        assert writer.stored_seq == 6
        writer.add(9, _calls(rng, 10, 20), None)
        writer.flush()
    finally:
        store.shutdown()
    store, writer = restarted()
    try:
        assert writer.stored_seq == 9
        assert _stored(store).num_rows == 30
    finally:
        store.shutdown()


def test_call_rows_made_before_a_column_was_added_get_it_at_start(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path)
    store.start()
    try:
        writer = _writer(store)
        writer.add(1, _calls(np.random.default_rng(10), 30), None)
        writer.flush()
        cursor_of(store).execute(f'ALTER TABLE {ROWS_TABLE} DROP COLUMN "Seq"')  # as made before
    finally:
        store.shutdown()
    store = DuckDBStore(tmp_path)
    store.start()
    try:
        writer = _writer(store)
        assert writer.stored_seq is None  # that release kept it in llmops_progress
        writer.add(2, _calls(np.random.default_rng(11), 30, 30), None)
        writer.flush()
        seqs = cursor_of(store).execute(f'SELECT DISTINCT "Seq" FROM {ROWS_TABLE} ORDER BY 1')
        assert seqs.fetchall() == [(2,), (None,)]
        assert _stored(store).num_rows == 60
    finally:
        store.shutdown()


def test_the_c_grouping_refuses_sizes_its_buffers_do_not_hold() -> None:
    """A row count or offset so large that its byte size would wrap past the length checks is
    refused, not read past the buffers (the plugin always passes the table's own sizes)."""
    from opstrata.plugins.llmops import _dimkeys

    groups, firsts = np.empty(1, np.int64), np.empty(1, np.int64)
    for rows, offset in ((1 << 61, 0), (1, (1 << 62) - 1), (2, 0)):
        with pytest.raises(ValueError):
            _dimkeys.group([(None, b"\0" * 8, None, offset)], rows, groups, firsts)


def test_a_move_into_tables_that_are_already_there_keeps_their_rows_and_ids(
    tmp_path: Path,
) -> None:
    """The old table found beside new tables that already hold rows (made by hand, or by a
    release that was rolled back to this one): the combinations already numbered keep their
    ids, the others are numbered after them, rows go in by column name whatever the table's
    column order, and every call reads back through the view."""
    rng = np.random.default_rng(8)
    old = _calls(rng, 1200, values=4)
    earlier = _calls(rng, 1, 5000, values=4)  # one call already in the new tables
    path = tmp_path / "opstrata.duckdb"
    con = duckdb.connect(str(path))
    columns = ", ".join(f'"{f.name}"' for f in CALLS)
    con.execute(f"CREATE TABLE {CALLS_TABLE} AS SELECT {columns} FROM old")
    dims = ", ".join(f'"{c}"' for c in DIM_COLUMNS)
    typed = ", ".join(f'"{c}" VARCHAR' for c in DIM_COLUMNS)
    con.execute(f'CREATE TABLE {DIMS_TABLE} ("DimId" BIGINT PRIMARY KEY, {typed})')
    con.execute(f"INSERT INTO {DIMS_TABLE} SELECT 7, {dims} FROM earlier")
    row_columns = [f.name for f in CALLS if f.name not in DIM_COLUMNS]
    picked = ", ".join(f'"{c}"' for c in reversed(row_columns))  # another column order
    con.execute(f'CREATE TABLE {ROWS_TABLE} AS SELECT 7 AS "DimId", {picked} FROM earlier')
    con.close()

    store = DuckDBStore(tmp_path)
    store.start()
    try:
        ids = _dims(store)
        assert ids[7] == tuple(earlier.select(list(DIM_COLUMNS)).to_pylist()[0].values())
        assert len(set(ids.values())) == len(ids)  # one id a combination
        stored = cursor_of(store).sql(f'SELECT * EXCLUDE ("MessageBlock") FROM {CALLS_TABLE}')
        assert (
            stored.to_arrow_table()
            .sort_by("SpanId")
            .equals(_sorted(pa.concat_tables([old, earlier])))
        )
    finally:
        store.shutdown()
