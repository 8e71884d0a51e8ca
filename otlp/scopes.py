"""Resource- and scope-level columns, kept once per scope and repeated per row when built.

Logs and metric points repeat their resource and scope in every row. Appending those seven or
eight values (two of them maps) row by row is a large share of the per-item Python work, so each
scope is stored once, the decoders record runs of rows that share a scope, and the columns are
expanded from those runs when the batch is built.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics, ScopeMetrics

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.columns import StringMapColumn
from opstrata.otlp.limits import Tally
from opstrata.schema import STRING_MAP

__all__ = ["ScopeColumns", "service_name"]

_NO_STRINGS = pa.array([], pa.string())
# Column name → the ``ScopeColumns`` attribute it is built from.
_MAPS = (("ResourceAttributes", "resource_attrs"), ("ScopeAttributes", "scope_attrs"))
_SCALARS = (
    ("ResourceSchemaUrl", "resource_schema_urls", pa.string()),
    ("ServiceName", "services", pa.string()),
    ("ScopeName", "scope_names", pa.string()),
    ("ScopeVersion", "scope_versions", pa.string()),
    ("ScopeDroppedAttrCount", "scope_dropped", pa.uint32()),
    ("ScopeSchemaUrl", "scope_schema_urls", pa.string()),
)


def service_name(keys: list[str], values: list[str]) -> str:
    """The ``service.name`` among rendered resource attributes, ``""`` when there is none."""
    for key, value in zip(keys, values, strict=True):
        if key == "service.name":
            return value
    return ""


def _repeat(values: list, runs: list[tuple[int, int]]) -> list:
    if len(runs) == 1:
        scope, count = runs[0]
        return [values[scope]] * count
    out: list = []
    for scope, count in runs:
        out += [values[scope]] * count
    return out


def _repeat_map(column: StringMapColumn, runs: list[tuple[int, int]]) -> pa.Array:
    # Row offsets and child indices come from the runs in bulk; the strings are converted once
    # per scope and copied by Arrow's ``take``, far cheaper than converting each row's copy.
    src = column.offsets
    offsets = [0]
    child: list[np.ndarray] = []
    for scope, count in runs:
        lo = src[scope]
        width = src[scope + 1] - lo
        base = offsets[-1]
        if width:
            offsets += range(base + width, base + width * count + 1, width)
            child.append(np.tile(np.arange(lo, lo + width, dtype=np.int32), count))
        else:
            offsets += [base] * count
    if child:
        index = pa.array(child[0] if len(child) == 1 else np.concatenate(child))
        keys = pa.array(column.keys, pa.string()).take(index)
        values = pa.array(column.values, pa.string()).take(index)
    else:
        keys = values = _NO_STRINGS
    return pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), keys, values, type=STRING_MAP)


class ScopeColumns:
    """One entry per scope of a request, expanded to one row per item by :meth:`to_arrow`."""

    __slots__ = (
        "_resource",
        "resource_attrs",
        "resource_schema_urls",
        "scope_attrs",
        "scope_dropped",
        "scope_names",
        "scope_schema_urls",
        "scope_versions",
        "services",
    )

    def __init__(self) -> None:
        self.resource_attrs = StringMapColumn()
        self.resource_schema_urls: list[str] = []
        self.services: list[str] = []
        self.scope_names: list[str] = []
        self.scope_versions: list[str] = []
        self.scope_attrs = StringMapColumn()
        self.scope_dropped: list[int] = []
        self.scope_schema_urls: list[str] = []
        self._resource: tuple[list[str], list[str], str, str] = ([], [], "", "")

    def set_resource(
        self, resource_x: ResourceLogs | ResourceMetrics, attrs: AttributeRenderer, tally: Tally
    ) -> None:
        """Render a ``ResourceLogs``/``ResourceMetrics`` resource for the scopes that follow."""
        keys, values = attrs.pairs(resource_x.resource.attributes, tally)
        self._resource = (keys, values, service_name(keys, values), resource_x.schema_url)

    def add_scope(
        self, scope_x: ScopeLogs | ScopeMetrics, attrs: AttributeRenderer, tally: Tally
    ) -> int:
        """Record a ``ScopeLogs``/``ScopeMetrics`` under the current resource; return its index."""
        rkeys, rvalues, service, resource_url = self._resource
        scope = scope_x.scope
        self.resource_attrs.extend_row(rkeys, rvalues)
        self.resource_schema_urls.append(resource_url)
        self.services.append(service)
        self.scope_names.append(scope.name)
        self.scope_versions.append(scope.version)
        attrs.extend(scope.attributes, self.scope_attrs.keys, self.scope_attrs.values, tally)
        self.scope_attrs.close_row()
        self.scope_dropped.append(scope.dropped_attributes_count)
        self.scope_schema_urls.append(scope_x.schema_url)
        return len(self.services) - 1

    def to_arrow(self, runs: list[tuple[int, int]], names: list[str]) -> dict[str, pa.Array]:
        """The columns among ``names`` for rows given as runs of ``(scope index, row count)``."""
        columns: dict[str, pa.Array] = {}
        for name, attribute in _MAPS:
            if name in names:
                columns[name] = _repeat_map(getattr(self, attribute), runs)
        for name, attribute, arrow_type in _SCALARS:
            if name in names:
                columns[name] = pa.array(_repeat(getattr(self, attribute), runs), arrow_type)
        return columns
