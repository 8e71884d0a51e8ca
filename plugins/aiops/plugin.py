"""The ``aiops`` plugin's hooks: settings, consumers, detectors, routes."""

from __future__ import annotations

from typing import Any

from opstrata import hookimpl
from opstrata.plugins.aiops.config import AiopsConfig, parse_config
from opstrata.plugins.aiops.consumers import (
    DETECTORS,
    LogsConsumer,
    MetricsConsumer,
    SpansConsumer,
)

CONFIG = AiopsConfig()


@hookimpl
def opstrata_configure(config: dict[str, Any]) -> None:
    global CONFIG
    CONFIG = parse_config(config)
    if CONFIG.detector not in DETECTORS:
        raise ValueError(
            f"plugins.aiops.detector: {CONFIG.detector!r} is not one of {sorted(DETECTORS)}"
        )
    DETECTORS[CONFIG.detector](dict(CONFIG.detector_params))  # validates the parameters


@hookimpl
def opstrata_register_consumers(register) -> None:
    register(MetricsConsumer(CONFIG))
    register(SpansConsumer(CONFIG))
    register(LogsConsumer(CONFIG))


@hookimpl
def opstrata_register_detectors(register) -> None:
    for name, factory in DETECTORS.items():
        register(name, factory)


@hookimpl
def opstrata_register_routes(register) -> None:
    from opstrata.plugins.aiops.routes import ROUTES

    register(ROUTES)
