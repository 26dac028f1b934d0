"""Streaming-job operations on the HTTP API, for ops tooling: the same calls as
``lamina stream submit|list|status|stop|restart`` (all in :mod:`speed.launcher`).

Errors are the API's usual ``{"error", "hint"}``: 404 for an unknown job or view, 409 when a
checkpoint is in use, 400 for a malformed or disallowed ``conf`` or ``master``.

What a caller may do is narrower than the CLI (the operator's own shell), because a job runs
as the API's user with whatever ``spark-submit`` is told:

- ``POST /jobs`` accepts only the conf keys of ``serving.job_conf_allowed`` and the masters
  ``spark.master`` and ``serving.job_masters`` (else 400 naming the key or master and the
  setting);
- state-changing requests (submit, stop, restart) that carry an ``Origin`` header whose host
  is not one of :meth:`~lamina.settings.ServingSettings.trusted_hosts` are refused (403):
  a web page cannot stop or restart jobs through a browser on the API's machine;
- with ``serving.jobs_token`` set they require ``Authorization: Bearer <token>`` (401
  otherwise); with ``serving.read_token`` set, so do the reads (either token);
- answers show conf values whose key looks secret (see :func:`redact`) as ``"***"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from lamina.errors import ConfigError, ForbiddenError, UnauthorizedError
from lamina.events import reason_kind
from lamina.settings import Settings
from lamina.views import ViewCatalog
from serving.auth import bearer, host_allowed, read_guard, token_matches
from speed import launcher
from speed.deadletters import read_deadletters, summarize

REDACTED = "***"

_SECRET_WORDS = ("password", "secret", "token", "credential")


class Submission(BaseModel):
    """A job to launch: a source name, with an optional master and Spark conf."""

    job: str = Field(
        description="a source name (its job keeps every view of the source)",
        examples=["web_pageviews"],
    )
    master: str | None = Field(
        default=None,
        description="Spark master URL (default: spark.master; others only if in "
        "serving.job_masters)",
    )
    conf: dict[str, str] = Field(
        default_factory=dict,
        description="extra spark.* settings (keys of serving.job_conf_allowed)",
    )


def is_secret_key(key: str) -> bool:
    """True if the conf ``key`` looks like it holds a secret: it contains ``password``,
    ``secret``, ``token`` or ``credential``, or one of its dot/dash/underscore-separated parts
    is or ends with ``key`` (``fs.s3a.access.key``, ``accessKey``; not ``keyStore``)."""
    low = key.lower()
    if any(word in low for word in _SECRET_WORDS):
        return True
    return any(part.endswith("key") for part in re.split(r"[._\-]", low))


def redact(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` (a job's dict) with the values of its secret-looking conf keys replaced by
    ``"***"`` (a copy; ``job`` is unchanged)."""
    conf = job.get("conf") or {}
    return {**job, "conf": {k: REDACTED if is_secret_key(k) else v for k, v in conf.items()}}


def check_submission(settings: Settings, body: Submission) -> str:
    """The master a ``POST /jobs`` of ``body`` runs on; :class:`ConfigError` (400) naming
    the setting when ``body`` has a conf key not in ``serving.job_conf_allowed`` or a master
    other than ``spark.master`` and ``serving.job_masters``."""
    allowed = set(settings.serving.job_conf_allowed)
    for key in body.conf:
        if key not in allowed:
            raise ConfigError(
                f"Spark conf key {key!r} is not allowed over the HTTP API",
                hint="allowed keys (setting serving.job_conf_allowed): "
                + (", ".join(sorted(allowed)) or "none")
                + "; the CLI (lamina stream submit --conf) takes any",
            )
    masters = [settings.spark.master, *settings.serving.job_masters]
    if body.master is not None and body.master not in masters:
        raise ConfigError(
            f"Spark master {body.master!r} is not allowed over the HTTP API",
            hint="allowed masters (settings spark.master and serving.job_masters): "
            + ", ".join(masters),
        )
    return body.master or settings.spark.master


