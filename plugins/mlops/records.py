"""What a model server sends, turned into columns per model: features, predictions, labels.

Two inputs (documented in ``docs/mlops.md``):

- **Attributes** of spans or log records: ``ml.model.name``, ``ml.model.version``,
  ``ml.feature.<name>``, ``ml.prediction``, ``ml.prediction.score``, ``ml.prediction.id``;
  a record with ``ml.prediction.id`` and ``ml.label`` is a (late) label.
- **BentoML's OTLP monitoring logs**: one log record per inference row whose body is a map of
  the row's columns plus ``timestamp``, ``request_id`` and ``bento_meta`` (``bento_name``,
  ``bento_version``, ``monitor_name`` and, when exported, ``schema``: per column its ``name``,
  ``role`` — ``feature``, ``prediction``, ``target`` — and ``type`` — ``numerical``,
  ``categorical``). BentoML's newer ``OpenTelemetryMonitor`` puts ``schema`` beside
  ``bento_meta``; both are read. Its resource's ``service.name`` is
  ``<bento_name>:<monitor_name>``.

Everything is columnar: map columns are flattened once and searched by dictionary code; bodies
are decoded by one msgspec call per service and batch (row by row only when values do not fit
the schema).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.schema import Table

__all__ = ["Column", "Extractor", "Labels", "ModelRows", "Records"]

MODEL_KEY = "ml.model.name"
VERSION_KEY = "ml.model.version"
FEATURE_PREFIX = "ml.feature."
PREDICTION_KEY = "ml.prediction"
SCORE_KEY = "ml.prediction.score"
ID_KEY = "ml.prediction.id"
LABEL_KEY = "ml.label"
PREDICTION_COLUMN = "prediction"
SCORE_COLUMN = "prediction.score"
BENTO_RESERVED = frozenset({"timestamp", "request_id", "bento_meta", "schema"})
UNVERSIONED = frozenset({"", "not available", "None"})
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


@dataclass
class Column:
    role: str
    """``feature`` or ``prediction``."""
    kind: str
    """``numerical`` or ``categorical``: as declared (BentoML) or inferred (attributes)."""
    times: np.ndarray
    values: np.ndarray | pa.Array
    """float64 numpy for numerical, an Arrow string array for categorical."""


@dataclass
class ModelRows:
    model: str
    version: str
    resource: dict[str, str]
    times: np.ndarray
    columns: dict[str, Column] = field(default_factory=dict)
    prediction_ids: pa.Array | None = None
    predictions: pa.Array | None = None
    """The prediction per row (string), for joining labels; aligned with ``times``."""
    scores: pa.Array | None = None


@dataclass
class Labels:
    ids: pa.Array
    labels: pa.Array
    times: np.ndarray


@dataclass
class Records:
    models: list[ModelRows] = field(default_factory=list)
    labels: list[Labels] = field(default_factory=list)
    skipped: int = 0
    """Rows that looked like model telemetry but could not be read (no schema yet, bad body)."""


@dataclass
class _Bento:
    model: str
    version: str
    schema: dict[str, dict[str, str]]


class Extractor:
    """Reads model rows out of committed batches; remembers BentoML schemas per service."""

    def __init__(self, numeric_hint: dict[str, bool] | None = None) -> None:
        self.bento: dict[str, _Bento] = {}
        self.kinds: dict[tuple[str, str], str] = {}
        """(model, column) -> kind, fixed the first time an attribute column is seen."""

    def extract(self, table: Table, batch: pa.RecordBatch) -> Records:
        out = Records()
        if batch.num_rows == 0:
            return out
        times = batch.column("Timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
        attrs_name = "SpanAttributes" if table is Table.TRACES else "LogAttributes"
        self._attributes(batch, batch.column(attrs_name), times, out)
        if table is Table.LOGS:
            self._bentoml(batch, times, out)
        return out

    # -- the attribute convention -------------------------------------------------------------

    def _attributes(
        self, batch: pa.RecordBatch, attrs: pa.Array, times: np.ndarray, out: Records
    ) -> None:
        # One pass over the flattened map: keys dictionary-encoded once, then every lookup is
        # an integer comparison in numpy (pc.map_lookup costs microseconds per row).
        flat = _FlatMap(attrs)
        label_rows, label_values = flat.lookup(LABEL_KEY)
        if label_rows.size:
            id_values = flat.aligned(ID_KEY, label_rows)
            ok = np.asarray(pc.is_valid(id_values))
            if ok.any():
                mask = pa.array(ok)
                out.labels.append(
                    Labels(id_values.filter(mask), label_values.filter(mask), times[label_rows[ok]])
                )
        model_rows, model_values = flat.lookup(MODEL_KEY)
        if model_rows.size == 0:
            return
        versions = pc.fill_null(flat.aligned(VERSION_KEY, model_rows), "")
        keys = pc.binary_join_element_wise(model_values, versions, "\x00").dictionary_encode()
        groups = np.full(len(attrs), -1)
        groups[model_rows] = np.asarray(keys.indices)
        resources = batch.column("ResourceAttributes")
        features = [k for k in flat.names if k.startswith(FEATURE_PREFIX)]
        for g, key in enumerate(keys.dictionary.to_pylist()):
            name, _, ver = key.partition("\x00")
            rows = np.flatnonzero(groups == g)
            entry = ModelRows(
                model=name,
                version="" if ver in UNVERSIONED else ver,
                resource=_resource(resources, int(rows[0])),
                times=times[rows],
            )
            for feature in features:
                f_rows, f_values = flat.lookup(feature)
                pick = groups[f_rows] == g
                if pick.any():
                    column = feature.removeprefix(FEATURE_PREFIX)
                    entry.columns[column] = self._column(
                        name,
                        column,
                        "feature",
                        times[f_rows[pick]],
                        f_values.filter(pa.array(pick)),
                    )
            for attr, column in ((PREDICTION_KEY, PREDICTION_COLUMN), (SCORE_KEY, SCORE_COLUMN)):
                values = flat.aligned(attr, rows)
                valid = np.asarray(pc.is_valid(values))
                if valid.any():
                    entry.columns[column] = self._column(
                        name,
                        column,
                        "prediction",
                        entry.times[valid],
                        values.filter(pa.array(valid)),
                    )
                    if column == PREDICTION_COLUMN:
                        entry.predictions = values
                    else:
                        entry.scores = values
            entry.prediction_ids = flat.aligned(ID_KEY, rows)
            out.models.append(entry)

    def _column(
        self, model: str, name: str, role: str, times: np.ndarray, values: pa.Array
    ) -> Column:
        kind = self.kinds.get((model, name))
        if kind is None:
            kind = "numerical" if _all_numbers(values) else "categorical"
            self.kinds[(model, name)] = kind
        if kind == "numerical":
            return Column(role, kind, times, _to_float(values))
        return Column(role, kind, times, values)

    # -- BentoML monitoring logs --------------------------------------------------------------

    def _bentoml(self, batch: pa.RecordBatch, times: np.ndarray, out: Records) -> None:
        body = batch.column("Body")
        candidate = pc.fill_null(pc.match_substring(body, '"request_id"'), False)
        if not pc.any(candidate).as_py():
            return
        rows = np.flatnonzero(np.asarray(candidate))
        services = batch.column("ServiceName").take(pa.array(rows))
        resources = batch.column("ResourceAttributes").take(pa.array(rows))
        encoded = services.dictionary_encode()
        groups = np.asarray(encoded.indices)
        for g, service in enumerate(encoded.dictionary.to_pylist()):
            local = np.flatnonzero(groups == g)
            bodies = body.take(pa.array(rows[local]))
            bento = self._bento_meta(service, bodies)
            table = None if bento is None else _read_bodies(bodies, bento.schema)
            if bento is None or table is None:
                out.skipped += len(local)
                continue
            row_times = times[rows[local]]
            entry = ModelRows(
                model=bento.model,
                version=bento.version,
                resource=_resource(resources, int(local[0])),
                times=row_times,
            )
            if "request_id" in table.column_names:
                entry.prediction_ids = table.column("request_id").cast(pa.string()).combine_chunks()
            for name, spec in bento.schema.items():
                if name not in table.column_names or name in BENTO_RESERVED:
                    continue
                role, kind = spec.get("role", "feature"), spec.get("type", "numerical")
                values = table.column(name).combine_chunks()
                if kind not in ("numerical", "categorical") or pa.types.is_nested(values.type):
                    continue  # numerical_sequence and nested values are not drift-tested
                if role == "target":
                    if entry.prediction_ids is not None:
                        labels = values.cast(pa.string())
                        ok = np.asarray(
                            pc.and_(pc.is_valid(labels), pc.is_valid(entry.prediction_ids))
                        )
                        out.labels.append(
                            Labels(
                                entry.prediction_ids.filter(ok), labels.filter(ok), row_times[ok]
                            )
                        )
                    continue
                role = "prediction" if role == "prediction" else "feature"
                if role == "prediction" and entry.predictions is None:
                    entry.predictions = values.cast(pa.string())
                if kind == "numerical":
                    floats = _to_float(values)
                    entry.columns[name] = Column(role, kind, row_times, floats)
                else:
                    entry.columns[name] = Column(role, kind, row_times, _to_str(values))
            out.models.append(entry)

    def _bento_meta(self, service: str, bodies: pa.Array) -> _Bento | None:
        """Model, version and schema of a monitor: from the first body that carries them
        (decoded alone), remembered per service (BentoML may send them only now and then)."""
        known = self.bento.get(service)
        meta: dict | None = None
        schema: dict = {}
        # Only the first carrying body is needed: look at the first rows before all of them.
        carrying = np.zeros(0, dtype=np.int64)
        for head in (bodies.slice(0, 64), bodies):
            found = pc.fill_null(pc.match_substring(head, '"bento_meta"'), False)
            carrying = np.flatnonzero(np.asarray(found))
            if carrying.size:
                break
        if carrying.size:
            try:
                first = msgspec.json.decode(bodies[int(carrying[0])].as_py())
            except msgspec.DecodeError:
                first = {}
            if isinstance(first, dict) and isinstance(first.get("bento_meta"), dict):
                meta = first["bento_meta"]
                schema = first.get("schema") or meta.get("schema") or {}
        if meta is None and known is None:
            return None  # no schema seen yet for this monitor
        if meta is not None:
            model = str(meta.get("monitor_name") or service.partition(":")[2] or service)
            version = str(meta.get("bento_version") or "")
            known = _Bento(
                model,
                "" if version in UNVERSIONED else version,
                schema if isinstance(schema, dict) and schema else (known.schema if known else {}),
            )
            self.bento[service] = known
        assert known is not None
        return known if known.schema else None


class _FlatMap:
    """A ``map<string, string>`` column flattened once: key lookups by integer code."""

    def __init__(self, attrs: pa.Array) -> None:
        offsets = np.asarray(attrs.offsets)
        start, stop = int(offsets[0]), int(offsets[-1])
        # .keys/.items are the whole children: cut them to this (possibly sliced) array.
        keys = attrs.keys.slice(start, stop - start)
        self.items = attrs.items.slice(start, stop - start)
        self.parents = np.repeat(np.arange(len(attrs)), np.diff(offsets))
        encoded = keys.dictionary_encode()
        self.codes = np.asarray(encoded.indices.fill_null(-1))
        self.names: list[str] = encoded.dictionary.to_pylist()
        self._code = {name: i for i, name in enumerate(self.names)}
        self.size = len(attrs)

    def lookup(self, key: str) -> tuple[np.ndarray, pa.Array]:
        """Rows that have ``key`` (ascending) and its values there (keys are unique per row)."""
        code = self._code.get(key)
        if code is None:
            return np.zeros(0, dtype=np.int64), pa.array([], pa.string())
        mask = self.codes == code
        return self.parents[mask], self.items.filter(pa.array(mask))

    def aligned(self, key: str, rows: np.ndarray) -> pa.Array:
        """The values of ``key`` at ``rows`` (null where a row lacks it)."""
        found_rows, values = self.lookup(key)
        position = np.full(self.size, -1)
        position[found_rows] = np.arange(found_rows.size)
        at = position[rows]
        return values.take(pa.array(at, mask=at < 0))


_ROW_DECODERS: dict[
    tuple[tuple[str, str], ...], tuple[msgspec.json.Decoder, list[tuple[str, str, str]]]
] = {}


def _row_decoder(schema: dict[str, dict[str, str]]):
    """A msgspec decoder of a JSON array of rows into a Struct of the schema's columns: unknown
    keys (``bento_meta``, repeated in every row) are skipped without being built."""
    columns = tuple(
        (name, str(spec.get("type")))
        for name, spec in schema.items()
        if isinstance(spec, dict)
        and name not in BENTO_RESERVED
        and spec.get("type") in ("numerical", "categorical")
    )
    cached = _ROW_DECODERS.get(columns)
    if cached is None:
        fields: list[tuple[str, Any, Any]] = [("request_id", str | int | None, None)]
        rename = {"request_id": "request_id"}
        plan = []
        for i, (name, kind) in enumerate(columns):
            attr = f"c{i}"  # column names are any strings; attributes must be identifiers
            kind_type = float | None if kind == "numerical" else str | int | float | bool | None
            fields.append((attr, kind_type, None))
            rename[attr] = name
            plan.append((name, attr, kind))
        row = msgspec.defstruct("BentoRow", fields, rename=rename)
        cached = (msgspec.json.Decoder(list[row]), plan)
        if len(_ROW_DECODERS) < 256:
            _ROW_DECODERS[columns] = cached
    return cached


def _read_bodies(bodies: pa.Array, schema: dict[str, dict[str, str]]) -> pa.Table | None:
    """The rows' columns, decoded by msgspec against the monitor's schema in one call; row by
    row into whatever types they have when values do not fit the schema."""
    decoder, plan = _row_decoder(schema)
    try:
        rows = decoder.decode(_json_array(bodies))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _read_bodies_loosely(bodies)
    columns: dict[str, pa.Array] = {
        "request_id": pa.array(
            [None if r.request_id is None else str(r.request_id) for r in rows], pa.string()
        )
    }
    for name, attr, kind in plan:
        values = [getattr(r, attr) for r in rows]
        if kind == "numerical":
            columns[name] = pa.array(values, pa.float64())
        else:
            columns[name] = pa.array(
                [v if v is None or isinstance(v, str) else _category(v) for v in values],
                pa.string(),
            )
    return pa.table(columns)


def _json_array(bodies: pa.Array) -> bytes:
    """``[body,body,...]`` built in Arrow: each body gets a trailing comma, then the string
    data buffer is taken whole (no Python string per row)."""
    joined = pc.binary_join_element_wise(bodies, "", ",")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)
    offsets = offsets[joined.offset : joined.offset + len(joined) + 1]
    data = joined.buffers()[2]
    start, end = int(offsets[0]), int(offsets[-1])
    return b"[" + data.to_pybytes()[start : end - 1] + b"]"


def _category(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _read_bodies_loosely(bodies: pa.Array) -> pa.Table | None:
    decode = msgspec.json.Decoder().decode
    try:
        rows = [decode(b) for b in bodies.to_pylist()]
    except msgspec.DecodeError:
        return None
    if not all(isinstance(row, dict) for row in rows):
        return None
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if name in ("bento_meta", "schema"):
            columns[name] = pa.array([msgspec.json.encode(v).decode() for v in values])
            continue
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values])
    return pa.table(columns)


def _resource(resources: pa.Array, row: int) -> dict[str, str]:
    items = resources[row].as_py() or []
    return {str(k): str(v) for k, v in items}


def _all_numbers(values: pa.Array) -> bool:
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return True
    present = values.drop_null()
    if len(present) == 0:
        return False
    return bool(pc.all(pc.match_substring_regex(present, _NUMBER.pattern)).as_py())


def _to_float(values: pa.Array) -> np.ndarray:
    """Float64 values; what does not read as a number is NaN (missing)."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(values.type):
        return values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    strings = values.cast(pa.string())
    try:
        return strings.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = pc.fill_null(pc.match_substring_regex(strings, _NUMBER.pattern), False)
        numbers = pc.if_else(ok, strings, pa.scalar(None, pa.string()))
        return numbers.cast(pa.float64()).to_numpy(zero_copy_only=False)


def _to_str(values: pa.Array) -> pa.Array:
    if pa.types.is_string(values.type):
        return values
    if pa.types.is_floating(values.type):
        # 1.0 and 1 are the same category, as Evidently's value counts would have them.
        as_int = pc.equal(values, pc.round(values))
        ints = pc.if_else(as_int, values.cast(pa.int64(), safe=False).cast(pa.string()), None)
        return pc.coalesce(ints, values.cast(pa.string()))
    return values.cast(pa.string())
