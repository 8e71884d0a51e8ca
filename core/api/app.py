"""The HTTP API application."""

from __future__ import annotations

import logging

from litestar import Litestar, Request, Response, Router
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from opstrata import __version__
from opstrata.api.events import AlertController, IncidentController, PluginController
from opstrata.api.health import HealthController
from opstrata.api.jaeger import JaegerController
from opstrata.api.logs import LogController
from opstrata.api.metrics import MetricController
from opstrata.api.models import ErrorBody
from opstrata.api.services import ServiceController, ServiceMapController
from opstrata.api.traces import SpanController, TraceController
from opstrata.auth import bearer_matches
from opstrata.runtime import Runtime
from opstrata.storage.queries import queries_for

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


_OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _bearer_guard(token: str):
    """A guard that wants ``Authorization: Bearer <token>`` on every route but the probes."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if connection.url.path in _OPEN_PATHS:
            return
        if not bearer_matches(connection.headers.get("authorization"), token):
            raise NotAuthorizedException(
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="opstrata"'},
            )

    return guard


def create_app(runtime: Runtime) -> Litestar:
    """The Litestar app serving the API of one running server."""
    plugin_routers = [
        Router(path=f"/api/v1/{plugin}", route_handlers=list(handlers))
        for plugin, handlers in runtime.registry.routes
    ]
    queries = queries_for(runtime.store)
    token = runtime.settings.api_bearer_token
    openapi = OpenAPIConfig(title="opstrata", version=__version__, path="/schema")
    if token:
        openapi = OpenAPIConfig(
            title="opstrata",
            version=__version__,
            path="/schema",
            security=[{"bearer": []}],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
        )
    return Litestar(
        route_handlers=[
            HealthController,
            TraceController,
            SpanController,
            ServiceController,
            ServiceMapController,
            LogController,
            MetricController,
            JaegerController,
            AlertController,
            IncidentController,
            PluginController,
            *plugin_routers,
        ],
        dependencies={
            "runtime": Provide(lambda: runtime, sync_to_thread=False),
            "queries": Provide(lambda: queries, sync_to_thread=False),
        },
        guards=[_bearer_guard(token)] if token else [],
        on_startup=[queries.start],
        on_shutdown=[queries.stop],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        openapi_config=openapi,
        debug=False,
    )