def _guard(settings: Settings, *, changes: bool) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A dependency enforcing the module doc's rules on a request that ``changes`` jobs (or
    only reads them)."""
    serving = settings.serving
    trusted = serving.trusted_hosts()
    if not changes:
        return read_guard(settings)
    tokens = [serving.jobs_token] if serving.jobs_token else []

    async def guard(request: Request) -> None:
        origin = request.headers.get("origin")
        if changes and origin is not None:
            parsed = urlsplit(origin)
            host = parsed.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            if not (parsed.scheme and host and host_allowed(host, trusted)):
                raise ForbiddenError(
                    f"cross-origin job change refused (Origin {origin!r})",
                    hint="job changes are accepted only from the API's own hosts "
                    "(setting serving.allowed_hosts) or from clients that send no Origin",
                )
        if tokens and not token_matches(bearer(request), tokens):
            raise UnauthorizedError(
                "missing or wrong API token",
                hint="send 'Authorization: Bearer <token>' with the token of serving.jobs_token",
            )

    return guard


def jobs_router(settings: Settings, catalog: ViewCatalog) -> APIRouter:
    """Routes under ``/jobs`` over the job registry of ``settings``, guarded as the module
    doc says."""
    router = APIRouter(prefix="/jobs", tags=["streaming jobs"])
    reads = [Depends(_guard(settings, changes=False))]
    changes = [Depends(_guard(settings, changes=True))]

    @router.get("", summary="List submitted streaming jobs", dependencies=reads)
    async def list_jobs() -> list[dict[str, Any]]:
        found = await run_in_threadpool(launcher.jobs, settings)
        return [redact(j.as_dict()) for j in found]

    @router.post(
        "",
        status_code=201,
        summary="Submit a streaming job (spark-submit, detached)",
        dependencies=changes,
    )
    async def submit(body: Submission) -> dict[str, Any]:
        master = check_submission(settings, body)
        job = await run_in_threadpool(
            launcher.submit, settings, catalog, body.job, master=master, conf=body.conf
        )
        return redact(job.as_dict())

    @router.get(
        "/{job_id}",
        summary="A job's state and its queries' rates, lag and progress",
        dependencies=reads,
    )
    async def status(job_id: str) -> dict[str, Any]:
        return redact(await run_in_threadpool(launcher.status, settings, job_id))

    @router.post(
        "/{job_id}/stop",
        summary="Stop a job gracefully, between micro-batches",
        dependencies=changes,
    )
    async def stop(
        job_id: str,
        wait: bool = Query(default=True, description="return only once the job has stopped"),
    ) -> dict[str, Any]:
        job = await run_in_threadpool(launcher.stop, settings, job_id, wait=wait)
        return redact(job.as_dict())

    @router.post(
        "/{job_id}/restart",
        summary="Stop a job if it runs and launch it again",
        dependencies=changes,
    )
    async def restart(job_id: str) -> dict[str, Any]:
        job = await run_in_threadpool(launcher.restart, settings, job_id)
        return redact(job.as_dict())

    return router


def status_router(settings: Settings, catalog: ViewCatalog) -> APIRouter:
    """Read-only routes for the console and ops tooling, guarded like the query routes
    (``serving.read_token``):

    - ``GET /streams``: each source job as ``lamina stream status`` shows it
      (:func:`speed.launcher.source_statuses`: who runs it, lag, caught up, archived-until
      epoch, each query's rates and last micro-batch duration), plus ``epoch_seconds``;
    - ``GET /deadletters``: per source, its dead letters' count, their kinds with examples
      (:func:`speed.deadletters.summarize`, as ``lamina deadletters`` prints them) and the
      ``latest`` letters (newest first, at most ``limit``); a source whose topic cannot be
      read has ``error`` set instead (Kafka down), never a 500.
    """
    router = APIRouter(tags=["status"])
    reads = [Depends(read_guard(settings))]

    @router.get("/streams", summary="Each source job's state, lag and rates", dependencies=reads)
    async def streams() -> list[dict[str, Any]]:
        found = await run_in_threadpool(launcher.source_statuses, settings)
        es = settings.pipeline.epoch_seconds
        return [{**s, "epoch_seconds": es} for s in found]

    @router.get(
        "/deadletters",
        summary="Dead letters per source: counts by kind, latest reasons with their origin",
        dependencies=reads,
    )
    async def deadletters(
        limit: int = Query(default=10, ge=0, le=1000, description="latest letters per source"),
    ) -> list[dict[str, Any]]:
        return await run_in_threadpool(_deadletters, settings, catalog, limit)

    return router


def _deadletters(settings: Settings, catalog: ViewCatalog, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for source in catalog.sources.values():
        entry: dict[str, Any] = {"source": source.name, "topic": source.topic}
        try:
            letters = read_deadletters(settings, source, timeout_s=3)
        except Exception as exc:  # Kafka unreachable: say so for this source
            out.append({**entry, "error": f"cannot read dead letters: {exc}"})
            continue
        latest = [{**d, "kind": reason_kind(d["reason"])} for d in reversed(letters)][:limit]
        out.append({**entry, "count": len(letters), "kinds": summarize(letters), "latest": latest})
    return out
