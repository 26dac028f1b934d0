"""The streaming jobs: one query per source, ``source-<name>``, each reading its Kafka topic
once and keeping every output of the source from that one read (:mod:`speed.microbatch`):
the master dataset, the dead letters, the duplicate listing and the real-time views.

All of a process's jobs run in one SparkSession; each query has its own checkpoint under
``settings.checkpoint_dir``, so a restarted job (even after ``kill -9``) replays its last
uncommitted micro-batch with the same offsets, and every output of that replay rewrites
rather than adds.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.streaming.listener import StreamingQueryListener
from pyspark.sql.streaming.query import StreamingQuery

from engine.kafka import kafka_records, parse_records
from lamina.buckets import ingest_epoch
from lamina.errors import ConfigError
from lamina.files import read_json
from lamina.master import check_schema, record_progress, recorded_complete
from lamina.process import STOP_REQUESTED
from lamina.settings import Settings
from lamina.streams import (
    ARCHIVER,
    checkpoint_path,
    deadletter_topic,
    duplicates_topic,
    ensure_topics,
    job_names,
    job_queries,
    lock_checkpoint,
    read_status,
    release_locks,
    require_broker_timestamps,
    source_query,
    source_report_file,
    write_status,
)
from lamina.views import Source, ViewCatalog
from serving.cassandra import close_shared
from serving.store import open_store
from speed.completeness import EpochMarker, unread_marks
from speed.microbatch import FAILURES, SourceBatches
from speed.realtime import wait_out_outage

log = logging.getLogger(__name__)

CLOCK_SKEW_S = 5.0
"""With ``pipeline.epoch_marks`` off only: the allowance between broker clocks (which stamp
records) and the driver's clock (which stamps progress): an epoch counts as complete once it
ended this long before the job was caught up."""


def checkpoint(settings: Settings, name: str) -> str:
    return str(checkpoint_path(settings, name))


def _offsets(text: str | None) -> dict[str, Any]:
    """A source's offsets in a progress event: JSON, or ``{}`` when Spark has none to show
    (``null``, or not JSON at all for a micro-batch re-run after a restart)."""
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


class ProgressRecorder(StreamingQueryListener):
    """Writes each query's latest progress next to its checkpoint (for ``stream status``
    and tests); when a source job has read everything its topic held, appends epoch marks
    to the partitions without a record of the current epoch (:mod:`speed.completeness`;
    the micro-batches record which epochs are complete)."""

    def __init__(self, settings: Settings, archivers: dict[str, Source]) -> None:
        self.settings = settings
        self.archivers = archivers
        self.names: dict[str, str] = {}
        self.marker = EpochMarker(settings)
        self.ids: set[str] | None = None
        """The run ids of the queries this recorder is for, once started (``None``: any
        query; a session's listeners see every query's events, and an earlier run's
        recorder must not act on a later run of the same query: same id, new run id)."""

    def _mine(self, run_id: Any) -> bool:
        return self.ids is None or str(run_id) in self.ids

    def onQueryStarted(self, event: Any) -> None:
        self.names[str(event.id)] = event.name

    def onQueryIdle(self, event: Any) -> None:
        # Idle = nothing new in Kafka: every record appended before now is archived, and
        # the query is alive (its status says so: rates 0, reported now).
        if not self._mine(event.runId):
            return
        try:
            name = self.names.get(str(event.id), "")
            last = read_status(self.settings, name)
            if last is not None:
                last.update(input_rows_per_s=0.0, processed_rows_per_s=0.0, written_at=time.time())
                write_status(self.settings, name, last)
            self._caught_up(name, event.timestamp)
        except Exception:
            log.exception("could not record idle progress")

    def _caught_up(self, query: str, timestamp: str) -> None:
        """``query`` had read every record of its topic at ``timestamp`` (ISO-8601, UTC)."""
        source = self.archivers.get(query)
        if source is None:
            return
        if not self.settings.pipeline.epoch_marks:
            self._archived_until(source, timestamp)
            return
        report = read_json(source_report_file(self.settings, query)) or {}
        highs = {int(p): int(t) for p, t in report.get("partition_high_ms", {}).items()}
        self.marker.mark_idle_soon(source, highs)

    def _archived_until(self, source: Source, timestamp: str) -> None:
        """The clock rule (``pipeline.epoch_marks`` off): every record the broker appended
        before ``timestamp`` is archived, so every epoch that ended before then (less the
        clock-skew allowance) is complete."""
        until = datetime.fromisoformat(timestamp).timestamp() - CLOCK_SKEW_S
        complete = ingest_epoch(int(until * 1000), self.settings.pipeline.epoch_seconds)
        recorded = recorded_complete(self.settings, source, ARCHIVER)
        if recorded is None or complete > int(recorded):  # never back
            record_progress(self.settings, source, ARCHIVER, complete, active=True)

    def onQueryTerminated(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        self.record(event.progress)

    def record(self, p: Any) -> None:
        """Write the status of a query's micro-batch (a ``StreamingQueryProgress``); mark
        idle partitions when it read everything its topic held."""
        if not self._mine(p.runId):
            return
        try:
            src = p.sources[0]
            end, latest = _offsets(src.endOffset), _offsets(src.latestOffset)
            status = {
                "name": p.name,
                "batch_id": p.batchId,
                "timestamp": p.timestamp,
                "input_rows": p.numInputRows,
                "input_rows_per_s": p.inputRowsPerSecond,
                "processed_rows_per_s": p.processedRowsPerSecond,
                "durations_ms": dict(p.durationMs),
                "end_offsets": end,
                "latest_offsets": latest,
                "epoch_mark_failures": self.marker.failures,
                "written_at": time.time(),
            }
            write_status(self.settings, p.name, status)
            if end and end == latest:
                self._caught_up(p.name, p.timestamp)
        except Exception:  # a listener must never kill the stream
            log.exception("could not record progress of %s", p.name)


def start_source(
    spark: SparkSession,
    settings: Settings,
    catalog: ViewCatalog,
    source: Source,
    trigger_s: float | None = None,
) -> StreamingQuery:
    """Kafka -> (master dataset, dead letters, duplicate listing, every view of ``source``)."""
    parsed = parse_records(
        kafka_records(spark, settings, source.topic), source, settings.pipeline.epoch_seconds
    )
    name = source_query(source)
    views = [v for v in catalog.views.values() if v.source.name == source.name]
    writer = (
        parsed.writeStream.foreachBatch(SourceBatches(spark, settings, source, views, name))
        .option("checkpointLocation", checkpoint(settings, name))
        .queryName(name)
    )
    if trigger_s:
        writer = writer.trigger(processingTime=f"{trigger_s} seconds")
    return writer.start()


def lock_jobs(
    settings: Settings, catalog: ViewCatalog, jobs: Sequence[str] | None
) -> dict[str, dict[str, Source]]:
    """Lock the checkpoints of every query of ``jobs`` (source names; ``None``: every
    source a view reads) for this process, create their topics if missing and refuse
    source topics without broker timestamps (:func:`lamina.streams.require_broker_timestamps`);
    returns each job's queries. Call it before starting Spark to refuse a job that cannot
    run without paying for a JVM (locks are re-entrant)."""
    chosen = job_names(catalog) if jobs is None else list(dict.fromkeys(jobs))
    if not chosen:
        raise ConfigError("no streaming job chosen", hint="name sources (lamina stream jobs)")
    queries_of = {job: job_queries(catalog, job) for job in chosen}
    for names in queries_of.values():
        for query in names:
            lock_checkpoint(settings, query)
    sources = {src.name: src for names in queries_of.values() for src in names.values()}
    ensure_topics(
        settings,
        [
            t
            for src in sources.values()
            for t in (src.topic, deadletter_topic(src), duplicates_topic(src))
        ],
    )
    require_broker_timestamps(settings, sources.values())
    for src in sources.values():
        check_schema(settings, src)  # the archive is written under one definition
    return queries_of


def start_all(
    spark: SparkSession,
    settings: Settings,
    catalog: ViewCatalog,
    jobs: Sequence[str] | None = None,
    *,
    trigger_s: float | None = None,
) -> list[StreamingQuery]:
    """Start the query of each job in ``jobs`` (source names; ``None``: every source a view
    reads).

    Each query's checkpoint is locked and its topics checked first (:func:`lock_jobs`), so
    a job already running elsewhere on this machine, or reading a topic with producer
    timestamps, is refused before anything starts. ``trigger_s`` defaults to
    ``pipeline.trigger_s`` (0: as fast as possible).
    """
    if trigger_s is None:
        trigger_s = settings.pipeline.trigger_s
    queries_of = lock_jobs(settings, catalog, jobs)

    def ensure_tables() -> None:
        with open_store(settings.cassandra, catalog):
            pass  # the real-time tables must exist before the first upsert

    # A job started (or restarted by its supervisor) while Cassandra is down waits for it,
    # as its micro-batches do, instead of failing at once.
    wait_out_outage(ensure_tables, settings.cassandra.outage_retry_s, "the real-time tables")
    sources = {src.name: src for names in queries_of.values() for src in names.values()}
    archived = {source_query(src): src for src in sources.values()}
    recorder = ProgressRecorder(settings, archived)
    spark.streams.addListener(recorder)
    started = [start_source(spark, settings, catalog, src, trigger_s) for src in sources.values()]
    recorder.ids = {str(q.runId) for q in started}
    for q in started:
        RECORDERS[str(q.runId)] = recorder
    return started


RECORDERS: dict[str, ProgressRecorder] = {}
"""The progress recorder (and epoch marker) of each query this process started, by run id
(:func:`drain_marks`)."""

MARK_DRAIN_S = 30.0
"""How long a graceful stop waits, at most, for the queries to read their own epoch marks."""


def drain_marks(queries: Sequence[StreamingQuery], timeout_s: float) -> None:
    """Before a graceful stop: write no more epoch marks and wait (up to ``timeout_s``)
    until each query has read the marks already written, so a job stopped when caught up
    shows no lag and its last complete epoch is recorded. Past the timeout, or for a query
    that is not running, it goes on: unread marks are read by the next run."""
    recorders = {id(r): r for q in queries if (r := RECORDERS.get(str(q.runId))) is not None}
    marks: dict[str, dict[int, int]] = {}
    for r in recorders.values():
        for topic, offsets in r.marker.stop().items():
            marks.setdefault(topic, {}).update(offsets)
    if not marks:
        return
    deadline = time.monotonic() + timeout_s
    waiting = list(queries)
    while waiting and time.monotonic() < deadline:
        waiting = [q for q in waiting if q.isActive and unread_marks(marks, _read_until(q))]
        if waiting:
            time.sleep(0.1)
    # The listener hears of the last micro-batch a moment later, if before the stop at all:
    # its status is written now (the lag ``stream status`` shows after the stop).
    for q in queries:
        recorder = RECORDERS.get(str(q.runId))
        progress = q.lastProgress
        if recorder is not None and progress is not None:
            recorder.record(progress)


def _read_until(query: StreamingQuery) -> dict[str, Any]:
    """The end offsets of ``query``'s last micro-batch (``{}`` before its first)."""
    progress = query.lastProgress
    if progress is None:
        return {}
    return _offsets(progress.sources[0].endOffset) if progress.sources else {}


