"""The streaming jobs: the archiver (Kafka -> master dataset + dead letters) and the speed
views (Kafka -> real-time tables). All run in one SparkSession; each is a named query with
its own checkpoint under ``settings.checkpoint_dir``, so a restarted job (even after
``kill -9``) resumes where its last committed micro-batch ended.

Exactly-once, end to end:

- archiver: Spark's file sink with checkpoint (committed files are listed in its metadata
  log; the batch layer reads through it);
- speed views: stateful aggregation in update mode per (key, bucket, ingest epoch); each
  micro-batch upserts *absolute* states, so a replayed micro-batch rewrites the same rows;
- dead letters: Kafka sink (at least once), keyed by the record's origin; ``lamina
  deadletters`` shows each origin once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.listener import StreamingQueryListener
from pyspark.sql.streaming.query import StreamingQuery

from batch.master import record_progress, stream_dir
from batch.translate import aggregate
from lamina.buckets import ingest_epoch
from lamina.events import EVENT_TIME
from lamina.settings import Settings
from lamina.views import Source, View, ViewCatalog
from serving.store import open_store, partition_writer, realtime_table
from speed.parse import RAW, REASON, parse_records, rejected, valid

log = logging.getLogger(__name__)

ARCHIVER = "archiver"
CLOCK_SKEW_S = 5.0
"""Allowance between broker clocks (which stamp records) and the driver's clock (which stamps
progress): an epoch counts as complete only once it ended this long before the trigger."""


def deadletter_topic(source: Source) -> str:
    return f"{source.topic}.deadletters"


def ensure_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Create missing topics (configured partition count) so a stream can start first."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        existing = set(admin.list_topics())
        for t in sorted(set(topics) - existing):
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(t, settings.kafka.partitions, 1)])
    finally:
        admin.close()


def kafka_records(spark: SparkSession, settings: Settings, topic: str) -> DataFrame:
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "false")
    )
    if settings.pipeline.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", settings.pipeline.max_offsets_per_trigger)
    return reader.load()


def checkpoint(settings: Settings, name: str) -> str:
    return str(settings.checkpoint_dir / name)


def status_file(settings: Settings, name: str) -> Path:
    return settings.checkpoint_dir / name / "lamina-status.json"


class ProgressRecorder(StreamingQueryListener):
    """Writes each query's latest progress next to its checkpoint (for ``stream status``
    and tests) and, for archiver queries, the epochs the master dataset now holds whole."""

    def __init__(self, settings: Settings, archivers: dict[str, Source]) -> None:
        self.settings = settings
        self.archivers = archivers
        self.names: dict[str, str] = {}

    def onQueryStarted(self, event: Any) -> None:
        self.names[str(event.id)] = event.name

    def onQueryIdle(self, event: Any) -> None:
        # Idle = nothing new in Kafka: every record appended before now is archived.
        try:
            self._archived_until(self.names.get(str(event.id), ""), event.timestamp)
        except Exception:
            log.exception("could not record idle progress")

    def _archived_until(self, query: str, timestamp: str) -> None:
        """If ``query`` is an archiver that was caught up at ``timestamp`` (ISO-8601, UTC):
        every record the broker appended before then is archived, so every epoch that ended
        before then (less the clock-skew allowance) is complete."""
        source = self.archivers.get(query)
        if source is None:
            return
        until = datetime.fromisoformat(timestamp).timestamp() - CLOCK_SKEW_S
        complete = ingest_epoch(int(until * 1000), self.settings.pipeline.epoch_seconds)
        record_progress(self.settings, source, ARCHIVER, complete, active=True)

    def onQueryTerminated(self, event: Any) -> None:
        pass

    def onQueryProgress(self, event: Any) -> None:
        p = event.progress
        try:
            src = p.sources[0]
            end = json.loads(src.endOffset) if src.endOffset else {}
            latest = json.loads(src.latestOffset) if src.latestOffset else {}
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
                "written_at": time.time(),
            }
            path = status_file(self.settings, p.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(status))
            tmp.replace(path)
            if end and end == latest:
                self._archived_until(p.name, p.timestamp)
        except Exception:  # a listener must never kill the stream
            log.exception("could not record progress of %s", p.name)


def start_archiver(
    spark: SparkSession, settings: Settings, source: Source, trigger_s: float | None = None
) -> list[StreamingQuery]:
    """Kafka -> master dataset (exactly-once file sink) and rejected records -> dead letters."""
    parsed = parse_records(
        kafka_records(spark, settings, source.topic), source, settings.pipeline.epoch_seconds
    )
    columns = [*source.fields, EVENT_TIME, "topic", "partition", "offset", "ingest_epoch"]
    name = f"{ARCHIVER}-{source.name}"
    writer = (
        valid(parsed)
        .select(*columns)
        .writeStream.format("parquet")
        .partitionBy("ingest_epoch")
        .option("path", str(stream_dir(settings, source)))
        .option("checkpointLocation", checkpoint(settings, name))
        .queryName(name)
    )
    dl_name = f"deadletters-{source.name}"
    dead = (
        rejected(parsed)
        .select(
            F.concat_ws(":", "topic", "partition", "offset").alias("key"),
            F.to_json(
                F.struct(
                    F.col(REASON).alias("reason"),
                    F.base64(F.col(RAW)).alias("raw_base64"),
                    "topic",
                    "partition",
                    "offset",
                    F.date_format("timestamp", "yyyy-MM-dd'T'HH:mm:ss.SSSXXX").alias("timestamp"),
                )
            ).alias("value"),
        )
        .writeStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap_servers)
        .option("topic", deadletter_topic(source))
        .option("checkpointLocation", checkpoint(settings, dl_name))
        .queryName(dl_name)
    )
    if trigger_s:
        writer = writer.trigger(processingTime=f"{trigger_s} seconds")
        dead = dead.trigger(processingTime=f"{trigger_s} seconds")
    return [writer.start(), dead.start()]


def _upsert(settings: Settings, view: View) -> Callable[[DataFrame, int], None]:
    """The speed view's ``foreachBatch``: upsert the micro-batch's absolute states."""
    write = partition_writer(
        settings.cassandra,
        view,
        realtime_table(view),
        settings.pipeline.write_concurrency,
        realtime=True,
    )

    def upsert(batch: DataFrame, batch_id: int) -> None:
        out = batch.withColumn("ingest_epoch", F.unix_seconds(F.col("ingest_window.start")))
        out.rdd.mapPartitions(write).sum()

    return upsert


def start_speed(
    spark: SparkSession, settings: Settings, view: View, trigger_s: float | None = None
) -> StreamingQuery:
    """Kafka -> real-time table of ``view``: states per (key, bucket, ingest epoch)."""
    epoch_s = settings.pipeline.epoch_seconds
    parsed = parse_records(kafka_records(spark, settings, view.source.topic), view.source, epoch_s)
    # The watermark is on ingest (broker) time: an epoch's state is dropped a few epochs after
    # it closed; its final values are in Cassandra by then. Redeliveries within it are dropped.
    events = (
        valid(parsed)
        .withWatermark("timestamp", f"{3 * epoch_s} seconds")
        .dropDuplicatesWithinWatermark([view.source.event_id])
        .withColumn("ingest_window", F.window("timestamp", f"{epoch_s} seconds"))
    )
    states = aggregate(events, view, extra_groups=["ingest_window"])
    name = f"speed-{view.name}"
    writer = (
        states.writeStream.outputMode("update")
        .foreachBatch(_upsert(settings, view))
        .option("checkpointLocation", checkpoint(settings, name))
        .queryName(name)
    )
    if trigger_s:
        writer = writer.trigger(processingTime=f"{trigger_s} seconds")
    return writer.start()


def start_all(
    spark: SparkSession,
    settings: Settings,
    catalog: ViewCatalog,
    views: list[str] | None = None,
    *,
    archiver: bool = True,
    trigger_s: float | None = None,
) -> list[StreamingQuery]:
    """Start the archiver of every source in use and the speed job of every chosen view."""
    chosen = [catalog.view(v) for v in views] if views else list(catalog.views.values())
    with open_store(settings.cassandra, catalog):
        pass  # the real-time tables must exist before the first upsert
    sources = {v.source.name: v.source for v in chosen}
    ensure_topics(
        settings, [t for src in sources.values() for t in (src.topic, deadletter_topic(src))]
    )
    spark.streams.addListener(
        ProgressRecorder(
            settings, {f"{ARCHIVER}-{n}": src for n, src in sources.items()} if archiver else {}
        )
    )
    queries: list[StreamingQuery] = []
    if archiver:
        for src in sources.values():
            queries += start_archiver(spark, settings, src, trigger_s)
    for v in chosen:
        queries.append(start_speed(spark, settings, v, trigger_s))
    return queries
