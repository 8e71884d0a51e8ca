"""The HTTP API application."""

from __future__ import annotations

import logging

from litestar import Litestar, Request, Response, Router
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from opstrata import __version__
from opstrata.api.events import AlertController, IncidentController, PluginController
from opstrata.api.health import HealthController
from opstrata.api.models import ErrorBody
from opstrata.api.traces import TraceController
from opstrata.runtime import Runtime

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _http_error(_: Request, exc: HTTPException) -> Response[ErrorBody]:
    return Response(
        ErrorBody(status_code=exc.status_code, detail=str(exc.detail)),
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _internal_error(request: Request, exc: Exception) -> Response[ErrorBody]:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return Response(
        ErrorBody(status_code=500, detail=f"internal error: {type(exc).__name__}"),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


def create_app(runtime: Runtime) -> Litestar:
    """The Litestar app serving the API of one running server."""
    plugin_routers = [
        Router(path=f"/api/v1/{plugin}", route_handlers=list(handlers))
        for plugin, handlers in runtime.registry.routes
    ]
    return Litestar(
        route_handlers=[
            HealthController,
            TraceController,
            AlertController,
            IncidentController,
            PluginController,
            *plugin_routers,
        ],
        dependencies={"runtime": Provide(lambda: runtime, sync_to_thread=False)},
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        openapi_config=OpenAPIConfig(title="opstrata", version=__version__, path="/schema"),
        debug=False,
    )