def stop_gracefully(query: StreamingQuery, timeout_s: float) -> None:
    """Stop ``query`` between micro-batches: wait (up to ``timeout_s``) until no trigger is
    executing, then stop. Past the timeout it stops anyway; the interrupted micro-batch is
    not committed and runs again on restart (exactly-once either way)."""
    deadline = time.monotonic() + timeout_s
    while query.isActive and time.monotonic() < deadline:
        if not query.status.get("isTriggerActive", False):
            break
        time.sleep(0.05)
    query.stop()


_STOP = STOP_REQUESTED


def stop_on_signals() -> threading.Event:
    """Make SIGTERM and SIGINT set (and return) the process's stop request. A driver calls
    this before its queries start, so a stop asked during startup is not lost."""

    def on_signal(signum: int, frame: object) -> None:
        _STOP.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return _STOP


def _reason(query: StreamingQuery) -> str:
    """Why a failed query failed: what its job recorded, else the first line of its error."""
    return (
        FAILURES.get(query.name or "") or (str(query.exception()).strip().splitlines() or ["?"])[0]
    )


def run_until_stopped(
    spark: SparkSession,
    queries: list[StreamingQuery],
    say: Callable[[str], None],
    stop_timeout_s: float,
) -> str | None:
    """Block while the queries run; SIGTERM or SIGINT stops them all gracefully.

    If one query fails, the others are stopped too. Stops the Spark session and releases
    the checkpoint locks before it returns: ``None`` if the queries stopped on request, else
    what failed (``"streaming query NAME failed: REASON"``).
    """
    requested = stop_on_signals()
    failed = None
    try:
        while failed is None and any(q.isActive for q in queries):
            if requested.is_set():
                say("stopping at the next micro-batch boundary ...")
                drain_marks(queries, min(stop_timeout_s, MARK_DRAIN_S))
                for q in queries:
                    stop_gracefully(q, stop_timeout_s)
                break
            for q in queries:
                if not q.isActive and q.exception() is not None:
                    failed = f"streaming query {q.name} failed: {_reason(q)}"
                    say(failed)
                    for other in queries:
                        other.stop()
                    break
            requested.wait(1.0)
        if failed is None and not requested.is_set():
            # Every query ended between two looks (one query: always so): not on request.
            failed = next(
                (
                    f"streaming query {q.name} failed: {_reason(q)}"
                    for q in queries
                    if q.exception()
                ),
                "the streaming queries stopped without a stop request",
            )
            say(failed)
    finally:
        spark.stop()
        close_shared()
        release_locks()
    return failed
