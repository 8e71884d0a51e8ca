"""The whole product on one stream: the demo's GPU node fault, sent through the real SDK to a real
server with every built-in plugin, ends as one incident across the AIOps, MLOps and LLMOps layers
whose top root-cause candidate is the GPU node."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from opstrata.alerts import Entity
from opstrata.demo import Simulation
from tests.serverproc import ServerProcess

START = 1_790_000_000 * 1_000_000_000  # a fixed simulated start: the run is reproducible


def _all(client: httpx.Client, path: str, key: str) -> list[dict]:
    return client.get(path, params={"limit": 1000}).json()[key]


def test_gpu_node_trouble_is_one_cross_layer_incident_rooted_at_the_node(tmp_path: Path) -> None:
    sim = Simulation(
        scenario="gpu-node-trouble", seed=1, speed=0.0, warmup_minutes=40,
        duration_minutes=55, rate=2.0, start_unix_nano=START,
    )  # fmt: skip
    server = ServerProcess(tmp_path / "data").start()
    try:
        stats = sim.run(server.grpc_endpoint)
        assert stats.failed_exports == 0
        with httpx.Client(base_url=server.api_base, timeout=60) as client:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                plugins = client.get("/api/v1/plugins").json()
                if all(c["lag"] == 0 for p in plugins for c in p["consumers"]):
                    break
                time.sleep(1)
            time.sleep(3)
            alerts = {a["id"]: a for a in _all(client, "/api/v1/alerts", "alerts")}
            incidents = [
                i for i in _all(client, "/api/v1/incidents", "incidents") if not i["merged_into"]
            ]
    finally:
        assert server.stop() == 0

    truth = sim.truth
    assert truth.onset_unix_nano is not None

    def during_fault(incident: dict) -> int:
        return sum(
            1
            for alert_id in incident["alert_ids"]
            if alert_id in alerts
            and alerts[alert_id]["first_seen_unix_nano"] >= truth.onset_unix_nano - 60 * 10**9
        )

    incident = max(incidents, key=during_fault)
    assert during_fault(incident) > 0
    fault_incidents = [i for i in incidents if during_fault(i) >= 3]
    assert fault_incidents == [incident], "the fault's alerts are in one incident"
    assert {"aiops", "mlops", "llmops"} <= set(incident["layers"])
    top = incident["candidates"][0]["entity"]
    assert truth.matches(Entity(top["kind"], top["name"])), incident["candidates"][:3]
    assert "fraud-model:3" in incident["models"]
