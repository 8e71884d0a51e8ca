"""A strong daily cycle seen on the learning day raises nothing on the next, and a sudden shift
of one feature still alerts at the first close after it (the reference by time of day).

A real server with a window of four 30 s slots, a 60 s baseline, and a "day" of 1,200 s (event
time runs fast): the reference learns for one day and keeps 20 parts of it (60 s each, the
hours of this day). A model whose amounts (log-mean ±1.0), device mix (50 ± 30 % mobile) and
scores follow the time of day; rows go through the real OpenTelemetry SDK as log records with
the ``ml.*`` attributes, one export per slot. Day 1 is learnt; day 2 is the same cycle; then
mobile clients send amounts in cents 10 s into a slot of day 3.

The same rows through an in-process monitor without the parts (``season_seconds = 0``) show why
they are needed: the day's window-to-window variation holds the cycle's amplitude, and the shift
stays under it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pyarrow as pa
import pytest

from opstrata.alerts import AlertEvent
from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.monitor import DriftMonitor
from opstrata.plugins.mlops.records import Column, ModelRows
from tests.otelsdk import send_log_records
from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess

NS = 10**9
SLOT = 30 * NS
DAY = 1200 * NS
RATE = 4
"""Rows per second."""
T0 = (time.time_ns() - 6 * 3600 * NS) // DAY * DAY
SHIFT_AT = T0 + 2 * DAY + 10 * NS
FIRST_CLOSE = T0 + 2 * DAY + SLOT
SETTINGS = {
    "window_seconds": 120,
    "window_slots": 4,
    "baseline_seconds": 60,
    "reference_seconds": DAY // NS,
    "season_seconds": DAY // NS,
    "season_buckets": 20,
}
RESOURCE = {"service.name": "checkout-scorer", "host.name": "node-7"}


def _rows(rng: np.random.Generator, start: int, end: int) -> dict[str, np.ndarray]:
    n = rng.poisson(RATE * (end - start) / NS)
    times = start + np.sort(rng.uniform(0, end - start, n)).astype(np.int64)
    phase = np.sin(2 * np.pi * ((times - T0) % DAY) / DAY)
    amount = np.exp(rng.normal(np.log(60) + 1.0 * phase, 0.9))
    mobile = rng.random(n) < 0.5 + 0.3 * phase
    amount = np.where(mobile & (times >= SHIFT_AT), amount * 100, amount)  # cents, from day 3
    return {
        "times": times,
        "amount": amount.round(2),
        "age": rng.exponential(400, n).round(),
        "device": np.where(mobile, "mobile", "desktop"),
        "score": (1 / (1 + np.exp(-(np.log(amount / 60) + rng.normal(0, 0.5, n) - 2)))).round(5),
    }


def _records(rows: dict[str, np.ndarray]) -> list[dict]:
    return [
        {
            "timestamp": int(rows["times"][i]),
            "body": "prediction",
            "attributes": {
                "ml.model.name": "checkout",
                "ml.model.version": "4",
                "ml.feature.amount": float(rows["amount"][i]),
                "ml.feature.account_age_days": int(rows["age"][i]),
                "ml.feature.device": str(rows["device"][i]),
                "ml.prediction.score": float(rows["score"][i]),
            },
        }
        for i in range(rows["times"].size)
    ]


def _model_rows(rows: dict[str, np.ndarray]) -> ModelRows:
    t = rows["times"]
    columns = {
        "amount": Column("feature", "numerical", t, rows["amount"]),
        "account_age_days": Column("feature", "numerical", t, rows["age"]),
        "device": Column("feature", "categorical", t, pa.array(rows["device"])),
        "prediction.score": Column("prediction", "numerical", t, rows["score"]),
    }
    return ModelRows("checkout", "4", RESOURCE, t, columns)


def _slots() -> list[dict[str, np.ndarray]]:
    """Two days of slots, the first slot of day 3 (the shift 10 s into it), and 2 s more."""
    rng = np.random.default_rng(5)
    out = [_rows(rng, at, at + SLOT) for at in range(T0, T0 + 2 * DAY + SLOT, SLOT)]
    return [*out, _rows(rng, FIRST_CLOSE, FIRST_CLOSE + 2 * NS)]


@pytest.fixture(scope="module")
def slots() -> list[dict[str, np.ndarray]]:
    return _slots()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("mlops-season")
    config = root / "opstrata.toml"
    config.write_text("[plugins.mlops]\n" + "".join(f"{k} = {v}\n" for k, v in SETTINGS.items()))
    proc = ServerProcess(root / "data", config_file=config).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _drift_alerts(server: ServerProcess) -> list[dict]:
    response = httpx.get(server.api_base + "/api/v1/alerts", params={"limit": 1000}, timeout=10)
    assert response.status_code == 200, response.text
    return [
        a
        for a in response.json()["alerts"]
        if a["kind"] in ("feature_drift", "prediction_drift")
        and a["entity"]["name"] == "checkout:4"
    ]


def _windows(server: ServerProcess) -> list[dict]:
    response = httpx.get(
        server.api_base + "/api/v1/mlops/models/checkout/drift",
        params={"limit": 1000},
        timeout=10,
    )
    return response.json()["windows"] if response.status_code == 200 else []


@pytest.fixture(scope="module")
def served(server: ServerProcess, slots: list[dict[str, np.ndarray]]) -> dict:
    days = 2 * DAY // SLOT
    for rows in slots[:days]:  # one export per slot, in event-time order
        send_log_records(server, RESOURCE, _records(rows))
    wait_for(
        lambda: any(w["end_unix_nano"] == T0 + 2 * DAY - SLOT for w in _windows(server)),
        what="the second day's windows",
    )
    normal = _drift_alerts(server)
    windows = _windows(server)
    for rows in slots[days:]:
        send_log_records(server, RESOURCE, _records(rows))
    wait_for(
        lambda: any(w["end_unix_nano"] == FIRST_CLOSE for w in _windows(server)),
        what="the first close after the shift",
    )
    return {"normal": normal, "windows": windows, "shifted": _drift_alerts(server)}


def test_a_cycle_seen_on_the_learning_day_raises_nothing_on_the_next(served) -> None:
    second = [w for w in served["windows"] if w["end_unix_nano"] > T0 + DAY + 4 * SLOT]
    assert len(second) >= 25, "the second day's windows were not tested"
    # They do drift from the whole day's reference (Evidently's verdicts): the cycle is strong.
    assert sum(w["dataset_drift"] or w["prediction_drift"] for w in second) >= 10
    started = [a for a in served["normal"] if a["first_seen_unix_nano"] > T0 + DAY]
    assert started == [], [(a["kind"], a["summary"]) for a in started]
    assert all(a["status"] == "resolved" for a in served["normal"])


def test_a_sudden_shift_on_the_next_day_alerts_at_the_first_close(served) -> None:
    features = [
        a
        for a in served["shifted"]
        if a["kind"] == "feature_drift" and a["first_seen_unix_nano"] > SHIFT_AT
    ]
    assert len(features) == 1, [(a["kind"], a["summary"]) for a in served["shifted"]]
    alert = features[0]
    assert SHIFT_AT < alert["first_seen_unix_nano"] <= FIRST_CLOSE
    top = alert["evidence"]["details"]["top_features"][0]
    assert top["feature"] == "amount" and top["drifted"]
    # Judged against the same time of the learnt day, not against the day's variation.
    assert top["seasonal_p_value"] is not None and top["seasonal_p_value"] <= 1e-6
    assert top["seasonal_shift"] > 1.5 * top["seasonal_variation"]
    assert top["shift"] < 1.5 * top["variation"], "the day's variation would have hidden it"


def test_without_the_parts_the_days_variation_hides_the_shift(slots) -> None:
    started: list[AlertEvent] = []
    settings = {**SETTINGS, "season_seconds": 0}
    monitor = DriftMonitor(MLOpsConfig(**settings), started.append)  # type: ignore[arg-type]
    for rows in slots:
        monitor.observe(_model_rows(rows))
    after = [e for e in started if e.time_unix_nano > SHIFT_AT and not e.resolved]
    assert after == [], [(e.kind, e.summary) for e in after]
    state = monitor.models[("checkout", "4")]
    assert state.learned_until is None and state.columns["amount"].variation > 0.2


def test_the_parts_by_time_of_day_survive_a_restart(server, served) -> None:
    def live() -> dict:
        response = httpx.get(
            server.api_base + "/api/v1/mlops/models/checkout/drift",
            params={"version": "4"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return {f["feature"]: f for f in response.json()["live"][0]["features"]}

    before = live()
    assert before["amount"]["seasonal_p_value"] is not None  # the shifted alert still fires
    assert server.stop() == 0
    server.start()
    after = live()
    for key in ("seasonal_p_value", "seasonal_shift", "seasonal_variation"):
        assert after["amount"][key] == before["amount"][key], key
