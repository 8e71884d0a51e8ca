"""``/api/v1/aiops/``: watched series, anomalies, log templates."""

from __future__ import annotations

import json
from typing import Any

from litestar import get
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from opstrata.plugins.aiops import consumers
from opstrata.runtime import Runtime

__all__ = ["ROUTES"]


def _series_row(family: str, meta: Any, scorer: Any) -> dict[str, Any]:
    det = scorer.detector
    sid = meta.id
    known = sid < getattr(det, "size", 0)
    return {
        "id": sid,
        "family": family,
        "key": meta.key,
        "name": meta.name,
        "kind": meta.kind,
        "entity": {"kind": meta.entity.kind, "name": meta.entity.name},
        "resource": meta.resource,
        "labels": meta.labels,
        "unit": meta.unit,
        "excluded": meta.excluded,
        "threshold": meta.threshold,
        "points": int(det.n[sid]) if known else 0,
        "score": float(det.score[sid]) if known else 0.0,
        "value": float(det.last_value[sid]) if known else None,
        "expected": float(det.expected[sid]) if known else None,
        "last_unix_nano": int(det.last_t[sid]) if known else None,
        "firing": _firing(scorer, sid),
    }


def _firing(scorer: Any, sid: int) -> bool:
    """Whether the alert group of series ``sid`` is firing (alerts are raised per group)."""
    groups = scorer.registry.groups
    if sid >= groups.size:
        return False
    gid = int(groups[sid])
    return bool(gid < scorer.tracker.firing.size and scorer.tracker.firing[gid])


@get("/series", sync_to_thread=False)
def series(
    family: str | None = None,
    entity: str | None = Parameter(default=None, description="entity name"),
    name: str | None = None,
    min_score: float = 0.0,
    limit: int = Parameter(default=100, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    """Watched series, highest current score first."""
    with consumers.LOCK:
        families = dict(consumers.FAMILIES)
    rows = []
    for fam, scorer in families.items():
        if family and fam != family:
            continue
        with scorer.registry.lock:
            metas = list(scorer.registry.metas)
        for meta in metas:
            if entity and meta.entity.name != entity:
                continue
            if name and meta.name != name:
                continue
            row = _series_row(fam, meta, scorer)
            if row["score"] >= min_score:
                rows.append(row)
    rows.sort(key=lambda r: (-r["score"], r["family"], r["id"]))
    return rows[:limit]


@get("/series/{family:str}/{series_id:int}/points", sync_to_thread=True)
def points(
    runtime: Runtime,
    family: str,
    series_id: int,
    start: int = 0,
    end: int = 2**63 - 1,
    limit: int = Parameter(default=10_000, ge=1, le=1_000_000),
) -> dict[str, Any]:
    """Scored points of one series (event time, value, forecast, score, label)."""
    with consumers.LOCK:
        scorer = consumers.FAMILIES.get(family)
    if scorer is None or series_id >= len(scorer.registry.metas):
        raise NotFoundException(detail=f"no series {family}/{series_id}")
    reader = getattr(runtime.store, "reader", None)
    rows: list[tuple] = []
    if reader is not None:
        rows = (
            reader()
            .execute(
                'SELECT "TimeUnix", "Value", "Expected", "Score", "Label" FROM aiops_points '
                'WHERE "Family" = ? AND "SeriesId" = ? AND "TimeUnix" >= ? AND "TimeUnix" < ? '
                'ORDER BY "TimeUnix" LIMIT ?',
                [family, series_id, start, end, limit],
            )
            .fetchall()
        )
    meta = scorer.registry.metas[series_id]
    return {
        "series": _series_row(family, meta, scorer),
        "points": [
            {"time_unix_nano": t, "value": v, "expected": e, "score": s, "label": lab}
            for t, v, e, s, lab in rows
        ],
    }


@get("/anomalies", sync_to_thread=False)
def anomalies(
    status: str | None = Parameter(default=None, description="firing or resolved"),
    limit: int = Parameter(default=100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Anomaly episodes of the watched series, newest first (log_silence and
    new_log_template alerts are in /api/v1/alerts)."""
    with consumers.LOCK:
        families = dict(consumers.FAMILIES)
    out = []
    for fam, scorer in families.items():
        with scorer.tracker.lock:
            for episode in scorer.tracker.recent:
                if status and episode.get("status") != status:
                    continue
                out.append({"family": fam, **episode})
    out.sort(key=lambda e: -int(e.get("onset_unix_nano") or 0))
    return out[:limit]


@get("/log-templates", sync_to_thread=True)
def log_templates(
    runtime: Runtime,
    start: int = 0,
    end: int = 2**63 - 1,
    bucket_seconds: int = Parameter(default=60, ge=1),
    service: str | None = None,
    limit: int = Parameter(default=100, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    """Log templates with their record counts per time bucket (event time), most frequent
    first."""
    reader = getattr(runtime.store, "reader", None)
    if reader is None:
        return []
    cursor = reader()
    where = 'WHERE epoch_ns(o."Timestamp") >= ? AND epoch_ns(o."Timestamp") < ?'
    params: list[Any] = [start, end]
    if service is not None:
        where += ' AND o."ServiceName" = ?'
        params.append(service)
    bucket_ns = bucket_seconds * 10**9
    rows = cursor.execute(
        f'SELECT o."TemplateId", t."Template", t."FirstSeenUnixNano", '
        f'(epoch_ns(o."Timestamp") // ?) * ? AS b, count(*) FROM aiops_log_template_of o '
        f'LEFT JOIN aiops_log_templates t USING ("TemplateId") {where} '
        f"GROUP BY ALL ORDER BY 1, 4",
        [bucket_ns, bucket_ns, *params],
    ).fetchall()
    by_id: dict[int, dict[str, Any]] = {}
    for template_id, template, first_seen, bucket, count in rows:
        entry = by_id.setdefault(
            template_id,
            {
                "template_id": template_id,
                "template": template or "",
                "first_seen_unix_nano": first_seen,
                "count": 0,
                "counts": [],
            },
        )
        entry["count"] += count
        entry["counts"].append({"bucket_unix_nano": bucket, "count": count})
    result = sorted(by_id.values(), key=lambda e: -e["count"])
    return json.loads(json.dumps(result[:limit]))


@get("/saves", sync_to_thread=False)
def saves() -> dict[str, dict[str, Any]]:
    """Per consumer: the state saves written and failed (a failing save holds the offset)."""
    with consumers.LOCK:
        files = dict(consumers.STATE_FILES)
    return {family: files[family].status() for family in sorted(files)}


ROUTES = [series, points, anomalies, log_templates, saves]
