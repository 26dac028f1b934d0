"""The serving API's connection to Cassandra: made when first needed, kept, and survived.

A long-running reader (``lamina serve``) must neither die nor answer with a crash while
Cassandra is down or restarting: it answers "unavailable" (:class:`StoreUnavailableError`,
HTTP 503, naming Cassandra's address) and answers again by itself once Cassandra is back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, TypeVar

from cassandra.cluster import Cluster

from lamina.errors import StoreUnavailableError
from lamina.settings import Settings
from lamina.views import ViewCatalog
from serving.cassandra import cluster, unavailable
from serving.query import QueryService
from serving.store import Store

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

RECONNECT_MAX_S = 2.0
"""Longest wait between the driver's attempts to reach a node that went down: the API
answers again at most about this long after Cassandra is back."""

RETRY_CONNECT_S = 1.0
"""While the first connection cannot be made, requests within this long of the last
attempt fail at once with its error instead of trying again."""

PING_TIMEOUT_S = 2.0
"""How long a health check waits for Cassandra's answer."""


class StoreConnection:
    """The :class:`QueryService` of one app over one driver session, connected lazily.

    Contract:

    - :meth:`call` runs ``fn(service, ...)`` and returns its result. While Cassandra cannot be
      reached (never connected yet, no live node, a request timed out) it raises
      :class:`StoreUnavailableError` instead of the driver's exception; other errors pass.
    - Connecting (session, then the schema of the catalog's views) is tried when a caller
      needs the service and no connection exists, by one caller at a time, at most every
      :data:`RETRY_CONNECT_S`; a failed attempt leaves nothing behind.
    - Once connected, the session is kept: after an outage the driver reconnects by itself
      (at most :data:`RECONNECT_MAX_S` between attempts), so nobody restarts the API.
    - :meth:`close` shuts the session down; a later call connects again.

    Thread-safe (the API calls it from its worker threads).
    """

    def __init__(self, settings: Settings, catalog: ViewCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self._lock = threading.Lock()
        self._cluster: Cluster | None = None
        self._service: QueryService | None = None
        self._last_attempt = float("-inf")
        self._last_error: StoreUnavailableError | None = None
        self._down_since: float | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.cassandra.host}:{self.settings.cassandra.port}"

    def service(self) -> QueryService:
        """The connected service; connects first if needed (see the class contract)."""
        found = self._service
        if found is not None:
            return found
        with self._lock:
            if self._service is None:
                self._connect()
            assert self._service is not None
            return self._service

    def _connect(self) -> None:
        """Under the lock: connect and ensure the schema, or raise the outage."""
        last = self._last_error
        if last is not None and time.monotonic() - self._last_attempt < RETRY_CONNECT_S:
            raise StoreUnavailableError(last.message, hint=last.hint)  # a fresh traceback
        self._last_attempt = time.monotonic()
        c = cluster(
            self.settings.cassandra,
            timeout_s=self.settings.serving.timeout_s,
            reconnect_max_s=RECONNECT_MAX_S,
        )
        try:
            store = Store(c.connect(), self.settings.cassandra)
            store.ensure_schema(self.catalog)
        except Exception as exc:
            c.shutdown()
            err = unavailable(self.settings.cassandra, exc)
            if err is None:
                raise
            self._last_error = err
            self._went_down(exc)
            raise err from None
        self._cluster = c
        self._service = QueryService(store, self.catalog, self.settings)
        self._last_error = None
        log.info("connected to Cassandra at %s", self.address)

    def call(
        self, fn: Callable[Concatenate[QueryService, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(service, *args, **kwargs)``, with outages raised as
        :class:`StoreUnavailableError` (see the class contract)."""
        svc = self.service()
        try:
            result = fn(svc, *args, **kwargs)
        except Exception as exc:
            self._raise_outage(exc)
            raise
        self._answered()
        return result

    async def acall(
        self,
        fn: Callable[Concatenate[QueryService, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``await fn(service, *args, **kwargs)`` in the running event loop, with outages
        raised as :class:`StoreUnavailableError` like :meth:`call` (connecting, when needed,
        runs in a worker thread)."""
        svc = self._service
        if svc is None:
            svc = await asyncio.to_thread(self.service)
        try:
            result = await fn(svc, *args, **kwargs)
        except Exception as exc:
            self._raise_outage(exc)
            raise
        self._answered()
        return result

    def _raise_outage(self, exc: Exception) -> None:
        """Raise ``exc`` as a :class:`StoreUnavailableError` if it is an outage (and note
        the outage); return for any other error, which the caller re-raises as it is."""
        err = unavailable(self.settings.cassandra, exc)
        if err is not None:
            self._went_down(exc)
            raise err from None

    def ping(self) -> str:
        """Cassandra's version, asked now (a real query); raises like :meth:`call`."""

        def ask(svc: QueryService) -> str:
            row = svc.store.session.execute(
                "SELECT release_version FROM system.local", timeout=PING_TIMEOUT_S
            ).one()
            return str(row.release_version)

        return self.call(ask)

    def store(self) -> Store:
        """The connected store (for the metrics collector); raises like :meth:`service`."""
        return self.service().store

    def close(self) -> None:
        with self._lock:
            c, self._cluster, self._service = self._cluster, None, None
        if c is not None:
            c.shutdown()

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "Cassandra at %s is unavailable (%s: %s); answering 503 until it is back",
                self.address,
                type(exc).__name__,
                exc,
            )

    def _answered(self) -> None:
        since = self._down_since
        if since is not None:
            self._down_since = None
            log.warning(
                "Cassandra at %s answers again (unavailable for %.0fs)",
                self.address,
                time.monotonic() - since,
            )
