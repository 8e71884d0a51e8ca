"""The MLOps plugin: drift and quality decay of models in production, from their telemetry.

Reads model rows from spans and log records (the ``ml.*`` attribute convention and BentoML's
OTLP monitoring logs), keeps bounded sketches per model version and column, tests each sliding
window against the reference as Evidently would, joins late labels to predictions for quality,
and raises ``feature_drift``, ``prediction_drift`` and ``quality_decay`` alerts on the entity
``model <name>:<version>``. See ``docs/mlops.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from opstrata.consumers import Consumer
from opstrata.hookspecs import hookimpl
from opstrata.plugins.mlops.config import MLOpsConfig, parse_config
from opstrata.plugins.mlops.consumer import MLOps, ModelTelemetry
from opstrata.plugins.mlops.routes import build_routes

__all__ = ["opstrata_configure", "opstrata_register_consumers", "opstrata_register_routes"]

_STATE: dict[str, MLOps] = {}


def _mlops() -> MLOps:
    if "mlops" not in _STATE:
        _STATE["mlops"] = MLOps(MLOpsConfig())
    return _STATE["mlops"]


@hookimpl
def opstrata_configure(config: dict[str, Any]) -> None:
    _STATE["mlops"] = MLOps(parse_config(config))


@hookimpl
def opstrata_register_consumers(register: Callable[[Consumer], None]) -> None:
    register(ModelTelemetry(_mlops()))


@hookimpl
def opstrata_register_routes(register: Callable[[Sequence[Any]], None]) -> None:
    register(build_routes(_mlops()))
