"""What AIOps and MLOps learnt survives a ``kill -9``: their consumers save their state now and
then (not per batch) and hold their offsets at the last save, so after a crash the batches since
are read again from the store and learnt again; the rows and alerts those batches produced
before the crash are not produced twice (``opstrata.statefile``).

One real server: a host metric learnt past its warm-up, log templates, a model's automatic
baseline. A save; then more of each — a spike on the metric whose alert fires and resolves, a
new log template, more model windows — and ``kill -9`` before the next save. After a restart on
the same data directory everything is there: the series is not warming up again and has every
point once, templates keep their ids, the model keeps its reference and windows, and no side row
or alert is duplicated.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import duckdb
import numpy as np
from opentelemetry._logs import SeverityNumber
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from opstrata.consumers import CommittedBatch, ConsumerContext
from opstrata.otlp.decoder import Encoding, decode_request
from opstrata.otlp.limits import DecodeLimits
from opstrata.plugins.aiops.config import AiopsConfig
from opstrata.plugins.aiops.consumers import LogsConsumer
from opstrata.schema import Signal
from opstrata.storage.duckdb_store import DuckDBStore
from tests.otelsdk import send_log_records
from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess
from tests.test_aiops import _gauge, _send_metrics

NS = 10**9
MINUTE = 60 * NS
T0 = (time.time_ns() - 8 * 3600 * NS) // MINUTE * MINUTE
"""Event time of the metric (300 minutes of points before the crash's batches)."""
T_MODEL = (time.time_ns() - 2 * 3600 * NS) // (30 * NS) * (30 * NS)
WARM = 300
STATES = {
    "aiops/metrics": "plugins/aiops/metrics.state",
    "aiops/spans": "plugins/aiops/spans.state",
    "aiops/logs": "plugins/aiops/logs.state",
    "mlops/models": "plugins/mlops/mlops-state.json",
}
HOST = {"service": "worker", "host.name": "db-9"}
_CONFIG = """
[plugins.aiops]
save_seconds = 6
[plugins.mlops]
window_seconds = 120
window_slots = 4
baseline_seconds = 60
save_seconds = 6
"""


def _saved_seq(path: Path) -> int:
    """The ``seq`` a state file says it includes (-1: none yet)."""
    try:
        header = path.read_bytes().split(b"\n", 1)[0]
    except FileNotFoundError:
        return -1
    return int(header.rsplit(b"=", 1)[1]) if header.startswith(b"opstrata-state") else -1


def _saved(data: Path) -> dict[str, int]:
    return {name: _saved_seq(data / path) for name, path in STATES.items()}


def _model_rows(start: int, end: int, first_id: int) -> list[dict]:
    rng = np.random.default_rng(first_id)
    times = np.linspace(start, end, 40, endpoint=False).astype(np.int64)
    return [
        {
            "timestamp": int(t),
            "body": "prediction",
            "attributes": {
                "ml.model.name": "scorer",
                "ml.model.version": "2",
                "ml.feature.amount": round(float(rng.lognormal(4, 0.5)), 2),
                "ml.feature.country": str(rng.choice(["DE", "FR", "US"])),
                "ml.prediction": int(rng.random() < 0.3),
                "ml.prediction.id": f"p{first_id + i}",
            },
        }
        for i, t in enumerate(times)
    ]


def _send_models(server: ServerProcess, start: int, slots: int, first_id: int) -> int:
    """One export per 30 s slot of event time; returns the next prediction id."""
    for slot in range(slots):
        at = start + slot * 30 * NS
        send_log_records(
            server, {"service.name": "scorer"}, _model_rows(at, at + 30 * NS, first_id)
        )
        first_id += 40
    return first_id


def _send_logs(server: ServerProcess, lines: list[str], at: int, service: str = "logsvc") -> None:
    records = [
        {"timestamp": at + i * NS, "body": line, "severity_number": SeverityNumber.INFO}
        for i, line in enumerate(lines)
    ]
    send_log_records(server, {"service.name": service}, records)


def _tick(server: ServerProcess, n: int) -> None:
    """Something new for every consumer (a metric point; a log record of another model): a
    save that is due happens on it. (A consumer whose batches change nothing has nothing to
    save: its file would not move.)"""
    _send_metrics(server, [_gauge("tests.tick", np.array([T0 + n * NS]), np.array([1.0]))])
    record = {
        "timestamp": T_MODEL + n * NS,
        "body": f"tick {n}",
        "attributes": {"ml.model.name": "ticker", "ml.feature.n": n},
    }
    send_log_records(server, {"service.name": "ticker"}, [record])


def _series(server: ServerProcess) -> list[dict]:
    found = server.api("/api/v1/aiops/series", name="system.cpu.utilization").json()
    return [r for r in found if r["entity"]["name"] == "db-9"]


def _templates(server: ServerProcess) -> dict[str, tuple[int, int]]:
    rows = server.api("/api/v1/aiops/log-templates", service="logsvc", limit=100).json()
    return {r["template"]: (r["template_id"], r["count"]) for r in rows}


def _model(server: ServerProcess) -> dict:
    models = server.api("/api/v1/mlops/models").json()
    return next((m for m in models if m["model"] == "scorer"), {})


def _host_alerts(server: ServerProcess) -> list[dict]:
    alerts = server.api("/api/v1/alerts", limit=1000, plugin="aiops").json()["alerts"]
    return [a for a in alerts if a["entity"] == {"kind": "host", "name": "db-9"}]


def _duplicates(data: Path) -> dict[str, list]:
    con = duckdb.connect(str(data / "opstrata.duckdb"), read_only=True)
    try:
        queries = {
            "aiops_series": 'SELECT "Family", "Key" FROM aiops_series GROUP BY ALL',
            "aiops_points": (
                'SELECT "Family", "SeriesId", "TimeUnix" FROM aiops_points GROUP BY ALL'
            ),
            "aiops_log_template_of": 'SELECT "_Seq", "Row" FROM aiops_log_template_of GROUP BY ALL',
            "mlops_drift": "SELECT model, version, start_unix_nano FROM mlops_drift GROUP BY ALL",
            "mlops_predictions": "SELECT prediction_id FROM mlops_predictions GROUP BY ALL",
        }
        return {
            table: con.sql(
                query.replace("GROUP BY ALL", "GROUP BY ALL HAVING count(*) > 1")
            ).fetchall()
            for table, query in queries.items()
        }
    finally:
        con.close()


def test_learnt_state_survives_kill_9_without_duplicated_rows_or_alerts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "opstrata.toml"
    config.write_text(_CONFIG)
    env = {"OPSTRATA_DISABLED_PLUGINS": json.dumps(["llmops"])}
    rng = np.random.default_rng(5)
    n = WARM + 24
    times = T0 + np.arange(n) * MINUTE
    values = 0.3 + rng.normal(0, 0.02, n)
    values[WARM : WARM + 4] = 0.97  # a spike, then 20 normal points: the alert resolves
    server = ServerProcess(data, env=env, config_file=config).start()
    try:
        # Learnt, then saved: the metric past its warm-up, two templates, the model's baseline.
        _send_metrics(
            server, [_gauge("system.cpu.utilization", times[:WARM], values[:WARM])], **HOST
        )
        _send_logs(server, [f"user {i} logged in from 10.0.0.{i}" for i in range(20)], T0)
        _send_logs(server, [f"cache miss for key k{i}" for i in range(10)], T0 + MINUTE)
        next_id = _send_models(server, T_MODEL, 5, 0)
        wait_for(lambda: [r for r in _series(server) if r["points"] == WARM], what="warm series")
        wait_for(lambda: _model(server).get("reference") == "baseline", what="model baseline")
        before_tick = _saved(data)
        n_tick = 0

        def saved_after_tick() -> bool:
            nonlocal n_tick
            n_tick += 1
            _tick(server, n_tick)
            time.sleep(1.0)
            now = _saved(data)
            return all(now[name] > before_tick[name] for name in STATES)

        wait_for(saved_after_tick, timeout=45, what="a save of every consumer")
        saved = _saved(data)
        saves = server.api("/api/v1/aiops/saves").json()
        saves["models"] = server.api("/api/v1/mlops/saves").json()["models"]
        assert sorted(saves) == ["logs", "metrics", "models", "spans"]
        assert all(s["saves"] >= 1 and s["save_failures"] == 0 for s in saves.values()), saves

        # Learnt after the save: a spike that alerts and resolves, a new template, more windows.
        _send_metrics(
            server, [_gauge("system.cpu.utilization", times[WARM:], values[WARM:])], **HOST
        )
        _send_logs(server, [f"disk quota exceeded on /var/{i}" for i in range(5)], T0 + 2 * MINUTE)
        next_id = _send_models(server, T_MODEL + 5 * 30 * NS, 4, next_id)
        wait_for(lambda: [r for r in _series(server) if r["points"] == n], what="every point")
        [alert] = wait_for(
            lambda: [a for a in _host_alerts(server) if a["status"] == "resolved"],
            what="the spike's alert resolved",
        )
        wait_for(lambda: len(_templates(server)) == 3, what="the third template")
        model = wait_for(lambda: (m := _model(server)) and m["rows"] == next_id and m, what="rows")
        templates = _templates(server)
        windows = server.api("/api/v1/mlops/models/scorer/drift", limit=1000).json()["windows"]
    finally:
        server.kill()
    # The premise: none of that is in the saved states (else nothing is read again).
    assert _saved(data) == saved

    server = ServerProcess(data, env=env, config_file=config).start()
    try:
        [row] = wait_for(
            lambda: [r for r in _series(server) if r["points"] == n], what="points learnt again"
        )
        assert row["points"] >= 30 and abs(row["expected"] - 0.3) < 0.05  # not warming up
        wait_for(lambda: _model(server).get("rows") == next_id, what="model rows learnt again")
        after = _model(server)
        for key in ("reference", "reference_rows", "features", "first_unix_nano", "last_unix_nano"):
            assert after[key] == model[key], key
        wait_for(lambda: len(_templates(server)) == 3, what="templates")
        assert _templates(server) == templates  # the same ids, each record counted once
        stored = server.api("/api/v1/mlops/models/scorer/drift", limit=1000).json()["windows"]
        assert len(stored) == len(windows)
        # Given again, the spike's batch raises nothing: the one alert stays the only one.
        time.sleep(1.0)
        assert [a["id"] for a in _host_alerts(server)] == [alert["id"]]
    finally:
        assert server.stop() == 0
    assert _duplicates(data) == {
        "aiops_series": [],
        "aiops_points": [],
        "aiops_log_template_of": [],
        "mlops_drift": [],
        "mlops_predictions": [],
    }


def _log_request(lines: list[str], at: int) -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="logsvc"))
    )
    records = resource_logs.scope_logs.add().log_records
    for i, line in enumerate(lines):
        record = records.add(time_unix_nano=at + i * NS, severity_number=9)
        record.body.string_value = line
    return request.SerializeToString()


