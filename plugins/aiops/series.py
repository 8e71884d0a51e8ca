"""Watched series: a stable integer id per series key, with what locates it.

Each series knows its entity (what an alert about it is about), the resource attributes that
locate it, its labels, the alert kind it raises and in which direction a deviation matters.
Ids index the detector's state arrays; the metadata is built once, when a series first appears.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping

import msgspec
import numpy as np

from opstrata import Entity
from opstrata.plugins.aiops.config import AiopsConfig

__all__ = [
    "LOCATING_KEYS",
    "SeriesMeta",
    "SeriesRegistry",
    "alert_group",
    "entity_of_metric",
    "locating_resource",
]

LOCATING_KEYS = (
    "service.name",
    "service.namespace",
    "service.instance.id",
    "service.version",
    "deployment.environment",
    "host.name",
    "host.id",
    "k8s.cluster.name",
    "k8s.namespace.name",
    "k8s.node.name",
    "k8s.pod.name",
    "k8s.deployment.name",
    "container.name",
    "cloud.region",
    "cloud.availability_zone",
)
"""Resource attributes copied into an alert's ``resource``: the ones that say where it is."""

UP, DOWN, BOTH = 1, -1, 0

_INFRA = re.compile(
    r"^(system\.|process\.|container\.|k8s\.|hw\.|gpu\.|nv_gpu_|dcgm_|DCGM_|node_|jvm\.|"
    r"runtime\.|nvidia\.|disk\.|network\.|memory\.|cpu\.)"
)
_SERVING = re.compile(r"^(vllm:|nv_inference_|nv_|triton)")
_MODEL_LABELS = ("model_name", "model", "gen_ai.request.model", "model.name")
_VERSION_LABELS = ("model_version", "version", "model.version")


