"""Model quality once labels arrive: predictions wait for their labels in DuckDB, joined by
prediction id; metrics per window; decay against the first labelled window.

Tables (in the store's DuckDB, written as Arrow batches):

- ``mlops_predictions(model, version, prediction_id, time_unix_nano, prediction, score)``
- ``mlops_labels(prediction_id, label, time_unix_nano)`` — the latest label of an id counts.

Predictions older than ``label_horizon_seconds`` (event time) are deleted as time moves on.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from opstrata.alerts import AlertEvent, Entity, Evidence, Layer, Severity
from opstrata.plugins.mlops.config import MLOpsConfig
from opstrata.plugins.mlops.drift_alerts import entity_name
from opstrata.plugins.mlops.records import Labels, ModelRows
from opstrata.plugins.mlops.results import QualityWindow

__all__ = ["QualityTracker", "classification_metrics", "regression_metrics"]

_DDL = (
    "CREATE TABLE IF NOT EXISTS mlops_predictions (model VARCHAR, version VARCHAR, "
    "prediction_id VARCHAR, time_unix_nano BIGINT, prediction VARCHAR, score DOUBLE)",
    "CREATE TABLE IF NOT EXISTS mlops_labels (prediction_id VARCHAR, label VARCHAR, "
    "time_unix_nano BIGINT)",
)
_PREDICTIONS = pa.schema(
    [
        ("model", pa.string()),
        ("version", pa.string()),
        ("prediction_id", pa.string()),
        ("time_unix_nano", pa.int64()),
        ("prediction", pa.string()),
        ("score", pa.float64()),
    ]
)
_LABELS = pa.schema(
    [("prediction_id", pa.string()), ("label", pa.string()), ("time_unix_nano", pa.int64())]
)
_POSITIVE = ("1", "true", "yes", "positive")

log = logging.getLogger(__name__)


class QualityTracker:
    def __init__(
        self,
        config: MLOpsConfig,
        cursor: Callable[[], Any],
        emit: Callable[[AlertEvent], None] | None = None,
        resource_of: Callable[[str, str], dict[str, str]] | None = None,
    ) -> None:
        self.config = config
        self.cursor = cursor
        self.emit = emit or (lambda event: None)
        self.resource_of = resource_of or (lambda model, version: {})
        self.lock = threading.Lock()
        self.firing: set[tuple[str, str]] = set()
        self.latest_ns = 0
        self._writes = 0
        for statement in _DDL:
            self.cursor().execute(statement)

    # -- writing ------------------------------------------------------------------------------

    def prediction_rows(self, rows: ModelRows) -> pa.Table | None:
        """The predictions of ``rows`` to store (None: none with an id); moves event time."""
        if rows.prediction_ids is None or rows.predictions is None:
            return None
        self.latest_ns = max(self.latest_ns, int(rows.times.max()))
        ids = rows.prediction_ids
        valid = pc.and_(pc.is_valid(ids), pc.is_valid(rows.predictions))
        if not pc.any(valid).as_py():
            return None
        n = len(ids)
        scores = rows.scores if rows.scores is not None else pa.nulls(n, pa.string())
        return pa.table(
            [
                pa.array([rows.model] * n, pa.string()),
                pa.array([rows.version] * n, pa.string()),
                ids.cast(pa.string()),
                pa.array(rows.times, pa.int64()),
                rows.predictions.cast(pa.string()),
                _floats(scores),
            ],
            schema=_PREDICTIONS,
        ).filter(valid)

    @staticmethod
    def label_rows(labels: Labels) -> pa.Table:
        return pa.table(
            [
                labels.ids.cast(pa.string()),
                labels.labels.cast(pa.string()),
                pa.array(labels.times, pa.int64()),
            ],
            schema=_LABELS,
        )

    def add_labels(self, labels: Labels) -> list[tuple[str, str]]:
        """Store labels at once (posted through the API); returns the model versions whose
        predictions they label."""
        table = self.label_rows(labels)
        if table.num_rows == 0:
            return []
        self.insert("mlops_labels", table)
        self.wrote()
        return self.touched(table)

    def touched(self, labels: pa.Table) -> list[tuple[str, str]]:
        """The model versions whose stored predictions ``labels`` label."""
        cur = self.cursor()
        cur.register("mlops_new_labels", labels)
        try:
            rows = cur.execute(
                "SELECT DISTINCT p.model, p.version FROM mlops_predictions p "
                "JOIN mlops_new_labels n USING (prediction_id)"
            ).fetchall()
        finally:
            cur.unregister("mlops_new_labels")
        return [(m, v) for m, v in rows]

    def insert(self, name: str, table: pa.Table) -> None:
        """Insert through this thread's cursor (in its transaction, if one is open)."""
        cur = self.cursor()
        view = f"{name}_batch"
        cur.register(view, table)
        try:
            cur.execute(f"INSERT INTO {name} SELECT * FROM {view}")
        finally:
            cur.unregister(view)

    def wrote(self) -> None:
        """A write is committed: every 256, old predictions and labels go. Never inside a
        batch's transaction: a DELETE there could conflict with one from another thread and
        roll the batch's rows back."""
        self._writes += 1
        if self._writes % 256 == 0:
            self.prune()

    def prune(self) -> None:
        cutoff = self.latest_ns - int(self.config.label_horizon_seconds * 1e9)
        if cutoff <= 0:
            return
        try:
            self.cursor().execute(
                "DELETE FROM mlops_predictions WHERE time_unix_nano < ?", [cutoff]
            )
            self.cursor().execute("DELETE FROM mlops_labels WHERE time_unix_nano < ?", [cutoff])
        except duckdb.Error as exc:  # a conflict with a prune on another thread: next time
            log.info("mlops: old predictions not pruned this time (%s)", exc)

    # -- reading ------------------------------------------------------------------------------

    def joined(self, model: str, version: str | None) -> pa.Table:
        """Labelled predictions of a model (one version, or all): version, time, prediction,
        score, label — one row per prediction id, its latest label."""
        return (
            self.cursor()
            .execute(
                "WITH p AS (SELECT version, prediction_id, min(time_unix_nano) AS t, "
                "any_value(prediction) AS prediction, any_value(score) AS score "
                "FROM mlops_predictions WHERE model = ? AND (? IS NULL OR version = ?) "
                "GROUP BY version, prediction_id), "
                "l AS (SELECT prediction_id, arg_max(label, time_unix_nano) AS label "
                "FROM mlops_labels GROUP BY prediction_id) "
                "SELECT p.version, p.t, p.prediction, p.score, l.label "
                "FROM p JOIN l USING (prediction_id) ORDER BY p.version, p.t",
                [model, version, version],
            )
            .to_arrow_table()
        )

    def performance(self, model: str, version: str | None = None) -> list[QualityWindow]:
        data = self.joined(model, version)
        if data.num_rows == 0:
            return []
        window = int(self.config.window_seconds * 1e9)
        out: list[QualityWindow] = []
        versions = data.column("version").to_pylist()
        for ver in sorted(set(versions)):
            part = data.filter(pc.equal(data.column("version"), ver))
            times = part.column("t").to_numpy()
            preds = part.column("prediction").to_pylist()
            labels = part.column("label").to_pylist()
            scores = part.column("score").to_numpy(zero_copy_only=False)
            task = self.config.tasks.get(model) or infer_task(preds, labels)
            slots = times // window
            baseline: float | None = None
            baseline_n = 0
            for slot in np.unique(slots).tolist():
                pick = np.flatnonzero(slots == slot)
                p = [preds[i] for i in pick]
                y = [labels[i] for i in pick]
                if task == "regression":
                    metrics = regression_metrics(p, y)
                    key = metrics.get("rmse")
                else:
                    metrics = classification_metrics(p, y, scores[pick], self.config.positive_label)
                    key = metrics.get("accuracy")
                decayed = False
                if key is not None and pick.size >= self.config.min_labels:
                    if baseline is None:
                        baseline, baseline_n = key, int(pick.size)
                    else:
                        decayed = _worse(
                            task, key, int(pick.size), baseline, baseline_n, self.config
                        )
                out.append(
                    QualityWindow(
                        model=model,
                        version=ver,
                        start_unix_nano=slot * window,
                        end_unix_nano=(slot + 1) * window,
                        task=task,
                        labelled=int(pick.size),
                        decayed=decayed,
                        **metrics,
                    )
                )
        return out

    def check_decay(self, model: str, version: str, settle: bool = False) -> None:
        """Alert (or resolve) on the latest window with enough labels. ``settle``: emit the
        verdict even when :attr:`firing` says it is unchanged (after a replay, when what was
        emitted before the crash is not known)."""
        with self.lock:
            windows = [
                w for w in self.performance(model, version) if w.labelled >= self.config.min_labels
            ]
            if len(windows) < 2:
                return
            first, latest = windows[0], windows[-1]
            key = (model, version)
            metric = "rmse" if latest.task == "regression" else "accuracy"
            observed, expected = getattr(latest, metric), getattr(first, metric)
            if latest.decayed:
                self.firing.add(key)
            elif key in self.firing or settle:
                self.firing.discard(key)
            else:
                return
            self.emit(
                AlertEvent(
                    time_unix_nano=latest.end_unix_nano - 1,
                    kind="quality_decay",
                    layer=Layer.MLOPS,
                    entity=Entity("model", entity_name(model, version)),
                    summary=(
                        f"{metric} {observed:.3g} against {expected:.3g} in the first window"
                        if latest.decayed
                        else f"{metric} {observed:.3g}, back within tolerance"
                    ),
                    severity=Severity.ERROR,
                    score=min(1.0, abs(observed - expected) / max(abs(expected), 1e-9)),
                    resource=self.resource_of(model, version),
                    evidence=Evidence(
                        series=f"{metric}{{model={model},version={version}}}",
                        observed=observed,
                        expected=expected,
                        details={
                            "window_start_unix_nano": latest.start_unix_nano,
                            "labelled": latest.labelled,
                            "tolerance": self.config.decay_tolerance,
                        },
                    ),
                    resolved=not latest.decayed,
                )
            )


