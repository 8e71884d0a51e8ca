"""Liveness, readiness and opstrata's own metrics."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.exceptions import HTTPException

from opstrata.runtime import Runtime

__all__ = ["HealthController"]


class HealthController(Controller):
    path = "/"
    include_in_schema = True

    @get("/healthz", sync_to_thread=False)
    def healthz(self) -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @get("/readyz", sync_to_thread=False)
    def readyz(self, runtime: Runtime) -> dict[str, str]:
        """The store is open and every listener is bound: telemetry is accepted."""
        if not runtime.ready:
            raise HTTPException(status_code=503, detail="starting or stopping")
        if not runtime.pipeline.healthy:
            raise HTTPException(status_code=503, detail="the store is failing loads; retrying")
        return {"status": "ready"}

    @get("/metrics", sync_to_thread=False, media_type="text/plain; version=0.0.4")
    def metrics(self, runtime: Runtime) -> Response[bytes]:
        """Prometheus text of opstrata's own counters."""
        return Response(
            runtime.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )
