"""Prometheus metrics of the serving API (``GET /metrics``): query latency, and the state of
the batch views, the streaming queries and the dead letters, read when Prometheus scrapes.

Every app has its own :class:`~prometheus_client.CollectorRegistry` (several apps may live in
one process, as in the tests). Two kinds of metrics:

- the latency histogram ``lamina_query_duration_seconds``, observed by
  :class:`QueryLatencyMiddleware` for every request to a per-view endpoint;
- gauges computed at scrape time by :class:`StateCollector` from three parts, each read once
  per scrape: ``cassandra`` (published version and versions of every view, through the app's
  :class:`~serving.store.Store`, down while the app cannot connect to it), ``kafka`` (source
  and dead-letter topic offsets: one client, one beginning-offsets and one end-offsets request
  for all partitions) and ``streaming`` (the status files and Kafka lag of
  :mod:`lamina.streams`).

A scrape never fails because a part is down: ``lamina_up{part}`` is 0 for it and its metrics
have no samples; the other parts are still reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina.settings import Settings
from lamina.streams import (
    Offsets,
    QueryStatus,
    deadletter_topic,
    job_names,
    job_queries,
    query_statuses,
    read_source_report,
    read_supervision,
    source_query,
    topic_offsets,
)
from lamina.views import Source, ViewCatalog
from serving.store import PUBLISHABLE, Published, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the latency histogram: 1 ms to 5 s, about 2.5x apart."""

UNKNOWN_VIEW = "_unknown"
"""``view`` label of requests naming a view that does not exist (keeps the label set bounded;
view names start with a letter, so it cannot collide with one)."""

PARTS = ("cassandra", "kafka", "streaming")
"""The parts a scrape reads, in order; each has a ``lamina_up{part}`` sample."""

KAFKA_TIMEOUT_MS = 3000
"""How long a scrape waits for Kafka (connect, then each request) before reporting it down."""


def outcome(status: int) -> str:
    """``ok`` (below 400), ``client_error`` (4xx) or ``server_error`` (5xx) for an HTTP status."""
    if status >= 500:
        return "server_error"
    return "client_error" if status >= 400 else "ok"


def stream_queries(catalog: ViewCatalog) -> dict[str, Source]:
    """Every streaming query of the deployment (one per source a view of ``catalog``
    reads), each with the source it reads."""
    return {q: src for job in job_names(catalog) for q, src in job_queries(catalog, job).items()}


def deadletter_records(first: Offsets, last: Offsets, sources: Iterable[Source]) -> dict[str, int]:
    """Records now in each source's dead-letter topic (source name -> count): the sum over
    its partitions of end minus beginning offset (a topic not created yet counts 0)."""
    out = {}
    for src in sources:
        topic = deadletter_topic(src)
        ends = last.get(topic, {})
        out[src.name] = sum(end - first.get(topic, {}).get(p, 0) for p, end in ends.items())
    return out


@dataclass(frozen=True)
class ViewState:
    """What Cassandra says about one view's batch versions."""

    view: str
    published: Published | None
    """The catalog row readers merge against; ``None`` before the first publish."""
    retained: int
    """Versions whose table is kept and could be published (``ready``, ``published``,
    ``superseded``)."""
    building: int
    """Versions in state ``building``: a build in progress, or one that died and left its row."""


def read_views(store: Store, catalog: ViewCatalog) -> list[ViewState]:
    """The :class:`ViewState` of every view of ``catalog``: two Cassandra reads per view."""
    out = []
    for view in catalog.views.values():
        versions = store.versions(view)
        out.append(
            ViewState(
                view=view.name,
                published=store.published(view),
                retained=sum(v.state in PUBLISHABLE for v in versions),
                building=sum(v.state == "building" for v in versions),
            )
        )
    return out


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape read; a part that could not be read is ``None``."""

    taken_at: float
    """When the reads finished, epoch seconds (ages are measured to it)."""
    views: list[ViewState] | None = None
    deadletters: dict[str, int] | None = None
    streams: list[QueryStatus] | None = None
    sources: dict[str, dict[str, Any]] | None = None
    """Each source job's own report (``lamina.streams.read_source_report``), by source."""
    supervision: dict[str, dict[str, Any]] | None = None
    """What the supervisor of each source's submitted job reports
    (``lamina.streams.read_supervision``), by source."""


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


def families(snapshot: Snapshot, catalog: ViewCatalog) -> list[Metric]:
    """The gauges of ``snapshot``: always every family, in a fixed order, with a sample for
    each value that is known (none for a part that is down, a view never published, a query
    that never reported progress, or a lag Kafka could not tell)."""
    up = _gauge(
        "lamina_up", "1 if this scrape could read the part (cassandra, kafka, streaming)", ["part"]
    )
    for part, read in zip(
        PARTS, (snapshot.views, snapshot.deadletters, snapshot.streams), strict=True
    ):
        up.add_metric([part], 0.0 if read is None else 1.0)

    version = _gauge(
        "lamina_batch_published_version", "Batch version the view's queries merge against", ["view"]
    )
    age = _gauge(
        "lamina_batch_cutoff_age_seconds",
        "Seconds since the end of the last ingest epoch the published batch version covers "
        "(newer events are answered by the speed layer only)",
        ["view"],
    )
    retained = _gauge(
        "lamina_batch_retained_versions",
        "Batch versions whose table is kept and can be published (rollback targets and the "
        "published one)",
        ["view"],
    )
    building = _gauge(
        "lamina_batch_building_versions",
        "Batch versions in state building: a build in progress, or one that died mid-way",
        ["view"],
    )
    for v in snapshot.views or ():
        retained.add_metric([v.view], v.retained)
        building.add_metric([v.view], v.building)
        if v.published is not None:
            version.add_metric([v.view], v.published.version)
            age.add_metric([v.view], v.published.cutoff_age_s(snapshot.taken_at))

    staleness = _gauge(
        "lamina_view_max_staleness_seconds",
        "The view's max_staleness_s setting: alert when the cutoff age exceeds it",
        ["view"],
    )
    for view in catalog.views.values():
        staleness.add_metric([view.name], view.max_staleness_s)

    dead = _gauge(
        "lamina_deadletter_records",
        "Records in the source's dead-letter topic (rejected events). The sink is at least "
        "once, so replayed micro-batches may count twice; `lamina deadletters` dedups",
        ["source", "topic"],
    )
    for name, records in (snapshot.deadletters or {}).items():
        dead.add_metric([name, deadletter_topic(catalog.sources[name])], records)

    streams = {s.query: s for s in snapshot.streams or ()}
    fresh = _gauge(
        "lamina_realtime_freshness_seconds",
        "Seconds since the view's speed query last reported progress",
        ["view"],
    )
    for view in catalog.views.values():
        st = streams.get(source_query(view.source))
        if st is not None and st.age_s is not None:
            fresh.add_metric([view.name], st.age_s)

    lag = _gauge(
        "lamina_stream_lag_records",
        "Records in the Kafka topic past the offsets the query's last micro-batch processed",
        ["query", "topic"],
    )
    per_query: list[tuple[GaugeMetricFamily, Callable[[QueryStatus], float | None]]] = [
        (
            _gauge(
                "lamina_stream_input_rows_per_second",
                "Rate at which the query's last micro-batch received rows",
                ["query"],
            ),
            lambda s: s.input_rows_per_s,
        ),
        (
            _gauge(
                "lamina_stream_processed_rows_per_second",
                "Rate at which the query's last micro-batch processed rows",
                ["query"],
            ),
            lambda s: s.processed_rows_per_s,
        ),
        (
            _gauge(
                "lamina_stream_last_batch_duration_seconds",
                "Wall time of the query's last micro-batch (trigger execution)",
                ["query"],
            ),
            lambda s: None if s.batch_duration_ms is None else s.batch_duration_ms / 1000,
        ),
        (
            _gauge("lamina_stream_last_batch_id", "Id of the query's last micro-batch", ["query"]),
            lambda s: s.batch_id,
        ),
        (
            _gauge(
                "lamina_stream_epoch_mark_failures",
                "Epoch marks the job could not write since it started (idle partitions then "
                "hold the batch cutoff back)",
                ["query"],
            ),
            lambda s: s.epoch_mark_failures,
        ),
        (
            _gauge(
                "lamina_stream_progress_age_seconds",
                "Seconds since the query last reported progress",
                ["query"],
            ),
            lambda s: s.age_s,
        ),
    ]
    for st in streams.values():
        if st.lag is not None:
            lag.add_metric([st.query, st.topic], st.lag)
        for family, value in per_query:
            x = value(st)
            if x is not None:
                family.add_metric([st.query], x)

    handled = CounterMetricFamily(
        "lamina_speed_records",
        "Records the source job handled, by outcome: records (read), rejected (dead letters), "
        "archived, duplicates (dropped within the dedup horizon), beyond_horizon (duplicates "
        "counted by the speed layer until the next batch), reordered (duplicates read before "
        "an earlier copy; may count twice until the next batch), lost (deleted by Kafka "
        "before they were read, with pipeline.fail_on_data_loss off), past_complete (read into an "
        "epoch already declared complete: missing from answers until the next batch), "
        "epoch_marks (Lamina's own marks on idle partitions, skipped)",
        labels=["source", "outcome"],
    )
    index = _gauge(
        "lamina_speed_dedup_index_ids",
        "Event ids in the source job's duplicate index (24 bytes each)",
        ["source"],
    )
    failed = _gauge(
        "lamina_speed_job_failed",
        "1 if the source job's last micro-batch stopped it on purpose (records deleted by "
        "Kafka before they were archived, ...): see `lamina stream status`",
        ["source"],
    )
    restarts = CounterMetricFamily(
        "lamina_speed_job_restarts",
        "Relaunches of the source's submitted job (by its supervisor after the driver ended "
        "without a stop request, or by `lamina stream restart`); starts at 0 with each submit",
        labels=["source"],
    )
    for name, sup in (snapshot.supervision or {}).items():
        restarts.add_metric([name], float(sup.get("restarts", 0)))
    for name, report in (snapshot.sources or {}).items():
        for outcome, n in sorted(report.get("counters", {}).items()):
            handled.add_metric([name, outcome], n)
        failed.add_metric([name], 1.0 if report.get("failed") else 0.0)
        ids = report.get("dedup_index", {}).get("ids")
        if ids is not None:
            index.add_metric([name], ids)

    return [
        up,
        version,
        age,
        retained,
        building,
        staleness,
        dead,
        fresh,
        lag,
        *(family for family, _ in per_query),
        handled,
        index,
        failed,
        restarts,
    ]


