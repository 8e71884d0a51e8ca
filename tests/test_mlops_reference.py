"""The automatic reference learns a whole cycle of traffic; posted references stay in charge.

A real server with short windows (60 s of two 30 s slots, a 60 s baseline) and a reference that
learns for ``reference_seconds`` = 600 s: one simulated "day" of a model whose inputs follow a
daily cycle (amounts, the country mix and the device mix all move with the time of day, so
Evidently's verdicts drift against any part of the day). Rows go through the real OpenTelemetry
SDK as log records with the ``ml.*`` attributes, one export per slot.

- the first cycle is learnt; in the second no drift alert starts, though the verdicts drift and
  columns differ from the reference beyond sampling noise (the cycle is real; it is the
  reference's own variation);
- a real shift (mobile amounts sent in cents) then alerts at the first window that holds it;
- a model with a posted dataset reference is judged against it and its reference never learns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.otelsdk import send_log_records
from tests.pluginsupport import wait_for
from tests.serverproc import ServerProcess

NS = 10**9
SLOT = 30 * NS
DAY = 600 * NS
"""One simulated day: the cycle's period and ``reference_seconds``."""
RATE = 4
"""Rows per second."""
T0 = (time.time_ns() - 3 * 3600 * NS) // SLOT * SLOT
SHIFT_AT = T0 + 2 * DAY
RESOURCE = {"service.name": "cyclic-api", "host.name": "node-3", "k8s.pod.name": "cyclic-7d9"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("mlops-reference")
    config = root / "opstrata.toml"
    config.write_text(
        "[plugins.mlops]\nwindow_seconds = 60\nwindow_slots = 2\nbaseline_seconds = 60\n"
        f"reference_seconds = {DAY // NS}\nmin_rows = 30\n"
    )
    proc = ServerProcess(root / "data", config_file=config).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _rows(
    rng: np.random.Generator, model: str, start: int, seconds: float, cents: bool = False
) -> list[dict]:
    """``seconds`` of the model's rows from ``start``; the inputs follow the time of day."""
    n = int(seconds * RATE)
    times = start + np.sort(rng.uniform(0, seconds * NS, n)).astype(np.int64)
    phase = np.sin(2 * np.pi * ((times - T0) % DAY) / DAY)
    amount = np.exp(rng.normal(np.log(60) + 0.5 * phase, 0.9))
    mobile = rng.random(n) < 0.5 + 0.2 * phase
    if cents:  # a mobile release sends amounts in cents
        amount = np.where(mobile, amount * 100, amount)
    us = 0.2 + 0.15 * (1 + phase)
    draw = rng.random(n)
    country = np.where(draw < us, "US", np.where(draw < us + 0.3, "DE", "FR"))
    age = rng.exponential(400, n).round()
    score = 1 / (1 + np.exp(-(np.log(amount / 60) + rng.normal(0, 0.5, n) - 2)))
    return [
        {
            "timestamp": int(times[i]),
            "body": "prediction",
            "attributes": {
                "ml.model.name": model,
                "ml.model.version": "1",
                "ml.feature.amount": round(float(amount[i]), 2),
                "ml.feature.account_age_days": int(age[i]),
                "ml.feature.country": str(country[i]),
                "ml.feature.device": "mobile" if mobile[i] else "desktop",
                "ml.prediction.score": round(float(score[i]), 5),
            },
        }
        for i in range(n)
    ]


def _send(server: ServerProcess, records: list[dict]) -> None:
    send_log_records(server, RESOURCE, records)


def _send_slots(
    server: ServerProcess, rng: np.random.Generator, model: str, start: int, end: int, **kw
) -> None:
    """One export per slot, in time order, so that each window is closed and tested."""
    for at in range(start, end, SLOT):
        _send(server, _rows(rng, model, at, SLOT / NS, **kw))


def _api(server: ServerProcess, path: str, **params: object) -> object:
    response = httpx.get(server.api_base + path, params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _windows(server: ServerProcess, model: str) -> list[dict]:
    response = httpx.get(
        server.api_base + f"/api/v1/mlops/models/{model}/drift",
        params={"limit": 1000},
        timeout=10,
    )
    return response.json()["windows"] if response.status_code == 200 else []


def _model(server: ServerProcess, model: str) -> dict:
    return next(m for m in _api(server, "/api/v1/mlops/models") if m["model"] == model)


def _drift_alerts(server: ServerProcess, model: str) -> list[dict]:
    alerts = _api(server, "/api/v1/alerts", limit=1000)["alerts"]
    return [
        a
        for a in alerts
        if a["kind"] in ("feature_drift", "prediction_drift")
        and a["entity"]["name"] == f"{model}:1"
    ]


@pytest.fixture(scope="module")
def cyclic(server: ServerProcess) -> dict:
    rng = np.random.default_rng(4)
    _send_slots(server, rng, "cyclic", T0, T0 + 2 * DAY)
    wait_for(
        lambda: any(w["end_unix_nano"] == SHIFT_AT - SLOT for w in _windows(server, "cyclic")),
        what="the second cycle's windows",
    )
    learnt = _model(server, "cyclic")
    before_shift = _drift_alerts(server, "cyclic")
    # The inputs move: mobile amounts in cents, 90 s, then one row to close the last window.
    _send_slots(server, rng, "cyclic", SHIFT_AT, SHIFT_AT + 3 * SLOT, cents=True)
    _send(server, _rows(rng, "cyclic", SHIFT_AT + 3 * SLOT, 1.0, cents=True))
    wait_for(
        lambda: any(w["end_unix_nano"] == SHIFT_AT + 3 * SLOT for w in _windows(server, "cyclic")),
        what="the shifted windows",
    )
    return {"learnt": learnt, "before_shift": before_shift, "windows": _windows(server, "cyclic")}


def test_the_reference_learns_the_first_cycle_then_stays(cyclic) -> None:
    learnt = cyclic["learnt"]
    assert learnt["reference"] == "baseline" and learnt["reference_learning"] is False
    # Far more than the baseline minute (240 rows): the whole first cycle, 2,400 rows.
    assert 0.8 * RATE * DAY / NS <= learnt["reference_rows"] <= 1.2 * RATE * DAY / NS


def test_a_daily_cycle_raises_no_drift_alert_once_the_reference_has_seen_it(cyclic) -> None:
    second = [w for w in cyclic["windows"] if T0 + DAY + SLOT < w["end_unix_nano"] <= SHIFT_AT]
    assert len(second) >= 15, "the second cycle's windows were not tested"
    # The cycle is visible: Evidently's verdicts drift, and columns differ from the reference
    # beyond sampling noise; but no more than the reference's own windows did.
    assert sum(w["dataset_drift"] for w in second) >= 3
    assert any(
        f["sampling_p_value"] <= 0.001 and f["variation"] > 0 for w in second for f in w["features"]
    )
    started = [a for a in cyclic["before_shift"] if a["first_seen_unix_nano"] > T0 + DAY + SLOT]
    assert started == [], [(a["kind"], a["summary"]) for a in started]
    assert cyclic["learnt"]["firing"] == []


def test_a_real_shift_still_alerts_at_the_first_window_that_holds_it(server, cyclic) -> None:
    def raised() -> list[dict]:
        return [
            a
            for a in _drift_alerts(server, "cyclic")
            if a["first_seen_unix_nano"] >= SHIFT_AT and a["severity"] == "error"
        ]

    alerts = wait_for(raised, timeout=30, what="a drift alert on the shift")
    first = min(a["first_seen_unix_nano"] for a in alerts)
    assert first <= SHIFT_AT + 2 * SLOT, (first - SHIFT_AT) / NS
    top = next(a for a in alerts if a["first_seen_unix_nano"] == first)["evidence"]["details"]
    strongest = top["top_features"][0]
    assert strongest["feature"] in ("amount", "prediction.score")
    assert strongest["shift"] > 1.5 * strongest["variation"]


def test_the_learnt_reference_survives_a_restart(server, cyclic) -> None:
    before = _model(server, "cyclic")
    live = _api(server, "/api/v1/mlops/models/cyclic/drift", version="1")["live"][0]
    assert server.stop() == 0
    server.start()
    after = _model(server, "cyclic")
    assert after["reference_rows"] == before["reference_rows"]
    assert after["reference_learning"] is False
    again = _api(server, "/api/v1/mlops/models/cyclic/drift", version="1")["live"][0]
    assert {f["feature"]: f["variation"] for f in again["features"]} == {
        f["feature"]: f["variation"] for f in live["features"]
    }


def test_a_posted_reference_is_authoritative_and_never_learns(server) -> None:
    rng = np.random.default_rng(11)
    reference = _rows(rng, "posted", T0, 100.0)  # 400 rows, at the cycle's start
    columns = ["amount", "account_age_days", "country", "device"]
    lines = [",".join(columns)] + [
        ",".join(str(r["attributes"][f"ml.feature.{c}"]) for c in columns) for r in reference
    ]
    response = httpx.post(
        server.api_base + "/api/v1/mlops/reference",
        params={"model": "posted", "version": "1"},
        content="\n".join(lines).encode(),
        headers={"Content-Type": "text/csv"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    # Midday traffic, mobile amounts in cents, from its first row: an automatic baseline would
    # have learnt it as normal; against the posted reference it drifts at once.
    start = T0 + DAY // 4 - 2 * SLOT
    _send_slots(server, rng, "posted", start, start + 4 * SLOT, cents=True)
    _send(server, _rows(rng, "posted", start + 4 * SLOT, 1.0, cents=True))
    wait_for(
        lambda: any(w["end_unix_nano"] == start + 4 * SLOT for w in _windows(server, "posted")),
        what="the posted model's windows",
    )
    model = _model(server, "posted")
    assert model["reference"] == "dataset" and model["reference_rows"] == len(reference)
    assert model["reference_learning"] is False
    alerts = wait_for(lambda: _drift_alerts(server, "posted"), what="the posted model's alert")
    assert any(a["kind"] == "feature_drift" for a in alerts)
    amount = next(f for f in _windows(server, "posted")[0]["features"] if f["feature"] == "amount")
    assert amount["reference_rows"] == len(reference) and amount["drifted"]
