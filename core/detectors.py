"""Detectors: the streaming anomaly scorers that detection plugins build per series.

The kernel only keeps the registry; the AIOps plugin decides which series get which detector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Detector", "DetectorFactory", "DetectorRegistry"]


@runtime_checkable
class Detector(Protocol):
    """Scores the points of many series a batch at a time, keeping its state in arrays."""

    def update(self, series: np.ndarray, times: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Feed points (series index, event time in ns, value), in time order per series;
        return one anomaly score in [0, 1] per point."""
        ...


DetectorFactory = Callable[[dict[str, Any]], Detector]


class DetectorRegistry:
    """Detector factories by name, each registered by one plugin."""

    def __init__(self) -> None:
        self._factories: dict[str, tuple[str, DetectorFactory]] = {}

    def register(self, plugin: str, name: str, factory: DetectorFactory) -> None:
        if name in self._factories:
            owner = self._factories[name][0]
            raise ValueError(
                f"detector {name!r} of plugin {plugin!r} is already taken by {owner!r}"
            )
        if not callable(factory):
            raise TypeError(f"detector {name!r} of plugin {plugin!r}: factory is not callable")
        self._factories[name] = (plugin, factory)

    def create(self, name: str, params: dict[str, Any] | None = None) -> Detector:
        try:
            _, factory = self._factories[name]
        except KeyError:
            raise KeyError(
                f"no detector named {name!r}; known: {sorted(self._factories)}"
            ) from None
        return factory(dict(params or {}))

    def names(self) -> dict[str, str]:
        """Detector name → plugin that registered it."""
        return {name: plugin for name, (plugin, _) in sorted(self._factories.items())}