class StateCollector:
    """Reads the platform's state when collected (at scrape time) and yields the gauges.

    Blocking: call ``collect`` off the event loop. Parts are read in order (Cassandra, Kafka,
    status files). Kafka is asked once per scrape, for the beginning and end offsets of every
    source and dead-letter topic (:func:`lamina.streams.topic_offsets`); the dead-letter counts
    and the streaming lag both come from that answer, so a down broker costs at most about
    :data:`KAFKA_TIMEOUT_MS` per step and the streaming part is still reported, without lag.
    """

    def __init__(
        self, settings: Settings, catalog: ViewCatalog, store: Store | Callable[[], Store]
    ) -> None:
        """``store``: the store, or a function returning it at each scrape (which may raise
        while the store is unavailable: the ``cassandra`` part is then down)."""
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.queries = stream_queries(catalog)
        self.sources = {s.name: s for s in self.queries.values()}
        self.topics = {t for s in self.sources.values() for t in (s.topic, deadletter_topic(s))}

    def read(self) -> Snapshot:
        """One read of every part; a part that raises is logged and left ``None``."""
        views = _guarded("cassandra", lambda: read_views(self._store(), self.catalog))
        offsets = _guarded(
            "kafka", lambda: topic_offsets(self.settings, self.topics, KAFKA_TIMEOUT_MS)
        )
        dead = None if offsets is None else deadletter_records(*offsets, self.sources.values())
        streams = _guarded(
            "streaming",
            lambda: query_statuses(
                self.settings,
                self.queries,
                with_lag=offsets is not None,
                latest=None if offsets is None else offsets[1],
            ),
        )
        reports = _guarded(
            "streaming",
            lambda: {
                src.name: report
                for q, src in self.queries.items()
                if (report := read_source_report(self.settings, q)) is not None
            },
        )
        supervision = _guarded(
            "streaming",
            lambda: {
                src.name: report
                for q, src in self.queries.items()
                if (report := read_supervision(self.settings, q)) is not None
            },
        )
        return Snapshot(time.time(), views, dead, streams, reports, supervision)

    def _store(self) -> Store:
        return self.store if isinstance(self.store, Store) else self.store()

    def describe(self) -> list[Metric]:
        """The families without reading anything (the registry checks names with this)."""
        return families(Snapshot(time.time()), self.catalog)

    def collect(self) -> list[Metric]:
        return families(self.read(), self.catalog)


