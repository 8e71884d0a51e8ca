"""Drift is judged per slot however the rows are batched: a replay in long exports (each spanning
several slots) gives the same windows as the same rows sent one slot at a time.

A real server with 30 s slots (a window of four). Two models get the same rows through the real
OpenTelemetry SDK: ``live`` one export per slot, ``replayed`` one export per five slots. Each
slot close tests the window; with one close per batch, the replayed model's slots in the middle
of an export were never tested.
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
SLOTS = 30
T0 = (time.time_ns() - 3 * 3600 * NS) // SLOT * SLOT
END = T0 + SLOTS * SLOT
SHIFT_AT = T0 + 22 * SLOT + 7 * NS
"""Mid-export for the replayed model: its export holds slots 20-24."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("mlops-replay")
    config = root / "opstrata.toml"
    config.write_text(
        "[plugins.mlops]\nwindow_seconds = 120\nwindow_slots = 4\nbaseline_seconds = 60\n"
        "reference_seconds = 450\n"
    )
    proc = ServerProcess(root / "data", config_file=config).start()
    yield proc
    assert proc.stop() == 0, "".join(proc.output)


def _rows(model: str, times: np.ndarray, values: np.ndarray) -> list[dict]:
    return [
        {
            "timestamp": int(t),
            "body": "prediction",
            "attributes": {
                "ml.model.name": model,
                "ml.model.version": "1",
                "ml.feature.latency_ms": round(float(v), 3),
                "ml.prediction.score": round(float(1 / (1 + np.exp(-v / 50))), 5),
            },
        }
        for t, v in zip(times.tolist(), values.tolist(), strict=True)
    ]


def _windows(server: ServerProcess, model: str) -> list[dict]:
    response = httpx.get(
        f"{server.api_base}/api/v1/mlops/models/{model}/drift",
        params={"limit": 1000},
        timeout=10,
    )
    return response.json()["windows"] if response.status_code == 200 else []


@pytest.fixture(scope="module")
def windows(server: ServerProcess) -> dict[str, list[dict]]:
    rng = np.random.default_rng(5)
    n = SLOTS * SLOT // NS * 3  # three rows a second
    times = np.sort(rng.integers(T0, END, n))
    values = rng.gamma(4.0, 20.0, n)
    values = np.where(times >= SHIFT_AT, values * 3, values)  # a sudden shift
    resource = {"service.name": "scoring", "host.name": "node-2"}
    slot_of = (times - T0) // SLOT
    for model, per_export in (("live", 1), ("replayed", 5)):
        for first in range(0, SLOTS, per_export):
            chosen = (slot_of >= first) & (slot_of < first + per_export)
            send_log_records(server, resource, _rows(model, times[chosen], values[chosen]))
    # The last export's newest slot stays open; the one before it closes in both.
    last_closed = END - SLOT
    for model in ("live", "replayed"):
        wait_for(
            lambda m=model: any(w["end_unix_nano"] == last_closed for w in _windows(server, m)),
            what=f"the {model} model's last closed window",
        )
    return {m: _windows(server, m) for m in ("live", "replayed")}


def _verdicts(windows: list[dict]) -> list[tuple]:
    return sorted(
        (
            w["end_unix_nano"],
            w["rows"],
            w["dataset_drift"],
            w["prediction_drift"],
            tuple(sorted(w["drifted_features"])),
        )
        for w in windows
        if not w["live"]
    )


def test_every_slot_of_a_long_export_is_tested(windows: dict[str, list[dict]]) -> None:
    ends = {w["end_unix_nano"] for w in windows["replayed"] if not w["live"]}
    # Slots in the middle of an export (not only each export's first) have their close.
    middle = {T0 + (s + 1) * SLOT for s in range(10, SLOTS - 1) if (s + 1) % 5}
    assert middle <= ends, sorted((e - T0) // SLOT for e in middle - ends)


def test_a_replay_in_long_exports_judges_as_live(windows: dict[str, list[dict]]) -> None:
    live, replayed = _verdicts(windows["live"]), _verdicts(windows["replayed"])
    assert len(live) >= 20
    assert replayed == live
    # The shift inside an export is seen at the close of its own slot, as it was live.
    shifted = [v for v in live if v[0] > SHIFT_AT and (v[2] or v[3] or v[4])]
    assert shifted and shifted[0][0] <= SHIFT_AT + 2 * SLOT, live[-10:]
