"""The columns of each metric type that the others lack, one class per type.

:mod:`opstrata.otlp.decode_metrics` fills the columns all metrics tables share; each
:class:`MetricKind` here adds its type's own, a metric at a time, with one comprehension per
column over the metric's stored points.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import pyarrow as pa
from google.protobuf.message import Message

from opstrata.otlp.columns import list_column
from opstrata.schema import (
    METRICS_EXPONENTIAL_HISTOGRAM,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
    METRICS_SUM,
    METRICS_SUMMARY,
    QUANTILE_TYPE,
    Table,
)

__all__ = ["KINDS", "MetricKind"]

_U64_LIST = pa.list_(pa.uint64())
_F64_LIST = pa.list_(pa.float64())

# ``as_double or float(as_int)`` reads the oneof without a ``WhichOneof`` call per point: an unset
# value reads as 0, so the expression is 0.0 when neither is set, as the Collector stores it.
# The trailing ``or as_double`` keeps the sign of a set -0.0.


class MetricKind(ABC):
    """The columns of one metric type that the others lack."""

    field: str  # the ``Metric.data`` oneof member holding this type
    table: Table
    schema: pa.Schema
    has_exemplars = True

    @abstractmethod
    def add(self, data: Message, points: Sequence) -> None:
        """Append the columns of ``points``, the stored points of ``data`` (``metric.sum``, …)."""

    @abstractmethod
    def to_arrow(self) -> dict[str, pa.Array]:
        """The type's own columns, by name."""


class Gauge(MetricKind):
    field = "gauge"
    table = Table.METRICS_GAUGE
    schema = METRICS_GAUGE

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, data: Message, points: Sequence) -> None:
        self.values += [p.as_double or float(p.as_int) or p.as_double for p in points]

    def to_arrow(self) -> dict[str, pa.Array]:
        return {"Value": pa.array(self.values, pa.float64())}


class Temporal(MetricKind):
    """A type whose metric carries an aggregation temporality, repeated on each of its points."""

    def __init__(self) -> None:
        self.temporalities: list[int] = []

    def add(self, data: Message, points: Sequence) -> None:
        self.temporalities += [data.aggregation_temporality] * len(points)

    def to_arrow(self) -> dict[str, pa.Array]:
        return {"AggregationTemporality": pa.array(self.temporalities, pa.int32())}


class Sum(Temporal):
    field = "sum"
    table = Table.METRICS_SUM
    schema = METRICS_SUM

    def __init__(self) -> None:
        super().__init__()
        self.values: list[float] = []
        self.monotonic: list[bool] = []

    def add(self, data: Message, points: Sequence) -> None:
        super().add(data, points)
        self.values += [p.as_double or float(p.as_int) or p.as_double for p in points]
        self.monotonic += [data.is_monotonic] * len(points)

    def to_arrow(self) -> dict[str, pa.Array]:
        return {
            **super().to_arrow(),
            "Value": pa.array(self.values, pa.float64()),
            "IsMonotonic": pa.array(self.monotonic, pa.bool_()),
        }


