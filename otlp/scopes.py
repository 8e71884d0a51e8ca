"""Resource- and scope-level columns, kept once per scope and repeated per row when built.

Logs and metric points repeat their resource and scope in every row. Appending those seven or
eight values (two of them maps) row by row is a large share of the per-item Python work, so each
scope is stored once and the rows get their copies in one Arrow ``take`` at the end.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from opstrata.otlp.anyvalue import AttributeRenderer
from opstrata.otlp.columns import StringMapColumn
from opstrata.otlp.limits import Tally

__all__ = ["ScopeColumns", "service_name", "take_scopes"]


def service_name(keys: list[str], values: list[str]) -> str:
    """The ``service.name`` among rendered resource attributes, ``""`` when there is none."""
    for key, value in zip(keys, values, strict=True):
        if key == "service.name":
            return value
    return ""


class ScopeColumns:
    """One row per scope seen in a request; ``take`` repeats them for the item rows."""

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

    def set_resource(self, resource_x, attrs: AttributeRenderer, tally: Tally) -> None:  # noqa: ANN001
        """Render a ``ResourceLogs``/``ResourceMetrics`` resource for the scopes that follow."""
        keys, values = attrs.pairs(resource_x.resource.attributes, tally)
        self._resource = (keys, values, service_name(keys, values), resource_x.schema_url)

    def add_scope(self, scope_x, attrs: AttributeRenderer, tally: Tally) -> int:  # noqa: ANN001
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

    def to_batch(self) -> pa.RecordBatch:
        """All scopes as one batch, built once and taken from by every table of the request."""
        return pa.RecordBatch.from_arrays(
            [
                self.resource_attrs.to_arrow(),
                pa.array(self.resource_schema_urls, pa.string()),
                pa.array(self.services, pa.string()),
                pa.array(self.scope_names, pa.string()),
                pa.array(self.scope_versions, pa.string()),
                self.scope_attrs.to_arrow(),
                pa.array(self.scope_dropped, pa.uint32()),
                pa.array(self.scope_schema_urls, pa.string()),
            ],
            names=[
                "ResourceAttributes",
                "ResourceSchemaUrl",
                "ServiceName",
                "ScopeName",
                "ScopeVersion",
                "ScopeAttributes",
                "ScopeDroppedAttrCount",
                "ScopeSchemaUrl",
            ],
        )


def take_scopes(scopes: pa.RecordBatch, rows: list[int]) -> dict[str, pa.Array]:
    """Scope-level columns by name, one row per item whose scope index is in ``rows``."""
    taken = scopes.take(pa.array(np.asarray(rows, dtype=np.int32)))
    return dict(zip(taken.schema.names, taken.columns, strict=True))