def _guarded(part: str, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except Exception as exc:  # a scrape reports what it can; lamina_up says what is missing
        log.warning("metrics: could not read %s: %s", part, exc)
        return None


class ServingMetrics:
    """The metrics of one serving app: its registry, the latency histogram, and (while the
    app runs) the :class:`StateCollector` over the app's store."""

    def __init__(self, settings: Settings, catalog: ViewCatalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "lamina_query_duration_seconds",
            "Time to answer a request to a per-view endpoint (query, top, keys, describe), by "
            "view and outcome (ok, client_error = 4xx, server_error = 5xx)",
            ["endpoint", "view", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._state: StateCollector | None = None

    def attach(self, store: Store | Callable[[], Store]) -> None:
        """Start reporting the platform's state, read through ``store`` (or the store
        ``store()`` returns at each scrape: see :class:`StateCollector`), at each scrape."""
        self.detach()
        self._state = StateCollector(self.settings, self.catalog, store)
        self.registry.register(self._state)

    def detach(self) -> None:
        """Stop reporting the state (the store is closing); latency stays."""
        if self._state is not None:
            self.registry.unregister(self._state)
            self._state = None

    def observe(self, endpoint: str, view: str | None, status: int, seconds: float) -> None:
        """Record one request of ``endpoint`` about ``view`` answered with HTTP ``status``."""
        label = view if view in self.catalog.views else UNKNOWN_VIEW
        self.latency.labels(endpoint, label, outcome(status)).observe(seconds)

    async def render(self, accept: str) -> Response:
        """The exposition for a scrape with the ``Accept`` header ``accept`` (Prometheus text
        or OpenMetrics); the collection, with its I/O, runs in a worker thread."""
        encode, content_type = choose_encoder(accept)
        body = await run_in_threadpool(encode, self.registry)
        return Response(body, headers={"Content-Type": content_type})


class QueryLatencyMiddleware:
    """ASGI middleware timing requests whose route is named in ``endpoints`` (route names,
    e.g. ``"query"``), from arrival to the end of the response, labelled with the route's
    ``view`` path parameter and the response status (5xx for an unhandled exception)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, endpoints: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = 500
            raise
        finally:
            # The router records the matched route in the (shared) scope.
            name = getattr(scope.get("route"), "name", None)
            if name in self.endpoints:
                view = scope.get("path_params", {}).get("view")
                self.metrics.observe(name, view, status, time.perf_counter() - started)