class AnyHistogram(Temporal):
    """What explicit and exponential histograms share: count, optional sum, min and max."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []
        self.sums: list[float | None] = []
        self.mins: list[float | None] = []
        self.maxes: list[float | None] = []

    def add(self, data: Message, points: Sequence) -> None:
        super().add(data, points)
        self.counts += [p.count for p in points]
        # Optional fields: absent means unknown, which a stored 0.0 would misstate.
        self.sums += [p.sum if p.HasField("sum") else None for p in points]
        self.mins += [p.min if p.HasField("min") else None for p in points]
        self.maxes += [p.max if p.HasField("max") else None for p in points]

    def to_arrow(self) -> dict[str, pa.Array]:
        return {
            **super().to_arrow(),
            "Count": pa.array(self.counts, pa.uint64()),
            "Sum": pa.array(self.sums, pa.float64()),
            "Min": pa.array(self.mins, pa.float64()),
            "Max": pa.array(self.maxes, pa.float64()),
        }


class Histogram(AnyHistogram):
    field = "histogram"
    table = Table.METRICS_HISTOGRAM
    schema = METRICS_HISTOGRAM

    def __init__(self) -> None:
        super().__init__()
        # The repeated fields themselves: Arrow converts them faster than Python copies them.
        self.bucket_counts: list[Sequence[int]] = []
        self.bounds: list[Sequence[float]] = []

    def add(self, data: Message, points: Sequence) -> None:
        super().add(data, points)
        self.bucket_counts += [p.bucket_counts for p in points]
        self.bounds += [p.explicit_bounds for p in points]

    def to_arrow(self) -> dict[str, pa.Array]:
        return {
            **super().to_arrow(),
            "BucketCounts": pa.array(self.bucket_counts, _U64_LIST),
            "ExplicitBounds": pa.array(self.bounds, _F64_LIST),
        }


class ExponentialHistogram(AnyHistogram):
    field = "exponential_histogram"
    table = Table.METRICS_EXPONENTIAL_HISTOGRAM
    schema = METRICS_EXPONENTIAL_HISTOGRAM

    def __init__(self) -> None:
        super().__init__()
        self.scales: list[int] = []
        self.zero_counts: list[int] = []
        self.zero_thresholds: list[float] = []
        self.positive_offsets: list[int] = []
        self.positive_counts: list[Sequence[int]] = []
        self.negative_offsets: list[int] = []
        self.negative_counts: list[Sequence[int]] = []

    def add(self, data: Message, points: Sequence) -> None:
        super().add(data, points)
        self.scales += [p.scale for p in points]
        self.zero_counts += [p.zero_count for p in points]
        self.zero_thresholds += [p.zero_threshold for p in points]
        positives = [p.positive for p in points]
        self.positive_offsets += [b.offset for b in positives]
        self.positive_counts += [b.bucket_counts for b in positives]
        negatives = [p.negative for p in points]
        self.negative_offsets += [b.offset for b in negatives]
        self.negative_counts += [b.bucket_counts for b in negatives]

    def to_arrow(self) -> dict[str, pa.Array]:
        return {
            **super().to_arrow(),
            "Scale": pa.array(self.scales, pa.int32()),
            "ZeroCount": pa.array(self.zero_counts, pa.uint64()),
            "ZeroThreshold": pa.array(self.zero_thresholds, pa.float64()),
            "PositiveOffset": pa.array(self.positive_offsets, pa.int32()),
            "PositiveBucketCounts": pa.array(self.positive_counts, _U64_LIST),
            "NegativeOffset": pa.array(self.negative_offsets, pa.int32()),
            "NegativeBucketCounts": pa.array(self.negative_counts, _U64_LIST),
        }


class Summary(MetricKind):
    field = "summary"
    table = Table.METRICS_SUMMARY
    schema = METRICS_SUMMARY
    has_exemplars = False

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.sums: list[float] = []
        self.quantile_offsets = [0]
        self.quantiles: list[float] = []
        self.quantile_values: list[float] = []

    def add(self, data: Message, points: Sequence) -> None:
        self.counts += [p.count for p in points]
        self.sums += [p.sum for p in points]
        offsets = self.quantile_offsets
        quantiles = self.quantiles
        for p in points:
            for qv in p.quantile_values:
                quantiles.append(qv.quantile)
                self.quantile_values.append(qv.value)
            offsets.append(len(quantiles))

    def to_arrow(self) -> dict[str, pa.Array]:
        structs = pa.StructArray.from_arrays(
            [pa.array(self.quantiles, pa.float64()), pa.array(self.quantile_values, pa.float64())],
            fields=list(QUANTILE_TYPE),
        )
        return {
            "Count": pa.array(self.counts, pa.uint64()),
            "Sum": pa.array(self.sums, pa.float64()),
            "ValueAtQuantiles": list_column(
                self.quantile_offsets, structs, METRICS_SUMMARY.field("ValueAtQuantiles").type
            ),
        }


# In the order their batches are emitted.
KINDS: tuple[type[MetricKind], ...] = (Gauge, Sum, Histogram, ExponentialHistogram, Summary)
