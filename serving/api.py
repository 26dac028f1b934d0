"""The HTTP query API (FastAPI; OpenAPI docs at ``/docs``), started by ``lamina serve``.

Errors are JSON ``{"error": ..., "hint": ...}``: 404 for an unknown view or key, 400 for a bad
range, granularity or parameter, 422 for a malformed parameter. User input never causes a 500.
Prometheus metrics are at ``/metrics`` (see :mod:`serving.metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from lamina import __version__
from lamina.errors import LaminaError
from lamina.settings import Settings
from lamina.views import ViewCatalog
from serving.cassandra import cluster
from serving.metrics import QueryLatencyMiddleware, ServingMetrics
from serving.query import QueryService
from serving.store import Store

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, catalog: ViewCatalog, routers: Sequence[APIRouter] = ()
) -> FastAPI:
    """The API over ``catalog``'s views; connects to Cassandra when the app starts.

    ``routers`` add the routes of higher layers (``lamina serve`` adds the speed layer's
    ``/jobs`` router, :func:`speed.api.jobs_router`); serving itself knows no other layer.
    """
    state: dict[str, Any] = {}
    metrics = ServingMetrics(settings, catalog)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        c = cluster(settings.cassandra)
        s = c.connect()
        store = Store(s, settings.cassandra)
        store.ensure_schema(catalog)
        state["service"] = QueryService(store, catalog, settings)
        metrics.attach(store)
        try:
            yield
        finally:
            metrics.detach()
            c.shutdown()

    app = FastAPI(
        title="Lamina serving API",
        version=__version__,
        description="Merged batch + real-time answers of Lamina views.",
        lifespan=lifespan,
    )
    app.add_middleware(QueryLatencyMiddleware, metrics=metrics, endpoints=("describe", "query"))

    def service() -> QueryService:
        svc: QueryService = state["service"]
        return svc

    @app.exception_handler(LaminaError)
    async def lamina_error(request: Request, exc: LaminaError) -> JSONResponse:
        status = exc.http_status if exc.http_status < 500 else 503
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in exc.errors()
        )
        return JSONResponse(
            {"error": f"invalid request: {problems}", "hint": "see /docs for the parameters"},
            status_code=422,
        )

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        return await metrics.render(request.headers.get("accept", ""))

    @app.get("/views", summary="List views")
    async def list_views() -> list[dict[str, Any]]:
        return [
            {
                "view": v.name,
                "source": v.source.name,
                "keys": list(v.keys),
                "bucket": v.bucket.label,
                "aggregations": list(v.aggregations),
            }
            for v in catalog.views.values()
        ]

    @app.get("/views/{view}", summary="Describe a view: definition, published version, freshness")
    async def describe(view: str) -> dict[str, Any]:
        return await run_in_threadpool(service().describe, view)

    @app.get("/views/{view}/query", summary="Merged answer per bucket for one or more keys")
    async def query(
        view: str,
        key: Annotated[
            list[str],
            Query(
                description="key value(s); several keys: key=a&key=b; "
                "multi-field keys joined by commas"
            ),
        ],
        start: Annotated[str | None, Query(alias="from", description="ISO-8601 or epoch s")] = None,
        end: Annotated[str | None, Query(alias="to", description="ISO-8601 or epoch s")] = None,
        granularity: Annotated[str | None, Query(description="e.g. hour, day, 15m")] = None,
        q: Annotated[float, Query(ge=0.0, le=1.0, description="quantile to present")] = 0.5,
    ) -> dict[str, Any]:
        return await run_in_threadpool(service().query, view, key, start, end, granularity, q)

    for router in routers:
        app.include_router(router)
    return app