def test_batches_given_again_are_learnt_but_not_written_twice(tmp_path: Path) -> None:
    """In process, the logs consumer and a real store: a state saved after batch 3, rows and the
    progress mark written up to batch 6, then a crash. Given batches 2-6 again (an offset file
    lagging the save), it skips 2-3 (in its state), learns 4-6 without writing them, and goes on
    with batch 7 as the consumer that never crashed would: the same template ids, every log
    record's template stored once."""
    requests = [
        [f"user {i} logged in from 10.0.0.{i}" for i in range(4)],
        [f"cache miss for key k{i}" for i in range(3)],
        [f"user {i} logged out" for i in range(3)],
        [f"disk quota exceeded on /var/{i}" for i in range(2)],
        [f"cache miss for key z{i}" for i in range(2)],
        [f"job {i} finished in {i} ms" for i in range(3)],
        [f"connection reset by peer 10.1.{i}.1" for i in range(2)],
    ]
    decoded = [
        decode_request(
            Signal.LOG_RECORDS,
            _log_request(lines, T0 + n * MINUTE),
            Encoding.PROTOBUF,
            DecodeLimits(),
        )
        for n, lines in enumerate(requests)
    ]
    store = DuckDBStore(tmp_path / "db")
    store.start()
    try:
        seqs = [asyncio.run(store.write(d.batches)) for d in decoded]
        batches = [CommittedBatch.of(s, d.batches) for s, d in zip(seqs, decoded, strict=True)]
        events: list = []
        state = tmp_path / "state"
        state.mkdir()
        ctx = ConsumerContext("aiops", "logs", state, lambda _, e: events.append(e), store, {})
        first = LogsConsumer(AiopsConfig(save_seconds=3600))
        first.start(ctx)
        for batch in batches[:3]:
            first.consume(batch, ctx)
        first.save_state()  # a periodic save
        for batch in batches[3:6]:
            first.consume(batch, ctx)
        assert first.durable_upto() == seqs[2]
        # kill -9: no stop(); a new consumer on the same state directory and store.
        again = LogsConsumer(AiopsConfig(save_seconds=3600))
        again.start(ctx)
        assert again.state_file is not None and again.state_file.loaded_seq == seqs[2]
        assert again.durable_upto() is None  # nothing learnt since its state was saved
        given = store.read_batches(seqs[0], seqs[5], frozenset(Signal), 64)
        assert [b.seq for b in given] == seqs[1:6]
        for batch in [*given, batches[6]]:
            again.consume(batch, ctx)
        assert again.durable_upto() == seqs[2]  # 4-7 learnt, not saved

        alone = LogsConsumer(AiopsConfig(save_seconds=3600))
        alone_ctx = ConsumerContext("aiops", "logs", tmp_path / "alone", lambda *_: None, None, {})
        (tmp_path / "alone").mkdir()
        alone.start(alone_ctx)
        for batch in batches:
            alone.consume(batch, alone_ctx)
        assert again.logs.miner.templates() == alone.logs.miner.templates()
        assert again.logs.miner.sizes == alone.logs.miner.sizes  # no record counted twice
        assert len(again.logs.miner.templates()) == 6

        cursor = store.reader()
        stored = cursor.execute(
            'SELECT "_Seq", "Row", "TemplateId" FROM aiops_log_template_of ORDER BY 1, 2'
        ).fetchall()
        assert len(stored) == sum(len(lines) for lines in requests)  # each record once
        assert len(set((s, r) for s, r, _ in stored)) == len(stored)
        texts = dict(
            cursor.execute('SELECT "TemplateId", "Template" FROM aiops_log_templates').fetchall()
        )
        assert texts == alone.logs.miner.templates()
        [[mark]] = cursor.execute(
            "SELECT seq FROM aiops_progress WHERE consumer = 'logs'"
        ).fetchall()
        assert mark == seqs[6]
    finally:
        store.shutdown()
