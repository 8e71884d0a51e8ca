"""MLOps plugin end to end: a real server, telemetry from the real OpenTelemetry SDK.

One server (module scope) with short windows (60 s window of two 30 s slots, 60 s baseline):

- a fraud model reports through the ``ml.*`` attribute convention on log records: a baseline
  minute, then a minute where two features and the score shifted and one feature did not;
- a tiny installed plugin raises an infrastructure alert on the model server's host;
- an iris classifier reports exactly as BentoML's OTLP monitor does (a dict logged through the
  SDK's ``LoggingHandler``), against a reference uploaded as CSV; labels come later, by
  prediction id, through the API and as log records.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from scipy import stats

from tests.otelsdk import log_exporter, make_spans, send_log_records, span_exporter
from tests.serverproc import ServerProcess

SLOT = 30 * 10**9
RESOURCE = {
    "service.name": "fraud-api",
    "host.name": "gpu-node-7",
    "k8s.pod.name": "fraud-api-6c9f",
    "k8s.node.name": "gpu-node-7",
}
PROBE = '''"""A tiny installed plugin: a log record with ``probe.infra_alert`` becomes an
infrastructure alert on the host of its resource, at the record's event time."""

import pyarrow as pa
import pyarrow.compute as pc

from opstrata import (
    AlertEvent,
    CommittedBatch,
    Consumer,
    ConsumerContext,
    Entity,
    Evidence,
    Layer,
    Severity,
    Signal,
    Table,
    hookimpl,
)


class InfraProbe(Consumer):
    name = "infra-probe"
    signals = frozenset({Signal.LOG_RECORDS})

    def consume(self, batch: CommittedBatch, ctx: ConsumerContext) -> None:
        logs = batch.tables[Table.LOGS]
        kinds = pc.map_lookup(logs.column("LogAttributes"), pa.scalar("probe.infra_alert"), "first")
        times = logs.column("Timestamp").cast(pa.int64())
        for row in range(logs.num_rows):
            if not kinds[row].is_valid:
                continue
            resource = dict(logs.column("ResourceAttributes")[row].as_py())
            host = resource.get("host.name", "")
            ctx.emit(
                AlertEvent(
                    time_unix_nano=times[row].as_py(),
                    kind=kinds[row].as_py(),
                    layer=Layer.AIOPS,
                    entity=Entity("host", host),
                    summary=f"{kinds[row].as_py()} on {host}",
                    severity=Severity.ERROR,
                    score=0.9,
                    resource=resource,
                    evidence=Evidence(series="gpu_temperature_celsius", observed=97.0, upper=85.0),
                )
            )


@hookimpl
def opstrata_register_consumers(register) -> None:
    register(InfraProbe())