class SeriesMeta(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    key: str
    name: str
    """What is measured, e.g. ``latency_p99`` or ``system.cpu.utilization``."""
    kind: str
    """The alert kind this series raises: ``latency``, ``error_rate``, ``traffic``,
    ``metric_anomaly``, ``log_rate``, ``log_burst``."""
    entity: Entity
    resource: dict[str, str] = {}
    labels: dict[str, str] = {}
    unit: str = ""
    direction: int = BOTH
    """1: only increases are anomalies (latency, errors), -1: only decreases, 0: both."""
    counts: bool = False
    """Values are event counts per window (Poisson noise floor)."""
    ratio: bool = False
    """Values are events / samples (error ratio); points come with their sample count."""
    rate: bool = False
    """Values are events per second (a counter's increments, requests per window); points
    come with the seconds they cover, so a rate of few events is judged by its count."""
    threshold: float = 1.0
    seasonality: str = "auto"
    excluded: bool = False
    group: str = ""
    """The alert family: series of one family raise one alert between them (the p50 and p99
    of one histogram, one metric's series of one entity). Empty: see :func:`alert_group`."""


def alert_group(meta: SeriesMeta) -> str:
    """The family a series alerts with: its kind, entity and measure, the quantile or the
    attribute set left out — so the p50 and p99 of a service's latency, or one metric over a
    service's routes and pods, are one alert, not one per derived series."""
    if meta.group:
        return meta.group
    name = meta.name
    for suffix in (":p50", ":p99", "_p50", "_p99"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{meta.kind}|{meta.entity.kind}|{meta.entity.name}|{name}"


def locating_resource(resource: Mapping[str, str]) -> dict[str, str]:
    return {k: str(resource[k]) for k in LOCATING_KEYS if resource.get(k)}


def entity_of_metric(metric: str, resource: Mapping[str, str], labels: Mapping[str, str]) -> Entity:
    """Which entity a metric series is about.

    Serving metrics (vLLM, Triton) with a model label are about the model (``model`` or
    ``model:version``); infrastructure metrics about their pod, node or host; other metrics
    about their service; ``metric`` only when nothing better is known.
    """

    def get(key: str) -> str:
        return str(labels.get(key) or resource.get(key) or "")

    if _SERVING.match(metric):
        model = next((get(k) for k in _MODEL_LABELS if get(k)), "")
        if model:
            version = next((get(k) for k in _VERSION_LABELS if get(k)), "")
            return Entity("model", f"{model}:{version}" if version else model)
    if _INFRA.match(metric):
        pod, node, host = get("k8s.pod.name"), get("k8s.node.name"), get("host.name")
        if pod and metric.startswith(("k8s.pod.", "k8s.container.", "container.")):
            return Entity("pod", pod)
        if node and metric.startswith("k8s.node."):
            return Entity("node", node)
        if host:
            return Entity("host", host)
        if node:
            return Entity("node", node)
        if pod:
            return Entity("pod", pod)
    service = get("service.name")
    if service and not service.startswith("unknown_service"):
        return Entity("service", service)
    host = get("host.name")
    if host:
        return Entity("host", host)
    return Entity("metric", metric)


class SeriesRegistry:
    """Series key -> id, and the metadata of every id. Thread-safe for readers (the API)."""

    def __init__(self, config: AiopsConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self._ids: dict[str, int] = {}
        self.metas: list[SeriesMeta] = []
        self._thresholds = np.zeros(64)
        self._directions = np.zeros(64, np.int8)
        self._groups = np.zeros(64, np.int64)
        self.group_ids: dict[str, int] = {}
        """Alert family -> group id (what the alert tracker's arrays are indexed by)."""
        self.group_keys: list[str] = []
        self._new: list[SeriesMeta] = []

    def __len__(self) -> int:
        return len(self.metas)

    @property
    def thresholds(self) -> np.ndarray:
        return self._thresholds[: len(self.metas)]

    @property
    def directions(self) -> np.ndarray:
        return self._directions[: len(self.metas)]

    @property
    def groups(self) -> np.ndarray:
        """The alert group id of every series."""
        return self._groups[: len(self.metas)]

    def ids(self, keys: list[str], describe: Callable[[int, str], SeriesMeta | None]) -> np.ndarray:
        """Ids of ``keys`` (-1 for excluded ones); ``describe(i, key)`` builds the metadata of
        a key never seen (``i`` is its position in ``keys``), or returns None to skip it."""
        out = np.empty(len(keys), np.int64)
        known = self._ids
        for i, key in enumerate(keys):
            sid = known.get(key)
            if sid is None:
                sid = self._add(key, describe(i, key))
            out[i] = sid
        return out

    def _add(self, key: str, meta: SeriesMeta | None) -> int:
        if meta is None:
            self._ids[key] = -1
            return -1
        # Patterns match the series name, or "name|entity name" to single out one entity.
        threshold, seasonality, excluded = self.config.settings_for(
            meta.name, f"{meta.name}|{meta.entity.name}"
        )
        sid = len(self.metas)
        meta = msgspec.structs.replace(
            meta, id=sid, key=key, threshold=threshold, seasonality=seasonality, excluded=excluded
        )
        meta = msgspec.structs.replace(meta, group=alert_group(meta))
        with self.lock:
            if sid >= self._thresholds.size:
                self._thresholds = np.resize(self._thresholds, sid * 2)
                self._directions = np.resize(self._directions, sid * 2)
                self._groups = np.resize(self._groups, sid * 2)
            gid = self.group_ids.get(meta.group)
            if gid is None:
                gid = self.group_ids[meta.group] = len(self.group_keys)
                self.group_keys.append(meta.group)
            self._thresholds[sid] = threshold
            self._directions[sid] = meta.direction
            self._groups[sid] = gid
            self.metas.append(meta)
            self._new.append(meta)
        self._ids[key] = -1 if excluded else sid
        return self._ids[key]

    def take_new(self) -> list[SeriesMeta]:
        """Series added since the last call (to configure the detector and store them)."""
        with self.lock:
            new, self._new = self._new, []
        return new