def _floats(values: pa.Array) -> pa.Array:
    if pa.types.is_floating(values.type):
        return values
    try:
        return values.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.nulls(len(values), pa.float64())


def _worse(
    task: str, value: float, n: int, baseline: float, baseline_n: int, config: MLOpsConfig
) -> bool:
    """Worse than the first window by more than the tolerance, and by more than the two
    windows' sampling error: a first window of 30 labels that happened to score 100 % is not
    a standard every later window must meet."""
    if task == "regression":
        if not value > baseline * (1 + config.decay_tolerance):
            return False
        if baseline <= 0:
            return True
        # Mean squared errors of two samples: their ratio is F-distributed when nothing changed.
        p = float(stats.f.sf((value / baseline) ** 2, n, baseline_n))
    else:
        if not value < baseline * (1 - config.decay_tolerance):
            return False
        # One-sided two-proportion z-test of the accuracies.
        pooled = (value * n + baseline * baseline_n) / (n + baseline_n)
        spread = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n + 1 / baseline_n))
        p = float(stats.norm.sf((baseline - value) / spread))
    return p <= config.decay_p_value


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def infer_task(predictions: list[str], labels: list[str]) -> str:
    """Regression when predictions and labels are numbers, not all integers or many values."""
    values = [_number(x) for x in predictions + labels]
    if any(v is None for v in values):
        return "classification"
    floats = [v for v in values if v is not None]
    if any(v != int(v) for v in floats) or len(set(floats)) > 20:
        return "regression"
    return "classification"