'''


def _probe_site(root: Path) -> Path:
    """Install the probe plugin as a distribution with an ``opstrata`` entry point."""
    site = root / "site"
    dist = site / "opstrata_mlops_probe-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (site / "opstrata_mlops_probe.py").write_text(PROBE)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: opstrata-mlops-probe\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text("[opstrata]\nprobe = opstrata_mlops_probe\n")
    return site


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("mlops")
    config = root / "opstrata.toml"
    config.write_text(
        # A fixed reference: the baseline minute (these tests judge windows against it).
        "[plugins.mlops]\nwindow_seconds = 60\nwindow_slots = 2\nbaseline_seconds = 60\n"
        "reference_seconds = 60\nmin_rows = 30\nmin_labels = 5\n"
    )
    site = _probe_site(root)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = ServerProcess(root / "data", env=env, config_file=config).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _poll(fetch, until, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if until(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _api_once_seen(server: ServerProcess, path: str, **params) -> object | None:
    """The model's endpoint, or None while its first rows are still on their way (404)."""
    response = httpx.get(server.api_base + path, params=params, timeout=10)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()


def _api(server: ServerProcess, path: str, **params) -> object:
    response = httpx.get(server.api_base + path, params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# -- the fraud model: attribute convention ------------------------------------------------------

T0 = (time.time_ns() - 30 * 60 * 10**9) // SLOT * SLOT
rng = np.random.default_rng(7)
N = 600
BASE = {
    "amount": rng.normal(100, 10, N),
    "age": rng.normal(40, 5, N),
    "country": rng.choice(["US", "DE", "FR"], N, p=[0.5, 0.3, 0.2]),
    "score": rng.beta(2, 8, N),
}
CURRENT = {
    "amount": rng.normal(112, 10, N),  # shifted by 1.2 sd
    "age": rng.normal(40, 5, N),  # not shifted
    "country": rng.choice(["US", "DE", "FR"], N, p=[0.25, 0.3, 0.45]),  # shifted
    "score": rng.beta(4, 6, N),  # predictions shifted
}


def _fraud_rows(data: dict[str, np.ndarray], start: int, step: int, first_id: int) -> list[dict]:
    rows = []
    for i in range(len(data["amount"])):
        score = float(data["score"][i])
        rows.append(
            {
                "timestamp": start + i * step,
                "body": "prediction",
                "attributes": {
                    "ml.model.name": "fraud",
                    "ml.model.version": "v3",
                    "ml.feature.amount": float(data["amount"][i]),
                    "ml.feature.age": float(data["age"][i]),
                    "ml.feature.country": str(data["country"][i]),
                    "ml.prediction": "fraud" if score > 0.5 else "ok",
                    "ml.prediction.score": score,
                    "ml.prediction.id": f"f-{first_id + i}",
                },
            }
        )
    return rows


@pytest.fixture(scope="module")
def fraud(server: ServerProcess) -> dict:
    step = 60 * 10**9 // N
    send_log_records(server, RESOURCE, _fraud_rows(BASE, T0, step, 0))
    send_log_records(server, RESOURCE, _fraud_rows(CURRENT, T0 + 60 * 10**9, step, N))
    # The next slot starts: the window [T0+60 s, T0+120 s) closes and is evaluated.
    tail = {k: v[:40] for k, v in CURRENT.items()}
    send_log_records(server, RESOURCE, _fraud_rows(tail, T0 + 121 * 10**9, 10**8, 2 * N))
    report = _poll(
        lambda: _api_once_seen(server, "/api/v1/mlops/models/fraud/drift"),
        lambda r: (
            r is not None and any(w["end_unix_nano"] == T0 + 120 * 10**9 for w in r["windows"])
        ),
    )
    assert report is not None, "the fraud model's logs never arrived"
    window = next(w for w in report["windows"] if w["end_unix_nano"] == T0 + 120 * 10**9)
    return {f["feature"]: f for f in window["features"]} | {"_window": window}


def test_models_lists_the_model_version_with_its_columns_and_server(server, fraud) -> None:
    models = {m["entity"]: m for m in _api(server, "/api/v1/mlops/models")}
    model = models["fraud:v3"]
    assert model["reference"] == "baseline" and model["reference_rows"] == N
    assert model["features"] == {
        "age": "feature/numerical",
        "amount": "feature/numerical",
        "country": "feature/categorical",
        "prediction": "prediction/categorical",
        "prediction.score": "prediction/numerical",
    }
    assert model["resource"]["host.name"] == "gpu-node-7"
    assert 0 < model["state_bytes"] < 5 * 16 * 1024


def test_shifted_features_are_flagged_and_the_unshifted_one_is_not(fraud) -> None:
    assert fraud["amount"]["drifted"] and fraud["amount"]["test"] == "ks"
    assert fraud["country"]["drifted"] and fraud["country"]["test"] == "chisquare"
    assert not fraud["age"]["drifted"]
    assert fraud["age"]["p_value"] > 0.05
    window = fraud["_window"]
    assert window["dataset_drift"] and window["drift_share"] == pytest.approx(2 / 3)
    assert sorted(window["drifted_features"]) == ["amount", "country"]
    assert window["prediction_drift"] and fraud["prediction.score"]["drifted"]


def test_sketch_statistics_agree_with_scipy_on_the_raw_samples(fraud) -> None:
    for name in ("amount", "age", "prediction.score"):
        feature = fraud[name]
        ref = BASE["score" if name == "prediction.score" else name]
        cur = CURRENT["score" if name == "prediction.score" else name]
        exact = stats.ks_2samp(ref, cur)
        assert feature["reference_rows"] == N and feature["current_rows"] == N
        assert abs(feature["statistic"] - exact.statistic) <= feature["error_bound"] + 1e-12
        assert feature["error_bound"] < 0.1
        assert (exact.pvalue <= 0.05) == feature["drifted"]
    # Counts are exact: chi-squared equals scipy's on the same counts, as Evidently computes it.
    keys = ["US", "DE", "FR"]
    ref = np.array([np.sum(BASE["country"] == k) for k in keys])
    cur = np.array([np.sum(CURRENT["country"] == k) for k in keys])
    exact = stats.chisquare(cur, ref * cur.sum() / ref.sum())
    assert fraud["country"]["statistic"] == pytest.approx(exact.statistic, rel=1e-9)
    assert fraud["country"]["p_value"] == pytest.approx(exact.pvalue, rel=1e-6, abs=1e-300)
    assert fraud["country"]["error_bound"] == 0


def test_drift_alert_and_infrastructure_alert_join_one_incident(server, fraud) -> None:
    send_log_records(
        server,
        RESOURCE,
        [
            {
                "timestamp": T0 + 125 * 10**9,
                "body": "GPU temperature 97 C",
                "attributes": {"probe.infra_alert": "gpu_overheat"},
            }
        ],
    )

    def alerts() -> dict[str, dict]:
        return {a["kind"]: a for a in _api(server, "/api/v1/alerts", limit=100)["alerts"]}

    found = _poll(alerts, lambda a: {"feature_drift", "gpu_overheat"} <= set(a))
    drift, infra = found["feature_drift"], found["gpu_overheat"]
    assert drift["entity"] == {"kind": "model", "name": "fraud:v3"}
    assert drift["layer"] == "mlops" and RESOURCE.items() <= drift["resource"].items()
    details = drift["evidence"]["details"]
    assert details["window_end_unix_nano"] == T0 + 120 * 10**9
    top = {f["feature"] for f in details["top_features"][:2]}
    assert top == {"amount", "country"}
    assert all("threshold" in f and "statistic" in f for f in details["top_features"])
    # Overwhelming evidence (the amounts moved by orders of magnitude) makes it an error.
    assert min(f["p_value"] for f in details["top_features"] if f["drifted"]) <= 1e-6
    assert drift["severity"] == "error"
    assert found["prediction_drift"]["entity"]["name"] == "fraud:v3"
    # The topology-aware correlator puts an alert of a model served on a host and an
    # infrastructure alert of that host into one incident.
    assert infra["entity"] == {"kind": "host", "name": "gpu-node-7"}
    incidents = _poll(
        lambda: alerts(),
        lambda a: a["feature_drift"]["incident_id"] == a["gpu_overheat"]["incident_id"],
    )
    assert incidents["feature_drift"]["incident_id"] is not None
    assert incidents["feature_drift"]["incident_id"] == incidents["gpu_overheat"]["incident_id"]
    incident = _api(server, f"/api/v1/incidents/{incidents['feature_drift']['incident_id']}")
    assert "fraud:v3" in incident["incident"]["models"]


def test_reference_from_a_stored_time_range(server, fraud) -> None:
    response = httpx.post(
        server.api_base + "/api/v1/mlops/reference",
        json={"model": "fraud", "version": "v3", "start": T0, "end": T0 + 60 * 10**9},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "range" and body["rows"] == N and body["model_versions_updated"] == 1
    assert body["columns"]["country"] == "feature/categorical"
    # The same reference as the baseline: the open window is judged the same way.
    live = _api(server, "/api/v1/mlops/models/fraud/drift", version="v3")["live"]
    assert live and live[0]["live"] is True
    models = {m["entity"]: m for m in _api(server, "/api/v1/mlops/models")}
    assert models["fraud:v3"]["reference"] == "range"


def test_spans_with_ml_attributes_are_model_rows(server) -> None:
    rng = np.random.default_rng(3)
    start = T0 + 10 * 10**9

    def build(tracer) -> None:
        for i in range(50):
            span = tracer.start_span(
                "predict",
                start_time=start + i * 10**8,
                attributes={
                    "ml.model.name": "recsys",
                    "ml.feature.clicks": int(rng.integers(0, 30)),
                    "ml.feature.segment": str(rng.choice(["new", "loyal"])),
                    "ml.prediction.score": float(rng.random()),
                },
            )
            span.end(end_time=start + i * 10**8 + 3_000_000)

    exporter = span_exporter(server, "http")
    exporter.export(make_spans("recsys-api", build))
    exporter.shutdown()
    models = _poll(
        lambda: {m["entity"]: m for m in _api(server, "/api/v1/mlops/models")},
        lambda m: "recsys" in m and m["recsys"]["rows"] == 50,
    )
    recsys = models["recsys"]
    assert recsys["version"] == "" and recsys["rows"] == 50
    assert recsys["features"] == {
        "clicks": "feature/numerical",
        "segment": "feature/categorical",
        "prediction.score": "prediction/numerical",
    }
    assert recsys["resource"]["service.name"] == "recsys-api"
    assert recsys["reference"] == "collecting baseline"


def test_bad_requests_are_400(server) -> None:
    bad_range = httpx.post(
        server.api_base + "/api/v1/mlops/reference",
        json={"model": "fraud", "start": "yesterday", "end": 1},
    )
    assert bad_range.status_code == 400
    no_model = httpx.post(
        server.api_base + "/api/v1/mlops/reference",
        content=b"a,b\n1,2\n",
        headers={"content-type": "text/csv"},
    )
    assert no_model.status_code == 400
    assert httpx.get(server.api_base + "/api/v1/mlops/models/nope/drift").status_code == 404


# -- the iris classifier: BentoML's OTLP monitoring logs -----------------------------------------

IRIS_FEATURES = ["sepal length", "sepal width", "petal length", "petal width"]
SCHEMA = {
    **{n: {"name": n, "role": "feature", "type": "numerical"} for n in IRIS_FEATURES},
    "pred": {"name": "pred", "role": "prediction", "type": "categorical"},
}


def _iris(rng: np.random.Generator, n: int, shift: float) -> dict[str, np.ndarray]:
    return {
        "sepal length": rng.normal(5.8 + shift, 0.8, n),
        "sepal width": rng.normal(3.0, 0.4, n),
        "petal length": rng.normal(3.7, 1.7, n),
        "petal width": rng.normal(1.2, 0.7, n),
        "pred": rng.choice(["setosa", "versicolor", "virginica"], n),
    }


def _bentoml_monitor_logs(server: ServerProcess, data: dict[str, np.ndarray]) -> list[str]:
    """Log rows exactly as BentoML's ``OTLPMonitor.export_data`` does: one dict per row through
    the SDK's ``LoggingHandler`` on the ``bentoml_monitor_data`` logger."""
    provider = LoggerProvider(
        resource=Resource.create(
            {
                "service.name": "iris_classifier:iris_classifier_prediction",
                "service.instance.id": "{component_context.bento_version}",
                "host.name": "bento-1",
            }
        )
    )
    memory = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    handler = LoggingHandler(level=logging.NOTSET, logger_provider=provider)
    logger = logging.getLogger("bentoml_monitor_data")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    ids = []
    try:
        for i in range(len(data["pred"])):
            record = {name: data[name][i].item() for name in [*IRIS_FEATURES, "pred"]}
            request_id = str(6413930528999883196 + i)
            ids.append(request_id)
            record["timestamp"] = time.time()
            record["request_id"] = request_id
            if i % 3 != 2:  # meta_sample_rate < 1: some rows carry no bento_meta
                record["bento_meta"] = {
                    "bento_name": "iris_classifier",
                    "bento_version": "not available",
                    "monitor_name": "iris_classifier_prediction",
                    "schema": SCHEMA,
                }
            logger.info(record)
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    exporter = log_exporter(server, "http")
    assert exporter.export(memory.get_finished_logs()) is LogRecordExportResult.SUCCESS
    exporter.shutdown()
    return ids


def test_bentoml_monitoring_logs_against_an_uploaded_reference(server) -> None:
    rng = np.random.default_rng(11)
    reference = _iris(rng, 400, 0.0)
    csv = io.StringIO()
    csv.write(",".join(f'"{n}"' for n in [*IRIS_FEATURES, "pred"]) + "\n")
    for i in range(400):
        csv.write(",".join(str(reference[n][i]) for n in [*IRIS_FEATURES, "pred"]) + "\n")
    response = httpx.post(
        server.api_base + "/api/v1/mlops/reference",
        params={"model": "iris_classifier_prediction", "predictions": "pred"},
        content=csv.getvalue().encode(),
        headers={"content-type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["columns"]["pred"] == "prediction/categorical"

    current = _iris(rng, 300, 0.9)  # sepal length shifted by more than 1 sd
    ids = _bentoml_monitor_logs(server, current)
    report = _poll(
        lambda: _api_once_seen(server, "/api/v1/mlops/models/iris_classifier_prediction/drift"),
        lambda r: (
            r is not None and bool(r["live"]) and r["live"][0]["features"][0]["current_rows"] == 300
        ),
    )
    assert report is not None, "the model's logs never arrived"
    window = report["live"][0]
    assert window["version"] == ""  # bento_version "not available"
    features = {f["feature"]: f for f in window["features"]}
    assert set(features) == {*IRIS_FEATURES, "pred"}
    assert features["sepal length"]["drifted"] and features["sepal length"]["test"] == "ks"
    for name in ("sepal width", "petal length", "petal width"):
        exact = stats.ks_2samp(reference[name], current[name])
        assert features[name]["drifted"] == (exact.pvalue <= 0.05)
    assert not features["petal width"]["drifted"]
    assert features["pred"]["role"] == "prediction" and features["pred"]["test"] == "chisquare"
    models = {m["model"]: m for m in _api(server, "/api/v1/mlops/models")}
    assert models["iris_classifier_prediction"]["reference"] == "dataset"
    assert models["iris_classifier_prediction"]["resource"]["host.name"] == "bento-1"

    # Late labels by prediction id (BentoML's request id): half through the API, half as
    # log records with ml.prediction.id and ml.label.
    truth = rng.choice(["setosa", "versicolor", "virginica"], 300)
    truth[:150] = current["pred"][:150]  # the first half mostly right
    labelled = list(range(0, 240))  # the last 60 predictions never get a label
    api_part, log_part = labelled[::2], labelled[1::2]
    response = httpx.post(
        server.api_base + "/api/v1/mlops/labels",
        json={"labels": [{"prediction_id": ids[i], "label": str(truth[i])} for i in api_part]},
    )
    assert response.status_code == 200 and response.json() == {"accepted": len(api_part)}
    send_log_records(
        server,
        {"service.name": "labeller"},
        [
            {"body": "label", "attributes": {"ml.prediction.id": ids[i], "ml.label": str(truth[i])}}
            for i in log_part
        ],
    )
    expected = float(np.mean(truth[labelled] == current["pred"][labelled]))
    windows = _poll(
        lambda: _api(server, "/api/v1/mlops/models/iris_classifier_prediction/performance"),
        lambda w: sum(x["labelled"] for x in w) == len(labelled),
    )
    assert sum(x["labelled"] for x in windows) == len(labelled)
    accuracy = sum(x["accuracy"] * x["labelled"] for x in windows) / len(labelled)
    assert accuracy == pytest.approx(expected, abs=1e-9)
    assert all(x["task"] == "classification" and 0 <= x["f1"] <= 1 for x in windows)


def test_labels_that_go_wrong_raise_a_quality_decay_alert(server, fraud) -> None:
    predictions = [
        "fraud" if s > 0.5 else "ok" for s in np.concatenate([BASE["score"], CURRENT["score"]])
    ]
    flip = {"fraud": "ok", "ok": "fraud"}
    labels = [
        {
            "prediction_id": f"f-{i}",
            # right for the baseline minute; every other one wrong in the next
            "label": flip[p] if i >= N and i % 2 else p,
            "time_unix_nano": T0 + 200 * 10**9,
        }
        for i, p in enumerate(predictions)
    ]
    response = httpx.post(server.api_base + "/api/v1/mlops/labels", json={"labels": labels})
    assert response.status_code == 200 and response.json() == {"accepted": 2 * N}
    windows = _api(server, "/api/v1/mlops/models/fraud/performance", version="v3")
    assert windows[0]["accuracy"] == 1.0 and not windows[0]["decayed"]
    assert windows[-1]["decayed"] and windows[-1]["accuracy"] == pytest.approx(0.5, abs=0.01)
    # Labels equal to "score > 0.5": the score separates them perfectly.
    assert windows[0]["roc_auc"] == 1.0
    assert all(0.0 <= w["roc_auc"] <= 1.0 for w in windows)
    alerts = _poll(
        lambda: {a["kind"]: a for a in _api(server, "/api/v1/alerts", limit=100)["alerts"]},
        lambda a: "quality_decay" in a,
    )
    decay = alerts["quality_decay"]
    assert decay["entity"] == {"kind": "model", "name": "fraud:v3"}
    assert decay["evidence"]["expected"] == 1.0
    assert decay["evidence"]["observed"] == pytest.approx(0.5, abs=0.01)
    assert decay["severity"] == "error" and decay["layer"] == "mlops"


def test_drift_state_survives_a_restart(server, fraud) -> None:
    before = {m["entity"]: m for m in _api(server, "/api/v1/mlops/models")}
    assert server.stop() == 0
    server.start()
    after = {m["entity"]: m for m in _api(server, "/api/v1/mlops/models")}
    assert after["fraud:v3"]["reference"] == before["fraud:v3"]["reference"]
    assert after["fraud:v3"]["rows"] == before["fraud:v3"]["rows"]
    assert after["fraud:v3"]["state_bytes"] == before["fraud:v3"]["state_bytes"]
    live = _api(server, "/api/v1/mlops/models/fraud/drift", version="v3")
    assert live["live"] and live["windows"]
