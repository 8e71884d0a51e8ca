"""The AIOps plugin's pure parts: which entity a metric is about, the quantile sketch, log
masking and templates, time parsing for ``opstrata detect``, and batching invariance."""

from __future__ import annotations

import numpy as np

from opstrata import Entity
from opstrata.plugins.aiops.drain import TemplateMiner, mask
from opstrata.plugins.aiops.engine import RobustSeasonalDetector
from opstrata.plugins.aiops.offline import parse_time
from opstrata.plugins.aiops.series import entity_of_metric
from opstrata.plugins.aiops.sketch import LogHistogram


def test_serving_metrics_are_about_their_model() -> None:
    vllm = entity_of_metric(
        "vllm:e2e_request_latency_seconds", {"service.name": "llm"}, {"model_name": "llama-3-8b"}
    )
    assert vllm == Entity("model", "llama-3-8b")
    triton = entity_of_metric(
        "nv_inference_request_duration_us",
        {"host.name": "gpu-1"},
        {"model": "resnet", "version": "2"},
    )
    assert triton == Entity("model", "resnet:2")


def test_infrastructure_metrics_are_about_their_host_node_or_pod() -> None:
    resource = {
        "host.name": "h1",
        "k8s.node.name": "n1",
        "k8s.pod.name": "p1",
        "service.name": "svc",
    }
    assert entity_of_metric("system.cpu.utilization", resource, {}) == Entity("host", "h1")
    assert entity_of_metric("nv_gpu_utilization", {"k8s.node.name": "n1"}, {}) == Entity(
        "node", "n1"
    )
    assert entity_of_metric("gpu.temperature", resource, {}) == Entity("host", "h1")
    assert entity_of_metric("k8s.pod.memory.usage", resource, {}) == Entity("pod", "p1")
    assert entity_of_metric("k8s.node.cpu.time", resource, {}) == Entity("node", "n1")
    assert entity_of_metric("http.server.duration", resource, {}) == Entity("service", "svc")
    assert entity_of_metric("orphan", {}, {}) == Entity("metric", "orphan")


def test_sketch_quantiles_are_within_one_percent_and_merge_exactly() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(3, 1, 20_000)
    groups = rng.integers(0, 3, values.size)
    half = values.size // 2
    merged = LogHistogram.of(groups[:half], values[:half]).merge(
        LogHistogram.of(groups[half:], values[half:])
    )
    whole = LogHistogram.of(groups, values)
    assert np.array_equal(merged.codes, whole.codes)
    assert np.array_equal(merged.counts, whole.counts)
    ids, q = merged.quantiles((0.5, 0.99))
    for g in ids.tolist():
        for j, level in enumerate((0.5, 0.99)):
            true = np.quantile(values[groups == g], level)
            assert abs(q[g, j] - true) / true < 0.02


def test_masking_and_templates() -> None:
    assert mask(["from 10.0.0.1:8080 id 550e8400-e29b-41d4-a716-446655440000 took 12ms n=3"]) == [
        "from <IP> id <UUID> took <NUM> n=<NUM>"
    ]
    miner = TemplateMiner()
    ids = miner.add([f"user {name} logged in from shop" for name in ("ann", "bob", "cy")])
    assert len(set(ids.tolist())) == 1
    assert miner.template(int(ids[0])) == "user <*> logged in from shop"
    other = miner.add(["disk full on /var"])
    assert other[0] != ids[0] and set(miner.last_new) == {int(other[0])}


def test_times_in_any_unit_or_rfc3339() -> None:
    ns = 1_700_000_000 * 10**9
    assert parse_time("1700000000") == ns
    assert parse_time("1700000000000") == ns
    assert parse_time(str(ns)) == ns
    assert parse_time("2023-11-14T22:13:20Z") == ns
    assert parse_time("2023-11-14 22:13:20") == ns


def test_scores_do_not_depend_on_how_the_stream_is_cut() -> None:
    rng = np.random.default_rng(4)
    n, series = 600, 3
    times = np.tile(1_700_000_000 * 10**9 + np.arange(n) * 60 * 10**9, series)
    ids = np.repeat(np.arange(series), n)
    values = rng.normal(10, 1, ids.size)
    values[400] += 12
    whole = RobustSeasonalDetector({}).update(ids, times, values)
    order = np.argsort(times, kind="stable")
    det = RobustSeasonalDetector({})
    cut = np.zeros(ids.size)
    for chunk in np.array_split(order, 37):
        cut[chunk] = det.update(ids[chunk], times[chunk], values[chunk])
    assert np.array_equal(whole, cut)
    assert whole[400] > 0.9999 and (whole >= 0).all() and (whole <= 1).all()