def regression_metrics(predictions: list[str], labels: list[str]) -> dict[str, float]:
    pairs = [(_number(p), _number(y)) for p, y in zip(predictions, labels, strict=True)]
    ok = [(p, y) for p, y in pairs if p is not None and y is not None]
    if not ok:
        return {}
    err = np.array([p - y for p, y in ok])
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


def _canon(value: str) -> str:
    number = _number(value)
    if number is not None and number == int(number):
        return str(int(number))
    return value.strip().lower() if value.strip().lower() in ("true", "false") else value


def classification_metrics(
    predictions: list[str], labels: list[str], scores: np.ndarray, positive: str = ""
) -> dict[str, float]:
    """Accuracy; precision, recall, F1 of the positive class (binary) or macro-averaged;
    ROC AUC for binary classifiers that report a score. The positive class: ``positive``, else
    one named 1/true/yes/positive, else the class predicted with the higher mean score, else
    the larger class."""
    p = [_canon(x) for x in predictions]
    y = [_canon(x) for x in labels]
    classes = sorted(set(p) | set(y))
    pred, true = np.array(p, dtype=object), np.array(y, dtype=object)
    out: dict[str, float] = {"accuracy": float(np.mean(pred == true))}
    if len(classes) <= 2:
        pos = positive or next((c for c in classes if c.lower() in _POSITIVE), "")
        if not pos and len(classes) == 2 and scores.size and np.isfinite(scores).all():
            # The score is the positive class's: the class predicted with the higher scores.
            means = [scores[pred == c].mean() if np.any(pred == c) else -np.inf for c in classes]
            pos = classes[int(np.argmax(means))]
        targets = [pos or classes[-1]]
    else:
        targets = classes
    precisions, recalls, f1s = [], [], []
    for c in targets:
        tp = float(np.sum((pred == c) & (true == c)))
        fp = float(np.sum((pred == c) & (true != c)))
        fn = float(np.sum((pred != c) & (true == c)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    out["precision"] = float(np.mean(precisions))
    out["recall"] = float(np.mean(recalls))
    out["f1"] = float(np.mean(f1s))
    if len(classes) == 2 and np.isfinite(scores).all() and scores.size:
        positive_class = targets[0]
        is_pos = true == positive_class
        n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
        if n_pos and n_neg:
            ranks = _average_ranks(scores)
            out["roc_auc"] = float(
                (ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
            )
    return out


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged (the Mann-Whitney form of ROC AUC)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size)
    sorted_x = x[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_x[1:] != sorted_x[:-1])))
    ends = np.concatenate((starts[1:], [x.size]))
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2
    return ranks
