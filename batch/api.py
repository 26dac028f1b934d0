"""The batch layer's read-only route for the console and ops tooling: ``GET /batch/versions``,
each view's versions as ``lamina batch versions`` lists them, with which one is published
and the verdict of each version's stored reconciliation report (as ``lamina batch report``
judges it, with today's ``[airflow] max_divergence``). Guarded like the query routes
(``serving.read_token``); answers 503 while Cassandra is down, like them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from batch.reconcile import stored_verdict
from lamina.settings import Settings
from lamina.views import ViewCatalog
from serving.auth import read_guard
from serving.connection import StoreConnection
from serving.query import QueryService


def versions_of(
    svc: QueryService, settings: Settings, catalog: ViewCatalog
) -> list[dict[str, Any]]:
    """Per view of ``catalog``: ``{"view", "published", "versions"}``, ``published`` the
    published version's number (``None``: none), ``versions`` newest first, each with its
    state, cutoff, rows, build kind and seconds, definition hash, whether it is published,
    and ``reconciliation``: ``None`` when no report is stored, else the report's ``diverged``
    side, ``publishable``, ``problems`` and ``warnings`` (:func:`batch.reconcile.stored_verdict`)
    and the fraction of differing cells."""
    out = []
    for view in catalog.views.values():
        pub = svc.store.published(view)
        rows = []
        for v in svc.store.versions(view):
            report = svc.store.reconciliation(view, v.version)
            rec = None
            if report is not None:
                verdict = stored_verdict(report, settings.airflow.max_divergence)
                rec = {
                    "diverged": verdict.diverged,
                    "publishable": verdict.publishable,
                    "problems": verdict.problems,
                    "warnings": verdict.warnings,
                    "divergence": report.get("divergence"),
                }
            rows.append(
                {
                    "version": v.version,
                    "state": v.state,
                    "cutoff": v.cutoff,
                    "rows": v.rows,
                    "build": v.build,
                    "seconds": v.timings.get("total_s"),
                    "definition_hash": v.definition_hash,
                    "published": pub is not None and pub.version == v.version,
                    "reconciliation": rec,
                }
            )
        out.append(
            {"view": view.name, "published": None if pub is None else pub.version, "versions": rows}
        )
    return out


def versions_router(settings: Settings, catalog: ViewCatalog) -> APIRouter:
    """The ``/batch/versions`` route (module doc); reads the store of the app it is added to
    (``app.state.store``, set by :func:`serving.api.create_app`)."""
    router = APIRouter(tags=["status"])

    @router.get(
        "/batch/versions",
        summary="Each view's batch versions, which is published, their reconciliation",
        dependencies=[Depends(read_guard(settings))],
    )
    async def versions(request: Request) -> list[dict[str, Any]]:
        store: StoreConnection = request.app.state.store
        return await run_in_threadpool(store.call, versions_of, settings, catalog)

    return router
