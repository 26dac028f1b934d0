"""The HTTP query API (FastAPI; OpenAPI docs at ``/docs``), started by ``lamina serve``.

Errors are JSON ``{"error": ..., "hint": ...}``: 404 for an unknown view or key, 400 for a bad
range, granularity or parameter, 422 for a malformed parameter. User input never causes a 500.
While Cassandra is down or does not answer in time, every endpoint that reads it answers 503
(with ``Retry-After``) naming Cassandra's address, and answers again by itself once Cassandra is
back (see :mod:`serving.connection`); ``/health`` then answers 503 too. Prometheus metrics are
at ``/metrics`` (see :mod:`serving.metrics`); they are served during an outage, with
``lamina_up{part="cassandra"} 0``.

Only requests whose ``Host`` header names one of ``serving.allowed_hosts`` (default: the
loopback names and ``serving.host``; see :meth:`~lamina.settings.ServingSettings.trusted_hosts`)
are answered; any other gets a JSON 400 (:class:`serving.auth.TrustedHosts`), so a DNS-rebound
page cannot reach an API on 127.0.0.1. With ``serving.read_token`` set, the query routes
(``/views``, ``/views/{view}``, ``/views/{view}/query``, ``/top``, ``/keys``) need
``Authorization: Bearer`` with it or ``serving.jobs_token`` (401 otherwise); ``/health`` and
``/metrics`` stay open (load balancers and Prometheus).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from lamina import __version__
from lamina.errors import LaminaError, StoreUnavailableError
from lamina.settings import Settings
from lamina.views import ViewCatalog
from serving.auth import TrustedHosts, read_guard
from serving.connection import StoreConnection
from serving.metrics import QueryLatencyMiddleware, ServingMetrics
from serving.query import QueryService

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
"""``Retry-After`` of a 503: when a client may try again."""

CONSOLE_DIR = Path(__file__).parent / "console"
"""The console's files (package data): ``index.html``, its script and style, ``vendor/``."""

SWAGGER_UI = "/console/vendor/swagger-ui-5.35.0"
"""The vendored Swagger UI of ``/docs`` (npm ``swagger-ui-dist`` 5.35.0), without extension."""


def create_app(
    settings: Settings, catalog: ViewCatalog, routers: Sequence[APIRouter] = ()
) -> FastAPI:
    """The API over ``catalog``'s views; connects to Cassandra when the app starts.

    An app started while Cassandra is unavailable starts anyway (logging a warning) and
    connects on the first request after Cassandra is back; until then its store endpoints
    answer 503. ``routers`` add the routes of higher layers (``lamina serve`` adds the speed
    layer's ``/jobs`` router, :func:`speed.api.jobs_router`); serving itself knows no other
    layer.
    """
    metrics = ServingMetrics(settings, catalog)
    store = StoreConnection(settings, catalog)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(store.service)
        except StoreUnavailableError as exc:
            log.warning("starting without the store: %s (%s)", exc.message, exc.hint)
        metrics.attach(store.store)
        try:
            yield
        finally:
            metrics.detach()
            store.close()

    app = FastAPI(
        title="Lamina serving API",
        version=__version__,
        description="Merged batch + real-time answers of Lamina views.",
        lifespan=lifespan,
        docs_url=None,  # served below from the vendored Swagger UI, not from a CDN
    )
    app.state.store = store  # for tests and operators: its service's snapshot counters
    app.add_middleware(
        QueryLatencyMiddleware, metrics=metrics, endpoints=("describe", "query", "top", "keys")
    )
    # Added last, so outermost: a request for a host not ours (DNS rebinding) reaches nothing.
    app.add_middleware(TrustedHosts, allowed_hosts=settings.serving.trusted_hosts())
    reads = [Depends(read_guard(settings))]

    @app.exception_handler(LaminaError)
    async def lamina_error(request: Request, exc: LaminaError) -> JSONResponse:
        status = exc.http_status if exc.http_status < 500 else 503
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(
            {"error": exc.message, "hint": exc.hint}, status_code=status, headers=headers
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not a condition of the request or the store: the traceback goes to the
        # server's log (Starlette logs it after this answer), never to the client.
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__})", "hint": "see the server's log"},
            status_code=500,
        )

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

    @app.get(
        "/health",
        summary="Health: 200 if the API runs and Cassandra answers, else 503",
        responses={503: {"description": "Cassandra is unavailable"}},
    )
    async def health() -> JSONResponse:
        try:
            version = await run_in_threadpool(store.ping)
        except StoreUnavailableError as exc:
            return JSONResponse(
                {"status": "unavailable", "store": "down", "error": exc.message, "hint": exc.hint},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        return JSONResponse({"status": "ok", "store": "up", "cassandra": version})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        return await metrics.render(request.headers.get("accept", ""))

    @app.get("/views", summary="List views", dependencies=reads)
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

    @app.get(
        "/views/{view}",
        summary="Describe a view: definition, published version, freshness",
        dependencies=reads,
    )
    async def describe(view: str) -> dict[str, Any]:
        return await run_in_threadpool(store.call, QueryService.describe, view)

    @app.get(
        "/views/{view}/query",
        summary="Merged answer per bucket for one or more keys",
        dependencies=reads,
    )
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
    ) -> Response:
        answer = await store.acall(QueryService.query_async, view, key, start, end, granularity, q)
        return Response(msgspec.json.encode(answer), media_type="application/json")

    @app.get(
        "/views/{view}/top",
        summary="Top keys by an aggregation's merged value over a time range",
        dependencies=reads,
    )
    async def top(
        view: str,
        by: Annotated[str | None, Query(description="the aggregation to rank by")] = None,
        start: Annotated[str | None, Query(alias="from", description="ISO-8601 or epoch s")] = None,
        end: Annotated[str | None, Query(alias="to", description="ISO-8601 or epoch s")] = None,
        limit: Annotated[int | None, Query(description="keys to return (default 10)")] = None,
        q: Annotated[float, Query(description="quantile to present and rank by")] = 0.5,
    ) -> Response:
        answer = await store.acall(QueryService.top_async, view, by, start, end, limit, q)
        return Response(msgspec.json.encode(answer), media_type="application/json")

    @app.get(
        "/views/{view}/keys",
        summary="Keys with data in a time range, in key order",
        dependencies=reads,
    )
    async def keys(
        view: str,
        start: Annotated[str | None, Query(alias="from", description="ISO-8601 or epoch s")] = None,
        end: Annotated[str | None, Query(alias="to", description="ISO-8601 or epoch s")] = None,
        prefix: Annotated[str | None, Query(description="keys whose text starts so")] = None,
        limit: Annotated[int | None, Query(description="keys to return (default 100)")] = None,
    ) -> Response:
        answer = await store.acall(QueryService.keys_async, view, start, end, prefix, limit)
        return Response(msgspec.json.encode(answer), media_type="application/json")

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(CONSOLE_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{SWAGGER_UI}-bundle.js",
            swagger_css_url=f"{SWAGGER_UI}.css",
            swagger_favicon_url="/console/favicon.svg",
        )

    app.mount("/console", StaticFiles(directory=CONSOLE_DIR), name="console")
    for router in routers:
        app.include_router(router)
    return app
