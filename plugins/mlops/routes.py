"""``/api/v1/mlops/``: models, drift, performance; references and labels in."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
from litestar import get, post
from litestar.exceptions import ClientException, NotFoundException, ServiceUnavailableException
from litestar.params import Parameter

from opstrata.plugins.mlops.consumer import MLOps
from opstrata.plugins.mlops.records import Extractor, Labels
from opstrata.plugins.mlops.reference import extract_stored, from_dataset, from_rows, read_dataset
from opstrata.plugins.mlops.results import ModelInfo, QualityWindow, WindowDrift

__all__ = ["build_routes"]

Version = Annotated[
    str | None, Parameter(description="One model version; all versions when absent.")
]


class DriftReport(msgspec.Struct, frozen=True):
    live: list[WindowDrift]
    """The open window of each version, evaluated now (not stored, no alerts)."""
    windows: list[WindowDrift]
    """Closed windows, newest first."""


class RangeReference(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    start: int | str
    """RFC 3339 or Unix nanoseconds."""
    end: int | str
    version: str = ""


class ReferenceInstalled(msgspec.Struct, frozen=True):
    model: str
    version: str
    source: str
    rows: int
    columns: dict[str, str]
    """Column -> ``<role>/<kind>``."""
    model_versions_updated: int


class LabelIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    prediction_id: str
    label: str | int | float | bool
    time_unix_nano: int = 0


class LabelsIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    labels: list[LabelIn]


class LabelsAccepted(msgspec.Struct, frozen=True):
    accepted: int


def _time(value: int | str, name: str) -> int:
    if isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1e9)
    except ValueError as exc:
        raise ClientException(detail=f"{name}: not RFC 3339 or Unix nanoseconds") from exc


def build_routes(mlops: MLOps) -> list[object]:
    def quality():
        if mlops.quality is None:
            raise ServiceUnavailableException(detail="quality tracking needs the DuckDB store")
        return mlops.quality

    @get("/models", sync_to_thread=False)
    def models() -> list[ModelInfo]:
        """Model versions seen, with their columns, reference and drift state."""
        return mlops.monitor.infos()

    @get("/models/{name:str}/drift", sync_to_thread=True)
    def drift(
        name: str,
        version: Version = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 50,
    ) -> DriftReport:
        """Per feature and window: test, statistic, p-value or distance, threshold, verdict."""
        live = mlops.monitor.live(name, version)
        stored = mlops.stored_drift(name, version, limit)
        if not live and not stored and not any(i.model == name for i in mlops.monitor.infos()):
            raise NotFoundException(detail=f"model {name} not seen")
        return DriftReport(live=live, windows=stored)

    @get("/models/{name:str}/performance", sync_to_thread=True)
    def performance(name: str, version: Version = None) -> list[QualityWindow]:
        """Quality per window from labelled predictions."""
        return quality().performance(name, version)

    @post("/labels", sync_to_thread=True, status_code=200)
    def labels(data: LabelsIn) -> LabelsAccepted:
        """Late labels, joined to predictions by ``prediction_id``."""
        quality()
        if not data.labels:
            return LabelsAccepted(0)
        batch = Labels(
            pa.array([x.prediction_id for x in data.labels], pa.string()),
            pa.array([_label_text(x.label) for x in data.labels], pa.string()),
            np.array([x.time_unix_nano for x in data.labels], dtype=np.int64),
        )
        return LabelsAccepted(mlops.add_labels([batch]))

    @post("/reference", sync_to_thread=True, status_code=200)
    def reference(
        body: bytes,
        headers: dict[str, str],
        model: str | None = None,
        version: str = "",
        format: str = "",
        predictions: str = "",
        categorical: str = "",
        ignore: str = "",
    ) -> ReferenceInstalled:
        """A time range (JSON body) or a dataset (CSV or Parquet body, ``?model=``)."""
        content_type = headers.get("content-type", "")
        if content_type.startswith("application/json"):
            try:
                spec = msgspec.json.decode(body, type=RangeReference)
            except msgspec.ValidationError as exc:
                raise ClientException(detail=str(exc)) from exc
            start, end = _time(spec.start, "start"), _time(spec.end, "end")
            if mlops.store is None:
                raise ServiceUnavailableException(detail="the MLOps consumer has not started")
            try:
                rows = extract_stored(mlops.store, start, end, Extractor())
                columns = from_rows(rows, spec.model, spec.version, mlops.config)
            except ValueError as exc:
                raise ClientException(detail=str(exc)) from exc
            if not columns:
                raise ClientException(detail=f"no telemetry of {spec.model} in that range")
            model_name, model_version, source = spec.model, spec.version, "range"
        else:
            if not model:
                raise ClientException(detail="a dataset reference needs ?model=")
            fmt = format or ("parquet" if "parquet" in content_type else "csv")
            try:
                table = read_dataset(body, fmt)
                columns = from_dataset(
                    table, mlops.config, _names(predictions), _names(categorical), _names(ignore)
                )
            except ValueError as exc:
                raise ClientException(detail=str(exc)) from exc
            model_name, model_version, source = model, version, "dataset"
        updated = mlops.monitor.set_reference(model_name, model_version, source, columns)
        mlops.save_now()  # a posted reference is no batch: nothing would bring it back
        return ReferenceInstalled(
            model=model_name,
            version=model_version,
            source=source,
            rows=max((s.n for _, s in columns.values()), default=0),
            columns={n: f"{role}/{s.kind}" for n, (role, s) in sorted(columns.items())},
            model_versions_updated=updated,
        )

    @get("/saves", sync_to_thread=False)
    def saves() -> dict[str, Any]:
        """The drift state's saves written and failed (a failing save holds the offset)."""
        return mlops.saves_status()

    return [models, drift, performance, labels, reference, saves]


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _label_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)
