"""Streaming-job operations on the HTTP API, for ops tooling: the same calls as
``lamina stream submit|list|status|stop|restart`` (all in :mod:`speed.launcher`).

Errors are the API's usual ``{"error", "hint"}``: 404 for an unknown job or view, 409 when a
checkpoint is in use, 400 for a malformed ``conf``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from lamina.settings import Settings
from lamina.views import ViewCatalog
from speed import launcher


class Submission(BaseModel):
    """A job to launch: a source name, with an optional master and Spark conf."""

    job: str = Field(
        description="a source name (its job keeps every view of the source)",
        examples=["web_pageviews"],
    )
    master: str | None = Field(default=None, description="Spark master URL (default: settings)")
    conf: dict[str, str] = Field(default_factory=dict, description="extra spark.* settings")


def jobs_router(settings: Settings, catalog: ViewCatalog) -> APIRouter:
    """Routes under ``/jobs`` over the job registry of ``settings``."""
    router = APIRouter(prefix="/jobs", tags=["streaming jobs"])

    @router.get("", summary="List submitted streaming jobs")
    async def list_jobs() -> list[dict[str, Any]]:
        found = await run_in_threadpool(launcher.jobs, settings)
        return [j.as_dict() for j in found]

    @router.post("", status_code=201, summary="Submit a streaming job (spark-submit, detached)")
    async def submit(body: Submission) -> dict[str, Any]:
        job = await run_in_threadpool(
            launcher.submit, settings, catalog, body.job, master=body.master, conf=body.conf
        )
        return job.as_dict()

    @router.get("/{job_id}", summary="A job's state and its queries' rates, lag and progress")
    async def status(job_id: str) -> dict[str, Any]:
        return await run_in_threadpool(launcher.status, settings, job_id)

    @router.post("/{job_id}/stop", summary="Stop a job gracefully, between micro-batches")
    async def stop(
        job_id: str,
        wait: bool = Query(default=True, description="return only once the job has stopped"),
    ) -> dict[str, Any]:
        job = await run_in_threadpool(launcher.stop, settings, job_id, wait=wait)
        return job.as_dict()

    @router.post("/{job_id}/restart", summary="Stop a job if it runs and launch it again")
    async def restart(job_id: str) -> dict[str, Any]:
        job = await run_in_threadpool(launcher.restart, settings, job_id)
        return job.as_dict()

    return router
